#!/usr/bin/env python3
"""Python Celery 5 + Redis, measured the way benches/worker.rs measures celeriac.

Run by bench/worker_vs_celery.sh with the venv's Python. Starts its own redis-server on a free
TCP port (loopback), then:

- enqueue: `task.apply_async()` in a loop (Celery has no batched publish).
- drain: N no-op tasks and a sentinel queued first; `celery worker` (prefork, --concurrency =
  cores, Celery's default) started; rate = N / (sentinel ran - worker ready). Worker start-up
  is excluded (it is reported separately), which favours Celery.
- latency: idle worker; one `stamp` task at a time, 2 ms apart; enqueue-to-start = the time the
  task body starts minus the time just before `apply_async`.
- rss: RSS of the idle worker's main process and of all its processes (prefork children).

    celery_bench.py [--quick] [--json PATH] [--only drain,latency,enqueue,rss]
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(tmp):
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", tmp, "--logfile", os.path.join(tmp, "redis.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    import redis
    client = redis.Redis.from_url(url)
    deadline = time.time() + 15
    while True:
        try:
            client.ping()
            return proc, url, client
        except Exception:
            if time.time() > deadline:
                raise
            time.sleep(0.02)


def start_worker(url, tmp, name):
    env = dict(os.environ, CELERIAC_BENCH_BROKER=url, PYTHONPATH=HERE)
    log = open(os.path.join(tmp, f"{name}.log"), "w")
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "celery_app", "worker", "-Q", "bench",
         "-P", "prefork", "-c", str(os.cpu_count()), "-l", "warning",
         "--without-gossip", "--without-mingle", "--without-heartbeat"],
        cwd=HERE, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def stop_worker(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def wait_key(client, key, timeout=600):
    deadline = time.time() + timeout
    while True:
        v = client.get(key)
        if v is not None:
            return float(v)
        if time.time() > deadline:
            raise TimeoutError(key)
        time.sleep(0.005)


def bench_enqueue(app_mod, client, n):
    client.flushall()
    t = time.perf_counter()
    for _ in range(n):
        app_mod.noop_ignore.apply_async()
    took = time.perf_counter() - t
    rate = n / took
    print(f"apply_async loop: {n} in {took:.2f}s = {rate:.0f}/s")
    client.flushall()
    return {"what": "enqueue", "n": n, "seconds": took, "per_second": rate}


def bench_drain(app_mod, client, url, tmp, n, results):
    client.flushall()
    task = app_mod.noop if results else app_mod.noop_ignore
    for _ in range(n):
        task.apply_async()
    app_mod.sentinel.apply_async(args=["bench:done"])
    spawned = time.time()
    worker = start_worker(url, tmp, f"drain-{results}")
    try:
        ready = wait_key(client, "bench:ready")
        done = wait_key(client, "bench:done")
    finally:
        stop_worker(worker)
    took = done - ready
    rate = n / took
    label = "on" if results else "off"
    print(f"drain {n} no-op tasks, results {label}, prefork -c {os.cpu_count()}: "
          f"{took:.2f}s = {rate:.0f}/s (from ready; start-up took {ready - spawned:.2f}s)")
    return {"what": "drain", "n": n, "results": results, "concurrency": os.cpu_count(),
            "seconds": took, "per_second": rate, "startup_seconds": ready - spawned}


def percentile(xs, p):
    return xs[min(int(len(xs) * p), len(xs) - 1)]


def bench_latency(app_mod, client, url, tmp, samples):
    client.flushall()
    worker = start_worker(url, tmp, "latency")
    try:
        wait_key(client, "bench:ready")
        app_mod.stamp.apply_async().get(timeout=30)
        sent = []
        for i in range(samples + 20):
            t = time.time()
            r = app_mod.stamp.apply_async()
            if i >= 20:
                sent.append((r, t))
            time.sleep(0.002)
        lat = sorted((r.get(timeout=60) - t) * 1000 for r, t in sent)
    finally:
        stop_worker(worker)
    p50, p90, p99, mx = (percentile(lat, 0.5), percentile(lat, 0.9),
                         percentile(lat, 0.99), lat[-1])
    print(f"enqueue-to-start latency, idle worker, {samples} tasks 2 ms apart: "
          f"p50 {p50:.3f} ms  p90 {p90:.3f} ms  p99 {p99:.3f} ms  max {mx:.3f} ms")
    return {"what": "latency", "samples": samples, "p50_ms": p50, "p90_ms": p90,
            "p99_ms": p99, "max_ms": mx}


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def descendants(pid):
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rfind(")") + 2:].split()[1])
        if ppid == pid:
            child = int(entry)
            out.append(child)
            out.extend(descendants(child))
    return out


def bench_rss(app_mod, client, url, tmp):
    client.flushall()
    worker = start_worker(url, tmp, "rss")
    try:
        wait_key(client, "bench:ready")
        app_mod.noop.apply_async().get(timeout=30)
        time.sleep(1)
        main = rss_kib(worker.pid)
        total = main + sum(rss_kib(p) for p in descendants(worker.pid))
    finally:
        stop_worker(worker)
    print(f"idle worker (prefork -c {os.cpu_count()}) after one task: main process "
          f"{main / 1024:.1f} MiB, all its processes {total / 1024:.1f} MiB")
    return {"what": "rss", "rss_mib": main / 1024, "total_mib": total / 1024}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json")
    parser.add_argument("--only", default="")
    args, _ = parser.parse_known_args()
    only = [w for w in args.only.split(",") if w]
    wanted = lambda w: not only or w in only  # noqa: E731
    if shutil.which("redis-server") is None:
        sys.exit("redis-server is needed")
    enqueue_n, drain_n, samples = (5_000, 5_000, 300) if args.quick else (20_000, 20_000, 1000)

    tmp = tempfile.mkdtemp(prefix="celery-bench-")
    redis_proc, url, client = start_redis(tmp)
    os.environ["CELERIAC_BENCH_BROKER"] = url
    sys.path.insert(0, HERE)
    import celery_app as app_mod
    import celery
    out = []
    try:
        if wanted("enqueue"):
            out.append(bench_enqueue(app_mod, client, enqueue_n))
        if wanted("drain"):
            for results in (False, True):
                out.append(bench_drain(app_mod, client, url, tmp, drain_n, results))
        if wanted("latency"):
            out.append(bench_latency(app_mod, client, url, tmp, samples))
        if wanted("rss"):
            out.append(bench_rss(app_mod, client, url, tmp))
    finally:
        redis_proc.kill()
        redis_proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"system": f"celery {celery.__version__}", "results": out}, f, indent=2)


if __name__ == "__main__":
    main()
