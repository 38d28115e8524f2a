//! Telling callers a job ended: a signed POST to the job's callback URL, retried with
//! backoff, recorded in the database, run off the engine's path.
//!
//! Body: `{"job_id", "status", "result_url"}`. Header
//! `Ocr-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">` with the
//! shared `WEBHOOK_SECRET`; receivers recompute it and reject old timestamps.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use ocr_core::retry::{self, Retryable};
use ocr_core::worker::{ResultStore, WebhookRecord};
use ocr_core::{JobId, JobStatus};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use tokio::sync::{Semaphore, mpsc, watch};

use crate::metrics::Metrics;
use crate::now_ms;
use crate::ssrf::{Policy, Resolver};

/// A job that ended and has a callback URL.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    pub job_id: JobId,
    pub status: JobStatus,
    pub callback_url: String,
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

/// `t=<t>,v1=<hex>`: HMAC-SHA256 over `"<t>.<body>"`.
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("t={timestamp},v1={}", hex::encode(mac.finalize().into_bytes()))
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
    /// `WEBHOOK_SECRET`: the HMAC key.
    pub secret: SecretString,
    pub max_attempts: u32,
    /// First retry delay; doubles each time.
    pub backoff: Duration,
    pub result_url_base: String,
}

impl Webhooks {
    /// Tries to deliver `n`, then records the outcome.
    pub async fn deliver(&self, n: &Notification) -> WebhookRecord {
        let record = self.attempt_all(n).await;
        self.metrics.webhook(match record.outcome.as_str() {
            "delivered" => "delivered",
            "refused" => "refused",
            _ => "failed",
        });
        if let Err(e) = self.store.record_webhook(&record).await {
            tracing::warn!(job_id = %n.job_id, error = %e, "recording a webhook outcome failed");
        }
        record
    }

    async fn attempt_all(&self, n: &Notification) -> WebhookRecord {
        let mut record = WebhookRecord {
            job_id: n.job_id,
            url: n.callback_url.clone(),
            outcome: "failed".into(),
            attempts: 0,
            status_code: None,
            error: None,
            at_ms: now_ms(),
        };
        let (url, addr) = match self.target(n).await {
            Ok(target) => target,
            Err(reason) => {
                record.outcome = "refused".into();
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
            self.post_once(&url, addr, &body).await
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
                record.status_code = f.status;
                record.error = Some(f.error);
            }
        }
        record.at_ms = now_ms();
        if record.outcome != "delivered" {
            tracing::warn!(job_id = %n.job_id, attempts = record.attempts, error = ?record.error, "webhook not delivered");
        }
        record
    }
}

impl Webhooks {
    /// Where to send `n`, vetted; or why it may not be sent at all.
    async fn target(&self, n: &Notification) -> Result<(url::Url, SocketAddr), String> {
        if self.secret.expose_secret().is_empty() {
            return Err("WEBHOOK_SECRET is not set, so webhooks cannot be signed".into());
        }
        let url = url::Url::parse(&n.callback_url).map_err(|e| format!("invalid URL: {e}"))?;
        match self.policy.vet(&url, self.resolver.as_ref()).await {
            Ok(addr) => Ok((url, addr)),
            Err(refusal) => {
                tracing::warn!(job_id = %n.job_id, reason = %refusal, "webhook target refused");
                Err(refusal.to_string())
            }
        }
    }

    /// One signed POST (a fresh timestamp each time).
    async fn post_once(&self, url: &url::Url, addr: SocketAddr, body: &str) -> Result<u16, Failed> {
        let headers = [
            ("content-type", "application/json".to_owned()),
            ("ocr-signature", signature(self.secret.expose_secret().as_bytes(), now_ms() / 1000, body.as_bytes())),
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
                    let n = Notification { job_id: o.job_id, status: o.status, callback_url: o.callback_url };
                    if tx.send(n).await.is_err() {
                        return;
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "looking for owed webhooks failed"),
        }
    }
}

/// Runs deliveries from `rx` with at most `concurrency` at once, until the channel closes
/// and every started delivery has finished.
pub async fn run(webhooks: Arc<Webhooks>, mut rx: mpsc::Receiver<Notification>, concurrency: usize) {
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    while let Some(n) = rx.recv().await {
        let permit = permits.clone().acquire_owned().await.expect("semaphore never closed");
        let webhooks = webhooks.clone();
        tasks.spawn(async move {
            let _permit = permit;
            webhooks.deliver(&n).await;
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use ocr_core::fakes::InMemoryJobStore;

    use super::*;
    use crate::ssrf::Policy;

    #[test]
    fn signature_is_stable() {
        // Same inputs, same output; any change in body or time changes it.
        let a = signature(b"k", 1_700_000_000, b"{}");
        assert_eq!(a, signature(b"k", 1_700_000_000, b"{}"));
        assert!(a.starts_with("t=1700000000,v1="));
        assert_ne!(a, signature(b"k", 1_700_000_001, b"{}"));
        assert_ne!(a, signature(b"k", 1_700_000_000, b"{ }"));
        assert_ne!(a, signature(b"other", 1_700_000_000, b"{}"));
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
            secret: SecretString::from("s3cret"),
            max_attempts: 3,
            backoff: Duration::from_millis(1),
            result_url_base: "https://api.example".into(),
        }
    }

    fn note(url: &str) -> Notification {
        Notification { job_id: JobId::new(), status: JobStatus::Succeeded, callback_url: url.into() }
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
            "https://unknown.example/hook",
        ];
        for url in urls {
            let record = w.deliver(&note(url)).await;
            assert_eq!(record.outcome, "refused", "{url}: {record:?}");
            assert_eq!(record.attempts, 0);
        }
        assert!(connector.calls.lock().unwrap().is_empty(), "the connector must never be called");
        let recorded = store.webhooks();
        assert_eq!(recorded.len(), urls.len(), "every refusal is recorded");
        assert!(recorded.iter().all(|r| r.outcome == "refused" && r.error.is_some()));
    }

    #[tokio::test]
    async fn public_targets_get_a_signed_post_at_the_vetted_address() {
        let connector = Arc::new(RecordingConnector::default());
        let w = webhooks(connector.clone(), "");
        let record = w.deliver(&note("https://public.example/hook?x=1")).await;
        assert_eq!(record.outcome, "delivered");
        let calls = connector.calls.lock().unwrap();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].1, "93.184.216.34:443".parse().unwrap());
        let sig = calls[0].2.iter().find(|(k, _)| k == "ocr-signature").unwrap();
        assert!(sig.1.starts_with("t=") && sig.1.contains(",v1="));
    }

    #[tokio::test]
    async fn retries_server_errors_but_not_client_errors() {
        let connector = Arc::new(RecordingConnector::default());
        *connector.statuses.lock().unwrap() = vec![200, 503, 500]; // popped from the end
        let w = webhooks(connector.clone(), "");
        let record = w.deliver(&note("https://public.example/hook")).await;
        assert_eq!((record.outcome.as_str(), record.attempts), ("delivered", 3));

        let connector = Arc::new(RecordingConnector::default());
        *connector.statuses.lock().unwrap() = vec![200, 410];
        let w = webhooks(connector.clone(), "");
        let record = w.deliver(&note("https://public.example/hook")).await;
        assert_eq!((record.outcome.as_str(), record.attempts, record.status_code), ("failed", 1, Some(410)));
    }

    #[tokio::test]
    async fn allow_list_admits_a_listed_loopback_receiver_only() {
        let connector = Arc::new(RecordingConnector::default());
        let w = webhooks(connector.clone(), "127.0.0.1:18080");
        assert_eq!(w.deliver(&note("http://127.0.0.1:18080/hook")).await.outcome, "delivered");
        assert_eq!(w.deliver(&note("http://127.0.0.1:18081/hook")).await.outcome, "refused");
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
        let result = ocr_core::OcrResult { text: "x".into(), lines: vec![], width: 1, height: 1, seconds: 0.0 };
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
        let runner = tokio::spawn(run(w, rx, 2));
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
