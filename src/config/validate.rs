//! From parsed YAML to a [`Config`]: merging files, checking every key and value, and
//! resolving references (schedule -> task, schedule -> queue).
//!
//! The validator never stops at the first problem. Each check that fails records an error
//! with the position of the offending key or value and the rest carries on with what is
//! usable, so one run reports everything. Follow-on errors are avoided: a schedule that
//! names a task whose own definition is broken is not reported again, since the task name
//! itself exists.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Range;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

use super::error::{ConfigError, ConfigErrors, Location};
use super::model::{
    Builtin, CatchUp, CeleryQueue, Config, DEFAULT_QUEUE, Expires, MisfirePolicy, Overlap,
    QueueConfig, RetryPolicy, ScheduleConfig, TaskConfig, TaskKind,
};
use super::placeholder;
use super::suggest::{closest, closest_zone, did_you_mean, one_of};
use super::yaml::{Node, NodeValue};
use crate::schedule::{
    CronError, CronExpr, CronSchedule, IntervalSchedule, Timing, parse_timezone,
};

/// One parsed configuration file.
pub(crate) struct SourceFile {
    pub path: Arc<Path>,
    /// The text as parsed (without a byte order mark), for pointing inside values.
    pub text: String,
    pub root: Option<Node>,
    line_starts: OnceLock<Vec<usize>>,
}

impl SourceFile {
    pub fn new(path: Arc<Path>, text: String, root: Option<Node>) -> Self {
        SourceFile {
            path,
            text,
            root,
            line_starts: OnceLock::new(),
        }
    }

    /// The text of a 1-based line.
    fn line(&self, line: u32) -> Option<&str> {
        let starts = self.line_starts.get_or_init(|| {
            std::iter::once(0)
                .chain(self.text.match_indices('\n').map(|(i, _)| i + 1))
                .collect()
        });
        let index = usize::try_from(line).ok()?.checked_sub(1)?;
        let start = *starts.get(index)?;
        let end = starts.get(index + 1).map_or(self.text.len(), |&e| e - 1);
        Some(self.text[start..end].trim_end_matches('\r'))
    }
}

const TOP_KEYS: &[&str] = &[
    "timezone",
    "broker",
    "result_expires",
    "signing_key_file",
    "queues",
    "tasks",
    "schedules",
];
const QUEUE_KEYS: &[&str] = &[
    "protocol",
    "broker",
    "backend",
    "name",
    "priority_steps",
    "key_prefix",
];
/// Queue keys that only a `protocol: celery` queue takes.
const CELERY_QUEUE_KEYS: &[&str] = &["broker", "backend", "name", "priority_steps", "key_prefix"];
const TASK_KEYS: &[&str] = &[
    "command",
    "builtin",
    "handler",
    "timeout",
    "retry",
    "ignore_result",
    "celery_name",
];
const RETRY_KEYS: &[&str] = &["max", "backoff", "max_backoff"];
const SCHEDULE_KEYS: &[&str] = &[
    "task", "cron", "every", "anchor", "timezone", "args", "kwargs", "queue", "priority",
    "misfire", "overlap", "expires", "enabled",
];
const MISFIRE_KEYS: &[&str] = &["grace", "catch_up", "max"];
/// Names other schedulers use for our keys (Celery, systemd timers, ...), for suggestions.
const KEY_ALIASES: &[(&str, &str)] = &[
    ("tz", "timezone"),
    ("interval", "every"),
    ("period", "every"),
    ("run_every", "every"),
    ("crontab", "cron"),
    ("schedule", "cron"),
    ("options", "misfire"),
    ("retries", "retry"),
    ("max_retries", "retry"),
    ("cmd", "command"),
    ("argv", "command"),
];

/// Units humantime accepts, for suggestions.
const DURATION_UNITS: &[&str] = &[
    "nsec", "ns", "usec", "us", "msec", "ms", "seconds", "second", "sec", "s", "minutes", "minute",
    "min", "m", "hours", "hour", "hr", "h", "days", "day", "d", "weeks", "week", "w", "months",
    "month", "M", "years", "year", "y",
];
const BROKER_SCHEMES: &[&str] = &["redis://", "rediss://", "unix://", "redis+unix://"];
const MAX_NAME_LEN: usize = 200;
/// Schedules per thread below which validating them in parallel is not worth it.
const PARALLEL_SCHEDULES_MIN: usize = 2_000;

/// Validates parsed files (in load order) into a configuration. `errors` are the problems
/// found while reading and parsing; they are reported together with the rest.
pub(crate) fn build(
    mut files: Vec<SourceFile>,
    errors: Vec<ConfigError>,
) -> Result<Config, ConfigErrors> {
    // The `schedules` sections leave the trees: they are consumed, each schedule's nodes
    // dropped as soon as it is built, so that a configuration of 100,000s of schedules never
    // holds their whole tree and the built schedules at once (which was the peak of memory
    // of a beat's whole life).
    let schedules: Vec<Node> = files
        .iter_mut()
        .filter_map(|f| take_schedules(f.root.as_mut()?))
        .collect();
    let mut checker = Checker::new(&files, errors);
    let merged = checker.merge();
    let config = checker.config(&merged, schedules);
    if checker.errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors::new(checker.errors))
    }
}

/// Takes the value of the top-level `schedules` key out of a file's tree when it is a
/// mapping (anything else stays, for the merge to report), leaving `null` in its place.
fn take_schedules(root: &mut Node) -> Option<Node> {
    let NodeValue::Map(entries) = &mut root.value else {
        return None;
    };
    let (_, value) = entries.iter_mut().find(|(k, v)| {
        matches!(&k.value, NodeValue::Str(s) if s == "schedules")
            && matches!(v.value, NodeValue::Map(_))
    })?;
    let null = Node {
        value: NodeValue::Null,
        loc: value.loc.clone(),
    };
    Some(std::mem::replace(value, null))
}

/// A top-level setting: its key and value.
#[derive(Clone, Copy)]
struct Setting<'a> {
    key: &'a Node,
    value: &'a Node,
}

/// A named item (queue, task, schedule) and where it is defined.
struct Named<'a> {
    name: String,
    key: &'a Node,
    value: &'a Node,
}

/// All files' top-level entries, merged.
#[derive(Default)]
struct Merged<'a> {
    timezone: Option<Setting<'a>>,
    broker: Option<Setting<'a>>,
    result_expires: Option<Setting<'a>>,
    signing_key_file: Option<Setting<'a>>,
    queues: Vec<Named<'a>>,
    tasks: Vec<Named<'a>>,
}

/// The checked entries of a mapping of settings.
struct Fields<'a> {
    entries: Vec<(&'static str, &'a Node, &'a Node)>,
}

impl<'a> Fields<'a> {
    fn empty() -> Self {
        Fields {
            entries: Vec::new(),
        }
    }

    fn get(&self, key: &str) -> Option<&'a Node> {
        self.entry(key).map(|(_, value)| value)
    }

    fn entry(&self, key: &str) -> Option<(&'a Node, &'a Node)> {
        self.entries
            .iter()
            .find(|(k, _, _)| *k == key)
            .map(|&(_, k, v)| (k, v))
    }
}

struct Checker<'a> {
    files: &'a [SourceFile],
    errors: Vec<ConfigError>,
    /// Parsed cron expressions by text: large configurations repeat a few expressions
    /// many times, and parsing is the most expensive part of validation.
    crons: HashMap<String, Result<CronExpr, CronError>>,
}

impl<'a> Checker<'a> {
    fn new(files: &'a [SourceFile], errors: Vec<ConfigError>) -> Self {
        Checker {
            files,
            errors,
            crons: HashMap::new(),
        }
    }

    fn error(&mut self, loc: &Location, message: impl Into<String>) {
        self.errors.push(ConfigError::at(loc, message));
    }

    fn wrong_type(&mut self, node: &Node, expected: &str) {
        self.error(
            &node.loc,
            format!("expected {expected}, found {}", node.value.kind()),
        );
    }

    // ----- merging -------------------------------------------------------------------

    fn merge(&mut self) -> Merged<'a> {
        let mut merged = Merged::default();
        let mut seen: [HashMap<String, Location>; 3] = Default::default();
        let files = self.files;
        for file in files {
            let Some(root) = &file.root else { continue };
            let entries = match &root.value {
                NodeValue::Null => continue,
                NodeValue::Map(entries) => entries,
                other => {
                    self.error(
                        &root.loc,
                        format!(
                            "expected a mapping of settings (`timezone`, `queues`, `tasks`, \
                             `schedules`, ...) at the top level, found {}",
                            other.kind()
                        ),
                    );
                    continue;
                }
            };
            for (key, value) in entries {
                let Some(name) = self.key_name(key, "at the top level") else {
                    continue;
                };
                let slot = match name {
                    "timezone" => &mut merged.timezone,
                    "broker" => &mut merged.broker,
                    "result_expires" => &mut merged.result_expires,
                    "signing_key_file" => &mut merged.signing_key_file,
                    "queues" => {
                        self.merge_section(value, "queue", &mut merged.queues, &mut seen[0]);
                        continue;
                    }
                    "tasks" => {
                        self.merge_section(value, "task", &mut merged.tasks, &mut seen[1]);
                        continue;
                    }
                    "schedules" => {
                        // Taken out of the tree before (`take_schedules`) when a mapping:
                        // what is left here is `null` or the wrong type, reported.
                        self.merge_section(value, "schedule", &mut Vec::new(), &mut seen[2]);
                        continue;
                    }
                    _ => {
                        self.unknown_key(key, name, TOP_KEYS, "at the top level");
                        continue;
                    }
                };
                match slot {
                    Some(first) => {
                        let first_loc = first.key.loc.clone();
                        self.errors.push(
                            ConfigError::at(
                                &key.loc,
                                format!("`{name}` is already set at {first_loc}"),
                            )
                            .with_related(&first_loc),
                        );
                    }
                    None => *slot = Some(Setting { key, value }),
                }
            }
        }
        merged
    }

    fn merge_section(
        &mut self,
        section: &'a Node,
        what: &str,
        items: &mut Vec<Named<'a>>,
        seen: &mut HashMap<String, Location>,
    ) {
        let entries = match &section.value {
            NodeValue::Null => return,
            NodeValue::Map(entries) => entries,
            _ => {
                self.wrong_type(section, &format!("a mapping of {what} names to {what}s"));
                return;
            }
        };
        items.reserve(entries.len());
        for (key, value) in entries {
            if let Some(name) = self.item_name(key, what, seen) {
                items.push(Named { name, key, value });
            }
        }
    }

    /// The name of an item of a section (`what`: queue, task, schedule) from its key, if
    /// valid and not `seen` before (recorded there).
    fn item_name(
        &mut self,
        key: &Node,
        what: &str,
        seen: &mut HashMap<String, Location>,
    ) -> Option<String> {
        let name = match &key.value {
            NodeValue::Str(s) => s.clone(),
            NodeValue::Int(i) => i.to_string(),
            other => {
                self.error(
                    &key.loc,
                    format!("expected a {what} name, found {}", other.kind()),
                );
                return None;
            }
        };
        if let Err(message) = check_name(&name) {
            self.error(&key.loc, format!("invalid {what} name `{name}`: {message}"));
            return None;
        }
        if let Some(first_loc) = seen.get(&name) {
            let first_loc = first_loc.clone();
            self.errors.push(
                ConfigError::at(
                    &key.loc,
                    format!("{what} `{name}` is already defined at {first_loc}"),
                )
                .with_related(&first_loc),
            );
            return None;
        }
        seen.insert(name.clone(), key.loc.clone());
        Some(name)
    }

    // ----- generic checks ------------------------------------------------------------

    /// The text of a settings key; reports keys that are not strings.
    fn key_name<'n>(&mut self, key: &'n Node, context: &str) -> Option<&'n str> {
        match &key.value {
            NodeValue::Str(s) => Some(s),
            other => {
                let shown = other.scalar_text().unwrap_or_default();
                self.error(
                    &key.loc,
                    format!("unknown key `{shown}` {context} (found {})", other.kind()),
                );
                None
            }
        }
    }

    fn unknown_key(&mut self, key: &Node, name: &str, allowed: &[&str], context: &str) {
        let help = if name == "<<" {
            "; merge keys (`<<`) are not supported".to_string()
        } else if allowed.is_empty() {
            "; queues have no settings yet".to_string()
        } else if let Some(&(_, key)) = KEY_ALIASES
            .iter()
            .find(|(alias, key)| *alias == name && allowed.contains(key))
        {
            format!("; did you mean `{key}`?")
        } else {
            match closest(name, allowed.iter().copied()) {
                Some(s) => format!("; did you mean `{s}`?"),
                None => format!("; expected {}", one_of(allowed)),
            }
        };
        self.error(&key.loc, format!("unknown key `{name}` {context}{help}"));
    }

    /// The entries of a mapping of settings, with unknown keys reported. `null` is an empty
    /// mapping. `what` describes the expected mapping for the wrong-type message, `context`
    /// the place for the unknown-key message (`in task `x``).
    fn fields<'n>(
        &mut self,
        node: &'n Node,
        allowed: &[&'static str],
        what: &str,
        context: &str,
    ) -> Option<Fields<'n>> {
        let entries = match &node.value {
            NodeValue::Null => return Some(Fields::empty()),
            NodeValue::Map(entries) => entries,
            _ => {
                self.wrong_type(node, what);
                return None;
            }
        };
        let mut fields = Fields {
            entries: Vec::with_capacity(entries.len()),
        };
        for (key, value) in entries {
            let Some(name) = self.key_name(key, context) else {
                continue;
            };
            match allowed.iter().find(|&&a| a == name) {
                Some(&known) => fields.entries.push((known, key, value)),
                None => self.unknown_key(key, name, allowed, context),
            }
        }
        Some(fields)
    }

    fn string<'n>(&mut self, node: &'n Node, key: &str) -> Option<&'n str> {
        match &node.value {
            NodeValue::Str(s) => Some(s),
            _ => {
                self.wrong_type(node, &format!("a string for `{key}`"));
                None
            }
        }
    }

    /// A duration: a humantime string (`90s`, `1h30m`), or a number of seconds (floats to
    /// the millisecond: `0.5`).
    fn duration(&mut self, node: &Node, key: &str) -> Option<Duration> {
        let result = match &node.value {
            NodeValue::Str(s) => self.duration_text(node, s, key),
            NodeValue::Int(i) => u64::try_from(*i).map(Duration::from_secs).map_err(|_| {
                (
                    node.loc.clone(),
                    format!("invalid duration `{i}` for `{key}`: must not be negative"),
                )
            }),
            NodeValue::Float(f) => float_seconds(*f).map_err(|why| {
                (
                    node.loc.clone(),
                    format!("invalid duration `{}` for `{key}`: {why}", node_text(node)),
                )
            }),
            other => Err((
                node.loc.clone(),
                format!(
                    "expected a duration like `90s` for `{key}`, found {}",
                    other.kind()
                ),
            )),
        };
        result
            .map_err(|(loc, message)| self.error(&loc, message))
            .ok()
    }

    /// Parses a humantime duration; on error, the location points at the offending part.
    fn duration_text(
        &self,
        node: &Node,
        text: &str,
        key: &str,
    ) -> Result<Duration, (Location, String)> {
        use humantime::DurationError;
        let trimmed = text.trim();
        let lead = text.len() - text.trim_start().len();
        let error = match humantime::parse_duration(trimmed) {
            Ok(d) => return Ok(d),
            Err(e) => e,
        };
        let (offset, why) = match &error {
            DurationError::UnknownUnit { unit, value, .. } if unit.is_empty() => (
                None,
                format!("add a unit, such as `{value}s` or `{value}m`"),
            ),
            DurationError::UnknownUnit { start, unit, .. } => (
                Some(lead + start),
                format!(
                    "unknown unit `{unit}`{}",
                    match closest(unit, DURATION_UNITS.iter().copied()) {
                        Some(s) => format!("; did you mean `{s}`?"),
                        None => " (units are `ms`, `s`, `m`, `h`, `d` and `w`, or long forms \
                                  such as `min` and `hours`)"
                            .to_string(),
                    }
                ),
            ),
            DurationError::NumberOverflow => (None, "too large".to_string()),
            DurationError::InvalidCharacter(at) | DurationError::NumberExpected(at) => (
                Some(lead + at),
                "expected something like `90s`, `5m` or `1h30m`".to_string(),
            ),
            _ => (
                None,
                "expected something like `90s`, `5m` or `1h30m`".to_string(),
            ),
        };
        Err((
            self.inside_string(node, text, offset),
            format!("invalid duration `{text}` for `{key}`: {why}"),
        ))
    }

    /// A duration that must be longer than zero.
    fn positive_duration(&mut self, node: &Node, key: &str) -> Option<Duration> {
        let duration = self.duration(node, key)?;
        if duration.is_zero() {
            self.error(&node.loc, format!("`{key}` must be longer than 0s"));
            return None;
        }
        Some(duration)
    }

    fn integer(
        &mut self,
        node: &Node,
        key: &str,
        range: Range<i64>,
        expected: &str,
    ) -> Option<i64> {
        match &node.value {
            NodeValue::Int(i) if range.contains(i) => Some(*i),
            NodeValue::Int(i) => {
                self.error(&node.loc, format!("`{key}` must be {expected}, found {i}"));
                None
            }
            _ => {
                self.wrong_type(node, &format!("{expected} for `{key}`"));
                None
            }
        }
    }

    fn boolean(&mut self, node: &Node, key: &str) -> Option<bool> {
        match &node.value {
            NodeValue::Bool(b) => Some(*b),
            NodeValue::Str(s)
                if ["yes", "no", "on", "off", "y", "n"]
                    .iter()
                    .any(|w| s.eq_ignore_ascii_case(w)) =>
            {
                self.error(
                    &node.loc,
                    format!(
                        "expected `true` or `false` for `{key}`, found the string `{s}` \
                         (YAML 1.2 reads `{s}` as a string)"
                    ),
                );
                None
            }
            _ => {
                self.wrong_type(node, &format!("`true` or `false` for `{key}`"));
                None
            }
        }
    }

    /// One of a fixed set of words.
    fn choice<T: Copy>(&mut self, node: &Node, key: &str, choices: &[(&str, T)]) -> Option<T> {
        let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
        let Some(text) = node.as_str() else {
            self.wrong_type(node, &format!("{} for `{key}`", one_of(&names)));
            return None;
        };
        if let Some((_, value)) = choices.iter().find(|(n, _)| *n == text) {
            return Some(*value);
        }
        let help = match closest(text, names.iter().copied()) {
            Some(s) => format!("; did you mean `{s}`?"),
            None => format!("; expected {}", one_of(&names)),
        };
        self.error(&node.loc, format!("unknown {key} `{text}`{help}"));
        None
    }

    fn timezone(&mut self, node: &Node) -> Option<Tz> {
        let name = self.string(node, "timezone")?;
        // The engine's parser decides what is a zone; the message is ours, in the style of
        // the other configuration errors.
        if let Ok(tz) = parse_timezone(name) {
            return Some(tz);
        }
        let help = match closest_zone(name) {
            Some(zone) => format!("; did you mean `{zone}`?"),
            None => " (expected an IANA name such as `Europe/Berlin`)".to_string(),
        };
        self.error(&node.loc, format!("unknown time zone `{name}`{help}"));
        None
    }

    // ----- the configuration ---------------------------------------------------------

    fn config(&mut self, merged: &Merged<'a>, schedules: Vec<Node>) -> Config {
        let mut config = Config {
            sources: self.files.iter().map(|f| f.path.to_path_buf()).collect(),
            ..Config::default()
        };
        if let Some(setting) = merged.timezone
            && let Some(tz) = self.timezone(setting.value)
        {
            config.timezone = tz;
        }
        if let Some(setting) = merged.broker {
            config.broker = self.broker(setting.value);
        }
        if let Some(setting) = merged.result_expires
            && let Some(d) = self.duration(setting.value, "result_expires")
        {
            if d < Duration::from_secs(1) {
                self.error(&setting.value.loc, "`result_expires` must be at least 1s");
            } else {
                config.result_expires = d;
            }
        }
        if let Some(setting) = merged.signing_key_file
            && let Some(text) = self.string(setting.value, "signing_key_file")
        {
            if text.is_empty() {
                self.error(&setting.value.loc, "`signing_key_file` must not be empty");
            } else {
                // Relative to the file that says it.
                let path = std::path::Path::new(text);
                let base = setting
                    .value
                    .loc
                    .file
                    .parent()
                    .unwrap_or(std::path::Path::new("."));
                config.signing_key_file = Some(if path.is_absolute() {
                    path.to_path_buf()
                } else {
                    base.join(path)
                });
            }
        }
        for named in &merged.queues {
            let context = format!("in queue `{}`", named.name);
            let what = format!(
                "a mapping of settings (or nothing) for queue `{}`",
                named.name
            );
            let celery = match self.fields(named.value, QUEUE_KEYS, &what, &context) {
                Some(fields) => self.celery_queue(named, &fields),
                None => None,
            };
            config.queues.insert(
                named.name.clone(),
                QueueConfig {
                    name: named.name.clone(),
                    loc: Some(named.key.loc.clone()),
                    celery,
                },
            );
        }
        let mut placeholders: HashMap<&str, Vec<String>> = HashMap::new();
        for named in &merged.tasks {
            let mut used = Vec::new();
            if let Some(task) = self.task(named, &mut used) {
                config.tasks.insert(named.name.clone(), task);
            }
            if !used.is_empty() {
                placeholders.insert(&named.name, used);
            }
        }
        self.celery_names(&config);
        let names = Names {
            tasks: merged.tasks.iter().map(|n| n.name.as_str()).collect(),
            queues: config.queues.keys().map(String::as_str).collect(),
            celery_queues: config
                .queues
                .values()
                .filter(|q| q.is_celery())
                .map(|q| q.name.as_str())
                .collect(),
            placeholders: &placeholders,
            timezone: config.timezone,
        };
        config.schedules = self.schedules(schedules, &names);
        config
    }

    /// Validates the `schedules` sections (taken out of the trees, in file order), consuming
    /// them: each schedule's nodes are dropped once it is built. Names are checked first, in
    /// order (the first definition wins); then a large number of schedules is built by
    /// several threads, taking batches from one iterator over the entries (each schedule is
    /// checked on its own, so only the errors need merging). Each schedule is put behind its
    /// `Arc` where it is built: a map of 100,000 schedules by value would be a second copy
    /// of all of them.
    fn schedules(
        &mut self,
        sections: Vec<Node>,
        names: &Names<'_>,
    ) -> BTreeMap<String, Arc<ScheduleConfig>> {
        let sections: Vec<Vec<(Node, Node)>> = sections
            .into_iter()
            .filter_map(|section| match section.value {
                NodeValue::Map(entries) => Some(entries),
                _ => None,
            })
            .collect();
        let total: usize = sections.iter().map(Vec::len).sum();
        let mut item_names: Vec<Option<String>> = Vec::with_capacity(total);
        {
            let mut seen = HashMap::with_capacity(total);
            for (key, _) in sections.iter().flatten() {
                item_names.push(self.item_name(key, "schedule", &mut seen));
            }
        }
        let entries = sections
            .into_iter()
            .flatten()
            .zip(item_names)
            .filter_map(|((key, value), name)| Some((name?, key, value)));
        let workers = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(total / PARALLEL_SCHEDULES_MIN)
            .max(1);
        if workers == 1 {
            return entries
                .filter_map(|entry| self.owned_schedule(entry, names))
                .collect();
        }
        let files = self.files;
        let entries = std::sync::Mutex::new(entries);
        let results = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..workers)
                .map(|_| {
                    let entries = &entries;
                    scope.spawn(move || {
                        let mut checker = Checker::new(files, Vec::new());
                        let mut schedules: Vec<(String, Arc<ScheduleConfig>)> = Vec::new();
                        loop {
                            let batch: Vec<_> = entries
                                .lock()
                                .unwrap_or_else(|poisoned| poisoned.into_inner())
                                .by_ref()
                                .take(256)
                                .collect();
                            if batch.is_empty() {
                                break;
                            }
                            schedules.extend(
                                batch
                                    .into_iter()
                                    .filter_map(|entry| checker.owned_schedule(entry, names)),
                            );
                        }
                        (schedules, checker.errors)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                })
                .collect::<Vec<_>>()
        });
        let mut schedules = BTreeMap::new();
        for (built, errors) in results {
            schedules.extend(built);
            self.errors.extend(errors);
        }
        schedules
    }

    /// Builds one schedule from its name and nodes, which are dropped once it is built.
    fn owned_schedule(
        &mut self,
        (name, key, value): (String, Node, Node),
        names: &Names<'_>,
    ) -> Option<(String, Arc<ScheduleConfig>)> {
        let named = Named {
            name,
            key: &key,
            value: &value,
        };
        let schedule = self.schedule(&named, names)?;
        Some((named.name, Arc::new(schedule)))
    }

    fn broker(&mut self, node: &Node) -> Option<String> {
        let url = self.string(node, "broker")?;
        if url == "memory" || BROKER_SCHEMES.iter().any(|s| url.starts_with(s)) {
            return Some(url.to_string());
        }
        self.error(
            &node.loc,
            format!(
                "unsupported broker `{url}`; expected `memory` or a {} URL",
                one_of(BROKER_SCHEMES)
            ),
        );
        None
    }

    // ----- tasks ---------------------------------------------------------------------

    /// A task (`None` when invalid), and the placeholders its command uses (also when the
    /// task has other errors, so that schedules are still checked against them).
    fn task(&mut self, named: &Named<'a>, used: &mut Vec<String>) -> Option<TaskConfig> {
        let name = &named.name;
        if let Some(builtin) = named.value.as_str().and_then(Builtin::from_name) {
            self.error(
                &named.value.loc,
                format!(
                    "expected a mapping of settings for task `{name}`, found a string; \
                     write `{name}: {{builtin: {builtin}}}`"
                ),
            );
            return None;
        }
        let fields = self.fields(
            named.value,
            TASK_KEYS,
            &format!("a mapping of settings for task `{name}` (`command` or `builtin`, ...)"),
            &format!("in task `{name}`"),
        )?;
        let kinds: Vec<(&str, &Node, &Node)> = ["command", "builtin", "handler"]
            .into_iter()
            .filter_map(|k| fields.entry(k).map(|(key, value)| (k, key, value)))
            .collect();
        let kind = match kinds.as_slice() {
            [] => {
                self.error(
                    &named.key.loc,
                    format!("task `{name}` has none of `command`, `builtin` or `handler`"),
                );
                None
            }
            [("command", _, command)] => self.command(command, used),
            [("builtin", _, builtin)] => {
                let choices: Vec<(&str, Builtin)> =
                    Builtin::ALL.iter().map(|b| (b.name(), *b)).collect();
                self.choice(builtin, "builtin", &choices)
                    .map(TaskKind::Builtin)
            }
            [(_, _, handler)] => self
                .string(handler, "handler")
                .map(|h| TaskKind::Handler(h.to_string())),
            [(first, ..), (second, ..), ..] => {
                let later = kinds
                    .iter()
                    .map(|(_, key, _)| *key)
                    .max_by_key(|key| (key.loc.line, key.loc.col))
                    .expect("two or more");
                self.error(
                    &later.loc,
                    format!("task `{name}` has both `{first}` and `{second}`; use one of them"),
                );
                None
            }
        };
        let timeout = match fields.get("timeout") {
            None => Some(None),
            Some(node) if node.is_null() => Some(None),
            Some(node) => self.positive_duration(node, "timeout").map(Some),
        };
        let retry = match fields.get("retry") {
            None => Some(RetryPolicy::default()),
            Some(node) => self.retry(node, name),
        };
        let ignore_result = match fields.get("ignore_result") {
            None => Some(false),
            Some(node) => self.boolean(node, "ignore_result"),
        };
        let celery_names = match fields.get("celery_name") {
            None => Some(Vec::new()),
            Some(node) => self.celery_task_names(node),
        };
        Some(TaskConfig {
            name: name.clone(),
            kind: kind?,
            ignore_result: ignore_result?,
            celery_names: celery_names?,
            timeout: timeout?,
            retry: retry?,
            loc: named.key.loc.clone(),
        })
    }

    fn command(&mut self, node: &Node, used: &mut Vec<String>) -> Option<TaskKind> {
        let items = match &node.value {
            NodeValue::Seq(items) => items,
            NodeValue::Str(_) => {
                self.error(
                    &node.loc,
                    "expected a list of arguments like `[\"/usr/local/bin/backup\", \"--full\"]` \
                     for `command`, found a string (commands never run through a shell)",
                );
                return None;
            }
            _ => {
                self.wrong_type(node, "a list of arguments for `command`");
                return None;
            }
        };
        if items.is_empty() {
            self.error(
                &node.loc,
                "`command` must name a program to run; found an empty list",
            );
            return None;
        }
        let mut argv = Vec::with_capacity(items.len());
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            let Some(arg) = item.as_str() else {
                let quote = match item.value.scalar_text() {
                    Some(text) if !matches!(item.value, NodeValue::Null) => {
                        format!(" (quote it: \"{text}\")")
                    }
                    _ => String::new(),
                };
                self.error(
                    &item.loc,
                    format!(
                        "expected a string for argument {} of `command`, found {}{quote}",
                        i + 1,
                        item.value.kind()
                    ),
                );
                ok = false;
                continue;
            };
            if i == 0 && arg.is_empty() {
                self.error(
                    &item.loc,
                    "the program (first argument of `command`) is empty",
                );
                ok = false;
            }
            match placeholder::check(arg) {
                Ok(names) => {
                    for name in names {
                        if !used.iter().any(|u| u == name) {
                            used.push(name.to_string());
                        }
                    }
                }
                Err(message) => {
                    self.error(&item.loc, message);
                    ok = false;
                }
            }
            argv.push(arg.to_string());
        }
        ok.then_some(TaskKind::Command { argv })
    }

    fn retry(&mut self, node: &'a Node, task: &str) -> Option<RetryPolicy> {
        let fields = self.fields(
            node,
            RETRY_KEYS,
            "a mapping like `{max: 3, backoff: 10s}` for `retry`",
            &format!("in `retry` of task `{task}`"),
        )?;
        let mut ok = true;
        let mut policy = RetryPolicy::default();
        if let Some(n) = fields.get("max") {
            match self.integer(
                n,
                "max",
                0..i64::from(u32::MAX) + 1,
                "an integer of 0 or more",
            ) {
                Some(max) => policy.max = max as u32,
                None => ok = false,
            }
        }
        if let Some(n) = fields.get("backoff") {
            match self.duration(n, "backoff") {
                Some(d) => policy.backoff = d,
                None => ok = false,
            }
        }
        match fields.get("max_backoff") {
            Some(n) => match self.duration(n, "max_backoff") {
                Some(d) if d < policy.backoff && ok => {
                    self.error(
                        &n.loc,
                        format!(
                            "`max_backoff` ({}) must not be shorter than `backoff` ({})",
                            humantime::format_duration(d),
                            humantime::format_duration(policy.backoff)
                        ),
                    );
                    ok = false;
                }
                Some(d) => policy.max_backoff = d,
                None => ok = false,
            },
            // A long first backoff raises the default cap rather than being an error.
            None => policy.max_backoff = policy.max_backoff.max(policy.backoff),
        }
        ok.then_some(policy)
    }

    // ----- schedules -----------------------------------------------------------------

    fn schedule(&mut self, named: &Named<'_>, names: &Names<'_>) -> Option<ScheduleConfig> {
        let name = &named.name;
        let fields = self.fields(
            named.value,
            SCHEDULE_KEYS,
            &format!(
                "a mapping of settings for schedule `{name}` (`task`, `cron` or `every`, ...)"
            ),
            &format!("in schedule `{name}`"),
        )?;
        let mut ok = true;

        let queue = match fields.get("queue") {
            None => Some(DEFAULT_QUEUE.to_string()),
            Some(node) => self.reference(node, "queue", &names.queues),
        };
        let to_celery = queue
            .as_deref()
            .is_some_and(|q| names.celery_queues.contains(q));

        let task_node = fields.get("task");
        let task = match task_node {
            None => {
                self.error(&named.key.loc, format!("schedule `{name}` has no `task`"));
                None
            }
            // On a `protocol: celery` queue the task is a Celery task name, run by Celery
            // workers: it need not be one of `tasks:`.
            Some(node) if to_celery => self.celery_task_name(node),
            Some(node) => self.reference(node, "task", &names.tasks),
        };

        let timezone = match fields.get("timezone") {
            None => Some(names.timezone),
            Some(node) => self.timezone(node),
        };

        let timing = self.timing(named, &fields, timezone.unwrap_or(names.timezone));

        let args_node = fields.get("args");
        let args = match args_node {
            None => Some(serde_json::Value::Object(serde_json::Map::new())),
            Some(node) => match &node.value {
                NodeValue::Null => Some(serde_json::Value::Object(serde_json::Map::new())),
                NodeValue::Map(_) | NodeValue::Seq(_) => self.json(node, "args"),
                _ => {
                    self.wrong_type(node, "a mapping or a list for `args`");
                    None
                }
            },
        };

        let kwargs = match fields.get("kwargs") {
            None => Some(None),
            Some(node) => match &node.value {
                NodeValue::Null => Some(None),
                NodeValue::Map(_) => match self.json(node, "kwargs") {
                    Some(serde_json::Value::Object(map)) => Some(Some(map)),
                    _ => None,
                },
                _ => {
                    self.wrong_type(node, "a mapping for `kwargs`");
                    None
                }
            },
        };

        let priority = match fields.get("priority") {
            None => Some(ScheduleConfig::DEFAULT_PRIORITY),
            Some(node) => self
                .integer(
                    node,
                    "priority",
                    0..i64::from(ScheduleConfig::MAX_PRIORITY) + 1,
                    "an integer from 0 to 9 (higher runs first)",
                )
                .map(|p| p as u8),
        };

        let misfire = match fields.get("misfire") {
            None => Some(MisfirePolicy::default()),
            Some(node) => self.misfire(node, name),
        };

        let overlap = match fields.get("overlap") {
            None => Some(Overlap::default()),
            Some(node) => {
                let choices: Vec<(&str, Overlap)> =
                    Overlap::ALL.iter().map(|o| (o.name(), *o)).collect();
                self.choice(node, "overlap", &choices)
            }
        };

        let expires = match fields.get("expires") {
            None => Some(Expires::default()),
            Some(node) => self.expires(node),
        };

        let enabled = match fields.get("enabled") {
            None => Some(true),
            Some(node) => self.boolean(node, "enabled"),
        };

        // Every `{{name}}` in the task's command must be provided by `args`.
        if let (Some(task), Some(args), Some(task_node)) = (&task, &args, task_node)
            && !to_celery
            && let Some(used) = names.placeholders.get(task.as_str())
        {
            let at = args_node.unwrap_or(task_node);
            for placeholder in used {
                let provided = args
                    .as_object()
                    .is_some_and(|o| o.contains_key(placeholder));
                if !provided {
                    self.error(
                        &at.loc,
                        format!(
                            "`args` does not provide `{placeholder}`, which task `{task}` \
                             uses as `{{{{{placeholder}}}}}` in its command"
                        ),
                    );
                    ok = false;
                }
            }
        }

        if !ok {
            return None;
        }
        Some(ScheduleConfig {
            name: name.clone(),
            task: task?,
            timing: timing?,
            timezone: timezone?,
            args: args?,
            kwargs: kwargs?,
            queue: queue?,
            priority: priority?,
            misfire: misfire?,
            overlap: overlap?,
            expires: expires?,
            enabled: enabled?,
            loc: named.key.loc.clone(),
        })
    }

    // ----- protocol: celery ----------------------------------------------------------

    /// The `protocol: celery` settings of a queue (`None` for a celeriac queue or when
    /// invalid; errors are reported).
    fn celery_queue(&mut self, named: &Named<'a>, fields: &Fields<'a>) -> Option<CeleryQueue> {
        let queue = &named.name;
        let protocol = match fields.get("protocol") {
            None => "celeriac",
            Some(node) => self.choice(
                node,
                "protocol",
                &[("celeriac", "celeriac"), ("celery", "celery")],
            )?,
        };
        if protocol != "celery" {
            for key in CELERY_QUEUE_KEYS {
                if let Some((key_node, _)) = fields.entry(key) {
                    self.error(
                        &key_node.loc,
                        format!(
                            "`{key}` only applies to `protocol: celery` queues; add \
                             `protocol: celery` to queue `{queue}` or remove `{key}`"
                        ),
                    );
                }
            }
            return None;
        }
        let mut ok = true;
        let broker = match fields.get("broker") {
            None => {
                self.error(
                    &named.key.loc,
                    format!(
                        "queue `{queue}` has `protocol: celery` but no `broker`: give the \
                         Celery app's broker URL, e.g. `broker: redis://127.0.0.1:6379/1`"
                    ),
                );
                None
            }
            Some(node) => self.celery_url(node, "broker"),
        };
        let backend = match fields.get("backend") {
            None => Some(None),
            Some(node) if node.is_null() => Some(None),
            Some(node) => self.celery_url(node, "backend").map(Some),
        };
        let name = match fields.get("name") {
            None => Some(queue.clone()),
            Some(node) => match self.string(node, "name") {
                Some(n) if crate::broker::validate_queue(n).is_ok() => Some(n.to_string()),
                Some(n) => {
                    self.error(
                        &node.loc,
                        format!(
                            "invalid kombu queue name `{n}`: 1-200 bytes without braces, \
                             spaces or control characters"
                        ),
                    );
                    None
                }
                None => None,
            },
        };
        let priority_steps = match fields.get("priority_steps") {
            None => Some(CeleryQueue::DEFAULT_PRIORITY_STEPS.to_vec()),
            Some(node) => self.priority_steps(node),
        };
        let key_prefix = match fields.get("key_prefix") {
            None => Some(String::new()),
            Some(node) => self.string(node, "key_prefix").map(str::to_string),
        };
        for part in [
            broker.is_some(),
            backend.is_some(),
            name.is_some(),
            priority_steps.is_some(),
            key_prefix.is_some(),
        ] {
            ok &= part;
        }
        if !ok {
            return None;
        }
        Some(CeleryQueue {
            broker: broker?,
            backend: backend?,
            name: name?,
            priority_steps: priority_steps?,
            key_prefix: key_prefix?,
        })
    }

    /// A Redis URL of a Celery app (its broker or result backend).
    fn celery_url(&mut self, node: &Node, key: &str) -> Option<String> {
        let url = self.string(node, key)?;
        if BROKER_SCHEMES.iter().any(|s| url.starts_with(s)) {
            return Some(url.to_string());
        }
        let help = if let Some(path) = url.strip_prefix("redis+socket://") {
            format!("; for a unix socket write `unix://{path}`")
        } else {
            format!("; expected a {} URL", one_of(BROKER_SCHEMES))
        };
        self.error(&node.loc, format!("unsupported `{key}` URL `{url}`{help}"));
        None
    }

    /// kombu's `priority_steps`: a list of distinct priorities 0..=9, ascending, from 0.
    fn priority_steps(&mut self, node: &Node) -> Option<Vec<u8>> {
        let NodeValue::Seq(items) = &node.value else {
            self.wrong_type(node, "a list like `[0, 3, 6, 9]` for `priority_steps`");
            return None;
        };
        let mut steps = Vec::with_capacity(items.len());
        for item in items {
            steps
                .push(self.integer(item, "priority_steps", 0..10, "an integer from 0 to 9")? as u8);
        }
        if steps.first() != Some(&0) || steps.windows(2).any(|w| w[0] >= w[1]) {
            self.error(
                &node.loc,
                "`priority_steps` must start with 0 and ascend, like kombu's default `[0, 3, 6, 9]`",
            );
            return None;
        }
        Some(steps)
    }

    /// A Celery task name (`local.tasks.cal`).
    fn celery_task_name(&mut self, node: &Node) -> Option<String> {
        let name = self.string(node, "task")?;
        if name.is_empty() || name.len() > 1000 || name.chars().any(char::is_control) {
            self.error(
                &node.loc,
                format!(
                    "invalid Celery task name `{}`: must be 1-1000 characters without control \
                     characters",
                    name.escape_default()
                ),
            );
            return None;
        }
        Some(name.to_string())
    }

    /// `celery_name`: one Celery task name or a list of them.
    fn celery_task_names(&mut self, node: &Node) -> Option<Vec<String>> {
        match &node.value {
            NodeValue::Str(_) => self.celery_task_name(node).map(|n| vec![n]),
            NodeValue::Seq(items) => {
                let mut names = Vec::with_capacity(items.len());
                let mut ok = true;
                for item in items {
                    match self.celery_task_name(item) {
                        Some(n) => names.push(n),
                        None => ok = false,
                    }
                }
                ok.then_some(names)
            }
            _ => {
                self.wrong_type(
                    node,
                    "a Celery task name or a list of them for `celery_name`",
                );
                None
            }
        }
    }

    /// A Celery task name may be claimed by one task only.
    fn celery_names(&mut self, config: &Config) {
        let mut claimed: HashMap<&str, &TaskConfig> = HashMap::new();
        for task in config.tasks.values() {
            for name in &task.celery_names {
                if let Some(first) = claimed.get(name.as_str()) {
                    if first.name != task.name {
                        self.errors.push(
                            ConfigError::at(
                                &task.loc,
                                format!(
                                    "Celery task name `{name}` is claimed by tasks `{}` and \
                                     `{}`; a Celery name runs one task",
                                    first.name, task.name
                                ),
                            )
                            .with_related(&first.loc),
                        );
                    }
                    continue;
                }
                claimed.insert(name, task);
            }
        }
    }

    /// A reference to a named task or queue, which must exist.
    fn reference(&mut self, node: &Node, what: &str, known: &HashSet<&str>) -> Option<String> {
        let name = match &node.value {
            NodeValue::Str(s) => s.clone(),
            NodeValue::Int(i) => i.to_string(),
            _ => {
                self.wrong_type(node, &format!("a {what} name for `{what}`"));
                return None;
            }
        };
        if known.contains(&name.as_str()) {
            return Some(name);
        }
        let help = did_you_mean(closest(&name, known.iter().copied()));
        self.error(&node.loc, format!("unknown {what} `{name}`{help}"));
        None
    }

    fn timing(&mut self, named: &Named<'_>, fields: &Fields<'_>, tz: Tz) -> Option<Timing> {
        let name = &named.name;
        let anchor = fields.entry("anchor");
        match (fields.entry("cron"), fields.entry("every")) {
            (Some((ck, _)), Some((ek, _))) => {
                let later = if (ek.loc.line, ek.loc.col) > (ck.loc.line, ck.loc.col) {
                    ek
                } else {
                    ck
                };
                self.error(
                    &later.loc,
                    format!("schedule `{name}` has both `cron` and `every`; use one of them"),
                );
                None
            }
            (None, None) => {
                self.error(
                    &named.key.loc,
                    format!("schedule `{name}` has neither `cron` nor `every`"),
                );
                None
            }
            (Some((_, cron)), None) => {
                if let Some((key, _)) = anchor {
                    self.error(
                        &key.loc,
                        "`anchor` only applies to `every` schedules; a cron schedule follows \
                         the clock",
                    );
                }
                let expr = self.cron(cron)?;
                anchor
                    .is_none()
                    .then(|| Timing::Cron(CronSchedule::new(expr, tz)))
            }
            (None, Some((_, every_node))) => {
                let every = self.duration(every_node, "every");
                let anchor = match anchor {
                    None => Some(None),
                    Some((_, node)) => self.anchor(node).map(Some),
                };
                let (every, anchor) = (every?, anchor?);
                match IntervalSchedule::new(every, anchor) {
                    Ok(interval) => Some(Timing::Interval(interval)),
                    Err(e) => {
                        self.error(&every_node.loc, format!("invalid `every`: {e}"));
                        None
                    }
                }
            }
        }
    }

    fn cron(&mut self, node: &Node) -> Option<CronExpr> {
        let expr = self.string(node, "cron")?;
        let parsed = match self.crons.get(expr) {
            Some(parsed) => parsed.clone(),
            None => {
                let parsed = CronExpr::parse(expr);
                self.crons.insert(expr.to_string(), parsed.clone());
                parsed
            }
        };
        match parsed {
            Ok(parsed) => Some(parsed),
            Err(e) => {
                let loc = self.inside_string(node, expr, e.span.as_ref().map(|s| s.start));
                self.error(
                    &loc,
                    format!("invalid cron expression `{expr}`: {}", e.message),
                );
                None
            }
        }
    }

    /// The location of byte `offset` inside the string value of `node`, when the value is
    /// written verbatim on one line (plain or quoted without escapes); otherwise the
    /// location of the value itself.
    fn inside_string(&self, node: &Node, value: &str, offset: Option<usize>) -> Location {
        let fallback = node.loc.clone();
        let Some(prefix) = offset.and_then(|o| value.get(..o)) else {
            return fallback;
        };
        let Some(file) = self.files.iter().find(|f| f.path == node.loc.file) else {
            return fallback;
        };
        let Some(line) = file.line(node.loc.line) else {
            return fallback;
        };
        let Some(start) = line
            .char_indices()
            .nth(node.loc.col as usize - 1)
            .map(|(i, _)| i)
        else {
            return fallback;
        };
        let written = &line[start..];
        let (quote, written) = match written.strip_prefix(['"', '\'']) {
            Some(inner) => (1, inner),
            None => (0, written),
        };
        if !written.starts_with(value) {
            return fallback;
        }
        let chars = u32::try_from(prefix.chars().count()).unwrap_or(0);
        node.loc.shifted(quote + chars)
    }

    fn anchor(&mut self, node: &Node) -> Option<DateTime<Utc>> {
        let text = self.string(node, "anchor")?;
        match DateTime::parse_from_rfc3339(text.trim()) {
            Ok(t) => Some(t.with_timezone(&Utc)),
            Err(e) => {
                self.error(
                    &node.loc,
                    format!(
                        "invalid `anchor` `{text}`: expected an RFC 3339 time such as \
                         `2024-01-01T00:00:00Z` or `2024-01-01T08:00:00+08:00` ({e})"
                    ),
                );
                None
            }
        }
    }

    fn misfire(&mut self, node: &Node, schedule: &str) -> Option<MisfirePolicy> {
        let fields = self.fields(
            node,
            MISFIRE_KEYS,
            "a mapping like `{grace: 10m, catch_up: latest}` for `misfire`",
            &format!("in `misfire` of schedule `{schedule}`"),
        )?;
        let mut ok = true;
        let mut policy = MisfirePolicy::default();
        if let Some(n) = fields.get("grace")
            && !n.is_null()
        {
            match self.duration(n, "grace") {
                Some(d) => policy.grace = Some(d),
                None => ok = false,
            }
        }
        if let Some(n) = fields.get("catch_up") {
            let choices: Vec<(&str, CatchUp)> =
                CatchUp::ALL.iter().map(|c| (c.name(), *c)).collect();
            match self.choice(n, "catch_up", &choices) {
                Some(c) => policy.catch_up = c,
                None => ok = false,
            }
        }
        if let Some((key, n)) = fields.entry("max") {
            match self.integer(
                n,
                "max",
                1..i64::from(u32::MAX) + 1,
                "an integer of 1 or more",
            ) {
                Some(max) => policy.max = max as u32,
                None => ok = false,
            }
            if ok && policy.catch_up != CatchUp::All {
                self.error(&key.loc, "`max` only applies to `catch_up: all`");
                ok = false;
            }
        }
        ok.then_some(policy)
    }

    fn expires(&mut self, node: &Node) -> Option<Expires> {
        let expected = "`auto`, `never` or a duration like `1h`";
        match &node.value {
            NodeValue::Str(s) if s == "auto" => Some(Expires::Auto),
            NodeValue::Str(s) if s == "never" => Some(Expires::Never),
            NodeValue::Str(s) if !s.trim_start().starts_with(|c: char| c.is_ascii_digit()) => {
                let help = match closest(s, ["auto", "never"]) {
                    Some(word) => format!("; did you mean `{word}`?"),
                    None => format!("; expected {expected}"),
                };
                self.error(&node.loc, format!("invalid `expires` `{s}`{help}"));
                None
            }
            NodeValue::Str(_) | NodeValue::Int(_) | NodeValue::Float(_) => {
                self.positive_duration(node, "expires").map(Expires::After)
            }
            _ => {
                self.wrong_type(node, &format!("{expected} for `expires`"));
                None
            }
        }
    }

    /// A mapping or list as JSON (for `args` and `kwargs`).
    fn json(&mut self, node: &Node, key: &str) -> Option<serde_json::Value> {
        use serde_json::Value;
        Some(match &node.value {
            NodeValue::Null => Value::Null,
            NodeValue::Bool(b) => Value::Bool(*b),
            NodeValue::Int(i) => Value::from(*i),
            NodeValue::Float(f) => match serde_json::Number::from_f64(*f) {
                Some(n) => Value::Number(n),
                None => {
                    self.error(
                        &node.loc,
                        format!(
                            "`{}` cannot be used in `{key}` (JSON has no NaN or infinity)",
                            node_text(node)
                        ),
                    );
                    return None;
                }
            },
            NodeValue::Str(s) => Value::String(s.clone()),
            NodeValue::Seq(items) => {
                let mut out = Vec::with_capacity(items.len());
                let mut ok = true;
                for item in items {
                    match self.json(item, key) {
                        Some(v) => out.push(v),
                        None => ok = false,
                    }
                }
                if !ok {
                    return None;
                }
                Value::Array(out)
            }
            NodeValue::Map(entries) => {
                let mut out = serde_json::Map::new();
                let mut ok = true;
                for (k, v) in entries {
                    let name = match &k.value {
                        NodeValue::Str(s) => s.clone(),
                        NodeValue::Int(i) => i.to_string(),
                        NodeValue::Bool(b) => b.to_string(),
                        other => {
                            self.error(
                                &k.loc,
                                format!("expected a string key in `{key}`, found {}", other.kind()),
                            );
                            ok = false;
                            continue;
                        }
                    };
                    let value = self.json(v, key);
                    if out.contains_key(&name) {
                        self.error(&k.loc, format!("duplicate key `{name}` in `{key}`"));
                        ok = false;
                        continue;
                    }
                    match value {
                        Some(value) => {
                            out.insert(name, value);
                        }
                        None => ok = false,
                    }
                }
                if !ok {
                    return None;
                }
                Value::Object(out)
            }
        })
    }
}

/// What schedules may refer to.
struct Names<'n> {
    /// Every defined task name (also those whose definitions have errors, to avoid
    /// follow-on errors).
    tasks: HashSet<&'n str>,
    queues: HashSet<&'n str>,
    /// Queues declared `protocol: celery`: their schedules name Celery tasks.
    celery_queues: HashSet<&'n str>,
    /// Placeholders used by each command task (each name once).
    placeholders: &'n HashMap<&'n str, Vec<String>>,
    timezone: Tz,
}

/// Names are letters, digits and `_ - . : / @`: safe in Redis keys, in the command line's
/// comma-separated queue lists and in log lines.
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("names must not be empty".to_string());
    }
    if name.chars().count() > MAX_NAME_LEN {
        return Err(format!("names are at most {MAX_NAME_LEN} characters"));
    }
    if let Some(c) = name
        .chars()
        .find(|&c| !(c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | '/' | '@')))
    {
        return Err(format!(
            "`{}` is not allowed (names are letters, digits, `_`, `-`, `.`, `:`, `/` and `@`)",
            c.escape_default()
        ));
    }
    Ok(())
}

/// Seconds as a float, to the millisecond.
fn float_seconds(f: f64) -> Result<Duration, &'static str> {
    if !f.is_finite() {
        return Err("must be a finite number of seconds");
    }
    if f < 0.0 {
        return Err("must not be negative");
    }
    let millis = f * 1000.0;
    if millis > u64::MAX as f64 / 2.0 {
        return Err("too large");
    }
    let rounded = millis.round();
    if (millis - rounded).abs() > 1e-6 * millis.max(1.0) {
        return Err("seconds are precise to the millisecond at most");
    }
    Ok(Duration::from_millis(rounded as u64))
}

fn node_text(node: &Node) -> String {
    node.value.scalar_text().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_seconds_to_the_millisecond() {
        assert_eq!(float_seconds(0.5), Ok(Duration::from_millis(500)));
        assert_eq!(float_seconds(1.25), Ok(Duration::from_millis(1250)));
        assert_eq!(float_seconds(0.1), Ok(Duration::from_millis(100)));
        assert!(float_seconds(0.0005).is_err());
        assert!(float_seconds(-1.0).is_err());
        assert!(float_seconds(f64::INFINITY).is_err());
    }

    #[test]
    fn names_are_restricted() {
        assert!(check_name("nightly-cleanup_2.v1:eu/a@b").is_ok());
        assert!(check_name("报表").is_ok());
        assert!(check_name("").is_err());
        assert_eq!(
            check_name("a b"),
            Err(
                "` ` is not allowed (names are letters, digits, `_`, `-`, `.`, `:`, `/` and `@`)"
                    .to_string()
            )
        );
        assert!(check_name("q,r").is_err());
        assert!(check_name("{q}").is_err());
        assert!(check_name(&"x".repeat(201)).is_err());
    }
}
