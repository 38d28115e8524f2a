//! Waiting for a job to end (`GET /v1/jobs/{id}?wait=SECONDS`): one hub per process.
//!
//! A waiting request registers its job's id and sleeps on a channel. One background task reads
//! the status of every watched id each tick ([`WaitSettings::tick`]), [`STATUS_BATCH`] ids per
//! read (one `SELECT … WHERE id IN (…)` on MySQL), and wakes the waiters of the jobs that ended.
//! N waiters thus cost ⌈N / 500⌉ reads a tick instead of N polling loops, and a job's waiters
//! wake within about one tick of its end. The task runs only while someone waits: it ends with
//! the last waiter and the next registration starts it again. [`WaitSettings::max_waiters`]
//! bounds the waiters of a process; past it a request answers at once, as without `wait`.
//!
//! On Lambda an execution environment serves one request at a time, so its hub watches one id,
//! and its cap means nothing: each waiting request holds an environment of the API function,
//! whose concurrency is reserved and capped. So a wait also takes a place counted across every
//! process ([`WaitSlot`], the [`WaitSlots`] port: `job_waits` in MySQL), at most
//! [`WaitCaps::max_total`] in all and [`WaitCaps::max_per_caller`] of one caller; without one the
//! request answers at once as well.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use ocr_core::ports::{JobStatuses, STATUS_BATCH, SlotToken, WaitSlots};
use ocr_core::{JobId, JobStatus};
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

/// Longest `wait` a request may ask for, in seconds: with the steps around it, inside the API
/// function's timeout (29 s) and API Gateway's HTTP API integration timeout (30 s).
pub const MAX_WAIT_SECS: u64 = 20;

/// `WAIT_TICK_MS`'s default.
pub const DEFAULT_WAIT_TICK_MS: u64 = 100;

/// `WAIT_MAX_WAITERS`'s default: a few thousand open requests, each a socket and a few hundred
/// bytes here, and ⌈5000 / 500⌉ = 10 reads a tick at most.
pub const DEFAULT_WAIT_MAX_WAITERS: usize = 5_000;

/// `WAIT_MAX_TOTAL`'s default (a long-running `api-local`; the stack sets half the API
/// function's reserved concurrency).
pub const DEFAULT_WAIT_MAX_TOTAL: u32 = 1_000;

/// `WAIT_MAX_PER_CALLER`'s default.
pub const DEFAULT_WAIT_MAX_PER_CALLER: u32 = 20;

/// How long a place outlives the wait it was taken for: the release, which follows the wait,
/// within one database step (`DB_TIMEOUT_MS`: 5 s by default, 2.5 s in the stack). So a place
/// never expires while its request still waits, and one whose process died mid-wait (or whose
/// release failed) is free again this long after its wait would have ended.
pub const SLOT_MARGIN: Duration = Duration::from_secs(5);

/// Waiting requests counted across every process ([`WaitSlots`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitCaps {
    /// Most requests waiting at once in all (`WAIT_MAX_TOTAL`); 0: none ever waits.
    pub max_total: u32,
    /// Most requests of one caller waiting at once (`WAIT_MAX_PER_CALLER`); 0: none ever waits.
    pub max_per_caller: u32,
}

impl Default for WaitCaps {
    fn default() -> Self {
        WaitCaps { max_total: DEFAULT_WAIT_MAX_TOTAL, max_per_caller: DEFAULT_WAIT_MAX_PER_CALLER }
    }
}

impl WaitCaps {
    /// Whether any request may wait at all.
    pub fn allow_waiting(&self) -> bool {
        self.max_total > 0 && self.max_per_caller > 0
    }
}

/// One request's place among the waiting ones ([`WaitSlots`]), given back by
/// [`WaitSlot::release`] once the wait is over, or, when the request is dropped mid-wait (its
/// client went away), by a task spawned on drop. A place never given back (the process died)
/// expires on its own.
pub struct WaitSlot {
    slots: Arc<dyn WaitSlots>,
    token: Option<SlotToken>,
}

impl WaitSlot {
    pub fn new(slots: Arc<dyn WaitSlots>, token: SlotToken) -> Self {
        WaitSlot { slots, token: Some(token) }
    }

    /// Gives the place back now. A failure is only logged: the place expires on its own.
    pub async fn release(mut self) {
        if let Some(token) = self.token.clone() {
            release(self.slots.clone(), token).await;
            // Only now: a request dropped during the release has the drop release it again.
            self.token = None;
        }
    }
}

impl Drop for WaitSlot {
    fn drop(&mut self) {
        let Some(token) = self.token.take() else { return };
        // Outside a runtime nothing can run it: the place then expires on its own.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(release(self.slots.clone(), token));
        }
    }
}

async fn release(slots: Arc<dyn WaitSlots>, token: SlotToken) {
    if let Err(e) = slots.release(&token).await {
        tracing::warn!(error = %e, "giving a waiting place back failed; it expires on its own");
    }
}

/// How the hub checks and how many it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitSettings {
    /// Time between two checks of every watched job (`WAIT_TICK_MS`): the most a waiter sleeps
    /// past its job's end, besides the check itself.
    pub tick: Duration,
    /// Most requests waiting at once in this process (`WAIT_MAX_WAITERS`); 0: none ever waits.
    pub max_waiters: usize,
}

impl Default for WaitSettings {
    fn default() -> Self {
        WaitSettings { tick: Duration::from_millis(DEFAULT_WAIT_TICK_MS), max_waiters: DEFAULT_WAIT_MAX_WAITERS }
    }
}

/// What the hub has done so far, for tests and logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WaitStats {
    /// Requests waiting now.
    pub waiters: usize,
    /// Distinct jobs they wait on.
    pub watched: usize,
    /// Ticks that checked at least one job.
    pub ticks: u64,
    /// Status reads made ([`JobStatuses::statuses`] calls: one statement each on MySQL).
    pub reads: u64,
    /// Whether the checking task runs now.
    pub checking: bool,
}

/// The process's waiting hub; cheap to clone (one shared state).
#[derive(Clone)]
pub struct WaitHub {
    inner: Arc<Inner>,
}

struct Inner {
    statuses: Arc<dyn JobStatuses>,
    settings: WaitSettings,
    state: Mutex<State>,
    ticks: AtomicU64,
    reads: AtomicU64,
}

#[derive(Default)]
struct State {
    jobs: HashMap<JobId, Watched>,
    waiters: usize,
    /// Whether the checking task runs (started by the first waiter, ended after the last).
    ticking: bool,
    /// Set by [`WaitHub::close`]: no one waits any more.
    closed: bool,
}

/// One watched job: its waiters and the flag they sleep on (true once it ended).
struct Watched {
    waiters: usize,
    ended: watch::Sender<bool>,
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock; a poisoned one still holds consistent counts.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl WaitHub {
    /// A hub reading statuses from `statuses`; its task starts with the first waiter.
    pub fn new(statuses: Arc<dyn JobStatuses>, settings: WaitSettings) -> Self {
        let tick = settings.tick.max(Duration::from_millis(1));
        let inner = Inner {
            statuses,
            settings: WaitSettings { tick, ..settings },
            state: Mutex::default(),
            ticks: AtomicU64::new(0),
            reads: AtomicU64::new(0),
        };
        WaitHub { inner: Arc::new(inner) }
    }

    pub fn settings(&self) -> WaitSettings {
        self.inner.settings
    }

    /// Watches `id` for the caller, or `None` when the hub is full (or closed): then the caller
    /// answers at once. The first check comes within one tick, so a job that ends between the
    /// caller's own read and this call is still seen. Must run inside a Tokio runtime.
    pub fn register(&self, id: JobId) -> Option<Waiter> {
        let mut state = self.inner.state();
        if state.closed || state.waiters >= self.inner.settings.max_waiters {
            return None;
        }
        state.waiters += 1;
        let watched = state.jobs.entry(id).or_insert_with(|| Watched { waiters: 0, ended: watch::Sender::new(false) });
        watched.waiters += 1;
        let ended = watched.ended.subscribe();
        if !state.ticking {
            state.ticking = true;
            tokio::spawn(check_every_tick(self.inner.clone()));
        }
        Some(Waiter { hub: self.inner.clone(), id, ended })
    }

    /// Wakes every waiter now and refuses new ones (a server shutting down answers its waiting
    /// requests with their jobs as they are instead of holding the shutdown up to 20 s).
    pub fn close(&self) {
        let mut state = self.inner.state();
        state.closed = true;
        for watched in state.jobs.values() {
            watched.ended.send_replace(true);
        }
    }

    pub fn stats(&self) -> WaitStats {
        let state = self.inner.state();
        WaitStats {
            waiters: state.waiters,
            watched: state.jobs.len(),
            ticks: self.inner.ticks.load(Ordering::Relaxed),
            reads: self.inner.reads.load(Ordering::Relaxed),
            checking: state.ticking,
        }
    }
}

/// One request waiting on one job; unregisters when dropped (also when the request is dropped
/// mid-wait, e.g. its client went away).
pub struct Waiter {
    hub: Arc<Inner>,
    id: JobId,
    ended: watch::Receiver<bool>,
}

impl Waiter {
    /// Sleeps until the job ends (or the hub closes): `true`; or until `limit` passes: `false`.
    pub async fn ended_within(mut self, limit: Duration) -> bool {
        let ended = async { self.ended.wait_for(|ended| *ended).await.is_ok() };
        tokio::time::timeout(limit, ended).await.unwrap_or(false)
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let mut state = self.hub.state();
        state.waiters = state.waiters.saturating_sub(1);
        if let Some(watched) = state.jobs.get_mut(&self.id) {
            watched.waiters = watched.waiters.saturating_sub(1);
            if watched.waiters == 0 {
                state.jobs.remove(&self.id);
            }
        }
    }
}

/// The hub's task: each tick, reads the statuses of every watched job not yet ended and wakes
/// the waiters of those that ended (or vanished: their waiters read them again and answer 404).
/// A failed read is logged and tried again next tick; waiters still time out on their own.
async fn check_every_tick(hub: Arc<Inner>) {
    let mut interval = tokio::time::interval(hub.settings.tick);
    // A slow read delays the next tick instead of bunching the missed ones.
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // The first tick is immediate; the waiter has just read its job itself.
    interval.tick().await;
    loop {
        interval.tick().await;
        let ids: Vec<JobId> = {
            let mut state = hub.state();
            if state.jobs.is_empty() {
                state.ticking = false;
                return;
            }
            state.jobs.iter().filter(|(_, w)| !*w.ended.borrow()).map(|(id, _)| *id).collect()
        };
        if ids.is_empty() {
            continue;
        }
        hub.ticks.fetch_add(1, Ordering::Relaxed);
        for chunk in ids.chunks(STATUS_BATCH) {
            hub.reads.fetch_add(1, Ordering::Relaxed);
            match hub.statuses.statuses(chunk).await {
                Ok(found) => wake_ended(&hub, chunk, found),
                Err(e) => {
                    tracing::warn!(error = %e, jobs = chunk.len(), "reading waited-on jobs failed; next tick tries again")
                }
            }
        }
    }
}

fn wake_ended(hub: &Inner, asked: &[JobId], found: Vec<(JobId, JobStatus)>) {
    let found: HashMap<JobId, JobStatus> = found.into_iter().collect();
    let state = hub.state();
    for id in asked {
        if found.get(id).is_none_or(|status| status.is_terminal())
            && let Some(watched) = state.jobs.get(id)
        {
            tracing::debug!(job_id = %id, status = ?found.get(id), "waited-on job ended");
            watched.ended.send_replace(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use ocr_core::NewJob;
    use ocr_core::fakes::InMemoryJobStore;
    use ocr_core::ports::{JobStore, StatusChange};
    use ocr_core::{ContentType, Priority};
    use tokio::time::Instant;

    use super::*;

    // Real time (tokio's paused clock needs its test-util feature, which would rebuild every
    // async crate of the workspace once more for tests): short ticks, loose bounds.
    const TICK: Duration = Duration::from_millis(20);

    async fn job(store: &InMemoryJobStore) -> JobId {
        store.insert(NewJob::plain("alice", Priority::Bulk, ContentType::Png, 10, 0)).await.unwrap().id
    }

    async fn fail(store: &InMemoryJobStore, id: &JobId) {
        let change = StatusChange { at_ms: 1, error: Some("test".into()), ..Default::default() };
        assert!(store.set_status(id, JobStatus::AwaitingUpload, JobStatus::Failed, change).await.unwrap());
    }

    fn hub(store: &Arc<InMemoryJobStore>, max_waiters: usize) -> WaitHub {
        WaitHub::new(store.clone(), WaitSettings { tick: TICK, max_waiters })
    }

    async fn until_idle(hub: &WaitHub) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while hub.stats().checking {
            assert!(Instant::now() < deadline, "the task did not end");
            tokio::time::sleep(TICK).await;
        }
    }

    #[tokio::test]
    async fn waiters_of_an_ended_job_wake_and_others_time_out() {
        let store = Arc::new(InMemoryJobStore::default());
        let hub = hub(&store, 10);
        let (a, b) = (job(&store).await, job(&store).await);
        let a1 = tokio::spawn(hub.register(a).unwrap().ended_within(Duration::from_secs(10)));
        let a2 = tokio::spawn(hub.register(a).unwrap().ended_within(Duration::from_secs(10)));
        let b1 = tokio::spawn(hub.register(b).unwrap().ended_within(Duration::from_millis(500)));
        tokio::time::sleep(TICK * 3).await;
        assert_eq!((hub.stats().waiters, hub.stats().watched), (3, 2));
        fail(&store, &a).await;
        let ended = Instant::now();
        assert!(a1.await.unwrap() && a2.await.unwrap());
        assert!(ended.elapsed() < Duration::from_secs(2), "woken about a tick after: {:?}", ended.elapsed());
        assert!(!b1.await.unwrap(), "b never ended");
        // One read a tick for both jobs together, never one per waiter.
        let stats = hub.stats();
        assert_eq!(stats.reads, stats.ticks);
        assert_eq!((stats.waiters, stats.watched), (0, 0));
    }

    #[tokio::test]
    async fn the_task_runs_only_while_someone_waits() {
        let store = Arc::new(InMemoryJobStore::default());
        let hub = hub(&store, 10);
        let id = job(&store).await;
        assert!(!hub.stats().checking);
        assert!(!hub.register(id).unwrap().ended_within(TICK * 5).await);
        assert!(store.status_reads() >= 1);
        until_idle(&hub).await;
        let reads = store.status_reads();
        tokio::time::sleep(TICK * 10).await;
        assert_eq!(store.status_reads(), reads, "no reads with no waiter");
        // The next waiter starts it again.
        let waiter = hub.register(id).unwrap();
        assert!(hub.stats().checking);
        fail(&store, &id).await;
        assert!(waiter.ended_within(Duration::from_secs(10)).await);
        until_idle(&hub).await;
    }

    #[tokio::test]
    async fn past_the_cap_no_one_else_waits() {
        let store = Arc::new(InMemoryJobStore::default());
        let hub = hub(&store, 2);
        let id = job(&store).await;
        let (w1, w2) = (hub.register(id).unwrap(), hub.register(id).unwrap());
        assert!(hub.register(id).is_none());
        drop(w1);
        let w3 = hub.register(id).expect("a place came free");
        assert_eq!(hub.stats().waiters, 2);
        drop((w2, w3));
        assert_eq!(hub.stats(), WaitStats { checking: true, ..WaitStats::default() });
        assert!(WaitHub::new(store.clone(), WaitSettings { tick: TICK, max_waiters: 0 }).register(id).is_none());
    }

    #[tokio::test]
    async fn a_failing_read_is_tried_again_and_a_vanished_job_wakes_its_waiters() {
        let store = Arc::new(InMemoryJobStore::default());
        let hub = hub(&store, 10);
        let id = job(&store).await;
        let waiter = tokio::spawn(hub.register(id).unwrap().ended_within(Duration::from_secs(10)));
        store.set_down(true);
        tokio::time::sleep(TICK * 5).await;
        let failed = store.status_reads();
        assert!(failed >= 2, "{failed} reads while down");
        store.set_down(false);
        store.remove(&id).await.unwrap();
        assert!(waiter.await.unwrap());
    }

    #[tokio::test]
    async fn closing_wakes_everyone_and_refuses_new_waiters() {
        let store = Arc::new(InMemoryJobStore::default());
        let hub = hub(&store, 10);
        let id = job(&store).await;
        let waiter = tokio::spawn(hub.register(id).unwrap().ended_within(Duration::from_secs(10)));
        tokio::time::sleep(TICK).await;
        let closed = Instant::now();
        hub.close();
        assert!(waiter.await.unwrap());
        assert!(closed.elapsed() < Duration::from_secs(2));
        assert!(hub.register(id).is_none());
    }
}
