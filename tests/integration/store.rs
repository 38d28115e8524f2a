//! The MySQL job store on a real server.

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
    let at = |ms| StatusChange { at_ms: ms, error: None };
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
    let failed = StatusChange { at_ms: 7, error: Some("engine exploded".into()) };
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
    let store = ocr_aws::MySqlJobStore::new("mysql://root@127.0.0.1:1/none", 1).expect("valid url");
    let err = store.get(&JobId::new()).await.expect_err("nothing listens on port 1");
    assert!(err.is_retryable(), "{err}");
    assert!(ocr_aws::MySqlJobStore::new("postgres://x", 1).is_err());
}
