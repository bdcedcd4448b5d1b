#!/usr/bin/env python3
"""Enqueues one `exit_worker` task for `celery -A celery_app worker -P solo` to run and exit:
with `celeriac enqueue noop` + `celeriac worker --max-tasks 1`, a whole-process comparison of
start-up to first task done (time it with /usr/bin/time -v or any whole-command timer).

    CELERIAC_BENCH_BROKER=redis://127.0.0.1:PORT/0 celery_oneshot.py
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import celery_app  # noqa: E402

celery_app.exit_worker.apply_async()
