#!/usr/bin/env bash
# celeriac worker vs Python Celery 5 on Redis, side by side in one run, on this machine:
# drain of pre-queued no-op tasks (results off and on), enqueue rate, enqueue-to-start latency
# at low load, idle worker RSS. Each side starts its own redis-server on a free loopback port.
#
#   bench/worker_vs_celery.sh [--quick] [--concurrency 1,4,16,256] [--repeat 3]
#
# Writes target/bench-worker/{celeriac,celery}.json and prints a table with the ratios.
# The Celery side runs in a venv under target/bench-venv, created here when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/bench-venv
if [ ! -x "$venv/bin/celery" ]; then
    echo "==> creating $venv (celery, redis)"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet 'celery[redis]>=5,<6' redis packaging
fi
command -v redis-server >/dev/null || { echo "redis-server is needed" >&2; exit 1; }

out=target/bench-worker
mkdir -p "$out"
echo "==> $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(redis-server --version | cut -d' ' -f3), $("$venv/bin/python" -c 'import celery, sys; print("celery", celery.__version__, "python", sys.version.split()[0])')"
echo "==> celeriac (cargo bench --bench worker)"
cargo bench --quiet --bench worker -- --json "$out/celeriac.json" "$@"
echo "==> Celery (bench/celery_bench.py)"
"$venv/bin/python" bench/celery_bench.py --json "$out/celery.json" "$@"
"$venv/bin/python" bench/compare.py "$out/celeriac.json" "$out/celery.json"
