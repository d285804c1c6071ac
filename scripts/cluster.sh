#!/usr/bin/env bash
# Production shapes, locally and without Docker: a 3-broker Kafka KRaft cluster (combined
# broker+controller roles, RF 3 defaults, min.insync.replicas 2) and a Redis Cluster of 3 masters.
#
#   scripts/cluster.sh up [kafka|redis]     start what is not running (idempotent); a node that is
#                                           down restarts with its own data and the same cluster id
#   scripts/cluster.sh down [kafka|redis]   stop every node this script started
#   scripts/cluster.sh status               say which node answers
#   scripts/cluster.sh kill NODE            SIGKILL one node (kafka-1..3, redis-1..3), for fault tests
#   scripts/cluster.sh stop NODE            SIGTERM one node and wait until it exited (a clean stop:
#                                           a broker's controlled shutdown moves its leaderships first)
#   scripts/cluster.sh wipe                 stop every node and delete their data: the next `up`
#                                           starts an empty cluster (the fault suite does this, as
#                                           topics piling up over runs ran the brokers out of heap)
#
# Kafka: 127.0.0.1:29092,127.0.0.1:29093,127.0.0.1:29094 (controllers on 29192-29194).
# Redis Cluster: 127.0.0.1:27001, :27002, :27003 (append-only files: a restarted master keeps its keys).
# Jars and state live under ALPHA_STACK_HOME like scripts/stack.sh's.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
KAFKA_VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$here/kafka/pom.xml")"
STACK_HOME="${ALPHA_STACK_HOME:-$HOME/.cache/alpha-streaming}"
KAFKA_LIB="$STACK_HOME/kafka-$KAFKA_VERSION/lib"
RUN_DIR="$STACK_HOME/run/cluster"
# A fixed 22-character id, distinct from the single node's: a restarted node rejoins this cluster.
CLUSTER_ID="alphaStreamingClust001"
NODES=(1 2 3)
broker_port() { echo $((29091 + $1)); }
controller_port() { echo $((29191 + $1)); }
redis_port() { echo $((27000 + $1)); }
VOTERS="1@127.0.0.1:29192,2@127.0.0.1:29193,3@127.0.0.1:29194"

say() { printf '[cluster] %s\n' "$*"; }
die() { printf '[cluster] error: %s\n' "$*" >&2; exit 1; }
answers() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }
pid_alive() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

kafka_node_up() {  # kafka_node_up N
  local n="$1" port controller state conf
  port="$(broker_port "$n")" controller="$(controller_port "$n")" state="$RUN_DIR/kafka-$n"
  if answers 127.0.0.1 "$port"; then say "kafka-$n answers on 127.0.0.1:$port"; return; fi
  mkdir -p "$state"
  conf="$state/server.properties"
  sed -e "s|@NODE_ID@|$n|g" -e "s|@PORT@|$port|g" -e "s|@CONTROLLER_PORT@|$controller|g" \
    -e "s|@VOTERS@|$VOTERS|g" -e "s|@DATA_DIR@|$state/data|g" \
    "$here/kafka/cluster.properties.template" >"$conf"
  if [[ ! -f "$state/data/meta.properties" ]]; then
    java -Xmx256M "-Dlog4j2.configurationFile=$here/kafka/tools-log4j2.properties" -cp "$KAFKA_LIB/*" \
      kafka.tools.StorageTool format -t "$CLUSTER_ID" -c "$conf" >"$state/format.log" 2>&1 \
      || { cat "$state/format.log" >&2; die "formatting kafka-$n failed"; }
  fi
  say "starting kafka-$n on 127.0.0.1:$port (log: $state/kafka.log)"
  nohup java -Xms128M -Xmx384M -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true \
    "-Dkafka.logs.dir=$state" "-Dlog4j2.configurationFile=$here/kafka/log4j2.properties" \
    -cp "$KAFKA_LIB/*" kafka.Kafka "$conf" >"$state/kafka.log" 2>&1 </dev/null &
  echo $! >"$state/pid"
}

kafka_wait() {  # a broker opens its client port once it is unfenced and serving
  local n port deadline=$((SECONDS + 180))
  for n in "${NODES[@]}"; do
    port="$(broker_port "$n")"
    until answers 127.0.0.1 "$port"; do
      pid_alive "$RUN_DIR/kafka-$n/pid" || { tail -n 30 "$RUN_DIR/kafka-$n/kafka.log" >&2; die "kafka-$n exited"; }
      ((SECONDS < deadline)) || die "kafka-$n did not answer within 180 s (log: $RUN_DIR/kafka-$n/kafka.log)"
      sleep 0.5
    done
  done
  say "kafka cluster ready on 127.0.0.1:29092,127.0.0.1:29093,127.0.0.1:29094"
}

kafka_up() {
  "$here/stack.sh" fetch
  local n
  for n in "${NODES[@]}"; do kafka_node_up "$n"; done
  kafka_wait
}

redis_node_up() {  # redis_node_up N
  local n="$1" port state
  port="$(redis_port "$n")" state="$RUN_DIR/redis-$n"
  if answers 127.0.0.1 "$port"; then say "redis-$n answers on 127.0.0.1:$port"; return; fi
  mkdir -p "$state"
  say "starting redis-$n on 127.0.0.1:$port (cluster mode, log: $state/redis.log)"
  redis-server --bind 127.0.0.1 --port "$port" --cluster-enabled yes --cluster-config-file "$state/nodes.conf" \
    --cluster-node-timeout 3000 --appendonly yes --appendfsync everysec --save '' --daemonize yes \
    --dir "$state" --pidfile "$state/pid" --logfile "$state/redis.log"
  local deadline=$((SECONDS + 20))
  until answers 127.0.0.1 "$port"; do
    ((SECONDS < deadline)) || die "redis-$n did not answer within 20 s"
    sleep 0.2
  done
}

redis_up() {
  command -v redis-server >/dev/null || "$here/stack.sh" up redis >/dev/null
  local n
  for n in "${NODES[@]}"; do redis_node_up "$n"; done
  if ! redis-cli -p 27001 cluster info | grep -q '^cluster_state:ok'; then
    if [[ "$(redis-cli -p 27001 cluster info | sed -n 's/^cluster_known_nodes:\([0-9]*\).*/\1/p')" == 1 ]]; then
      say "creating the Redis Cluster (3 masters, no replicas)"
      redis-cli --cluster create 127.0.0.1:27001 127.0.0.1:27002 127.0.0.1:27003 \
        --cluster-replicas 0 --cluster-yes >"$RUN_DIR/redis-create.log" 2>&1 \
        || { cat "$RUN_DIR/redis-create.log" >&2; die "redis-cli --cluster create failed"; }
    fi
    local deadline=$((SECONDS + 30))
    until redis-cli -p 27001 cluster info | grep -q '^cluster_state:ok'; do
      ((SECONDS < deadline)) || die "the Redis Cluster did not reach cluster_state:ok within 30 s"
      sleep 0.2
    done
  fi
  say "redis cluster ready on 127.0.0.1:27001,127.0.0.1:27002,127.0.0.1:27003"
}

stop_pid() {  # stop_pid PIDFILE NAME
  local pidfile="$1" name="$2" pid
  pid_alive "$pidfile" || { rm -f "$pidfile"; return; }
  pid="$(cat "$pidfile")"
  kill -TERM "$pid"
  local deadline=$((SECONDS + 30))
  while kill -0 "$pid" 2>/dev/null; do
    ((SECONDS < deadline)) || { kill -KILL "$pid"; }
    sleep 0.2
  done
  rm -f "$pidfile"
  say "$name stopped"
}

kill_node() {  # kill_node kafka-N|redis-N
  local pidfile="$RUN_DIR/$1/pid"
  pid_alive "$pidfile" || die "$1 is not running"
  kill -KILL "$(cat "$pidfile")"
  say "$1 killed"
}

stop_node() {  # stop_node kafka-N|redis-N
  [[ "$1" =~ ^(kafka|redis)-[123]$ ]] || die "no node $1 (kafka-1..3, redis-1..3)"
  pid_alive "$RUN_DIR/$1/pid" || die "$1 is not running"
  stop_pid "$RUN_DIR/$1/pid" "$1"
}

status() {
  local n
  for n in "${NODES[@]}"; do
    answers 127.0.0.1 "$(broker_port "$n")" && say "kafka-$n: up" || say "kafka-$n: down"
    answers 127.0.0.1 "$(redis_port "$n")" && say "redis-$n: up" || say "redis-$n: down"
  done
}

mkdir -p "$RUN_DIR"
case "${1:-} ${2:-}" in
  "up ") kafka_up; redis_up ;;
  "up kafka") kafka_up ;;
  "up redis") redis_up ;;
  "down "*)
    for n in "${NODES[@]}"; do
      [[ "${2:-}" == redis ]] || stop_pid "$RUN_DIR/kafka-$n/pid" "kafka-$n"
      [[ "${2:-}" == kafka ]] || stop_pid "$RUN_DIR/redis-$n/pid" "redis-$n"
    done ;;
  "wipe ")
    for n in "${NODES[@]}"; do
      stop_pid "$RUN_DIR/kafka-$n/pid" "kafka-$n"
      stop_pid "$RUN_DIR/redis-$n/pid" "redis-$n"
      rm -rf "${RUN_DIR:?}/kafka-$n" "${RUN_DIR:?}/redis-$n"
    done
    say "wiped" ;;
  "status ") status ;;
  "kill "?*) kill_node "$2" ;;
  "stop "?*) stop_node "$2" ;;
  *) echo "usage: $0 up [kafka|redis] | down [kafka|redis] | wipe | status | kill NODE | stop NODE" >&2; exit 2 ;;
esac
