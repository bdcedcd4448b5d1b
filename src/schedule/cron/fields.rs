//! The parsed form of a cron expression: one bit set per field, and the calendar rules
//! (`L`, `nL`, `n#k`, the Vixie day rule) that turn those sets into matching days.
//!
//! Everything here is about local wall-clock time and the calendar only; time zones and
//! DST are `search.rs`'s business. Bits make matching a shift and a mask, and let the
//! search jump to the next matching value with `trailing_zeros` instead of stepping.

use chrono::{Datelike, NaiveDate, NaiveDateTime, Timelike};

/// Which of the five fields a value belongs to. Drives ranges, names and messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FieldKind {
    Minute,
    Hour,
    DayOfMonth,
    Month,
    DayOfWeek,
}

impl FieldKind {
    pub(crate) const ALL: [FieldKind; 5] = [
        FieldKind::Minute,
        FieldKind::Hour,
        FieldKind::DayOfMonth,
        FieldKind::Month,
        FieldKind::DayOfWeek,
    ];

    /// The name used in error messages.
    pub(crate) fn name(self) -> &'static str {
        match self {
            FieldKind::Minute => "minute",
            FieldKind::Hour => "hour",
            FieldKind::DayOfMonth => "day-of-month",
            FieldKind::Month => "month",
            FieldKind::DayOfWeek => "day-of-week",
        }
    }

    pub(crate) fn min(self) -> u32 {
        match self {
            FieldKind::Minute | FieldKind::Hour | FieldKind::DayOfWeek => 0,
            FieldKind::DayOfMonth | FieldKind::Month => 1,
        }
    }

    /// The largest value; for day-of-week 7 (a second spelling of Sunday), which is also
    /// the end of the range that `*` and steps cover there.
    pub(crate) fn max(self) -> u32 {
        match self {
            FieldKind::Minute => 59,
            FieldKind::Hour => 23,
            FieldKind::DayOfMonth => 31,
            FieldKind::Month => 12,
            FieldKind::DayOfWeek => 7,
        }
    }

    /// The names this field accepts (upper case), each with its value.
    pub(crate) fn names(self) -> &'static [(&'static str, u32)] {
        match self {
            FieldKind::Month => &MONTH_NAMES,
            FieldKind::DayOfWeek => &WEEKDAY_NAMES,
            _ => &[],
        }
    }
}

pub(crate) const MONTH_NAMES: [(&str, u32); 12] = [
    ("JAN", 1),
    ("FEB", 2),
    ("MAR", 3),
    ("APR", 4),
    ("MAY", 5),
    ("JUN", 6),
    ("JUL", 7),
    ("AUG", 8),
    ("SEP", 9),
    ("OCT", 10),
    ("NOV", 11),
    ("DEC", 12),
];

pub(crate) const WEEKDAY_NAMES: [(&str, u32); 7] = [
    ("SUN", 0),
    ("MON", 1),
    ("TUE", 2),
    ("WED", 3),
    ("THU", 4),
    ("FRI", 5),
    ("SAT", 6),
];

/// English month names for messages, index 1..=12.
pub(crate) const MONTH_LONG_NAMES: [&str; 13] = [
    "",
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// The bit sets of one expression.
///
/// Day-of-week bits use 0 = Sunday .. 6 = Saturday (a 7 in the source is folded into 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FieldSet {
    /// Bits 0..=59.
    pub(crate) minutes: u64,
    /// Bits 0..=23.
    pub(crate) hours: u32,
    /// Bits 1..=31.
    pub(crate) days: u32,
    /// `L` in day-of-month: the last day of the month.
    pub(crate) last_day_of_month: bool,
    /// Bits 1..=12.
    pub(crate) months: u16,
    /// Bits 0..=6: every such weekday.
    pub(crate) weekdays: u8,
    /// Per weekday (index 0..=6), bits 1..=5: the k-th such weekday of the month (`FRI#2`).
    pub(crate) nth_weekdays: [u8; 7],
    /// Bits 0..=6: the last such weekday of the month (`5L`, `FRIL`).
    pub(crate) last_weekdays: u8,
    /// Day-of-month is anything but exactly `*` or `?`.
    pub(crate) day_of_month_restricted: bool,
    /// Day-of-week is anything but exactly `*` or `?`.
    pub(crate) day_of_week_restricted: bool,
    /// Hour is anything but exactly `*`: decides the DST rules.
    pub(crate) hour_restricted: bool,
    /// `weekday_masks[w]`: the days 1..=31 of a month starting on weekday `w` whose weekday
    /// is in `weekdays`. Derived from `weekdays`, kept so a month's days are a table lookup.
    weekday_masks: [u32; 7],
}

impl FieldSet {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        minutes: u64,
        hours: u32,
        days: u32,
        last_day_of_month: bool,
        months: u16,
        weekdays: u8,
        nth_weekdays: [u8; 7],
        last_weekdays: u8,
        day_of_month_restricted: bool,
        day_of_week_restricted: bool,
        hour_restricted: bool,
    ) -> FieldSet {
        let mut weekday_masks = [0u32; 7];
        for (first, mask) in weekday_masks.iter_mut().enumerate() {
            for day in 1..=31u32 {
                let weekday = (first as u32 + day - 1) % 7;
                if weekdays & (1 << weekday) != 0 {
                    *mask |= 1 << day;
                }
            }
        }
        FieldSet {
            minutes,
            hours,
            days,
            last_day_of_month,
            months,
            weekdays,
            nth_weekdays,
            last_weekdays,
            day_of_month_restricted,
            day_of_week_restricted,
            hour_restricted,
            weekday_masks,
        }
    }

    /// The days (bits 1..=31) of `month` in `year` on which the expression fires,
    /// ignoring the month field. Applies the Vixie rule: when both day fields are
    /// restricted a day matches if either does, otherwise both must (an unrestricted
    /// field matches everything).
    pub(crate) fn day_mask(&self, year: i32, month: u32) -> u32 {
        let Some(first) = NaiveDate::from_ymd_opt(year, month, 1) else {
            return 0;
        };
        let length = days_in_month(year, month);
        let valid = ((1u64 << (length + 1)) - 2) as u32;
        let by_month_day = || {
            let mut mask = self.days;
            if self.last_day_of_month {
                mask |= 1 << length;
            }
            mask & valid
        };
        let by_weekday = || {
            let first_weekday = first.weekday().num_days_from_sunday();
            let mut mask = self.weekday_masks[first_weekday as usize];
            for weekday in 0..7u32 {
                let nth = self.nth_weekdays[weekday as usize];
                if nth != 0 {
                    let first_such = 1 + (weekday + 7 - first_weekday) % 7;
                    for k in 1..=5u32 {
                        if nth & (1 << k) != 0 {
                            let day = first_such + 7 * (k - 1);
                            if day <= length {
                                mask |= 1 << day;
                            }
                        }
                    }
                }
                if self.last_weekdays & (1 << weekday) != 0 {
                    let last_weekday = (first_weekday + length - 1) % 7;
                    mask |= 1 << (length - (last_weekday + 7 - weekday) % 7);
                }
            }
            mask & valid
        };
        match (self.day_of_month_restricted, self.day_of_week_restricted) {
            (true, true) => by_month_day() | by_weekday(),
            (true, false) => by_month_day(),
            (false, true) => by_weekday(),
            (false, false) => valid,
        }
    }

    pub(crate) fn month_matches(&self, month: u32) -> bool {
        self.months & (1 << month) != 0
    }

    pub(crate) fn date_matches(&self, date: NaiveDate) -> bool {
        self.month_matches(date.month())
            && self.day_mask(date.year(), date.month()) & (1 << date.day()) != 0
    }

    /// Whether the wall-clock minute of `local` matches (seconds are ignored).
    pub(crate) fn matches(&self, local: NaiveDateTime) -> bool {
        self.minutes & (1 << local.minute()) != 0
            && self.hours & (1 << local.hour()) != 0
            && self.date_matches(local.date())
    }

    /// The first matching wall-clock minute at or after `from` (taken at its minute;
    /// seconds are dropped), on a date no later than `last_date`.
    pub(crate) fn next_local_match(
        &self,
        from: NaiveDateTime,
        last_date: NaiveDate,
    ) -> Option<NaiveDateTime> {
        let mut date = from.date();
        let mut hour = from.hour();
        let mut minute = from.minute();
        loop {
            let day = self.next_matching_date(date, last_date)?;
            if day != date {
                date = day;
                hour = 0;
                minute = 0;
            }
            let Some(next_hour) = next_bit(u64::from(self.hours), hour) else {
                date = date.succ_opt()?;
                hour = 0;
                minute = 0;
                continue;
            };
            if next_hour != hour {
                hour = next_hour;
                minute = 0;
            }
            match next_bit(self.minutes, minute) {
                Some(next_minute) => return date.and_hms_opt(hour, next_minute, 0),
                None if hour < 23 => {
                    hour += 1;
                    minute = 0;
                }
                None => {
                    date = date.succ_opt()?;
                    hour = 0;
                    minute = 0;
                }
            }
        }
    }

    /// The first matching date at or after `from`, no later than `last_date`.
    fn next_matching_date(&self, from: NaiveDate, last_date: NaiveDate) -> Option<NaiveDate> {
        let mut year = from.year();
        let mut month = from.month();
        let mut day = from.day();
        loop {
            let month_start = NaiveDate::from_ymd_opt(year, month, 1)?;
            if month_start > last_date {
                return None;
            }
            if self.month_matches(month) {
                let mask = self.day_mask(year, month);
                if let Some(found) = next_bit(u64::from(mask), day) {
                    let date = NaiveDate::from_ymd_opt(year, month, found)?;
                    return (date <= last_date).then_some(date);
                }
            }
            day = 1;
            if month == 12 {
                month = 1;
                year = year.checked_add(1)?;
            } else {
                month += 1;
            }
        }
    }
}

/// The lowest set bit of `mask` at position `from` or above.
fn next_bit(mask: u64, from: u32) -> Option<u32> {
    if from >= 64 {
        return None;
    }
    let rest = mask >> from << from;
    (rest != 0).then(|| rest.trailing_zeros())
}

pub(crate) fn days_in_month(year: i32, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if is_leap_year(year) => 29,
        _ => 28,
    }
}

pub(crate) fn is_leap_year(year: i32) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_bit_finds_the_lowest_bit_at_or_above() {
        assert_eq!(next_bit(0b1010, 0), Some(1));
        assert_eq!(next_bit(0b1010, 2), Some(3));
        assert_eq!(next_bit(0b1010, 4), None);
        assert_eq!(next_bit(u64::MAX, 63), Some(63));
        assert_eq!(next_bit(u64::MAX, 64), None);
    }

    #[test]
    fn february_length_follows_the_gregorian_leap_rule() {
        assert_eq!(days_in_month(2024, 2), 29);
        assert_eq!(days_in_month(2025, 2), 28);
        assert_eq!(days_in_month(2000, 2), 29);
        assert_eq!(days_in_month(2100, 2), 28);
    }
}
