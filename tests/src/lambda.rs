//! The Lambda Runtime API, played by the test: the real `api` and `on-upload` binaries run as
//! they do on AWS (`lambda_runtime` polls `…/invocation/next`, posts `…/response`), and each
//! [`FakeLambdaRuntime::invoke`] hands one event to the function and returns its answer.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use serde_json::Value;
use tokio::sync::{Mutex, mpsc, oneshot};

/// What the function answered to one event.
pub type Answer = Result<Value, String>;

#[derive(Clone)]
struct Shared {
    events: Arc<Mutex<mpsc::Receiver<(String, Value)>>>,
    waiting: Arc<std::sync::Mutex<HashMap<String, oneshot::Sender<Answer>>>>,
    init_error: Arc<std::sync::Mutex<Option<String>>>,
}

pub struct FakeLambdaRuntime {
    pub addr: std::net::SocketAddr,
    events: mpsc::Sender<(String, Value)>,
    shared: Shared,
}

impl FakeLambdaRuntime {
    pub async fn start() -> anyhow::Result<Self> {
        let (events, rx) = mpsc::channel(16);
        let shared = Shared { events: Arc::new(Mutex::new(rx)), waiting: Arc::default(), init_error: Arc::default() };
        let app = axum::Router::new()
            .route("/2018-06-01/runtime/invocation/next", get(next))
            .route("/2018-06-01/runtime/invocation/{id}/response", post(response))
            .route("/2018-06-01/runtime/invocation/{id}/error", post(error))
            .route("/2018-06-01/runtime/init/error", post(init_error))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(FakeLambdaRuntime { addr, events, shared })
    }

    /// The environment Lambda gives a function, pointing it at this runtime API.
    pub fn env(&self, function: &str) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_LAMBDA_RUNTIME_API", self.addr.to_string()),
            ("AWS_LAMBDA_FUNCTION_NAME", function.to_owned()),
            ("AWS_LAMBDA_FUNCTION_VERSION", "1".into()),
            ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "512".into()),
            ("AWS_LAMBDA_LOG_STREAM_NAME", "test".into()),
            ("AWS_LAMBDA_LOG_GROUP_NAME", format!("/aws/lambda/{function}")),
        ]
    }

    /// Hands `event` to the function and waits (at most `limit`) for its answer. A function that
    /// failed to start (an init error, or a crash before answering) is an error.
    pub async fn invoke(&self, event: Value, limit: Duration) -> anyhow::Result<Answer> {
        let id = format!("req-{:016x}", rand::random::<u64>());
        let (tx, rx) = oneshot::channel();
        self.shared.waiting.lock().unwrap().insert(id.clone(), tx);
        self.events.send((id, event)).await?;
        match tokio::time::timeout(limit, rx).await {
            Ok(Ok(answer)) => Ok(answer),
            _ => {
                let init = self.shared.init_error.lock().unwrap().clone();
                anyhow::bail!("no answer within {limit:?} (init error: {init:?})")
            }
        }
    }
}

async fn next(State(shared): State<Shared>) -> impl IntoResponse {
    let Some((id, event)) = shared.events.lock().await.recv().await else {
        return (StatusCode::GONE, HeaderMap::new(), String::new());
    };
    let deadline = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default()
        + Duration::from_secs(30);
    let mut headers = HeaderMap::new();
    let put = |h: &mut HeaderMap, k: &'static str, v: String| {
        h.insert(k, HeaderValue::from_str(&v).expect("header value"));
    };
    put(&mut headers, "lambda-runtime-aws-request-id", id);
    put(&mut headers, "lambda-runtime-deadline-ms", deadline.as_millis().to_string());
    put(
        &mut headers,
        "lambda-runtime-invoked-function-arn",
        "arn:aws:lambda:us-east-1:000000000000:function:test".into(),
    );
    put(&mut headers, "lambda-runtime-trace-id", "Root=1-00000000-000000000000000000000000".into());
    (StatusCode::OK, headers, event.to_string())
}

async fn response(State(shared): State<Shared>, Path(id): Path<String>, body: String) -> StatusCode {
    answer(&shared, &id, serde_json::from_str(&body).map_err(|e| format!("unparseable response {body:?}: {e}")))
}

async fn error(State(shared): State<Shared>, Path(id): Path<String>, body: String) -> StatusCode {
    answer(&shared, &id, Err(body))
}

async fn init_error(State(shared): State<Shared>, body: String) -> StatusCode {
    *shared.init_error.lock().unwrap() = Some(body);
    StatusCode::ACCEPTED
}

fn answer(shared: &Shared, id: &str, answer: Answer) -> StatusCode {
    if let Some(tx) = shared.waiting.lock().unwrap().remove(id) {
        let _ = tx.send(answer);
    }
    StatusCode::ACCEPTED
}

/// An API Gateway HTTP API (payload 2.0) request whose JWT authorizer accepted a token with
/// these claims (`None`: a route without the authorizer).
pub fn http_api_event(method: &str, path: &str, body: Option<&Value>, claims: Option<Value>) -> Value {
    let mut context = serde_json::json!({
        "accountId": "000000000000",
        "apiId": "test",
        "domainName": "test.execute-api.us-east-1.amazonaws.com",
        "domainPrefix": "test",
        "http": {"method": method, "path": path, "protocol": "HTTP/1.1", "sourceIp": "192.0.2.1", "userAgent": "test"},
        "requestId": format!("r{:08x}", rand::random::<u32>()),
        "routeKey": "$default",
        "stage": "$default",
        "time": "29/Nov/2026:00:00:00 +0000",
        "timeEpoch": 1_795_910_400_000_i64,
    });
    if let Some(claims) = claims {
        context["authorizer"] = serde_json::json!({"jwt": {"claims": claims, "scopes": null}});
    }
    serde_json::json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": "",
        "headers": {"content-type": "application/json", "host": "test.execute-api.us-east-1.amazonaws.com"},
        "requestContext": context,
        "body": body.map(Value::to_string),
        "isBase64Encoded": false,
    })
}

/// One SQS message as Lambda's event source mapping hands it to the function.
#[derive(Debug, Clone)]
pub struct SqsRecord {
    pub message_id: String,
    pub receipt_handle: String,
    pub body: String,
    pub receive_count: u32,
}

/// An SQS event of `records`, read from the queue `source_arn` (each record's `eventSourceARN`).
pub fn sqs_event(source_arn: &str, records: &[SqsRecord]) -> Value {
    let records: Vec<Value> = records
        .iter()
        .map(|r| {
            serde_json::json!({
                "messageId": r.message_id, "receiptHandle": r.receipt_handle, "body": r.body,
                "attributes": {"ApproximateReceiveCount": r.receive_count.to_string(), "SentTimestamp": "0",
                               "SenderId": "s3", "ApproximateFirstReceiveTimestamp": "0"},
                "messageAttributes": {}, "md5OfBody": "", "eventSource": "aws:sqs",
                "eventSourceARN": source_arn, "awsRegion": "us-east-1"
            })
        })
        .collect();
    serde_json::json!({ "Records": records })
}

/// A complete S3 ObjectCreated notification for `key` of `bucket`, as S3 writes it.
pub fn s3_event_body(bucket: &str, key: &str) -> String {
    serde_json::json!({"Records": [{
        "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
        "eventTime": "2026-11-29T00:00:00.000Z", "eventName": "ObjectCreated:Put",
        "userIdentity": {"principalId": "AWS:AIDAEXAMPLE"},
        "requestParameters": {"sourceIPAddress": "192.0.2.1"},
        "responseElements": {"x-amz-request-id": "EXAMPLE", "x-amz-id-2": "EXAMPLE"},
        "s3": {"s3SchemaVersion": "1.0", "configurationId": "uploads",
               "bucket": {"name": bucket, "ownerIdentity": {"principalId": "EXAMPLE"},
                          "arn": format!("arn:aws:s3:::{bucket}")},
               "object": {"key": key, "size": 1, "eTag": "0", "sequencer": "0"}}
    }]})
    .to_string()
}

/// An SQS event carrying S3 ObjectCreated notifications for `keys` of `bucket`, as the
/// on-upload function's event source mapping delivers them: from the upload-events queue of the
/// first key's priority (`uploads/<priority>/…`).
pub fn sqs_s3_event(bucket: &str, keys: &[String]) -> Value {
    let priority = keys.first().and_then(|k| k.split('/').nth(1)).unwrap_or("bulk");
    let records: Vec<SqsRecord> = keys
        .iter()
        .enumerate()
        .map(|(i, key)| SqsRecord {
            message_id: format!("m{i}"),
            receipt_handle: format!("h{i}"),
            body: s3_event_body(bucket, key),
            receive_count: 1,
        })
        .collect();
    sqs_event(&format!("arn:aws:sqs:us-east-1:000000000000:upload-events-{priority}"), &records)
}
