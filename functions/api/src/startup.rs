//! Building the adapters once at start, shared by the three binaries.

use std::sync::Arc;

use ocr_aws::{MySqlJobStore, S3ObjectStore, SqsJobQueue};
use ocr_core::PortError;
use ocr_core::ports::SystemClock;
use ocr_core::signing::MasterKey;
use secrecy::ExposeSecret;

use crate::auth::Authenticator;
use crate::config::{ApiArgs, AuthMode, DbArgs, Limits, ResourceArgs};
use crate::state::{AppState, Ports};
use crate::upload::UploadHandler;

/// A setting or a service that keeps the process from starting.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("invalid setting: {0}")]
    Config(String),
    #[error(transparent)]
    Port(#[from] PortError),
}

/// The adapters on the real services.
#[derive(Clone)]
pub struct Services {
    pub store: Arc<MySqlJobStore>,
    pub objects: Arc<S3ObjectStore>,
    pub queue: Arc<SqsJobQueue>,
    pub aws: ocr_aws::SdkConfig,
}

impl Services {
    /// Builds clients; only a password kept in Secrets Manager is read now (database
    /// connections open on first use, which keeps Lambda's init short).
    pub async fn new(resources: &ResourceArgs, db: &DbArgs) -> Result<Self, StartupError> {
        let aws = ocr_aws::aws_config_from_env().await;
        Ok(Services {
            store: Arc::new(db.connect(&aws).await?),
            objects: Arc::new(S3ObjectStore::new(&aws, &resources.upload_bucket)),
            queue: Arc::new(SqsJobQueue::new(&aws, &resources.express_queue_url, &resources.bulk_queue_url)),
            aws,
        })
    }

    /// The handlers' state; the webhook master key is read from Secrets Manager when
    /// `WEBHOOK_SECRET` names it.
    pub async fn app_state(&self, api: &ApiArgs) -> Result<AppState, StartupError> {
        let auth = match api.auth_mode {
            AuthMode::Jwt => Authenticator::Jwt,
            AuthMode::Static => {
                Authenticator::from_static_tokens(api.api_tokens.expose_secret()).map_err(StartupError::Config)?
            }
        };
        let secret = ocr_aws::secrets::resolve(&api.webhook_secret, &self.aws).await?;
        let signing = MasterKey::new(secret.expose_secret());
        Ok(AppState::new(self.ports(), auth, Limits::from(api)).with_signing(signing))
    }

    pub fn upload_handler(&self, max_upload_bytes: u64, max_pages: u64) -> UploadHandler {
        UploadHandler { ports: self.ports(), max_upload_bytes, max_pages }
    }

    /// The adapters as the ports the handlers take, on the wall clock.
    pub fn ports(&self) -> Ports {
        Ports {
            store: self.store.clone(),
            objects: self.objects.clone(),
            queue: self.queue.clone(),
            clock: Arc::new(SystemClock),
            keys: self.store.clone(),
            statuses: self.store.clone(),
            wait_slots: self.store.clone(),
        }
    }
}
