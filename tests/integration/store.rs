//! The MySQL job store on a real server.

use mysql_async::prelude::Queryable;
use ocr_core::ports::{JobStore, StatusChange};
use ocr_core::{ContentType, JobId, JobStatus, NewJob, PortError, Priority, job::Idempotency};
use ocr_integration_tests::{Options, TestEnv};

fn new_job(owner: &str, key: Option<&str>) -> NewJob {
    NewJob {
        id: JobId::new(),
        owner: owner.into(),
        priority: Priority::Express,
        content_type: ContentType::Png,
        content_length: 123,
        callback_url: Some("https://example.com/hook".into()),
        metadata: Some(serde_json::json!({"order": 7, "note": "ünïcødé"})),
        idempotency: key.map(|k| Idempotency { key: k.into(), request_hash: "ab".repeat(32) }),
        created_at_ms: 1_700_000_000_000,
    }
}

#[tokio::test]
async fn migrations_are_idempotent_and_rows_round_trip() -> anyhow::Result<()> {
    let env = TestEnv::with(Options { poller: false, ..Options::default() }).await?;
    // Twice more, also concurrently: the named lock keeps them apart.
    let (a, b) = tokio::join!(env.store.migrate(), env.store.migrate());
    a?;
    b?;
    let job = env.store.insert(new_job("alice", Some("k1"))).await?;
    let read = env.store.get(&job.id).await?.expect("stored");
    assert_eq!(read, job);
    assert!(matches!(env.store.insert(new_job("alice", Some("k1"))).await, Err(PortError::Conflict(_))));
    env.store.insert(new_job("bob", Some("k1"))).await?;
    assert_eq!(env.store.find_by_idempotency_key("alice", "k1").await?.map(|j| j.id), Some(job.id));
    Ok(())
}

#[tokio::test]
async fn status_changes_are_compare_and_set() -> anyhow::Result<()> {
    let env = TestEnv::with(Options { poller: false, ..Options::default() }).await?;
    let job = env.store.insert(new_job("alice", None)).await?;
    let at = |ms| StatusChange { at_ms: ms, error: None, ..Default::default() };
    // Ten racers, one winner.
    let mut racers = Vec::new();
    for _ in 0..10 {
        let store = env.store.clone();
        let id = job.id;
        racers.push(tokio::spawn(async move {
            store.set_status(&id, JobStatus::AwaitingUpload, JobStatus::Queued, at(5)).await
        }));
    }
    let mut wins = 0;
    for r in racers {
        wins += r.await?? as usize;
    }
    assert_eq!(wins, 1);
    assert!(env.store.set_status(&job.id, JobStatus::Queued, JobStatus::Processing, at(6)).await?);
    let failed = StatusChange { at_ms: 7, error: Some("engine exploded".into()), ..Default::default() };
    assert!(env.store.set_status(&job.id, JobStatus::Processing, JobStatus::Failed, failed).await?);
    let read = env.store.get(&job.id).await?.expect("stored");
    assert_eq!(read.status, JobStatus::Failed);
    assert_eq!(read.attempts, 1);
    assert_eq!((read.queued_at_ms, read.started_at_ms, read.finished_at_ms), (Some(5), Some(6), Some(7)));
    assert_eq!(read.error.as_deref(), Some("engine exploded"));
    env.store.mark_deleted(&job.id, 8).await?;
    let read = env.store.get(&job.id).await?.expect("row kept");
    assert_eq!(read.status, JobStatus::Deleted);
    assert_eq!(read.metadata, None);
    Ok(())
}

#[tokio::test]
async fn an_unreachable_database_is_a_retryable_error() {
    let store = ocr_aws::MySqlJobStore::new("mysql://root@127.0.0.1:1/none", 1, None).expect("valid url");
    let err = store.get(&JobId::new()).await.expect_err("nothing listens on port 1");
    assert!(err.is_retryable(), "{err}");
    assert!(ocr_aws::MySqlJobStore::new("postgres://x", 1, None).is_err());
}

/// The webhook outbox: ending a job with a callback owes a webhook in the same transaction;
/// a sweep takes only debts older than its lease, re-leases what it takes (a second sweep at
/// once gets nothing, concurrent sweeps get disjoint rows), and recording the outcome settles it.
#[tokio::test]
async fn owed_webhooks_are_kept_until_recorded() -> anyhow::Result<()> {
    use ocr_core::OcrResult;
    use ocr_core::worker::{ResultStore, WebhookRecord};

    let env = TestEnv::with(Options { poller: false, ..Options::default() }).await?;
    let store = &env.store;
    let mut ids = Vec::new();
    for callback in [true, true, false] {
        let mut new = new_job("alice", None);
        if !callback {
            new.callback_url = None;
        }
        let job = store.insert(new).await?;
        let queued = StatusChange { at_ms: 1_000, error: None, ..Default::default() };
        assert!(store.set_status(&job.id, JobStatus::AwaitingUpload, JobStatus::Queued, queued).await?);
        ids.push(job.id);
    }
    store.take(&ids, 2_000).await?;
    let result = OcrResult::image(1, 1, vec![], 0.0);
    store.complete(&[(ids[0], result.clone()), (ids[2], result)], 3_000).await?;
    assert!(store.fail(&ids[1], "bad image", 4_000).await?);
    // Giving up keeps the last attempt's error in front of the reason, and only for jobs not
    // yet over.
    assert!(!store.give_up(&ids[1], "dead-lettered", 4_500).await?);

    // Nothing is due before its lease.
    assert!(store.claim_notifications(2_999, 10_000, 10).await?.is_empty());
    // Concurrent sweeps take disjoint sets; the job without a callback owes nothing.
    let (a, b) =
        tokio::join!(store.claim_notifications(5_000, 10_000, 10), store.claim_notifications(5_000, 10_000, 10));
    let mut claimed: Vec<_> = a?.into_iter().chain(b?).map(|o| (o.job_id, o.status)).collect();
    claimed.sort_by_key(|(id, _)| id.to_string());
    let mut want = vec![(ids[0], JobStatus::Succeeded), (ids[1], JobStatus::Failed)];
    want.sort_by_key(|(id, _)| id.to_string());
    assert_eq!(claimed, want);
    // Re-leased from 10 000: not due again until a lease later.
    assert!(store.claim_notifications(9_999, 11_000, 10).await?.is_empty());

    let record = |job_id, outcome: &str| WebhookRecord {
        job_id,
        url: "https://example.com/hook".into(),
        outcome: outcome.into(),
        attempts: 1,
        status_code: Some(200),
        error: None,
        at_ms: 12_000,
    };
    store.record_webhook(&record(ids[0], "delivered")).await?;
    let left = store.claim_notifications(20_000, 20_000, 10).await?;
    assert_eq!(left.iter().map(|o| o.job_id).collect::<Vec<_>>(), vec![ids[1]]);
    store.record_webhook(&record(ids[1], "failed")).await?;
    assert!(store.claim_notifications(i64::MAX, 30_000, 10).await?.is_empty());
    Ok(())
}

/// A job the queue gave up on keeps the error of its last attempt in front of the reason, and
/// its webhook is owed; a job without a recorded error gets the reason alone.
#[tokio::test]
async fn giving_up_keeps_the_last_attempts_error() -> anyhow::Result<()> {
    use ocr_core::worker::ResultStore;

    let env = TestEnv::with(Options { poller: false, ..Options::default() }).await?;
    let store = &env.store;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let job = store.insert(new_job("alice", None)).await?;
        let queued = StatusChange { at_ms: 1_000, error: None, ..Default::default() };
        assert!(store.set_status(&job.id, JobStatus::AwaitingUpload, JobStatus::Queued, queued).await?);
        ids.push(job.id);
    }
    store.take(&ids, 2_000).await?;
    store.note_attempt_error(&ids[0], "image does not decode", 2_500).await?;
    assert!(store.give_up(&ids[0], "dead-lettered", 3_000).await?);
    assert!(store.give_up(&ids[1], "dead-lettered", 3_000).await?);
    let first = store.get(&ids[0]).await?.expect("row");
    assert_eq!(first.status, JobStatus::Failed);
    assert_eq!(first.error.as_deref(), Some("image does not decode; dead-lettered"));
    assert_eq!(store.get(&ids[1]).await?.expect("row").error.as_deref(), Some("dead-lettered"));
    // Over is over: a second give-up changes nothing.
    assert!(!store.give_up(&ids[0], "again", 4_000).await?);
    let owed = store.claim_notifications(3_000, 5_000, 10).await?;
    assert_eq!(owed.len(), 2, "{owed:?}");
    Ok(())
}

/// S3 (LocalStack) honours the version a read asks for: after a second PUT, a read of the
/// first version is `Changed`, not the new bytes.
#[tokio::test]
async fn reads_of_a_replaced_object_version_fail() -> anyhow::Result<()> {
    use ocr_core::ports::ObjectStore;
    let env = TestEnv::new().await?;
    let key = "uploads/bulk/versioned";
    env.objects.put(key, "image/png", bytes::Bytes::from_static(b"first")).await?;
    let first = env.objects.head(key).await?.and_then(|i| i.etag).expect("an ETag");
    assert_eq!(env.objects.get(key, Some(&first)).await?.as_ref(), b"first");
    assert_eq!(env.objects.read_range(key, 1, 3, Some(&first)).await?.as_ref(), b"irs");
    env.objects.put(key, "image/png", bytes::Bytes::from_static(b"other")).await?;
    assert!(matches!(env.objects.get(key, Some(&first)).await, Err(ocr_core::PortError::Changed)));
    assert!(matches!(env.objects.read_range(key, 0, 5, Some(&first)).await, Err(ocr_core::PortError::Changed)));
    assert_eq!(env.objects.get(key, None).await?.as_ref(), b"other");
    Ok(())
}

/// Retention on MySQL: old jobs lose their result, webhook records and what the caller sent,
/// then their rows, at most `max` per call; younger jobs are untouched.
#[tokio::test]
async fn the_purge_strips_then_deletes_old_jobs_in_bounded_batches() -> anyhow::Result<()> {
    use ocr_core::worker::{Purged, ResultStore, WebhookRecord};
    let env = TestEnv::with(Options { poller: false, ..Options::default() }).await?;
    const DAY: i64 = 86_400_000;
    let now = 1_000 * DAY;
    let mut ids = Vec::new();
    for age in [1, 8, 8, 9, 20, 21] {
        let job = NewJob {
            callback_url: Some("https://hooks.example.com/x".into()),
            metadata: Some(serde_json::json!({"age": age})),
            ..NewJob::plain("alice", Priority::Bulk, ContentType::Png, 1, now - age * DAY)
        };
        let id = job.id;
        env.store.insert(job).await?;
        let at = StatusChange { at_ms: now, ..Default::default() };
        env.store.set_status(&id, JobStatus::AwaitingUpload, JobStatus::Queued, at.clone()).await?;
        env.store.take(&[id], now).await?;
        let result = ocr_core::OcrResult::image(1, 1, vec![], 0.0);
        env.store.complete(&[(id, result)], now).await?;
        let record = WebhookRecord {
            job_id: id,
            url: "https://hooks.example.com/x".into(),
            outcome: "delivered".into(),
            attempts: 1,
            status_code: Some(200),
            error: None,
            at_ms: now,
        };
        env.store.record_webhook(&record).await?;
        ids.push((id, age));
    }
    let (strip, delete) = (now - 7 * DAY, now - 14 * DAY);
    // Two callers' creation budgets: one idle for longer than the retention (a full bucket
    // again: its row goes), one recent (kept).
    let mut conn = env.db().await?;
    conn.exec_drop(
        "INSERT INTO caller_quotas (owner, milli_tokens, at_ms) VALUES ('idle', 0, ?), ('recent', 0, ?)",
        (now - 8 * DAY, now - DAY),
    )
    .await?;
    // Oldest first, two at a time: the 21- and 20-day-old jobs are stripped and deleted by the
    // first call, then the 9- and 8-day-old ones stripped, then the last 8-day-old one.
    assert_eq!(env.store.purge(strip, delete, 2, now).await?, Purged { stripped: 2, deleted: 2 }, "bounded");
    assert_eq!(env.store.purge(strip, delete, 2, now).await?, Purged { stripped: 2, deleted: 0 });
    assert_eq!(env.store.purge(strip, delete, 2, now).await?, Purged { stripped: 1, deleted: 0 });
    assert_eq!(env.store.purge(strip, delete, 2, now).await?, Purged::default());
    let budgets: Vec<String> = conn.query("SELECT owner FROM caller_quotas").await?;
    assert_eq!(budgets, ["recent"]);
    for (id, age) in ids {
        let job = env.store.get(&id).await?;
        let result = env.store.get_result(&id).await?;
        let deliveries: Option<u64> =
            conn.exec_first("SELECT COUNT(*) FROM webhook_deliveries WHERE job_id = ?", (id.to_string(),)).await?;
        match age {
            1 => assert!(job.is_some() && result.is_some() && deliveries == Some(1), "young: untouched"),
            8 | 9 => {
                let job = job.expect("kept a while");
                assert!(
                    job.metadata.is_none() && job.callback_url.is_none() && result.is_none() && deliveries == Some(0)
                );
            }
            _ => assert!(job.is_none() && result.is_none() && deliveries == Some(0), "{age} days: gone"),
        }
    }
    conn.disconnect().await?;
    Ok(())
}

/// Per-caller quotas hold under concurrency, across API instances (two pools here), and per
/// caller byte for byte: racing creations of one caller never get past its limit together.
#[tokio::test]
async fn caller_quotas_hold_across_instances_and_concurrent_creations() -> anyhow::Result<()> {
    use ocr_aws::MySqlJobStore;
    use ocr_core::quota::{Admission, CallerQuota, QuotaRefusal};

    let env = TestEnv::with(Options { poller: false, ..Options::default() }).await?;
    let other_instance = std::sync::Arc::new(MySqlJobStore::new(&env.database_url, 4, None)?);
    let stores = [env.store.clone(), other_instance];
    let now = ocr_core::ports::now_ms();
    let race = |quota: CallerQuota, owner: &'static str, n: usize| {
        let stores = stores.clone();
        async move {
            let mut racers = tokio::task::JoinSet::new();
            for i in 0..n {
                let store = stores[i % 2].clone();
                let mut job = new_job(owner, None);
                job.created_at_ms = now;
                racers.spawn(async move { store.insert_within(job, &quota).await });
            }
            let (mut admitted, mut refused) = (0, Vec::new());
            for r in racers.join_all().await {
                match r? {
                    Admission::Admitted(_) => admitted += 1,
                    Admission::Refused(why) => refused.push(why),
                }
            }
            anyhow::Ok((admitted, refused))
        }
    };
    let waiting = CallerQuota {
        max_waiting: 5,
        rate_per_sec: 0.0,
        burst: 1,
        upload_window_ms: 60_000,
        waiting_retry_after_secs: 9,
    };
    let (admitted, refused) = race(waiting, "alice", 16).await?;
    assert_eq!(admitted, 5, "{refused:?}");
    assert!(refused.iter().all(|r| *r == QuotaRefusal::TooManyWaiting { limit: 5, retry_after_secs: 9 }));
    // Callers are told apart byte for byte: `Alice` is not `alice`.
    assert_eq!(race(waiting, "Alice", 6).await?.0, 5);

    let rate = CallerQuota { max_waiting: 0, rate_per_sec: 0.01, burst: 3, ..waiting };
    let (admitted, refused) = race(rate, "bob", 12).await?;
    assert_eq!(admitted, 3, "the burst, once, across both instances: {refused:?}");
    assert!(
        refused.iter().all(|r| matches!(r, QuotaRefusal::RateLimited { retry_after_secs: 100, .. })),
        "{refused:?}"
    );

    // Jobs that stop waiting free their places; ones whose upload window closed hold none.
    let mut conn = mysql_async::Conn::from_url(&env.database_url).await?;
    conn.query_drop("UPDATE jobs SET status = 'processing' WHERE owner = 'alice' LIMIT 2").await?;
    assert_eq!(race(waiting, "alice", 4).await?.0, 2);
    conn.query_drop("UPDATE jobs SET created_at_ms = created_at_ms - 60001 WHERE owner = 'Alice'").await?;
    assert_eq!(race(waiting, "Alice", 6).await?.0, 5);
    conn.disconnect().await?;
    Ok(())
}

/// Issue 12 (2): a server that stops answering without closing its connections (stopped with
/// SIGSTOP, a proxy on the way that hangs). The driver has no read timeout, so before
/// `DB_TIMEOUT_MS` every call on such a connection waited forever. Now each call, on a pooled
/// connection or a new one, and each write in a transaction, fails as retryable within the
/// timeout; once the server answers again the same store works, nothing half-written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_database_fails_each_call_in_bounded_time_then_recovers() -> anyhow::Result<()> {
    use std::time::{Duration, Instant};

    use ocr_aws::MySqlJobStore;
    use ocr_core::worker::ResultStore;

    let env = TestEnv::with(Options { poller: false, ..Options::default() }).await?;
    let (proxy, url) = env.db_proxy().await?;
    ocr_aws::sql::set_timeout(Duration::from_secs(1));
    let store = MySqlJobStore::new(&url, 2, None)?;
    let job = env.store.insert(new_job("alice", None)).await?;
    let queued = StatusChange { at_ms: 1_000, error: None, ..Default::default() };
    assert!(store.set_status(&job.id, JobStatus::AwaitingUpload, JobStatus::Queued, queued).await?);

    proxy.freeze();
    let bounded = |started: Instant, what: &str| {
        let took = started.elapsed();
        assert!(took < Duration::from_secs(3), "{what} took {took:?} against a hung server");
    };
    let t = Instant::now();
    let e = store.get(&job.id).await.expect_err("a hung server cannot answer");
    assert!(e.is_retryable(), "{e}");
    assert!(e.to_string().contains("DB_TIMEOUT_MS"), "{e}");
    bounded(t, "a read on a pooled connection");
    let t = Instant::now();
    let e = store.take(&[job.id], 2_000).await.expect_err("nor write");
    assert!(e.is_retryable(), "{e}");
    bounded(t, "a transaction");
    // A store with no connection yet: the handshake itself hangs.
    let fresh = MySqlJobStore::new(&url, 1, None)?;
    let t = Instant::now();
    assert!(fresh.get(&job.id).await.expect_err("no handshake").is_retryable());
    bounded(t, "a new connection");

    proxy.thaw();
    let deadline = Instant::now() + Duration::from_secs(20);
    let got = loop {
        match store.get(&job.id).await {
            Ok(got) => break got,
            Err(e) if Instant::now() < deadline => {
                assert!(e.is_retryable(), "{e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => anyhow::bail!("the store did not recover: {e}"),
        }
    };
    let got = got.expect("the job");
    // The timed-out take either committed whole or not at all.
    assert!(matches!(got.status, JobStatus::Queued | JobStatus::Processing), "{:?}", got.status);
    assert_eq!(got.attempts, u32::from(got.status == JobStatus::Processing));
    assert!(!store.take(&[job.id], 3_000).await?.is_empty());
    assert!(fresh.get(&job.id).await?.is_some());
    Ok(())
}

/// Issue 12 (7): the template deploys RDS for MariaDB because every test runs on MariaDB; a
/// run against another engine would no longer test what ships.
#[tokio::test]
async fn the_tests_run_on_the_engine_the_template_deploys() -> anyhow::Result<()> {
    let env = TestEnv::with(Options { poller: false, ..Options::default() }).await?;
    let mut conn = mysql_async::Conn::from_url(&env.database_url).await?;
    let version: Option<String> = conn.query_first("SELECT VERSION()").await?;
    conn.disconnect().await?;
    let version = version.unwrap_or_default();
    assert!(version.contains("MariaDB"), "the template deploys RDS for MariaDB; this server is {version}");
    Ok(())
}
