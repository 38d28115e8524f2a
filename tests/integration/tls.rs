//! TLS to the database, as in production (RDS Proxy with `require_ssl=true`): every binary
//! (`api` and `on-upload` driven through the Lambda Runtime API, `api-local`, `gpu-worker`)
//! against a MariaDB that requires TLS and presents a certificate from a private CA
//! (scripts/lib/mariadb-tls.sh, which scripts/test.sh starts). The binaries trust that CA
//! through `DATABASE_CA_FILE`; without it they verify against the public roots, as in
//! production.

use std::time::Duration;

use mysql_async::prelude::Queryable;
use ocr_core::ports::JobStore;
use ocr_integration_tests::lambda::{FakeLambdaRuntime, http_api_event, sqs_s3_event};
use ocr_integration_tests::worker::{WorkerProcess, line_images, models_available};
use ocr_integration_tests::{ALICE_TOKEN, DatabaseServer, Options, TestEnv, tiny_png};
use reqwest::StatusCode;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

fn tls_env_options() -> Options {
    // The binaries under test play the on-upload handler: no poller in the test process.
    Options { poller: false, database: DatabaseServer::tls(), ..Options::default() }
}

/// The job's status, straight from the database (over TLS, trusting the test CA).
async fn status(env: &TestEnv, id: &str) -> anyhow::Result<Option<String>> {
    let mut conn = env.db().await?;
    let status = conn.exec_first("SELECT status FROM jobs WHERE id = ?", (id,)).await?;
    conn.disconnect().await?;
    Ok(status)
}

async fn wait_for_status(env: &TestEnv, id: &str, want: &str, process: &WorkerProcess) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let now = status(env, id).await?;
        if now.as_deref() == Some(want) {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("job {id} is {now:?}, wanted {want}; log:\n{}", process.logs());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn the_tls_server_refuses_plain_and_unverified_connections() -> anyhow::Result<()> {
    let tls = DatabaseServer::tls();
    let mut conn = tls.connect(None).await?;
    let cipher: Option<(String, String)> = conn.query_first("SHOW SESSION STATUS LIKE 'Ssl_cipher'").await?;
    assert!(cipher.is_some_and(|(_, c)| !c.is_empty()), "the session is encrypted");
    conn.disconnect().await?;

    let plain = DatabaseServer { url: tls.url.replace("?require_ssl=true", ""), ca_file: None };
    assert!(plain.connect(None).await.is_err(), "a connection without TLS is refused");
    // What production does (public roots only) refuses a certificate from an unknown CA.
    let unverified = DatabaseServer { url: tls.url.clone(), ca_file: None };
    let err = unverified.connect(None).await.expect_err("an unknown CA does not verify");
    assert!(format!("{err:#}").to_lowercase().contains("certificate"), "{err:#}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_local_and_its_upload_check_work_over_tls() -> anyhow::Result<()> {
    let env = TestEnv::with(tls_env_options()).await?;
    let (api, base) = env.spawn_api_local(&[("DB_MIGRATE", "true".into())]).await?;
    let png = tiny_png();
    let created = env
        .http
        .post(format!("{base}/v1/jobs"))
        .bearer_auth(ALICE_TOKEN)
        .json(&json!({"content_type": "image/png", "content_length": png.len(), "priority": "express"}))
        .send()
        .await?;
    anyhow::ensure!(created.status() == StatusCode::CREATED, "{}\n{}", created.status(), api.logs());
    let job: Value = created.json().await?;
    assert_eq!(env.put(&job["upload"], png).await?, StatusCode::OK);
    // api-local's poller runs the on-upload check over the same TLS connections.
    wait_for_status(&env, job["job_id"].as_str().unwrap(), "queued", &api).await?;
    assert!(!api.logs().contains("panicked"), "{}", api.logs());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lambda_functions_work_over_tls() -> anyhow::Result<()> {
    let env = TestEnv::with(tls_env_options()).await?;
    let (api_runtime, upload_runtime) = (FakeLambdaRuntime::start().await?, FakeLambdaRuntime::start().await?);
    let mut api_env = api_runtime.env("ocr-api");
    api_env.push(("AUTH_MODE", "jwt".into()));
    let api = env.spawn("api", &api_env)?;
    let on_upload = env.spawn("on-upload", &upload_runtime.env("ocr-on-upload"))?;

    let png = tiny_png();
    let body = json!({"content_type": "image/png", "content_length": png.len(), "priority": "bulk"});
    let claims = json!({"sub": "alice", "iss": "https://issuer.example.com", "aud": "ocr"});
    let event = http_api_event("POST", "/v1/jobs", Some(&body), Some(claims.clone()));
    let answer = api_runtime.invoke(event, WAIT).await?;
    let answer = answer.map_err(|e| anyhow::anyhow!("api failed: {e}\n{}", api.logs()))?;
    assert_eq!(answer["statusCode"], 201, "{answer}\n{}", api.logs());
    let job: Value = serde_json::from_str(answer["body"].as_str().expect("body"))?;
    assert_eq!(env.put(&job["upload"], png).await?, StatusCode::OK);

    let id = job["job_id"].as_str().unwrap();
    let key = format!("uploads/bulk/{id}");
    let answer = upload_runtime.invoke(sqs_s3_event(&env.bucket, &[key]), WAIT).await?;
    let answer = answer.map_err(|e| anyhow::anyhow!("on-upload failed: {e}\n{}", on_upload.logs()))?;
    assert_eq!(answer["batchItemFailures"], json!([]), "{answer}\n{}", on_upload.logs());
    assert_eq!(status(&env, id).await?.as_deref(), Some("queued"));

    let event = http_api_event("GET", &format!("/v1/jobs/{id}"), None, Some(claims));
    let answer = api_runtime.invoke(event, WAIT).await?.map_err(anyhow::Error::msg)?;
    assert_eq!(answer["statusCode"], 200, "{answer}");
    let view: Value = serde_json::from_str(answer["body"].as_str().expect("body"))?;
    assert_eq!(view["status"], "queued");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_works_over_tls() -> anyhow::Result<()> {
    if !models_available() {
        return Ok(());
    }
    let env = TestEnv::with(Options { database: DatabaseServer::tls(), ..Options::default() }).await?;
    let (image, text) = line_images(1)?.remove(0);
    let created = env
        .request(reqwest::Method::POST, "/v1/jobs", ALICE_TOKEN)
        .json(&json!({"content_type": "image/png", "content_length": image.len(), "priority": "express"}))
        .send()
        .await?;
    assert_eq!(created.status(), StatusCode::CREATED);
    let job: Value = created.json().await?;
    assert_eq!(env.put(&job["upload"], image).await?, StatusCode::OK);
    let worker = env.spawn_worker(&[])?;
    let id = job["job_id"].as_str().unwrap();
    wait_for_status(&env, id, "succeeded", &worker).await?;
    let result = env.store.get_result(&id.parse()?).await?.expect("a result");
    assert_eq!(result.text.to_lowercase(), text.to_lowercase(), "{result:?}");
    Ok(())
}
