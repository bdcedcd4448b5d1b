//! Cron expressions and when they fire in a time zone.
//!
//! - [`CronExpr`]: a parsed, validated expression. The grammar (five fields or a macro,
//!   names, `L`, `nL`, `n#k`, `?`) and its error messages live in `parser.rs`.
//! - [`CronSchedule`]: an expression in an IANA zone; [`CronSchedule::next_after`] applies
//!   the DST rules (see `search.rs` and `docs/schedules.md`).
//!
//! The evaluator is our own, over a bit-set model of the fields (`fields.rs`), rather than
//! the `croner` crate: `docs/cron-engine.md` has the comparison and the reasons.

mod fields;
mod parser;
mod search;

use std::fmt;
use std::ops::Range;
use std::str::FromStr;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use chrono_tz::Tz;

use fields::FieldSet;

/// A cron expression that failed to parse, with the byte range of the offending part.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CronError {
    /// What is wrong, e.g. "minute: 61 is out of range 0-59".
    pub message: String,
    /// Byte range within the expression that the message points at (the field or token).
    pub span: Option<Range<usize>>,
}

/// A parsed, validated cron expression (5 fields or a macro).
///
/// Two expressions are equal when they are written the same way.
#[derive(Debug, Clone)]
pub struct CronExpr {
    source: String,
    fields: FieldSet,
}

impl CronError {
    /// Never: a bad expression stays bad until the configuration changes.
    pub fn is_transient(&self) -> bool {
        false
    }
}

impl PartialEq for CronExpr {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for CronExpr {}

impl CronExpr {
    /// Parses and validates `expr`: five fields `minute hour day-of-month month
    /// day-of-week` separated by spaces or tabs, or a macro such as `@daily`.
    ///
    /// Rejects anything outside the grammar, and expressions that can never fire
    /// (`0 0 30 2 *`), with a message and the span of the offending field or token.
    pub fn parse(expr: &str) -> Result<CronExpr, CronError> {
        let fields = parser::parse(expr)?;
        Ok(CronExpr {
            source: expr.to_string(),
            fields,
        })
    }

    /// The expression as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether the local wall-clock minute of `local` matches all five fields (with the
    /// Vixie day rule). Seconds are ignored. This is calendar matching only: DST is
    /// [`CronSchedule::next_after`]'s business.
    pub fn matches_local(&self, local: NaiveDateTime) -> bool {
        self.fields.matches(local)
    }

    /// Whether the expression fires on some minute of local date `date`.
    pub fn matches_date(&self, date: NaiveDate) -> bool {
        self.fields.date_matches(date)
    }

    /// Whether the hour field is restricted (anything but exactly `*`). It decides the DST
    /// rules: a restricted hour fires once for a repeated wall time, and at the transition
    /// for a skipped one; `*` fires at both occurrences and skips what does not exist.
    pub fn hour_restricted(&self) -> bool {
        self.fields.hour_restricted
    }

    /// Whether the day-of-month field is restricted (anything but exactly `*` or `?`).
    pub fn day_of_month_restricted(&self) -> bool {
        self.fields.day_of_month_restricted
    }

    /// Whether the day-of-week field is restricted (anything but exactly `*` or `?`).
    pub fn day_of_week_restricted(&self) -> bool {
        self.fields.day_of_week_restricted
    }
}

impl FromStr for CronExpr {
    type Err = CronError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CronExpr::parse(s)
    }
}

impl fmt::Display for CronExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// A cron expression evaluated in a time zone.
#[derive(Debug, Clone, PartialEq)]
pub struct CronSchedule {
    expr: CronExpr,
    tz: Tz,
}

impl CronSchedule {
    /// The expression `expr` read in local wall-clock time of `tz`.
    pub fn new(expr: CronExpr, tz: Tz) -> Self {
        CronSchedule { expr, tz }
    }

    pub fn expr(&self) -> &CronExpr {
        &self.expr
    }

    pub fn timezone(&self) -> Tz {
        self.tz
    }

    /// The first fire instant strictly after `after`, or `None` when nothing fires in
    /// `(after, after + 30 years]`. Fires fall on whole local minutes, except a fire
    /// moved to the end of a DST gap, which is at the instant the clock jumped.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        search::next_after(&self.expr.fields, self.tz, after)
    }

    /// The fire instants strictly after `after`, in order (each the `next_after` of the
    /// previous one).
    pub fn iter_after(&self, after: DateTime<Utc>) -> impl Iterator<Item = DateTime<Utc>> + '_ {
        std::iter::successors(self.next_after(after), move |t| self.next_after(*t))
    }
}
