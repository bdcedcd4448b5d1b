#!/usr/bin/env bash
# Whole process, start-up included: start a worker, run one queued no-op task, exit.
#   celeriac: `celeriac enqueue noop` then `celeriac worker --max-tasks 1`
#   Celery:   `celery_oneshot.py` (queues `exit_worker`) then `celery worker -P solo`, whose
#             task ends the worker process
# Runs them in turn (A B A B ...), N times each (default 10), timed by GNU time, and prints the
# median wall seconds and peak RSS of each, and the ratio. Its own redis-server on a free port.
#
#   bench/oneshot_vs_celery.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-10}
venv=target/bench-venv
[ -x "$venv/bin/celery" ] || { echo "run bench/worker_vs_celery.sh first (it creates $venv)" >&2; exit 1; }
cargo build --quiet --release --bin celeriac
bin=$PWD/target/release/celeriac

tmp=$(mktemp -d)
port=$("$venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$tmp" \
    --logfile "$tmp/redis.log" --daemonize yes --pidfile "$tmp/redis.pid"
trap 'kill "$(cat "$tmp/redis.pid")" 2>/dev/null; rm -rf "$tmp"' EXIT
until redis-cli -p "$port" ping >/dev/null 2>&1; do sleep 0.05; done
export CELERIAC_BENCH_BROKER="redis://127.0.0.1:$port/0" CELERIAC_LOG=warn
printf 'broker: redis://127.0.0.1:%s/0\nqueues: {bench: {}}\ntasks:\n  noop: {builtin: noop}\n' "$port" > "$tmp/c.yaml"

for i in $(seq "$runs"); do
    /usr/bin/time -f '%e %M' -a -o "$tmp/celeriac.times" sh -c \
        "'$bin' enqueue noop -c '$tmp/c.yaml' -Q bench >/dev/null && exec '$bin' worker -c '$tmp/c.yaml' -Q bench --max-tasks 1 --allow-root 2>/dev/null"
    (cd bench && /usr/bin/time -f '%e %M' -a -o "$tmp/celery.times" sh -c \
        "'../$venv/bin/python' celery_oneshot.py && exec '../$venv/bin/python' -m celery -A celery_app worker -Q bench -P solo -l error --without-gossip --without-mingle --without-heartbeat >/dev/null 2>&1")
done
"$venv/bin/python" - "$tmp/celeriac.times" "$tmp/celery.times" <<'PY'
import statistics, sys
def load(p):
    rows = [l.split() for l in open(p) if l.strip()]
    return statistics.median(float(r[0]) for r in rows), statistics.median(int(r[1]) for r in rows) / 1024, len(rows)
a, b = load(sys.argv[1]), load(sys.argv[2])
print(f"start, run one task, exit ({a[2]} runs each, medians): celeriac {a[0]*1000:.0f} ms, peak RSS {a[1]:.1f} MiB; "
      f"Celery (solo) {b[0]*1000:.0f} ms, peak RSS {b[1]:.1f} MiB; celeriac {b[0]/a[0]:.0f}x faster, {b[1]/a[1]:.0f}x less memory")
PY
