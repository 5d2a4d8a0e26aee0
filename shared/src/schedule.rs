//! When a message with a `send_at` is queued: at once, on a delayed SQS job (up to 15
//! minutes, SQS's limit), or by an EventBridge Scheduler one-time schedule that sends the
//! job to the queue itself (no Lambda on the path). Pure: the caller gives the time.

/// SQS's longest `DelaySeconds`.
pub const MAX_DELAY_SECS: i64 = 900;

/// How a message is queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// Queue the job now.
    Now,
    /// Queue the job now, hidden for this many seconds (1..=900).
    Delay(u32),
    /// Create a one-time schedule that queues the job at this unix-ms instant.
    At(i64),
}

/// Why a `send_at` is refused (a 422 naming `/send_at`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("is in the past (more than {0} s ago)")]
    Past(i64),
    #[error("is more than {0} days ahead")]
    BeyondHorizon(i64),
}

/// The limits of `send_at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulePolicy {
    /// A `send_at` up to this far in the past (clock skew) means "now".
    pub skew_secs: i64,
    /// The furthest ahead a message may be scheduled.
    pub horizon_days: i64,
}

/// How to queue a message to be sent at `send_at` (unix ms; `None`: now), at `now_ms`.
pub fn when(send_at: Option<i64>, now_ms: i64, policy: SchedulePolicy) -> Result<When, ScheduleError> {
    let Some(at) = send_at else { return Ok(When::Now) };
    let ahead_ms = at.saturating_sub(now_ms);
    if ahead_ms < -policy.skew_secs.saturating_mul(1000) {
        return Err(ScheduleError::Past(policy.skew_secs));
    }
    if ahead_ms > policy.horizon_days.saturating_mul(86_400_000) {
        return Err(ScheduleError::BeyondHorizon(policy.horizon_days));
    }
    // Whole seconds, rounded up: never early.
    let secs = ahead_ms.saturating_add(999) / 1000;
    Ok(match secs {
        s if s <= 0 => When::Now,
        s if s <= MAX_DELAY_SECS => When::Delay(s as u32),
        _ => When::At(at),
    })
}

/// Scheduler's one-time expression for `at_ms`: `at(yyyy-mm-ddThh:mm:ss)`, read in UTC
/// (the schedule's `ScheduleExpressionTimezone`). Seconds are rounded up: never early.
pub fn at_expression(at_ms: i64) -> String {
    let secs = at_ms.saturating_add(999).div_euclid(1000);
    let t = time::OffsetDateTime::from_unix_timestamp(secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "at({:04}-{:02}-{:02}T{:02}:{:02}:{:02})",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// The instant of an `at(...)` expression (UTC), if it is one.
pub fn parse_at_expression(expr: &str) -> Option<i64> {
    let inner = expr.strip_prefix("at(")?.strip_suffix(')')?;
    let t = time::PrimitiveDateTime::parse(
        inner,
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]"),
    )
    .ok()?;
    Some(t.assume_utc().unix_timestamp().saturating_mul(1000))
}

/// A `send_at` as clients give it: RFC 3339 with an offset, to unix ms.
pub fn parse_send_at(s: &str) -> Option<i64> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
    const P: SchedulePolicy = SchedulePolicy {
        skew_secs: 60,
        horizon_days: 365,
    };

    #[test]
    fn send_at_picks_now_a_delay_or_a_schedule() {
        let rows: &[(Option<i64>, Result<When, ScheduleError>)] = &[
            (None, Ok(When::Now)),
            (Some(NOW), Ok(When::Now)),
            (Some(NOW - 59_000), Ok(When::Now)),
            (Some(NOW - 61_000), Err(ScheduleError::Past(60))),
            (Some(NOW + 1), Ok(When::Delay(1))),
            (Some(NOW + 1_500), Ok(When::Delay(2))),
            (Some(NOW + 900_000), Ok(When::Delay(900))),
            (Some(NOW + 900_001), Ok(When::At(NOW + 900_001))),
            (Some(NOW + 365 * 86_400_000), Ok(When::At(NOW + 365 * 86_400_000))),
            (Some(NOW + 365 * 86_400_000 + 1), Err(ScheduleError::BeyondHorizon(365))),
            (Some(i64::MIN), Err(ScheduleError::Past(60))),
            (Some(i64::MAX), Err(ScheduleError::BeyondHorizon(365))),
        ];
        for (send_at, want) in rows {
            assert_eq!(when(*send_at, NOW, P), *want, "{send_at:?}");
        }
    }

    #[test]
    fn at_expressions_round_up_and_read_back() {
        assert_eq!(at_expression(NOW), "at(2026-01-01T00:00:00)");
        assert_eq!(at_expression(NOW + 1), "at(2026-01-01T00:00:01)");
        assert_eq!(parse_at_expression("at(2026-01-01T00:00:01)"), Some(NOW + 1000));
        assert_eq!(parse_at_expression("rate(5 minutes)"), None);
        assert_eq!(parse_at_expression("at(2026-13-01T00:00:00)"), None);
    }

    #[test]
    fn send_at_needs_an_offset() {
        assert_eq!(parse_send_at("2026-01-01T08:00:00+08:00"), Some(NOW));
        assert_eq!(parse_send_at("2026-01-01T00:00:00Z"), Some(NOW));
        assert_eq!(parse_send_at("2026-01-01T00:00:00"), None);
        assert_eq!(parse_send_at("tomorrow"), None);
    }
}
