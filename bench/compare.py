#!/usr/bin/env python3
"""Prints the celeriac vs Celery table from the JSON files of benches/worker.rs and
bench/celery_bench.py (both measured in the same run of bench/worker_vs_celery.sh).

    compare.py CELERIAC_JSON CELERY_JSON
"""

import json
import sys


def load(path):
    with open(path) as f:
        return json.load(f)


def pick(doc, what, **match):
    for r in doc["results"]:
        if r["what"] == what and all(r.get(k) == v for k, v in match.items()):
            return r
    return None


def main():
    ours, theirs = load(sys.argv[1]), load(sys.argv[2])
    rows = []

    def rate_row(label, a, b):
        if a and b:
            rows.append((label, f"{a['per_second']:,.0f}/s", f"{b['per_second']:,.0f}/s",
                         f"{a['per_second'] / b['per_second']:.1f}x faster"))

    for results in (False, True):
        theirs_drain = pick(theirs, "drain", results=results)
        drains = [r for r in ours["results"] if r["what"] == "drain" and r["results"] == results]
        label = "on" if results else "off"
        c = theirs_drain["concurrency"] if theirs_drain else "?"
        default = next((r for r in drains if r["concurrency"] == 4), None)
        best = max(drains, key=lambda r: r["per_second"], default=None)
        rate_row(f"drain, results {label} (celeriac default --concurrency 4; Celery prefork -c {c})",
                 default, theirs_drain)
        if best and best is not default:
            rate_row(f"drain, results {label} (celeriac --concurrency {best['concurrency']})",
                     best, theirs_drain)
    rate_row("enqueue (celeriac enqueue_many; Celery apply_async loop)",
             pick(ours, "enqueue"), pick(theirs, "enqueue"))
    a, b = pick(ours, "latency"), pick(theirs, "latency")
    if a and b:
        for p in ("p50", "p99"):
            rows.append((f"enqueue-to-start latency {p}, idle worker", f"{a[p + '_ms']:.2f} ms",
                         f"{b[p + '_ms']:.2f} ms", f"{b[p + '_ms'] / a[p + '_ms']:.1f}x lower"))
    a, b = pick(ours, "rss"), pick(theirs, "rss")
    if a and b:
        rows.append(("idle worker RSS (Celery: all prefork processes)", f"{a['rss_mib']:.1f} MiB",
                     f"{b['total_mib']:.1f} MiB", f"{b['total_mib'] / a['rss_mib']:.0f}x smaller"))

    print(f"\n| measure | celeriac | {theirs['system']} | celeriac vs Celery |")
    print("|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
