//! EventBridge Scheduler adapter: the one-time schedules that queue a message's job at
//! its `send_at` (beyond SQS's 15-minute delay). Each schedule's target is the send queue
//! itself with the job as input, so nothing of ours runs until the dispatcher does;
//! Scheduler deletes it once it has fired (`ActionAfterCompletion: DELETE`).

use aws_sdk_scheduler::types::{
    ActionAfterCompletion, DeadLetterConfig, FlexibleTimeWindow, FlexibleTimeWindowMode, RetryPolicy, Target,
};
use aws_sdk_scheduler::Client;

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
    /// Where Scheduler puts a job it gave up delivering (`PUSHGATE_SCHEDULER_DLQ_ARN`):
    /// operators see the failure there; the sweep queues the message regardless.
    pub dead_letter_arn: Option<String>,
}

impl Scheduler {
    pub fn new(client: Client, group: String, queue_arn: String, role_arn: String) -> Self {
        Self {
            client,
            group,
            queue_arn,
            role_arn,
            dead_letter_arn: None,
        }
    }

    /// The same, with Scheduler's dead-letter queue for jobs it gave up delivering.
    pub fn with_dead_letter(mut self, arn: Option<String>) -> Self {
        self.dead_letter_arn = arn;
        self
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
        let target = Target::builder()
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
            .map_err(|e| SchedulerError(e.to_string()))?;
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
        match self
            .client
            .delete_schedule()
            .name(name)
            .group_name(&self.group)
            .send()
            .await
        {
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
}
