//! Stage 1, receive: the [`Intake`] asks the two job queues for messages and holds what comes
//! back until a lane takes it into a batch.
//!
//! Each receive call runs as its own task and puts what it got straight into the intake, where
//! it is registered in flight at once (so the heartbeat keeps it invisible). That way a batch
//! never waits for a long poll on the other queue to time out (the message that woke one poll
//! starts its batch at once), and a long poll still open when a batch leaves is not lost: what
//! it brings later waits, held and heartbeated, for the next batch.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ocr_core::Priority;
use ocr_core::worker::{Delivery, JobSource};
use tokio::sync::watch;

use super::Settings;
use crate::heartbeat::InFlight;
use crate::metrics::Metrics;
use crate::now_ms;

/// Which lane a batch is for: `Main` batches mix express and bulk (bulk keeps its share);
/// `Express` batches hold express only (see [`super::prefetch::lane`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    Main,
    Express,
}

impl Lane {
    fn priorities(self) -> &'static [Priority] {
        match self {
            Lane::Main => &Priority::ALL,
            Lane::Express => &[Priority::Express],
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Lane::Main => "main",
            Lane::Express => "express",
        }
    }
}

/// A delivery and when it reached the intake (epoch ms).
#[derive(Debug)]
pub struct Received {
    pub delivery: Delivery,
    pub at_ms: i64,
}

/// The receive calls in progress and what they brought, shared by the lanes.
#[derive(Clone)]
pub(super) struct Intake {
    inner: Arc<Inner>,
}

struct Inner {
    source: Arc<dyn JobSource>,
    in_flight: InFlight,
    metrics: Metrics,
    receive_wait: Duration,
    state: Mutex<IntakeState>,
    /// Bumped whenever a receive call ends.
    changed: watch::Sender<u64>,
}

#[derive(Default)]
struct IntakeState {
    /// Received, in flight, in no batch yet; by [`slot`].
    held: [VecDeque<Received>; 2],
    asks: Vec<Ask>,
    /// When a receive call of each priority last ended, and whether it brought fewer than asked.
    last: [Option<(Instant, bool)>; 2],
    next_ask: u64,
    closed: bool,
}

/// A receive call in progress.
struct Ask {
    id: u64,
    priority: Priority,
    n: usize,
    /// A long poll (it may stay open for `receive_wait`) rather than a call that answers at once.
    long: bool,
}

fn slot(p: Priority) -> usize {
    match p {
        Priority::Express => 0,
        Priority::Bulk => 1,
    }
}

impl IntakeState {
    /// Whether a receive call of `p` that ended after `since` came back short: the queue had no
    /// more than that just now. `None` when none ended since.
    fn dry(&self, p: Priority, since: Instant) -> Option<bool> {
        self.last[slot(p)].filter(|(at, _)| *at >= since).map(|(_, short)| short)
    }

    fn pending(&self, p: Priority, long: bool) -> usize {
        self.asks.iter().filter(|a| a.priority == p && a.long == long).map(|a| a.n).sum()
    }

    fn held(&self, p: Priority) -> usize {
        self.held[slot(p)].len()
    }

    fn take(&mut self, p: Priority, n: usize, into: &mut Vec<Received>) {
        let held = &mut self.held[slot(p)];
        let n = n.min(held.len());
        into.extend(held.drain(..n));
    }
}

impl Intake {
    pub(super) fn new(
        source: Arc<dyn JobSource>,
        in_flight: InFlight,
        metrics: Metrics,
        receive_wait: Duration,
    ) -> Self {
        Intake {
            inner: Arc::new(Inner {
                source,
                in_flight,
                metrics,
                receive_wait,
                state: Mutex::default(),
                changed: watch::channel(0).0,
            }),
        }
    }

    /// Up to `batch_max` deliveries for `lane`. Waits (long-polling) while there is nothing;
    /// once something came, tops the batch up with receives that answer at once, for at most
    /// `batch_wait`, and returns as soon as the batch is full or every queue it reads came back
    /// short. Returns early (possibly empty) when `stop` turns true or `keep` turns false, and
    /// empty when every queue it reads came back empty from a long poll.
    ///
    /// Main batches take express first but keep `bulk_share` of the batch for bulk while bulk
    /// has work; a queue's slack goes to the other.
    pub(super) async fn gather(
        &self,
        lane: Lane,
        settings: &Settings,
        stop: &watch::Receiver<bool>,
        keep: Option<&watch::Receiver<bool>>,
    ) -> Vec<Received> {
        let max = settings.batch_max.max(1);
        let bulk_quota = ((max as f64) * settings.bulk_share.clamp(0.0, 1.0)).ceil() as usize;
        let started = Instant::now();
        let mut changed = self.inner.changed.subscribe();
        let mut stop = stop.clone();
        let mut keep = keep.cloned();
        let mut batch: Vec<Received> = Vec::with_capacity(max);
        let mut deadline: Option<Instant> = None;
        // Quick receives issued by this gather that have not answered yet.
        let mut quick_pending;
        // The stop or keep signal's sender is gone: leave as if told to.
        let mut gone = false;
        loop {
            changed.borrow_and_update();
            let now = Instant::now();
            let leaving = gone || *stop.borrow() || keep.as_ref().is_some_and(|k| !*k.borrow());
            {
                let mut st = self.inner.state.lock().unwrap();
                quick_pending = lane.priorities().iter().any(|&p| st.pending(p, false) > 0);
                let dry = |st: &IntakeState, p| st.dry(p, started) == Some(true);
                let all_dry = lane.priorities().iter().all(|&p| dry(&st, p));
                let bulk_in = batch.iter().filter(|r| r.delivery.priority == Priority::Bulk).count();
                // Room for each priority now: bulk's share stays open until bulk came back
                // short; express's slack goes to bulk once express came back short.
                let (express_room, bulk_room) = match lane {
                    Lane::Express => (max - batch.len(), 0),
                    Lane::Main => {
                        let bulk_open = !(dry(&st, Priority::Bulk) && st.held(Priority::Bulk) == 0);
                        let reserve = if bulk_open { bulk_quota.saturating_sub(bulk_in) } else { 0 };
                        let express_room = (max - batch.len()).saturating_sub(reserve);
                        let express_done = dry(&st, Priority::Express) && st.held(Priority::Express) <= express_room;
                        let bulk_room = if express_done {
                            max - batch.len() - st.held(Priority::Express).min(express_room)
                        } else {
                            reserve.min(max - batch.len())
                        };
                        (express_room, bulk_room)
                    }
                };
                st.take(Priority::Express, express_room, &mut batch);
                if lane == Lane::Main {
                    st.take(Priority::Bulk, bulk_room.min(max - batch.len()), &mut batch);
                }
                let out_of_time = deadline.is_some_and(|d| now >= d);
                let done = batch.len() >= max || ((out_of_time || all_dry) && !batch.is_empty());
                if leaving || (done && !quick_pending) {
                    if !leaving {
                        // The shares held on to room that nobody else wanted: fill it.
                        for &p in lane.priorities() {
                            let room = max - batch.len();
                            st.take(p, room, &mut batch);
                        }
                    }
                    break;
                }
                if batch.is_empty() && all_dry && !quick_pending {
                    // Every queue came back empty from a long poll: the caller asks again.
                    break;
                }
                if !st.closed {
                    for &p in lane.priorities() {
                        let room = match p {
                            Priority::Express => express_room.saturating_sub(st.held(Priority::Express)),
                            Priority::Bulk => bulk_room.saturating_sub(st.held(Priority::Bulk)),
                        };
                        let pending = st.pending(p, true) + st.pending(p, false);
                        if batch.is_empty() {
                            // Waiting for work: keep a long poll open on each queue (it answers
                            // as soon as a message arrives). Without long polls (receive_wait 0)
                            // a queue is asked once per gather.
                            let asked_once = self.inner.receive_wait.is_zero() && st.dry(p, started).is_some();
                            if pending == 0 && !asked_once {
                                self.ask(&mut st, p, room.max(1), self.inner.receive_wait);
                            }
                        } else if room > 0 && st.pending(p, false) == 0 && st.dry(p, started) != Some(true) {
                            // Topping up: ask what the queue has now, with a call that answers at
                            // once (a long poll still open does not tell whether it is empty).
                            self.ask(&mut st, p, room, Duration::ZERO);
                        }
                    }
                }
            }
            if !batch.is_empty() && deadline.is_none() {
                deadline = Some(Instant::now() + settings.batch_wait);
            }
            let until = deadline.map(tokio::time::Instant::from_std).filter(|_| !quick_pending);
            tokio::select! {
                _ = changed.changed() => {}
                _ = async { tokio::time::sleep_until(until.unwrap()).await }, if until.is_some() => {}
                r = stop.changed() => if r.is_err() { gone = true },
                r = async { keep.as_mut().unwrap().changed().await }, if keep.is_some() => if r.is_err() { gone = true },
            }
        }
        if !batch.is_empty() {
            self.inner.metrics.stage("receive", started.elapsed());
            self.inner.metrics.batch_size.observe(batch.len() as f64);
        }
        batch
    }

    /// Starts one receive call per ten of `n` messages of `p`.
    fn ask(&self, st: &mut IntakeState, p: Priority, n: usize, wait: Duration) {
        let mut left = n;
        while left > 0 {
            let n = left.min(10);
            left -= n;
            let id = st.next_ask;
            st.next_ask += 1;
            st.asks.push(Ask { id, priority: p, n, long: !wait.is_zero() });
            let inner = self.inner.clone();
            tokio::spawn(async move {
                let got = match inner.source.receive(p, n, wait).await {
                    Ok(got) => got,
                    Err(e) => {
                        tracing::warn!(error = %e, priority = %p, "receive failed");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        Vec::new()
                    }
                };
                let at_ms = now_ms();
                for d in &got {
                    inner.in_flight.add(d.priority, &d.receipt_handle);
                }
                inner.metrics.in_flight.set(inner.in_flight.len() as i64);
                {
                    let mut st = inner.state.lock().unwrap();
                    st.asks.retain(|a| a.id != id);
                    st.last[slot(p)] = Some((Instant::now(), got.len() < n));
                    st.held[slot(p)].extend(got.into_iter().map(|delivery| Received { delivery, at_ms }));
                }
                inner.changed.send_modify(|v| *v += 1);
            });
        }
    }

    /// Held deliveries (in flight, in no batch yet).
    #[cfg(test)]
    fn held(&self) -> usize {
        let st = self.inner.state.lock().unwrap();
        st.held.iter().map(VecDeque::len).sum()
    }

    /// Starts no more receives and waits for those in progress to end. What they brought stays
    /// held and in flight: the pipeline hands it back with everything else it holds.
    pub(super) async fn close(&self) {
        let mut changed = self.inner.changed.subscribe();
        self.inner.state.lock().unwrap().closed = true;
        loop {
            changed.borrow_and_update();
            if self.inner.state.lock().unwrap().asks.is_empty() {
                return;
            }
            let _ = changed.changed().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use ocr_core::fakes::InMemoryJobSource;

    use super::*;

    fn intake(source: &Arc<InMemoryJobSource>, receive_wait: Duration) -> (Intake, InFlight) {
        let in_flight = InFlight::default();
        (Intake::new(source.clone(), in_flight.clone(), Metrics::new(), receive_wait), in_flight)
    }

    fn settings() -> Settings {
        Settings { batch_max: 8, batch_wait: Duration::from_millis(300), ..Settings::default() }
    }

    fn priorities(batch: &[Received]) -> Vec<Priority> {
        batch.iter().map(|r| r.delivery.priority).collect()
    }

    /// The join_all of old: one express message waited for bulk's long poll to time out.
    #[tokio::test]
    async fn a_message_starts_its_batch_without_waiting_for_the_other_queues_long_poll() {
        let source = Arc::new(InMemoryJobSource::new(Duration::from_secs(30), 3));
        let (intake, in_flight) = intake(&source, Duration::from_secs(5));
        let (_stop_tx, stop) = watch::channel(false);
        let pusher = {
            let source = source.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(200)).await;
                source.push(Priority::Express, "e1");
            })
        };
        let started = Instant::now();
        let batch = intake.gather(Lane::Main, &settings(), &stop, None).await;
        let took = started.elapsed();
        pusher.await.unwrap();
        assert_eq!(priorities(&batch), [Priority::Express]);
        // 200 ms until the message, the fake's 10 ms polling, one quick top-up: well under the
        // 300 ms batch wait on top, and far from the 5 s long poll.
        assert!(took < Duration::from_millis(450), "took {took:?}");
        assert_eq!(in_flight.len(), 1);
        // The bulk long poll is still open; closing waits for it and strands nothing.
        source.push(Priority::Bulk, "b1");
        intake.close().await;
        assert_eq!(intake.held(), 1, "the late bulk message is held");
        assert_eq!(in_flight.len(), 2, "and in flight, so it is handed back at shutdown");
    }

    /// What a long poll brings after its batch left goes into the next batch, not lost.
    #[tokio::test]
    async fn a_late_long_poll_feeds_the_next_batch() {
        let source = Arc::new(InMemoryJobSource::new(Duration::from_secs(30), 3));
        let (intake, _in_flight) = intake(&source, Duration::from_secs(5));
        let (_stop_tx, stop) = watch::channel(false);
        source.push(Priority::Express, "e1");
        let first = intake.gather(Lane::Main, &settings(), &stop, None).await;
        assert_eq!(first.len(), 1);
        source.push(Priority::Bulk, "b1");
        let second = intake.gather(Lane::Main, &settings(), &stop, None).await;
        assert_eq!(priorities(&second), [Priority::Bulk]);
        assert_eq!(second[0].delivery.body, "b1");
    }

    #[tokio::test]
    async fn full_queues_fill_the_batch_with_bulks_share() {
        let source = Arc::new(InMemoryJobSource::new(Duration::from_secs(30), 3));
        for i in 0..20 {
            source.push(Priority::Express, format!("e{i}"));
            source.push(Priority::Bulk, format!("b{i}"));
        }
        let (intake, _) = intake(&source, Duration::from_millis(500));
        let (_stop_tx, stop) = watch::channel(false);
        let batch = intake.gather(Lane::Main, &settings(), &stop, None).await;
        let bulk = priorities(&batch).iter().filter(|p| **p == Priority::Bulk).count();
        assert_eq!((batch.len(), bulk), (8, 2), "{:?}", priorities(&batch));
        let express = intake.gather(Lane::Express, &settings(), &stop, None).await;
        assert!(express.iter().all(|r| r.delivery.priority == Priority::Express));
        assert_eq!(express.len(), 8);
    }

    #[tokio::test]
    async fn slack_goes_to_the_other_priority() {
        let source = Arc::new(InMemoryJobSource::new(Duration::from_secs(30), 3));
        for i in 0..20 {
            source.push(Priority::Bulk, format!("b{i}"));
        }
        source.push(Priority::Express, "e");
        let (intake, _) = intake(&source, Duration::from_millis(500));
        let (_stop_tx, stop) = watch::channel(false);
        let batch = intake.gather(Lane::Main, &settings(), &stop, None).await;
        let express = priorities(&batch).iter().filter(|p| **p == Priority::Express).count();
        assert_eq!((batch.len(), express), (8, 1), "{:?}", priorities(&batch));
    }

    #[tokio::test]
    async fn empty_queues_give_an_empty_batch_after_one_long_poll() {
        let source = Arc::new(InMemoryJobSource::new(Duration::from_secs(30), 3));
        let (intake, _) = intake(&source, Duration::from_millis(100));
        let (_stop_tx, stop) = watch::channel(false);
        let started = Instant::now();
        assert!(intake.gather(Lane::Main, &settings(), &stop, None).await.is_empty());
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}
