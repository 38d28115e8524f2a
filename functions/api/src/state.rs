//! What every handler shares.

use std::sync::Arc;

use ocr_core::ports::{Clock, JobQueue, JobStatuses, JobStore, ObjectStore, WaitSlots};
use ocr_core::signing::{MasterKey, WebhookKeys};

use crate::auth::Authenticator;
use crate::backpressure::DepthGauge;
use crate::config::Limits;
use crate::wait::WaitHub;

/// The ports the producer works through (the API and the on-upload handler alike).
#[derive(Clone)]
pub struct Ports {
    pub store: Arc<dyn JobStore>,
    pub objects: Arc<dyn ObjectStore>,
    pub queue: Arc<dyn JobQueue>,
    pub clock: Arc<dyn Clock>,
    /// Each caller's webhook key generation.
    pub keys: Arc<dyn WebhookKeys>,
    /// Many jobs' statuses at once (the waiting hub's reads).
    pub statuses: Arc<dyn JobStatuses>,
    /// Places of waiting requests, counted across every process (`?wait=`).
    pub wait_slots: Arc<dyn WaitSlots>,
}

/// Ports, limits and the authenticator; cheap to clone (all behind `Arc`).
#[derive(Clone)]
pub struct AppState {
    pub ports: Ports,
    pub depth: DepthGauge,
    pub auth: Authenticator,
    pub limits: Arc<Limits>,
    /// The master key of webhook signatures (`WEBHOOK_SECRET`), to show each caller its own.
    pub signing: MasterKey,
    /// The process's waiting requests (`GET /v1/jobs/{id}?wait=`): one per process, so build
    /// one state and clone it.
    pub waits: WaitHub,
}

impl AppState {
    pub fn new(ports: Ports, auth: Authenticator, limits: Limits) -> Self {
        let depth = DepthGauge::new(ports.queue.clone(), limits.queue_depth_refresh);
        let waits = WaitHub::new(ports.statuses.clone(), limits.wait);
        Self { ports, depth, auth, limits: Arc::new(limits), signing: MasterKey::new(""), waits }
    }

    /// With the webhooks' master key (without one, the webhook-secret routes answer 500).
    pub fn with_signing(mut self, signing: MasterKey) -> Self {
        self.signing = signing;
        self
    }
}
