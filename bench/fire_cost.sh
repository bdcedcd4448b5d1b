#!/usr/bin/env bash
# Redis instructions per fired tick, exact (callgrind), for comparing builds of the fire
# script on a noisy machine where CPU time varies by 10-20 % between identical runs.
#
#   bench/fire_cost.sh [BINARY] [SCHEDULES]      (defaults: target/release/celeriac, 20000)
#
# Starts redis-server under `valgrind --tool=callgrind --instr-atstart=no` on a free port, a
# beat with SCHEDULES `every: 10s` schedules (all due together), lets the first wave (a
# takeover's, with no records yet) pass, switches instrumentation on for two steady-state
# waves, and prints the instructions Redis executed per fire. Needs valgrind. Takes about a
# minute for 20,000 schedules (Redis runs some 50x slower under callgrind).
set -euo pipefail
cd "$(dirname "$0")/.."
binary=$(realpath "${1:-target/release/celeriac}")
n=${2:-20000}
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 1; }
tmp=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cleanup() {
    [ -n "${beat:-}" ] && kill "$beat" 2>/dev/null || true
    redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
    sleep 2
    rm -rf "$tmp"
}
trap cleanup EXIT
{
    printf 'queues:\n  default: {}\ntasks:\n  noop: {builtin: noop}\nschedules:\n'
    for ((i = 0; i < n; i++)); do printf '  s%d: {every: 10s, task: noop}\n' "$i"; done
} >"$tmp/cfg.yaml"
valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$tmp/cg.%p" \
    redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$tmp" \
    >"$tmp/valgrind.log" 2>&1 &
until redis-cli -p "$port" ping >/dev/null 2>&1; do sleep 0.5; done
vpid=$(pgrep -f "callgrind.*--port $port" | head -1)
CELERIAC_LOG=warn "$binary" beat --allow-root -c "$tmp/cfg.yaml" --broker "redis://127.0.0.1:$port/0" \
    >"$tmp/beat.log" 2>&1 &
beat=$!
count() { redis-cli -p "$port" zcard 'celeriac:{q:default}:ready'; }
settle() { local a=-1 b; b=$(count); while [ "$a" != "$b" ]; do sleep 1; a=$b; b=$(count); done; echo "$b"; }
wait_for() { while [ "$(count)" -lt "$1" ]; do sleep 0.5; done; }
wait_for "$n"
c0=$(settle)
callgrind_control -i on "$vpid" >/dev/null 2>&1
wait_for $((c0 + 2 * n))
c1=$(settle)
callgrind_control -i off "$vpid" >/dev/null 2>&1
kill "$beat"; wait "$beat" 2>/dev/null || true; beat=
redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
sleep 3
ir=$(grep -h '^totals:' "$tmp"/cg.* | head -1 | awk '{print $2}')
python3 -c "f = $c1 - $c0; print(f'{f} fires, {$ir:,} Redis instructions, {$ir / f:,.0f} per fire')"
