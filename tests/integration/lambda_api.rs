//! The API as it runs on AWS: the `api` binary in `AUTH_MODE=jwt`, driven through the Lambda
//! Runtime API with API Gateway HTTP API (payload 2.0) events whose JWT authorizer claims name
//! the caller. Long, unicode and case-variant subjects are each their own caller; a request
//! without the authorizer's claims is 401.

use std::time::Duration;

use ocr_integration_tests::lambda::{FakeLambdaRuntime, http_api_event};
use ocr_integration_tests::worker::WorkerProcess;
use ocr_integration_tests::{Options, TestEnv};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

struct Api {
    runtime: FakeLambdaRuntime,
    process: WorkerProcess,
}

impl Api {
    async fn start(env: &TestEnv) -> anyhow::Result<Self> {
        let runtime = FakeLambdaRuntime::start().await?;
        let mut vars = runtime.env("ocr-api");
        vars.push(("AUTH_MODE", "jwt".into()));
        let process = env.spawn("api", &vars)?;
        Ok(Api { runtime, process })
    }

    /// The function's answer: (status, body as JSON).
    async fn call(&self, method: &str, path: &str, body: Option<&Value>, claims: Option<Value>) -> (u16, Value) {
        let answer = self.runtime.invoke(http_api_event(method, path, body, claims), WAIT).await.expect("an answer");
        let answer = answer.unwrap_or_else(|e| panic!("the function failed: {e}\n{}", self.process.logs()));
        let status = answer["statusCode"].as_u64().expect("statusCode") as u16;
        let body = answer["body"].as_str().map(|b| serde_json::from_str(b).unwrap_or(json!(b))).unwrap_or(Value::Null);
        (status, body)
    }
}

fn claims(sub: &str) -> Option<Value> {
    Some(json!({"sub": sub, "iss": "https://issuer.example.com", "aud": "ocr", "scope": "ocr"}))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_subjects_are_callers_compared_exactly() -> anyhow::Result<()> {
    let env = TestEnv::with(Options { poller: false, ..Options::default() }).await?;
    let api = Api::start(&env).await?;
    let body = json!({"content_type": "image/png", "content_length": 10});
    let long = "x".repeat(4_000);
    let subjects = [
        "alice".to_owned(),
        "Alice".to_owned(),
        "alicé".to_owned(),
        "ユーザー🙂".to_owned(),
        long.clone(),
        format!("{long}y"),
        // What the long subject's jobs are kept under: naming it does not reach them.
        ocr_api::auth::owner_key(&long),
    ];
    let mut jobs = Vec::new();
    for sub in &subjects {
        let (status, job) = api.call("POST", "/v1/jobs", Some(&body), claims(sub)).await;
        assert_eq!(status, 201, "{sub:.40}: {job}");
        let path = format!("/v1/jobs/{}", job["job_id"].as_str().unwrap());
        let (status, _) = api.call("GET", &path, None, claims(sub)).await;
        assert_eq!(status, 200, "{sub:.40} reads its own job");
        jobs.push(path);
    }
    for (i, path) in jobs.iter().enumerate() {
        for (j, sub) in subjects.iter().enumerate().filter(|(j, _)| *j != i) {
            let (status, _) = api.call("GET", path, None, claims(sub)).await;
            assert_eq!(status, 404, "{sub:.40} must not read the job of {:.40}", subjects[i]);
            let (status, _) = api.call("DELETE", path, None, claims(sub)).await;
            assert_eq!(status, 404, "{sub:.40} must not delete the job of {:.40} ({j})", subjects[i]);
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_the_authorizers_subject_are_401() -> anyhow::Result<()> {
    let env = TestEnv::with(Options { poller: false, ..Options::default() }).await?;
    let api = Api::start(&env).await?;
    let body = json!({"content_type": "image/png", "content_length": 10});
    let no_sub = Some(json!({"iss": "https://issuer.example.com", "aud": "ocr"}));
    let empty_sub = claims("");
    for (what, claims) in [("no authorizer", None), ("claims without sub", no_sub), ("empty sub", empty_sub)] {
        let (status, answer) = api.call("POST", "/v1/jobs", Some(&body), claims.clone()).await;
        assert_eq!(status, 401, "{what}: {answer}");
        assert_eq!(answer["error"]["code"], "unauthenticated", "{what}");
        let (status, _) = api.call("GET", "/v1/jobs/00000000000000000000000000000000", None, claims).await;
        assert_eq!(status, 401, "{what}");
    }
    // The two public routes answer without any.
    assert_eq!(api.call("GET", "/healthz", None, None).await.0, 200);
    assert_eq!(api.call("GET", "/v1/openapi.json", None, None).await.0, 200);
    assert_eq!(env.job_rows().await?, 0);
    Ok(())
}
