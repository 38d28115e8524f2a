//! `GET /v1/jobs/{id}?wait=` on MariaDB: one waiting hub serves many waiters with a few reads a
//! tick (counted on the wire), each waking about a tick after its job ends.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use mysql_async::prelude::Queryable;
use ocr_api::wait::{WaitHub, WaitSettings};
use ocr_aws::MySqlJobStore;
use ocr_core::ports::{JobStore, StatusChange, now_ms};
use ocr_core::{ContentType, JobId, JobStatus, NewJob, Priority};
use ocr_integration_tests::wire::CommandCounter;
use ocr_integration_tests::{ALICE_TOKEN, BOB_TOKEN, DatabaseServer, Options, TestEnv};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const WAITERS: usize = 1_000;
const BATCHES: usize = 10;
const TICK: Duration = Duration::from_millis(100);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_hub_serves_a_thousand_waiters_with_a_few_reads_a_tick() -> anyhow::Result<()> {
    let env = TestEnv::with(Options { poller: false, ..Options::default() }).await?;
    // The hub reads through a proxy that counts statements; the test's own writes do not.
    let counter = CommandCounter::start(&DatabaseServer::plain().addr()).await?;
    let db = env.database_url.rsplit('/').next().expect("database name");
    let through = DatabaseServer::plain().via(&format!("127.0.0.1:{}", counter.port)).database_url(db);
    let hub = WaitHub::new(
        Arc::new(MySqlJobStore::new(&through, 4, None)?),
        WaitSettings { tick: TICK, max_waiters: WAITERS },
    );

    let ids: Vec<JobId> = futures::stream::iter(0..WAITERS)
        .map(|_| env.store.insert(NewJob::plain("alice", Priority::Bulk, ContentType::Png, 10, now_ms())))
        .buffer_unordered(8)
        .map(|job| job.map(|j| j.id))
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    let started = Instant::now();
    let waiters: Vec<_> = ids
        .iter()
        .map(|id| {
            let waiter = hub.register(*id).expect("under the cap");
            tokio::spawn(async move { waiter.ended_within(Duration::from_secs(30)).await.then(Instant::now) })
        })
        .collect();
    assert!(hub.register(ids[0]).is_none(), "the cap holds");

    // Nothing ends for a second: two reads a tick (500 ids each), whatever the waiters' number.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = hub.stats();
    assert_eq!(idle.waiters, WAITERS);
    assert!(idle.reads <= 2 * (idle.ticks + 1) && idle.ticks <= 11, "{idle:?}");

    // Then a tenth of the jobs ends every 300 ms.
    let mut conn = env.db().await?;
    let mut ended_at = Vec::new();
    for batch in ids.chunks(WAITERS / BATCHES) {
        let list = batch.iter().map(|id| format!("'{id}'")).collect::<Vec<_>>().join(",");
        let at = now_ms();
        conn.query_drop(format!(
            "UPDATE jobs SET status = 'succeeded', finished_at_ms = {at}, updated_at_ms = {at} WHERE id IN ({list})"
        ))
        .await?;
        ended_at.push(Instant::now());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let mut latencies = Vec::new();
    for (i, waiter) in waiters.into_iter().enumerate() {
        let woke = waiter.await?.unwrap_or_else(|| panic!("waiter {i} timed out"));
        latencies.push(woke.saturating_duration_since(ended_at[i / (WAITERS / BATCHES)]));
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let (p50, p99, max) = (latencies[WAITERS / 2], latencies[WAITERS * 99 / 100], latencies[WAITERS - 1]);

    let stats = hub.stats();
    let seen = counter.commands();
    eprintln!(
        "{WAITERS} waiters over {elapsed:?}: {} ticks, {} reads by the hub, {} statements on the wire \
         ({} connections); woken after their job's end: p50 {p50:?}, p99 {p99:?}, max {max:?}",
        stats.ticks, stats.reads, seen.queries, seen.connections
    );
    // Each waiter woke within about a tick of its job's end (a tick, the read itself, and the
    // scheduling of a thousand tasks on two loaded cores).
    assert!(p50 <= TICK + Duration::from_millis(50), "p50 {p50:?}");
    assert!(max <= TICK * 3 + Duration::from_millis(400), "max {max:?}");
    // At most ⌈watched / 500⌉ = 2 reads a tick, each one statement (besides a connection's own
    // set-up queries): polling would have been one read per waiter per poll.
    let ticks_possible = (elapsed.as_millis() / TICK.as_millis()) as u64 + 1;
    assert!(stats.ticks <= ticks_possible, "{stats:?} in {elapsed:?}");
    assert!(stats.reads <= 2 * stats.ticks, "{stats:?}");
    assert!(seen.queries >= stats.reads as usize, "{seen:?} {stats:?}");
    assert!(seen.queries <= stats.reads as usize + 5 * seen.connections, "{seen:?} {stats:?}");
    assert!(seen.queries < WAITERS / 5, "{seen:?}");
    assert_eq!((stats.waiters, stats.watched), (0, 0));
    Ok(())
}

/// Through the real router on MariaDB: the owner's waiting GET answers when the job ends,
/// someone else's is the immediate 404.
#[tokio::test]
async fn a_waiting_get_answers_when_the_job_ends() -> anyhow::Result<()> {
    let env = TestEnv::with(Options { poller: false, ..Options::default() }).await?;
    let body = json!({"content_type": "image/png", "content_length": 10});
    let created: Value = env.request(Method::POST, "/v1/jobs", ALICE_TOKEN).json(&body).send().await?.json().await?;
    let id: JobId = created["job_id"].as_str().expect("job_id").parse()?;
    let path = format!("/v1/jobs/{id}?wait=20");

    let started = Instant::now();
    let bob = env.request(Method::GET, &path, BOB_TOKEN).send().await?;
    assert_eq!(bob.status(), StatusCode::NOT_FOUND);
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());

    let waiting = tokio::spawn(env.request(Method::GET, &path, ALICE_TOKEN).send());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let change = StatusChange { at_ms: now_ms(), error: Some("test: ended mid-wait".into()), ..Default::default() };
    assert!(env.store.set_status(&id, JobStatus::AwaitingUpload, JobStatus::Failed, change).await?);
    let ended = Instant::now();
    let answer = waiting.await??;
    let after_end = ended.elapsed();
    assert_eq!(answer.status(), StatusCode::OK);
    let job: Value = answer.json().await?;
    assert_eq!((job["status"].as_str(), job["error"].as_str()), (Some("failed"), Some("test: ended mid-wait")));
    assert!(after_end < Duration::from_secs(2), "answered {after_end:?} after the end");
    Ok(())
}
