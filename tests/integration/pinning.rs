//! Behind RDS Proxy a client that prepares a statement, or changes its session (`SET …`, a
//! named lock), is pinned to one database connection until it disconnects, and the proxy can
//! share none of them. These tests put a proxy that reads the MySQL protocol (tests/src/wire.rs)
//! between the real binaries and the database and count what would pin.

use std::time::Duration;

use ocr_integration_tests::wire::CommandCounter;
use ocr_integration_tests::worker::{WorkerProcess, line_images, models_available};
use ocr_integration_tests::{ALICE_TOKEN, DatabaseServer, Options, TestEnv, tiny_png};
use reqwest::StatusCode;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

/// The test database's URL, through the counter.
fn through(env: &TestEnv, counter: &CommandCounter) -> String {
    let plain = DatabaseServer::plain();
    let db = env.database_url.rsplit('/').next().expect("database name");
    let proxied = DatabaseServer {
        url: plain.url.replacen(plain.addr().as_str(), &format!("127.0.0.1:{}", counter.port), 1),
        ca_file: None,
    };
    proxied.database_url(db)
}

async fn until<F, Fut>(what: &str, process: &WorkerProcess, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await? {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}:\n{}", process.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_and_its_upload_check_never_pin_a_proxy_connection() -> anyhow::Result<()> {
    let env = TestEnv::with(Options { poller: false, ..Options::default() }).await?;
    let counter = CommandCounter::start(&DatabaseServer::plain().addr()).await?;
    // The migrations take a named lock (one pinned connection, closed after): left out here;
    // the worker's test below covers them.
    let (api, base) = env.spawn_api_local(&[("DATABASE_URL", through(&env, &counter))]).await?;
    for priority in ["express", "bulk"] {
        let png = tiny_png();
        let body = json!({"content_type": "image/png", "content_length": png.len(), "priority": priority});
        let response = env.http.post(format!("{base}/v1/jobs")).bearer_auth(ALICE_TOKEN).json(&body).send().await?;
        assert_eq!(response.status(), StatusCode::CREATED);
        let job: Value = response.json().await?;
        assert_eq!(env.put(&job["upload"], png).await?, StatusCode::OK);
        let url = format!("{base}/v1/jobs/{}", job["job_id"].as_str().unwrap());
        until("the job queued", &api, || async {
            let view: Value = env.http.get(&url).bearer_auth(ALICE_TOKEN).send().await?.json().await?;
            Ok(view["status"] == "queued")
        })
        .await?;
        assert!(env.http.delete(&url).bearer_auth(ALICE_TOKEN).send().await?.status().is_success());
    }
    let seen = counter.commands();
    assert!(seen.queries >= 10, "the counter saw the traffic: {seen:?}");
    assert_eq!((seen.prepares, seen.sets.len(), seen.locks), (0, 0, 0), "nothing would pin: {seen:?}");
    // Connections are kept and reused (DB_POOL_MAX 4 here), not opened per request: each one
    // costs a TCP, TLS and authentication round trip through the proxy.
    assert!(seen.connections <= 4, "connections reused: {seen:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_never_pins_a_proxy_connection_after_migrating() -> anyhow::Result<()> {
    if !models_available() {
        return Ok(());
    }
    let env = TestEnv::new().await?;
    let counter = CommandCounter::start(&DatabaseServer::plain().addr()).await?;
    let mut ids = Vec::new();
    for (image, _) in line_images(3)? {
        let body = json!({"content_type": "image/png", "content_length": image.len(), "callback_url": "https://hooks.example.com/x"});
        let job: Value =
            env.request(reqwest::Method::POST, "/v1/jobs", ALICE_TOKEN).json(&body).send().await?.json().await?;
        assert_eq!(env.put(&job["upload"], image).await?, StatusCode::OK);
        ids.push(job["job_id"].as_str().unwrap().to_owned());
    }
    // Migrations (a named lock, on a connection closed afterwards), then work, webhooks owed
    // and swept (their targets refused: nothing listens there), through the counter.
    let worker = env.spawn_worker(&[
        ("DATABASE_URL", through(&env, &counter)),
        ("DB_MIGRATE", "true".into()),
        ("WEBHOOK_SECRET", "s".into()),
        ("WEBHOOK_SWEEP_SECS", "1".into()),
        ("WEBHOOK_LEASE_SECS", "1".into()),
    ])?;
    for id in &ids {
        until("the job done", &worker, || async {
            Ok(env.wait_for_status(id, "succeeded", Duration::from_millis(1)).await.is_ok())
        })
        .await?;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let seen = counter.commands();
    assert!(seen.queries >= 10, "the counter saw the traffic: {seen:?}");
    assert_eq!((seen.prepares, seen.sets.len()), (0, 0), "nothing would pin: {seen:?}");
    assert_eq!(seen.locks, 1, "only the migration lock: {seen:?}");
    Ok(())
}

#[tokio::test]
async fn the_counter_sees_every_command() -> anyhow::Result<()> {
    use mysql_async::prelude::Queryable;
    let counter = CommandCounter::start(&DatabaseServer::plain().addr()).await?;
    let url = format!("mysql://root@127.0.0.1:{}?prefer_socket=false", counter.port);
    let mut conn = mysql_async::Conn::from_url(&url).await?;
    let before = counter.commands();
    conn.query_drop("SELECT 1").await?;
    conn.query_drop("SET @a = 1").await?;
    let _: Option<i64> = conn.exec_first("SELECT ?", (1,)).await?;
    conn.query_drop("SELECT GET_LOCK('x', 1)").await?;
    conn.disconnect().await?;
    let after = counter.commands();
    assert_eq!(after.queries - before.queries, 3, "{before:?} {after:?}");
    assert_eq!((after.prepares, after.sets.len(), after.locks), (1, 1, 1), "{after:?}");
    Ok(())
}
