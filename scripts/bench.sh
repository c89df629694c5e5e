#!/usr/bin/env bash
# Speed measurements for edgebus.
#
#   scripts/bench.sh                 # micro-benchmarks, then both e2e scenarios
#   MODE=micro scripts/bench.sh      # only `cargo bench --bench pipeline`
#   MODE=e2e SCENARIOS=a scripts/bench.sh
#   MODE=e2e SCENARIOS=custom RATE=50000 CLIENTS=10 scripts/bench.sh
#   MODE=e2e SCENARIOS=sse scripts/bench.sh             # 10,000 idle SSE streams
#   MODE=e2e SCENARIOS=sse SSE_STREAMS=2000 SSE_EVENTS=20 scripts/bench.sh
#   MODE=e2e SCENARIOS=ws scripts/bench.sh              # 10,000 idle WebSocket clients
#   MODE=e2e SCENARIOS=fleet FLEET_DEVICES=1000 FLEET_RATE=20000 scripts/bench.sh  # `edgebus simulate`
#   MODE=e2e SCENARIOS=custom BROKER=mosquitto-ws RATE=50000 CLIENTS=1 scripts/bench.sh  # no edgebus
#
# e2e: builds release, then per scenario starts target/release/edgebus with an
# embedded broker on free ports (never the shared broker on 1883), waits for
# /readyz, runs the load client (benches/e2e_load.rs: MQTT publish paced per
# millisecond, K WebSocket clients timing every frame), prints edgebus's own
# counters and CPU per thread, and stops edgebus again.
#
# Scenarios: a = 1 client at RATE_A (200,000) frames/s;
#            b = CLIENTS_B (1,000) clients at RATE_B (200) frames/s;
#            custom = CLIENTS clients at RATE frames/s;
#            sse = SSE_STREAMS (10,000) idle SSE streams on notifications/#
#                  (benches/sse_fanout.rs): edgebus's RSS per idle stream, then
#                  SSE_EVENTS (50) notifications published one at a time and
#                  the time until the last stream has each one. Not in the
#                  default SCENARIOS. Each process holds one fd per stream, so
#                  `ulimit -n` must allow SSE_STREAMS plus some headroom.
#            ws = the same with WebSocket clients on /v1/ws?topic=notifications/%23
#                  (same bench, BENCH_KIND=ws; each answers edgebus's pings):
#                  WS_STREAMS, WS_EVENTS, … default to the SSE_* values, so
#                  SCENARIOS="sse ws" compares the two like for like.
#            cluster = for each count in CLUSTER_INSTANCES ("1 2 3"), that many
#                  edgebus instances in cluster mode on one private Mosquitto and
#                  one private Redis, CLUSTER_CLIENTS (1,000) WebSocket clients
#                  spread over them, CLUSTER_RATE (200) frames/s; "0" in the list
#                  is one instance on the same Mosquitto without Redis (what the
#                  Redis hop adds). Reports CPU of edgebus, Redis and Mosquitto
#                  separately, per 100,000 deliveries.
# Brokers (BROKER, scenarios a, b and custom; cluster always runs its own Mosquitto):
#            embedded = rumqttd inside edgebus (default);
#            mosquitto = a private Mosquitto on a free port, edgebus in external mode;
#            mosquitto-ws = the reference with no bridge at all: a private
#                  Mosquitto with a second listener, `protocol websockets`, and
#                  no edgebus. The K clients speak MQTT 3.1.1 over WebSocket to
#                  it (BENCH_CLIENT_KIND=mqtt-ws in the load client), QoS 0 on
#                  devices/+/metrics, and count frames and latency as the
#                  edgebus clients do. The RESULT line keeps its fields, with
#                  edgebus's CPU and RSS as n/a. Needs a Mosquitto built with
#                  websockets support (Debian's is); fails clearly without it.
# The load client runs on the same machine and competes with edgebus for CPU,
# and opens every stream from one address: the per-address stream caps and
# the stream-open rate are lifted for it.
set -euo pipefail
cd "$(dirname "$0")/.."

MODE="${MODE:-all}"                     # all | micro | e2e
SCENARIOS="${SCENARIOS:-a b}"
FLEET_DEVICES="${FLEET_DEVICES:-1000}"  # fleet: simulated devices (one goes silent, one sends bad frames)
FLEET_RATE="${FLEET_RATE:-20000}"       # fleet: metrics frames/s across the fleet
RATE_A="${RATE_A:-200000}"
CLIENTS_A="${CLIENTS_A:-1}"
RATE_B="${RATE_B:-200}"
CLIENTS_B="${CLIENTS_B:-1000}"
RATE="${RATE:-200000}"
CLIENTS="${CLIENTS:-1}"
DURATION="${DURATION:-10}"              # seconds of publishing per scenario
DEVICES="${DEVICES:-1000}"              # distinct devices, round-robin
QUEUE_CAPACITY="${QUEUE_CAPACITY:-}"     # bus.queue_capacity; empty = edgebus's default
PUBLISHER="${PUBLISHER:-raw}"           # raw (QoS 0, batched writes) | rumqttc
QOS="${QOS:-0}"                         # 0 | 1 (1 needs PUBLISHER=rumqttc)
THREADS="${THREADS:-}"                  # WebSocket client threads; empty = min(clients, 2)
DRAIN="${DRAIN:-10}"                    # max seconds to wait for deliveries after publishing
READY_TIMEOUT="${READY_TIMEOUT:-60}"    # seconds to wait for /readyz
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
LOG_DIR="${LOG_DIR:-$TARGET_DIR/bench-logs}"
BROKER="${BROKER:-embedded}"            # embedded (rumqttd in edgebus) | mosquitto (a private one on a free port) | mosquitto-ws (its WebSocket listener, no edgebus)
PERF="${PERF:-0}"                       # 1 = `perf record` edgebus during publishing (flat profile)
SSE_STREAMS="${SSE_STREAMS:-10000}"     # sse: concurrent streams
SSE_EVENTS="${SSE_EVENTS:-50}"          # sse: notifications fanned out, one at a time
SSE_GAP_MS="${SSE_GAP_MS:-200}"         # sse: pause after every stream got an event, before the next
SSE_WAVE="${SSE_WAVE:-500}"             # sse: streams opened at once
SSE_THREADS="${SSE_THREADS:-2}"         # sse: load client threads
SSE_QUEUE_CAPACITY="${SSE_QUEUE_CAPACITY:-}"  # sse: bus.queue_capacity; empty = edgebus's default
WS_STREAMS="${WS_STREAMS:-$SSE_STREAMS}"     # ws: concurrent WebSocket clients
WS_EVENTS="${WS_EVENTS:-$SSE_EVENTS}"        # ws: notifications fanned out, one at a time
WS_GAP_MS="${WS_GAP_MS:-$SSE_GAP_MS}"        # ws: pause after every client got an event, before the next
WS_WAVE="${WS_WAVE:-$SSE_WAVE}"              # ws: clients connected at once
WS_THREADS="${WS_THREADS:-$SSE_THREADS}"     # ws: load client threads
WS_QUEUE_CAPACITY="${WS_QUEUE_CAPACITY:-$SSE_QUEUE_CAPACITY}"  # ws: bus.queue_capacity; empty = edgebus's default
CLUSTER_INSTANCES="${CLUSTER_INSTANCES:-0 1 2 3}"  # cluster: instance counts to run (0 = one instance, no Redis)
CLUSTER_CLIENTS="${CLUSTER_CLIENTS:-1000}"   # cluster: WebSocket clients, spread over the instances
CLUSTER_RATE="${CLUSTER_RATE:-200}"          # cluster: frames/s
# WARN, but keep rumqttd's per-publish `tracing` spans silenced as edgebus's
# default filter does: a bare RUST_LOG=warn turns them back on and the
# embedded broker then writes one ERROR line per frame (~120 bytes each).
export RUST_LOG="${RUST_LOG:-warn,rumqttd=off,tracing::span=off}"

mkdir -p "$LOG_DIR"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

free_port() {
  if command -v python3 >/dev/null 2>&1; then
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
    return
  fi
  local port tries
  for tries in $(seq 1 200); do
    port=$(( 20000 + RANDOM % 30000 ))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$port"
      return
    fi
  done
  echo "no free port found" >&2
  return 1
}

# "tid ticks comm" for every thread of a process.
thread_ticks() {
  local t stat comm rest
  for t in /proc/"$1"/task/*; do
    stat=$(cat "$t/stat" 2>/dev/null) || continue
    comm=$(cat "$t/comm" 2>/dev/null) || continue
    rest=${stat##*) }
    read -r -a f <<<"$rest"
    echo "${t##*/} $(( f[11] + f[12] )) ${comm// /_}"
  done
}

MOSQUITTO_PID=""
stop_mosquitto() {
  if [ -n "$MOSQUITTO_PID" ]; then
    kill -TERM "$MOSQUITTO_PID" 2>/dev/null || true
    wait "$MOSQUITTO_PID" 2>/dev/null || true
  fi
  MOSQUITTO_PID=""
}

EDGEBUS_PID=""
stop_edgebus() {
  if [ -n "$EDGEBUS_PID" ] && kill -0 "$EDGEBUS_PID" 2>/dev/null; then
    kill -TERM "$EDGEBUS_PID" 2>/dev/null || true
    local i
    for i in $(seq 1 100); do
      kill -0 "$EDGEBUS_PID" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$EDGEBUS_PID" 2>/dev/null || true
    wait "$EDGEBUS_PID" 2>/dev/null || true
  fi
  EDGEBUS_PID=""
  stop_mosquitto
}
trap 'stop_edgebus; stop_cluster' EXIT INT TERM

RESULTS=()

# The load client (benches/e2e_load.rs) for scenario $1 at $2 frames/s with
# $3 clients, plus the given BENCH_* settings (where to connect); its report
# is kept in $LOG_DIR/load-$1.txt.
run_load() {
  local label=$1 rate=$2 clients=$3
  shift 3
  env BENCH_LABEL="$label" BENCH_RATE="$rate" BENCH_CLIENTS="$clients" \
    BENCH_THREADS="$THREADS" BENCH_DURATION_S="$DURATION" BENCH_DEVICES="$DEVICES" \
    BENCH_PUBLISHER="$PUBLISHER" BENCH_QOS="$QOS" BENCH_DRAIN_S="$DRAIN" "$@" \
    "$LOAD_BIN" --bench | tee "$LOG_DIR/load-$label.txt"
}

# Picks free ports (sets http_port, mqtt_port, data_dir, log, base in the
# caller's scope: declare them local there).
pick_ports() {
  local label=$1
  http_port=$(free_port)
  mqtt_port=$(free_port)
  while [ "$mqtt_port" = "$http_port" ]; do mqtt_port=$(free_port); done
  data_dir=$(mktemp -d)
  log="$LOG_DIR/edgebus-$label.log"
  base="http://127.0.0.1:$http_port"
}

# Starts a private Mosquitto with an MQTT listener on $mqtt_port and, when
# given a second port, a WebSocket listener there; waits until both accept.
start_mosquitto() {
  local ws_port=${1:-} conf="$data_dir/mosquitto.conf" mosquitto_log="$LOG_DIR/mosquitto.log"
  printf 'listener %s 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\nmax_inflight_messages 0\n' \
    "$mqtt_port" >"$conf"
  [ -n "$ws_port" ] && printf 'listener %s 127.0.0.1\nprotocol websockets\n' "$ws_port" >>"$conf"
  mosquitto -c "$conf" >"$mosquitto_log" 2>&1 &
  MOSQUITTO_PID=$!
  local i port up
  for i in $(seq 1 50); do
    up=1
    for port in "$mqtt_port" $ws_port; do
      (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || up=0
    done
    [ "$up" = 1 ] && return 0
    kill -0 "$MOSQUITTO_PID" 2>/dev/null || break
    sleep 0.1
  done
  if [ -n "$ws_port" ]; then
    echo "BROKER=mosquitto-ws: Mosquitto did not open its WebSocket listener on $ws_port" \
      "(built without websockets support, or the port was taken); its log:" >&2
  else
    echo "Mosquitto did not open its listener on $mqtt_port; its log:" >&2
  fi
  sed 's/^/  /' "$mosquitto_log" >&2
  stop_mosquitto
  return 1
}

# Starts release edgebus with an embedded broker on the picked ports (or,
# with BROKER=mosquitto, a private Mosquitto there and edgebus in external
# mode), plus the given extra VAR=value settings, and waits for /readyz.
start_edgebus() {
  local mode=embedded
  if [ "$BROKER" = "mosquitto" ]; then
    mode=external
    start_mosquitto || return 1
  fi
  env EDGEBUS__HTTP__BIND="127.0.0.1:$http_port" \
    EDGEBUS__MQTT__URL="mqtt://127.0.0.1:$mqtt_port" \
    EDGEBUS__MQTT__MODE="$mode" \
    EDGEBUS__STORAGE__DATA_DIR="$data_dir" \
    EDGEBUS__SESSIONS__MAX_STREAMS_PER_ADDRESS=1000000 \
    EDGEBUS__SESSIONS__MAX_STREAMS=1000000 \
    EDGEBUS__SESSIONS__STREAM_OPENS_PER_SECOND=1000000 \
    EDGEBUS__SESSIONS__STREAM_OPENS_BURST=1000000 \
    "$@" \
    "$TARGET_DIR/release/edgebus" >"$log" 2>&1 &
  EDGEBUS_PID=$!

  local deadline=$(( SECONDS + READY_TIMEOUT )) code=""
  while [ "$SECONDS" -lt "$deadline" ]; do
    if ! kill -0 "$EDGEBUS_PID" 2>/dev/null; then
      echo "edgebus exited during start-up; log:" >&2
      cat "$log" >&2
      return 1
    fi
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$base/readyz" || true)
    [ "$code" = "200" ] && break
    sleep 0.1
  done
  if [ "$code" != "200" ]; then
    echo "edgebus not ready within ${READY_TIMEOUT}s (last /readyz: $code)" >&2
    stop_edgebus
    return 1
  fi
}

# edgebus's CPU per thread between two thread_ticks readings.
cpu_report() {
  local before=$1 after=$2 wall=$3 hz
  hz=$(getconf CLK_TCK 2>/dev/null || echo 100)
  echo "edgebus CPU by thread during the load run (~${wall}s wall, CPU seconds):"
  awk -v hz="$hz" -v wall="$wall" '
    NR == FNR { base[$1] = $2; next }
    { d = $2 - base[$1]; total += d
      if (d > 0) printf "  %-16s %-8s %7.2f s  (%5.1f%% of a core)\n", $3, $1, d / hz, 100 * d / hz / wall }
    END { printf "  %-16s %-8s %7.2f s  (%5.1f%% of a core)\n", "TOTAL", "", total / hz, 100 * total / hz / wall }
    ' <(echo "$before") <(echo "$after") | sort -k3 -n -r
}

run_scenario() {
  if [ "$BROKER" = "mosquitto-ws" ]; then
    run_mqtt_ws_scenario "$@"
    return
  fi
  local label=$1 rate=$2 clients=$3
  local http_port mqtt_port data_dir log base
  pick_ports "$label"

  echo
  echo "### scenario $label: $clients client(s), $rate frames/s, ${DURATION}s (http $http_port, mqtt $mqtt_port)"
  local extra=()
  [ -n "$QUEUE_CAPACITY" ] && extra+=(EDGEBUS__BUS__QUEUE_CAPACITY="$QUEUE_CAPACITY")
  start_edgebus "${extra[@]}" \
    EDGEBUS__REGISTRY__MAX_DEVICES="$(( DEVICES > 1000 ? DEVICES : 1000 ))" || return 1

  local before after broker_before=0 broker_after=0
  before=$(thread_ticks "$EDGEBUS_PID")
  [ -n "$MOSQUITTO_PID" ] && broker_before=$(proc_ticks "$MOSQUITTO_PID")
  local started=$SECONDS perf_pid=""
  if [ "$PERF" = "1" ] && command -v perf >/dev/null 2>&1; then
    # Starts with the load client: covers connecting (short) and publishing.
    perf record -q -F 499 -p "$EDGEBUS_PID" -o "$LOG_DIR/perf-$label.data" -- sleep "$DURATION" \
      >/dev/null 2>&1 &
    perf_pid=$!
  fi
  run_load "$label" "$rate" "$clients" \
    BENCH_HTTP="127.0.0.1:$http_port" BENCH_MQTT="127.0.0.1:$mqtt_port"
  after=$(thread_ticks "$EDGEBUS_PID")
  [ -n "$MOSQUITTO_PID" ] && broker_after=$(proc_ticks "$MOSQUITTO_PID")
  local wall=$(( SECONDS - started > 0 ? SECONDS - started : 1 ))

  if [ -n "$perf_pid" ]; then
    wait "$perf_pid" 2>/dev/null || true
    echo "edgebus profile (perf, by thread and function, >= 1.5%):"
    perf report -i "$LOG_DIR/perf-$label.data" --stdio --no-children --sort pid,sym \
      --percent-limit 1.5 2>/dev/null | grep -E '^ +[0-9]' | head -40 | sed 's/^/ /' || true
  fi
  echo "edgebus counters:"
  curl -s --max-time 5 "$base/metrics" \
    | grep -E '^edgebus_(frames_accepted_total|frames_rejected_total|events_published_total|events_routed_total|events_dropped_total)' \
    | grep -v ' 0$' | sed 's/^/  /' || true
  cpu_report "$before" "$after" "$wall"
  grep -m 5 -E 'WARN|ERROR' "$log" | sed 's/^/  log: /' || true

  local hz result edgebus_ticks delivered
  hz=$(getconf CLK_TCK 2>/dev/null || echo 100)
  edgebus_ticks=$(echo "$after" | awk '{ s += $2 } END { print s + 0 }')
  edgebus_ticks=$(( edgebus_ticks - $(echo "$before" | awk '{ s += $2 } END { print s + 0 }') ))
  result=$(grep '^RESULT' "$LOG_DIR/load-$label.txt" || echo "RESULT label=$label (no result)")
  delivered=$(echo "$result" | grep -o ' delivered=[0-9]*' | cut -d= -f2)
  RESULTS+=("$result broker=$BROKER $(awk -v e="$edgebus_ticks" -v b=$(( broker_after - broker_before )) \
    -v hz="$hz" -v d="${delivered:-0}" -v rss="$(peak_rss_kib "$EDGEBUS_PID")" \
    -v brss="$( [ -n "$MOSQUITTO_PID" ] && peak_rss_kib "$MOSQUITTO_PID" || echo 0)" 'BEGIN {
      per = d > 0 ? 1e6 / d : 0
      printf "cpu_s_edgebus=%.2f cpu_s_broker=%.2f us_per_delivery_edgebus=%.2f us_per_delivery_broker=%.2f peak_rss_mib_edgebus=%.1f peak_rss_mib_broker=%.1f",
        e / hz, b / hz, e / hz * per, b / hz * per, rss / 1024, brss / 1024 }')")
  stop_edgebus
  rm -rf "$data_dir"
}

# The no-bridge reference: the load client publishes to a private Mosquitto
# and its clients read MQTT over WebSocket from Mosquitto's own WebSocket
# listener; no edgebus runs.
run_mqtt_ws_scenario() {
  local label=$1 rate=$2 clients=$3
  local http_port mqtt_port data_dir log base ws_port
  pick_ports "$label"
  ws_port=$(free_port)
  while [ "$ws_port" = "$mqtt_port" ] || [ "$ws_port" = "$http_port" ]; do ws_port=$(free_port); done

  echo
  echo "### scenario $label: $clients MQTT-over-WebSocket client(s) on Mosquitto, no edgebus, $rate frames/s, ${DURATION}s (mqtt $mqtt_port, ws $ws_port)"
  start_mosquitto "$ws_port" || return 1
  local broker_before broker_after started=$SECONDS
  broker_before=$(proc_ticks "$MOSQUITTO_PID")
  run_load "$label" "$rate" "$clients" \
    BENCH_CLIENT_KIND=mqtt-ws BENCH_MQTT_WS="127.0.0.1:$ws_port" BENCH_MQTT="127.0.0.1:$mqtt_port"
  broker_after=$(proc_ticks "$MOSQUITTO_PID")
  local wall=$(( SECONDS - started > 0 ? SECONDS - started : 1 ))
  local hz result delivered
  hz=$(getconf CLK_TCK 2>/dev/null || echo 100)
  echo "mosquitto CPU during the load run (~${wall}s wall): $(awk -v t=$(( broker_after - broker_before )) -v hz="$hz" -v w="$wall" \
    'BEGIN { printf "%.2f s (%.1f%% of a core)", t / hz, 100 * t / hz / w }')"
  grep -m 5 -i -E 'error|warn' "$LOG_DIR/mosquitto.log" | sed 's/^/  log: /' || true
  result=$(grep '^RESULT' "$LOG_DIR/load-$label.txt" || echo "RESULT label=$label (no result)")
  delivered=$(echo "$result" | grep -o ' delivered=[0-9]*' | cut -d= -f2)
  RESULTS+=("$result broker=$BROKER $(awk -v b=$(( broker_after - broker_before )) \
    -v hz="$hz" -v d="${delivered:-0}" -v brss="$(peak_rss_kib "$MOSQUITTO_PID")" 'BEGIN {
      per = d > 0 ? 1e6 / d : 0
      printf "cpu_s_edgebus=n/a cpu_s_broker=%.2f us_per_delivery_edgebus=n/a us_per_delivery_broker=%.2f peak_rss_mib_edgebus=n/a peak_rss_mib_broker=%.1f",
        b / hz, b / hz * per, brss / 1024 }')")
  stop_mosquitto
  rm -rf "$data_dir"
}

# Peak resident set (VmHWM) of a process, KiB.
peak_rss_kib() {
  awk '/^VmHWM:/ { print $2 }' /proc/"$1"/status 2>/dev/null || echo 0
}

# The simulated fleet (`edgebus simulate`) against a release edgebus: what the
# whole service (registry, bus, alerts rules, presence, fleet health) accepts
# and raises under a realistic mix, with bad frames and attackers included.
run_fleet_scenario() {
  local label=fleet
  local http_port mqtt_port data_dir log base
  pick_ports "$label"
  echo
  echo "### scenario fleet: edgebus simulate, $FLEET_DEVICES devices at $FLEET_RATE frames/s for ${DURATION}s (http $http_port, mqtt $mqtt_port)"
  start_edgebus EDGEBUS__REGISTRY__MAX_DEVICES="$(( FLEET_DEVICES > 1000 ? FLEET_DEVICES : 1000 ))" || return 1
  local before after started=$SECONDS
  before=$(thread_ticks "$EDGEBUS_PID")
  "$TARGET_DIR/release/edgebus" simulate --url "mqtt://127.0.0.1:$mqtt_port" \
    --devices "$FLEET_DEVICES" --rate "$FLEET_RATE" --duration "$DURATION" \
    >"$LOG_DIR/load-$label.txt" 2>&1 || true
  sleep 1 # let the last frames drain before reading the counters
  after=$(thread_ticks "$EDGEBUS_PID")
  local wall=$(( SECONDS - started > 0 ? SECONDS - started : 1 ))
  local metrics accepted rejected alerts
  metrics=$(curl -s --max-time 5 "$base/metrics")
  accepted=$(echo "$metrics" | awk '/^edgebus_frames_accepted_total /{print $2}')
  rejected=$(echo "$metrics" | awk '/^edgebus_frames_rejected_total/{s+=$2} END{print s+0}')
  alerts=$(echo "$metrics" | awk '/^edgebus_alerts_raised_total/{s+=$2} END{print s+0}')
  echo "edgebus counters:"
  echo "$metrics" | grep -E '^edgebus_(frames_accepted_total|frames_rejected_total|events_published_total|events_dropped_total|alerts_raised_total)' \
    | grep -v ' 0$' | sed 's/^/  /' || true
  cpu_report "$before" "$after" "$wall"
  RESULTS+=("RESULT label=$label devices=$FLEET_DEVICES rate=$FLEET_RATE duration_s=$DURATION accepted=${accepted:-0} accepted_per_s=$(( ${accepted:-0} / DURATION )) rejected=$rejected alerts=$alerts")
  stop_edgebus
  rm -rf "$data_dir"
}

# $1 = sse: SSE_STREAMS idle SSE streams, then SSE_EVENTS notifications
# fanned out; ws: the same with WS_STREAMS WebSocket clients and WS_* settings.
run_sse_scenario() {
  local label=$1 prefix
  prefix=$(echo "$label" | tr '[:lower:]' '[:upper:]')
  local streams_var="${prefix}_STREAMS" events_var="${prefix}_EVENTS" gap_var="${prefix}_GAP_MS"
  local wave_var="${prefix}_WAVE" threads_var="${prefix}_THREADS" queue_var="${prefix}_QUEUE_CAPACITY"
  local streams=${!streams_var} events=${!events_var} queue_capacity=${!queue_var}
  local what="SSE streams"
  [ "$label" = ws ] && what="WebSocket clients"
  local http_port mqtt_port data_dir log base
  local need=$(( streams + 256 )) limit
  limit=$(ulimit -n)
  if [ "$limit" != "unlimited" ] && [ "$limit" -lt "$need" ]; then
    echo "$label: ulimit -n is $limit (hard $(ulimit -Hn)); ${streams_var}=$streams needs at least $need" \
      "in edgebus and in the load client. Lower ${streams_var} or raise the hard limit." >&2
    return 1
  fi
  pick_ports "$label"

  echo
  echo "### scenario $label: $streams $what, $events events (http $http_port, mqtt $mqtt_port, ulimit -n $limit)"
  local extra=()
  [ -n "$queue_capacity" ] && extra+=(EDGEBUS__BUS__QUEUE_CAPACITY="$queue_capacity")
  start_edgebus "${extra[@]}" || return 1

  local before after started=$SECONDS
  before=$(thread_ticks "$EDGEBUS_PID")
  BENCH_KIND="$label" \
  BENCH_LABEL="$label" \
  BENCH_HTTP="127.0.0.1:$http_port" \
  BENCH_EDGEBUS_PID="$EDGEBUS_PID" \
  BENCH_STREAMS="$streams" \
  BENCH_EVENTS="$events" \
  BENCH_GAP_MS="${!gap_var}" \
  BENCH_WAVE="${!wave_var}" \
  BENCH_THREADS="${!threads_var}" \
    "$SSE_BIN" --bench | tee "$LOG_DIR/load-$label.txt"
  after=$(thread_ticks "$EDGEBUS_PID")
  local wall=$(( SECONDS - started > 0 ? SECONDS - started : 1 ))

  echo "edgebus counters:"
  curl -s --max-time 5 "$base/metrics" \
    | grep -E '^edgebus_(events_published_total|events_routed_total|events_dropped_total|sessions_open)' \
    | grep -v ' 0$' | sed 's/^/  /' || true
  cpu_report "$before" "$after" "$wall"
  grep -m 5 -E 'WARN|ERROR' "$log" | sed 's/^/  log: /' || true

  RESULTS+=("$(grep '^RESULT' "$LOG_DIR/load-$label.txt" || echo "RESULT label=$label (no result)")")
  stop_edgebus
  rm -rf "$data_dir"
}

# CPU ticks (user + system) of a whole process.
proc_ticks() {
  local stat rest
  stat=$(cat /proc/"$1"/stat 2>/dev/null) || { echo 0; return; }
  rest=${stat##*) }
  read -r -a f <<<"$rest"
  echo $(( f[11] + f[12] ))
}

CLUSTER_PIDS=()
stop_cluster() {
  local pid
  for pid in "${CLUSTER_PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${CLUSTER_PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  CLUSTER_PIDS=()
}

# $1 instances in cluster mode (0: one instance without Redis) on one private
# Mosquitto and one private Redis; CLUSTER_CLIENTS clients spread over them.
run_cluster_scenario() {
  local n=$1 label="cluster-$1"
  local dir mqtt_port redis_port broker_pid redis_pid="" i
  dir=$(mktemp -d)
  mqtt_port=$(free_port)
  printf 'listener %s 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\nmax_inflight_messages 0\n' \
    "$mqtt_port" >"$dir/mosquitto.conf"
  mosquitto -c "$dir/mosquitto.conf" >"$LOG_DIR/mosquitto-$label.log" 2>&1 &
  broker_pid=$!
  CLUSTER_PIDS+=("$broker_pid")
  local cluster_env=()
  if [ "$n" -gt 0 ]; then
    redis_port=$(free_port)
    redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" \
      >"$LOG_DIR/redis-$label.log" 2>&1 &
    redis_pid=$!
    CLUSTER_PIDS+=("$redis_pid")
    cluster_env=(EDGEBUS__CLUSTER__REDIS_URL="redis://127.0.0.1:$redis_port")
  fi
  for i in $(seq 1 50); do
    (exec 3<>"/dev/tcp/127.0.0.1/$mqtt_port") 2>/dev/null && break
    sleep 0.1
  done
  local count=$(( n > 0 ? n : 1 )) https=() pids=()
  for i in $(seq 1 "$count"); do
    local port
    port=$(free_port)
    env EDGEBUS__HTTP__BIND="127.0.0.1:$port" \
      EDGEBUS__MQTT__URL="mqtt://127.0.0.1:$mqtt_port" \
      EDGEBUS__MQTT__MODE=external \
      EDGEBUS__MQTT__CLIENT_ID="bench-$label" \
      EDGEBUS__CLUSTER__INSTANCE_ID="i$i" \
      EDGEBUS__STORAGE__DATA_DIR="$dir/data-$i" \
      ${QUEUE_CAPACITY:+EDGEBUS__BUS__QUEUE_CAPACITY="$QUEUE_CAPACITY"} \
      EDGEBUS__REGISTRY__MAX_DEVICES="$(( DEVICES > 1000 ? DEVICES : 1000 ))" \
      EDGEBUS__SESSIONS__MAX_STREAMS_PER_ADDRESS=1000000 \
      EDGEBUS__SESSIONS__MAX_STREAMS=1000000 \
      EDGEBUS__SESSIONS__STREAM_OPENS_PER_SECOND=1000000 \
      EDGEBUS__SESSIONS__STREAM_OPENS_BURST=1000000 \
      "${cluster_env[@]}" \
      "$TARGET_DIR/release/edgebus" >"$LOG_DIR/edgebus-$label-$i.log" 2>&1 &
    pids+=("$!")
    CLUSTER_PIDS+=("$!")
    https+=("127.0.0.1:$port")
  done
  local h code deadline=$(( SECONDS + READY_TIMEOUT ))
  for h in "${https[@]}"; do
    code=""
    while [ "$SECONDS" -lt "$deadline" ]; do
      code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://$h/readyz" || true)
      [ "$code" = "200" ] && break
      sleep 0.1
    done
    if [ "$code" != "200" ]; then
      echo "$label: $h not ready (last /readyz $code)" >&2
      stop_cluster
      return 1
    fi
  done
  echo
  echo "### scenario $label: $count instance(s)$([ "$n" -gt 0 ] && echo ' in cluster mode' || echo ', no Redis'), $CLUSTER_CLIENTS clients, $CLUSTER_RATE frames/s, ${DURATION}s"
  local before_e=0 before_r=0 before_b after_e=0 after_r=0 after_b pid
  for pid in "${pids[@]}"; do before_e=$(( before_e + $(proc_ticks "$pid") )); done
  [ -n "$redis_pid" ] && before_r=$(proc_ticks "$redis_pid")
  before_b=$(proc_ticks "$broker_pid")
  local joined
  joined=$(IFS=,; echo "${https[*]}")
  run_load "$label" "$CLUSTER_RATE" "$CLUSTER_CLIENTS" \
    BENCH_HTTP="$joined" BENCH_MQTT="127.0.0.1:$mqtt_port"
  for pid in "${pids[@]}"; do after_e=$(( after_e + $(proc_ticks "$pid") )); done
  [ -n "$redis_pid" ] && after_r=$(proc_ticks "$redis_pid")
  after_b=$(proc_ticks "$broker_pid")
  local hz result delivered
  hz=$(getconf CLK_TCK 2>/dev/null || echo 100)
  result=$(grep '^RESULT' "$LOG_DIR/load-$label.txt" || echo "RESULT label=$label (no result)")
  delivered=$(echo "$result" | grep -o 'delivered=[0-9]*' | cut -d= -f2)
  delivered=${delivered:-0}
  RESULTS+=("$result $(awk -v e=$(( after_e - before_e )) -v r=$(( after_r - before_r )) \
    -v b=$(( after_b - before_b )) -v hz="$hz" -v d="$delivered" 'BEGIN {
      per = d > 0 ? 100000 / d : 0
      printf "cpu_s_edgebus=%.2f cpu_s_redis=%.2f cpu_s_broker=%.2f cpu_s_per_100k_edgebus=%.3f cpu_s_per_100k_redis=%.3f cpu_s_per_100k_broker=%.3f",
        e / hz, r / hz, b / hz, e / hz * per, r / hz * per, b / hz * per }')")
  grep -h -m 3 -E 'WARN|ERROR' "$LOG_DIR"/edgebus-"$label"-*.log | grep -v 'OPEN DEV MODE' | sed 's/^/  log: /' || true
  stop_cluster
  rm -rf "$dir"
}

# The executable of a bench target (built with `cargo bench --no-run`).
bench_exe() {
  local name=$1 exe
  exe=$(cargo bench --bench "$name" --no-run --message-format=json 2>/dev/null \
    | grep -o '"executable":"[^"]*'"$name"'[^"]*"' | tail -n 1 | cut -d'"' -f4)
  if [ -z "$exe" ] || [ ! -x "$exe" ]; then
    echo "could not find the $name bench executable" >&2
    return 1
  fi
  echo "$exe"
}

if [ "$MODE" = "all" ] || [ "$MODE" = "micro" ]; then
  echo "### micro-benchmarks: cargo bench --bench pipeline"
  cargo bench --bench pipeline
fi

if [ "$MODE" = "all" ] || [ "$MODE" = "e2e" ]; then
  for scenario in $SCENARIOS; do
    case "$scenario" in
      a|b|custom|sse|ws|fleet|cluster) ;;
      *) echo "unknown scenario $scenario (a, b, custom, sse, ws, fleet, cluster)" >&2; exit 2 ;;
    esac
  done
  case "$BROKER" in
    embedded|mosquitto) ;;
    mosquitto-ws)
      for scenario in $SCENARIOS; do
        case "$scenario" in
          a|b|custom) ;;
          *) echo "BROKER=mosquitto-ws runs scenarios a, b and custom only, not $scenario" >&2; exit 2 ;;
        esac
      done
      command -v mosquitto >/dev/null 2>&1 \
        || { echo "BROKER=mosquitto-ws needs mosquitto on PATH" >&2; exit 2; } ;;
    *) echo "unknown BROKER $BROKER (embedded, mosquitto, mosquitto-ws)" >&2; exit 2 ;;
  esac
  echo "### building release edgebus and the load client(s)"
  cargo build --release --bin edgebus
  LOAD_BIN="" SSE_BIN=""
  case " $SCENARIOS " in *" a "*|*" b "*|*" custom "*|*" cluster "*) LOAD_BIN=$(bench_exe e2e_load) ;; esac
  case " $SCENARIOS " in *" sse "*|*" ws "*) SSE_BIN=$(bench_exe sse_fanout) ;; esac
  for scenario in $SCENARIOS; do
    case "$scenario" in
      a) run_scenario a "$RATE_A" "$CLIENTS_A" ;;
      b) run_scenario b "$RATE_B" "$CLIENTS_B" ;;
      custom) run_scenario custom "$RATE" "$CLIENTS" ;;
      sse|ws) run_sse_scenario "$scenario" ;;
      fleet) run_fleet_scenario ;;
      cluster) for n in $CLUSTER_INSTANCES; do run_cluster_scenario "$n"; done ;;
    esac
  done
  echo
  sse_settings=""
  case " $SCENARIOS " in *" sse "*)
    sse_settings="; sse: SSE_STREAMS=$SSE_STREAMS SSE_EVENTS=$SSE_EVENTS SSE_GAP_MS=$SSE_GAP_MS SSE_QUEUE_CAPACITY=${SSE_QUEUE_CAPACITY:-default}" ;;
  esac
  case " $SCENARIOS " in *" ws "*)
    sse_settings+="; ws: WS_STREAMS=$WS_STREAMS WS_EVENTS=$WS_EVENTS WS_GAP_MS=$WS_GAP_MS WS_QUEUE_CAPACITY=${WS_QUEUE_CAPACITY:-default}" ;;
  esac
  echo "### summary (PUBLISHER=$PUBLISHER QOS=$QOS DEVICES=$DEVICES DURATION=${DURATION}s QUEUE_CAPACITY=${QUEUE_CAPACITY:-default}$sse_settings)"
  printf '%s\n' "${RESULTS[@]}"
fi
