//! Telling callers a job ended: a signed POST to the job's callback URL, retried with
//! backoff, recorded in the database, run off the engine's path.
//!
//! Body: `{"job_id", "status", "result_url"}`. Header
//! `Ocr-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">` with the caller's
//! own key (derived from `WEBHOOK_SECRET`, see `ocr_core::signing`; during a key rotation a
//! second `v1=` with the previous key); receivers recompute it and reject old timestamps.
//!
//! One caller's slow receiver cannot hold up the others: at most `per_host` deliveries to a
//! host run at once (a notification for a busy host stays owed and comes back through the
//! outbox sweep), name look-ups time out, and a receiver that fails keeps being retried through
//! the outbox, farther apart each time, for `retry_window` (24 h) before a final failure.

use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::FutureExt;
use ocr_core::retry::{self, Retryable};
use ocr_core::signing::{KeyState, MasterKey, WebhookKeys};
use ocr_core::worker::{ResultStore, WebhookRecord};
use ocr_core::{JobId, JobStatus};
use tokio::sync::{mpsc, watch};

use crate::metrics::Metrics;
use crate::now_ms;
use crate::ssrf::{Policy, Refusal, Resolver};

/// A job that ended and has a callback URL.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    pub job_id: JobId,
    /// The job's caller: its key signs the webhook.
    pub owner: String,
    pub status: JobStatus,
    pub callback_url: String,
    /// When the job first owed this webhook (epoch ms): retries stop `retry_window` later.
    pub owed_since_ms: i64,
}

/// Sends one POST to a vetted address. Injected so tests can prove a refused target is
/// never connected to.
#[async_trait]
pub trait Connector: Send + Sync {
    /// Returns the HTTP status, or why no response came.
    async fn post(
        &self,
        url: &url::Url,
        addr: SocketAddr,
        headers: &[(&str, String)],
        body: Bytes,
    ) -> Result<u16, String>;
}

/// reqwest, pinned to the vetted address, without redirects (a redirect could point
/// anywhere, past the check).
pub struct HttpConnector {
    pub timeout: Duration,
}

#[async_trait]
impl Connector for HttpConnector {
    async fn post(
        &self,
        url: &url::Url,
        addr: SocketAddr,
        headers: &[(&str, String)],
        body: Bytes,
    ) -> Result<u16, String> {
        let host = url.host_str().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_owned();
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(self.timeout)
            .resolve(&host, addr)
            .no_proxy()
            .build()
            .map_err(|e| e.to_string())?;
        let mut request = client.post(url.clone()).body(body);
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        // The error's text would include the URL (and its query): keep only its kind.
        let response = request.send().await.map_err(|e| {
            if e.is_timeout() {
                "timed out".to_owned()
            } else if e.is_connect() {
                "connection failed".to_owned()
            } else {
                "request failed".to_owned()
            }
        })?;
        Ok(response.status().as_u16())
    }
}

/// Why one POST did not deliver.
struct Failed {
    status: Option<u16>,
    error: String,
    /// Whether another try may succeed: no answer, a server error, 408 or 429; a receiver's
    /// other 4xx refuses it for good.
    retryable: bool,
}

/// Delivers notifications.
pub struct Webhooks {
    pub policy: Policy,
    pub resolver: Arc<dyn Resolver>,
    pub connector: Arc<dyn Connector>,
    pub store: Arc<dyn ResultStore>,
    pub metrics: Metrics,
    /// `WEBHOOK_SECRET`: the master key each caller's signing key derives from.
    pub master: MasterKey,
    /// Each caller's key generation (a rotation signs with two keys for a while).
    pub keys: Arc<dyn WebhookKeys>,
    /// Tries per delivery before it goes back to the outbox.
    pub max_attempts: u32,
    /// First retry delay within a delivery; doubles each time.
    pub backoff: Duration,
    pub result_url_base: String,
    /// How long a failing webhook keeps being retried through the outbox.
    pub retry_window: Duration,
    /// The outbox sweep's lease: a deferred webhook is owed again `lease` before its next try.
    pub lease: Duration,
}

/// What became of one notification.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivery {
    /// Settled: delivered, refused, or failed for good (recorded).
    Settled(WebhookRecord),
    /// Failed for now; owed again for another try at `retry_at_ms` (recorded as `retrying`).
    Deferred { record: WebhookRecord, retry_at_ms: i64 },
    /// Not tried (its caller's key could not be read): still owed, the sweep brings it back.
    Untried,
}

impl Webhooks {
    /// Tries to deliver `n`, then records the outcome (or that it will be tried again).
    pub async fn deliver(&self, n: &Notification) -> Delivery {
        let keys = match self.keys.key_state(&n.owner).await {
            Ok(keys) => keys,
            Err(e) => {
                tracing::warn!(job_id = %n.job_id, error = %e, "reading the caller's webhook key failed; the webhook stays owed");
                return Delivery::Untried;
            }
        };
        let record = self.attempt_all(n, &keys).await;
        let now = now_ms();
        let delivery = match (&record.outcome[..], retry_at(n.owed_since_ms, now, self.retry_window)) {
            ("retrying", Some(retry_at_ms)) => Delivery::Deferred { record, retry_at_ms },
            ("retrying", None) => Delivery::Settled(WebhookRecord { outcome: "failed".into(), ..record }),
            _ => Delivery::Settled(record),
        };
        self.record(n, &delivery).await;
        delivery
    }

    async fn record(&self, n: &Notification, delivery: &Delivery) {
        let result = match delivery {
            Delivery::Settled(record) => {
                self.metrics.webhook(match record.outcome.as_str() {
                    "delivered" => "delivered",
                    "refused" => "refused",
                    _ => "failed",
                });
                if record.outcome != "delivered" {
                    tracing::warn!(job_id = %n.job_id, outcome = %record.outcome, error = ?record.error, "webhook not delivered");
                }
                self.store.record_webhook(record).await
            }
            Delivery::Deferred { record, retry_at_ms } => {
                self.metrics.webhook("deferred");
                tracing::info!(job_id = %n.job_id, error = ?record.error, retry_in_secs = (retry_at_ms - now_ms()) / 1000, "webhook failed; retrying later");
                let owed_since = retry_at_ms - self.lease.as_millis() as i64;
                self.store.defer_webhook(record, owed_since).await
            }
            Delivery::Untried => Ok(()),
        };
        if let Err(e) = result {
            tracing::warn!(job_id = %n.job_id, error = %e, "recording a webhook outcome failed; it stays owed");
        }
    }

    async fn attempt_all(&self, n: &Notification, keys: &KeyState) -> WebhookRecord {
        let mut record = WebhookRecord {
            job_id: n.job_id,
            url: n.callback_url.clone(),
            outcome: "retrying".into(),
            attempts: 0,
            status_code: None,
            error: None,
            at_ms: now_ms(),
        };
        let (url, addr) = match self.target(n).await {
            Ok(target) => target,
            Err(Target::Refused(reason)) => {
                record.outcome = "refused".into();
                record.error = Some(reason);
                return record;
            }
            Err(Target::Unreachable(reason)) => {
                record.error = Some(reason);
                return record;
            }
        };
        let body = serde_json::json!({
            "job_id": n.job_id.to_string(),
            "status": n.status.as_str(),
            "result_url": format!("{}/v1/jobs/{}", self.result_url_base.trim_end_matches('/'), n.job_id),
        })
        .to_string();
        let attempts = std::sync::atomic::AtomicU32::new(0);
        let attempt = || async {
            attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.post_once(&url, addr, &body, &n.owner, keys).await
        };
        let schedule = retry::times(self.max_attempts.max(1), self.backoff, Duration::from_secs(300));
        let outcome = attempt.retry(schedule).when(|f: &Failed| f.retryable).await;
        record.attempts = attempts.into_inner();
        match outcome {
            Ok(status) => {
                record.outcome = "delivered".into();
                record.status_code = Some(status);
            }
            Err(f) => {
                // The receiver refused it for good (a 4xx other than 408/429): no more tries.
                if !f.retryable {
                    record.outcome = "failed".into();
                }
                record.status_code = f.status;
                record.error = Some(f.error);
            }
        }
        record.at_ms = now_ms();
        record
    }
}

/// When to try a failing webhook again: after half the time it has been owed, but at least
/// 1/1440 and at most 1/24 of the window (a minute and an hour for a day), unless that is past
/// the window (`None`: give up).
pub fn retry_at(owed_since_ms: i64, now_ms: i64, window: Duration) -> Option<i64> {
    let window_ms = window.as_millis() as i64;
    let owed_for = (now_ms - owed_since_ms).max(0);
    let delay = (owed_for / 2).clamp((window_ms / 1440).max(1), (window_ms / 24).max(1));
    let next = now_ms + delay;
    (next <= owed_since_ms + window_ms).then_some(next)
}

/// Why a notification has no address to go to.
enum Target {
    /// Never: not allowed or not a URL (settled as `refused`).
    Refused(String),
    /// Not now: the name did not resolve in time (tried again later).
    Unreachable(String),
}

impl Webhooks {
    /// Where to send `n`, vetted; or why it may not be sent (now or ever).
    async fn target(&self, n: &Notification) -> Result<(url::Url, SocketAddr), Target> {
        if self.master.is_empty() {
            return Err(Target::Refused("WEBHOOK_SECRET is not set, so webhooks cannot be signed".into()));
        }
        let url = url::Url::parse(&n.callback_url).map_err(|e| Target::Refused(format!("invalid URL: {e}")))?;
        match self.policy.vet(&url, self.resolver.as_ref()).await {
            Ok(addr) => Ok((url, addr)),
            // A name that does not resolve (or not in time) may resolve later.
            Err(refusal @ Refusal::NoAddress(_)) => Err(Target::Unreachable(refusal.to_string())),
            Err(refusal) => {
                tracing::warn!(job_id = %n.job_id, reason = %refusal, "webhook target refused");
                Err(Target::Refused(refusal.to_string()))
            }
        }
    }

    /// One POST, signed with the caller's current key(s) (a fresh timestamp each time).
    async fn post_once(
        &self,
        url: &url::Url,
        addr: SocketAddr,
        body: &str,
        owner: &str,
        keys: &KeyState,
    ) -> Result<u16, Failed> {
        let signature = self.master.signature_header(owner, keys, now_ms() / 1000, body.as_bytes());
        let headers = [
            ("content-type", "application/json".to_owned()),
            ("ocr-signature", signature),
            ("user-agent", "ocr-fleet-webhook/1".to_owned()),
        ];
        match self.connector.post(url, addr, &headers, Bytes::from(body.to_owned())).await {
            Ok(status) if (200..300).contains(&status) => Ok(status),
            Ok(status) => Err(Failed {
                status: Some(status),
                error: format!("HTTP {status}"),
                retryable: !(400..500).contains(&status) || status == 408 || status == 429,
            }),
            Err(error) => Err(Failed { status: None, error, retryable: true }),
        }
    }
}

/// The outbox sweep: every `every`, takes notifications owed for longer than `lease` (a
/// worker died between writing a result and recording its webhook, or its queue was full)
/// and queues them again, until `stop` turns true. Delivery is at least once: a receiver may
/// see a job's webhook twice and should key on `job_id`.
pub async fn sweep(
    store: Arc<dyn ResultStore>,
    tx: mpsc::Sender<Notification>,
    every: Duration,
    lease: Duration,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        if crate::sleep_or_stop(every, &mut stop).await {
            return;
        }
        let now = now_ms();
        let owed_before = now - lease.as_millis() as i64;
        match store.claim_notifications(owed_before, now, 100).await {
            Ok(owed) => {
                if !owed.is_empty() {
                    tracing::info!(count = owed.len(), "re-sending owed webhooks");
                }
                for o in owed {
                    tracing::info!(job_id = %o.job_id, "webhook owed; queued again");
                    let n = Notification {
                        job_id: o.job_id,
                        owner: o.owner,
                        status: o.status,
                        callback_url: o.callback_url,
                        owed_since_ms: o.first_owed_ms,
                    };
                    if tx.send(n).await.is_err() {
                        return;
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "looking for owed webhooks failed"),
        }
    }
}

/// Most notifications waiting for one host; beyond that they stay owed for the sweep.
const WAITING_PER_HOST: usize = 1_000;

/// Runs deliveries from `rx` with at most `concurrency` at once and at most `per_host` to any
/// one host, until the channel closes and every started delivery has finished. Notifications
/// wait per host and hosts take turns, so a receiver that never answers holds `per_host`
/// slots, never the others'; past [`WAITING_PER_HOST`] waiting for one host, a notification is
/// left owed and the outbox sweep brings it back later.
pub async fn run(webhooks: Arc<Webhooks>, mut rx: mpsc::Receiver<Notification>, concurrency: usize, per_host: usize) {
    let mut queues = HostQueues::new(per_host);
    let mut tasks: tokio::task::JoinSet<String> = tokio::task::JoinSet::new();
    let mut open = true;
    loop {
        while tasks.len() < concurrency.max(1) {
            let Some((host, n)) = queues.next_ready() else { break };
            let webhooks = webhooks.clone();
            // The host is handed back even when a delivery panics: its slot must come free,
            // or a few panics would block that host until the process restarts.
            tasks.spawn(async move {
                if AssertUnwindSafe(webhooks.deliver(&n)).catch_unwind().await.is_err() {
                    tracing::error!(job_id = %n.job_id, "a webhook delivery panicked; the webhook stays owed");
                }
                host
            });
        }
        tokio::select! {
            n = rx.recv(), if open => match n {
                Some(n) => {
                    if let Err(n) = queues.push(n) {
                        webhooks.metrics.webhook("host_busy");
                        tracing::info!(job_id = %n.job_id, "too many webhooks wait for this host; the sweep sends it later");
                    }
                }
                None => open = false,
            },
            Some(done) = tasks.join_next() => {
                if let Ok(host) = done {
                    queues.finished(&host);
                }
            }
            else => break,
        }
    }
}

/// Notifications waiting per host (`host:port`), and deliveries under way per host.
struct HostQueues {
    per_host: usize,
    waiting: std::collections::HashMap<String, std::collections::VecDeque<Notification>>,
    busy: std::collections::HashMap<String, usize>,
    /// Hosts with waiting notifications, in turn order.
    turns: std::collections::VecDeque<String>,
}

impl HostQueues {
    fn new(per_host: usize) -> Self {
        HostQueues {
            per_host: per_host.max(1),
            waiting: Default::default(),
            busy: Default::default(),
            turns: Default::default(),
        }
    }

    /// Queues `n` behind its host, or hands it back when that host has too many waiting.
    fn push(&mut self, n: Notification) -> Result<(), Notification> {
        let host = host_of(&n.callback_url);
        let queue = self.waiting.entry(host.clone()).or_default();
        if queue.len() >= WAITING_PER_HOST {
            return Err(n);
        }
        if queue.is_empty() {
            self.turns.push_back(host);
        }
        queue.push_back(n);
        Ok(())
    }

    /// The next notification whose host has a free slot, hosts taking turns.
    fn next_ready(&mut self) -> Option<(String, Notification)> {
        for _ in 0..self.turns.len() {
            let host = self.turns.pop_front()?;
            if self.busy.get(&host).copied().unwrap_or(0) >= self.per_host {
                self.turns.push_back(host);
                continue;
            }
            let queue = self.waiting.get_mut(&host)?;
            let n = queue.pop_front()?;
            if queue.is_empty() {
                self.waiting.remove(&host);
            } else {
                self.turns.push_back(host.clone());
            }
            *self.busy.entry(host.clone()).or_default() += 1;
            return Some((host, n));
        }
        None
    }

    fn finished(&mut self, host: &str) {
        if let Some(n) = self.busy.get_mut(host) {
            *n -= 1;
            if *n == 0 {
                self.busy.remove(host);
            }
        }
    }
}

/// `host:port` of a callback URL (lower case), the unit the per-host bound counts.
fn host_of(url: &str) -> String {
    url::Url::parse(url)
        .ok()
        .map(|u| {
            format!(
                "{}:{}",
                u.host_str().unwrap_or_default().to_ascii_lowercase(),
                u.port_or_known_default().unwrap_or(0)
            )
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use ocr_core::fakes::InMemoryJobStore;

    use super::*;
    use crate::ssrf::Policy;

    const MASTER: &str = "s3cret";

    /// The record of a settled delivery (the test fails on any other).
    fn settled(d: Delivery) -> WebhookRecord {
        match d {
            Delivery::Settled(record) => record,
            other => panic!("not settled: {other:?}"),
        }
    }

    #[test]
    fn failing_webhooks_are_retried_farther_apart_for_the_window_only() {
        let day = Duration::from_secs(24 * 3600);
        let min = 60_000;
        assert_eq!(retry_at(0, 1_000, day), Some(1_000 + min), "first retry after a minute");
        assert_eq!(retry_at(0, 10 * min, day), Some(15 * min), "after half the time owed so far");
        assert_eq!(retry_at(0, 5 * 3_600_000, day), Some(6 * 3_600_000), "at most an hour apart");
        assert_eq!(retry_at(0, 23 * 3_600_000 + 30 * min, day), None, "past the window: give up");
        // A shorter window (tests) scales the same way.
        assert_eq!(retry_at(0, 0, Duration::from_secs(240)), Some(166));
    }

    /// A receiver that never answers holds its host's slots only: the others' webhooks go out.
    #[tokio::test]
    async fn a_receiver_that_never_answers_stalls_only_its_own_webhooks() {
        struct Hang;
        #[async_trait]
        impl Connector for Hang {
            async fn post(&self, url: &url::Url, _: SocketAddr, _: &[(&str, String)], _: Bytes) -> Result<u16, String> {
                if url.host_str() == Some("slow.example") {
                    std::future::pending::<()>().await;
                }
                Ok(200)
            }
        }
        let store = Arc::new(InMemoryJobStore::default());
        let mut w = webhooks_with(Arc::new(RecordingConnector::default()), "", store.clone());
        w.connector = Arc::new(Hang);
        let mut table = HashMap::new();
        table.insert("slow.example".to_owned(), vec!["93.184.216.34:443".parse().unwrap()]);
        table.insert("public.example".to_owned(), vec!["93.184.216.35:443".parse().unwrap()]);
        w.resolver = Arc::new(TableResolver(table));
        let (tx, rx) = mpsc::channel(100);
        let runner = tokio::spawn(run(Arc::new(w), rx, 4, 2));
        for i in 0..20 {
            let host = if i % 2 == 0 { "slow.example" } else { "public.example" };
            tx.send(note(&format!("https://{host}/hook"))).await.unwrap();
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while store.webhooks().len() < 10 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let records = store.webhooks();
        assert_eq!(records.len(), 10, "the ten for the answering host, none for the hanging one: {records:?}");
        assert!(records.iter().all(|r| r.outcome == "delivered" && r.url.contains("public.example")));
        runner.abort();
    }

    #[tokio::test]
    async fn a_delivery_that_panics_frees_its_hosts_slot() {
        /// Panics on its first call, then answers 200.
        #[derive(Default)]
        struct PanicOnce(std::sync::atomic::AtomicBool);
        #[async_trait]
        impl Connector for PanicOnce {
            async fn post(&self, _: &url::Url, _: SocketAddr, _: &[(&str, String)], _: Bytes) -> Result<u16, String> {
                if !self.0.swap(true, std::sync::atomic::Ordering::SeqCst) {
                    panic!("a bug in a delivery");
                }
                Ok(200)
            }
        }
        let store = Arc::new(InMemoryJobStore::default());
        let mut w = webhooks_with(Arc::new(RecordingConnector::default()), "", store.clone());
        w.connector = Arc::new(PanicOnce::default());
        let (tx, rx) = mpsc::channel(10);
        // One slot for the host: were the panicking delivery's slot never freed, nothing after it
        // would be sent there.
        let runner = tokio::spawn(run(Arc::new(w), rx, 4, 1));
        for _ in 0..3 {
            tx.send(note("https://public.example/hook")).await.unwrap();
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while store.webhooks().len() < 2 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let records = store.webhooks();
        assert_eq!(records.len(), 2, "the two after the panic: {records:?}");
        assert!(records.iter().all(|r| r.outcome == "delivered"));
        runner.abort();
    }

    /// Names to addresses from a table; nothing touches the network.
    struct TableResolver(HashMap<String, Vec<SocketAddr>>);

    #[async_trait]
    impl Resolver for TableResolver {
        async fn resolve(&self, host: &str, _port: u16) -> std::io::Result<Vec<SocketAddr>> {
            self.0.get(host).cloned().ok_or_else(|| std::io::Error::other("no such host"))
        }
    }

    /// One call a [`RecordingConnector`] saw: URL, address, headers.
    type Call = (String, SocketAddr, Vec<(String, String)>);

    /// Records calls instead of making them; answers with a scripted status.
    #[derive(Default)]
    struct RecordingConnector {
        calls: Mutex<Vec<Call>>,
        statuses: Mutex<Vec<u16>>,
    }

    #[async_trait]
    impl Connector for RecordingConnector {
        async fn post(
            &self,
            url: &url::Url,
            addr: SocketAddr,
            headers: &[(&str, String)],
            _: Bytes,
        ) -> Result<u16, String> {
            let headers = headers.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
            self.calls.lock().unwrap().push((url.to_string(), addr, headers));
            Ok(self.statuses.lock().unwrap().pop().unwrap_or(200))
        }
    }

    fn webhooks(connector: Arc<RecordingConnector>, allow: &str) -> Webhooks {
        webhooks_with(connector, allow, Arc::new(InMemoryJobStore::default()))
    }

    fn webhooks_with(connector: Arc<RecordingConnector>, allow: &str, store: Arc<InMemoryJobStore>) -> Webhooks {
        let mut table = HashMap::new();
        let public: SocketAddr = "93.184.216.34:443".parse().unwrap();
        table.insert("public.example".to_owned(), vec![public]);
        table.insert("sneaky.example".to_owned(), vec![public, "10.0.0.5:443".parse().unwrap()]);
        table.insert("metadata.example".to_owned(), vec!["169.254.169.254:80".parse().unwrap()]);
        table.insert("v6local.example".to_owned(), vec!["[fd00:ec2::254]:443".parse().unwrap()]);
        table.insert("localhost".to_owned(), vec!["127.0.0.1:80".parse().unwrap()]);
        // Metadata and loopback behind NAT64, IPv4-mapped IPv6 and the shared (CGNAT) range.
        table.insert("nat64.example".to_owned(), vec!["[64:ff9b::a9fe:a9fe]:80".parse().unwrap()]);
        table.insert("mapped.example".to_owned(), vec!["[::ffff:127.0.0.1]:443".parse().unwrap()]);
        table.insert("cgnat.example".to_owned(), vec!["100.64.1.1:443".parse().unwrap()]);
        Webhooks {
            policy: Policy::new(allow.parse().unwrap()),
            resolver: Arc::new(TableResolver(table)),
            connector,
            store,
            metrics: Metrics::new(),
            master: MasterKey::new(MASTER),
            keys: Arc::new(InMemoryJobStore::default()),
            max_attempts: 3,
            backoff: Duration::from_millis(1),
            result_url_base: "https://api.example".into(),
            retry_window: Duration::from_secs(24 * 3600),
            lease: Duration::from_secs(300),
        }
    }

    fn note(url: &str) -> Notification {
        Notification {
            job_id: JobId::new(),
            owner: "alice".into(),
            status: JobStatus::Succeeded,
            callback_url: url.into(),
            owed_since_ms: now_ms(),
        }
    }

    #[tokio::test]
    async fn refused_targets_are_never_connected() {
        let connector = Arc::new(RecordingConnector::default());
        let store = Arc::new(InMemoryJobStore::default());
        let w = webhooks_with(connector.clone(), "", store.clone());
        let urls = [
            "http://127.0.0.1/hook",
            "http://localhost/hook",
            "http://10.1.2.3/hook",
            "http://172.16.5.4/hook",
            "http://192.168.0.10/hook",
            "http://169.254.169.254/latest/meta-data/",
            "http://metadata.example/",
            "https://sneaky.example/hook",
            "https://v6local.example/hook",
            "http://[::1]/hook",
            "http://[fe80::1]/hook",
            "http://[::ffff:10.0.0.1]/hook",
            "http://0.0.0.0/hook",
            // Other spellings of 127.0.0.1 that the URL parser normalises.
            "http://2130706433/hook",
            "http://0x7f.1/hook",
            "http://[::ffff:7f00:1]/hook",
            "https://nat64.example/hook",
            "https://mapped.example/hook",
            "https://cgnat.example/hook",
            "ftp://public.example/hook",
        ];
        for url in urls {
            let record = settled(w.deliver(&note(url)).await);
            assert_eq!(record.outcome, "refused", "{url}: {record:?}");
            assert_eq!(record.attempts, 0);
        }
        // A name that does not resolve may resolve later: tried again, never connected now.
        let later = w.deliver(&note("https://unknown.example/hook")).await;
        assert!(matches!(later, Delivery::Deferred { ref record, .. } if record.attempts == 0), "{later:?}");
        assert!(connector.calls.lock().unwrap().is_empty(), "the connector must never be called");
        let recorded = store.webhooks();
        assert_eq!(recorded.len(), urls.len() + 1, "every refusal and try is recorded");
        assert!(recorded.iter().take(urls.len()).all(|r| r.outcome == "refused" && r.error.is_some()));
    }

    #[tokio::test]
    async fn public_targets_get_a_signed_post_at_the_vetted_address() {
        let connector = Arc::new(RecordingConnector::default());
        let w = webhooks(connector.clone(), "");
        let record = settled(w.deliver(&note("https://public.example/hook?x=1")).await);
        assert_eq!(record.outcome, "delivered");
        let calls = connector.calls.lock().unwrap();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].1, "93.184.216.34:443".parse().unwrap());
        let sig = calls[0].2.iter().find(|(k, _)| k == "ocr-signature").unwrap();
        assert!(sig.1.starts_with("t=") && sig.1.matches(",v1=").count() == 1, "{}", sig.1);
    }

    /// Each caller's webhooks are signed with that caller's key: another caller's key (which
    /// that caller can read from the API) never verifies them.
    #[tokio::test]
    async fn webhooks_are_signed_with_their_callers_key_only() {
        use ocr_core::signing::verify;

        struct Body(Mutex<Vec<(String, Bytes)>>);
        #[async_trait]
        impl Connector for Body {
            async fn post(&self, _: &url::Url, _: SocketAddr, h: &[(&str, String)], b: Bytes) -> Result<u16, String> {
                let sig = h.iter().find(|(k, _)| *k == "ocr-signature").map(|(_, v)| v.clone()).unwrap_or_default();
                self.0.lock().unwrap().push((sig, b));
                Ok(200)
            }
        }
        let bodies = Arc::new(Body(Mutex::new(Vec::new())));
        let keys = Arc::new(InMemoryJobStore::default());
        let mut w = webhooks(Arc::new(RecordingConnector::default()), "");
        w.connector = bodies.clone();
        w.keys = keys.clone();
        let master = MasterKey::new(MASTER);
        for owner in ["alice", "bob"] {
            let n = Notification { owner: owner.into(), ..note("https://public.example/hook") };
            assert_eq!(settled(w.deliver(&n).await).outcome, "delivered");
        }
        // bob rotates: his next webhook carries both his keys, still none of alice's.
        keys.rotate_key("bob", Duration::from_secs(3600), now_ms()).await.unwrap();
        let n = Notification { owner: "bob".into(), ..note("https://public.example/hook") };
        assert_eq!(settled(w.deliver(&n).await).outcome, "delivered");
        let sent = bodies.0.lock().unwrap().clone();
        let (alice, bob, bob_rotated) = (&sent[0], &sent[1], &sent[2]);
        let key = |owner, g| master.caller_key(owner, g);
        assert!(verify(&key("alice", 1), &alice.0, &alice.1));
        assert!(!verify(&key("bob", 1), &alice.0, &alice.1), "bob's key verified alice's webhook");
        assert!(verify(&key("bob", 1), &bob.0, &bob.1));
        assert!(!verify(&key("alice", 1), &bob.0, &bob.1), "alice's key verified bob's webhook");
        assert!(
            verify(&key("bob", 2), &bob_rotated.0, &bob_rotated.1)
                && verify(&key("bob", 1), &bob_rotated.0, &bob_rotated.1)
        );
        assert!(
            !verify(&key("alice", 1), &bob_rotated.0, &bob_rotated.1)
                && !verify(&key("alice", 2), &bob_rotated.0, &bob_rotated.1)
        );
    }

    #[tokio::test]
    async fn retries_server_errors_but_not_client_errors() {
        let connector = Arc::new(RecordingConnector::default());
        *connector.statuses.lock().unwrap() = vec![200, 503, 500]; // popped from the end
        let w = webhooks(connector.clone(), "");
        let record = settled(w.deliver(&note("https://public.example/hook")).await);
        assert_eq!((record.outcome.as_str(), record.attempts), ("delivered", 3));

        let connector = Arc::new(RecordingConnector::default());
        *connector.statuses.lock().unwrap() = vec![200, 410];
        let w = webhooks(connector.clone(), "");
        let record = settled(w.deliver(&note("https://public.example/hook")).await);
        assert_eq!((record.outcome.as_str(), record.attempts, record.status_code), ("failed", 1, Some(410)));
    }

    #[tokio::test]
    async fn allow_list_admits_a_listed_loopback_receiver_only() {
        let connector = Arc::new(RecordingConnector::default());
        let w = webhooks(connector.clone(), "127.0.0.1:18080");
        assert_eq!(settled(w.deliver(&note("http://127.0.0.1:18080/hook")).await).outcome, "delivered");
        assert_eq!(settled(w.deliver(&note("http://127.0.0.1:18081/hook")).await).outcome, "refused");
        assert_eq!(connector.calls.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn an_owed_webhook_outlives_the_worker_that_owed_it() {
        use ocr_core::Job;
        use ocr_core::fakes::InMemoryJobStore;
        use ocr_core::worker::ResultStore;

        let store = Arc::new(InMemoryJobStore::default());
        let mut job = Job::from_new(ocr_core::NewJob {
            id: JobId::new(),
            owner: "alice".into(),
            priority: ocr_core::Priority::Bulk,
            content_type: ocr_core::ContentType::Png,
            content_length: 10,
            callback_url: Some("https://public.example/hook".into()),
            metadata: None,
            idempotency: None,
            created_at_ms: 0,
        });
        job.queued_at_ms = Some(0);
        let id = job.id;
        store.insert_queued(job);
        store.take(&[id], 1_000).await.unwrap();
        // The result is written (the webhook is owed from then on); the worker dies before
        // it notifies anyone.
        let result = ocr_core::OcrResult::image(1, 1, vec![], 0.0);
        assert_eq!(store.complete(&[(id, result)], 2_000).await.unwrap(), vec![id]);
        assert_eq!(store.owed_notifications(), vec![id]);
        // Not before its lease has passed.
        assert!(store.claim_notifications(1_999, 5_000, 10).await.unwrap().is_empty());

        // Another worker's sweep (lease 0 here) finds it and the delivery settles it.
        let connector = Arc::new(RecordingConnector::default());
        let w = Arc::new(webhooks_with(connector.clone(), "", store.clone()));
        let (tx, rx) = mpsc::channel(8);
        let (stop_tx, stop_rx) = watch::channel(false);
        let sweeper = tokio::spawn(sweep(store.clone(), tx, Duration::from_millis(5), Duration::ZERO, stop_rx));
        let runner = tokio::spawn(run(w, rx, 2, 2));
        for _ in 0..200 {
            if !store.webhooks().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        stop_tx.send(true).unwrap();
        sweeper.await.unwrap();
        runner.await.unwrap();
        let records = store.webhooks();
        assert_eq!(records.len(), 1, "{records:?}");
        assert_eq!((records[0].job_id, records[0].outcome.as_str()), (id, "delivered"));
        assert_eq!(connector.calls.lock().unwrap().len(), 1);
        assert!(store.owed_notifications().is_empty(), "delivered, so nothing is owed");
    }
}
