//! `cargo bench -p pushgate-tests`: the dispatcher on a batch of 10 with a provider that
//! takes 50 ms, records in parallel versus one at a time (how a serial Lambda would do
//! it), and the AWS calls per accepted and per delivered message. Prints figures; asserts
//! nothing about time.

use std::time::Instant;

use pushgate_tests::*;
use serde_json::json;

const ROUNDS: usize = 7;
const BATCH: usize = 10;
const PROVIDER_MS: u64 = 50;

/// CPU time of this whole process (every thread: the dispatcher, and the in-process
/// webhook receiver and SDK clients), in milliseconds.
fn cpu_ms() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec, which lives on this stack frame.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 * 1000.0 + ts.tv_nsec as f64 / 1e6
}

fn stats(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    (v[0], v[v.len() / 2], v[v.len() - 1])
}

async fn batch(stack: &Stack) -> aws_lambda_events::event::sqs::SqsEvent {
    let mut event = stack.receive_event(10).await;
    while event.records.len() < BATCH {
        event.records.extend(stack.receive_event(10).await.records);
    }
    event
}

async fn run(
    concurrency: usize,
    provider_ms: u64,
) -> (
    Vec<f64>,
    Vec<f64>,
    Vec<f64>,
    std::collections::BTreeMap<String, usize>,
    std::collections::BTreeMap<String, usize>,
) {
    // Long visibility: a handled batch must not come back into a later round.
    let stack = Stack::with(StackOptions {
        concurrency,
        visibility_timeout: 600,
        ..StackOptions::default()
    })
    .await;
    stack.ingest.apps.current().await.unwrap();
    let target = format!("{}?delay_ms={provider_ms}", stack.receiver.url("bench"));
    let (mut dispatch_ms, mut ingest_ms, mut cpu_per_message) = (Vec::new(), Vec::new(), Vec::new());
    let (mut ingest_calls, mut dispatch_calls) = Default::default();
    // Round 0 warms connections and is not counted.
    for round in 0..=ROUNDS {
        stack.calls.reset();
        for i in 0..BATCH {
            let body = serde_json::to_vec(
                &json!({"channel":"webhook","to": target,"content":{"text": format!("{round}-{i}")}}),
            )
            .unwrap();
            let req = signed("POST", "/v1/messages", &body, APP, APP_SECRETS[0], now(), &[]);
            let t = Instant::now();
            assert_eq!(parts(stack.ingest.handle(req).await).0, 202);
            if round > 0 {
                ingest_ms.push(t.elapsed().as_secs_f64() * 1000.0);
            }
        }
        ingest_calls = stack.calls.snapshot();
        let event = batch(&stack).await;
        stack.calls.reset();
        let (t, cpu) = (Instant::now(), cpu_ms());
        let response = stack.dispatcher.handle(event).await;
        if round > 0 {
            dispatch_ms.push(t.elapsed().as_secs_f64() * 1000.0);
            cpu_per_message.push((cpu_ms() - cpu) / BATCH as f64);
        }
        assert!(response.batch_item_failures.is_empty());
        assert_eq!(
            stack.receiver.received().len(),
            (round + 1) * BATCH,
            "every record sent once"
        );
        dispatch_calls = stack.calls.snapshot();
    }
    (dispatch_ms, cpu_per_message, ingest_ms, ingest_calls, dispatch_calls)
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let (parallel, cpu, ingest_ms, ingest_calls, dispatch_calls) = run(BATCH, PROVIDER_MS).await;
    let (serial, _, _, _, _) = run(1, PROVIDER_MS).await;
    let (floor, _, _, _, _) = run(BATCH, 0).await;
    let (cmin, cmed, cmax) = stats(cpu);
    let (fmin, fmed, fmax) = stats(floor);
    let (pmin, pmed, pmax) = stats(parallel);
    let (smin, smed, smax) = stats(serial);
    let (imin, imed, imax) = stats(ingest_ms);
    let per = |m: &std::collections::BTreeMap<String, usize>| -> String {
        m.iter()
            .map(|(k, v)| format!("{k} {:.1}", *v as f64 / BATCH as f64))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!("dispatch, batch of {BATCH}, provider latency {PROVIDER_MS} ms, moto on loopback, {ROUNDS} rounds:");
    println!("  parallel (concurrency {BATCH}): min {pmin:.1} ms, median {pmed:.1} ms, max {pmax:.1} ms");
    println!("  serial   (concurrency 1):  min {smin:.1} ms, median {smed:.1} ms, max {smax:.1} ms");
    println!("  speed-up (median): {:.1}x", smed / pmed);
    println!("  floor, provider answering at once (the 20 DynamoDB round trips to moto): min {fmin:.1} ms, median {fmed:.1} ms, max {fmax:.1} ms");
    println!(
        "  batch time above that floor (median): {:.1} ms for {BATCH} x {PROVIDER_MS} ms of provider latency",
        pmed - fmed
    );
    println!(
        "  process CPU per dispatched message (dispatcher, SDK clients and the in-process receiver): min {cmin:.2} ms, median {cmed:.2} ms, max {cmax:.2} ms"
    );
    println!("ingest, one request against moto: min {imin:.1} ms, median {imed:.1} ms, max {imax:.1} ms");
    println!("AWS calls per accepted message: {}", per(&ingest_calls));
    println!("AWS calls per delivered message (webhook): {}", per(&dispatch_calls));
}
