//! Keeping in-flight messages invisible while they are worked on.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ocr_core::Priority;
use ocr_core::worker::JobSource;
use tokio::sync::watch;

/// Receipt handles of messages this worker holds, with when their visibility was last set.
#[derive(Clone, Default)]
pub struct InFlight {
    inner: Arc<Mutex<HashMap<String, (Priority, Instant)>>>,
}

impl InFlight {
    pub fn add(&self, priority: Priority, receipt_handle: &str) {
        self.inner.lock().unwrap().insert(receipt_handle.to_owned(), (priority, Instant::now()));
    }

    pub fn remove(&self, receipt_handle: &str) {
        self.inner.lock().unwrap().remove(receipt_handle);
    }

    pub fn len(&self) -> usize {
        self.inner.lock().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Handles whose visibility was set more than `older_than` ago, grouped by priority;
    /// they are marked as extended now.
    fn due(&self, older_than: Duration) -> HashMap<Priority, Vec<String>> {
        let mut due: HashMap<Priority, Vec<String>> = HashMap::new();
        let now = Instant::now();
        for (handle, (priority, at)) in self.inner.lock().unwrap().iter_mut() {
            if now.duration_since(*at) >= older_than {
                due.entry(*priority).or_default().push(handle.clone());
                *at = now;
            }
        }
        due
    }

    /// Every handle, removed, grouped by priority.
    pub fn take_all(&self) -> HashMap<Priority, Vec<String>> {
        let mut all: HashMap<Priority, Vec<String>> = HashMap::new();
        for (handle, (priority, _)) in self.inner.lock().unwrap().drain() {
            all.entry(priority).or_default().push(handle);
        }
        all
    }
}

/// Every `visibility / 4`, resets the visibility of messages held for more than half of
/// it, so a long batch (or a database outage) never lets them reappear elsewhere.
pub async fn run(
    source: Arc<dyn JobSource>,
    in_flight: InFlight,
    visibility: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let tick = (visibility / 4).max(Duration::from_millis(250));
    loop {
        if crate::sleep_or_stop(tick, &mut stop).await {
            return;
        }
        for (priority, handles) in in_flight.due(visibility / 2) {
            for chunk in handles.chunks(10) {
                if let Err(e) = source.set_visibility(priority, chunk, visibility).await {
                    tracing::warn!(error = %e, %priority, "extending visibility failed");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use ocr_core::fakes::InMemoryJobSource;

    use super::*;

    #[tokio::test]
    async fn held_messages_stay_invisible_past_their_timeout() {
        let visibility = Duration::from_millis(200);
        let source = Arc::new(InMemoryJobSource::new(visibility, 3));
        source.push(Priority::Bulk, "held");
        source.push(Priority::Bulk, "released");
        let got = source.receive(Priority::Bulk, 10, Duration::ZERO).await.unwrap();
        assert_eq!(got.len(), 2);
        let in_flight = InFlight::default();
        in_flight.add(Priority::Bulk, &got[0].receipt_handle);
        let (stop_tx, stop_rx) = watch::channel(false);
        let beat = tokio::spawn(run(source.clone(), in_flight.clone(), visibility, stop_rx));
        // Three timeouts later only the message nobody holds has come back.
        tokio::time::sleep(visibility * 3).await;
        let again = source.receive(Priority::Bulk, 10, Duration::ZERO).await.unwrap();
        assert_eq!(again.iter().map(|d| d.body.as_str()).collect::<Vec<_>>(), ["released"]);
        stop_tx.send(true).unwrap();
        beat.await.unwrap();
    }
}
