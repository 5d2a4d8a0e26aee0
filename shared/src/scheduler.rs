//! EventBridge Scheduler adapter: the one-time schedules that queue a message's job at
//! its `send_at` (beyond SQS's 15-minute delay). Each schedule's target is the send queue
//! itself with the job as input, so nothing of ours runs until the dispatcher does;
//! Scheduler deletes it once it has fired (`ActionAfterCompletion: DELETE`).
//!
//! Recurring schedules (`POST /v1/schedules`) live in one schedule group per app
//! (`crate::recurring::group_name`), created on the app's first schedule; their target
//! is the same send queue, their input an occurrence that Scheduler stamps with each
//! firing's time.

use aws_sdk_scheduler::types::{
    ActionAfterCompletion, DeadLetterConfig, FlexibleTimeWindow, FlexibleTimeWindowMode, RetryPolicy, Target,
};
use aws_sdk_scheduler::Client;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use crate::message::Job;

/// Scheduler calls failed.
#[derive(Debug, thiserror::Error)]
#[error("scheduler: {0}")]
pub struct SchedulerError(String);

fn err<E: std::error::Error + 'static, R: std::fmt::Debug>(
    e: aws_sdk_scheduler::error::SdkError<E, R>,
) -> SchedulerError {
    SchedulerError(aws_sdk_scheduler::error::DisplayErrorContext(e).to_string())
}

/// Where schedules go and what they may do.
#[derive(Clone)]
pub struct Scheduler {
    client: Client,
    /// The schedule group (`PUSHGATE_SCHEDULE_GROUP`).
    pub group: String,
    /// The send queue's ARN (`PUSHGATE_SEND_QUEUE_ARN`): every schedule's target.
    pub queue_arn: String,
    /// The role Scheduler assumes to send to the queue (`PUSHGATE_SCHEDULER_ROLE_ARN`).
    pub role_arn: String,
    /// Recurring schedules' groups are `{prefix}.{app}` (`PUSHGATE_RECURRING_GROUP_PREFIX`).
    pub recurring_prefix: String,
    /// Groups this instance knows exist (one `GetScheduleGroup` per app per instance).
    known_groups: Arc<Mutex<HashSet<String>>>,
    /// Where Scheduler puts a job it gave up delivering (`PUSHGATE_SCHEDULER_DLQ_ARN`),
    /// one-time and recurring alike: operators see the failure there; the sweep queues
    /// a one-time message regardless.
    pub dead_letter_arn: Option<String>,
}

/// Why a recurring schedule was not created.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// Scheduler refused what it was given (a 422: our validation let it through).
    #[error("scheduler refused the schedule: {0}")]
    Refused(String),
    #[error(transparent)]
    Unavailable(#[from] SchedulerError),
}

/// A recurring schedule to create.
#[derive(Debug, Clone)]
pub struct Recurring<'a> {
    pub group: &'a str,
    pub name: &'a str,
    pub expression: &'a str,
    pub timezone: &'a str,
    /// Unix ms.
    pub start: Option<i64>,
    pub end: Option<i64>,
    pub input: String,
}

impl Scheduler {
    pub fn new(client: Client, group: String, queue_arn: String, role_arn: String) -> Self {
        Self {
            client,
            group,
            queue_arn,
            role_arn,
            recurring_prefix: "pushgate".into(),
            known_groups: Default::default(),
            dead_letter_arn: None,
        }
    }

    /// The same, with Scheduler's dead-letter queue for jobs it gave up delivering.
    pub fn with_dead_letter(mut self, arn: Option<String>) -> Self {
        self.dead_letter_arn = arn;
        self
    }

    /// Puts recurring schedules' groups under `prefix` (`{prefix}.{app}`).
    pub fn with_recurring_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.recurring_prefix = prefix.into();
        self
    }

    /// The schedule group of `app`'s recurring schedules.
    pub fn group_of(&self, app: &str) -> String {
        crate::recurring::group_name(&self.recurring_prefix, app)
    }

    /// Makes sure schedule group `group` exists: once per group per instance, one
    /// `GetScheduleGroup`, and a `CreateScheduleGroup` the first time an app schedules.
    async fn ensure_group(&self, group: &str) -> Result<(), SchedulerError> {
        if self.known_groups.lock().map(|g| g.contains(group)).unwrap_or(false) {
            return Ok(());
        }
        match self.client.get_schedule_group().name(group).send().await {
            Ok(_) => {}
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_not_found_exception()) =>
            {
                match self.client.create_schedule_group().name(group).send().await {
                    Ok(_) => {}
                    // Created meanwhile by another instance.
                    Err(e) if e.as_service_error().is_some_and(|s| s.is_conflict_exception()) => {}
                    Err(e) => return Err(err(e)),
                }
            }
            Err(e) => return Err(err(e)),
        }
        if let Ok(mut known) = self.known_groups.lock() {
            known.insert(group.to_string());
        }
        Ok(())
    }

    /// Creates recurring schedule `r` (its group first if need be): the send queue as
    /// target with `r.input`, no flexible window, Scheduler's own retries (at least once:
    /// the occurrence's derived key makes a retry the same message). One that exists
    /// already (a retry of the same create) is no error.
    pub async fn create_recurring(&self, r: &Recurring<'_>) -> Result<(), CreateError> {
        self.ensure_group(r.group).await?;
        let target = self.target(r.input.clone())?;
        let window = FlexibleTimeWindow::builder()
            .mode(FlexibleTimeWindowMode::Off)
            .build()
            .map_err(|e| SchedulerError(e.to_string()))?;
        let millis = aws_sdk_scheduler::primitives::DateTime::from_millis;
        let created = self
            .client
            .create_schedule()
            .name(r.name)
            .group_name(r.group)
            .schedule_expression(r.expression)
            .schedule_expression_timezone(r.timezone)
            .set_start_date(r.start.map(millis))
            .set_end_date(r.end.map(millis))
            .flexible_time_window(window)
            .target(target)
            .send()
            .await;
        match created {
            Ok(_) => Ok(()),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_conflict_exception()) => Ok(()),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_validation_exception()) => Err(CreateError::Refused(
                e.as_service_error().map(|s| s.to_string()).unwrap_or_default(),
            )),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_not_found_exception()) =>
            {
                // The group was deleted behind this instance's back: look again next time.
                if let Ok(mut known) = self.known_groups.lock() {
                    known.remove(r.group);
                }
                Err(err(e).into())
            }
            Err(e) => Err(err(e).into()),
        }
    }

    /// Deletes schedule `name` of group `group`; one already gone is no error.
    pub async fn delete_in(&self, group: &str, name: &str) -> Result<(), SchedulerError> {
        match self.client.delete_schedule().name(name).group_name(group).send().await {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_not_found_exception()) =>
            {
                Ok(())
            }
            Err(e) => Err(err(e)),
        }
    }

    /// The send queue as a schedule's target, with `input` and Scheduler's retries (up
    /// to a day).
    fn target(&self, input: String) -> Result<Target, SchedulerError> {
        Target::builder()
            .arn(&self.queue_arn)
            .role_arn(&self.role_arn)
            .input(input)
            .retry_policy(
                RetryPolicy::builder()
                    .maximum_event_age_in_seconds(86_400)
                    .maximum_retry_attempts(185)
                    .build(),
            )
            .set_dead_letter_config(
                self.dead_letter_arn
                    .as_ref()
                    .map(|arn| DeadLetterConfig::builder().arn(arn).build()),
            )
            .build()
            .map_err(|e| SchedulerError(e.to_string()))
    }

    /// The schedule name of message `id` (a ULID fits Scheduler's 1-64 `[0-9A-Za-z-_.]`).
    pub fn name_of(id: &str) -> String {
        format!("msg-{id}")
    }

    /// Creates the one-time schedule `name` that puts `job` on the send queue at `at_ms`
    /// (UTC, to the second, no flexible window). Scheduler retries a failed delivery for
    /// up to a day; a duplicate job is harmless (the dispatcher's claim sends once).
    pub async fn create_at(&self, name: &str, at_ms: i64, job: &Job) -> Result<(), SchedulerError> {
        let input = serde_json::to_string(job).map_err(|e| SchedulerError(e.to_string()))?;
        let target = self.target(input)?;
        let window = FlexibleTimeWindow::builder()
            .mode(FlexibleTimeWindowMode::Off)
            .build()
            .map_err(|e| SchedulerError(e.to_string()))?;
        let created = self
            .client
            .create_schedule()
            .name(name)
            .group_name(&self.group)
            .schedule_expression(crate::schedule::at_expression(at_ms))
            .schedule_expression_timezone("UTC")
            .flexible_time_window(window)
            .action_after_completion(ActionAfterCompletion::Delete)
            .target(target)
            .send()
            .await;
        match created {
            Ok(_) => Ok(()),
            // Created by an earlier try for the same message (its name is the message's):
            // the job is scheduled already.
            Err(e) if e.as_service_error().is_some_and(|s| s.is_conflict_exception()) => Ok(()),
            Err(e) => Err(err(e)),
        }
    }

    /// Deletes schedule `name`; one already gone (fired, or deleted before) is no error.
    pub async fn delete(&self, name: &str) -> Result<(), SchedulerError> {
        self.delete_in(&self.group, name).await
    }
}
