//! [`ObjectStore`] on S3.

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;
use ocr_core::ports::{ObjectInfo, ObjectStore, PresignedPut};
use ocr_core::{ContentType, PortError};

use crate::errors::sdk_error;

/// Longest validity we hand out for an upload URL.
pub const MAX_PRESIGN_EXPIRY: Duration = Duration::from_secs(15 * 60);

/// Images in one S3 bucket.
#[derive(Debug, Clone)]
pub struct S3ObjectStore {
    client: aws_sdk_s3::Client,
    bucket: String,
}

impl S3ObjectStore {
    /// Path-style addressing is used when a custom endpoint is configured
    /// (`AWS_ENDPOINT_URL`, i.e. LocalStack), virtual-hosted style on AWS.
    pub fn new(config: &aws_config::SdkConfig, bucket: impl Into<String>) -> Self {
        let s3_config =
            aws_sdk_s3::config::Builder::from(config).force_path_style(config.endpoint_url().is_some()).build();
        Self { client: aws_sdk_s3::Client::from_conf(s3_config), bucket: bucket.into() }
    }

    pub fn client(&self) -> &aws_sdk_s3::Client {
        &self.client
    }
}

#[async_trait]
impl ObjectStore for S3ObjectStore {
    fn bucket(&self) -> &str {
        &self.bucket
    }

    async fn presign_put(
        &self,
        key: &str,
        content_type: ContentType,
        content_length: u64,
        expires_in: Duration,
    ) -> Result<PresignedPut, PortError> {
        let expires_in = expires_in.min(MAX_PRESIGN_EXPIRY);
        let config = PresigningConfig::expires_in(expires_in).map_err(|e| PortError::permanent("s3", e))?;
        let start = std::time::SystemTime::now();
        // Content-Type and Content-Length become signed headers: S3 refuses an upload
        // of another type or size with 403.
        let request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type.as_str())
            .content_length(content_length as i64)
            .presigned(config)
            .await
            .map_err(|e| sdk_error("s3", e))?;
        let headers = request.headers().map(|(k, v)| (k.to_ascii_lowercase(), v.to_owned())).collect();
        let expires_at = start + expires_in;
        let expires_at_ms = expires_at.duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis() as i64;
        Ok(PresignedPut { url: request.uri().to_owned(), headers, expires_at_ms })
    }

    async fn put(&self, key: &str, content_type: &str, body: Bytes) -> Result<(), PortError> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| sdk_error("s3", e))?;
        Ok(())
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, PortError> {
        match self.client.head_object().bucket(&self.bucket).key(key).send().await {
            Ok(out) => Ok(Some(ObjectInfo {
                size: out.content_length().unwrap_or(0).max(0) as u64,
                content_type: out.content_type().map(str::to_owned),
                etag: out.e_tag().map(str::to_owned),
            })),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(None),
            Err(e) => Err(sdk_error("s3", e)),
        }
    }

    async fn read_range(&self, key: &str, offset: u64, len: usize, if_match: Option<&str>) -> Result<Bytes, PortError> {
        if len == 0 {
            return Ok(Bytes::new());
        }
        let range = format!("bytes={offset}-{}", offset + len as u64 - 1);
        let request = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .range(range)
            .set_if_match(if_match.map(str::to_owned));
        match request.send().await {
            Ok(out) => collect(out.body).await,
            // A range past the end (e.g. on an empty object) is "not satisfiable": nothing there.
            Err(e) if status(&e) == Some(416) => Ok(Bytes::new()),
            Err(e) => Err(get_error(e)),
        }
    }

    async fn get(&self, key: &str, if_match: Option<&str>) -> Result<Bytes, PortError> {
        let request = self.client.get_object().bucket(&self.bucket).key(key).set_if_match(if_match.map(str::to_owned));
        match request.send().await {
            Ok(out) => collect(out.body).await,
            Err(e) => Err(get_error(e)),
        }
    }

    async fn delete(&self, key: &str) -> Result<(), PortError> {
        self.client.delete_object().bucket(&self.bucket).key(key).send().await.map_err(|e| sdk_error("s3", e))?;
        Ok(())
    }

    async fn presign_get(&self, key: &str, expires_in: Duration, disposition: &str) -> Result<String, PortError> {
        let expires_in = expires_in.min(MAX_PRESIGN_EXPIRY);
        let config = PresigningConfig::expires_in(expires_in).map_err(|e| PortError::permanent("s3", e))?;
        let request = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .response_content_disposition(disposition)
            .presigned(config)
            .await
            .map_err(|e| sdk_error("s3", e))?;
        Ok(request.uri().to_owned())
    }
}

type GetError = aws_sdk_s3::error::SdkError<
    aws_sdk_s3::operation::get_object::GetObjectError,
    aws_sdk_s3::config::http::HttpResponse,
>;

fn status(e: &GetError) -> Option<u16> {
    e.raw_response().map(|r| r.status().as_u16())
}

/// A missing object is `NotFound`; a failed `If-Match` (412) is `Changed`: it was written again.
fn get_error(e: GetError) -> PortError {
    if e.as_service_error().is_some_and(|s| s.is_no_such_key()) {
        PortError::NotFound
    } else if status(&e) == Some(412) {
        PortError::Changed
    } else {
        sdk_error("s3", e)
    }
}

async fn collect(body: ByteStream) -> Result<Bytes, PortError> {
    body.collect()
        .await
        .map(|data| data.into_bytes())
        .map_err(|e| PortError::unavailable("s3", format!("reading object body: {e}")))
}
