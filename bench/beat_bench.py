#!/usr/bin/env python3
"""celeriac beat vs Celery beat, side by side in one run (driven by bench/beat.sh).

Scenarios, each on a private redis-server (no persistence) on a free loopback port:

- wave N (celeriac): N minute crons (`* * * * *`), all due at the same minute boundary.
  Measured from the boundary: how many are published after 1 s, when the last one is,
  the beat's peak RSS (VmHWM) and its start-up time (config load to leader).
- wave N (Celery beat): the same N `crontab()` entries in `beat_schedule`, `celery beat`
  publishing to the same kind of Redis; published after 1 s, 10 s, 60 s, peak RSS.
- lateness: one 1 s interval schedule for DURATION seconds; per tick, the Redis time at
  which the fire script ran minus the nominal instant (from the beat's journal), and the
  drift (whether every nominal instant is a whole second: the interval grid).

Writes a JSON document (--json) and prints a table.
"""

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time

import redis


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Redis:
    def __init__(self, tmp):
        self.port = free_port()
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", tmp],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.conn = redis.Redis(port=self.port)
        deadline = time.time() + 10
        while True:
            try:
                self.conn.ping()
                break
            except redis.ConnectionError:
                if time.time() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self):
        self.proc.kill()
        self.proc.wait()


def status_mib(pid, field):
    """A memory line of /proc/PID/status (VmRSS, VmHWM) in MiB."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def steady_rss_mib(pid):
    return status_mib(pid, "VmRSS")


def peak_rss_mib(pid):
    return status_mib(pid, "VmHWM")


def cpu_s(pid):
    """User + system CPU seconds of a process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def redis_cpu_s(conn):
    info = conn.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def next_boundary(min_lead):
    """The next whole minute at least `min_lead` seconds away."""
    now = time.time()
    b = (int(now) // 60 + 1) * 60
    while b - now < min_lead:
        b += 60
    return b


def watch_count(count, boundary, n, marks, limit):
    """Polls `count()` from just before `boundary` until it reaches n or `limit` seconds
    passed; returns {mark: count at boundary+mark} and the time the last one arrived."""
    while time.time() < boundary - 0.2:
        time.sleep(0.05)
    at = {}
    last = None
    while True:
        now = time.time()
        c = count()
        for m in marks:
            if m not in at and now >= boundary + m:
                at[m] = c
        if c >= n and last is None:
            last = now - boundary
        if (last is not None and all(m in at for m in marks if m <= last + 0.5)) or now > boundary + limit:
            break
        time.sleep(0.005 if now < boundary + 2 else 0.05)
    for m in marks:
        # Not polled at that mark: everything was out before it (or the wait was given up).
        at.setdefault(m, c if last is not None and last <= m else None)
    return at, last


def celeriac_wave(binary, n, tmp, limit):
    r = Redis(tmp)
    cfg = os.path.join(tmp, f"wave{n}.yaml")
    with open(cfg, "w") as f:
        f.write("queues:\n  default: {}\ntasks:\n  noop: {builtin: noop}\nschedules:\n")
        for i in range(n):
            f.write(f"  s{i}: {{cron: '* * * * *', task: noop}}\n")
    log = open(os.path.join(tmp, f"beat{n}.log"), "w")
    started = time.time()
    beat = subprocess.Popen([binary, "beat", "--allow-root", "-c", cfg, "--broker", r.url],
                            stdout=log, stderr=log, env={**os.environ, "CELERIAC_LOG": "warn"})
    try:
        # Leader = ready to fire (the config is loaded before the claim).
        while not r.conn.exists("celeriac:beat:leader"):
            if beat.poll() is not None or time.time() - started > 300:
                raise RuntimeError(f"beat did not start: {open(log.name).read()[-2000:]}")
            time.sleep(0.02)
        startup = time.time() - started
        boundary = next_boundary(3)
        ready_key = "celeriac:{q:default}:ready"
        while time.time() < boundary - 0.5:
            time.sleep(0.05)
        cpu0, rcpu0 = cpu_s(beat.pid), redis_cpu_s(r.conn)
        # Counted from just before the boundary: when start-up straddles a minute, the
        # takeover catches that minute's tick up (never-fired schedules are owed it) and the
        # queue already holds a wave.
        base = r.conn.zcard(ready_key)
        at, last = watch_count(lambda: r.conn.zcard(ready_key) - base, boundary, n, [1, 10, 60], limit)
        cpu, rcpu = cpu_s(beat.pid) - cpu0, redis_cpu_s(r.conn) - rcpu0
        rss = peak_rss_mib(beat.pid)
        steady = steady_rss_mib(beat.pid)
        return {"what": "wave", "impl": "celeriac", "schedules": n, "startup_s": round(startup, 2),
                "published_1s": at[1], "published_10s": at[10], "published_60s": at[60],
                "all_published_s": None if last is None else round(last, 3),
                "beat_cpu_s": round(cpu, 2), "redis_cpu_s": round(rcpu, 2),
                "peak_rss_mib": rss and round(rss, 1), "rss_after_mib": steady and round(steady, 1)}
    finally:
        beat.send_signal(signal.SIGTERM)
        try:
            beat.wait(10)
        except subprocess.TimeoutExpired:
            beat.kill()
        r.stop()


def celery_wave(python, n, tmp, limit):
    r = Redis(tmp)
    app_dir = os.path.join(tmp, f"celery{n}")
    os.makedirs(app_dir)
    with open(os.path.join(app_dir, "beatapp.py"), "w") as f:
        f.write(textwrap.dedent(f"""
            from celery import Celery
            from celery.schedules import crontab
            app = Celery('beatapp', broker='{r.url}')
            app.conf.timezone = 'UTC'
            app.conf.beat_schedule = {{
                f's{{i}}': {{'task': 'beatapp.noop', 'schedule': crontab()}} for i in range({n})
            }}
            @app.task
            def noop():
                pass
        """))
    log = open(os.path.join(tmp, f"celerybeat{n}.log"), "w")
    started = time.time()
    beat = subprocess.Popen(
        [python, "-m", "celery", "-A", "beatapp", "beat", "-s", os.path.join(app_dir, "sched"),
         "--loglevel", "warning"],
        cwd=app_dir, stdout=log, stderr=log, env={**os.environ, "PYTHONPATH": app_dir})
    try:
        time.sleep(5)  # imports and schedule set-up; Celery beat has no readiness signal
        if beat.poll() is not None:
            raise RuntimeError(f"celery beat died: {open(log.name).read()[-2000:]}")
        startup = time.time() - started
        boundary = next_boundary(5)
        while time.time() < boundary - 0.5:
            time.sleep(0.05)
        cpu0, rcpu0 = cpu_s(beat.pid), redis_cpu_s(r.conn)
        at, last = watch_count(lambda: r.conn.llen("celery"), boundary, n, [1, 10, 60], limit)
        cpu, rcpu = cpu_s(beat.pid) - cpu0, redis_cpu_s(r.conn) - rcpu0
        rss = peak_rss_mib(beat.pid)
        steady = steady_rss_mib(beat.pid)
        return {"what": "wave", "impl": "celery", "schedules": n, "startup_s": round(startup, 2),
                "published_1s": at[1], "published_10s": at[10], "published_60s": at[60],
                "all_published_s": None if last is None else round(last, 3),
                "beat_cpu_s": round(cpu, 2), "redis_cpu_s": round(rcpu, 2),
                "peak_rss_mib": rss and round(rss, 1), "rss_after_mib": steady and round(steady, 1)}
    finally:
        beat.kill()
        beat.wait()
        r.stop()


def celeriac_lateness(binary, seconds, tmp):
    r = Redis(tmp)
    cfg = os.path.join(tmp, "lateness.yaml")
    with open(cfg, "w") as f:
        f.write("queues:\n  default: {}\ntasks:\n  noop: {builtin: noop}\n"
                "schedules:\n  tick: {every: 1s, task: noop}\n")
    log = open(os.path.join(tmp, "lateness.log"), "w")
    beat = subprocess.Popen([binary, "beat", "--allow-root", "-c", cfg, "--broker", r.url],
                            stdout=log, stderr=log, env={**os.environ, "CELERIAC_LOG": "warn"})
    try:
        time.sleep(seconds + 1)
        entries = r.conn.xrange("celeriac:beat:journal", "-", "+")
        late = []
        off_grid = 0
        for _, e in entries:
            if e.get(b"event") != b"fired" or b"ticks" not in e:
                continue
            at_ms = int(e[b"at"])
            # One line per fire: schedule, queue, message id, nominal instant (Unix ms).
            for line in e[b"ticks"].decode().split("\n"):
                nominal_ms = int(line.split("\t")[3])
                if nominal_ms % 1000:
                    off_grid += 1
                late.append(at_ms - nominal_ms)
        late.sort()
        q = lambda p: late[min(len(late) - 1, int(p * len(late)))]
        return {"what": "lateness", "impl": "celeriac", "ticks": len(late),
                "p50_ms": q(0.5), "p99_ms": q(0.99), "max_ms": late[-1],
                "off_grid": off_grid, "peak_rss_mib": round(peak_rss_mib(beat.pid) or 0, 1)}
    finally:
        beat.send_signal(signal.SIGTERM)
        beat.wait(10)
        r.stop()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--celeriac", default="target/release/celeriac")
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--waves", default="10000,100000,1000000")
    p.add_argument("--celery-waves", default="10000")
    p.add_argument("--lateness-seconds", type=int, default=60)
    p.add_argument("--limit", type=float, default=70, help="longest wait for a wave (s)")
    p.add_argument("--json", default="target/bench-beat/results.json")
    a = p.parse_args()
    a.python = os.path.abspath(a.python) if os.sep in a.python else a.python
    a.celeriac = os.path.abspath(a.celeriac)
    os.makedirs(os.path.dirname(a.json) or ".", exist_ok=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="beat-bench-") as tmp:
        if a.lateness_seconds:
            results.append(celeriac_lateness(a.celeriac, a.lateness_seconds, tmp))
            print(results[-1], flush=True)
        for n in [int(x) for x in a.celery_waves.split(",") if x]:
            results.append(celery_wave(a.python, n, tmp, a.limit))
            print(results[-1], flush=True)
        for n in [int(x) for x in a.waves.split(",") if x]:
            results.append(celeriac_wave(a.celeriac, n, tmp, a.limit))
            print(results[-1], flush=True)
    with open(a.json, "w") as f:
        json.dump({"results": results}, f, indent=2)
    print()
    print("| scenario | schedules | published 1 s after the boundary | all published after | published after 60 s | CPU in the wave: beat + Redis | RSS after / peak | start-up |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        if r["what"] == "wave":
            allp = f"{r['all_published_s']:.3f} s" if r["all_published_s"] is not None else f"not within {a.limit:.0f} s"
            print(f"| {r['impl']} beat, minute crons | {r['schedules']:,} | {r['published_1s'] or 0:,} | {allp} | "
                  f"{r['published_60s'] or 0:,} | {r['beat_cpu_s']} s + {r['redis_cpu_s']} s | "
                  f"{r['rss_after_mib']} / {r['peak_rss_mib']} MiB | {r['startup_s']} s |")
    for r in results:
        if r["what"] == "lateness":
            print(f"\nceleriac beat, one 1 s interval for {r['ticks']} ticks: lateness p50 {r['p50_ms']:.1f} ms, "
                  f"p99 {r['p99_ms']:.1f} ms, max {r['max_ms']:.1f} ms (Redis TIME at the fire script minus nominal, "
                  f"ms resolution); ticks off the 1 s grid: {r['off_grid']}; RSS {r['peak_rss_mib']} MiB")


if __name__ == "__main__":
    main()
