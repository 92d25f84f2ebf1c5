#!/usr/bin/env bash
# Gateway enqueue throughput with wrk (DESIGN §8, issue 7): `actorbus serve`
# with one queue beside examples/gateway_baseline.rs (an actix-web handler
# that reads the body and returns 202), same HTTP worker count, same wrk Lua
# POST script and connection count, in alternating rounds. Prints each
# round, the median rates and the median ratio.
#
#   scripts/bench-gateway.sh        # 3 alternating rounds of 10 s per side, 64 connections, 2 workers
#   ROUNDS=5 DURATION=30s CONNECTIONS=128 WORKERS=4 scripts/bench-gateway.sh
#   DURABLE=true scripts/bench-gateway.sh   # the queue in queues.sqlite3: each 202 waits for its commit
#
# The queue holds up to 5,000,000 messages under `drop_oldest`, so it never
# refuses an enqueue (were it to fill, the oldest messages are dropped and
# counted, not the new ones refused).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
WORKERS=${WORKERS:-2}
DURABLE=${DURABLE:-false}
TARGET_DIR=${CARGO_TARGET_DIR:-target}

if ! command -v wrk >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
    echo "installing wrk (Debian package)"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk \
        || { $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk; }
fi

cargo build --release --locked --bin actorbus --example gateway_baseline

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
GW_PORT=$(free_port)
BASE_PORT=$(free_port)
WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

cat > "$WORK/actorbus.toml" <<TOML
listen = "127.0.0.1:$GW_PORT"
data_dir = "$WORK/data"
http_workers = $WORKERS

[[queues]]
name = "bench"
capacity = 5000000
overflow = "drop_oldest"
durable = $DURABLE
TOML

cat > "$WORK/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"payload": {"order": 42, "item": "book", "qty": 1}, "headers": {"tenant": "acme"}}'
wrk.headers["Content-Type"] = "application/json"
LUA

RUST_LOG=warn "$TARGET_DIR/release/actorbus" serve --config "$WORK/actorbus.toml" >"$WORK/gateway.log" 2>&1 &
PIDS+=($!)
"$TARGET_DIR/release/examples/gateway_baseline" "127.0.0.1:$BASE_PORT" "$WORKERS" >"$WORK/baseline.log" 2>&1 &
PIDS+=($!)

wait_up() {
    for _ in $(seq 1 200); do
        if curl -s -o /dev/null -X POST -H 'Content-Type: application/json' -d '{"payload": 0}' "$1"; then return 0; fi
        sleep 0.05
    done
    echo "no answer from $1" >&2
    exit 1
}
GW_URL="http://127.0.0.1:$GW_PORT/v1/queues/bench/messages"
BASE_URL="http://127.0.0.1:$BASE_PORT/v1/queues/bench/messages"
wait_up "$GW_URL"
wait_up "$BASE_URL"

run() { # url -> requests/s (fails on any non-2xx answer)
    local out
    out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" -s "$WORK/post.lua" "$1")
    echo "$out" >&2
    if echo "$out" | grep -q "Non-2xx"; then
        echo "non-2xx answers from $1" >&2
        exit 1
    fi
    echo "$out" | awk '/Requests\/sec/ {print $2}'
}

# Warm both up, then alternate rounds so that load from anything else on
# the machine falls on both sides alike; the median of the rounds counts.
wrk -t"$THREADS" -c"$CONNECTIONS" -d2s -s "$WORK/post.lua" "$BASE_URL" >/dev/null
wrk -t"$THREADS" -c"$CONNECTIONS" -d2s -s "$WORK/post.lua" "$GW_URL" >/dev/null
BASES=()
GWS=()
RATIOS=()
for round in $(seq 1 "$ROUNDS"); do
    echo "== round $round: baseline, actix-web handler returning 202 ($WORKERS workers, $CONNECTIONS connections, $DURATION)" >&2
    b=$(run "$BASE_URL")
    echo "== round $round: actorbus gateway enqueue" >&2
    g=$(run "$GW_URL")
    BASES+=("$b")
    GWS+=("$g")
    RATIOS+=("$(awk -v g="$g" -v b="$b" 'BEGIN { printf "%.3f", g / b }')")
    printf 'round %d: baseline %.0f req/s, actorbus %.0f req/s, ratio %.2f\n' "$round" "$b" "$g" "${RATIOS[-1]}"
done
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
ENQUEUED=$(curl -s "http://127.0.0.1:$GW_PORT/metrics" | awk '/^actorbus_queue_enqueued_total\{name="bench"\}/ {print $2}')

echo
printf 'baseline (actix-web, 202 only): %12.0f req/s (median of %d)\n' "$(median "${BASES[@]}")" "$ROUNDS"
printf 'actorbus enqueue:               %12.0f req/s (median; %s messages enqueued in all)\n' "$(median "${GWS[@]}")" "$ENQUEUED"
echo "queue durable: $DURABLE"
printf 'ratio: %.2f x, median of the rounds (target >= 0.5 x)\n' "$(median "${RATIOS[@]}")"
