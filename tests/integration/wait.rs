//! `GET /v1/jobs/{id}?wait=` on MariaDB: one waiting hub serves many waiters with a few reads a
//! tick (counted on the wire), each waking about a tick after its job ends; the places of waiting
//! requests (`job_waits`) hold their caps across racing processes, expire and are given back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use mysql_async::prelude::Queryable;
use ocr_api::config::Limits;
use ocr_api::wait::{WaitCaps, WaitHub, WaitSettings};
use ocr_aws::MySqlJobStore;
use ocr_core::ports::{JobStore, SlotToken, StatusChange, WaitSlots, now_ms};
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
    assert_eq!(wait_rows(&env).await?, 0, "the wait gave its place back");
    Ok(())
}

/// Rows in `job_waits`, expired or not.
async fn wait_rows(env: &TestEnv) -> anyhow::Result<u64> {
    let mut conn = env.db().await?;
    let rows: Option<u64> = conn.query_first("SELECT COUNT(*) FROM job_waits").await?;
    conn.disconnect().await?;
    Ok(rows.unwrap_or(0))
}

/// Through the real router on MariaDB: a caller past `WAIT_MAX_PER_CALLER` gets its job as it is
/// at once, while its first wait still waits; the place is given back after.
#[tokio::test]
async fn past_its_cap_a_callers_wait_answers_at_once() -> anyhow::Result<()> {
    let limits = Limits { wait_caps: WaitCaps { max_total: 10, max_per_caller: 1 }, ..Limits::default() };
    let env = TestEnv::with(Options { poller: false, limits, ..Options::default() }).await?;
    let body = json!({"content_type": "image/png", "content_length": 10});
    let mut ids = Vec::new();
    for _ in 0..2 {
        let created: Value =
            env.request(Method::POST, "/v1/jobs", ALICE_TOKEN).json(&body).send().await?.json().await?;
        ids.push(created["job_id"].as_str().expect("job_id").to_owned());
    }
    let started = Instant::now();
    let first = tokio::spawn(env.request(Method::GET, &format!("/v1/jobs/{}?wait=3", ids[0]), ALICE_TOKEN).send());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(wait_rows(&env).await?, 1);
    let second = Instant::now();
    let answer = env.request(Method::GET, &format!("/v1/jobs/{}?wait=20", ids[1]), ALICE_TOKEN).send().await?;
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(answer.json::<Value>().await?["status"], "awaiting_upload");
    assert!(second.elapsed() < Duration::from_secs(2), "answered at once: {:?}", second.elapsed());
    let answer = first.await??;
    assert_eq!(answer.status(), StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_secs(3), "the first one waited: {:?}", started.elapsed());
    assert_eq!(wait_rows(&env).await?, 0);
    Ok(())
}

/// The adapter of the places (`ocr_core::ports::WaitSlots` on MySQL), as the API function's
/// environments use it: `PROCESSES` stores of one connection each acquire at the same moment,
/// and exactly the cap is admitted, the total cap as the per-caller one; expired places count no
/// more, released ones are free at once, and callers are compared byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_slots_hold_their_caps_across_racing_processes() -> anyhow::Result<()> {
    const PROCESSES: usize = 50;
    let env = TestEnv::with(Options { poller: false, ..Options::default() }).await?;
    let mut stores = Vec::with_capacity(PROCESSES);
    for _ in 0..PROCESSES {
        let store = Arc::new(MySqlJobStore::new(&env.database_url, 1, None)?);
        // Connected first, so that the acquires race on the database, not on connecting.
        drop(store.conn().await?);
        stores.push(store);
    }
    let now = now_ms();
    let until = now + 30_000;
    // Every store acquires once, at the same moment, as `callers[i]`.
    let race = |callers: Vec<String>, at: i64, max_total: u32, max_per_caller: u32| {
        let stores = stores.clone();
        async move {
            let barrier = Arc::new(tokio::sync::Barrier::new(callers.len()));
            let mut racers = tokio::task::JoinSet::new();
            for (store, caller) in stores.into_iter().zip(callers) {
                let barrier = barrier.clone();
                racers.spawn(async move {
                    barrier.wait().await;
                    let got = store.acquire(&caller, JobId::new(), at + 30_000, at, max_total, max_per_caller).await;
                    got.map(|token| (caller, token))
                });
            }
            let started = Instant::now();
            let mut admitted: Vec<(String, SlotToken)> = Vec::new();
            for result in racers.join_all().await {
                if let (caller, Some(token)) = result? {
                    admitted.push((caller, token));
                }
            }
            anyhow::Ok((admitted, started.elapsed()))
        }
    };
    let many = |caller: &str, n: usize| vec![caller.to_owned(); n];

    // The total cap: 50 callers, one acquire each, 10 places.
    let (admitted, took) = race((0..PROCESSES).map(|i| format!("caller-{i}")).collect(), now, 10, 5).await?;
    eprintln!(
        "{PROCESSES} racing acquires of distinct callers, WAIT_MAX_TOTAL 10: {} admitted in {took:?}",
        admitted.len()
    );
    assert_eq!(admitted.len(), 10);
    // Released: all free again.
    for (_, token) in &admitted {
        stores[0].release(token).await?;
        stores[0].release(token).await?;
    }
    assert_eq!(wait_rows(&env).await?, 0);

    // The per-caller cap: 50 acquires of alice, 5 places for her.
    let (admitted, took) = race(many("alice", PROCESSES), now, 100, 5).await?;
    eprintln!(
        "{PROCESSES} racing acquires of one caller, WAIT_MAX_PER_CALLER 5: {} admitted in {took:?}",
        admitted.len()
    );
    assert_eq!(admitted.len(), 5);
    assert!(stores[0].acquire("alice", JobId::new(), until, now, 100, 5).await?.is_none());

    // Both: alice's 5 held until `until`; 25 of alice and 25 of bob race for 8 in all.
    let mut callers = many("alice", PROCESSES / 2);
    callers.extend(many("bob", PROCESSES / 2));
    let (admitted, _) = race(callers.clone(), now, 8, 5).await?;
    assert_eq!((count(&admitted, "alice"), count(&admitted, "bob")), (0, 3), "alice is full, 3 left in all");

    // Expiry: at `until` alice's 5 (and bob's 3, taken until `until` too) count no more.
    let later = until;
    let (admitted, _) = race(callers, later, 8, 5).await?;
    assert_eq!(admitted.len(), 8);
    assert!(count(&admitted, "alice") <= 5 && count(&admitted, "bob") <= 5);

    // Byte for byte: with one place each, `Alice`, `alice ` and `alicé` are not `alice`.
    let at = later + 60_000;
    let one = |caller: &'static str| stores[1].acquire(caller, JobId::new(), at + 30_000, at, 100, 1);
    assert!(one("alice").await?.is_some());
    for other in ["Alice", "alice ", "alicé", "ALICE"] {
        assert!(one(other).await?.is_some(), "{other:?} is a caller of its own");
    }
    assert!(one("alice").await?.is_none(), "alice holds her one place");

    // The sweep (a minute after the last one) deleted the expired rows: only the live ones stay.
    let rows = wait_rows(&env).await?;
    assert_eq!(rows, 5, "the five places taken at `at`");
    Ok(())
}

/// How many of `admitted` are `caller`'s.
fn count(admitted: &[(String, SlotToken)], caller: &str) -> usize {
    admitted.iter().filter(|(c, _)| c == caller).count()
}
