//! Refusing new jobs while a queue is too deep, from a cached depth reading.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ocr_core::Priority;
use ocr_core::ports::JobQueue;
use tokio::sync::Mutex;

/// Queue depths read from SQS at most once per `refresh` per priority. Requests that
/// arrive while a reading is under way wait for it rather than each asking SQS.
#[derive(Clone)]
pub struct DepthGauge {
    queue: Arc<dyn JobQueue>,
    refresh: Duration,
    cache: Arc<Mutex<HashMap<Priority, (u64, Instant)>>>,
}

impl DepthGauge {
    pub fn new(queue: Arc<dyn JobQueue>, refresh: Duration) -> Self {
        Self { queue, refresh, cache: Arc::default() }
    }

    /// The queue's depth, at most `refresh` old. If SQS cannot be read, the last
    /// reading is used, or 0 when there is none: failing open keeps the API up
    /// when only the metric is missing.
    pub async fn depth(&self, priority: Priority) -> u64 {
        let mut cache = self.cache.lock().await;
        if let Some((depth, at)) = cache.get(&priority)
            && at.elapsed() < self.refresh
        {
            return *depth;
        }
        match self.queue.depth(priority).await {
            Ok(depth) => {
                cache.insert(priority, (depth, Instant::now()));
                depth
            }
            Err(e) => {
                tracing::warn!(%priority, error = %e, "could not read queue depth");
                cache.get(&priority).map(|(d, _)| *d).unwrap_or(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ocr_core::fakes::InMemoryJobQueue;

    #[tokio::test]
    async fn caches_for_the_refresh_period() {
        let queue = Arc::new(InMemoryJobQueue::default());
        let gauge = DepthGauge::new(queue.clone(), Duration::from_secs(3600));
        queue.force_depth(Priority::Bulk, 5);
        assert_eq!(gauge.depth(Priority::Bulk).await, 5);
        queue.force_depth(Priority::Bulk, 50);
        assert_eq!(gauge.depth(Priority::Bulk).await, 5, "cached");
        let fresh = DepthGauge::new(queue.clone(), Duration::ZERO);
        assert_eq!(fresh.depth(Priority::Bulk).await, 50);
    }
}
