//! The local stand-in for EventBridge Scheduler's delivery: moto stores schedules but
//! never fires them, so the dev stack (and tests, on a clock they choose) fire the
//! one-time schedules that are due exactly as Scheduler delivers them: the schedule's
//! own input sent to its own target queue, at least once (sent, then deleted as
//! `ActionAfterCompletion: DELETE` says; a crash between the two sends it again, which
//! the dispatcher's claim makes harmless).

use aws_sdk_scheduler::types::ActionAfterCompletion;

use crate::BoxError;

/// Fires the due schedules of one schedule group.
pub struct LocalScheduler {
    scheduler: aws_sdk_scheduler::Client,
    sqs: aws_sdk_sqs::Client,
    group: String,
}

fn aws<E: std::error::Error + 'static, R: std::fmt::Debug>(e: aws_sdk_scheduler::error::SdkError<E, R>) -> BoxError {
    aws_sdk_scheduler::error::DisplayErrorContext(e).to_string().into()
}

impl LocalScheduler {
    pub fn new(sdk: &aws_config::SdkConfig, group: impl Into<String>) -> Self {
        Self {
            scheduler: aws_sdk_scheduler::Client::new(sdk),
            sqs: aws_sdk_sqs::Client::new(sdk),
            group: group.into(),
        }
    }

    /// Delivers every one-time (`at(...)`) schedule of the group due at `now_ms`; returns
    /// how many it delivered. Recurring expressions are left alone (none are created yet).
    pub async fn fire_due(&self, now_ms: i64) -> Result<usize, BoxError> {
        let mut names = Vec::new();
        let mut token = None;
        loop {
            let page = self
                .scheduler
                .list_schedules()
                .group_name(&self.group)
                .set_next_token(token)
                .send()
                .await
                .map_err(aws)?;
            names.extend(page.schedules().iter().filter_map(|s| s.name().map(String::from)));
            match page.next_token {
                Some(t) if !t.is_empty() => token = Some(t),
                _ => break,
            }
        }
        let mut fired = 0;
        for name in names {
            let s = self
                .scheduler
                .get_schedule()
                .name(&name)
                .group_name(&self.group)
                .send()
                .await
                .map_err(aws)?;
            let due = s
                .schedule_expression()
                .and_then(pushgate_shared::schedule::parse_at_expression)
                .is_some_and(|at| at <= now_ms);
            let Some(target) = s.target().filter(|_| due) else {
                continue;
            };
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
            self.sqs
                .send_message()
                .queue_url(url)
                .message_body(target.input().unwrap_or_default())
                .send()
                .await
                .map_err(|e| aws_sdk_sqs::error::DisplayErrorContext(e).to_string())?;
            fired += 1;
            if s.action_after_completion() == Some(&ActionAfterCompletion::Delete) {
                self.scheduler
                    .delete_schedule()
                    .name(&name)
                    .group_name(&self.group)
                    .send()
                    .await
                    .map_err(aws)?;
            }
        }
        Ok(fired)
    }
}
