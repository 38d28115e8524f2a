//! Running the real `gpu-worker` binary against a [`TestEnv`], and the things worker
//! tests need around it: a webhook receiver, a database proxy that can be cut, and
//! images with known text.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::TestEnv;

pub use crate::images::line_images;

/// Whether the model files are present; with `OCR_REQUIRE_MODELS=1` (as scripts/test.sh sets)
/// their absence is an error, else tests that need them say why they skip.
pub fn models_available() -> bool {
    let present = std::env::var_os("ORT_DYLIB_PATH").is_some_and(|p| PathBuf::from(p).is_file())
        && std::env::var_os("OCR_MODEL_DIR").is_some_and(|p| PathBuf::from(p).is_dir());
    if !present {
        assert!(
            std::env::var("OCR_REQUIRE_MODELS").as_deref() != Ok("1"),
            "OCR_REQUIRE_MODELS=1 but ORT_DYLIB_PATH / OCR_MODEL_DIR are missing (run scripts/fetch-models.sh)"
        );
        eprintln!("skipping: models not fetched (run scripts/fetch-models.sh, or scripts/test.sh)");
    }
    present
}

/// The `gpu-worker` binary built beside this test (`cargo build --bins` first), or `GPU_WORKER_BIN`.
pub fn worker_binary() -> PathBuf {
    match std::env::var_os("GPU_WORKER_BIN") {
        Some(p) => PathBuf::from(p),
        None => binary("gpu-worker"),
    }
}

/// A binary of the workspace built beside this test (`cargo build --workspace --bins` first).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/integration-<hash> → target/<profile>/<name>
    let bin = exe.parent().and_then(|d| d.parent()).expect("target dir").join(name);
    assert!(bin.is_file(), "{} is missing: run `cargo build --workspace --bins` first", bin.display());
    bin
}

/// A running process of one of the binaries (usually the worker). Killed (SIGKILL) when dropped
/// if still running.
pub struct WorkerProcess {
    pub child: Child,
    pub log: PathBuf,
}

impl WorkerProcess {
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits up to `limit` for the exit status.
    pub fn terminate(&mut self, limit: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status()?;
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if std::time::Instant::now() > deadline {
                anyhow::bail!("worker did not exit within {limit:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill9();
        }
    }
}

impl TestEnv {
    /// Starts one of the workspace's binaries with this environment's queues, bucket, database
    /// and LocalStack; `extra` overrides or adds variables. Its output goes to a log file.
    pub fn spawn(&self, name: &str, extra: &[(&str, String)]) -> anyhow::Result<WorkerProcess> {
        let log = std::env::temp_dir().join(format!("{}-{name}-{}.log", self.name, rand::random::<u32>()));
        let file = std::fs::File::create(&log)?;
        let program = if name == "gpu-worker" { worker_binary() } else { binary(name) };
        let mut cmd = Command::new(program);
        cmd.env("EXPRESS_QUEUE_URL", &self.queues.express)
            .env("BULK_QUEUE_URL", &self.queues.bulk)
            .env("UPLOAD_BUCKET", &self.bucket)
            .env("DATABASE_URL", &self.database_url)
            .env("AWS_ENDPOINT_URL", crate::aws_endpoint())
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".into()))
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "info,ort=warn")
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        if let Some(ca) = &self.database.ca_file {
            cmd.env("DATABASE_CA_FILE", ca);
        }
        for (k, v) in extra {
            cmd.env(k, v);
        }
        Ok(WorkerProcess { child: cmd.spawn().with_context(|| format!("starting {name}"))?, log })
    }

    /// Starts `api-local` (the API and its upload-event poller, i.e. the on-upload check) on a
    /// free loopback port as caller `alice` (ALICE_TOKEN), and waits until it answers; returns
    /// the process and its base URL. `extra` overrides or adds variables.
    pub async fn spawn_api_local(&self, extra: &[(&str, String)]) -> anyhow::Result<(WorkerProcess, String)> {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let mut env: Vec<(&str, String)> = vec![
            ("AUTH_MODE", "static".into()),
            ("API_TOKENS", format!("{}:alice", crate::ALICE_TOKEN)),
            ("BIND_ADDR", addr.to_string()),
            ("UPLOAD_EVENTS_EXPRESS_QUEUE_URL", self.queues.upload_events_express.clone()),
            ("UPLOAD_EVENTS_BULK_QUEUE_URL", self.queues.upload_events_bulk.clone()),
            ("DB_MIGRATE", "false".into()),
        ];
        env.extend(extra.iter().cloned());
        let api = self.spawn("api-local", &env)?;
        let base = format!("http://{addr}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while self.http.get(format!("{base}/healthz")).send().await.is_err() {
            anyhow::ensure!(tokio::time::Instant::now() < deadline, "api-local did not start:\n{}", api.logs());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok((api, base))
    }

    /// Starts the worker binary on this environment, with test timings (short polls and
    /// backoffs, the tiny model set, one thread). `extra` overrides or adds variables.
    pub fn spawn_worker(&self, extra: &[(&str, String)]) -> anyhow::Result<WorkerProcess> {
        let mut env: Vec<(&str, String)> = vec![
            ("METRICS_ADDR", "127.0.0.1:0".into()),
            ("CLOUDWATCH_INTERVAL_SECS", "0".into()),
            ("VISIBILITY_TIMEOUT_SECS", self.job_visibility_secs.to_string()),
            ("RETRY_BACKOFF_MS", "300".into()),
            ("RECEIVE_WAIT_SECS", "1".into()),
            ("BATCH_WAIT_MS", "100".into()),
            ("OCR_MODEL_SET", std::env::var("TEST_MODEL_SET").unwrap_or_else(|_| "ppocrv6-tiny".into())),
            ("OCR_THREADS", "1".into()),
            ("RESULT_URL_BASE", self.api.clone()),
        ];
        env.extend(extra.iter().cloned());
        self.spawn("gpu-worker", &env)
    }
}

/// One request a [`WebhookReceiver`] got.
#[derive(Debug, Clone)]
pub struct ReceivedHook {
    pub signature: String,
    pub body: String,
}

/// A loopback HTTP server that records webhook POSTs and answers 200, or what [`answer`]
/// set: another status, or nothing at all (0: the request hangs, as a dead receiver's would).
///
/// [`answer`]: WebhookReceiver::answer
pub struct WebhookReceiver {
    pub addr: std::net::SocketAddr,
    pub received: Arc<Mutex<Vec<ReceivedHook>>>,
    status: Arc<std::sync::atomic::AtomicU16>,
}

impl WebhookReceiver {
    pub async fn start() -> anyhow::Result<Self> {
        let received: Arc<Mutex<Vec<ReceivedHook>>> = Arc::default();
        let status = Arc::new(std::sync::atomic::AtomicU16::new(200));
        let (sink, answer) = (received.clone(), status.clone());
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
                let (sink, answer) = (sink.clone(), answer.clone());
                async move {
                    let code = answer.load(std::sync::atomic::Ordering::SeqCst);
                    if code == 0 {
                        std::future::pending::<()>().await;
                    }
                    let signature =
                        headers.get("ocr-signature").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
                    if code == 200 {
                        sink.lock().unwrap().push(ReceivedHook { signature, body });
                    }
                    axum::http::StatusCode::from_u16(code).unwrap_or(axum::http::StatusCode::OK)
                }
            }),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(WebhookReceiver { addr, received, status })
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// What it answers from now on: a status code, or 0 for no answer at all.
    pub fn answer(&self, status: u16) {
        self.status.store(status, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A TCP proxy in front of the database that a test can cut (closing every connection
/// and refusing new ones) and restore: an outage without touching the shared server. It can
/// also freeze: connections stay open (new ones are accepted) but nothing is forwarded, as
/// when the server is stopped (SIGSTOP) or a proxy on the way hangs.
pub struct DbProxy {
    pub port: u16,
    cut: watch::Sender<bool>,
    frozen: watch::Sender<bool>,
}

/// Copies `from` to `to` until either closes or the proxy is cut; holds each chunk while the
/// proxy is frozen.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut cut: watch::Receiver<bool>,
    mut frozen: watch::Receiver<bool>,
) {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = tokio::select! {
            r = from.read(&mut buf) => match r { Ok(0) | Err(_) => break, Ok(n) => n },
            _ = cut.wait_for(|c| *c) => break,
        };
        tokio::select! {
            _ = frozen.wait_for(|f| !*f) => {}
            _ = cut.wait_for(|c| *c) => break,
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

impl DbProxy {
    pub async fn start(target: &str) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let (cut, cut_rx) = watch::channel(false);
        let (frozen, frozen_rx) = watch::channel(false);
        let target = target.to_owned();
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else { return };
                if *cut_rx.borrow() {
                    let _ = client.shutdown().await;
                    continue;
                }
                let target = target.clone();
                let (cut_rx, frozen_rx) = (cut_rx.clone(), frozen_rx.clone());
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(&target).await else { return };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    tokio::join!(
                        pump(client_read, server_write, cut_rx.clone(), frozen_rx.clone()),
                        pump(server_read, client_write, cut_rx, frozen_rx),
                    );
                });
            }
        });
        Ok(DbProxy { port, cut, frozen })
    }

    /// Stops forwarding without closing anything (a hung server).
    pub fn freeze(&self) {
        let _ = self.frozen.send(true);
    }

    pub fn thaw(&self) {
        let _ = self.frozen.send(false);
    }

    pub fn cut(&self) {
        let _ = self.cut.send(true);
    }

    pub fn restore(&self) {
        let _ = self.cut.send(false);
    }
}
