//! Dead letters: a message that spends its attempts is recorded `failed`
//! (`dead_lettered`) with its job in the DLQ; a redrive sends it again, while a job for
//! a message that was in fact sent is dropped without a second send.

use std::time::Duration;

use pushgate_shared::message::{Job, Status};
use pushgate_tests::*;
use serde_json::json;

#[tokio::test]
async fn redrive_resends_dead_letters_and_never_resends_what_was_sent() {
    let stack = Stack::with(StackOptions {
        max_attempts: 1,
        ..StackOptions::default()
    })
    .await;
    // Fails once (503), then the target recovers.
    let flaky = format!("{}?fail_times=1", stack.receiver.url("flaky"));
    let dead = stack
        .accept(json!({"channel":"webhook","to": flaky,"content":{"text":"x"}}))
        .await;
    let done = stack
        .accept(json!({"channel":"webhook","to": stack.receiver.url("fine"),"content":{"text":"y"}}))
        .await;
    stack.drain(Duration::from_secs(10)).await;
    let m = stack.record(&dead).await;
    assert_eq!(m.status, Status::Failed);
    assert!(m.reason.unwrap().starts_with("dead_lettered"));
    assert_eq!(stack.record(&done).await.status, Status::Delivered);

    // A stray job for the delivered message also sits in the DLQ (as after an SQS redrive).
    let d = stack.record(&done).await;
    let dead_letter_queue = pushgate_shared::queue::Queue::new(stack.sqs.clone(), stack.res.dead_letter_queue());
    dead_letter_queue.send(&Job::of(&d)).await.unwrap();

    let dlq = pushgate_tool::dlq::Dlq {
        sqs: stack.sqs.clone(),
        dlq_url: stack.res.dead_letter_queue().to_string(),
        queue: pushgate_shared::queue::Queue::new(stack.sqs.clone(), stack.res.send_queue()),
        store: stack.store.clone(),
    };
    let listed = dlq.list(1).await.unwrap();
    assert_eq!(listed.len(), 2);
    tokio::time::sleep(Duration::from_millis(1100)).await;

    // The filter leaves other apps' letters alone.
    let skipped = dlq
        .redrive(
            &pushgate_tool::dlq::Filter {
                app: Some(OTHER_APP.into()),
                since_ms: None,
            },
            |_, _| {},
        )
        .await
        .unwrap();
    assert_eq!(skipped.skipped, 2);

    let mut progress = Vec::new();
    let report = dlq
        .redrive(&pushgate_tool::dlq::Filter::default(), |done, total| {
            progress.push((done, total))
        })
        .await
        .unwrap();
    assert_eq!((report.requeued, report.settled), (1, 1), "{report:?}");
    assert_eq!(progress.last(), Some(&(2, 2)));
    assert_eq!(stack.queue_count(stack.res.dead_letter_queue()).await, 0);

    stack.drain(Duration::from_secs(10)).await;
    assert_eq!(
        stack.record(&dead).await.status,
        Status::Delivered,
        "redriven and delivered"
    );
    let to_fine = stack.receiver.received().iter().filter(|r| r.hook == "fine").count();
    assert_eq!(to_fine, 1, "the message that was sent is not sent again");
}
