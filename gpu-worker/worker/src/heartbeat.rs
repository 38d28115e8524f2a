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

    /// Handles whose visibility was set more than `older_than` ago, grouped by priority. They
    /// stay due until [`InFlight::extended`] says their visibility was set.
    fn due(&self, older_than: Duration) -> HashMap<Priority, Vec<String>> {
        let mut due: HashMap<Priority, Vec<String>> = HashMap::new();
        let now = Instant::now();
        for (handle, (priority, at)) in self.inner.lock().unwrap().iter() {
            if now.duration_since(*at) >= older_than {
                due.entry(*priority).or_default().push(handle.clone());
            }
        }
        due
    }

    /// Records that these handles' visibility was set at `at` (those still held).
    fn extended(&self, handles: &[String], at: Instant) {
        let mut inner = self.inner.lock().unwrap();
        for handle in handles {
            if let Some((_, when)) = inner.get_mut(handle) {
                *when = at;
            }
        }
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

/// Every `visibility / 8`, resets the visibility of messages held for more than half of it, so
/// a long batch (or a database outage) never lets them reappear elsewhere. A failed extension
/// is tried again at once (three tries, an eighth of a tick apart) and then on every tick: a
/// handle stays due until SQS took its extension, so a failing call leaves three more ticks
/// before the message could reappear.
pub async fn run(
    source: Arc<dyn JobSource>,
    in_flight: InFlight,
    visibility: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let tick = (visibility / 8).max(Duration::from_millis(50));
    loop {
        if crate::sleep_or_stop(tick, &mut stop).await {
            return;
        }
        for (priority, handles) in in_flight.due(visibility / 2) {
            for chunk in handles.chunks(10) {
                extend(source.as_ref(), &in_flight, priority, chunk, visibility, tick / 8).await;
            }
        }
    }
}

async fn extend(
    source: &dyn JobSource,
    in_flight: &InFlight,
    priority: Priority,
    handles: &[String],
    visibility: Duration,
    pause: Duration,
) {
    for attempt in 1..=3 {
        let at = Instant::now();
        match source.set_visibility(priority, handles, visibility).await {
            Ok(()) => {
                in_flight.extended(handles, at);
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, %priority, attempt, handles = handles.len(), "extending visibility failed");
                tokio::time::sleep(pause).await;
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

    /// SQS errors on ChangeMessageVisibility (injected in the fake) are retried before the
    /// message could reappear: with 5 failures in a row the held message never comes back.
    #[tokio::test]
    async fn a_failed_extension_is_retried_before_the_message_can_reappear() {
        let visibility = Duration::from_millis(1200);
        let source = Arc::new(InMemoryJobSource::new(visibility, 3));
        source.push(Priority::Bulk, "held");
        let got = source.receive(Priority::Bulk, 10, Duration::ZERO).await.unwrap();
        let in_flight = InFlight::default();
        in_flight.add(Priority::Bulk, &got[0].receipt_handle);
        source.fail_next_visibility_changes(5);
        let (stop_tx, stop_rx) = watch::channel(false);
        let beat = tokio::spawn(run(source.clone(), in_flight.clone(), visibility, stop_rx));
        for _ in 0..12 {
            tokio::time::sleep(visibility / 4).await;
            assert!(source.receive(Priority::Bulk, 10, Duration::ZERO).await.unwrap().is_empty(), "reappeared");
        }
        assert_eq!(source.failed_visibility_changes(), 5, "the injected failures happened");
        stop_tx.send(true).unwrap();
        beat.await.unwrap();
    }
}
