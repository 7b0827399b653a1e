//! Cron schedules as ACK's CronHPA reads them: six fields, seconds first
//! (`sec min hour day-of-month month day-of-week`), each `*`, `?` (day fields), a value, a range
//! `a-b`, a step `*/n` / `a-b/n` / `a/n`, or a comma list of those; months and weekdays also by
//! their English three-letter names. When both day fields are restricted a day matching either
//! one matches (as in classic cron). Times are read in a named time zone.

use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveDateTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CronError {
    #[error("has {0} fields: a schedule has six, seconds first (\"0 30 8 * * *\" is 08:30:00 every day)")]
    FieldCount(usize),
    #[error("field {field} ({name}): {value:?} is not a value, range, step or list within {min}-{max}")]
    Field { field: usize, name: &'static str, value: String, min: u32, max: u32 },
    #[error("{0:?} is not an IANA time zone (like \"Asia/Shanghai\" or \"UTC\")")]
    TimeZone(String),
}

const FIELDS: [(&str, u32, u32); 6] = [("seconds", 0, 59), ("minutes", 0, 59), ("hours", 0, 23), ("day of month", 1, 31), ("month", 1, 12), ("day of week", 0, 7)];
const MONTHS: [&str; 12] = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"];
const DAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

/// A parsed schedule: each field a bit set of the values it allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    fields: [u64; 6],
    dom_any: bool,
    dow_any: bool,
}

fn value(field: usize, s: &str) -> Option<u32> {
    let names: &[&str] = match field {
        4 => &MONTHS,
        5 => &DAYS,
        _ => &[],
    };
    if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
        return Some(i as u32 + if field == 4 { 1 } else { 0 });
    }
    s.parse().ok()
}

fn parse_field(field: usize, text: &str) -> Option<u64> {
    let (_, min, max) = FIELDS[field];
    let mut bits = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (r, s.parse::<u32>().ok().filter(|&s| s > 0)?),
            None => (part, 1),
        };
        let (lo, hi) = if range == "*" || (range == "?" && field >= 3 && field != 4) {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            (value(field, a)?, value(field, b)?)
        } else {
            let v = value(field, range)?;
            // "a/n" runs from a to the field's end.
            (v, if part.contains('/') { max } else { v })
        };
        if lo < min || hi > max || lo > hi {
            return None;
        }
        let mut v = lo;
        while v <= hi {
            bits |= 1 << v;
            v += step;
        }
    }
    // Day of week 7 is Sunday too.
    if field == 5 && bits & (1 << 7) != 0 {
        bits = (bits & !(1 << 7)) | 1;
    }
    Some(bits)
}

impl Schedule {
    pub fn parse(text: &str) -> Result<Schedule, CronError> {
        let parts: Vec<&str> = text.split_whitespace().collect();
        if parts.len() != 6 {
            return Err(CronError::FieldCount(parts.len()));
        }
        let mut fields = [0u64; 6];
        for (i, p) in parts.iter().enumerate() {
            let (name, min, max) = FIELDS[i];
            fields[i] = parse_field(i, p).filter(|&b| b != 0).ok_or_else(|| CronError::Field { field: i + 1, name, value: p.to_string(), min, max })?;
        }
        let any = |p: &str| p == "*" || p == "?";
        Ok(Schedule { fields, dom_any: any(parts[3]), dow_any: any(parts[5]) })
    }

    fn has(&self, field: usize, v: u32) -> bool {
        self.fields[field] & (1 << v) != 0
    }

    /// Whether a (local) day is one of the schedule's days.
    pub fn matches_day(&self, d: NaiveDate) -> bool {
        if !self.has(4, d.month()) {
            return false;
        }
        let dom = self.has(3, d.day());
        let dow = self.has(5, d.weekday().num_days_from_sunday());
        match (self.dom_any, self.dow_any) {
            (false, false) => dom || dow,
            _ => dom && dow,
        }
    }

    /// The first time after `after` the schedule names, read in `tz` (a local time a DST change
    /// skips is skipped; one it repeats fires at its first occurrence). None within 5 years.
    pub fn next_after(&self, after: DateTime<Utc>, tz: &Tz) -> Option<DateTime<Utc>> {
        let start = after.with_timezone(tz).naive_local().with_nanosecond(0)? + Duration::seconds(1);
        let end = start + Duration::days(366 * 5);
        let mut t = start;
        while t < end {
            if !self.matches_day(t.date()) {
                t = NaiveDateTime::from(t.date().succ_opt()?);
                continue;
            }
            if !self.has(2, t.hour()) {
                t = t.with_minute(0)?.with_second(0)? + Duration::hours(1);
                continue;
            }
            if !self.has(1, t.minute()) {
                t = t.with_second(0)? + Duration::minutes(1);
                continue;
            }
            if !self.has(0, t.second()) {
                t += Duration::seconds(1);
                continue;
            }
            if let Some(at) = tz.from_local_datetime(&t).earliest().map(|l| l.with_timezone(&Utc))
                && at > after
            {
                return Some(at);
            }
            t += Duration::seconds(1);
        }
        None
    }
}

/// A time zone by IANA name; "" is UTC.
pub fn time_zone(name: &str) -> Result<Tz, CronError> {
    if name.is_empty() {
        return Ok(Tz::UTC);
    }
    name.parse().map_err(|_| CronError::TimeZone(name.to_string()))
}

/// The next run of a job after `after_ms` (Unix ms) on a day none of `excluded` names.
pub fn next_run(schedule: &Schedule, excluded: &[Schedule], tz: &Tz, after_ms: u64) -> Option<u64> {
    let mut after = DateTime::<Utc>::from_timestamp_millis(i64::try_from(after_ms).ok()?)?;
    for _ in 0..10_000 {
        let at = schedule.next_after(after, tz)?;
        let day = at.with_timezone(tz).date_naive();
        if !excluded.iter().any(|e| e.matches_day(day)) {
            return u64::try_from(at.timestamp_millis()).ok();
        }
        after = at;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn next(expr: &str, tz: &str, after: &str) -> String {
        Schedule::parse(expr).unwrap().next_after(utc(after), &time_zone(tz).unwrap()).unwrap().to_rfc3339()
    }

    #[test]
    fn seconds_come_first() {
        assert_eq!(next("30 */1 * * * *", "", "2026-12-07T10:00:00Z"), "2026-12-07T10:00:30+00:00");
        assert_eq!(next("30 */1 * * * *", "", "2026-12-07T10:00:30Z"), "2026-12-07T10:01:30+00:00");
        assert_eq!(next("*/5 * * * * *", "", "2026-12-07T10:00:03.5Z"), "2026-12-07T10:00:05+00:00");
    }

    #[test]
    fn ranges_lists_steps_and_names() {
        assert_eq!(next("0 0 9-17/4 * * MON-FRI", "", "2026-12-05T00:00:00Z"), "2026-12-07T09:00:00+00:00"); // Saturday → Monday
        assert_eq!(next("0 15,45 8 * * *", "", "2026-12-07T08:20:00Z"), "2026-12-07T08:45:00+00:00");
        assert_eq!(next("0 0 0 1 JAN ?", "", "2026-12-07T00:00:00Z"), "2027-01-01T00:00:00+00:00");
        assert_eq!(next("0 0 12 * * 7", "", "2026-12-07T00:00:00Z"), "2026-12-13T12:00:00+00:00"); // 7 is Sunday
    }

    #[test]
    fn both_day_fields_restricted_match_either() {
        // The 15th or a Monday: Monday 2026-12-07 comes first.
        assert_eq!(next("0 0 0 15 * 1", "", "2026-12-06T01:00:00Z"), "2026-12-07T00:00:00+00:00");
        assert_eq!(next("0 0 0 15 * 1", "", "2026-12-14T01:00:00Z"), "2026-12-15T00:00:00+00:00");
    }

    #[test]
    fn times_are_read_in_the_time_zone() {
        // 08:30 in Shanghai (UTC+8) is 00:30 UTC.
        assert_eq!(next("0 30 8 * * *", "Asia/Shanghai", "2026-12-07T01:00:00Z"), "2026-12-08T00:30:00+00:00");
        // 02:30 does not exist in Berlin on 2027-03-28 (clocks go 02:00 → 03:00): that day is skipped.
        assert_eq!(next("0 30 2 * * *", "Europe/Berlin", "2027-03-27T02:00:00Z"), "2027-03-29T00:30:00+00:00");
    }

    #[test]
    fn excluded_days_are_skipped() {
        let s = Schedule::parse("0 0 8 * * *").unwrap();
        let friday = Schedule::parse("* * * * * 5").unwrap();
        let dec_8 = Schedule::parse("* * * 8 12 *").unwrap();
        let at = next_run(&s, &[friday, dec_8], &Tz::UTC, utc("2026-12-07T09:00:00Z").timestamp_millis() as u64).unwrap();
        assert_eq!(DateTime::<Utc>::from_timestamp_millis(at as i64).unwrap().to_rfc3339(), "2026-12-09T08:00:00+00:00");
    }

    #[test]
    fn bad_schedules_say_which_field() {
        assert_eq!(Schedule::parse("0 30 8 * *"), Err(CronError::FieldCount(5)));
        assert!(matches!(Schedule::parse("0 61 8 * * *"), Err(CronError::Field { field: 2, .. })));
        assert!(matches!(Schedule::parse("0 0 8 * FOO *"), Err(CronError::Field { field: 5, .. })));
        assert!(matches!(Schedule::parse("0 0 8 * * */0"), Err(CronError::Field { field: 6, .. })));
        assert!(matches!(Schedule::parse("? 0 8 * * *"), Err(CronError::Field { field: 1, .. })));
        assert_eq!(time_zone("Mars/Base"), Err(CronError::TimeZone("Mars/Base".into())));
    }
}
