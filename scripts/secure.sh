#!/usr/bin/env bash
# A TLS-enabled single-node Kafka (KRaft) for the secure-cluster tests, next to the main stack.
#
#   scripts/secure.sh up       make the CA and certificates (once), start the broker (idempotent)
#   scripts/secure.sh down     stop the broker this script started
#   scripts/secure.sh status   say which listener answers
#
# Listeners, all on 127.0.0.1 (the main stack uses 9092, the fault stack 19092, the cluster 29092-4):
#   18092 SSL       server certificate for 127.0.0.1/localhost, signed by the test CA
#   18093 SASL_SSL  SCRAM-SHA-512 and PLAIN; users alice (SCRAM) and bob (PLAIN)
#   18094 SSL       client certificates required (mTLS)
#   18095 SSL       server certificate for another host (kafka.other.test): hostname checks fail
#   18096 PLAINTEXT inter-broker listener; 18097 the controller
# Files live under ALPHA_SECURE_HOME (default ~/.cache/alpha-streaming/secure): ca.pem, client.pem,
# client.key (encrypted with the password in client.key.password), rogue-ca.pem (a CA that signed
# nothing here), users.env (the SASL users' passwords). Same jars as scripts/stack.sh.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
KAFKA_VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$here/kafka/pom.xml")"
STACK_HOME="${ALPHA_STACK_HOME:-$HOME/.cache/alpha-streaming}"
KAFKA_LIB="$STACK_HOME/kafka-$KAFKA_VERSION/lib"
SECURE_HOME="${ALPHA_SECURE_HOME:-$STACK_HOME/secure}"
CERTS="$SECURE_HOME/certs"
STATE="$SECURE_HOME/kafka"
CLUSTER_ID="alphaStreamingSecure01"
# Below the kernel's ephemeral range (32768-60999): a client socket cannot take one of them first.
SSL_PORT=18092 SASL_PORT=18093 MTLS_PORT=18094 OTHER_PORT=18095 INTERNAL_PORT=18096 CONTROLLER_PORT=18097
CLIENT_PORTS=("$SSL_PORT" "$SASL_PORT" "$MTLS_PORT" "$OTHER_PORT")

say() { printf '[secure] %s\n' "$*"; }
die() { printf '[secure] error: %s\n' "$*" >&2; exit 1; }
answers() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }
pid_alive() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

sign() {  # sign NAME CN SAN EXTENDED_KEY_USAGE: key NAME.key (PKCS#8) and NAME.pem signed by the CA
  local name="$1" cn="$2" san="$3" eku="$4"
  openssl genpkey -quiet -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$CERTS/$name.key"
  openssl req -new -key "$CERTS/$name.key" -subj "/CN=$cn" -out "$CERTS/$name.csr"
  printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
    "extendedKeyUsage=$eku" "subjectKeyIdentifier=hash" "authorityKeyIdentifier=keyid" \
    ${san:+"subjectAltName=$san"} >"$CERTS/$name.ext"
  openssl x509 -req -in "$CERTS/$name.csr" -CA "$CERTS/ca.pem" -CAkey "$CERTS/ca.key" -CAcreateserial \
    -days 3650 -sha256 -extfile "$CERTS/$name.ext" -out "$CERTS/$name.pem" 2>/dev/null
  rm -f "$CERTS/$name.csr" "$CERTS/$name.ext"
}

make_ca() {  # make_ca NAME CN
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -sha256 -subj "/CN=$2" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -keyout "$CERTS/$1.key" -out "$CERTS/$1.pem" 2>/dev/null
}

certificates() {
  [[ -f "$CERTS/done" ]] && return
  command -v openssl >/dev/null || die "openssl is needed to make the test certificates"
  say "making a test CA and certificates in $CERTS (once)"
  rm -rf "$CERTS" && mkdir -p "$CERTS"
  make_ca ca "alpha-streaming test CA"
  make_ca rogue-ca "alpha-streaming rogue CA"
  sign server "127.0.0.1" "IP:127.0.0.1,DNS:localhost" serverAuth
  sign other "kafka.other.test" "DNS:kafka.other.test" serverAuth
  sign client-plain "alpha-streaming client" "" clientAuth
  # Kafka reads PEM key stores: the unencrypted PKCS#8 key followed by the certificate chain.
  cat "$CERTS/server.key" "$CERTS/server.pem" "$CERTS/ca.pem" >"$CERTS/server-keystore.pem"
  cat "$CERTS/other.key" "$CERTS/other.pem" "$CERTS/ca.pem" >"$CERTS/other-keystore.pem"
  # The client's key is encrypted, as a careful operator keeps it: ssl_key_password opens it.
  openssl rand -hex 12 | sed 's/^/keypw-/' >"$CERTS/client.key.password"
  openssl pkcs8 -topk8 -v2 aes-256-cbc -in "$CERTS/client-plain.key" -out "$CERTS/client.key" \
    -passout "file:$CERTS/client.key.password"
  mv "$CERTS/client-plain.pem" "$CERTS/client.pem" && rm -f "$CERTS/client-plain.key"
  printf 'SCRAM_USER=alice\nSCRAM_PASSWORD=alice-%s\nPLAIN_USER=bob\nPLAIN_PASSWORD=bob-%s\n' \
    "$(openssl rand -hex 8)" "$(openssl rand -hex 8)" >"$CERTS/users.env"
  touch "$CERTS/done"
}

server_properties() {
  # shellcheck disable=SC1091
  source "$CERTS/users.env"
  local l="listener.name"
  cat <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$CONTROLLER_PORT
listeners=SSL://127.0.0.1:$SSL_PORT,SASL_SSL://127.0.0.1:$SASL_PORT,MTLS://127.0.0.1:$MTLS_PORT,OTHERHOST://127.0.0.1:$OTHER_PORT,INTERNAL://127.0.0.1:$INTERNAL_PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT
advertised.listeners=SSL://127.0.0.1:$SSL_PORT,SASL_SSL://127.0.0.1:$SASL_PORT,MTLS://127.0.0.1:$MTLS_PORT,OTHERHOST://127.0.0.1:$OTHER_PORT,INTERNAL://127.0.0.1:$INTERNAL_PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT
listener.security.protocol.map=SSL:SSL,SASL_SSL:SASL_SSL,MTLS:SSL,OTHERHOST:SSL,INTERNAL:PLAINTEXT,CONTROLLER:PLAINTEXT
controller.listener.names=CONTROLLER
inter.broker.listener.name=INTERNAL
ssl.keystore.type=PEM
ssl.keystore.location=$CERTS/server-keystore.pem
ssl.truststore.type=PEM
ssl.truststore.location=$CERTS/ca.pem
$l.otherhost.ssl.keystore.type=PEM
$l.otherhost.ssl.keystore.location=$CERTS/other-keystore.pem
$l.mtls.ssl.client.auth=required
sasl.enabled.mechanisms=SCRAM-SHA-512,PLAIN
$l.sasl_ssl.sasl.enabled.mechanisms=SCRAM-SHA-512,PLAIN
$l.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
$l.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_$PLAIN_USER="$PLAIN_PASSWORD";
log.dirs=$STATE/data
num.partitions=1
auto.create.topics.enable=false
delete.topic.enable=true
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.segment.bytes=16777216
log.retention.hours=24
EOF
}

up() {
  if all_answer; then say "secure kafka answers on 127.0.0.1:${CLIENT_PORTS[*]} (left as it is)"; return; fi
  command -v java >/dev/null || die "Java 17 is needed to run Kafka; install it (apt-get install openjdk-17-jre-headless)"
  "$here/stack.sh" fetch >/dev/null
  certificates
  mkdir -p "$STATE"
  local conf="$STATE/server.properties" java_cp="$KAFKA_LIB/*"
  server_properties >"$conf"
  # A test fixture's broker: it starts from empty storage every time, so no topic of an earlier
  # run slows its start and no registration of a killed predecessor blocks it.
  rm -rf "$STATE/data"
  # shellcheck disable=SC1091
  source "$CERTS/users.env"
  say "formatting KRaft storage in $STATE/data (SCRAM user $SCRAM_USER)"
  java -Xmx256M "-Dlog4j2.configurationFile=$here/kafka/tools-log4j2.properties" -cp "$java_cp" \
    kafka.tools.StorageTool format --standalone -t "$CLUSTER_ID" -c "$conf" \
    --add-scram "SCRAM-SHA-512=[name=$SCRAM_USER,password=$SCRAM_PASSWORD]" >"$STATE/format.log" 2>&1 \
    || { cat "$STATE/format.log" >&2; die "formatting the KRaft log dir failed"; }
  say "starting secure kafka $KAFKA_VERSION on 127.0.0.1:${CLIENT_PORTS[*]} (log: $STATE/kafka.log)"
  nohup java -Xms128M -Xmx384M -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true \
    "-Dkafka.logs.dir=$STATE" "-Dlog4j2.configurationFile=$here/kafka/log4j2.properties" \
    -cp "$java_cp" kafka.Kafka "$conf" >"$STATE/kafka.log" 2>&1 </dev/null &
  echo $! >"$STATE/pid"
  # Client ports open only once the broker is unfenced and serving (see scripts/stack.sh).
  local deadline=$((SECONDS + 120))
  until all_answer; do
    if ! pid_alive "$STATE/pid"; then
      tail -n 40 "$STATE/kafka.log" >&2
      die "secure kafka exited during startup (full log: $STATE/kafka.log)"
    fi
    ((SECONDS < deadline)) || { tail -n 40 "$STATE/kafka.log" >&2; die "secure kafka did not answer within 120 s"; }
    sleep 0.5
  done
  say "secure kafka ready; certificates in $CERTS"
}

all_answer() {
  local port
  for port in "${CLIENT_PORTS[@]}"; do answers 127.0.0.1 "$port" || return 1; done
}

down() {
  if ! pid_alive "$STATE/pid"; then rm -f "$STATE/pid"; say "secure kafka: not started by this script"; return; fi
  local pid; pid="$(cat "$STATE/pid")"
  kill -TERM "$pid"
  local deadline=$((SECONDS + 30))
  while kill -0 "$pid" 2>/dev/null; do
    if ((SECONDS >= deadline)); then say "secure kafka did not stop in 30 s; killing"; kill -KILL "$pid"; fi
    sleep 0.2
  done
  rm -f "$STATE/pid"
  say "secure kafka stopped"
}

status() {
  local port
  for port in "${CLIENT_PORTS[@]}"; do
    if answers 127.0.0.1 "$port"; then say "127.0.0.1:$port up"; else say "127.0.0.1:$port down"; fi
  done
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up | down | status" >&2; exit 2 ;;
esac
