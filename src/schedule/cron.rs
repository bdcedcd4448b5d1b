//! Cron expressions (INTERFACE SKETCH: replaced by the engine work; keep the public API).

use std::ops::Range;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

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
#[derive(Debug, Clone)]
pub struct CronExpr {
    source: String,
    inner: croner::Cron,
}

impl PartialEq for CronExpr {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl CronExpr {
    pub fn parse(expr: &str) -> Result<CronExpr, CronError> {
        let inner = expr.parse::<croner::Cron>().map_err(|e| CronError {
            message: e.to_string(),
            span: None,
        })?;
        Ok(CronExpr {
            source: expr.to_string(),
            inner,
        })
    }

    /// The expression as written.
    pub fn source(&self) -> &str {
        &self.source
    }
}

/// A cron expression evaluated in a time zone.
#[derive(Debug, Clone, PartialEq)]
pub struct CronSchedule {
    expr: CronExpr,
    tz: Tz,
}

impl CronSchedule {
    pub fn new(expr: CronExpr, tz: Tz) -> Self {
        CronSchedule { expr, tz }
    }

    pub fn expr(&self) -> &CronExpr {
        &self.expr
    }

    pub fn timezone(&self) -> Tz {
        self.tz
    }

    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.expr
            .inner
            .find_next_occurrence(&after.with_timezone(&self.tz), false)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }
}
