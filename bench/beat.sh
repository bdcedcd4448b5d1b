#!/usr/bin/env bash
# celeriac beat vs Celery beat, side by side in one run, on this machine: a wave of N minute
# crons all due at the same boundary (published after 1 s / when all are out / peak RSS),
# and the lateness of a single 1 s interval schedule. Each scenario starts its own
# redis-server on a free loopback port.
#
#   bench/beat.sh [--waves 10000,100000,1000000] [--celery-waves 10000] [--lateness-seconds 60]
#
# Writes target/bench-beat/results.json and prints a table. The Celery side runs in the
# venv scripts/test installs (target/celery-venv), created here when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/celery-venv
if ! "$venv/bin/python" -c 'import celery, redis' >/dev/null 2>&1; then
    echo "==> creating $venv (celery, redis)"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet 'celery==5.7.0' 'kombu==5.7.0' 'redis==8.1.0' 'packaging>=24'
fi
command -v redis-server >/dev/null || { echo "redis-server is needed" >&2; exit 1; }
cargo build --release --quiet
echo "==> $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(redis-server --version | cut -d' ' -f3), $("$venv/bin/python" -c 'import celery, sys; print("celery", celery.__version__, "python", sys.version.split()[0])')"
exec "$venv/bin/python" bench/beat_bench.py --celeriac target/release/celeriac --python "$PWD/$venv/bin/python" "$@"
