//! Configuration loading: the model a valid file produces, every kind of error with its
//! exact `file:line:col: message`, directory merging, hostile input, and fuzzing.
//!
//! Fixtures live in `tests/fixtures/config/`; paths are relative to the package root,
//! which is the working directory of integration tests.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use celeriac::config::{
    self, Builtin, CatchUp, Config, ConfigErrors, Expires, MisfirePolicy, Overlap, RetryPolicy,
    TaskKind, yaml,
};
use celeriac::schedule::{CronExpr, CronSchedule, IntervalSchedule, Timing};
use chrono::{TimeZone, Utc};
use chrono_tz::Tz;
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use serde_json::json;

const FIXTURES: &str = "tests/fixtures/config";

fn fixture(name: &str) -> PathBuf {
    Path::new(FIXTURES).join(name)
}

fn load_fixture(name: &str) -> Config {
    config::load(&fixture(name)).unwrap_or_else(|errors| panic!("{errors}"))
}

/// The error lines for a configuration given as text (as if read from `cfg.yaml`).
fn errors_of(text: &str) -> Vec<String> {
    match config::load_str(text, Path::new("cfg.yaml")) {
        Ok(config) => panic!("expected errors, got a valid config: {}", config.summary()),
        Err(errors) => lines(&errors),
    }
}

/// The single error line for a configuration given as text.
fn error_of(text: &str) -> String {
    let errors = errors_of(text);
    assert_eq!(errors.len(), 1, "expected exactly one error: {errors:#?}");
    errors.into_iter().next().unwrap()
}

fn lines(errors: &ConfigErrors) -> Vec<String> {
    errors.to_string().lines().map(str::to_string).collect()
}

fn load_text(text: &str) -> Config {
    config::load_str(text, Path::new("cfg.yaml")).unwrap_or_else(|errors| panic!("{errors}"))
}

/// A minimal valid configuration plus one schedule whose body is `schedule` (indented
/// by four spaces, first line is line 6).
fn with_schedule(schedule: &str) -> String {
    let mut text = String::from(
        "tasks:\n  noop: {builtin: noop}\n  cleanup: {command: [/bin/cleanup, '{{days}}']}\n\
         schedules:\n  s:\n",
    );
    for line in schedule.lines() {
        text.push_str("    ");
        text.push_str(line);
        text.push('\n');
    }
    text
}

// ----- a valid configuration -------------------------------------------------------------

#[test]
fn realistic_example_loads_to_the_expected_model() {
    let config = load_fixture("example.yaml");
    let shanghai: Tz = "Asia/Shanghai".parse().unwrap();
    let berlin: Tz = "Europe/Berlin".parse().unwrap();

    assert_eq!(config.timezone, shanghai);
    assert_eq!(config.broker.as_deref(), Some("redis://127.0.0.1:6379/0"));
    assert_eq!(config.result_expires, Duration::from_secs(600));
    assert_eq!(config.sources, [fixture("example.yaml")]);
    assert_eq!(config.summary(), "3 schedules, 3 tasks, 2 queues");
    assert_eq!(
        config.queues.keys().collect::<Vec<_>>(),
        ["default", "reports"]
    );
    assert_eq!(
        config.queues["reports"].loc.as_ref().unwrap().to_string(),
        "tests/fixtures/config/example.yaml:8:3"
    );

    let cleanup = &config.tasks["cleanup"];
    assert_eq!(
        cleanup.kind,
        TaskKind::Command {
            argv: vec![
                "/usr/local/bin/cleanup".into(),
                "--days".into(),
                "{{days}}".into()
            ]
        }
    );
    assert_eq!(cleanup.timeout, Some(Duration::from_secs(300)));
    assert_eq!(
        cleanup.retry,
        RetryPolicy {
            max: 3,
            backoff: Duration::from_secs(10),
            max_backoff: Duration::from_secs(300)
        }
    );
    assert_eq!(
        cleanup.loc.to_string(),
        "tests/fixtures/config/example.yaml:11:3"
    );
    assert_eq!(
        config.tasks["report"].timeout,
        Some(Duration::from_secs(90))
    );
    assert_eq!(config.tasks["report"].retry, RetryPolicy::default());
    assert_eq!(config.tasks["noop"].kind, TaskKind::Builtin(Builtin::Noop));
    assert_eq!(config.tasks["noop"].timeout, None);

    let nightly = &config.schedules["nightly-cleanup"];
    assert_eq!(nightly.task, "cleanup");
    assert_eq!(
        nightly.timing,
        Timing::Cron(CronSchedule::new(
            CronExpr::parse("30 2 * * *").unwrap(),
            shanghai
        ))
    );
    assert_eq!(nightly.timezone, shanghai);
    assert_eq!(nightly.args, json!({"days": 7}));
    assert_eq!(nightly.kwargs, None);
    assert_eq!(nightly.queue, "default");
    assert_eq!(nightly.priority, 5);
    assert_eq!(
        nightly.misfire,
        MisfirePolicy {
            grace: Some(Duration::from_secs(600)),
            catch_up: CatchUp::Latest,
            max: 100
        }
    );
    assert_eq!(nightly.overlap, Overlap::Allow);
    assert_eq!(nightly.expires, Expires::Auto);
    assert!(nightly.enabled);
    assert_eq!(
        nightly.loc.to_string(),
        "tests/fixtures/config/example.yaml:23:3"
    );
    let weekly = &config.schedules["weekly-report"];
    assert_eq!(weekly.timezone, berlin);
    assert_eq!(
        weekly.timing,
        Timing::Cron(CronSchedule::new(
            CronExpr::parse("0 9 * * MON").unwrap(),
            berlin
        ))
    );
    assert_eq!(weekly.queue, "reports");
    assert_eq!(weekly.priority, 8);
    assert_eq!(
        weekly.misfire,
        MisfirePolicy {
            grace: None,
            catch_up: CatchUp::All,
            max: 5
        }
    );
    assert_eq!(weekly.overlap, Overlap::Skip);
    assert_eq!(weekly.expires, Expires::After(Duration::from_secs(3600)));

    let heartbeat = &config.schedules["heartbeat"];
    let anchor = Utc.with_ymd_and_hms(2023, 12, 31, 16, 0, 0).unwrap();
    assert_eq!(
        heartbeat.timing,
        Timing::Interval(IntervalSchedule::new(Duration::from_secs(90), Some(anchor)).unwrap())
    );
    assert_eq!(heartbeat.timezone, shanghai);
    assert_eq!(heartbeat.args, json!([1, "two", 3.5, true, null]));
    assert_eq!(
        heartbeat.kwargs,
        Some(json!({"verbose": true}).as_object().unwrap().clone())
    );
    assert_eq!(heartbeat.expires, Expires::Never);
    assert!(!heartbeat.enabled);
    // The next fire follows the anchored grid.
    let after = Utc.with_ymd_and_hms(2024, 6, 1, 0, 0, 10).unwrap();
    assert_eq!(
        heartbeat.timing.next_after(after),
        Some(Utc.with_ymd_and_hms(2024, 6, 1, 0, 1, 30).unwrap())
    );
}

/// The example configuration that `celeriac run -c schedules/` uses out of the box.
#[test]
fn the_shipped_example_configuration_is_valid() {
    let config = config::load(Path::new("schedules")).unwrap_or_else(|errors| panic!("{errors}"));
    assert_eq!(config.summary(), "4 schedules, 3 tasks, 2 queues");
    assert_eq!(config.timezone, "Asia/Shanghai".parse::<Tz>().unwrap());
    assert_eq!(config.broker.as_deref(), Some("memory"));
}

/// The YAML examples in docs/configuration.md are valid (the complete ones load; the
/// fragments parse).
#[test]
fn the_documented_examples_are_valid() {
    let doc = std::fs::read_to_string("docs/configuration.md").unwrap();
    let blocks: Vec<&str> = doc
        .split("```yaml\n")
        .skip(1)
        .map(|rest| rest.split("```").next().unwrap())
        .collect();
    assert!(blocks.len() >= 3);
    let full = load_text(blocks[0]);
    assert_eq!(full.summary(), "1 schedule, 2 tasks, 2 queues");
    for block in &blocks[1..] {
        let parsed = yaml::parse(block, &std::sync::Arc::from(Path::new("doc.yaml")));
        assert!(parsed.errors.is_empty(), "{block}\n{:?}", parsed.errors);
    }

    // The error example: the files it shows (blocks starting with `# schedules/NAME`)
    // give exactly the errors it shows.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("schedules")).unwrap();
    for block in &blocks {
        if let Some(name) = block.strip_prefix("# schedules/") {
            let name = name.lines().next().unwrap();
            std::fs::write(dir.path().join("schedules").join(name), block).unwrap();
        }
    }
    let shown = doc
        .split("```text\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .unwrap();
    let errors = config::load(&dir.path().join("schedules")).unwrap_err();
    let prefix = format!("{}/", dir.path().display());
    assert_eq!(errors.to_string().replace(&prefix, ""), shown.trim_end());
}

#[test]
fn defaults_apply_when_keys_are_left_out() {
    let config = load_text(
        "tasks:\n  noop: {builtin: noop}\nschedules:\n  tick:\n    task: noop\n    every: 1m\n",
    );
    assert_eq!(config.timezone, Tz::UTC);
    assert_eq!(config.broker, None);
    assert_eq!(config.result_expires, Duration::from_secs(86_400));
    assert_eq!(config.summary(), "1 schedule, 1 task, 1 queue");
    let tick = &config.schedules["tick"];
    assert_eq!(tick.args, json!({}));
    assert_eq!(tick.queue, "default");
    assert_eq!(tick.priority, 5);
    assert_eq!(tick.misfire, MisfirePolicy::default());
    assert_eq!(tick.overlap, Overlap::Allow);
    assert_eq!(tick.expires, Expires::Auto);
    assert!(tick.enabled);
    assert_eq!(
        tick.timing,
        Timing::Interval(IntervalSchedule::new(Duration::from_secs(60), None).unwrap())
    );
}

#[test]
fn durations_accept_humantime_and_seconds() {
    let config = load_text(
        "result_expires: 1h30m\ntasks:\n  a: {builtin: sleep, timeout: 90}\n  \
         b: {builtin: sleep, timeout: 0.5}\n  c: {builtin: sleep, timeout: '2 hours'}\n  \
         d: {builtin: sleep, retry: {backoff: 10m}}\n",
    );
    assert_eq!(config.result_expires, Duration::from_secs(5400));
    assert_eq!(config.tasks["a"].timeout, Some(Duration::from_secs(90)));
    assert_eq!(config.tasks["b"].timeout, Some(Duration::from_millis(500)));
    assert_eq!(config.tasks["c"].timeout, Some(Duration::from_secs(7200)));
    // A first backoff longer than the default cap raises the cap.
    assert_eq!(
        config.tasks["d"].retry.max_backoff,
        Duration::from_secs(600)
    );
}

#[test]
fn an_empty_file_is_an_empty_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.yaml");
    std::fs::write(&path, "").unwrap();
    let config = config::load(&path).unwrap();
    assert_eq!(config.summary(), "0 schedules, 0 tasks, 1 queue");
    assert!(config.queues.contains_key("default"));
}

#[test]
fn aliases_repeat_values() {
    let config = load_fixture("aliases.yaml");
    let (first, second) = (&config.schedules["first"], &config.schedules["second"]);
    assert_eq!(first.args, json!({"region": "eu", "retries": 2}));
    assert_eq!(second.args, first.args);
    assert_eq!(second.misfire.catch_up, CatchUp::None);
}

// ----- every kind of error ------------------------------------------------------------

#[test]
fn all_errors_are_collected_in_one_run_sorted_by_position() {
    let errors = config::load(&fixture("errors/everything.yaml")).unwrap_err();
    let expected = std::fs::read_to_string(fixture("errors/everything.expected")).unwrap();
    // Line by line, so that a failure shows which message changed.
    assert_eq!(lines(&errors), expected.lines().collect::<Vec<_>>());
    assert_eq!(errors.len(), 34);
}

#[test]
fn unknown_top_level_key_suggests_the_closest() {
    assert_eq!(
        error_of("schedule: {}\n"),
        "cfg.yaml:1:1: unknown key `schedule` at the top level; did you mean `schedules`?"
    );
    assert_eq!(
        error_of("workers: 4\n"),
        "cfg.yaml:1:1: unknown key `workers` at the top level; expected `timezone`, `broker`, \
         `result_expires`, `signing_key_file`, `queues`, `tasks` or `schedules`"
    );
}

#[test]
fn unknown_key_suggests_among_the_keys_valid_there() {
    assert_eq!(
        error_of(&with_schedule("task: noop\nevery: 1m\npriorty: 3")),
        "cfg.yaml:8:5: unknown key `priorty` in schedule `s`; did you mean `priority`?"
    );
    assert_eq!(
        errors_of(&with_schedule("task: noop\ninterval: 1m")),
        [
            "cfg.yaml:5:3: schedule `s` has neither `cron` nor `every`",
            "cfg.yaml:7:5: unknown key `interval` in schedule `s`; did you mean `every`?",
        ]
    );
    assert_eq!(
        error_of("tasks:\n  t: {builtin: noop, retry: {max: 1, delay: 1s}}\n"),
        "cfg.yaml:2:38: unknown key `delay` in `retry` of task `t`; expected `max`, `backoff` \
         or `max_backoff`"
    );
}

#[test]
fn merge_keys_are_explained() {
    assert_eq!(
        errors_of("tasks:\n  t:\n    <<: {builtin: noop}\n"),
        [
            "cfg.yaml:2:3: task `t` has none of `command`, `builtin` or `handler`",
            "cfg.yaml:3:5: unknown key `<<` in task `t`; merge keys (`<<`) are not supported",
        ]
    );
}

#[test]
fn wrong_types_say_what_was_expected_and_found() {
    assert_eq!(
        error_of("tasks:\n  t:\n    builtin: noop\n    timeout: [1, 2]\n"),
        "cfg.yaml:4:14: expected a duration like `90s` for `timeout`, found a list"
    );
    assert_eq!(
        error_of("tasks: [a, b]\n"),
        "cfg.yaml:1:8: expected a mapping of task names to tasks, found a list"
    );
    assert_eq!(
        error_of("- a\n- b\n"),
        "cfg.yaml:1:1: expected a mapping of settings (`timezone`, `queues`, `tasks`, \
         `schedules`, ...) at the top level, found a list"
    );
    assert_eq!(
        error_of(&with_schedule("task: noop\nevery: 1m\nargs: hello")),
        "cfg.yaml:8:11: expected a mapping or a list for `args`, found a string"
    );
    assert_eq!(
        error_of(&with_schedule("task: noop\nevery: 1m\nenabled: 1")),
        "cfg.yaml:8:14: expected `true` or `false` for `enabled`, found an integer"
    );
    assert_eq!(
        error_of(&with_schedule("task: noop\nevery: 1m\noverlap: true")),
        "cfg.yaml:8:14: expected `allow` or `skip` for `overlap`, found a boolean"
    );
    assert_eq!(
        error_of(&with_schedule("task: noop\nevery: 1m\nkwargs: [1]")),
        "cfg.yaml:8:13: expected a mapping for `kwargs`, found a list"
    );
    // An omitted value is reported at its key (found by fuzzing: it used to point past
    // the end of the file).
    assert_eq!(
        error_of(&format!(
            "{}    overlap:",
            with_schedule("task: noop\nevery: 1m")
        )),
        "cfg.yaml:8:5: expected `allow` or `skip` for `overlap`, found nothing (null)"
    );
    assert_eq!(
        error_of("broker: 6379\n"),
        "cfg.yaml:1:9: expected a string for `broker`, found an integer"
    );
}

#[test]
fn invalid_durations_point_at_the_bad_part() {
    assert_eq!(
        error_of("tasks:\n  t: {builtin: noop, timeout: 5 minutez}\n"),
        "cfg.yaml:2:33: invalid duration `5 minutez` for `timeout`: unknown unit `minutez`; \
         did you mean `minute`?"
    );
    assert_eq!(
        error_of("tasks:\n  t: {builtin: noop, timeout: '90'}\n"),
        "cfg.yaml:2:31: invalid duration `90` for `timeout`: add a unit, such as `90s` or `90m`"
    );
    assert_eq!(
        error_of("tasks:\n  t: {builtin: noop, timeout: -5}\n"),
        "cfg.yaml:2:31: invalid duration `-5` for `timeout`: must not be negative"
    );
    assert_eq!(
        error_of("tasks:\n  t: {builtin: noop, timeout: 0.0001}\n"),
        "cfg.yaml:2:31: invalid duration `0.0001` for `timeout`: seconds are precise to the \
         millisecond at most"
    );
    assert_eq!(
        error_of("tasks:\n  t: {builtin: noop, timeout: 0s}\n"),
        "cfg.yaml:2:31: `timeout` must be longer than 0s"
    );
    assert_eq!(
        error_of("result_expires: 500ms\n"),
        "cfg.yaml:1:17: `result_expires` must be at least 1s"
    );
}

/// The column of a cron error points inside the expression, at the part the cron parser
/// blames (its span), for plain, double- and single-quoted values alike.
#[test]
fn bad_cron_field_is_pointed_at_inside_the_expression() {
    let expr = "0 61 * * *";
    let error = CronExpr::parse(expr).unwrap_err();
    let message = &error.message;
    let offset = error
        .span
        .as_ref()
        .map_or(0, |s| expr[..s.start].chars().count()) as u32;
    for (value, value_col) in [
        (format!("\"{expr}\""), 11),
        (format!("'{expr}'"), 11),
        (expr.to_string(), 11),
    ] {
        let quoted = u32::from(value.starts_with(['"', '\'']));
        let col = if error.span.is_some() {
            value_col + quoted + offset
        } else {
            value_col
        };
        assert_eq!(
            error_of(&with_schedule(&format!("task: noop\ncron: {value}"))),
            format!("cfg.yaml:7:{col}: invalid cron expression `{expr}`: {message}")
        );
    }
}

#[test]
fn unquoted_cron_star_gets_a_quoting_hint() {
    assert_eq!(
        error_of(&with_schedule("task: noop\ncron: */5 * * * *")),
        "cfg.yaml:7:11: invalid YAML: while scanning an anchor or alias, did not find expected \
         alphabetic or numeric character; a value starting with `*` (such as the cron \
         expression `*/5 * * * *`) must be quoted"
    );
    assert_eq!(
        error_of(&with_schedule("task: noop\ncron: @daily")),
        "cfg.yaml:7:11: invalid YAML: unexpected character: `@'; a value starting with `@` \
         (such as the cron macro `@daily`) must be quoted"
    );
}

#[test]
fn unknown_zone_suggests_a_zone() {
    assert_eq!(
        error_of("timezone: Asia/Shangai\n"),
        "cfg.yaml:1:11: unknown time zone `Asia/Shangai`; did you mean `Asia/Shanghai`?"
    );
    assert_eq!(
        error_of("timezone: Shanghai\n"),
        "cfg.yaml:1:11: unknown time zone `Shanghai`; did you mean `Asia/Shanghai`?"
    );
    assert_eq!(
        error_of(&with_schedule(
            "task: noop\ncron: '0 0 * * *'\ntimezone: Mars/Base"
        )),
        "cfg.yaml:8:15: unknown time zone `Mars/Base` (expected an IANA name such as \
         `Europe/Berlin`)"
    );
}

#[test]
fn unknown_task_or_queue_points_at_the_reference() {
    assert_eq!(
        error_of(&with_schedule("task: nop\nevery: 1m")),
        "cfg.yaml:6:11: unknown task `nop`; did you mean `noop`?"
    );
    assert_eq!(
        error_of(&with_schedule("task: backup\nevery: 1m")),
        "cfg.yaml:6:11: unknown task `backup`"
    );
    assert_eq!(
        error_of(&with_schedule("task: noop\nevery: 1m\nqueue: defualt")),
        "cfg.yaml:8:12: unknown queue `defualt`; did you mean `default`?"
    );
}

#[test]
fn timing_needs_exactly_one_of_cron_and_every() {
    assert_eq!(
        error_of(&with_schedule("task: noop\ncron: '* * * * *'\nevery: 1m")),
        "cfg.yaml:8:5: schedule `s` has both `cron` and `every`; use one of them"
    );
    assert_eq!(
        error_of(&with_schedule("task: noop")),
        "cfg.yaml:5:3: schedule `s` has neither `cron` nor `every`"
    );
    assert_eq!(
        error_of(&with_schedule(
            "task: noop\ncron: '* * * * *'\nanchor: 2024-01-01T00:00:00Z"
        )),
        "cfg.yaml:8:5: `anchor` only applies to `every` schedules; a cron schedule follows the \
         clock"
    );
    assert_eq!(
        error_of(&with_schedule("task: noop\nevery: 500ms")),
        "cfg.yaml:7:12: invalid `every`: interval must be at least 1s, got 500ms"
    );
}

#[test]
fn anchor_must_be_rfc3339() {
    assert_eq!(
        error_of(&with_schedule("task: noop\nevery: 1h\nanchor: yesterday")),
        "cfg.yaml:8:13: invalid `anchor` `yesterday`: expected an RFC 3339 time such as \
         `2024-01-01T00:00:00Z` or `2024-01-01T08:00:00+08:00` (premature end of input)"
    );
}

#[test]
fn priority_must_be_from_0_to_9() {
    assert_eq!(
        error_of(&with_schedule("task: noop\nevery: 1m\npriority: 10")),
        "cfg.yaml:8:15: `priority` must be an integer from 0 to 9 (higher runs first), found 10"
    );
    assert_eq!(
        error_of(&with_schedule("task: noop\nevery: 1m\npriority: high")),
        "cfg.yaml:8:15: expected an integer from 0 to 9 (higher runs first) for `priority`, \
         found a string"
    );
}

#[test]
fn placeholders_must_be_provided_by_args() {
    assert_eq!(
        error_of(&with_schedule("task: cleanup\nevery: 1d\nargs: {day: 7}")),
        "cfg.yaml:8:11: `args` does not provide `days`, which task `cleanup` uses as \
         `{{days}}` in its command"
    );
    // Without `args`, the error is at the task reference.
    assert_eq!(
        error_of(&with_schedule("task: cleanup\nevery: 1d")),
        "cfg.yaml:6:11: `args` does not provide `days`, which task `cleanup` uses as \
         `{{days}}` in its command"
    );
    // Positional args cannot fill named placeholders.
    assert_eq!(
        error_of(&with_schedule("task: cleanup\nevery: 1d\nargs: [7]")),
        "cfg.yaml:8:11: `args` does not provide `days`, which task `cleanup` uses as \
         `{{days}}` in its command"
    );
    load_text(&with_schedule("task: cleanup\nevery: 1d\nargs: {days: 7}"));
}

#[test]
fn tasks_need_exactly_one_of_command_and_builtin() {
    assert_eq!(
        error_of("tasks:\n  t:\n    builtin: noop\n    command: [/bin/true]\n"),
        "cfg.yaml:4:5: task `t` has both `command` and `builtin`; use one of them"
    );
    assert_eq!(
        error_of("tasks:\n  t: {timeout: 1m}\n"),
        "cfg.yaml:2:3: task `t` has none of `command`, `builtin` or `handler`"
    );
    assert_eq!(
        error_of("tasks:\n  t:\n"),
        "cfg.yaml:2:3: task `t` has none of `command`, `builtin` or `handler`"
    );
}

#[test]
fn commands_are_argument_lists_of_strings() {
    assert_eq!(
        error_of("tasks:\n  t: {command: []}\n"),
        "cfg.yaml:2:16: `command` must name a program to run; found an empty list"
    );
    assert_eq!(
        error_of("tasks:\n  t: {command: ['', x]}\n"),
        "cfg.yaml:2:17: the program (first argument of `command`) is empty"
    );
    assert_eq!(
        error_of("tasks:\n  t: {command: [/bin/sleep, 1.5]}\n"),
        "cfg.yaml:2:29: expected a string for argument 2 of `command`, found a float (quote \
         it: \"1.5\")"
    );
    assert_eq!(
        error_of("tasks:\n  t: {command: /bin/true}\n"),
        "cfg.yaml:2:16: expected a list of arguments like `[\"/usr/local/bin/backup\", \
         \"--full\"]` for `command`, found a string (commands never run through a shell)"
    );
    assert_eq!(
        error_of("tasks:\n  t: {command: [/bin/echo, '{{ a b }']}\n"),
        "cfg.yaml:2:28: unterminated placeholder `{{ a b }`; placeholders look like `{{name}}`"
    );
}

#[test]
fn unknown_builtin_suggests_one() {
    assert_eq!(
        error_of("tasks:\n  t: {builtin: slep}\n"),
        "cfg.yaml:2:16: unknown builtin `slep`; did you mean `sleep`?"
    );
    assert_eq!(
        error_of("tasks:\n  t: {builtin: python}\n"),
        "cfg.yaml:2:16: unknown builtin `python`; expected `noop`, `sleep`, `echo` or `fail`"
    );
}

#[test]
fn retry_fields_are_checked() {
    assert_eq!(
        error_of("tasks:\n  t: {builtin: fail, retry: {max: many}}\n"),
        "cfg.yaml:2:35: expected an integer of 0 or more for `max`, found a string"
    );
    assert_eq!(
        error_of("tasks:\n  t: {builtin: fail, retry: {backoff: 1m, max_backoff: 10s}}\n"),
        "cfg.yaml:2:56: `max_backoff` (10s) must not be shorter than `backoff` (1m)"
    );
    assert_eq!(
        error_of("tasks:\n  t: {builtin: fail, retry: 3}\n"),
        "cfg.yaml:2:29: expected a mapping like `{max: 3, backoff: 10s}` for `retry`, found an \
         integer"
    );
}

#[test]
fn misfire_overlap_and_expires_are_checked() {
    assert_eq!(
        error_of(&with_schedule(
            "task: noop\nevery: 1m\nmisfire: {catch_up: every}"
        )),
        "cfg.yaml:8:25: unknown catch_up `every`; expected `none`, `latest` or `all`"
    );
    assert_eq!(
        error_of(&with_schedule(
            "task: noop\nevery: 1m\nmisfire: {catch_up: all, max: 0}"
        )),
        "cfg.yaml:8:35: `max` must be an integer of 1 or more, found 0"
    );
    assert_eq!(
        error_of(&with_schedule("task: noop\nevery: 1m\nmisfire: {max: 5}")),
        "cfg.yaml:8:15: `max` only applies to `catch_up: all`"
    );
    assert_eq!(
        error_of(&with_schedule("task: noop\nevery: 1m\nexpires: nevr")),
        "cfg.yaml:8:14: invalid `expires` `nevr`; did you mean `never`?"
    );
    assert_eq!(
        error_of(&with_schedule("task: noop\nevery: 1m\nexpires: 0s")),
        "cfg.yaml:8:14: `expires` must be longer than 0s"
    );
}

#[test]
fn args_must_be_representable_as_json() {
    assert_eq!(
        error_of(&with_schedule("task: noop\nevery: 1m\nargs: {x: .nan}")),
        "cfg.yaml:8:15: `.nan` cannot be used in `args` (JSON has no NaN or infinity)"
    );
    assert_eq!(
        error_of(&with_schedule(
            "task: noop\nevery: 1m\nargs: {1: a, '1': b}"
        )),
        "cfg.yaml:8:18: duplicate key `1` in `args`"
    );
}

#[test]
fn names_are_checked() {
    assert_eq!(
        error_of("queues:\n  'a,b': {}\n"),
        "cfg.yaml:2:3: invalid queue name `a,b`: `,` is not allowed (names are letters, \
         digits, `_`, `-`, `.`, `:`, `/` and `@`)"
    );
    assert_eq!(
        error_of("queues:\n  ~: {}\n"),
        "cfg.yaml:2:3: expected a queue name, found nothing (null)"
    );
}

#[test]
fn broker_url_scheme_is_checked() {
    assert_eq!(
        error_of("broker: amqp://guest@localhost//\n"),
        "cfg.yaml:1:9: unsupported broker `amqp://guest@localhost//`; expected `memory` or a \
         `redis://`, `rediss://`, `unix://` or `redis+unix://` URL"
    );
    for ok in [
        "memory",
        "redis://h:6379/0",
        "rediss://h",
        "unix:///run/redis.sock",
    ] {
        assert_eq!(
            load_text(&format!("broker: {ok}\n")).broker.as_deref(),
            Some(ok)
        );
    }
}

#[test]
fn a_name_defined_twice_in_one_file_is_an_error() {
    assert_eq!(
        error_of("tasks:\n  t: {builtin: noop}\n  t: {builtin: fail}\n"),
        "cfg.yaml:3:3: duplicate key `t` (first defined on line 2)"
    );
}

// ----- directories -------------------------------------------------------------------

#[test]
fn a_directory_is_merged_and_editor_files_are_ignored() {
    let config = load_fixture("merge");
    assert_eq!(config.summary(), "3 schedules, 2 tasks, 2 queues");
    let names: Vec<&str> = config
        .sources
        .iter()
        .map(|p| p.file_name().unwrap().to_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "00-base.yaml",
            "10-tasks.yaml",
            "20-schedules.yml",
            "30-more-schedules.yaml",
            "40-empty.yaml",
            "50-comments.yaml"
        ]
    );
    assert_eq!(config.timezone, "Asia/Shanghai".parse::<Tz>().unwrap());
    assert_eq!(config.broker.as_deref(), Some("memory"));
    let weekly = &config.schedules["weekly-report"];
    assert_eq!(weekly.queue, "reports");
    assert_eq!(
        weekly.loc.to_string(),
        "tests/fixtures/config/merge/30-more-schedules.yaml:3:3"
    );
}

#[test]
fn names_and_settings_defined_in_two_files_point_at_both() {
    let errors = config::load(&fixture("duplicates")).unwrap_err();
    assert_eq!(
        lines(&errors),
        [
            "tests/fixtures/config/duplicates/b.yaml:2:3: task `noop` is already defined at \
             tests/fixtures/config/duplicates/a.yaml:3:3",
            "tests/fixtures/config/duplicates/b.yaml:3:1: `timezone` is already set at \
             tests/fixtures/config/duplicates/a.yaml:1:1",
            "tests/fixtures/config/duplicates/b.yaml:5:3: schedule `tick` is already defined at \
             tests/fixtures/config/duplicates/a.yaml:5:3",
        ]
    );
    let first = &errors.as_slice()[0];
    assert_eq!(
        first.related[0].to_string(),
        "tests/fixtures/config/duplicates/a.yaml:3:3"
    );
}

#[test]
fn a_directory_without_configuration_files_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.txt"), "hello").unwrap();
    std::fs::write(dir.path().join(".hidden.yaml"), "timezone: UTC").unwrap();
    let errors = config::load(dir.path()).unwrap_err();
    assert_eq!(
        errors.to_string(),
        format!(
            "{}: no configuration files (*.yaml or *.yml) in this directory",
            dir.path().display()
        )
    );
}

#[test]
fn errors_from_several_files_are_sorted_by_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("b.yaml"), "tasks:\n  t: {builtin: nop}\n").unwrap();
    std::fs::write(dir.path().join("a.yaml"), "timezone: Nowhere\n").unwrap();
    std::fs::write(dir.path().join("c.yml"), "bad: [\n").unwrap();
    let errors = config::load(dir.path()).unwrap_err();
    let files: Vec<_> = errors
        .iter()
        .map(|e| e.file().unwrap().file_name().unwrap().to_owned())
        .collect();
    assert_eq!(files, ["a.yaml", "b.yaml", "c.yml"]);
}

#[test]
fn a_missing_path_is_an_error() {
    assert_eq!(
        config::load(Path::new("does/not/exist.yaml"))
            .unwrap_err()
            .to_string(),
        "does/not/exist.yaml: cannot read: No such file or directory (os error 2)"
    );
}

// ----- hostile input -----------------------------------------------------------------

#[test]
fn binary_garbage_is_rejected_with_a_position() {
    assert_eq!(
        config::load(&fixture("binary.yaml"))
            .unwrap_err()
            .to_string(),
        "tests/fixtures/config/binary.yaml:1:1: file is not valid UTF-8 (byte 0x89); is it a \
         binary file?"
    );
}

#[test]
fn a_second_document_is_rejected() {
    assert_eq!(
        config::load(&fixture("multi-document.yaml"))
            .unwrap_err()
            .to_string(),
        "tests/fixtures/config/multi-document.yaml:2:1: a second YAML document (`---`); a \
         configuration file must hold exactly one document (split it into several files in a \
         directory)"
    );
}

#[test]
fn huge_nesting_is_rejected() {
    // The root mapping is the first level, so the 64th bracket is one too many.
    let deep = format!("schedules: {}{}\n", "[".repeat(100), "]".repeat(100));
    assert_eq!(
        error_of(&deep),
        "cfg.yaml:1:75: nesting is too deep (more than 64 levels)"
    );
    // Far deeper flow nesting trips the YAML scanner's own limit first.
    let deeper = format!("schedules: {}{}\n", "[".repeat(5000), "]".repeat(5000));
    assert!(error_of(&deeper).ends_with(": nesting is too deep (more than 64 levels)"));
    let deep_block: String = (0..200)
        .map(|i| format!("{}- \n", " ".repeat(i * 2)))
        .collect();
    assert!(error_of(&deep_block).contains("nesting is too deep"));
}

#[test]
fn alias_expansion_is_capped() {
    let started = Instant::now();
    let error = config::load(&fixture("billion-laughs.yaml"))
        .unwrap_err()
        .to_string();
    assert!(
        error.starts_with("tests/fixtures/config/billion-laughs.yaml:6:45: "),
        "{error}"
    );
    assert!(
        error.ends_with(
            "aliases expand to too many nodes (more than 1000000); is this a \"billion laughs\" \
             file?"
        ),
        "{error}"
    );
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[test]
fn a_file_over_the_size_limit_is_rejected_without_reading_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.yaml");
    // Sparse: takes no disk space, and would take a while to read.
    let file = std::fs::File::create(&path).unwrap();
    file.set_len(yaml::MAX_FILE_SIZE + 1).unwrap();
    let started = Instant::now();
    let errors = config::load(&path).unwrap_err();
    assert_eq!(
        errors.to_string(),
        format!(
            "{}: file is too large (257 MiB; the limit is 256 MiB)",
            path.display()
        )
    );
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[test]
fn fifty_megabytes_of_binary_data_are_rejected_fast() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("garbage.yaml");
    let mut data = Vec::with_capacity(50 << 20);
    let mut x: u32 = 12345;
    while data.len() < 50 << 20 {
        // xorshift: deterministic noise.
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        data.extend_from_slice(&x.to_le_bytes());
    }
    std::fs::write(&path, &data).unwrap();
    let started = Instant::now();
    let error = config::load(&path).unwrap_err().to_string();
    assert!(error.contains("is it a binary file?"), "{error}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// A 50 MB configuration made of valid text loads in reasonable time (the parser is slow
/// in debug builds, hence release only: `cargo test --release`).
#[test]
#[cfg_attr(debug_assertions, ignore = "slow in debug builds; run with --release")]
fn fifty_megabytes_of_valid_text_load_fast() {
    let mut text = String::from("tasks:\n  noop: {builtin: noop}\nschedules:\n");
    let mut i = 0;
    while text.len() < 50 << 20 {
        text.push_str(&format!(
            "  s{i}:\n    task: noop\n    every: {}s\n    args: {{note: \"{}\"}}\n",
            60 + i % 600,
            "x".repeat(400)
        ));
        i += 1;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.yaml");
    std::fs::write(&path, &text).unwrap();
    let started = Instant::now();
    let config = config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.schedules.len(), i);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

/// Enough schedules to be built by several threads (which take them in batches from one
/// iterator over two files' sections, dropping each one's nodes once built): every one is
/// built once, and every error is reported once, wherever it falls among the batches;
/// duplicate names are decided in file order (the first definition wins).
#[test]
fn many_schedules_built_by_several_threads_are_each_checked_once() {
    let n = 12_000;
    let mut a = String::from("tasks:\n  noop: {builtin: noop}\nschedules:\n");
    let mut b = String::from("schedules:\n");
    for i in 0..n {
        let text = if i % 2 == 0 { &mut a } else { &mut b };
        match i {
            // A bad cron, an unknown task, the wrong type, in batches far apart.
            7 | 6_001 | 11_999 => text.push_str(&format!("  s{i}: {{every: 1s, task: nope}}\n")),
            100 | 9_000 => text.push_str(&format!("  s{i}: {{cron: '61 * * * *', task: noop}}\n")),
            4_000 => text.push_str(&format!("  s{i}: 5\n")),
            _ => text.push_str(&format!("  s{i}: {{every: {}s, task: noop}}\n", 1 + i % 50)),
        }
    }
    // Defined again in the second file.
    b.push_str("  s10: {every: 1s, task: noop}\n");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.yaml"), &a).unwrap();
    std::fs::write(dir.path().join("b.yaml"), &b).unwrap();
    let errors = match config::load(dir.path()) {
        Ok(config) => panic!("expected errors, got {}", config.summary()),
        Err(errors) => errors,
    };
    // "FILE: MESSAGE" (the message without a location it may end with).
    let found: Vec<String> = lines(&errors)
        .iter()
        .map(|l| {
            let (location, message) = l.split_once(": ").expect("FILE:LINE:COL: MESSAGE");
            let file = if location.contains("a.yaml:") {
                "a"
            } else {
                "b"
            };
            let message = message.split(" at ").next().unwrap();
            format!("{file}: {message}")
        })
        .collect();
    let cron = "a: invalid cron expression `61 * * * *`: minute: 61 is out of range 0-59";
    let nope = "b: unknown task `nope`; did you mean `noop`?";
    assert_eq!(
        found,
        vec![
            cron.to_string(),
            "a: expected a mapping of settings for schedule `s4000` (`task`, `cron` or `every`, ...), found an integer".to_string(),
            cron.to_string(),
            nope.to_string(),
            nope.to_string(),
            nope.to_string(),
            "b: schedule `s10` is already defined".to_string(),
        ]
    );
    // Without the errors, every schedule is built.
    let fixed_a = a
        .replace("61 * * * *", "1 * * * *")
        .replace("s4000: 5", "s4000: {every: 1s, task: noop}");
    let fixed_b = b
        .replace("task: nope", "task: noop")
        .replace("  s10: {every: 1s, task: noop}\n", "");
    std::fs::write(dir.path().join("a.yaml"), &fixed_a).unwrap();
    std::fs::write(dir.path().join("b.yaml"), &fixed_b).unwrap();
    let config = config::load(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    let expected: std::collections::BTreeSet<String> = (0..n).map(|i| format!("s{i}")).collect();
    let built: std::collections::BTreeSet<String> = config.schedules.keys().cloned().collect();
    assert_eq!(built, expected);
}

#[test]
#[cfg_attr(debug_assertions, ignore = "slow in debug builds; run with --release")]
fn a_hundred_thousand_schedules_load() {
    let mut text = String::from("tasks:\n  noop: {builtin: noop}\nschedules:\n");
    for i in 0..100_000 {
        if i % 2 == 0 {
            text.push_str(&format!(
                "  s{i}:\n    task: noop\n    cron: '{} * * * *'\n",
                i % 60
            ));
        } else {
            text.push_str(&format!(
                "  s{i}:\n    task: noop\n    every: {}s\n",
                1 + i % 3600
            ));
        }
    }
    let config = load_text(&text);
    assert_eq!(config.schedules.len(), 100_000);
}

// ----- fuzzing -------------------------------------------------------------------------

/// Pieces of YAML and of our configuration, for generating inputs that get past the
/// scanner more often than random text does.
const YAML_PIECES: &[&str] = &[
    "\n",
    "\n  ",
    "\n    ",
    "  ",
    "- ",
    ": ",
    ":",
    "? ",
    "{",
    "}",
    "[",
    "]",
    ", ",
    "&a ",
    "*a",
    "&b ",
    "*b",
    "!!str ",
    "!!int ",
    "!!map ",
    "!foo ",
    "! ",
    "'",
    "\"",
    "\\",
    "|",
    ">",
    "#",
    "---\n",
    "...\n",
    "%YAML 1.2\n",
    "\t",
    "~",
    "null",
    "true",
    "1",
    "-1",
    "0x1f",
    "1.5",
    ".inf",
    "é",
    "\u{FEFF}",
    "\r\n",
    "\r",
    "timezone",
    "Asia/Shanghai",
    "queues",
    "tasks",
    "schedules",
    "task",
    "cron",
    "every",
    "anchor",
    "args",
    "kwargs",
    "queue",
    "priority",
    "misfire",
    "catch_up",
    "overlap",
    "expires",
    "enabled",
    "command",
    "builtin",
    "noop",
    "retry",
    "max",
    "backoff",
    "max_backoff",
    "timeout",
    "90s",
    "1h30m",
    "'* * * * *'",
    "\"0 61 * * *\"",
    "{{days}}",
    "{{",
    "<<",
    "2024-01-01T00:00:00Z",
    "default",
    "auto",
    "never",
    "all",
];

const SCHEDULE_FUZZ_KEYS: &[&str] = &[
    "task", "task", "cron", "every", "every", "anchor", "timezone", "args", "kwargs", "queue",
    "priority", "misfire", "overlap", "expires", "enabled", "tsk", "interval",
];

const FUZZ_VALUES: &[&str] = &[
    "1",
    "-1",
    "0",
    "10",
    "1.5",
    "0.0001",
    ".nan",
    "1e400",
    "99999999999999999999",
    "~",
    "",
    "true",
    "yes",
    "noop",
    "nop",
    "cleanup",
    "default",
    "reports",
    "nowhere",
    "90s",
    "0s",
    "'90'",
    "5 minutez",
    "1h30m",
    "[]",
    "{}",
    "[1, 2]",
    "{a: 1}",
    "{days: 7}",
    "{days: .inf}",
    "{1: a, '1': b}",
    "'*/5 * * * *'",
    "\"61 * * * *\"",
    "'0 0 30 2 *'",
    "'@daily'",
    "'@nope'",
    "\"0 9 * * MON-FRI\"",
    "'0  61 * * *'",
    "\"\\t0 61 * * *\"",
    "'it''s 61 * * *'",
    "2024-01-01T00:00:00Z",
    "2024-01-01",
    "Asia/Shanghai",
    "Shanghai",
    "Mars/X",
    "'{{x}}'",
    "[/bin/echo, '{{days}}']",
    "{grace: 1m, catch_up: all, max: 2}",
    "{max: 3}",
    "{catch_up: lates}",
    "{grace: [1]}",
    "auto",
    "never",
    "sometimes",
    "allow",
    "skip",
    "|\n      multi\n      line",
    ">\n      0 61\n      * * *",
];

fn fuzz_config() -> ProptestConfig {
    ProptestConfig {
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "tests/fixtures/config/fuzz/proptest-regressions.txt",
        ))),
        ..ProptestConfig::default()
    }
}

fn check_never_panics(text: &str) {
    // Either outcome is fine; every error must have a message and a sane position.
    if let Err(errors) = config::load_str(text, Path::new("fuzz.yaml")) {
        assert!(!errors.is_empty());
        for error in &errors {
            assert!(!error.message.is_empty());
            if let Some(loc) = &error.loc {
                assert!(loc.line >= 1 && loc.col >= 1, "{error}");
            }
        }
    }
}

proptest! {
    #![proptest_config(fuzz_config())]

    #[test]
    fn arbitrary_text_never_panics(text in any::<String>()) {
        check_never_panics(&text);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let parsed = yaml::parse_bytes(bytes.clone(), &std::sync::Arc::from(Path::new("f.yaml")));
        prop_assert!(parsed.root.is_some() || !parsed.errors.is_empty() || bytes.len() < 512);
        check_never_panics(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn yaml_like_text_never_panics(
        pieces in proptest::collection::vec(proptest::sample::select(YAML_PIECES), 0..60)
    ) {
        check_never_panics(&pieces.concat());
    }

    /// Well-formed YAML with schedules made of random keys and values (right and wrong):
    /// the validator never panics, and every error points inside the text.
    #[test]
    fn random_schedules_never_panic(
        schedules in proptest::collection::vec(
            proptest::collection::vec(
                (proptest::sample::select(SCHEDULE_FUZZ_KEYS), proptest::sample::select(FUZZ_VALUES)),
                0..8,
            ),
            0..6,
        )
    ) {
        let mut text = String::from(
            "queues: {reports: {}}\ntasks:\n  noop: {builtin: noop}\n  \
             cleanup: {command: [/bin/cleanup, '{{days}}'], retry: {max: 2}}\nschedules:\n",
        );
        for (i, entries) in schedules.iter().enumerate() {
            text.push_str(&format!("  s{i}:\n"));
            let mut seen = BTreeSet::new();
            for (key, value) in entries {
                if seen.insert(*key) {
                    text.push_str(&format!("    {key}: {value}\n"));
                }
            }
        }
        let line_count = text.lines().count() as u32;
        if let Err(errors) = config::load_str(&text, Path::new("fuzz.yaml")) {
            for error in &errors {
                let loc = error.loc.as_ref().expect("errors in text have a position");
                prop_assert!(loc.line >= 1, "{error}\n{text}");
                // The end of the text (after the last newline) is a position too.
                let line = text.lines().nth(loc.line as usize - 1).unwrap_or("");
                prop_assert!(
                    loc.line <= line_count || (loc.line == line_count + 1 && loc.col == 1),
                    "{error}\n{text}"
                );
                prop_assert!(
                    (loc.col as usize) <= line.chars().count() + 1,
                    "{error}\n{text}"
                );
            }
        }
    }

    /// Generated valid configurations load, and the model holds what was written.
    #[test]
    fn generated_configurations_load_as_written(
        schedules in proptest::collection::btree_map(
            "[a-z][a-z0-9-]{0,12}",
            (0u8..=9, 1u64..100_000, any::<bool>(), 0usize..3),
            0..20,
        )
    ) {
        let mut text = String::from(
            "queues: {default: {}, q1: {}, q2: {}}\ntasks:\n  noop: {builtin: noop}\nschedules:\n",
        );
        for (name, (priority, every, enabled, queue)) in &schedules {
            text.push_str(&format!(
                "  {name}:\n    task: noop\n    every: {every}s\n    priority: {priority}\n    \
                 enabled: {enabled}\n    queue: {}\n",
                ["default", "q1", "q2"][*queue]
            ));
        }
        let config = load_text(&text);
        prop_assert_eq!(
            config.schedules.keys().cloned().collect::<BTreeSet<_>>(),
            schedules.keys().cloned().collect::<BTreeSet<_>>()
        );
        for (name, (priority, every, enabled, queue)) in &schedules {
            let s = &config.schedules[name];
            prop_assert_eq!(s.priority, *priority);
            prop_assert_eq!(s.enabled, *enabled);
            prop_assert_eq!(&s.queue, ["default", "q1", "q2"][*queue]);
            prop_assert_eq!(
                &s.timing,
                &Timing::Interval(IntervalSchedule::new(Duration::from_secs(*every), None).unwrap())
            );
        }
    }
}

/// Inputs that once broke something, or that exercise odd corners, replayed on every run.
#[test]
fn fuzz_corpus_is_handled() {
    let mut count = 0;
    for entry in std::fs::read_dir(fixture("fuzz")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "txt") {
            continue;
        }
        // Through the file loader (raw bytes, not only UTF-8).
        let started = Instant::now();
        let _ = config::load(&path);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{} took {:?}",
            path.display(),
            started.elapsed()
        );
        if let Ok(text) = std::fs::read_to_string(&path) {
            check_never_panics(&text);
        }
        count += 1;
    }
    assert!(count >= 10, "the corpus has {count} files");
}
