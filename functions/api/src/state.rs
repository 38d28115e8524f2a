//! What every handler shares.

use std::sync::Arc;

use ocr_core::ports::{Clock, JobQueue, JobStore, ObjectStore};

use crate::auth::Authenticator;
use crate::backpressure::DepthGauge;
use crate::config::Limits;

/// Ports, limits and the authenticator; cheap to clone (all behind `Arc`).
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn JobStore>,
    pub objects: Arc<dyn ObjectStore>,
    pub queue: Arc<dyn JobQueue>,
    pub clock: Arc<dyn Clock>,
    pub depth: DepthGauge,
    pub auth: Authenticator,
    pub limits: Arc<Limits>,
}

impl AppState {
    pub fn new(
        store: Arc<dyn JobStore>,
        objects: Arc<dyn ObjectStore>,
        queue: Arc<dyn JobQueue>,
        clock: Arc<dyn Clock>,
        auth: Authenticator,
        limits: Limits,
    ) -> Self {
        let depth = DepthGauge::new(queue.clone(), limits.queue_depth_refresh);
        Self { store, objects, queue, clock, depth, auth, limits: Arc::new(limits) }
    }
}
