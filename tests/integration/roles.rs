//! Each component connects as its own database user with only the grants its code needs, its
//! password read from Secrets Manager (LocalStack here) at start, never from its configuration.
//! The migrator creates the users (`DB_ROLE_USERS`) after the migrations.

use std::time::Duration;

use mysql_async::prelude::Queryable;
use ocr_aws::roles::{Role, RoleUser};
use ocr_integration_tests::lambda::{FakeLambdaRuntime, http_api_event, sqs_s3_event};
use ocr_integration_tests::worker::{line_images, models_available};
use ocr_integration_tests::{DatabaseServer, Options, TestEnv};
use reqwest::StatusCode;
use secrecy::SecretString;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

/// A secret in (LocalStack's) Secrets Manager holding `{"username", "password"}`; its reference.
async fn secret(env: &TestEnv, user: &str, password: &str) -> anyhow::Result<String> {
    let client = aws_sdk_secretsmanager::Client::new(&env.aws);
    let out = client
        .create_secret()
        .name(format!("{}-{user}", env.name))
        .secret_string(json!({"username": user, "password": password}).to_string())
        .send()
        .await?;
    Ok(format!("{}#password", out.arn().expect("an ARN")))
}

/// The test database's URL for `user`, without a password.
fn url_for(env: &TestEnv, user: &str) -> String {
    env.database_url.replacen("mysql://root@", &format!("mysql://{user}@"), 1)
}

/// The three role users of this test (user names are server-wide: the test's own prefix).
fn users(env: &TestEnv) -> [(Role, String, String); 3] {
    let p = &env.name[3..11];
    [
        (Role::Api, format!("r{p}_api"), format!("Api-{p}-pw1")),
        (Role::Upload, format!("r{p}_upload"), format!("Upl-{p}-pw2")),
        (Role::Worker, format!("r{p}_worker"), format!("Wrk-{p}-pw3")),
    ]
}

async fn provision(env: &TestEnv) -> anyhow::Result<()> {
    let list: Vec<RoleUser> = users(env)
        .into_iter()
        .map(|(role, user, password)| RoleUser { role, user, password: SecretString::from(password) })
        .collect();
    env.store.provision_roles(&list).await?;
    // Twice is fine (the migrator runs at every worker start).
    env.store.provision_roles(&list).await?;
    Ok(())
}

/// Removes the test's users (they are server-wide, unlike its database).
async fn drop_users(env: &TestEnv) -> anyhow::Result<()> {
    let mut conn = env.db().await?;
    for (_, user, _) in users(env) {
        conn.query_drop(format!("DROP USER IF EXISTS '{user}'@'%'")).await?;
    }
    conn.disconnect().await?;
    Ok(())
}

/// What the statement as `user` answers: Ok, or the server's error code.
async fn as_user(env: &TestEnv, user: &str, password: &str, sql: &str) -> anyhow::Result<Result<(), u16>> {
    let url = url_for(env, user).replacen(&format!("mysql://{user}@"), &format!("mysql://{user}:{password}@"), 1);
    let mut conn = mysql_async::Conn::from_url(&url).await?;
    let result = conn.query_drop(sql).await;
    conn.disconnect().await?;
    Ok(match result {
        Ok(()) => Ok(()),
        Err(mysql_async::Error::Server(e)) => Err(e.code),
        Err(e) => return Err(e.into()),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_may_do_only_what_its_code_does() -> anyhow::Result<()> {
    let env = TestEnv::with(Options { poller: false, database: DatabaseServer::plain(), ..Options::default() }).await?;
    provision(&env).await?;
    let [(_, api, api_pw), (_, upload, upload_pw), (_, worker, worker_pw)] = users(&env);
    const DENIED: [u16; 2] = [1142, 1143]; // command or column denied
    for (user, pw, sql, allowed) in [
        (&upload, &upload_pw, "SELECT id FROM jobs LIMIT 1", true),
        (&upload, &upload_pw, "SELECT job_id FROM job_results LIMIT 1", false),
        (&upload, &upload_pw, "DELETE FROM jobs WHERE id = 'x'", false),
        (&api, &api_pw, "SELECT job_id FROM job_results LIMIT 1", true),
        (&api, &api_pw, "INSERT INTO job_results (job_id, result, created_at_ms) VALUES ('x', '{}', 1)", false),
        (&api, &api_pw, "DELETE FROM webhook_deliveries WHERE job_id = 'x'", false),
        (&worker, &worker_pw, "DELETE FROM webhook_deliveries WHERE job_id = 'x'", true),
        (&worker, &worker_pw, "INSERT INTO jobs (id) VALUES ('x')", false),
        (&worker, &worker_pw, "UPDATE webhook_keys SET generation = 9", false),
        (&api, &api_pw, "SELECT owner FROM caller_quotas WHERE owner = 'x' FOR UPDATE", true),
        (&api, &api_pw, "DELETE FROM caller_quotas", false),
        (&upload, &upload_pw, "SELECT owner FROM caller_quotas LIMIT 1", false),
        (&worker, &worker_pw, "DELETE FROM caller_quotas WHERE at_ms < 0", true),
        (&worker, &worker_pw, "UPDATE caller_quotas SET milli_tokens = 0", false),
        (&api, &api_pw, "SELECT swept_ms FROM job_wait_gate WHERE id = 1 FOR UPDATE", true),
        (&api, &api_pw, "UPDATE job_wait_gate SET swept_ms = 1 WHERE id = 1", true),
        (&api, &api_pw, "INSERT INTO job_waits (token, caller, job_id, expires_ms) VALUES ('t', 'x', 'j', 1)", true),
        (&api, &api_pw, "DELETE FROM job_waits WHERE expires_ms <= 1 ORDER BY expires_ms LIMIT 5", true),
        (&api, &api_pw, "DELETE FROM job_wait_gate", false),
        (&worker, &worker_pw, "SELECT token FROM job_waits LIMIT 1", false),
        (&upload, &upload_pw, "DELETE FROM job_waits", false),
        (&api, &api_pw, "CREATE TABLE evil (x INT)", false),
        (&worker, &worker_pw, "DROP TABLE jobs", false),
    ] {
        let got = as_user(&env, user, pw, sql).await?;
        match (allowed, got) {
            (true, Ok(())) => {}
            (false, Err(code)) if DENIED.contains(&code) => {}
            (want, got) => panic!("{user}: {sql}: wanted allowed={want}, got {got:?}"),
        }
    }
    drop_users(&env).await
}

/// The Lambda binaries as their own users, each password a Secrets Manager reference: what
/// they do works, with no password in their environment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_functions_run_as_their_own_users_with_passwords_from_secrets_manager() -> anyhow::Result<()> {
    let env = TestEnv::with(Options { poller: false, ..Options::default() }).await?;
    provision(&env).await?;
    let [(_, api, api_pw), (_, upload, upload_pw), _] = users(&env);
    let (api_runtime, upload_runtime) = (FakeLambdaRuntime::start().await?, FakeLambdaRuntime::start().await?);
    let mut api_env = api_runtime.env("ocr-api");
    api_env.extend([
        ("AUTH_MODE", "jwt".to_owned()),
        ("DATABASE_URL", url_for(&env, &api)),
        ("DATABASE_PASSWORD", secret(&env, &api, &api_pw).await?),
    ]);
    let mut upload_env = upload_runtime.env("ocr-on-upload");
    upload_env.extend([
        ("DATABASE_URL", url_for(&env, &upload)),
        ("DATABASE_PASSWORD", secret(&env, &upload, &upload_pw).await?),
    ]);
    let api_fn = env.spawn("api", &api_env)?;
    let upload_fn = env.spawn("on-upload", &upload_env)?;

    let png = ocr_integration_tests::tiny_png();
    let body = json!({"content_type": "image/png", "content_length": png.len(), "priority": "bulk"});
    let claims = Some(json!({"sub": "alice"}));
    let answer = api_runtime.invoke(http_api_event("POST", "/v1/jobs", Some(&body), claims.clone()), WAIT).await?;
    let answer = answer.map_err(|e| anyhow::anyhow!("{e}\n{}", api_fn.logs()))?;
    assert_eq!(answer["statusCode"], 201, "{answer}\n{}", api_fn.logs());
    let job: Value = serde_json::from_str(answer["body"].as_str().unwrap())?;
    assert_eq!(env.put(&job["upload"], png).await?, StatusCode::OK);
    let id = job["job_id"].as_str().unwrap();
    let answer = upload_runtime.invoke(sqs_s3_event(&env.bucket, &[format!("uploads/bulk/{id}")]), WAIT).await?;
    let answer = answer.map_err(|e| anyhow::anyhow!("{e}\n{}", upload_fn.logs()))?;
    assert_eq!(answer["batchItemFailures"], json!([]), "{answer}\n{}", upload_fn.logs());
    let answer =
        api_runtime.invoke(http_api_event("GET", &format!("/v1/jobs/{id}"), None, claims.clone()), WAIT).await?;
    let view: Value = serde_json::from_str(answer.map_err(anyhow::Error::msg)?["body"].as_str().unwrap())?;
    assert_eq!(view["status"], "queued");
    // A waiting GET takes a place in `job_waits` and gives it back, as this user: it waits.
    let mut waiting = http_api_event("GET", &format!("/v1/jobs/{id}"), None, claims);
    waiting["rawQueryString"] = json!("wait=1");
    waiting["queryStringParameters"] = json!({"wait": "1"});
    let started = std::time::Instant::now();
    let answer = api_runtime.invoke(waiting, WAIT).await?.map_err(anyhow::Error::msg)?;
    assert_eq!(answer["statusCode"], 200, "{answer}");
    let logs = api_fn.logs();
    assert!(started.elapsed() >= Duration::from_secs(1), "it answered at once: {logs}");
    assert!(!logs.contains("waiting place"), "{logs}");
    for logs in [api_fn.logs(), upload_fn.logs()] {
        assert!(!logs.contains(&api_pw) && !logs.contains(&upload_pw), "a password was logged");
    }
    drop_users(&env).await
}

/// The worker migrates as the migration account, creates the role users from DB_ROLE_USERS
/// (passwords read from Secrets Manager), then works as its own user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_migrates_provisions_and_works_as_its_own_user() -> anyhow::Result<()> {
    if !models_available() {
        return Ok(());
    }
    let env = TestEnv::new().await?;
    let all = users(&env);
    let mut spec = Vec::new();
    for (role, user, password) in &all {
        let name = match role {
            Role::Api => "api",
            Role::Upload => "upload",
            Role::Worker => "worker",
        };
        spec.push(format!("{name}={user}:{}", secret(&env, user, password).await?));
    }
    let (_, worker_user, worker_pw) = &all[2];
    let (image, text) = line_images(1)?.remove(0);
    let body = json!({"content_type": "image/png", "content_length": image.len()});
    let job: Value = env
        .request(reqwest::Method::POST, "/v1/jobs", ocr_integration_tests::ALICE_TOKEN)
        .json(&body)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(env.put(&job["upload"], image).await?, StatusCode::OK);
    let worker = env.spawn_worker(&[
        ("DB_MIGRATE", "true".into()),
        ("MIGRATION_DATABASE_URL", env.database_url.clone()),
        ("DB_ROLE_USERS", spec.join(",")),
        ("DATABASE_URL", url_for(&env, worker_user)),
        ("DATABASE_PASSWORD", secret(&env, &format!("{worker_user}-again"), worker_pw).await?),
    ])?;
    let id = job["job_id"].as_str().unwrap();
    let done =
        env.wait_for_status(id, "succeeded", WAIT).await.map_err(|e| anyhow::anyhow!("{e}\n{}", worker.logs()))?;
    assert_eq!(done["result"]["text"].as_str().map(str::to_lowercase), Some(text.to_lowercase()));
    let logs = worker.logs();
    assert!(logs.contains("database user provisioned"), "{logs}");
    assert!(!logs.contains(worker_pw.as_str()), "a password was logged");
    drop(worker);
    drop_users(&env).await
}
