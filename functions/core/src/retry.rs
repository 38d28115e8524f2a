//! The retry schedules every component uses (on top of the `backon` crate), so that one
//! definition says how hard the system retries.
//!
//! ```ignore
//! use ocr_core::retry::{self, Retryable};
//! let rows = (|| store.take(&ids, now))
//!     .retry(retry::forever(Duration::from_millis(100), Duration::from_secs(5)))
//!     .when(PortError::is_retryable)
//!     .await?;
//! ```

use std::time::Duration;

pub use backon::{BackoffBuilder, ExponentialBuilder, Retryable};

/// Doubling delays from `min` up to `max`, with no limit on the number of tries: for work
/// that must not be dropped while its messages are held (the worker's database writes).
pub fn forever(min: Duration, max: Duration) -> ExponentialBuilder {
    ExponentialBuilder::default().with_min_delay(min).with_max_delay(max).with_factor(2.0).without_max_times()
}

/// Doubling delays from `min` up to `max`, for at most `tries` tries in all (so `tries - 1`
/// retries): for calls whose caller records a final failure.
pub fn times(tries: u32, min: Duration, max: Duration) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(min)
        .with_max_delay(max)
        .with_factor(2.0)
        .with_max_times(tries.saturating_sub(1) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap() {
        let delays: Vec<Duration> =
            forever(Duration::from_millis(100), Duration::from_millis(500)).build().take(5).collect();
        let ms: Vec<u128> = delays.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [100, 200, 400, 500, 500]);
        assert_eq!(times(3, Duration::from_secs(1), Duration::from_secs(60)).build().count(), 2);
    }
}
