"""The Celery side of bench/worker_vs_celery.sh: a Celery 5 app on Redis with no-op tasks.

The broker URL comes from CELERIAC_BENCH_BROKER (bench/celery_bench.py starts a private
redis-server and sets it). Results go to the same Redis, like celeriac's.
"""

import os
import time

import redis
from celery import Celery
from celery.signals import worker_ready

BROKER = os.environ.get("CELERIAC_BENCH_BROKER", "redis://127.0.0.1:6399/0")

app = Celery("celery_app", broker=BROKER, backend=BROKER)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_expires=600,
    task_default_queue="bench",
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)

_marks = None


def _mark(key):
    """Records the current time under `key` (how the harness learns when something happened)."""
    global _marks
    if _marks is None:
        _marks = redis.Redis.from_url(BROKER)
    _marks.set(key, repr(time.time()))


@app.task(ignore_result=True)
def noop_ignore():
    pass


@app.task
def noop():
    pass


@app.task
def stamp():
    """Returns when it started: enqueue-to-start latency = this minus the send time."""
    return time.time()


@app.task(ignore_result=True)
def sentinel(key):
    """Queued after a drain's tasks: it runs when (nearly) all of them have."""
    _mark(key)


@worker_ready.connect
def _ready(**_):
    _mark("bench:ready")


@app.task(ignore_result=True)
def exit_worker():
    """Under `-P solo` the task runs in the worker process: ending it here makes a worker that
    starts, runs one task and exits, to time as a whole process (like celeriac's
    `worker --max-tasks 1`)."""
    os._exit(0)
