#!/usr/bin/env bash
# Local infrastructure without Docker: a real Apache Kafka (single-node KRaft, jars from Maven
# Central, run with the machine's Java 17) and a real Redis (Debian's redis-server).
#
#   scripts/stack.sh up [kafka|redis]     start what is not running yet (idempotent), wait until it answers
#   scripts/stack.sh down [kafka|redis]   stop what this script started (both, or the one named)
#   scripts/stack.sh status               say what answers where
#
# Endpoints: KAFKA_BOOTSTRAP_SERVERS (default 127.0.0.1:9092) and REDIS_URL
# (default redis://127.0.0.1:6379/0). An endpoint that already answers is used as it is;
# a local one that does not answer is started here; a remote one that does not answer is an error.
# Cache and state live under ALPHA_STACK_HOME (default ~/.cache/alpha-streaming).
# ALPHA_REDIS_PERSIST=1 starts Redis with an append-only file, so a stopped and restarted Redis
# keeps its dedup markers (the fault-injection suite restarts Redis mid-stream; production Redis
# used for dedup needs persistence or replication for the same reason).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
KAFKA_VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$here/kafka/pom.xml")"
STACK_HOME="${ALPHA_STACK_HOME:-$HOME/.cache/alpha-streaming}"
KAFKA_LIB="$STACK_HOME/kafka-$KAFKA_VERSION/lib"
RUN_DIR="$STACK_HOME/run"
# Kafka 4 generates 22-character cluster ids; a fixed one keeps re-formats reproducible.
CLUSTER_ID="alphaStreamingLocal001"

bootstrap="${KAFKA_BOOTSTRAP_SERVERS:-127.0.0.1:9092}"
first="${bootstrap%%,*}"
KAFKA_HOST="${first%:*}"
KAFKA_PORT="${first##*:}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-$((KAFKA_PORT + 1))}"

redis_url="${REDIS_URL:-redis://127.0.0.1:6379/0}"
redis_hostport="${redis_url#*://}"
redis_hostport="${redis_hostport##*@}"
redis_hostport="${redis_hostport%%/*}"
REDIS_HOST="${redis_hostport%:*}"
REDIS_PORT="${redis_hostport##*:}"
[[ "$REDIS_PORT" == "$redis_hostport" ]] && REDIS_PORT=6379

KAFKA_STATE="$RUN_DIR/kafka-$KAFKA_PORT"
REDIS_STATE="$RUN_DIR/redis-$REDIS_PORT"

say() { printf '[stack] %s\n' "$*"; }
die() { printf '[stack] error: %s\n' "$*" >&2; exit 1; }

answers() {  # answers HOST PORT: does a TCP connect succeed?
  (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
}

is_local() { [[ "$1" == "127.0.0.1" || "$1" == "localhost" ]]; }

pid_alive() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

as_root() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

fetch_kafka() {
  # The broker jar, and kafka-tools for operators (kafka-consumer-groups, kafka-metadata-quorum).
  if [[ -f "$KAFKA_LIB/kafka_2.13-$KAFKA_VERSION.jar" && -f "$KAFKA_LIB/kafka-tools-$KAFKA_VERSION.jar" ]]; then return; fi
  command -v mvn >/dev/null || die "Maven (mvn) is needed to fetch the Kafka jars; install it (apt-get install maven)"
  command -v java >/dev/null || die "Java 17 is needed to run Kafka; install it (apt-get install openjdk-17-jre-headless)"
  say "fetching Apache Kafka $KAFKA_VERSION jars from Maven Central (once)"
  local tmp="$KAFKA_LIB.partial"
  rm -rf "$tmp" && mkdir -p "$tmp"
  # The dependency plugin is pinned: Maven 3.8's default one is too old for copy-dependencies flags.
  mvn -q -B -Dstyle.color=never -f "$here/kafka/pom.xml" \
    org.apache.maven.plugins:maven-dependency-plugin:3.6.1:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$tmp"
  [[ -f "$tmp/kafka_2.13-$KAFKA_VERSION.jar" ]] || die "Maven finished but kafka_2.13-$KAFKA_VERSION.jar is missing in $tmp"
  rm -rf "$KAFKA_LIB" && mv "$tmp" "$KAFKA_LIB"
}

kafka_up() {
  if [[ "$bootstrap" == *,* ]]; then
    # A list names a cluster: never start a lone node (another cluster id) on one of its ports.
    local addr
    for addr in ${bootstrap//,/ }; do
      if answers "${addr%:*}" "${addr##*:}"; then say "kafka answers on $addr (cluster $bootstrap, left as it is)"; return; fi
    done
    die "no address of $bootstrap answers; start that cluster (the local one: make cluster-up)"
  fi
  if answers "$KAFKA_HOST" "$KAFKA_PORT"; then
    say "kafka answers on $KAFKA_HOST:$KAFKA_PORT (left as it is)"
    return
  fi
  is_local "$KAFKA_HOST" || die "kafka at $KAFKA_HOST:$KAFKA_PORT does not answer and is not local; start it or unset KAFKA_BOOTSTRAP_SERVERS"
  fetch_kafka
  mkdir -p "$KAFKA_STATE"
  local conf="$KAFKA_STATE/server.properties" data="$KAFKA_STATE/data"
  sed -e "s|@PORT@|$KAFKA_PORT|g" -e "s|@CONTROLLER_PORT@|$KAFKA_CONTROLLER_PORT|g" -e "s|@DATA_DIR@|$data|g" \
    "$here/kafka/server.properties.template" > "$conf"
  local java_cp="$KAFKA_LIB/*"
  if [[ ! -f "$data/meta.properties" ]]; then
    say "formatting KRaft storage in $data"
    java -Xmx256M "-Dlog4j2.configurationFile=$here/kafka/tools-log4j2.properties" -cp "$java_cp" \
      kafka.tools.StorageTool format --standalone -t "$CLUSTER_ID" -c "$conf" >"$KAFKA_STATE/format.log" 2>&1 \
      || { cat "$KAFKA_STATE/format.log" >&2; die "formatting the KRaft log dir failed"; }
  fi
  say "starting kafka $KAFKA_VERSION on 127.0.0.1:$KAFKA_PORT (log: $KAFKA_STATE/kafka.log)"
  nohup java -Xms256M -Xmx768M -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true \
    "-Dkafka.logs.dir=$KAFKA_STATE" "-Dlog4j2.configurationFile=$here/kafka/log4j2.properties" \
    -cp "$java_cp" kafka.Kafka "$conf" >"$KAFKA_STATE/kafka.log" 2>&1 </dev/null &
  echo $! >"$KAFKA_STATE/pid"
  # The broker opens its client port only once it is unfenced and serving requests,
  # so a successful connect means ready (the controller port opens earlier; never probe it).
  local deadline=$((SECONDS + 120))
  until answers 127.0.0.1 "$KAFKA_PORT"; do
    if ! pid_alive "$KAFKA_STATE/pid"; then
      tail -n 40 "$KAFKA_STATE/kafka.log" >&2
      die "kafka exited during startup (full log: $KAFKA_STATE/kafka.log)"
    fi
    ((SECONDS < deadline)) || { tail -n 40 "$KAFKA_STATE/kafka.log" >&2; die "kafka did not answer within 120 s"; }
    sleep 0.5
  done
  say "kafka ready on 127.0.0.1:$KAFKA_PORT"
}

redis_up() {
  if answers "$REDIS_HOST" "$REDIS_PORT"; then
    say "redis answers on $REDIS_HOST:$REDIS_PORT (left as it is)"
    return
  fi
  is_local "$REDIS_HOST" || die "redis at $REDIS_HOST:$REDIS_PORT does not answer and is not local; start it or unset REDIS_URL"
  if ! command -v redis-server >/dev/null; then
    say "installing redis-server from Debian's packages (once)"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server >/dev/null 2>&1 \
      || { as_root apt-get update -q >/dev/null && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server >/dev/null; } \
      || die "apt-get could not install redis-server"
  fi
  mkdir -p "$REDIS_STATE"
  say "starting redis on 127.0.0.1:$REDIS_PORT (log: $REDIS_STATE/redis.log)"
  # No persistence unless asked: state is per test run.
  local appendonly=no
  [[ "${ALPHA_REDIS_PERSIST:-0}" == 1 ]] && appendonly=yes
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --daemonize yes --save '' --appendonly "$appendonly" \
    --appendfsync everysec --dir "$REDIS_STATE" --pidfile "$REDIS_STATE/pid" --logfile "$REDIS_STATE/redis.log"
  local deadline=$((SECONDS + 20))
  until answers 127.0.0.1 "$REDIS_PORT"; do
    ((SECONDS < deadline)) || die "redis did not answer within 20 s (log: $REDIS_STATE/redis.log)"
    sleep 0.2
  done
  say "redis ready on 127.0.0.1:$REDIS_PORT"
}

ensure_kcat() {  # kcat (librdkafka) is the independent reader in the direct-tier tests
  command -v kcat >/dev/null && return
  say "installing kcat from Debian's packages (once)"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q kcat >/dev/null 2>&1 \
    || { as_root apt-get update -q >/dev/null && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q kcat >/dev/null; } \
    || die "apt-get could not install kcat"
}

stop_pid() {  # stop_pid PIDFILE NAME
  local pidfile="$1" name="$2"
  if ! pid_alive "$pidfile"; then rm -f "$pidfile"; say "$name: not started by this script"; return; fi
  local pid; pid="$(cat "$pidfile")"
  kill -TERM "$pid"
  local deadline=$((SECONDS + 30))
  while kill -0 "$pid" 2>/dev/null; do
    if ((SECONDS >= deadline)); then say "$name did not stop in 30 s; killing"; kill -KILL "$pid"; fi
    sleep 0.2
  done
  rm -f "$pidfile"
  say "$name stopped"
}

status() {
  if answers "$KAFKA_HOST" "$KAFKA_PORT"; then say "kafka: up on $KAFKA_HOST:$KAFKA_PORT"; else say "kafka: down ($KAFKA_HOST:$KAFKA_PORT)"; fi
  if answers "$REDIS_HOST" "$REDIS_PORT"; then say "redis: up on $REDIS_HOST:$REDIS_PORT"; else say "redis: down ($REDIS_HOST:$REDIS_PORT)"; fi
}

usage() { echo "usage: $0 up [kafka|redis] | down [kafka|redis] | status | fetch" >&2; exit 2; }

case "${1:-} ${2:-}" in
  "up ") kafka_up; redis_up; ensure_kcat ;;
  "up kafka") kafka_up ;;
  "up redis") redis_up ;;
  "down ") stop_pid "$KAFKA_STATE/pid" kafka; stop_pid "$REDIS_STATE/pid" redis ;;
  "down kafka") stop_pid "$KAFKA_STATE/pid" kafka ;;
  "down redis") stop_pid "$REDIS_STATE/pid" redis ;;
  "status ") status ;;
  "fetch ") fetch_kafka ;;
  *) usage ;;
esac
