//! `next_after` and `CronExpr::parse` cost: typical expressions (target < 2 µs median per
//! `next_after`) and the worst cases of the calendar search (rare day combinations that
//! make the search walk months or years ahead).

use std::hint::black_box;

use celeriac::schedule::{CronExpr, CronSchedule};
use chrono::{DateTime, Duration, Utc};
use chrono_tz::Tz;
use criterion::{Criterion, criterion_group, criterion_main};

const CASES: [(&str, &str, &str); 6] = [
    ("typical", "*/5 * * * *", "UTC"),
    ("typical", "30 2 * * *", "Asia/Shanghai"),
    ("typical", "0 9 * * MON-FRI", "America/New_York"),
    ("worst", "0 0 29 2 MON", "UTC"),
    ("worst", "0 0 L * FRI#5", "UTC"),
    ("worst", "0 0 * 2 MON#5", "UTC"),
];

fn next_after(c: &mut Criterion) {
    let start: DateTime<Utc> = "2025-06-15T10:17:23Z".parse().unwrap();
    let mut group = c.benchmark_group("next_after");
    // Baseline for ratios (same run, same machine): one chrono-tz UTC -> local conversion,
    // the cheapest thing any zone-aware next-fire computation must do at least once.
    let shanghai: Tz = "Asia/Shanghai".parse().unwrap();
    let base_starts: Vec<DateTime<Utc>> = (0..997)
        .map(|i| start + Duration::minutes(i * 529))
        .collect();
    let mut j = 0;
    group.bench_function("baseline: utc->local conversion Asia/Shanghai", |b| {
        b.iter(|| {
            j = (j + 1) % base_starts.len();
            black_box(
                black_box(base_starts[j])
                    .with_timezone(&shanghai)
                    .naive_local(),
            )
        })
    });
    for (kind, expr, zone) in CASES {
        let tz: Tz = zone.parse().unwrap();
        let schedule = CronSchedule::new(CronExpr::parse(expr).unwrap(), tz);
        // Vary the start over a year so the figure is not one lucky instant.
        let starts: Vec<DateTime<Utc>> = (0..997)
            .map(|i| start + Duration::minutes(i * 529))
            .collect();
        let mut i = 0;
        group.bench_function(format!("{kind} `{expr}` {zone}"), |b| {
            b.iter(|| {
                i = (i + 1) % starts.len();
                black_box(schedule.next_after(black_box(starts[i])))
            })
        });
    }
    // A DST transition day: the search resolves a gap.
    let ny = CronSchedule::new(
        CronExpr::parse("30 2 * * *").unwrap(),
        chrono_tz::America::New_York,
    );
    let before_gap: DateTime<Utc> = "2025-03-09T05:00:00Z".parse().unwrap();
    group.bench_function("dst gap `30 2 * * *` America/New_York", |b| {
        b.iter(|| black_box(ny.next_after(black_box(before_gap))))
    });
    group.finish();
}

fn parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("parse");
    for expr in [
        "*/5 * * * *",
        "0 9 * * MON-FRI",
        "0 0 L * FRI#5",
        "0,15,30,45 8-18 1-7,15,L JAN-MAR,OCT-DEC 1-5",
        "@daily",
    ] {
        group.bench_function(format!("`{expr}`"), |b| {
            b.iter(|| black_box(CronExpr::parse(black_box(expr)).unwrap()))
        });
    }
    group.finish();
}

criterion_group!(benches, next_after, parse);
criterion_main!(benches);
