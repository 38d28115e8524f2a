//! `gpu-worker dlq`: the operators' dead-letter tool against LocalStack and MariaDB.

use std::process::Command;

use ocr_core::ports::{JobStore, StatusChange};
use ocr_core::{ContentType, Job, JobId, JobMessage, JobStatus, NewJob, Priority};
use ocr_integration_tests::worker::worker_binary;
use ocr_integration_tests::{Options, TestEnv};

/// A bulk job taken through the life cycle to `end` (succeeded or failed), and its message.
async fn ended_job(env: &TestEnv, end: JobStatus) -> anyhow::Result<(JobId, String)> {
    let new = NewJob::plain("alice", Priority::Bulk, ContentType::Png, 10, 1);
    let id = new.id;
    let job = env.store.insert(new).await?;
    for (from, to) in [
        (JobStatus::AwaitingUpload, JobStatus::Queued),
        (JobStatus::Queued, JobStatus::Processing),
        (JobStatus::Processing, end),
    ] {
        let change = StatusChange {
            at_ms: 2,
            error: (to == JobStatus::Failed).then(|| "bad pixels".to_owned()),
            ..Default::default()
        };
        assert!(env.store.set_status(&id, from, to, change).await?, "{from} -> {to}");
    }
    let message = JobMessage::for_job(&Job { status: end, ..job }, &env.bucket, 10, 2);
    Ok((id, message.to_json()))
}

fn dlq(env: &TestEnv, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(worker_binary())
        .arg("dlq")
        .args(args)
        .args(["--prefix", &env.name])
        .env("AWS_ENDPOINT_URL", ocr_integration_tests::aws_endpoint())
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".into()))
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("DATABASE_URL", &env.database_url)
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    anyhow::ensure!(
        out.status.success(),
        "dlq {args:?}: {}\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(stdout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_lists_then_redrives_and_resets_only_failed_jobs() -> anyhow::Result<()> {
    let env = TestEnv::with(Options { poller: false, ..Options::default() }).await?;
    let (failed, failed_body) = ended_job(&env, JobStatus::Failed).await?;
    let (done, done_body) = ended_job(&env, JobStatus::Succeeded).await?;
    let (express_dlq, bulk_dlq) = (&env.queues.dlqs[1], &env.queues.dlqs[2]);
    for (queue, body) in [(bulk_dlq, &failed_body), (bulk_dlq, &done_body), (express_dlq, &failed_body)] {
        env.sqs.send_message().queue_url(queue).message_body(body).send().await?;
    }

    let listed = dlq(&env, &["list"])?;
    assert!(listed.contains(&format!("{}-bulk-dlq: 2 message(s)", env.name)), "{listed}");
    assert!(listed.contains(&format!("job={failed}")) && listed.contains(&format!("job={done}")), "{listed}");
    // Listing changed nothing: the same two are there to redrive.
    let redriven = dlq(&env, &["redrive", "--queue", "bulk", "--reset-jobs"])?;
    assert!(redriven.contains("1 of 2 job(s) were failed"), "{redriven}");
    assert!(redriven.contains("redrove 2 message(s)"), "{redriven}");

    let job = env.store.get(&failed).await?.expect("job");
    assert_eq!((job.status, job.attempts, job.error), (JobStatus::Queued, 0, None), "the failed job is tried again");
    assert_eq!(env.store.get(&done).await?.expect("job").status, JobStatus::Succeeded, "a finished job stays so");
    let mut moved = env.drain(&env.queues.bulk, 2).await?;
    moved.sort();
    let mut want = vec![failed_body.clone(), done_body];
    want.sort();
    assert_eq!(moved, want, "both messages are back on the bulk queue, unchanged");
    assert!(env.drain(bulk_dlq, 0).await?.is_empty(), "the bulk DLQ is empty");
    assert_eq!(env.drain(express_dlq, 1).await?, [failed_body], "the express DLQ was not touched");
    Ok(())
}

/// The upload-events DLQ serves both upload-events queues (express and bulk): `redrive --queue
/// upload-events` sends each dead letter back to the queue it came from, so a redriven express
/// event is not put behind the bulk ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_redrives_upload_events_to_the_queue_each_came_from() -> anyhow::Result<()> {
    use ocr_integration_tests::lambda::s3_event_body;

    let env = TestEnv::with(Options { poller: false, ..Options::default() }).await?;
    let upload_dlq = env.queues.dlqs[0].clone();
    let mut sent = Vec::new();
    for priority in [Priority::Express, Priority::Bulk] {
        let url = env.queues.upload_events(priority).to_owned();
        env.drain(&url, 1).await?; // the bucket's s3:TestEvent
        let body = s3_event_body(&env.bucket, &ocr_core::job::object_key(priority, &JobId::new()));
        env.sqs.send_message().queue_url(&url).message_body(&body).send().await?;
        sent.push((url, body));
    }
    // Received until SQS dead-letters them (maxReceiveCount 3), shown again at once each time.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while env.queue_total(&upload_dlq).await? < 2 {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "the events never reached the upload-events DLQ");
        for (url, _) in &sent {
            ocr_aws::SqsConsumer::new(&env.aws, url).receive_with(10, 0, Some(0)).await?;
        }
    }

    let listed = dlq(&env, &["list", "--queue", "upload-events"])?;
    assert!(listed.contains(&format!("{}-upload-events-dlq: 2 message(s)", env.name)), "{listed}");
    let redriven = dlq(&env, &["redrive", "--queue", "upload-events"])?;
    assert!(redriven.contains("redrove 2 message(s) to the queue each came from"), "{redriven}");
    for (url, body) in &sent {
        assert_eq!(&env.drain(url, 2).await?, std::slice::from_ref(body), "{url}");
    }
    assert_eq!(env.queue_total(&upload_dlq).await?, 0);
    Ok(())
}
