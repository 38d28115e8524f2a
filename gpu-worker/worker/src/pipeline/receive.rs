//! Stage 1, receive: up to `batch_max` deliveries from the two queues, express first, with
//! `bulk_share` of the batch kept for bulk while bulk has work.

use std::time::{Duration, Instant};

use ocr_core::Priority;
use ocr_core::worker::Delivery;
use tokio::sync::{mpsc, watch};

use super::batch::Batch;
use super::{PipelineDeps, Settings};
use crate::heartbeat::InFlight;

/// Receives batches until `stop`, each one only once the next stage has room for it (a held
/// message's visibility clock is ticking).
pub(super) async fn stage(
    deps: PipelineDeps,
    settings: std::sync::Arc<Settings>,
    in_flight: InFlight,
    tx: mpsc::Sender<Batch>,
    stop: watch::Receiver<bool>,
) {
    while !*stop.borrow() {
        let Ok(permit) = tx.reserve().await else { break };
        let batch = receive(&deps, &settings, &in_flight, &stop).await;
        if !batch.is_empty() {
            permit.send(batch);
        }
    }
    tracing::debug!("receive stage stopped");
}

/// One batch (empty when both queues stayed empty for a long poll), registered as in flight.
pub(super) async fn receive(
    deps: &PipelineDeps,
    settings: &Settings,
    in_flight: &InFlight,
    stop: &watch::Receiver<bool>,
) -> Batch {
    let deliveries = gather(deps, settings, stop).await;
    if !deliveries.is_empty() {
        for d in &deliveries {
            in_flight.add(d.priority, &d.receipt_handle);
        }
        deps.metrics.in_flight.set(in_flight.len() as i64);
        deps.metrics.batch_size.observe(deliveries.len() as f64);
    }
    Batch::new(deliveries)
}

/// How many of the next `remaining` jobs to ask of each queue.
fn split(remaining: usize, bulk_reserved: usize, express_done: bool, bulk_done: bool) -> (usize, usize) {
    match (express_done, bulk_done) {
        (true, true) => (0, 0),
        (true, false) => (0, remaining),
        (false, true) => (remaining, 0),
        (false, false) => {
            let bulk = bulk_reserved.min(remaining);
            (remaining - bulk, bulk)
        }
    }
}

/// Which queues ran dry during one gather.
#[derive(Default)]
struct Dry {
    express: bool,
    bulk: bool,
}

/// Receives up to `batch_max` deliveries: long-polls while the batch is empty, then tops it up
/// (without waiting) for at most `batch_wait`; a queue that returned fewer than asked is not
/// asked again. Express first, with bulk's share (and the other's slack when one runs dry).
async fn gather(deps: &PipelineDeps, settings: &Settings, stop: &watch::Receiver<bool>) -> Vec<Delivery> {
    let max = settings.batch_max.max(1);
    let bulk_quota = ((max as f64) * settings.bulk_share.clamp(0.0, 1.0)).ceil() as usize;
    let mut batch: Vec<Delivery> = Vec::with_capacity(max);
    let mut dry = Dry::default();
    let mut deadline: Option<Instant> = None;
    while !*stop.borrow() && batch.len() < max && deadline.is_none_or(|d| Instant::now() < d) {
        let bulk_have = batch.iter().filter(|d| d.priority == Priority::Bulk).count();
        let want = split(max - batch.len(), bulk_quota.saturating_sub(bulk_have), dry.express, dry.bulk);
        if want == (0, 0) {
            break;
        }
        let wait = if batch.is_empty() { settings.receive_wait } else { Duration::ZERO };
        receive_round(deps, want, wait, &mut batch, &mut dry).await;
        if batch.is_empty() {
            // Both queues stayed empty for a long poll: the caller asks again.
            break;
        }
        deadline.get_or_insert_with(|| Instant::now() + settings.batch_wait);
    }
    batch
}

/// One round of parallel receives (at most 10 messages each) for `want` = (express, bulk).
async fn receive_round(
    deps: &PipelineDeps,
    want: (usize, usize),
    wait: Duration,
    batch: &mut Vec<Delivery>,
    dry: &mut Dry,
) {
    let mut calls = Vec::new();
    for (priority, want) in [(Priority::Express, want.0), (Priority::Bulk, want.1)] {
        let mut left = want;
        while left > 0 {
            let n = left.min(10);
            left -= n;
            let source = deps.source.clone();
            calls.push(async move { (priority, n, source.receive(priority, n, wait).await) });
        }
    }
    let started = Instant::now();
    let results = futures::future::join_all(calls).await;
    deps.metrics.stage("receive", started.elapsed());
    for (priority, asked, result) in results {
        let got = match result {
            Ok(deliveries) => {
                let got = deliveries.len();
                batch.extend(deliveries);
                got
            }
            Err(e) => {
                tracing::warn!(error = %e, %priority, "receive failed");
                tokio::time::sleep(Duration::from_millis(500)).await;
                0
            }
        };
        match priority {
            Priority::Express => dry.express |= got < asked,
            Priority::Bulk => dry.bulk |= got < asked,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::split;

    #[test]
    fn split_keeps_bulks_share_and_gives_slack_away() {
        assert_eq!(split(32, 8, false, false), (24, 8));
        assert_eq!(split(5, 8, false, false), (0, 5));
        assert_eq!(split(32, 0, false, false), (32, 0));
        assert_eq!(split(20, 8, true, false), (0, 20));
        assert_eq!(split(20, 8, false, true), (20, 0));
        assert_eq!(split(20, 8, true, true), (0, 0));
    }
}
