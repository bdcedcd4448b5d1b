#!/usr/bin/env bash
# Drain benchmark: Python `celery worker` vs `celeriac worker` on the same kombu queue,
# both in one run (see bench/celery_interop.py). Usage: bench/celery_interop.sh [-n N] [...]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${CELERY_VENV:-target/celery-venv}"
if ! "$VENV/bin/python" -c 'import celery, redis' >/dev/null 2>&1; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check \
        'celery==5.7.0' 'kombu==5.7.0' 'redis==8.1.0' 'packaging>=24'
fi
cargo build --release --quiet --bin celeriac
exec "$VENV/bin/python" bench/celery_interop.py --celeriac "$PWD/target/release/celeriac" "$@"
