//! Recurring sends (`POST /v1/schedules`): an EventBridge Scheduler cron or rate
//! expression read in an IANA time zone, an optional start and end, and one message.
//! Pure: the expression and time zone rules (ingest refuses what Scheduler would), when a
//! schedule fires next (shown by the API, used by the dev stack's stand-in for
//! Scheduler), the schedule group of an app, and how one firing becomes one message.
//!
//! Each schedule's target is the send queue; its input is an [`Occurrence`] whose `at`
//! is Scheduler's `<aws.scheduler.scheduled-time>`, substituted per invocation. The
//! message of an occurrence has a key and id derived from (app, schedule, scheduled
//! time), so a Scheduler retry of the same occurrence is the same message: its record
//! is created with a conditional put and the dispatcher's claim sends it once.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::message::{Alternate, Channel, Content, FirstRecord, Job, Message, Status};

/// Scheduler substitutes this in the input with the occurrence's time (`2026-01-05T09:00:00Z`).
pub const SCHEDULED_TIME: &str = "<aws.scheduler.scheduled-time>";
/// Scheduler's own limit on how far in the past a recurring schedule's `StartDate` may be.
pub const START_SLACK_MS: i64 = 5 * 60_000;
/// The largest occurrence input: it becomes an SQS message body (256 KiB at most), and a
/// schedule's input is kept small on purpose (its whole rendered message).
pub const MAX_INPUT_BYTES: usize = 64 * 1024;

/// A recurring schedule expression, as Scheduler reads it.
#[derive(Debug, Clone)]
pub enum Expression {
    /// `cron(minutes hours day-of-month month day-of-week year)`.
    Cron(Box<croner::Cron>),
    /// `rate(n minutes|hours|days)`: every `secs` seconds from the start (or creation).
    Rate { secs: i64 },
}

/// Parses a Scheduler recurring expression; `Err` says what is wrong (a 422 on
/// `/expression`). One-time `at(...)` expressions are `send_at`'s, not a schedule's.
pub fn parse_expression(s: &str) -> Result<Expression, String> {
    if let Some(inner) = s.strip_prefix("rate(").and_then(|r| r.strip_suffix(')')) {
        return parse_rate(inner);
    }
    if let Some(inner) = s.strip_prefix("cron(").and_then(|r| r.strip_suffix(')')) {
        return parse_cron(inner);
    }
    Err("must be cron(minutes hours day-of-month month day-of-week year) or rate(value unit)".into())
}

fn parse_rate(inner: &str) -> Result<Expression, String> {
    let mut words = inner.split(' ');
    let (Some(n), Some(unit), None) = (words.next(), words.next(), words.next()) else {
        return Err("rate(value unit): one positive whole number and a unit, e.g. rate(5 minutes)".into());
    };
    let n: i64 = Some(n)
        .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|n| n.parse().ok())
        .filter(|n: &i64| *n > 0 && *n < 1_000_000)
        .ok_or("rate(value unit): the value must be a positive whole number")?;
    let (secs, singular) = match unit {
        "minute" => (60, true),
        "minutes" => (60, false),
        "hour" => (3600, true),
        "hours" => (3600, false),
        "day" => (86_400, true),
        "days" => (86_400, false),
        _ => return Err("rate(value unit): the unit is minute(s), hour(s) or day(s)".into()),
    };
    // Scheduler's rule: rate(1 hour), rate(5 hours); never rate(1 hours) or rate(5 hour).
    if singular != (n == 1) {
        return Err("rate(value unit): the unit is singular for 1 and plural otherwise".into());
    }
    Ok(Expression::Rate { secs: n * secs })
}

fn parse_cron(inner: &str) -> Result<Expression, String> {
    let fields: Vec<&str> = inner.split_whitespace().collect();
    if fields.len() != 6 {
        return Err("cron(...) has six fields: minutes hours day-of-month month day-of-week year".into());
    }
    // Scheduler's rule: one of the day fields is `?`, not both, not neither.
    if (fields[2] == "?") == (fields[4] == "?") {
        return Err("cron(...): exactly one of day-of-month and day-of-week must be ?".into());
    }
    // Scheduler numbers days of the week 1-7 from Sunday (Quartz's way), steps may start
    // anywhere (`0/15`) and the year is a sixth field: croner reads all three that way.
    let parser = croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Required)
        .year(croner::parser::Year::Required)
        .alternative_weekdays(true)
        .sloppy_ranges(true)
        .build();
    let cron = parser
        .parse(&format!("0 {}", fields.join(" ")))
        .map_err(|e| format!("cron(...): {e}"))?;
    Ok(Expression::Cron(Box::new(cron)))
}

/// An IANA time zone name, in its canonical spelling; `None` if there is no such zone.
pub fn time_zone(name: &str) -> Option<String> {
    if name.is_empty() || name.len() > 50 {
        return None;
    }
    let tz = jiff::tz::TimeZone::get(name).ok()?;
    Some(tz.iana_name().unwrap_or(name).to_string())
}

/// When a schedule fires: its expression in its time zone, between its start and end.
#[derive(Debug, Clone)]
pub struct Recurrence {
    pub expression: Expression,
    pub zone: jiff::tz::TimeZone,
    /// Unix ms; a rate schedule counts its intervals from here (else from `anchor`).
    pub start: Option<i64>,
    pub end: Option<i64>,
    /// When the schedule was created (unix ms): a rate schedule without a start counts
    /// from it.
    pub anchor: i64,
}

impl Recurrence {
    /// Reads a stored or declared schedule; `None` if any part is invalid.
    pub fn new(expression: &str, time_zone: &str, start: Option<i64>, end: Option<i64>, anchor: i64) -> Option<Self> {
        Some(Self {
            expression: parse_expression(expression).ok()?,
            zone: jiff::tz::TimeZone::get(time_zone).ok()?,
            start,
            end,
            anchor,
        })
    }

    /// The first firing strictly after `after_ms` (unix ms, to the second), if any before
    /// the end.
    pub fn next_after(&self, after_ms: i64) -> Option<i64> {
        // Nothing fires before the start: look from just before it.
        let from = match self.start {
            Some(start) => after_ms.max(start - 1),
            None => after_ms,
        };
        let next = match &self.expression {
            Expression::Rate { secs } => {
                let step = secs * 1000;
                let anchor = self.start.unwrap_or(self.anchor);
                let k = (from - anchor).div_euclid(step) + 1;
                anchor + k.max(1) * step
            }
            Expression::Cron(cron) => {
                let ts = jiff::Timestamp::from_millisecond(from).ok()?;
                let zoned = ts.to_zoned(self.zone.clone());
                let next = cron.find_next_occurrence(&zoned, false).ok()?;
                next.timestamp().as_millisecond()
            }
        };
        Some(next).filter(|n| self.end.is_none_or(|end| *n <= end))
    }
}

/// The schedule group holding `app`'s schedules: `{prefix}.{app}` (app keys have no
/// `.`, so no app's group is another's), or, where that would pass Scheduler's 64
/// characters, `{prefix}.h` and a hash of the app, exactly 64 long (never a plain name).
pub fn group_name(prefix: &str, app: &str) -> String {
    let plain = format!("{prefix}.{app}");
    if plain.len() < 64 {
        return plain;
    }
    let hash = hex::encode(Sha256::digest(app.as_bytes()));
    let mut hashed = format!("{prefix}.h{hash}");
    hashed.truncate(64);
    hashed
}

/// Whether `id` can name a schedule whose occurrences become messages: Scheduler's name
/// characters without `.`, which message keys never hold (see template.yaml's IAM).
pub fn valid_schedule_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The message one firing sends, as ingest rendered it at the schedule's creation (or
/// as an operator declared it in template.yaml, with inline content).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OccurrenceMessage {
    pub channel: Channel,
    pub to: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub content: Content,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alternates: Vec<Alternate>,
}

/// A schedule's input: one firing of schedule `schedule` of `app` at `at`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Occurrence {
    pub app: String,
    pub schedule: String,
    /// [`SCHEDULED_TIME`] in the schedule; the instant, RFC 3339 UTC, once substituted.
    pub at: String,
    pub message: OccurrenceMessage,
}

/// What the send queue carries: a message's job, or a schedule's firing.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Queued {
    Occurrence { occurrence: Box<Occurrence> },
    Job(Job),
}

impl Queued {
    pub fn parse(body: &str) -> Option<Queued> {
        serde_json::from_str(body).ok()
    }
}

/// Why an occurrence cannot become a message (nothing to retry: it is dropped, logged).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OccurrenceError {
    #[error("scheduled time {0:?} is not an RFC 3339 instant (was the input substituted?)")]
    Time(String),
    #[error("app or schedule id is not one a message key may hold")]
    Name,
}

impl Occurrence {
    /// The input of schedule `schedule`: Scheduler fills in `at` at each firing.
    pub fn input(app: &str, schedule: &str, message: OccurrenceMessage) -> Result<String, serde_json::Error> {
        serde_json::to_string(&serde_json::json!({
            "occurrence": Occurrence {
                app: app.to_string(),
                schedule: schedule.to_string(),
                at: SCHEDULED_TIME.to_string(),
                message,
            }
        }))
    }

    /// The occurrence's instant (unix ms).
    pub fn scheduled_ms(&self) -> Result<i64, OccurrenceError> {
        crate::schedule::parse_send_at(&self.at)
            .ok_or_else(|| OccurrenceError::Time(self.at.chars().take(40).collect()))
    }

    /// The message record this occurrence creates, `accepted` at `now`: key
    /// `{app}_ro_{schedule}_{unix s}` and a ULID whose time is the occurrence's and whose
    /// randomness is a hash of (app, schedule, time), so every delivery of the same
    /// occurrence (Scheduler retries, at least once) is the same record.
    pub fn message(&self, now: i64, retention_days: i64) -> Result<Message, OccurrenceError> {
        let at = self.scheduled_ms()?;
        if !crate::auth::valid_app_key(&self.app) || !valid_schedule_id(&self.schedule) {
            return Err(OccurrenceError::Name);
        }
        let m = &self.message;
        Ok(Message {
            template: m.template.clone(),
            body_hash: hex::encode(Sha256::digest(self.schedule.as_bytes())),
            key: m.key.clone().or_else(|| m.template.clone()),
            alternates: m.alternates.clone(),
            recurring: Some(self.schedule.clone()),
            ..Message::first(FirstRecord {
                pk: format!("{}_ro_{}_{}", self.app, self.schedule, at.div_euclid(1000)),
                id: occurrence_id(&self.app, &self.schedule, at),
                app: self.app.clone(),
                channel: m.channel,
                to: m.to.clone(),
                content: m.content.clone(),
                status: Status::Accepted,
                now,
                expires_at: now / 1000 + retention_days.max(1) * 86_400,
                note: Some(format!("occurrence of schedule {} at {}", self.schedule, self.at)),
            })
        })
    }
}

/// The message id of schedule `schedule`'s occurrence at `at_ms` (a ULID: time part the
/// occurrence's, random part from a hash).
pub fn occurrence_id(app: &str, schedule: &str, at_ms: i64) -> String {
    let digest = Sha256::digest(format!("{app}\n{schedule}\n{at_ms}").as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    let random = u128::from_be_bytes(bytes) & ((1u128 << 80) - 1);
    ulid::Ulid::from_parts(at_ms.max(0) as u64, random).to_string()
}

/// The stored record of a recurring schedule (one item in the messages table, beside
/// the messages; `schedule_app` + `schedule_id` index it for reads and lists). It holds
/// no recipient or content: those are in the schedule's input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleRecord {
    /// `{app}_ri_{sha256(Idempotency-Key)}`: the create request's idempotency record.
    pub pk: String,
    pub schedule_app: String,
    pub schedule_id: String,
    /// The Scheduler schedule group it is in.
    pub schedule_group: String,
    pub expression: String,
    pub timezone: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<i64>,
    pub channel: Channel,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    pub body_hash: String,
    pub created_at: i64,
    /// Set when deleted; the record then expires (`expires_at`) after the retention.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
}

impl ScheduleRecord {
    pub fn recurrence(&self) -> Option<Recurrence> {
        Recurrence::new(&self.expression, &self.timezone, self.start, self.end, self.created_at)
    }

    /// The public view (no recipient, no content), with its next firing after `now`.
    pub fn view(&self, now: i64) -> serde_json::Value {
        let rfc = crate::clock::rfc3339;
        let next = match self.deleted_at {
            Some(_) => None,
            None => self.recurrence().and_then(|r| r.next_after(now)),
        };
        serde_json::json!({
            "id": self.schedule_id,
            "status": if self.deleted_at.is_some() { "deleted" } else { "enabled" },
            "expression": self.expression,
            "timezone": self.timezone,
            "start": self.start.map(rfc),
            "end": self.end.map(rfc),
            "channel": self.channel,
            "template": self.template,
            "next": next.map(rfc),
            "created_at": rfc(self.created_at),
            "deleted_at": self.deleted_at.map(rfc),
        })
    }
}

/// A Scheduler context value as it substitutes it: `<aws.scheduler.scheduled-time>` is
/// the instant in UTC to the second (`2022-03-22T18:59:43Z`).
pub fn scheduled_time(at_ms: i64) -> String {
    let t =
        time::OffsetDateTime::from_unix_timestamp(at_ms.div_euclid(1000)).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const JAN_1: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z, a Thursday

    #[test]
    fn expressions_are_read_as_scheduler_reads_them() {
        let ok = [
            "rate(1 minute)",
            "rate(5 minutes)",
            "rate(1 day)",
            "rate(12 hours)",
            "cron(0 9 ? * MON *)",
            "cron(0 9 ? * 2 *)",
            "cron(0/15 * * * ? *)",
            "cron(0 18 ? * MON-FRI *)",
            "cron(0 10 L * ? 2026-2030)",
            "cron(0 8 1 * ? *)",
        ];
        for e in ok {
            assert!(parse_expression(e).is_ok(), "{e}: {:?}", parse_expression(e).err());
        }
        let bad = [
            "",
            "at(2026-01-01T00:00:00)",
            "rate(0 minutes)",
            "rate(-1 minutes)",
            "rate(1 minutes)",
            "rate(5 minute)",
            "rate(5 weeks)",
            "rate(5  minutes)",
            "rate(1.5 hours)",
            "cron(0 9 * * ? )",
            "cron(0 9 * * MON *)",
            "cron(0 9 ? * ? *)",
            "cron(61 9 ? * MON *)",
            "cron(0 25 ? * MON *)",
            "cron(0 9 ? * MON)",
            "cron(0 9 ? * FOO *)",
            "CRON(0 9 ? * MON *)",
        ];
        for e in bad {
            assert!(parse_expression(e).is_err(), "{e} should be refused");
        }
    }

    #[test]
    fn time_zones_are_iana_names() {
        assert_eq!(time_zone("Asia/Shanghai").as_deref(), Some("Asia/Shanghai"));
        assert_eq!(time_zone("UTC").as_deref(), Some("UTC"));
        assert_eq!(time_zone("America/New_York").as_deref(), Some("America/New_York"));
        for bad in ["", "Mars/Olympus", "+08:00", "../../etc/passwd", "Asia/Shanghai\n"] {
            assert_eq!(time_zone(bad), None, "{bad:?}");
        }
    }

    fn at(rfc: &str) -> i64 {
        crate::schedule::parse_send_at(rfc).unwrap()
    }

    #[test]
    fn cron_fires_in_its_time_zone_and_weekdays_count_from_sunday() {
        // Mondays 09:00 in Shanghai (UTC+8) are Mondays 01:00 UTC.
        let r = Recurrence::new("cron(0 9 ? * MON *)", "Asia/Shanghai", None, None, JAN_1).unwrap();
        let first = r.next_after(JAN_1).unwrap();
        assert_eq!(first, at("2026-01-05T01:00:00Z"));
        assert_eq!(r.next_after(first).unwrap(), at("2026-01-12T01:00:00Z"));
        // Day 2 is Monday in Scheduler's numbering.
        let numbered = Recurrence::new("cron(0 9 ? * 2 *)", "Asia/Shanghai", None, None, JAN_1).unwrap();
        assert_eq!(numbered.next_after(JAN_1), Some(first));
        // New York observes daylight saving time: 09:00 local moves in UTC.
        let ny = Recurrence::new("cron(0 9 * * ? *)", "America/New_York", None, None, JAN_1).unwrap();
        assert_eq!(
            ny.next_after(at("2026-01-10T00:00:00Z")),
            Some(at("2026-01-10T14:00:00Z"))
        );
        assert_eq!(
            ny.next_after(at("2026-07-10T00:00:00Z")),
            Some(at("2026-07-10T13:00:00Z"))
        );
    }

    #[test]
    fn rate_counts_from_the_start_or_creation_and_stops_at_the_end() {
        let hour = 3_600_000;
        let r = Recurrence::new("rate(1 hour)", "UTC", None, Some(JAN_1 + 2 * hour), JAN_1).unwrap();
        assert_eq!(r.next_after(JAN_1), Some(JAN_1 + hour));
        assert_eq!(r.next_after(JAN_1 + hour), Some(JAN_1 + 2 * hour));
        assert_eq!(r.next_after(JAN_1 + 2 * hour), None, "past the end");
        let started = Recurrence::new("rate(30 minutes)", "UTC", Some(JAN_1 + 10 * hour), None, JAN_1).unwrap();
        assert_eq!(started.next_after(JAN_1), Some(JAN_1 + 10 * hour + hour / 2));
        let cron = Recurrence::new("cron(0 * * * ? *)", "UTC", Some(JAN_1 + 5 * hour), None, JAN_1).unwrap();
        assert_eq!(cron.next_after(JAN_1), Some(JAN_1 + 5 * hour), "on the start");
    }

    #[test]
    fn groups_are_one_per_app_and_fit_schedulers_limit() {
        assert_eq!(group_name("pushgate", "shop"), "pushgate.shop");
        let long = "a".repeat(64);
        let g = group_name("pushgate", &long);
        assert_eq!(g.len(), 64);
        assert!(g.starts_with("pushgate.h"));
        assert_ne!(g, group_name("pushgate", &"b".repeat(64)));
    }

    fn occurrence(at: &str) -> Occurrence {
        Occurrence {
            app: "shop".into(),
            schedule: "01KBG0000000000000000000AA".into(),
            at: at.into(),
            message: OccurrenceMessage {
                channel: Channel::Webhook,
                to: "https://hooks.example.com/x".into(),
                template: None,
                key: None,
                content: Content {
                    text: Some("digest".into()),
                    ..Default::default()
                },
                alternates: vec![],
            },
        }
    }

    #[test]
    fn one_occurrence_is_one_message_whoever_delivers_it() {
        let a = occurrence("2026-01-05T01:00:00Z").message(JAN_1, 7).unwrap();
        let again = occurrence("2026-01-05T01:00:00Z").message(JAN_1 + 60_000, 7).unwrap();
        let next = occurrence("2026-01-12T01:00:00Z").message(JAN_1, 7).unwrap();
        assert_eq!((a.pk.as_str(), a.id.as_str()), (again.pk.as_str(), again.id.as_str()));
        assert_ne!(a.id, next.id);
        assert_ne!(a.pk, next.pk);
        assert_eq!(a.pk, "shop_ro_01KBG0000000000000000000AA_1767574800");
        assert_eq!(a.id.len(), 26);
        assert!(ulid::Ulid::from_string(&a.id).is_ok());
        assert_eq!(a.recurring.as_deref(), Some("01KBG0000000000000000000AA"));
        assert_eq!(a.status, Status::Accepted);
        // An input Scheduler did not substitute, or names a message key cannot hold.
        assert!(occurrence(SCHEDULED_TIME).message(JAN_1, 7).is_err());
        let mut dotted = occurrence("2026-01-05T01:00:00Z");
        dotted.schedule = "weekly.digest".into();
        assert_eq!(dotted.message(JAN_1, 7).unwrap_err(), OccurrenceError::Name);
    }

    #[test]
    fn the_input_is_an_occurrence_once_substituted_and_jobs_still_read_as_jobs() {
        let input = Occurrence::input("shop", "S1", occurrence("x").message).unwrap();
        assert!(input.contains(SCHEDULED_TIME));
        let fired = input.replace(SCHEDULED_TIME, &scheduled_time(JAN_1));
        match Queued::parse(&fired) {
            Some(Queued::Occurrence { occurrence }) => assert_eq!(occurrence.scheduled_ms(), Ok(JAN_1)),
            other => panic!("{other:?}"),
        }
        match Queued::parse(r#"{"pk":"a_s_x","id":"ID","app":"a"}"#) {
            Some(Queued::Job(job)) => assert_eq!(job.id, "ID"),
            other => panic!("{other:?}"),
        }
        assert_eq!(Queued::parse("{}"), None);
        assert_eq!(scheduled_time(JAN_1 + 999), "2026-01-01T00:00:00Z");
    }
}
