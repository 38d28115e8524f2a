//! Test harness: a private set of real resources per test.
//!
//! Each [`TestEnv`] makes its own MariaDB database, S3 bucket and SQS queues
//! (random names, so tests run side by side), wires the bucket's ObjectCreated
//! notifications to its two upload-events queues (`uploads/express/` and `uploads/bulk/`, each
//! to its own) like template.yaml does, and serves
//! the real API router on a random loopback port. Dropping it removes them.
//!
//! Endpoints: `AWS_ENDPOINT_URL` (default `http://127.0.0.1:4566`, LocalStack) and
//! `TEST_DATABASE_URL` (default `mysql://root@127.0.0.1:3306`).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use aws_sdk_s3::types::{
    Event, FilterRule, FilterRuleName, NotificationConfiguration, NotificationConfigurationFilter, QueueConfiguration,
    S3KeyFilter,
};
use aws_sdk_sqs::types::QueueAttributeName;
use mysql_async::prelude::Queryable;
use ocr_api::AppState;
use ocr_api::auth::Authenticator;
use ocr_api::config::Limits;
use ocr_api::state::Ports;
use ocr_api::upload::UploadHandler;
use ocr_aws::{MySqlJobStore, S3ObjectStore, SqsConsumer, SqsJobQueue};
use ocr_core::ports::SystemClock;
use rand::Rng;
use tokio::sync::watch;

pub mod images;
pub mod lambda;
pub mod wire;
pub mod worker;

/// The webhooks' master key in tests (the API shows each caller the key derived from it).
pub const WEBHOOK_SECRET: &str = "integration-webhook-secret";
pub const ALICE_TOKEN: &str = "alice-integration-token-0001";
pub const BOB_TOKEN: &str = "bob-integration-token-000002";
/// Callers whose names differ from `alice` only in case or accent: someone else entirely.
pub const ALICE_UPPER_TOKEN: &str = "Alice-integration-token-003";
pub const ALICE_ACCENT_TOKEN: &str = "alice-accent-integration-token-4";

/// What a test may change about its environment.
#[derive(Debug, Clone)]
pub struct Options {
    pub limits: Limits,
    /// Size limit of the on-upload handler (may differ from the API's to test the check).
    pub handler_max_upload_bytes: u64,
    /// Run the upload-event poller in the background.
    pub poller: bool,
    /// Visibility timeout of the express and bulk queues, in seconds.
    pub job_visibility_secs: u32,
    /// The server the test's database is made on.
    pub database: DatabaseServer,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            limits: Limits::default(),
            handler_max_upload_bytes: 20_000_000,
            poller: true,
            job_visibility_secs: 30,
            database: DatabaseServer::plain(),
        }
    }
}

/// URLs of one queue set.
#[derive(Debug, Clone)]
pub struct Queues {
    /// S3 events of `uploads/express/` objects.
    pub upload_events_express: String,
    /// S3 events of `uploads/bulk/` objects.
    pub upload_events_bulk: String,
    pub express: String,
    pub bulk: String,
    /// The dead-letter queues: upload-events' (shared by both upload-events queues), express's,
    /// bulk's.
    pub dlqs: Vec<String>,
}

impl Queues {
    /// The upload-events queue of `priority`'s uploads.
    pub fn upload_events(&self, priority: ocr_core::Priority) -> &str {
        match priority {
            ocr_core::Priority::Express => &self.upload_events_express,
            ocr_core::Priority::Bulk => &self.upload_events_bulk,
        }
    }

    /// Every queue of the set, the DLQs included.
    pub fn all(&self) -> Vec<String> {
        let mut all = vec![
            self.upload_events_express.clone(),
            self.upload_events_bulk.clone(),
            self.express.clone(),
            self.bulk.clone(),
        ];
        all.extend(self.dlqs.iter().cloned());
        all
    }
}

pub struct TestEnv {
    pub name: String,
    pub aws: aws_config::SdkConfig,
    pub s3: aws_sdk_s3::Client,
    pub sqs: aws_sdk_sqs::Client,
    pub bucket: String,
    pub queues: Queues,
    pub database_url: String,
    /// The server `database_url` is on (its CA, for a TLS one).
    pub database: DatabaseServer,
    pub store: Arc<MySqlJobStore>,
    pub objects: Arc<S3ObjectStore>,
    pub job_queue: Arc<SqsJobQueue>,
    pub uploads: UploadHandler,
    /// Base URL of the API, e.g. `http://127.0.0.1:41234`.
    pub api: String,
    pub http: reqwest::Client,
    pub job_visibility_secs: u32,
    stop: watch::Sender<bool>,
    server_db: String,
}

/// The tests' upload-event backoff: 1 s, then 2 s (production: 30 s doubling to 15 min).
pub fn quick_backoff() -> ocr_api::upload::Backoff {
    ocr_api::upload::Backoff { base: Duration::from_secs(1), max: Duration::from_secs(2) }
}

pub fn aws_endpoint() -> String {
    std::env::var("AWS_ENDPOINT_URL").unwrap_or_else(|_| "http://127.0.0.1:4566".into())
}

/// A MySQL-compatible server the tests make their databases on.
#[derive(Debug, Clone)]
pub struct DatabaseServer {
    /// `mysql://root@host:port`, with its query (`?require_ssl=true`) but no database.
    pub url: String,
    /// The private CA that signed a TLS server's certificate.
    pub ca_file: Option<std::path::PathBuf>,
}

impl DatabaseServer {
    /// `TEST_DATABASE_URL` (default `mysql://root@127.0.0.1:3306`): no TLS.
    pub fn plain() -> Self {
        let url = std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into());
        DatabaseServer { url, ca_file: None }
    }

    /// The private MariaDB that requires TLS (`TEST_TLS_DATABASE_URL`, `TEST_DATABASE_CA_FILE`;
    /// scripts/test.sh starts it, see scripts/lib/mariadb-tls.sh).
    pub fn tls() -> Self {
        let url = std::env::var("TEST_TLS_DATABASE_URL")
            .unwrap_or_else(|_| "mysql://root@127.0.0.1:3307?require_ssl=true".into());
        let ca = std::env::var_os("TEST_DATABASE_CA_FILE")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.run/mariadb-tls/ca.pem"));
        DatabaseServer { url, ca_file: Some(ca) }
    }

    /// `host:port` of this server.
    pub fn addr(&self) -> String {
        let rest = self.url.trim_start_matches("mysql://");
        let rest = rest.rsplit('@').next().unwrap_or(rest);
        rest.split(['/', '?']).next().unwrap_or(rest).to_owned()
    }

    /// The same server reached at `addr` (a proxy in front of it) instead.
    pub fn via(&self, addr: &str) -> DatabaseServer {
        DatabaseServer { url: self.url.replacen(self.addr().as_str(), addr, 1), ca_file: self.ca_file.clone() }
    }

    /// The URL of database `db` on this server.
    pub fn database_url(&self, db: &str) -> String {
        match self.url.split_once('?') {
            Some((server, query)) => format!("{}/{db}?{query}", server.trim_end_matches('/')),
            None => format!("{}/{db}", self.url.trim_end_matches('/')),
        }
    }

    /// A connection (to `db`, or to no database), trusting the server's CA.
    pub async fn connect(&self, db: Option<&str>) -> anyhow::Result<mysql_async::Conn> {
        ocr_aws::process::install_crypto_provider();
        let url = db.map_or_else(|| self.url.clone(), |db| self.database_url(db));
        let opts = mysql_async::Opts::from_url(&url)?;
        let ssl = ocr_aws::mysql::ssl_trusting(&opts, self.ca_file.as_deref());
        let opts = mysql_async::OptsBuilder::from_opts(opts).ssl_opts(ssl);
        mysql_async::Conn::new(opts).await.with_context(|| format!("connecting to {url}"))
    }
}

/// Shared AWS config pointing at LocalStack with its fixed credentials.
pub async fn aws_config() -> aws_config::SdkConfig {
    let creds = aws_sdk_s3::config::Credentials::new("test", "test", None, None, "integration-tests");
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(aws_endpoint())
        .region(aws_config::Region::new(std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".into())))
        .credentials_provider(creds)
        .load()
        .await
}

fn random_suffix() -> String {
    let n: u64 = rand::rng().random();
    format!("{n:016x}")
}

pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
}

impl TestEnv {
    pub async fn new() -> anyhow::Result<Self> {
        Self::with(Options::default()).await
    }

    pub async fn with(options: Options) -> anyhow::Result<Self> {
        init_logs();
        let name = format!("it-{}", random_suffix());
        let aws = aws_config().await;
        let s3 = aws_sdk_s3::Client::from_conf(aws_sdk_s3::config::Builder::from(&aws).force_path_style(true).build());
        let sqs = aws_sdk_sqs::Client::new(&aws);

        let database = options.database.clone();
        let (database_url, db_name) = create_database(&database, &name).await?;
        let store = Arc::new(MySqlJobStore::new(&database_url, 4, database.ca_file.as_deref())?);
        store.migrate().await?;

        let queues = create_queues(&sqs, &name, options.job_visibility_secs).await?;
        let bucket = format!("{name}-uploads");
        create_bucket(&s3, &sqs, &bucket, &queues).await?;

        let objects = Arc::new(S3ObjectStore::new(&aws, &bucket));
        let job_queue = Arc::new(SqsJobQueue::new(&aws, &queues.express, &queues.bulk));
        let auth = Authenticator::from_static_tokens(&format!(
            "{ALICE_TOKEN}:alice,{BOB_TOKEN}:bob,{ALICE_UPPER_TOKEN}:Alice,{ALICE_ACCENT_TOKEN}:alicé"
        ))
        .map_err(anyhow::Error::msg)?;
        let ports = Ports {
            store: store.clone(),
            objects: objects.clone(),
            queue: job_queue.clone(),
            clock: Arc::new(SystemClock),
            keys: store.clone(),
            statuses: store.clone(),
            wait_slots: store.clone(),
        };
        let state = AppState::new(ports.clone(), auth, options.limits.clone())
            .with_signing(ocr_core::signing::MasterKey::new(WEBHOOK_SECRET));
        let uploads = UploadHandler { ports, max_upload_bytes: options.handler_max_upload_bytes, max_pages: 50 };

        let (stop, stop_rx) = watch::channel(false);
        let api = serve_api(state, stop_rx.clone()).await?;
        if options.poller {
            let consumers = vec![
                (SqsConsumer::new(&aws, &queues.upload_events_express), 2),
                (SqsConsumer::new(&aws, &queues.upload_events_bulk), 4),
            ];
            let settings = ocr_api::poller::PollerSettings { backoff: quick_backoff(), dead_letters: None };
            tokio::spawn(ocr_api::poller::run(uploads.clone(), consumers, settings, stop_rx));
        }
        Ok(TestEnv {
            name,
            aws,
            s3,
            sqs,
            bucket,
            queues,
            database_url,
            database,
            store,
            objects,
            job_queue,
            uploads,
            api,
            http: reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?,
            job_visibility_secs: options.job_visibility_secs,
            stop,
            server_db: db_name,
        })
    }

    /// A request to the API as `token`.
    pub fn request(&self, method: reqwest::Method, path: &str, token: &str) -> reqwest::RequestBuilder {
        self.http.request(method, format!("{}{path}", self.api)).bearer_auth(token)
    }

    /// A proxy in front of this test's database server that the test can cut or freeze, and
    /// the URL of this test's database through it.
    pub async fn db_proxy(&self) -> anyhow::Result<(crate::worker::DbProxy, String)> {
        let proxy = crate::worker::DbProxy::start(&self.database.addr()).await?;
        let url = self.database.via(&format!("127.0.0.1:{}", proxy.port)).database_url(&self.server_db);
        Ok((proxy, url))
    }

    /// Messages on the queue at `url`, visible or in flight (LocalStack's counts are exact).
    pub async fn queue_total(&self, url: &str) -> anyhow::Result<u64> {
        let out = self
            .sqs
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await?;
        let attrs = out.attributes().cloned().unwrap_or_default();
        let get = |a: QueueAttributeName| attrs.get(&a).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        Ok(get(QueueAttributeName::ApproximateNumberOfMessages)
            + get(QueueAttributeName::ApproximateNumberOfMessagesNotVisible))
    }

    /// The ARN of the queue at `url` (what Lambda's SQS events name as `eventSourceARN`).
    pub async fn queue_arn(&self, url: &str) -> anyhow::Result<String> {
        queue_arn(&self.sqs, url).await
    }

    /// Receives (and deletes) everything now visible on a queue, waiting up to `wait_secs` for the first.
    pub async fn drain(&self, queue_url: &str, wait_secs: i32) -> anyhow::Result<Vec<String>> {
        let consumer = SqsConsumer::new(&self.aws, queue_url);
        let mut bodies = Vec::new();
        let mut wait = wait_secs;
        loop {
            let batch = consumer.receive(10, wait).await?;
            if batch.is_empty() {
                return Ok(bodies);
            }
            for m in batch {
                consumer.delete(&m.receipt_handle).await?;
                bodies.push(m.body);
            }
            wait = 1;
        }
    }

    /// Every message now on the queue with its `MessageGroupId` (the caller's fairness key),
    /// deleting them.
    pub async fn drain_groups(&self, queue_url: &str) -> anyhow::Result<Vec<(String, Option<String>)>> {
        use aws_sdk_sqs::types::MessageSystemAttributeName as Attr;
        let mut out = Vec::new();
        loop {
            let got = self
                .sqs
                .receive_message()
                .queue_url(queue_url)
                .max_number_of_messages(10)
                .wait_time_seconds(1)
                .message_system_attribute_names(Attr::MessageGroupId)
                .send()
                .await?;
            if got.messages().is_empty() {
                return Ok(out);
            }
            for m in got.messages() {
                self.sqs
                    .delete_message()
                    .queue_url(queue_url)
                    .set_receipt_handle(m.receipt_handle.clone())
                    .send()
                    .await?;
                let group = m.attributes().and_then(|a| a.get(&Attr::MessageGroupId)).cloned();
                out.push((m.body().unwrap_or_default().to_owned(), group));
            }
        }
    }

    /// Polls `GET /v1/jobs/{id}` until its status is `want` or `timeout` passes.
    pub async fn wait_for_status(&self, id: &str, want: &str, timeout: Duration) -> anyhow::Result<serde_json::Value> {
        self.wait_for_status_as(ALICE_TOKEN, id, want, timeout).await
    }

    /// [`TestEnv::wait_for_status`] as the caller holding `token`.
    pub async fn wait_for_status_as(
        &self,
        token: &str,
        id: &str,
        want: &str,
        timeout: Duration,
    ) -> anyhow::Result<serde_json::Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let job: serde_json::Value =
                self.request(reqwest::Method::GET, &format!("/v1/jobs/{id}"), token).send().await?.json().await?;
            if job["status"] == want {
                return Ok(job);
            }
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!("job {id} is {} after {timeout:?}, wanted {want}", job["status"]);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// PUTs `bytes` to a job's presigned `upload` (its signed headers, but Content-Length,
    /// which the client sets); returns S3's status.
    pub async fn put(&self, upload: &serde_json::Value, bytes: Vec<u8>) -> anyhow::Result<reqwest::StatusCode> {
        let mut request = self.http.put(upload["url"].as_str().context("upload url")?);
        for (name, value) in upload["headers"].as_object().context("upload headers")? {
            if name != "content-length" {
                request = request.header(name, value.as_str().context("header")?);
            }
        }
        Ok(request.body(bytes).send().await?.status())
    }

    /// A connection to this test's database (TLS and its CA when the server wants them).
    pub async fn db(&self) -> anyhow::Result<mysql_async::Conn> {
        self.database.connect(Some(&self.server_db)).await
    }

    /// Number of jobs rows in this test's database.
    pub async fn job_rows(&self) -> anyhow::Result<u64> {
        let mut conn = self.store.conn().await?;
        Ok(conn.query_first("SELECT COUNT(*) FROM jobs").await?.unwrap_or(0))
    }
}

/// A fresh database on `server`: its URL and name.
async fn create_database(server: &DatabaseServer, name: &str) -> anyhow::Result<(String, String)> {
    let db_name = format!("ocr_test_{}", name.replace('-', "_"));
    let mut admin = server.connect(None).await?;
    admin.query_drop(format!("CREATE DATABASE `{db_name}`")).await?;
    admin.disconnect().await?;
    Ok((server.database_url(&db_name), db_name))
}

/// The real router on a random loopback port until `stop`; returns its base URL.
async fn serve_api(state: AppState, mut stop: watch::Receiver<bool>) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let api = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move {
        let _ = axum::serve(listener, ocr_api::routes::router(state))
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await;
    });
    Ok(api)
}

async fn create_queues(sqs: &aws_sdk_sqs::Client, name: &str, job_visibility: u32) -> anyhow::Result<Queues> {
    let job_visibility = job_visibility.to_string();
    let mut dlqs = Vec::new();
    let mut urls = Vec::new();
    // As template.yaml: each priority's upload events on its own queue, both redriving to the
    // one upload-events DLQ.
    for (dlq, kinds) in [
        ("upload-events", &[("upload-events-express", "60"), ("upload-events-bulk", "60")][..]),
        ("express", &[("express", job_visibility.as_str())][..]),
        ("bulk", &[("bulk", job_visibility.as_str())][..]),
    ] {
        let dlq_url = create_queue(sqs, &format!("{name}-{dlq}-dlq"), &[]).await?;
        let redrive = serde_json::json!({"deadLetterTargetArn": queue_arn(sqs, &dlq_url).await?, "maxReceiveCount": 3})
            .to_string();
        for (kind, visibility) in kinds {
            let attributes =
                [(QueueAttributeName::VisibilityTimeout, *visibility), (QueueAttributeName::RedrivePolicy, &redrive)];
            urls.push(create_queue(sqs, &format!("{name}-{kind}"), &attributes).await?);
        }
        dlqs.push(dlq_url);
    }
    let [upload_events_express, upload_events_bulk, express, bulk] = <[String; 4]>::try_from(urls).expect("4 queues");
    Ok(Queues { upload_events_express, upload_events_bulk, express, bulk, dlqs })
}

async fn create_queue(
    sqs: &aws_sdk_sqs::Client,
    name: &str,
    attributes: &[(QueueAttributeName, &str)],
) -> anyhow::Result<String> {
    let mut request = sqs.create_queue().queue_name(name);
    for (key, value) in attributes {
        request = request.attributes(key.clone(), *value);
    }
    Ok(request.send().await?.queue_url().context("queue url")?.to_owned())
}

async fn queue_arn(sqs: &aws_sdk_sqs::Client, url: &str) -> anyhow::Result<String> {
    sqs.get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await?
        .attributes()
        .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
        .context("queue arn")
}

/// The bucket, its ObjectCreated events sent by prefix: `uploads/express/` to the express
/// upload-events queue, `uploads/bulk/` to the bulk one.
async fn create_bucket(
    s3: &aws_sdk_s3::Client,
    sqs: &aws_sdk_sqs::Client,
    bucket: &str,
    queues: &Queues,
) -> anyhow::Result<()> {
    s3.create_bucket().bucket(bucket).send().await?;
    let mut config = NotificationConfiguration::builder();
    for (prefix, url) in
        [("uploads/express/", &queues.upload_events_express), ("uploads/bulk/", &queues.upload_events_bulk)]
    {
        let filter = NotificationConfigurationFilter::builder()
            .key(
                S3KeyFilter::builder()
                    .filter_rules(FilterRule::builder().name(FilterRuleName::Prefix).value(prefix).build())
                    .build(),
            )
            .build();
        config = config.queue_configurations(
            QueueConfiguration::builder()
                .queue_arn(queue_arn(sqs, url).await?)
                .events(Event::from("s3:ObjectCreated:*"))
                .filter(filter)
                .build()?,
        );
    }
    s3.put_bucket_notification_configuration().bucket(bucket).notification_configuration(config.build()).send().await?;
    Ok(())
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        // Async clean-up from a synchronous Drop: a short-lived runtime on its own thread.
        let db = self.server_db.clone();
        let server = self.database.clone();
        let s3 = self.s3.clone();
        let sqs = self.sqs.clone();
        let bucket = self.bucket.clone();
        let queues = self.queues.all();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            rt.block_on(async move {
                if let Ok(mut conn) = server.connect(None).await {
                    let _ = conn.query_drop(format!("DROP DATABASE IF EXISTS `{db}`")).await;
                    let _ = conn.disconnect().await;
                }
                if let Ok(list) = s3.list_objects_v2().bucket(&bucket).send().await {
                    for o in list.contents() {
                        if let Some(k) = o.key() {
                            let _ = s3.delete_object().bucket(&bucket).key(k).send().await;
                        }
                    }
                }
                let _ = s3.delete_bucket().bucket(&bucket).send().await;
                for q in queues {
                    let _ = sqs.delete_queue().queue_url(q).send().await;
                }
            });
        })
        .join();
    }
}

/// A small but complete PNG (grey 8×8), made here so no test image is needed.
pub fn tiny_png() -> Vec<u8> {
    let img = image::GrayImage::from_pixel(8, 8, image::Luma([200]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).expect("encoding a PNG in memory");
    out.into_inner()
}
