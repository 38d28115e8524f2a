//! The producer end to end: API → presigned PUT → S3 event → on-upload → job queue.

use std::time::Duration;

use ocr_api::config::Limits;
use ocr_api::upload::UploadOutcome;
use ocr_core::{JobMessage, Priority};
use ocr_integration_tests::{
    ALICE_ACCENT_TOKEN, ALICE_TOKEN, ALICE_UPPER_TOKEN, BOB_TOKEN, Options, TestEnv, tiny_png,
};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

async fn create(env: &TestEnv, body: Value) -> anyhow::Result<(StatusCode, Value)> {
    let response = env.request(Method::POST, "/v1/jobs", ALICE_TOKEN).json(&body).send().await?;
    Ok((response.status(), response.json().await?))
}

/// PUTs `bytes` to the job's presigned URL with the signed headers, optionally overridden.
async fn put(env: &TestEnv, job: &Value, bytes: Vec<u8>, content_type: Option<&str>) -> anyhow::Result<StatusCode> {
    let upload = &job["upload"];
    let mut request = env.http.put(upload["url"].as_str().expect("url"));
    for (name, value) in upload["headers"].as_object().expect("headers") {
        // reqwest sets Content-Length from the body itself.
        if name != "content-length" {
            let value = if name == "content-type" {
                content_type.unwrap_or(value.as_str().unwrap())
            } else {
                value.as_str().unwrap()
            };
            request = request.header(name, value);
        }
    }
    Ok(request.body(bytes).send().await?.status())
}

#[tokio::test]
async fn a_phone_upload_reaches_exactly_one_queue() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let png = tiny_png();
    let (status, job) =
        create(&env, json!({"content_type": "image/png", "content_length": png.len(), "priority": "express"})).await?;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    let id = job["job_id"].as_str().unwrap().to_owned();
    let url = job["upload"]["url"].as_str().unwrap();
    assert!(url.contains("X-Amz-Signature="));
    assert!(url.contains("content-length"), "Content-Length must be a signed header: {url}");

    assert_eq!(put(&env, &job, png.clone(), None).await?, StatusCode::OK);
    let queued = env.wait_for_status(&id, "queued", WAIT).await?;
    assert!(queued["queued_at"].is_string());

    let express = env.drain(&env.queues.express, 5).await?;
    assert_eq!(express.len(), 1, "{express:?}");
    let message = JobMessage::parse(&express[0])?;
    assert_eq!(message.job_id.to_string(), id);
    assert_eq!(message.priority, Priority::Express);
    assert_eq!(message.bucket, env.bucket);
    assert_eq!(message.size, png.len() as u64);
    assert!(env.drain(&env.queues.bulk, 1).await?.is_empty());
    // The object is where the message says.
    let stored = env.s3.get_object().bucket(&env.bucket).key(&message.key).send().await?;
    assert_eq!(stored.body.collect().await?.into_bytes().as_ref(), png.as_slice());
    Ok(())
}

#[tokio::test]
async fn presigned_urls_refuse_other_requests() -> anyhow::Result<()> {
    let limits = Limits { presign_expiry: Duration::from_secs(2), ..Limits::default() };
    let env = TestEnv::with(Options { limits, poller: false, ..Options::default() }).await?;
    let png = tiny_png();
    let (_, job) = create(&env, json!({"content_type": "image/png", "content_length": png.len()})).await?;

    assert_eq!(put(&env, &job, png.clone(), Some("image/jpeg")).await?, StatusCode::FORBIDDEN, "other type");
    let mut longer = png.clone();
    longer.push(0);
    assert_eq!(put(&env, &job, longer, None).await?, StatusCode::FORBIDDEN, "other length");
    let mut tampered = job.clone();
    let url = job["upload"]["url"].as_str().unwrap();
    let sig_at = url.find("X-Amz-Signature=").unwrap() + "X-Amz-Signature=".len();
    let flipped = if &url[sig_at..sig_at + 1] == "0" { "1" } else { "0" };
    tampered["upload"]["url"] = json!(format!("{}{}{}", &url[..sig_at], flipped, &url[sig_at + 1..]));
    assert_eq!(put(&env, &tampered, png.clone(), None).await?, StatusCode::FORBIDDEN, "tampered signature");
    // The URL grants that PUT only: reading the key with it is refused.
    let read = env.http.get(job["upload"]["url"].as_str().unwrap()).send().await?;
    assert_eq!(read.status(), StatusCode::FORBIDDEN, "GET with the PUT URL");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(put(&env, &job, png.clone(), None).await?, StatusCode::FORBIDDEN, "expired");
    let listed = env.s3.list_objects_v2().bucket(&env.bucket).send().await?;
    assert_eq!(listed.key_count(), Some(0), "nothing was stored");
    Ok(())
}

#[tokio::test]
async fn bad_uploads_fail_with_nothing_queued() -> anyhow::Result<()> {
    // The handler's limit is below the API's so an "oversized" object can be made honestly.
    let env = TestEnv::with(Options { handler_max_upload_bytes: 200, ..Options::default() }).await?;
    let text = b"Dear diary, this is not a photo at all.".to_vec();
    let mut truncated = tiny_png();
    truncated.truncate(truncated.len() - 20);
    let mut big = tiny_png();
    // A valid PNG with a large ancillary chunk before IEND would be nicer; a long tEXt-like tail
    // before IEND is enough for the size check, which runs first.
    let iend = big.split_off(big.len() - 12);
    big.extend(std::iter::repeat_n(0u8, 300));
    big.extend(iend);
    let cases = [
        ("image/jpeg", text, "not an image"),
        ("image/png", truncated, "truncated"),
        ("image/png", big, "over the limit"),
    ];
    let mut ids = Vec::new();
    for (i, (content_type, bytes, _)) in cases.iter().enumerate() {
        let mut body = json!({"content_type": content_type, "content_length": bytes.len()});
        if i == 0 {
            body["callback_url"] = json!("https://hooks.example.com/ocr");
        }
        let (status, job) = create(&env, body).await?;
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(put(&env, &job, bytes.clone(), None).await?, StatusCode::OK);
        ids.push(job["job_id"].as_str().unwrap().to_owned());
    }
    for (id, (_, _, reason)) in ids.iter().zip(&cases) {
        let job = env.wait_for_status(id, "failed", WAIT).await?;
        assert!(job["error"].as_str().is_some_and(|e| e.contains(reason)), "{job}");
        // The job is failed first, then its object deleted (a crash between the two is mended
        // by the repeated event): the delete may land just after the status is read.
        let key = format!("uploads/bulk/{id}");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while env.s3.head_object().bucket(&env.bucket).key(&key).send().await.is_ok() {
            assert!(std::time::Instant::now() < deadline, "object {key} must be deleted");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert!(env.drain(&env.queues.bulk, 2).await?.is_empty());
    assert!(env.drain(&env.queues.express, 0).await?.is_empty());
    // The caller who gave a callback is owed a webhook although no worker saw the job: the
    // workers' outbox sweep finds it.
    use ocr_core::worker::ResultStore;
    let owed = env.store.claim_notifications(i64::MAX / 2, i64::MAX / 2, 10).await?;
    assert_eq!(owed.len(), 1, "{owed:?}");
    assert_eq!(owed[0].job_id.to_string(), ids[0]);
    assert_eq!(owed[0].status, ocr_core::JobStatus::Failed);
    Ok(())
}

#[tokio::test]
async fn repeated_s3_events_enqueue_once() -> anyhow::Result<()> {
    let env = TestEnv::with(Options { poller: false, ..Options::default() }).await?;
    let png = tiny_png();
    let (_, job) = create(&env, json!({"content_type": "image/png", "content_length": png.len()})).await?;
    assert_eq!(put(&env, &job, png, None).await?, StatusCode::OK);
    // Take the real event S3 sent, then deliver it three times (twice at once).
    let events = env.drain(&env.queues.upload_events_bulk, 10).await?;
    let event = events.iter().find(|e| e.contains("ObjectCreated")).expect("an ObjectCreated event");
    let (a, b) = tokio::join!(env.uploads.handle_message(event), env.uploads.handle_message(event));
    // The one that loses the race may ask for its event again (the winner had not sent the
    // message yet when it looked): never a second message.
    let mut outcomes = Vec::new();
    for r in [a, b] {
        match r {
            Ok(o) => outcomes.extend(o),
            Err(e) => assert!(e.is_retryable(), "{e}"),
        }
    }
    assert!(!outcomes.is_empty());
    let c = env.uploads.handle_message(event).await?;
    let outcomes: Vec<UploadOutcome> = outcomes.into_iter().chain(c).collect();
    let enqueued = outcomes.iter().filter(|o| matches!(o, UploadOutcome::Enqueued(_))).count();
    assert_eq!(enqueued, 1, "{outcomes:?}");
    assert_eq!(env.drain(&env.queues.bulk, 2).await?.len(), 1);
    Ok(())
}

#[tokio::test]
async fn direct_upload_and_delete() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let response = env
        .request(Method::POST, "/v1/jobs?priority=express", ALICE_TOKEN)
        .header("content-type", "image/png")
        .body(tiny_png())
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let job: Value = response.json().await?;
    let id = job["job_id"].as_str().unwrap().to_owned();
    env.wait_for_status(&id, "queued", WAIT).await?;
    assert_eq!(env.drain(&env.queues.express, 5).await?.len(), 1);

    let deleted = env.request(Method::DELETE, &format!("/v1/jobs/{id}"), ALICE_TOKEN).send().await?;
    assert_eq!(deleted.status(), StatusCode::OK);
    let head = env.s3.head_object().bucket(&env.bucket).key(format!("uploads/express/{id}")).send().await;
    assert!(head.is_err(), "image removed");
    env.wait_for_status(&id, "deleted", WAIT).await?;
    Ok(())
}

#[tokio::test]
async fn idempotency_keys_hold_under_concurrency() -> anyhow::Result<()> {
    let env = TestEnv::with(Options { poller: false, ..Options::default() }).await?;
    let body = json!({"content_type": "image/webp", "content_length": 999});
    let send = |body: Value| {
        env.request(Method::POST, "/v1/jobs", ALICE_TOKEN).header("idempotency-key", "upload-7").json(&body).send()
    };
    let responses = futures::future::join_all((0..6).map(|_| send(body.clone()))).await;
    let mut ids = std::collections::HashSet::new();
    for r in responses {
        let r = r?;
        assert_eq!(r.status(), StatusCode::CREATED);
        let v: Value = r.json().await?;
        ids.insert(v["job_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids.len(), 1, "one job for one key");
    assert_eq!(env.job_rows().await?, 1);
    let conflict = send(json!({"content_type": "image/webp", "content_length": 1000})).await?;
    assert_eq!(conflict.status(), StatusCode::CONFLICT);
    let v: Value = conflict.json().await?;
    assert_eq!(v["error"]["code"], "idempotency_conflict");
    Ok(())
}

#[tokio::test]
async fn idempotency_keys_are_per_caller() -> anyhow::Result<()> {
    // On MySQL's unique (owner, idempotency_key) index: another caller's identical key makes
    // their own job, with the same body or another (a 409 would tell them the key is in use
    // by someone), and the first caller's replay still gets the first caller's job.
    let env = TestEnv::with(Options { poller: false, ..Options::default() }).await?;
    let send = |token: &'static str, body: &Value| {
        env.request(Method::POST, "/v1/jobs", token).header("idempotency-key", "shared-key-1").json(body).send()
    };
    let body = json!({"content_type": "image/png", "content_length": 10});
    let other = json!({"content_type": "image/jpeg", "content_length": 11});
    let alice: Value = send(ALICE_TOKEN, &body).await?.json().await?;
    let mut ids = std::collections::HashSet::from([alice["job_id"].to_string()]);
    for (token, b) in [(BOB_TOKEN, &other), (BOB_TOKEN, &other), (ALICE_TOKEN, &body)] {
        let r = send(token, b).await?;
        assert_eq!(r.status(), StatusCode::CREATED);
        ids.insert(r.json::<Value>().await?["job_id"].to_string());
    }
    assert_eq!(ids.len(), 2, "one job each, replays included: {ids:?}");
    let r = send(BOB_TOKEN, &body).await?;
    assert_eq!(r.status(), StatusCode::CONFLICT, "bob's own key with another body than bob's");
    let path = format!("/v1/jobs/{}", alice["job_id"].as_str().unwrap());
    assert_eq!(env.request(Method::GET, &path, BOB_TOKEN).send().await?.status(), StatusCode::NOT_FOUND);
    assert_eq!(env.job_rows().await?, 2);
    Ok(())
}

/// `alice`, `Alice` and `alicé` are three callers: under the database's default collation the
/// second found the first's idempotency key and was answered her job (metadata, callback, a
/// fresh PUT URL into her object). Keys differing in case are different keys too.
#[tokio::test]
async fn callers_differing_only_in_case_or_accent_are_kept_apart() -> anyhow::Result<()> {
    let env = TestEnv::with(Options { poller: false, ..Options::default() }).await?;
    let body = json!({"content_type": "image/png", "content_length": 10, "metadata": {"who": "alice"}});
    let send = |token: &'static str, key: &'static str| {
        env.request(Method::POST, "/v1/jobs", token).header("idempotency-key", key).json(&body).send()
    };
    let alice: Value = send(ALICE_TOKEN, "order-1").await?.json().await?;
    let alice_id = alice["job_id"].as_str().unwrap().to_owned();
    for token in [ALICE_UPPER_TOKEN, ALICE_ACCENT_TOKEN] {
        let r = send(token, "order-1").await?;
        assert_eq!(r.status(), StatusCode::CREATED, "{token}: its own new job");
        let theirs: Value = r.json().await?;
        assert_ne!(theirs["job_id"], alice["job_id"], "{token} got alice's job");
        let path = format!("/v1/jobs/{alice_id}");
        assert_eq!(env.request(Method::GET, &path, token).send().await?.status(), StatusCode::NOT_FOUND, "{token}");
        assert_eq!(env.request(Method::DELETE, &path, token).send().await?.status(), StatusCode::NOT_FOUND, "{token}");
    }
    let other_key: Value = send(ALICE_TOKEN, "ORDER-1").await?.json().await?;
    assert_ne!(other_key["job_id"], alice["job_id"], "keys differing in case are two keys");
    let replay: Value = send(ALICE_TOKEN, "order-1").await?.json().await?;
    assert_eq!(replay["job_id"], alice["job_id"], "alice's own replay still answers her job");
    assert_eq!(env.job_rows().await?, 4);
    Ok(())
}

#[tokio::test]
async fn callers_see_only_their_own_jobs() -> anyhow::Result<()> {
    let env = TestEnv::with(Options { poller: false, ..Options::default() }).await?;
    let (_, job) = create(&env, json!({"content_type": "image/png", "content_length": 10})).await?;
    let path = format!("/v1/jobs/{}", job["job_id"].as_str().unwrap());
    for method in [Method::GET, Method::DELETE] {
        let r = env.request(method.clone(), &path, BOB_TOKEN).send().await?;
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{method}");
        let v: Value = r.json().await?;
        assert_eq!(v["error"]["code"], "not_found");
    }
    let mine = env.request(Method::GET, &path, ALICE_TOKEN).send().await?;
    assert_eq!(mine.status(), StatusCode::OK);
    let anonymous = env.http.get(format!("{}{path}", env.api)).send().await?;
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    Ok(())
}

#[tokio::test]
async fn a_deep_queue_answers_503_and_keeps_no_job() -> anyhow::Result<()> {
    let limits = Limits { queue_depth_limit: 3, queue_depth_refresh: Duration::ZERO, ..Limits::default() };
    let env = TestEnv::with(Options { limits, poller: false, ..Options::default() }).await?;
    for i in 0..5 {
        env.sqs.send_message().queue_url(&env.queues.bulk).message_body(format!("filler {i}")).send().await?;
    }
    // Messages a worker holds (in flight) are still to do: they count toward the depth as much as
    // visible ones (here all five are in flight, none visible).
    let held = env
        .sqs
        .receive_message()
        .queue_url(&env.queues.bulk)
        .max_number_of_messages(10)
        .visibility_timeout(60)
        .send()
        .await?;
    assert_eq!(held.messages().len(), 5);
    let r = env
        .request(Method::POST, "/v1/jobs", ALICE_TOKEN)
        .json(&json!({"content_type": "image/png", "content_length": 10}))
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.headers()["retry-after"], "30");
    let v: Value = r.json().await?;
    assert_eq!(v["error"]["code"], "queue_full");
    assert_eq!(env.job_rows().await?, 0);
    // The express queue is empty, so express jobs still go through.
    let (status, _) =
        create(&env, json!({"content_type": "image/png", "content_length": 10, "priority": "express"})).await?;
    assert_eq!(status, StatusCode::CREATED);
    Ok(())
}

#[tokio::test]
async fn malformed_requests_get_json_4xx() -> anyhow::Result<()> {
    let env = TestEnv::with(Options { poller: false, ..Options::default() }).await?;
    let cases = [
        ("{\"content_type\":", 400),
        (r#"{"content_type":"image/png","content_length":10,"extra":1}"#, 422),
        (r#"{"content_type":"image/png","content_length":true}"#, 422),
        (r#"{"content_type":"image/png","content_length":-5}"#, 422),
        (r#"{"content_type":"image/png","content_length":1e30}"#, 422),
        (r#"{"content_type":"image/png","content_length":25000000}"#, 413),
        (r#"{"content_type":"image/png","content_length":10,"priority":"now"}"#, 422),
    ];
    for (body, want) in cases {
        let r = env
            .request(Method::POST, "/v1/jobs", ALICE_TOKEN)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await?;
        assert_eq!(r.status().as_u16(), want, "{body}");
        let v: Value = r.json().await?;
        assert!(v["error"]["code"].is_string(), "{body}: {v}");
    }
    assert_eq!(env.job_rows().await?, 0);
    Ok(())
}

#[tokio::test]
async fn batch_send_routes_each_message_to_its_queue() -> anyhow::Result<()> {
    use ocr_core::ports::JobQueue;
    let env = TestEnv::with(Options { poller: false, ..Options::default() }).await?;
    let messages: Vec<JobMessage> = (0..23)
        .map(|i| JobMessage {
            v: 1,
            job_id: ocr_core::JobId::new(),
            priority: if i % 3 == 0 { Priority::Express } else { Priority::Bulk },
            bucket: env.bucket.clone(),
            key: format!("uploads/x/{i}"),
            content_type: ocr_core::ContentType::Png,
            size: 1,
            enqueued_at_ms: 0,
            fairness_key: Some(ocr_core::quota::fairness_key(if i % 2 == 0 { "alice" } else { "bob" })),
        })
        .collect();
    env.job_queue.send_batch(&messages).await?;
    let express = env.drain(&env.queues.express, 2).await?;
    assert_eq!(express.len(), 8);
    for body in express {
        assert_eq!(JobMessage::parse(&body)?.priority, Priority::Express);
    }
    // Each message is grouped by its caller's fairness key (SQS fair queues), beside the body.
    let groups = env.drain_groups(&env.queues.bulk).await?;
    assert_eq!(groups.len(), 15);
    for (body, group) in groups {
        let job = JobMessage::parse(&body)?;
        let sent = messages.iter().find(|m| m.job_id == job.job_id).expect("a message sent here");
        assert_eq!(group.as_deref(), sent.fairness_key.as_deref(), "{body}");
    }
    Ok(())
}

/// A worker's requeue (a newer version's message, during a rolling deploy) on real SQS: the new
/// message waits out its delay, counts its requeues, starts its receive count over, and the
/// delivered one is gone.
#[tokio::test]
async fn a_requeued_message_comes_back_once_after_its_delay_with_a_fresh_receive_count() -> anyhow::Result<()> {
    use ocr_aws::SqsJobSource;
    use ocr_core::worker::JobSource;
    let env = TestEnv::with(Options { poller: false, ..Options::default() }).await?;
    let source = SqsJobSource::new(&env.aws, &env.queues.express, &env.queues.bulk);
    env.sqs.send_message().queue_url(&env.queues.bulk).message_body(r#"{"v":2,"job_id":"x"}"#).send().await?;
    let mut got = source.receive(Priority::Bulk, 10, Duration::from_secs(2)).await?;
    assert_eq!((got.len(), got[0].receive_count, got[0].requeues), (1, 1, 0));
    let first = got.remove(0);
    source.requeue(&first, Duration::from_secs(2)).await?;
    assert!(source.receive(Priority::Bulk, 10, Duration::from_secs(1)).await?.is_empty(), "delayed");
    let again = source.receive(Priority::Bulk, 10, Duration::from_secs(5)).await?;
    assert_eq!(again.len(), 1, "one copy: the delivered one was deleted");
    assert_eq!((again[0].receive_count, again[0].requeues, again[0].body.as_str()), (1, 1, first.body.as_str()));
    source.requeue(&again[0], Duration::ZERO).await?;
    let third = source.receive(Priority::Bulk, 10, Duration::from_secs(2)).await?;
    assert_eq!((third.len(), third[0].requeues), (1, 2));
    Ok(())
}

/// Issue 12 (1): the database away on the producer side for longer than an upload event's
/// backoff. Every event fails, backs off (1 s, 2 s here; 30 s doubling to 15 min in production)
/// and lands in the upload-events DLQ (one for both priorities' queues), and its job waits in `awaiting_upload`. Once the database
/// is back, the DLQ sweep hands each event to the handler again: every upload made during the
/// outage is queued, once, and the DLQ is empty. Before the sweep, these jobs stayed
/// `awaiting_upload` for good (and read `expired` with no webhook).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_made_during_a_database_outage_are_all_queued_once_it_returns() -> anyhow::Result<()> {
    use std::sync::Arc;

    use ocr_api::poller::PollerSettings;
    use ocr_api::state::Ports;
    use ocr_api::upload::UploadHandler;
    use ocr_aws::{MySqlJobStore, SqsConsumer};
    use ocr_core::JobStatus;
    use ocr_core::ports::{JobStore, SystemClock};

    let env = TestEnv::with(Options { poller: false, ..Options::default() }).await?;
    let (proxy, through_proxy) = env.db_proxy().await?;
    ocr_aws::sql::set_timeout(Duration::from_secs(1));
    // The on-upload side reaches the database through the proxy; the API (creating the jobs)
    // and the test's own reads do not.
    let store = Arc::new(MySqlJobStore::new(&through_proxy, 2, None)?);
    let ports = Ports {
        store: store.clone(),
        objects: env.objects.clone(),
        queue: env.job_queue.clone(),
        clock: Arc::new(SystemClock),
        keys: store.clone(),
        statuses: store.clone(),
        wait_slots: store.clone(),
    };
    let handler = UploadHandler { ports, max_upload_bytes: 20_000_000, max_pages: 50 };
    let upload_dlq = env.queues.dlqs[0].clone();
    assert!(upload_dlq.ends_with("-upload-events-dlq"), "{upload_dlq}");
    let settings = PollerSettings {
        backoff: ocr_integration_tests::quick_backoff(),
        dead_letters: Some((SqsConsumer::new(&env.aws, &upload_dlq), Duration::from_secs(2))),
    };
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let events = vec![
        (SqsConsumer::new(&env.aws, &env.queues.upload_events_express), 2),
        (SqsConsumer::new(&env.aws, &env.queues.upload_events_bulk), 4),
    ];
    let poller = tokio::spawn(ocr_api::poller::run(handler, events, settings, stop_rx));

    proxy.cut();
    let png = tiny_png();
    let mut ids = Vec::new();
    for priority in ["express", "bulk", "express", "bulk", "bulk", "express"] {
        let (status, job) =
            create(&env, json!({"content_type": "image/png", "content_length": png.len(), "priority": priority}))
                .await?;
        assert_eq!(status, StatusCode::CREATED, "{job}");
        assert_eq!(put(&env, &job, png.clone(), None).await?, StatusCode::OK);
        ids.push(job["job_id"].as_str().unwrap().parse::<ocr_core::JobId>()?);
    }
    // Three receives each, backed off, then the DLQ; the sweep finds the database still away.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    while env.queue_total(&upload_dlq).await? < 6 {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "the events never reached the upload-events DLQ");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for id in &ids {
        assert_eq!(env.store.get(id).await?.unwrap().status, JobStatus::AwaitingUpload);
    }
    proxy.restore();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut queued = 0;
        for id in &ids {
            queued += usize::from(env.store.get(id).await?.unwrap().status == JobStatus::Queued);
        }
        if queued == ids.len() {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{queued} of {} jobs queued after the outage",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let mut sent: Vec<ocr_core::JobId> = Vec::new();
    for url in [&env.queues.express, &env.queues.bulk] {
        for body in env.drain(url, 2).await? {
            sent.push(JobMessage::parse(&body)?.job_id);
        }
    }
    sent.sort_by_key(|id| id.to_string());
    let mut want = ids.clone();
    want.sort_by_key(|id| id.to_string());
    assert_eq!(sent, want, "each job queued exactly once");
    assert_eq!(env.queue_total(&upload_dlq).await?, 0, "the sweep deletes what it handled");
    let _ = stop.send(true);
    poller.await?;
    Ok(())
}

/// The on-upload Lambda binary, invoked by its schedule (`{"sweep": "upload-events-dlq"}`),
/// hands every dead-lettered upload event to the upload check and deletes it once handled:
/// after an outage longer than the events' backoff, their jobs are queued without an operator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_on_upload_function_sweeps_its_dead_letter_queue_on_its_schedule() -> anyhow::Result<()> {
    use ocr_integration_tests::lambda::{FakeLambdaRuntime, s3_event_body};

    let env = TestEnv::with(Options { poller: false, ..Options::default() }).await?;
    let runtime = FakeLambdaRuntime::start().await?;
    let upload_dlq = env.queues.dlqs[0].clone();
    let mut function_env = runtime.env("ocr-on-upload");
    function_env.push(("UPLOAD_EVENTS_EXPRESS_QUEUE_URL", env.queues.upload_events_express.clone()));
    function_env.push(("UPLOAD_EVENTS_BULK_QUEUE_URL", env.queues.upload_events_bulk.clone()));
    function_env.push(("UPLOAD_EVENTS_DLQ_URL", upload_dlq.clone()));
    let function = env.spawn("on-upload", &function_env)?;

    let png = tiny_png();
    let mut ids = Vec::new();
    for priority in ["express", "bulk"] {
        let (status, job) =
            create(&env, json!({"content_type": "image/png", "content_length": png.len(), "priority": priority}))
                .await?;
        assert_eq!(status, StatusCode::CREATED, "{job}");
        assert_eq!(put(&env, &job, png.clone(), None).await?, StatusCode::OK);
        let id = job["job_id"].as_str().unwrap().to_owned();
        // Its event, as a long outage leaves it: in the upload-events DLQ.
        let body = s3_event_body(&env.bucket, &format!("uploads/{priority}/{id}"));
        env.sqs.send_message().queue_url(&upload_dlq).message_body(body).send().await?;
        ids.push(id);
    }
    let answer = runtime.invoke(json!({"sweep": "upload-events-dlq"}), WAIT).await?;
    let answer = answer.map_err(|e| anyhow::anyhow!("{e}\n{}", function.logs()))?;
    assert_eq!(answer, json!({"handled": 2, "left": 0, "outage": false}), "{}", function.logs());
    for id in &ids {
        env.wait_for_status(id, "queued", WAIT).await?;
    }
    assert_eq!(env.queue_total(&upload_dlq).await?, 0);
    let queued = env.drain(&env.queues.express, 2).await?.len() + env.drain(&env.queues.bulk, 2).await?.len();
    assert_eq!(queued, 2);
    // Anything else is refused rather than guessed at.
    assert!(runtime.invoke(json!({"hello": "world"}), WAIT).await?.is_err());
    Ok(())
}

/// Issue 15, "express means express": a bulk backlog in upload-events does not delay an express
/// event. Hundreds of real bulk uploads' S3 events wait on their queue and the poller (what
/// `api-local` runs, playing the function's two SQS mappings) is working through them; an express
/// upload made then is queued on the express job queue within seconds, while the bulk backlog is
/// still far from drained. With one upload-events queue for both priorities, its event came after
/// the backlog (30.7 s behind 400 bulk uploads); a bulk loop that held the express one back
/// would fail the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_backlog_in_upload_events_does_not_delay_an_express_event() -> anyhow::Result<()> {
    use futures::{StreamExt, TryStreamExt};
    use ocr_api::poller::PollerSettings;
    use ocr_aws::SqsConsumer;
    use ocr_core::ports::JobStore;
    use ocr_core::{ContentType, NewJob};

    const BACKLOG: u64 = 400;
    // Queued this long after its upload at most: the event's trip through LocalStack, one receive
    // and one check, with room for a loaded CI machine; the backlog takes several times longer.
    const BOUND: Duration = Duration::from_secs(5);

    let env = TestEnv::with(Options { poller: false, ..Options::default() }).await?;
    let png = tiny_png();
    // The backlog: bulk jobs and their uploads (each a real S3 event on the bulk queue), in place
    // before the poller starts.
    let started = tokio::time::Instant::now();
    futures::stream::iter(0..BACKLOG)
        .map(|_| {
            let (env, png) = (&env, png.clone());
            async move {
                let new =
                    NewJob::plain("bob", Priority::Bulk, ContentType::Png, png.len() as u64, ocr_core::ports::now_ms());
                let key = ocr_core::job::object_key(Priority::Bulk, &new.id);
                env.store.insert(new).await?;
                env.s3.put_object().bucket(&env.bucket).key(key).body(png.into()).send().await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(16)
        .try_collect::<()>()
        .await?;
    let bulk_events = env.queues.upload_events(Priority::Bulk).to_owned();
    let deadline = tokio::time::Instant::now() + WAIT;
    // S3 notifies asynchronously (the bucket's test event may be there too).
    while env.queue_total(&bulk_events).await? < BACKLOG {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "the bulk events never all arrived");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("backlog of {BACKLOG} bulk events made in {:?}", started.elapsed());

    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let queues = vec![
        (SqsConsumer::new(&env.aws, &env.queues.upload_events_express), 2),
        (SqsConsumer::new(&env.aws, &env.queues.upload_events_bulk), 4),
    ];
    let settings = PollerSettings { backoff: ocr_integration_tests::quick_backoff(), dead_letters: None };
    let poller = tokio::spawn(ocr_api::poller::run(env.uploads.clone(), queues, settings, stop_rx));
    // The poller is busy with the backlog: its first bulk jobs are queued.
    let deadline = tokio::time::Instant::now() + WAIT;
    while env.queue_total(&env.queues.bulk).await? < 10 {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "no bulk event was handled");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let (status, job) =
        create(&env, json!({"content_type": "image/png", "content_length": png.len(), "priority": "express"})).await?;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    let id: ocr_core::JobId = job["job_id"].as_str().unwrap().parse()?;
    assert_eq!(put(&env, &job, png.clone(), None).await?, StatusCode::OK);
    let uploaded = tokio::time::Instant::now();
    let express = SqsConsumer::new(&env.aws, &env.queues.express);
    let message = loop {
        let left = BOUND.saturating_sub(uploaded.elapsed());
        let bulk_left = env.queue_total(&bulk_events).await?;
        anyhow::ensure!(
            !left.is_zero(),
            "the express job was not queued within {BOUND:?} of its upload ({bulk_left} bulk events still waiting)"
        );
        let got = express.receive(10, left.as_secs().clamp(1, 20) as i32).await?;
        if let Some(m) = got.into_iter().next() {
            break m;
        }
    };
    let waited = uploaded.elapsed();
    let bulk_left = env.queue_total(&bulk_events).await?;
    let bulk_queued = env.queue_total(&env.queues.bulk).await?;
    eprintln!(
        "express job queued {waited:?} after its upload; {bulk_left} bulk events still waiting, {bulk_queued} bulk jobs queued"
    );
    assert_eq!(JobMessage::parse(&message.body)?.job_id, id);
    // Queued while the backlog was still there: the express event overtook it, not followed it.
    assert!(
        bulk_left >= BACKLOG / 4,
        "only {bulk_left} of {BACKLOG} bulk events were left: the backlog was nearly drained"
    );
    assert_eq!(env.store.get(&id).await?.expect("job").status, ocr_core::JobStatus::Queued);

    let _ = stop.send(true);
    poller.await?;
    Ok(())
}

/// The on-upload function reads two queues (one event source mapping each) and backs a failed
/// event off on the queue it came from, named by the record's `eventSourceARN`: with the database
/// away, an express and a bulk event each stay hidden on their own queue for the backoff (30 s)
/// rather than coming back when their receive's visibility (2 s) ends. Backing off on one fixed
/// queue would fail for the other's receipt handle, and that event would come back at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_on_upload_function_backs_an_event_off_on_the_queue_it_came_from() -> anyhow::Result<()> {
    use ocr_aws::SqsConsumer;
    use ocr_integration_tests::lambda::{FakeLambdaRuntime, SqsRecord, sqs_event};

    let env = TestEnv::with(Options { poller: false, ..Options::default() }).await?;
    let (proxy, through_proxy) = env.db_proxy().await?;
    let runtime = FakeLambdaRuntime::start().await?;
    let mut function_env = runtime.env("ocr-on-upload");
    function_env.extend([
        ("DATABASE_URL", through_proxy),
        ("DB_TIMEOUT_MS", "1000".to_owned()),
        ("UPLOAD_RETRY_BASE_SECS", "30".to_owned()),
        ("UPLOAD_EVENTS_EXPRESS_QUEUE_URL", env.queues.upload_events_express.clone()),
        ("UPLOAD_EVENTS_BULK_QUEUE_URL", env.queues.upload_events_bulk.clone()),
    ]);
    let function = env.spawn("on-upload", &function_env)?;

    let png = tiny_png();
    for priority in ["express", "bulk"] {
        let (status, job) =
            create(&env, json!({"content_type": "image/png", "content_length": png.len(), "priority": priority}))
                .await?;
        assert_eq!(status, StatusCode::CREATED, "{job}");
        assert_eq!(put(&env, &job, png.clone(), None).await?, StatusCode::OK);
    }
    proxy.cut();
    for priority in [Priority::Express, Priority::Bulk] {
        // Each event as its mapping takes it: received, hidden 2 s, handed to the function.
        let url = env.queues.upload_events(priority);
        let queue = SqsConsumer::new(&env.aws, url);
        let mut event = None;
        let deadline = tokio::time::Instant::now() + WAIT;
        while event.is_none() {
            anyhow::ensure!(tokio::time::Instant::now() < deadline, "no {priority} upload event");
            for m in queue.receive_with(10, 2, Some(2)).await? {
                if m.body.contains("ObjectCreated") {
                    event = Some(m);
                } else {
                    queue.delete(&m.receipt_handle).await?; // the bucket's s3:TestEvent
                }
            }
        }
        let m = event.expect("an event");
        let record = SqsRecord {
            message_id: m.message_id.clone(),
            receipt_handle: m.receipt_handle,
            body: m.body,
            receive_count: m.receive_count,
        };
        let answer = runtime.invoke(sqs_event(&env.queue_arn(url).await?, &[record]), WAIT).await?;
        let answer = answer.map_err(|e| anyhow::anyhow!("{e}\n{}", function.logs()))?;
        assert_eq!(answer, json!({"batchItemFailures": [{"itemIdentifier": m.message_id}]}), "{}", function.logs());
    }
    // Past the 2 s of their receives: each event is still hidden on its own queue, backed off.
    tokio::time::sleep(Duration::from_secs(4)).await;
    for priority in [Priority::Express, Priority::Bulk] {
        let url = env.queues.upload_events(priority);
        let visible = SqsConsumer::new(&env.aws, url).receive(10, 0).await?;
        assert!(visible.is_empty(), "the {priority} event came back before its backoff\n{}", function.logs());
        assert_eq!(env.queue_total(url).await?, 1, "{priority}");
    }
    assert!(!function.logs().contains("could not back the event off"), "{}", function.logs());
    proxy.restore();
    Ok(())
}
