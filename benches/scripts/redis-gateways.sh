#!/usr/bin/env bash
# Several `creditgate serve` processes sharing one Redis, each loaded by its own
# `creditgate-load`: the figure the README gives for gateways on Redis.
#
# Starts a private redis-server (loopback, a temp dir, `appendonly yes`,
# `appendfsync always` unless APPENDFSYNC says otherwise, no snapshots), seeds
# creditgate-load's accounts into it through `creditgate replay`, starts GATEWAYS
# serves on it (each its own Postfix port, no HTTP), runs one creditgate-load per
# serve at once, then prints each run, the sum, every process's CPU per
# decision, Redis's own cost per script, and each serve's report (SIGTERM).
# Everything it started is stopped on exit; it touches no system Redis.
#
#   cargo build --release -p creditgate -p creditgate-benches
#   benches/scripts/redis-gateways.sh
#   CONNECTIONS=64 WORKERS=32 DURATION=20s benches/scripts/redis-gateways.sh
#   benches/scripts/redis-gateways.sh -- --state end-of-message   # args for creditgate-load
#   REPLICAS=1 benches/scripts/redis-gateways.sh   # a replica, and ?replicas=1 on the URL
#
# Settings (environment): GATEWAYS (2), CONNECTIONS per load (64), DURATION
# (10s), ACCOUNTS (100), WORKERS (serve's default when unset), APPENDFSYNC
# (always), REPLICAS (0: that many replicas of the server, each started with
# --replicaof, and every write waiting for them: `?replicas=N` on the store's
# URL), BIN (the directory holding creditgate and creditgate-load; default
# $CARGO_TARGET_DIR/release, else target/release).
set -euo pipefail
cd "$(dirname "$0")/../.."

GATEWAYS=${GATEWAYS:-2}
CONNECTIONS=${CONNECTIONS:-64}
DURATION=${DURATION:-10s}
ACCOUNTS=${ACCOUNTS:-100}
APPENDFSYNC=${APPENDFSYNC:-always}
REPLICAS=${REPLICAS:-0}
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release}
[ "${1:-}" = "--" ] && shift
LOAD_ARGS=("$@")

for tool in "$BIN/creditgate" "$BIN/creditgate-load"; do
    [ -x "$tool" ] || { echo "no $tool: cargo build --release -p creditgate -p creditgate-benches" >&2; exit 2; }
done
command -v redis-server >/dev/null || { echo "no redis-server (Debian: apt-get install redis-server)" >&2; exit 2; }
command -v jq >/dev/null || { echo "no jq (Debian: apt-get install jq)" >&2; exit 2; }

dir=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Waits until something listens on 127.0.0.1:$1, or fails after $2 seconds.
wait_listening() {
    local deadline=$((SECONDS + $2))
    until (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; do
        [ $SECONDS -lt $deadline ] || { echo "nothing listens on port $1" >&2; return 1; }
        sleep 0.05
    done
}

# User plus system CPU of process $1 so far, in clock ticks.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --daemonize no --save "" \
    --appendonly yes --appendfsync "$APPENDFSYNC" --dir "$dir" --logfile redis.log \
    >/dev/null 2>&1 &
redis_pid=$!
pids+=("$redis_pid")
wait_listening "$redis_port" 10
store="redis://127.0.0.1:$redis_port?prefix=load"
for ((r = 0; r < REPLICAS; r++)); do
    replica_port=$(free_port)
    mkdir -p "$dir/replica-$r"
    redis-server --port "$replica_port" --bind 127.0.0.1 --daemonize no --save "" \
        --appendonly yes --appendfsync "$APPENDFSYNC" --dir "$dir/replica-$r" \
        --logfile redis.log --replicaof 127.0.0.1 "$redis_port" >/dev/null 2>&1 &
    pids+=($!)
    wait_listening "$replica_port" 10
    until redis-cli -p "$replica_port" info replication | grep -q '^master_link_status:up'; do
        sleep 0.05
    done
done
[ "$REPLICAS" -gt 0 ] && store="$store&replicas=$REPLICAS"

# creditgate-load's accounts and plans (see its --spawn): load-0 .. load-N-1,
# the first tenth on a plan that runs out.
cp benches/load-policy.toml "$dir/policy.toml"
small=$(((ACCOUNTS + 5) / 10))
at=$(date -u +%Y-%m-%dT%H:%M:%SZ)
for ((i = 0; i < ACCOUNTS; i++)); do
    plan=load
    [ $i -lt $small ] && plan=small
    printf '{"at":"%s","op":"subscribe","account":"load-%d","plan":"%s"}\n' "$at" "$i" "$plan"
done | "$BIN/creditgate" replay --store "$store" --policy "$dir/policy.toml" --events - >"$dir/seed.out" 2>"$dir/seed.err"
seeded=$(grep -c '^{"decision":"allow"' "$dir/seed.out" || true)
[ "$seeded" -eq "$ACCOUNTS" ] || { echo "seeded $seeded of $ACCOUNTS accounts" >&2; exit 1; }

workers=()
[ -n "${WORKERS:-}" ] && workers=(--workers "$WORKERS")
ports=()
serve_pids=()
for ((g = 0; g < GATEWAYS; g++)); do
    port=$(free_port)
    "$BIN/creditgate" serve --store "$store" --policy "$dir/policy.toml" \
        --postfix-listen "127.0.0.1:$port" --http-listen off "${workers[@]}" \
        </dev/null >/dev/null 2>"$dir/serve-$g.log" &
    serve_pids+=($!)
    pids+=($!)
    ports+=("$port")
done
for port in "${ports[@]}"; do wait_listening "$port" 60; done

echo "redis-server $(redis-server --version | sed 's/.*v=\([^ ]*\).*/\1/') appendfsync $APPENDFSYNC, $REPLICAS replica(s) waited for;" \
    "$GATEWAYS serve(s) ${WORKERS:+with $WORKERS workers }on it; $ACCOUNTS accounts;" \
    "per serve one creditgate-load of $CONNECTIONS connections for $DURATION ${LOAD_ARGS[*]}"
before=()
for pid in "$redis_pid" "${serve_pids[@]}"; do before+=("$(ticks "$pid")"); done
redis-cli -p "$redis_port" config resetstat >/dev/null
load_pids=()
for ((g = 0; g < GATEWAYS; g++)); do
    "$BIN/creditgate-load" --postfix "127.0.0.1:${ports[$g]}" --connections "$CONNECTIONS" \
        --duration "$DURATION" --accounts "$ACCOUNTS" --seed $((g + 1)) --json "${LOAD_ARGS[@]}" \
        >"$dir/load-$g.json" 2>"$dir/load-$g.err" &
    load_pids+=($!)
done
failed=0
for pid in "${load_pids[@]}"; do wait "$pid" || failed=1; done
after=()
for pid in "$redis_pid" "${serve_pids[@]}"; do after+=("$(ticks "$pid")"); done
hz=$(getconf CLK_TCK)

total=0
for ((g = 0; g < GATEWAYS; g++)); do
    json="$dir/load-$g.json"
    if ! jq -e . "$json" >/dev/null 2>&1; then
        echo "load $g failed:"; cat "$dir/load-$g.err"; failed=1; continue
    fi
    jq -r --arg g "$g" '"gateway \($g): \(.decisions_per_second | floor) decisions/s, p50 \(.latency.p50_us / 1000) ms, p99 \(.latency.p99_us / 1000) ms, errors \(.errors), generator CPU \(.generator_cpu_seconds) s"' "$json"
    total=$(jq -r --arg t "$total" '($t | tonumber) + .decisions' "$json")
done
seconds=$(jq -r '.seconds' "$dir/load-0.json" 2>/dev/null || echo 1)
echo "together: $(awk -v n="$total" -v s="$seconds" 'BEGIN { printf "%d", n / s }') decisions/s"
names=(redis-server)
for ((g = 0; g < GATEWAYS; g++)); do names+=("serve $g"); done
for i in "${!names[@]}"; do
    awk -v name="${names[$i]}" -v t=$((after[i] - before[i])) -v hz="$hz" -v n="$total" -v s="$seconds" \
        'BEGIN { printf "%s: %.2f cores, %.1f us CPU a decision\n", name, t / hz / s, 1e6 * t / hz / (n > 0 ? n : 1) }'
done
redis-cli -p "$redis_port" info commandstats | grep -E '^cmdstat_(evalsha|eval):' | tr -d '\r' |
    sed 's/^cmdstat_/redis /'
redis-cli -p "$redis_port" info persistence | grep -E '^aof_(delayed_fsync|last_write_status)' | tr -d '\r' |
    sed 's/^/redis /'
for pid in "${serve_pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
for pid in "${serve_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
for ((g = 0; g < GATEWAYS; g++)); do
    echo "serve $g's own report:"
    sed -n '/latency\|report\|commit\|store/p' "$dir/serve-$g.log" | tail -n 20 | sed 's/^/  /'
done
exit $failed
