//! The local stand-in for EventBridge Scheduler's delivery: moto stores schedules but
//! never fires them, so the dev stack (and tests, on a clock they choose) fire the due
//! ones exactly as Scheduler delivers them: the schedule's own input, with Scheduler's
//! context attributes substituted (`<aws.scheduler.scheduled-time>`, `…execution-id>`,
//! `…schedule-arn>`, `…attempt-number>`), sent to its own target queue, at least once.
//!
//! - One-time (`at(...)`) schedules of the one-time group: sent when due, then deleted as
//!   `ActionAfterCompletion: DELETE` says (a crash between the two sends it again, which
//!   the dispatcher's claim makes harmless).
//! - Recurring (`cron(...)`, `rate(...)`) schedules of the groups `{prefix}.*` (and of
//!   the one-time group, where operators may declare them): each occurrence from the
//!   schedule's creation (or start) up to the clock, in its time zone, up to its end,
//!   once each per stand-in (it remembers the last occurrence it fired per schedule);
//!   [`LocalScheduler::deliver`] sends one occurrence again, as a Scheduler retry would.
//!   A rate schedule's occurrences fall every interval after its start (or creation).
//!   Disabled schedules do not fire.

use std::collections::HashMap;
use std::sync::Mutex;

use aws_sdk_scheduler::operation::get_schedule::GetScheduleOutput;
use aws_sdk_scheduler::types::{ActionAfterCompletion, ScheduleState};
use pushgate_shared::recurring::{scheduled_time, Recurrence};

use crate::BoxError;

/// The most occurrences of one schedule fired in one call (a clock moved far ahead).
const MAX_PER_CALL: usize = 1000;

/// Fires the due schedules of one stack's groups.
pub struct LocalScheduler {
    scheduler: aws_sdk_scheduler::Client,
    sqs: aws_sdk_sqs::Client,
    group: String,
    recurring_prefix: Option<String>,
    /// Per schedule (`group/name`), the last occurrence fired (unix ms).
    fired: Mutex<HashMap<String, i64>>,
}

fn aws<E: std::error::Error + 'static, R: std::fmt::Debug>(e: aws_sdk_scheduler::error::SdkError<E, R>) -> BoxError {
    aws_sdk_scheduler::error::DisplayErrorContext(e).to_string().into()
}

/// What Scheduler knows of one invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation<'a> {
    pub schedule_arn: &'a str,
    /// Unix ms.
    pub scheduled_at: i64,
    pub execution_id: &'a str,
    pub attempt: u32,
}

/// The input as Scheduler hands it to the target for `invocation`: each context
/// attribute keyword replaced by its value.
pub fn substitute(input: &str, invocation: &Invocation<'_>) -> String {
    input
        .replace("<aws.scheduler.schedule-arn>", invocation.schedule_arn)
        .replace(
            "<aws.scheduler.scheduled-time>",
            &scheduled_time(invocation.scheduled_at),
        )
        .replace("<aws.scheduler.execution-id>", invocation.execution_id)
        .replace("<aws.scheduler.attempt-number>", &invocation.attempt.to_string())
}

impl LocalScheduler {
    /// Fires the one-time schedules of `group` (and any recurring ones declared there).
    pub fn new(sdk: &aws_config::SdkConfig, group: impl Into<String>) -> Self {
        Self {
            scheduler: aws_sdk_scheduler::Client::new(sdk),
            sqs: aws_sdk_sqs::Client::new(sdk),
            group: group.into(),
            recurring_prefix: None,
            fired: Mutex::new(HashMap::new()),
        }
    }

    /// Also fires the recurring schedules of the groups `{prefix}.*` (one per app).
    pub fn with_recurring(mut self, prefix: impl Into<String>) -> Self {
        self.recurring_prefix = Some(prefix.into());
        self
    }

    async fn groups(&self) -> Result<Vec<String>, BoxError> {
        let mut groups = vec![self.group.clone()];
        let Some(prefix) = &self.recurring_prefix else {
            return Ok(groups);
        };
        let mut token = None;
        loop {
            let page = self
                .scheduler
                .list_schedule_groups()
                .name_prefix(format!("{prefix}."))
                .set_next_token(token)
                .send()
                .await
                .map_err(aws)?;
            groups.extend(page.schedule_groups().iter().filter_map(|g| g.name().map(String::from)));
            match page.next_token {
                Some(t) if !t.is_empty() => token = Some(t),
                _ => return Ok(groups),
            }
        }
    }

    async fn names(&self, group: &str) -> Result<Vec<String>, BoxError> {
        let mut names = Vec::new();
        let mut token = None;
        loop {
            let page = self
                .scheduler
                .list_schedules()
                .group_name(group)
                .set_next_token(token)
                .send()
                .await
                .map_err(aws)?;
            names.extend(page.schedules().iter().filter_map(|s| s.name().map(String::from)));
            match page.next_token {
                Some(t) if !t.is_empty() => token = Some(t),
                _ => return Ok(names),
            }
        }
    }

    /// Delivers every occurrence due at `now_ms` of every schedule of the stack's
    /// groups; returns how many it delivered.
    pub async fn fire_due(&self, now_ms: i64) -> Result<usize, BoxError> {
        let mut fired = 0;
        for group in self.groups().await? {
            for name in self.names(&group).await? {
                let s = self
                    .scheduler
                    .get_schedule()
                    .name(&name)
                    .group_name(&group)
                    .send()
                    .await
                    .map_err(aws)?;
                if s.state() == Some(&ScheduleState::Disabled) {
                    continue;
                }
                let expression = s.schedule_expression().unwrap_or_default();
                if let Some(at) = pushgate_shared::schedule::parse_at_expression(expression) {
                    if at > now_ms {
                        continue;
                    }
                    self.send(&s, at, 1).await?;
                    fired += 1;
                    if s.action_after_completion() == Some(&ActionAfterCompletion::Delete) {
                        self.scheduler
                            .delete_schedule()
                            .name(&name)
                            .group_name(&group)
                            .send()
                            .await
                            .map_err(aws)?;
                    }
                    continue;
                }
                fired += self.fire_recurring(&group, &name, &s, now_ms).await?;
            }
        }
        Ok(fired)
    }

    async fn fire_recurring(
        &self,
        group: &str,
        name: &str,
        s: &GetScheduleOutput,
        now_ms: i64,
    ) -> Result<usize, BoxError> {
        let created = s.creation_date().map(|d| d.to_millis()).transpose()?.unwrap_or(now_ms);
        let millis = |d: Option<&aws_sdk_scheduler::primitives::DateTime>| d.and_then(|d| d.to_millis().ok());
        let Some(recurrence) = Recurrence::new(
            s.schedule_expression().unwrap_or_default(),
            s.schedule_expression_timezone().unwrap_or("UTC"),
            millis(s.start_date()),
            millis(s.end_date()),
            created,
        ) else {
            tracing::warn!(
                group,
                name,
                "schedule expression or time zone not understood; not fired"
            );
            return Ok(0);
        };
        let key = format!("{group}/{name}");
        let mut cursor = self
            .fired
            .lock()
            .ok()
            .and_then(|f| f.get(&key).copied())
            .unwrap_or(created);
        let mut fired = 0;
        while fired < MAX_PER_CALL {
            let Some(next) = recurrence.next_after(cursor).filter(|n| *n <= now_ms) else {
                break;
            };
            self.send(s, next, 1).await?;
            cursor = next;
            fired += 1;
            if let Ok(mut f) = self.fired.lock() {
                f.insert(key.clone(), cursor);
            }
        }
        Ok(fired)
    }

    /// Delivers schedule `name`'s occurrence at `scheduled_at` (unix ms) once more, as
    /// Scheduler does when it retries a delivery (`attempt` 2 and on).
    pub async fn deliver(&self, group: &str, name: &str, scheduled_at: i64, attempt: u32) -> Result<(), BoxError> {
        let s = self
            .scheduler
            .get_schedule()
            .name(name)
            .group_name(group)
            .send()
            .await
            .map_err(aws)?;
        self.send(&s, scheduled_at, attempt).await
    }

    async fn send(&self, s: &GetScheduleOutput, scheduled_at: i64, attempt: u32) -> Result<(), BoxError> {
        let Some(target) = s.target() else { return Ok(()) };
        let queue = target.arn().rsplit(':').next().unwrap_or_default();
        let url = self
            .sqs
            .get_queue_url()
            .queue_name(queue)
            .send()
            .await
            .map_err(|e| aws_sdk_sqs::error::DisplayErrorContext(e).to_string())?
            .queue_url
            .ok_or("queue without URL")?;
        let execution_id = ulid::Ulid::new().to_string().to_lowercase();
        let body = substitute(
            target.input().unwrap_or_default(),
            &Invocation {
                schedule_arn: s.arn().unwrap_or_default(),
                scheduled_at,
                execution_id: &execution_id[10..],
                attempt,
            },
        );
        self.sqs
            .send_message()
            .queue_url(url)
            .message_body(body)
            .send()
            .await
            .map_err(|e| aws_sdk_sqs::error::DisplayErrorContext(e).to_string())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_attributes_are_substituted_as_scheduler_does() {
        let input = r#"{"at":"<aws.scheduler.scheduled-time>","x":"<aws.scheduler.execution-id>/<aws.scheduler.attempt-number>","arn":"<aws.scheduler.schedule-arn>","other":"<aws.scheduler.unknown>"}"#;
        let out = substitute(
            input,
            &Invocation {
                schedule_arn: "arn:aws:scheduler:us-east-1:1:schedule/g/n",
                scheduled_at: 1_767_225_600_000,
                execution_id: "d32c5kddcf5bb8c3",
                attempt: 2,
            },
        );
        assert_eq!(
            out,
            r#"{"at":"2026-01-01T00:00:00Z","x":"d32c5kddcf5bb8c3/2","arn":"arn:aws:scheduler:us-east-1:1:schedule/g/n","other":"<aws.scheduler.unknown>"}"#
        );
    }
}
