"""Drain benchmark: a Python Celery worker vs a celeriac worker on the same kombu queue.

Both runs in one invocation, same machine, same private redis-server:
  1. Python pre-fills the queue `celery` with N no-op tasks (`.delay()`-style messages,
     Celery protocol 2, via kombu's Redis transport), results stored in a Redis backend.
  2. `celery worker` (prefork, default pool) drains them; then the queue is filled again and
     `celeriac worker` drains them.
  3. Time = from the first message taken off the queue to the N-th result stored
     (worker start-up is not counted). Prints tasks/s of each and the ratio.

Run through bench/celery_interop.sh (which builds celeriac in release mode and finds the
Celery virtualenv), or directly:
  python bench/celery_interop.py --celeriac target/release/celeriac [-n 20000]
"""
import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import redis
from celery import Celery


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(port, timeout=10):
    start = time.time()
    while time.time() - start < timeout:
        try:
            if redis.Redis(port=port).ping():
                return
        except redis.ConnectionError:
            time.sleep(0.05)
    raise SystemExit("redis-server did not start")


APP = """
from celery import Celery
app = Celery('bench', broker='{broker}', backend='{backend}')
app.conf.result_expires = 600

@app.task(name='bench.noop')
def noop(i):
    return None
"""


def fill(app, n):
    """Publishes n no-op tasks with one producer (as a Python client would)."""
    start = time.time()
    with app.producer_or_acquire() as producer:
        for i in range(n):
            app.send_task("bench.noop", args=(i,), producer=producer)
    return time.time() - start


def drain(broker, backend, n, proc, timeout):
    """Times the drain: first message taken -> n results stored."""
    start_wait = time.time()
    while broker.llen("celery") >= n:
        if proc.poll() is not None:
            raise SystemExit(f"worker exited early with {proc.returncode}")
        if time.time() - start_wait > 60:
            raise SystemExit("worker did not start consuming within 60 s")
        time.sleep(0.001)
    t0 = time.time()
    while backend.dbsize() < n:
        if time.time() - t0 > timeout:
            raise SystemExit(f"only {backend.dbsize()} of {n} results after {timeout} s")
        time.sleep(0.01)
    return time.time() - t0


def stop(proc):
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--celeriac", required=True, help="path to the celeriac binary (release)")
    ap.add_argument("-n", type=int, default=20000, help="tasks per run")
    ap.add_argument("--celery-concurrency", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--celeriac-concurrency", type=int, default=64)
    args = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="celeriac-bench-")
    port = free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", tmp, "--logfile", os.path.join(tmp, "redis.log")],
    )
    try:
        wait_ready(port)
        broker_url = f"redis://127.0.0.1:{port}/1"
        backend_url = f"redis://127.0.0.1:{port}/2"
        with open(os.path.join(tmp, "bench_app.py"), "w") as f:
            f.write(APP.format(broker=broker_url, backend=backend_url))
        with open(os.path.join(tmp, "celeriac.yaml"), "w") as f:
            f.write(
                "result_expires: 10m\n"
                "queues:\n  celery:\n    protocol: celery\n"
                f"    broker: {broker_url}\n    backend: {backend_url}\n"
                "tasks:\n  noop: {builtin: noop, celery_name: bench.noop}\n"
            )
        sys.path.insert(0, tmp)
        app = Celery("bench", broker=broker_url, backend=backend_url)
        broker = redis.Redis(port=port, db=1)
        backend = redis.Redis(port=port, db=2)
        env = dict(os.environ, PYTHONPATH=tmp, CELERIAC_LOG="warn", CELERIAC_ALLOW_ROOT="1")
        results = {}

        runs = [
            ("celery worker", [sys.executable, "-m", "celery", "-A", "bench_app", "worker",
                               "-l", "warning", "-c", str(args.celery_concurrency),
                               "--without-gossip", "--without-mingle", "--without-heartbeat"]),
            ("celeriac worker", [args.celeriac, "worker", "-c", os.path.join(tmp, "celeriac.yaml"),
                                 "-Q", "celery", "--concurrency", str(args.celeriac_concurrency)]),
        ]
        for name, cmd in runs:
            broker.flushdb()
            backend.flushdb()
            fill_s = fill(app, args.n)
            log = open(os.path.join(tmp, name.replace(" ", "-") + ".log"), "w")
            proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=log, stderr=log)
            try:
                secs = drain(broker, backend, args.n, proc, timeout=600)
            finally:
                stop(proc)
            results[name] = secs
            print(f"{name:16} {args.n} tasks drained in {secs:7.3f} s = {args.n / secs:9.0f} tasks/s"
                  f"   (fill: {args.n / fill_s:.0f} msgs/s)", flush=True)
        ratio = results["celery worker"] / results["celeriac worker"]
        print(f"ratio: celeriac is {ratio:.1f}x faster than celery (target: >= 10x)")
        print(f"commands: {runs[0][1][2:]} / celeriac worker -Q celery --concurrency {args.celeriac_concurrency}")
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
