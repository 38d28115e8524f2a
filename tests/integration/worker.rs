//! The worker end to end: the real API, the on-upload poller, the `gpu-worker` binary
//! with the real models, LocalStack and MariaDB — and what happens when things break.

use std::time::Duration;

use mysql_async::prelude::Queryable;
use ocr_api::config::Limits;
use ocr_core::ports::ObjectStore;
use ocr_core::signing::verify;
use ocr_integration_tests::images::scanned_pdf;
use ocr_integration_tests::worker::{WebhookReceiver, WorkerProcess, line_images, models_available};
use ocr_integration_tests::{ALICE_TOKEN, BOB_TOKEN, Options, TestEnv};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use ocr_integration_tests::WEBHOOK_SECRET as SECRET;

/// Creates a job and uploads `bytes` with its presigned URL, as a phone does.
async fn upload(env: &TestEnv, bytes: &[u8], priority: &str, callback: Option<&str>) -> anyhow::Result<String> {
    upload_as(env, bytes, "image/png", priority, callback).await
}

async fn upload_as(
    env: &TestEnv,
    bytes: &[u8],
    content_type: &str,
    priority: &str,
    callback: Option<&str>,
) -> anyhow::Result<String> {
    let mut body = json!({"content_type": content_type, "content_length": bytes.len(), "priority": priority});
    if let Some(c) = callback {
        body["callback_url"] = json!(c);
    }
    let response = env.request(Method::POST, "/v1/jobs", ALICE_TOKEN).json(&body).send().await?;
    assert_eq!(response.status(), StatusCode::CREATED);
    let job: Value = response.json().await?;
    assert_eq!(env.put(&job["upload"], bytes.to_vec()).await?, StatusCode::OK);
    Ok(job["job_id"].as_str().unwrap().to_owned())
}

/// Count of jobs per status, read straight from the database.
async fn count(env: &TestEnv, status: &str) -> anyhow::Result<u64> {
    let mut conn = mysql_async::Conn::from_url(&env.database_url).await?;
    let n: Option<u64> = conn.exec_first("SELECT COUNT(*) FROM jobs WHERE status = ?", (status,)).await?;
    conn.disconnect().await?;
    Ok(n.unwrap_or(0))
}

async fn results(env: &TestEnv) -> anyhow::Result<u64> {
    let mut conn = mysql_async::Conn::from_url(&env.database_url).await?;
    let n: Option<u64> = conn.query_first("SELECT COUNT(*) FROM job_results").await?;
    conn.disconnect().await?;
    Ok(n.unwrap_or(0))
}

async fn wait_until<F, Fut>(what: &str, limit: Duration, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await? {
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// Waits until the worker has taken a job. Polls on one connection: a fresh connection per poll
/// could stall for seconds on a busy server and miss the whole run of a fast worker, so a job
/// already done counts as started too (the caller's checks hold either way; they just test
/// less when the run was over).
async fn wait_for_work(env: &TestEnv, worker: &WorkerProcess) -> anyhow::Result<()> {
    let conn = &tokio::sync::Mutex::new(mysql_async::Conn::from_url(&env.database_url).await?);
    wait_until("a job taken", Duration::from_secs(60), || async move {
        let sql = "SELECT COUNT(*) FROM jobs WHERE status IN ('processing', 'succeeded')";
        let n: Option<u64> = conn.lock().await.query_first(sql).await?;
        Ok(n.unwrap_or(0) > 0)
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\nworker log:\n{}", worker.logs()))
}

fn normalise(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_become_text_and_signed_webhooks() -> anyhow::Result<()> {
    if !models_available() {
        return Ok(());
    }
    let hooks = WebhookReceiver::start().await?;
    // The receiver is plain http on loopback: allowed explicitly, for the API as for the worker.
    // Outputs over 3 kB are stored and redirected to, as ones over 4 MB are on Lambda.
    let limits = Limits {
        webhook_allow_hosts: [hooks.addr.to_string()].into_iter().collect(),
        max_inline_output: 3000,
        ..Limits::default()
    };
    let env = TestEnv::with(Options { limits, ..Options::default() }).await?;
    let images = line_images(6)?;
    let mut jobs = Vec::new();
    for (i, (bytes, text)) in images.iter().enumerate() {
        let priority = if i % 2 == 0 { "express" } else { "bulk" };
        jobs.push((upload(&env, bytes, priority, Some(&hooks.url())).await?, text.clone()));
    }
    // A scanned PDF of two of the lines, one per page.
    let scan = scanned_pdf(&[&images[0].0, &images[1].0])?;
    let pdf_job = upload_as(&env, &scan, "application/pdf", "express", None).await?;
    let mut worker =
        env.spawn_worker(&[("WEBHOOK_SECRET", SECRET.into()), ("WEBHOOK_ALLOW_HOSTS", hooks.addr.to_string())])?;
    env.wait_for_status(&pdf_job, "succeeded", Duration::from_secs(120))
        .await
        .map_err(|e| anyhow::anyhow!("{e}\nworker log:\n{}", worker.logs()))?;
    for (id, _) in &jobs {
        env.wait_for_status(id, "succeeded", Duration::from_secs(120))
            .await
            .map_err(|e| anyhow::anyhow!("{e}\nworker log:\n{}", worker.logs()))?;
    }
    let mut exact = 0;
    for (id, truth) in &jobs {
        let job: Value = env.request(Method::GET, &format!("/v1/jobs/{id}"), ALICE_TOKEN).send().await?.json().await?;
        let text = job["result"]["text"].as_str().unwrap_or_default();
        exact += usize::from(normalise(text) == normalise(truth));
        let line = &job["result"]["lines"][0];
        assert!(line["confidence"].as_f64().is_some_and(|c| c > 0.0 && c <= 1.0), "{job}");
        assert_eq!(line["box"].as_array().map(Vec::len), Some(4));
        assert_eq!(job["attempts"], 1);
    }
    assert!(exact >= 5, "{exact} of {} lines read exactly", jobs.len());
    // Words are stored with the result, and the output formats read it (the PDF draws the
    // upload, fetched from the bucket, under its text).
    let (id, _) = &jobs[0];
    let job: Value = env.request(Method::GET, &format!("/v1/jobs/{id}"), ALICE_TOKEN).send().await?.json().await?;
    let words = job["result"]["pages"][0]["lines"][0]["words"].as_array().cloned().unwrap_or_default();
    assert!(!words.is_empty() && words.iter().all(|w| w["box"].as_array().map(Vec::len) == Some(4)), "{job}");
    for (format, magic) in [("pdf", "%PDF-"), ("hocr", "<?xml"), ("alto", "<?xml"), ("text", "")] {
        let response =
            env.request(Method::GET, &format!("/v1/jobs/{id}/result?format={format}"), ALICE_TOKEN).send().await?;
        assert_eq!(response.status(), 200, "{format}");
        let body = response.bytes().await?;
        assert!(
            body.starts_with(magic.as_bytes()),
            "{format}: {:?}",
            String::from_utf8_lossy(&body[..body.len().min(80)])
        );
        if format == "text" {
            assert_eq!(std::str::from_utf8(&body)?.trim_end(), job["result"]["text"].as_str().unwrap());
        }
    }

    // The PDF reads page by page; its searchable PDF is the upload with a text layer, too
    // large to answer inline here: a redirect to the bucket (LocalStack), which the client
    // follows. Deleting the job deletes that stored copy with the upload.
    let job: Value = env.request(Method::GET, &format!("/v1/jobs/{pdf_job}"), ALICE_TOKEN).send().await?.json().await?;
    let pages = job["result"]["pages"].as_array().cloned().unwrap_or_default();
    assert_eq!(pages.len(), 2, "{job}");
    for (page, (_, truth)) in pages.iter().zip(&images) {
        assert_eq!(normalise(page["text"].as_str().unwrap_or_default()), normalise(truth), "{job}");
    }
    let response =
        env.request(Method::GET, &format!("/v1/jobs/{pdf_job}/result?format=pdf"), ALICE_TOKEN).send().await?;
    assert_eq!(response.status(), 200);
    let final_url = response.url().clone();
    assert!(final_url.path().ends_with(&format!("/outputs/{pdf_job}.pdf")), "{}", final_url.path());
    let body = response.bytes().await?;
    assert!(body.starts_with(&scan) && body.len() > scan.len());
    assert_eq!(String::from_utf8_lossy(&body[scan.len()..]).matches("/OcrText").count(), 2);
    let key = format!("outputs/{pdf_job}.pdf");
    assert!(env.objects.head(&key).await?.is_some());
    let response = env.request(Method::DELETE, &format!("/v1/jobs/{pdf_job}"), ALICE_TOKEN).send().await?;
    assert_eq!(response.status(), 200);
    assert!(env.objects.head(&key).await?.is_none(), "the stored output outlived its job");

    wait_until("webhooks", Duration::from_secs(30), || async {
        Ok(hooks.received.lock().unwrap().len() >= jobs.len())
    })
    .await?;
    // Each caller reads its own key from the API; alice's verifies her webhooks, bob's never.
    let env = &env;
    let secret = |token: &'static str| async move {
        let view: Value = env.request(Method::GET, "/v1/webhook-secret", token).send().await?.json().await?;
        anyhow::Ok(view["secret"].as_str().expect("secret").to_owned())
    };
    let (alice_key, bob_key) = (secret(ALICE_TOKEN).await?, secret(BOB_TOKEN).await?);
    assert_ne!(alice_key, bob_key);
    for hook in hooks.received.lock().unwrap().iter() {
        assert!(verify(&alice_key, &hook.signature, hook.body.as_bytes()), "alice's key: {}", hook.body);
        assert!(!verify(&bob_key, &hook.signature, hook.body.as_bytes()), "bob's key verified alice's webhook");
        let body: Value = serde_json::from_str(&hook.body)?;
        assert_eq!(body["status"], "succeeded");
        assert!(body["result_url"].as_str().unwrap().ends_with(body["job_id"].as_str().unwrap()));
    }
    let status = worker.terminate(Duration::from_secs(30))?;
    assert!(status.success(), "worker exit: {status}");
    let logs = worker.logs();
    assert!(!logs.contains(SECRET), "the webhook secret must never be logged");
    assert!(!logs.contains("X-Amz-Signature"), "presigned signatures must never be logged");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_loses_and_duplicates_nothing() -> anyhow::Result<()> {
    if !models_available() {
        return Ok(());
    }
    let env = TestEnv::with(Options { job_visibility_secs: 4, ..Options::default() }).await?;
    let images = line_images(16)?;
    let mut ids = Vec::new();
    for (bytes, _) in &images {
        ids.push(upload(&env, bytes, "bulk", None).await?);
    }
    wait_until("jobs queued", Duration::from_secs(30), || async { Ok(count(&env, "queued").await? == 16) }).await?;
    let mut first = env.spawn_worker(&[("BATCH_MAX", "8".into())])?;
    wait_until("a batch in progress", Duration::from_secs(60), || async { Ok(count(&env, "processing").await? > 0) })
        .await?;
    first.kill9();
    let done_by_first = count(&env, "succeeded").await?;
    let _second = env.spawn_worker(&[])?;
    wait_until("all jobs succeeded", Duration::from_secs(120), || async { Ok(count(&env, "succeeded").await? == 16) })
        .await?;
    assert_eq!(results(&env).await?, 16, "one result per job");
    assert!(done_by_first < 16, "the kill happened mid-run");
    wait_until("queue drained", Duration::from_secs(20), || async {
        Ok(env.queue_total(&env.queues.bulk).await? == 0)
    })
    .await?;
    Ok(())
}

/// A PNG whose header and end are intact (so the upload check passes) but whose pixels
/// are garbage: only the decoder can tell.
fn corrupt_png(good: &[u8]) -> Vec<u8> {
    let mut bytes = good.to_vec();
    let end = bytes.len() - 12;
    for b in &mut bytes[40..end] {
        *b ^= 0x5A;
    }
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_image_fails_alone_and_lands_in_the_dlq() -> anyhow::Result<()> {
    if !models_available() {
        return Ok(());
    }
    let env = TestEnv::with(Options { job_visibility_secs: 5, ..Options::default() }).await?;
    let images = line_images(3)?;
    let poison = upload(&env, &corrupt_png(&images[0].0), "express", None).await?;
    let mut good = Vec::new();
    for (bytes, _) in &images {
        good.push(upload(&env, bytes, "express", None).await?);
    }
    let worker = env.spawn_worker(&[])?;
    let failed = env.wait_for_status(&poison, "failed", Duration::from_secs(120)).await;
    let failed = failed.map_err(|e| anyhow::anyhow!("{e}\nworker log:\n{}", worker.logs()))?;
    assert_eq!(failed["attempts"], 3, "{failed}");
    assert!(failed["error"].as_str().is_some_and(|e| e.contains("decode")), "{failed}");
    for id in &good {
        let job = env.wait_for_status(id, "succeeded", Duration::from_secs(60)).await?;
        assert_eq!(job["attempts"], 1, "batch-mates succeed on their first try");
    }
    let express_dlq = env.queues.dlqs[1].clone();
    wait_until("the poison message in the DLQ", Duration::from_secs(30), || async {
        Ok(env.queue_total(&express_dlq).await? == 1)
    })
    .await?;
    let dead = env.drain(&express_dlq, 1).await?;
    assert!(dead[0].contains(&poison));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_workers_died_on_every_delivery_is_failed_from_the_dlq() -> anyhow::Result<()> {
    if !models_available() {
        return Ok(());
    }
    let env = TestEnv::with(Options { job_visibility_secs: 2, ..Options::default() }).await?;
    let images = line_images(1)?;
    let id = upload(&env, &images[0].0, "bulk", Some("https://hooks.example.com/ocr")).await?;
    wait_until("the job queued", Duration::from_secs(30), || async { Ok(count(&env, "queued").await? == 1) }).await?;
    // Three workers each receive the message, mark the job processing and die (their
    // deliveries simply time out). The queue allows 3 receives.
    let bulk = ocr_aws::SqsConsumer::new(&ocr_integration_tests::aws_config().await, &env.queues.bulk);
    for attempt in 1..=3u32 {
        let got = bulk.receive(1, 5).await?;
        assert_eq!(got.len(), 1, "delivery {attempt}");
        assert_eq!(got[0].receive_count, attempt);
        let mut conn = mysql_async::Conn::from_url(&env.database_url).await?;
        conn.exec_drop("UPDATE jobs SET status = 'processing', attempts = ? WHERE id = ?", (attempt, &id)).await?;
        conn.disconnect().await?;
        tokio::time::sleep(Duration::from_millis(2_500)).await;
    }
    // A live worker: its next receive makes SQS move the message to the DLQ, with the job
    // still `processing`; its dead-letter sweep ends the job.
    let bulk_dlq = env.queues.dlqs[2].clone();
    let worker = env.spawn_worker(&[
        ("EXPRESS_DLQ_URL", env.queues.dlqs[1].clone()),
        ("BULK_DLQ_URL", bulk_dlq.clone()),
        ("DLQ_SWEEP_SECS", "1".into()),
    ])?;
    let job = env.wait_for_status(&id, "failed", Duration::from_secs(90)).await;
    let job = job.map_err(|e| anyhow::anyhow!("{e}\nworker log:\n{}", worker.logs()))?;
    assert!(job["error"].as_str().is_some_and(|e| e.contains("dead-letter queue")), "{job}");
    assert_eq!(job["attempts"], 3, "{job}");
    // Its webhook is owed (the outbox), and the message stays in the DLQ for operators.
    let mut conn = mysql_async::Conn::from_url(&env.database_url).await?;
    let owed: Option<Option<i64>> = conn.exec_first("SELECT notify_since_ms FROM jobs WHERE id = ?", (&id,)).await?;
    conn.disconnect().await?;
    assert!(owed.flatten().is_some(), "webhook owed");
    assert_eq!(env.queue_total(&bulk_dlq).await?, 1);
    assert!(worker.logs().contains("job failed"), "{}", worker.logs());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_holds_work_until_it_returns() -> anyhow::Result<()> {
    if !models_available() {
        return Ok(());
    }
    let env = TestEnv::with(Options { job_visibility_secs: 6, ..Options::default() }).await?;
    let (proxy, through_proxy) = env.db_proxy().await?;
    let images = line_images(12)?;
    for (bytes, _) in &images {
        upload(&env, bytes, "bulk", None).await?;
    }
    wait_until("jobs queued", Duration::from_secs(30), || async { Ok(count(&env, "queued").await? == 12) }).await?;
    let worker = env.spawn_worker(&[("DATABASE_URL", through_proxy), ("BATCH_MAX", "4".into())])?;
    wait_for_work(&env, &worker).await?;
    proxy.cut();
    // While the database is away: every job is either committed or still has its message.
    for _ in 0..16 {
        let held = env.queue_total(&env.queues.bulk).await?;
        let committed = results(&env).await?;
        assert!(held + committed >= 12, "a message was deleted without its result: {held} held, {committed} committed");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    proxy.restore();
    wait_until("all jobs succeeded", Duration::from_secs(120), || async { Ok(count(&env, "succeeded").await? == 12) })
        .await
        .map_err(|e| anyhow::anyhow!("{e}\nworker log:\n{}", worker.logs()))?;
    assert_eq!(results(&env).await?, 12);
    Ok(())
}

/// Issue 12 (2): a database that hangs (connections open, nothing answered) for longer than
/// the worker's DB_RETRY_SECS. Each call gives up after DB_TIMEOUT_MS instead of waiting
/// forever, the batch gives up after DB_RETRY_SECS, and its messages go back to the queue as new
/// ones (requeued) instead of being held, so no attempt is used: every job succeeds once the
/// database answers again, none fails, nothing reaches the DLQ.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_database_hands_batches_back_without_using_attempts() -> anyhow::Result<()> {
    if !models_available() {
        return Ok(());
    }
    let env = TestEnv::with(Options { job_visibility_secs: 6, ..Options::default() }).await?;
    let (proxy, through_proxy) = env.db_proxy().await?;
    let images = line_images(10)?;
    for (bytes, _) in &images[..2] {
        upload(&env, bytes, "bulk", None).await?;
    }
    wait_until("jobs queued", Duration::from_secs(30), || async { Ok(count(&env, "queued").await? == 2) }).await?;
    let worker = env.spawn_worker(&[
        ("DATABASE_URL", through_proxy),
        ("BATCH_MAX", "4".into()),
        ("DB_TIMEOUT_MS", "1000".into()),
        ("DB_RETRY_SECS", "2".into()),
    ])?;
    wait_until("the first jobs done", Duration::from_secs(60), || async { Ok(count(&env, "succeeded").await? == 2) })
        .await
        .map_err(|e| anyhow::anyhow!("{e}\nworker log:\n{}", worker.logs()))?;
    proxy.freeze();
    for (bytes, _) in &images[2..] {
        upload(&env, bytes, "bulk", None).await?;
    }
    wait_until("a batch handed back", Duration::from_secs(60), || async {
        Ok(worker.logs().contains("message requeued (no attempt used)"))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\nworker log:\n{}", worker.logs()))?;
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(worker.logs().contains("DB_TIMEOUT_MS"), "each call gave up on its own");
    proxy.thaw();
    wait_until("all jobs succeeded", Duration::from_secs(120), || async { Ok(count(&env, "succeeded").await? == 10) })
        .await
        .map_err(|e| anyhow::anyhow!("{e}\nworker log:\n{}", worker.logs()))?;
    assert_eq!(count(&env, "failed").await?, 0);
    assert_eq!(results(&env).await?, 10);
    for dlq in &env.queues.dlqs {
        assert_eq!(env.queue_total(dlq).await?, 0, "{dlq}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_batch_exits_zero_and_loses_nothing() -> anyhow::Result<()> {
    if !models_available() {
        return Ok(());
    }
    let env = TestEnv::with(Options { job_visibility_secs: 30, ..Options::default() }).await?;
    let images = line_images(12)?;
    for (bytes, _) in &images {
        upload(&env, bytes, "express", None).await?;
    }
    wait_until("jobs queued", Duration::from_secs(30), || async { Ok(count(&env, "queued").await? == 12) }).await?;
    let mut worker = env.spawn_worker(&[("SHUTDOWN_GRACE_SECS", "20".into()), ("BATCH_MAX", "4".into())])?;
    wait_for_work(&env, &worker).await?;
    let started = std::time::Instant::now();
    let status = worker.terminate(Duration::from_secs(25))?;
    assert!(status.success(), "exit status {status}\n{}", worker.logs());
    assert!(started.elapsed() < Duration::from_secs(21), "within the grace period");
    // A stop is not a failure: no background task reported as ending early.
    assert!(!worker.logs().contains("ended early"), "{}", worker.logs());
    // Whatever it did not finish was handed back at once (visibility 0), not after 30 s.
    let _next = env.spawn_worker(&[])?;
    wait_until("all jobs succeeded", Duration::from_secs(25), || async { Ok(count(&env, "succeeded").await? == 12) })
        .await?;
    assert_eq!(results(&env).await?, 12);
    Ok(())
}

/// A presigned URL stays valid for minutes after the upload check passed: a second PUT of the
/// same type and length replaces the object. The worker reads only the version the check
/// passed, and fails the job (with the reason) instead of reading unchecked bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_put_after_the_check_fails_the_job_unread() -> anyhow::Result<()> {
    if !models_available() {
        return Ok(());
    }
    let env = TestEnv::with(Options { job_visibility_secs: 5, ..Options::default() }).await?;
    let (checked, _) = line_images(1)?.remove(0);
    let body = json!({"content_type": "image/png", "content_length": checked.len(), "priority": "express"});
    let job: Value = env.request(Method::POST, "/v1/jobs", ALICE_TOKEN).json(&body).send().await?.json().await?;
    let id = job["job_id"].as_str().unwrap().to_owned();
    assert_eq!(env.put(&job["upload"], checked.clone()).await?, StatusCode::OK);
    env.wait_for_status(&id, "queued", Duration::from_secs(30)).await?;
    // The same URL, the same type and length, other bytes: what the check never saw.
    assert_eq!(env.put(&job["upload"], corrupt_png(&checked)).await?, StatusCode::OK);
    let worker = env.spawn_worker(&[])?;
    let failed = env.wait_for_status(&id, "failed", Duration::from_secs(90)).await;
    let failed = failed.map_err(|e| anyhow::anyhow!("{e}\nworker log:\n{}", worker.logs()))?;
    assert!(failed["error"].as_str().is_some_and(|e| e.contains("replaced after its upload was checked")), "{failed}");
    Ok(())
}

/// One caller's receiver that never answers does not hold up another's webhooks; a receiver
/// that is down keeps getting retried through the outbox and gets its webhook when it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_receiver_stalls_no_one_and_a_returning_one_gets_its_webhooks() -> anyhow::Result<()> {
    if !models_available() {
        return Ok(());
    }
    let (hanging, down, healthy) =
        (WebhookReceiver::start().await?, WebhookReceiver::start().await?, WebhookReceiver::start().await?);
    hanging.answer(0);
    down.answer(503);
    let allow: Vec<String> = [&hanging, &down, &healthy].iter().map(|r| r.addr.to_string()).collect();
    let limits = Limits { webhook_allow_hosts: allow.iter().collect(), ..Limits::default() };
    let env = TestEnv::with(Options { limits, ..Options::default() }).await?;
    let images = line_images(9)?;
    let mut ids = Vec::new();
    for (i, (bytes, _)) in images.iter().enumerate() {
        let receiver = [&hanging, &down, &healthy][i % 3];
        ids.push((upload(&env, bytes, "express", Some(&receiver.url())).await?, i % 3));
    }
    let worker = env.spawn_worker(&[
        ("WEBHOOK_SECRET", SECRET.into()),
        ("WEBHOOK_ALLOW_HOSTS", allow.join(",")),
        ("WEBHOOK_MAX_ATTEMPTS", "1".into()),
        ("WEBHOOK_PER_HOST", "1".into()),
        ("WEBHOOK_SWEEP_SECS", "1".into()),
        ("WEBHOOK_LEASE_SECS", "1".into()),
        ("WEBHOOK_RETRY_WINDOW_SECS", "240".into()),
    ])?;
    wait_until("the healthy receiver's webhooks", Duration::from_secs(60), || async {
        Ok(healthy.received.lock().unwrap().len() >= 3)
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", worker.logs()))?;
    assert!(hanging.received.lock().unwrap().is_empty() && down.received.lock().unwrap().is_empty());
    // The down receiver comes back: the outbox retries reach it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    down.answer(200);
    wait_until("the returning receiver's webhooks", Duration::from_secs(60), || async {
        Ok(down.received.lock().unwrap().len() >= 3)
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", worker.logs()))?;
    let mut conn = mysql_async::Conn::from_url(&env.database_url).await?;
    let retried: Vec<(String, String)> =
        conn.query("SELECT job_id, outcome FROM webhook_deliveries WHERE outcome = 'retrying'").await?;
    conn.disconnect().await?;
    let down_jobs: Vec<&String> = ids.iter().filter(|(_, r)| *r == 1).map(|(id, _)| id).collect();
    assert!(down_jobs.iter().all(|id| retried.iter().any(|(j, _)| j == *id)), "each was retried: {retried:?}");
    Ok(())
}

/// Caller A floods: past its own limit it gets 429 naming the limit (and only A does), while
/// caller B's jobs are created and finish; once A's jobs are done A may create again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_callers_flood_is_refused_while_anothers_jobs_finish() -> anyhow::Result<()> {
    use ocr_core::quota::CallerQuota;
    if !models_available() {
        return Ok(());
    }
    let caller = CallerQuota {
        max_waiting: 4,
        rate_per_sec: 1000.0,
        burst: 1000,
        upload_window_ms: 900_000,
        waiting_retry_after_secs: 3,
    };
    let env = TestEnv::with(Options { limits: Limits { caller, ..Limits::default() }, ..Options::default() }).await?;
    let images = line_images(6)?;
    let direct = |token: &'static str, bytes: Vec<u8>| {
        env.request(Method::POST, "/v1/jobs?priority=bulk", token)
            .header("content-type", "image/png")
            .body(bytes)
            .send()
    };
    // A's flood: four admitted, the rest refused with A's own limit named.
    let (mut admitted, mut refused) = (Vec::new(), 0);
    for i in 0..12 {
        let response = direct(ALICE_TOKEN, images[i % 6].0.clone()).await?;
        match response.status() {
            StatusCode::ACCEPTED => {
                admitted.push(response.json::<Value>().await?["job_id"].as_str().unwrap().to_owned())
            }
            StatusCode::TOO_MANY_REQUESTS => {
                assert_eq!(response.headers()["retry-after"], "3");
                let body: Value = response.json().await?;
                assert_eq!(body["error"]["code"], "caller_queue_full", "{body}");
                assert!(body["error"]["message"].as_str().unwrap().contains("CALLER_MAX_QUEUED"), "{body}");
                refused += 1;
            }
            other => anyhow::bail!("unexpected {other}"),
        }
    }
    assert_eq!((admitted.len(), refused), (4, 8));
    // B is not refused: its jobs are created while A is at its limit, and finish.
    let mut bobs = Vec::new();
    for (bytes, text) in images.iter().take(3) {
        let response = direct(BOB_TOKEN, bytes.clone()).await?;
        assert_eq!(response.status(), StatusCode::ACCEPTED, "B refused during A's flood");
        bobs.push((response.json::<Value>().await?["job_id"].as_str().unwrap().to_owned(), text.clone()));
    }
    let worker = env.spawn_worker(&[])?;
    for (id, text) in &bobs {
        let done = env
            .wait_for_status_as(BOB_TOKEN, id, "succeeded", Duration::from_secs(120))
            .await
            .map_err(|e| anyhow::anyhow!("{e}\nworker log:\n{}", worker.logs()))?;
        assert_eq!(normalise(done["result"]["text"].as_str().unwrap_or_default()), normalise(text));
    }
    for id in &admitted {
        env.wait_for_status(id, "succeeded", Duration::from_secs(120)).await?;
    }
    // A's jobs are done: its places are free again.
    assert_eq!(direct(ALICE_TOKEN, images[0].0.clone()).await?.status(), StatusCode::ACCEPTED);
    Ok(())
}
