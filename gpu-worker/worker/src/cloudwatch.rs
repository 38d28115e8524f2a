//! A few metrics to CloudWatch every minute (jobs/s, latency, failures), for the
//! dashboard and alarms. Failures are only logged: metrics never stop the worker.

use std::time::Duration;

use aws_sdk_cloudwatch::types::{Dimension, MetricDatum, StandardUnit};
use tokio::sync::watch;

use crate::metrics::{Metrics, WindowSample};

/// The data points for one window.
pub fn datums(sample: WindowSample, interval: Duration, fleet: &str) -> Vec<MetricDatum> {
    let dimension = Dimension::builder().name("Fleet").value(fleet).build();
    let secs = interval.as_secs_f64().max(1.0);
    let mut out = vec![
        MetricDatum::builder()
            .metric_name("JobsPerSecond")
            .dimensions(dimension.clone())
            .unit(StandardUnit::CountSecond)
            .value(sample.jobs as f64 / secs)
            .build(),
        MetricDatum::builder()
            .metric_name("JobsFailed")
            .dimensions(dimension.clone())
            .unit(StandardUnit::Count)
            .value(sample.failed as f64)
            .build(),
    ];
    if sample.jobs > 0 {
        out.push(
            MetricDatum::builder()
                .metric_name("QueueToResultLatency")
                .dimensions(dimension)
                .unit(StandardUnit::Seconds)
                .value(sample.mean_latency_secs)
                .build(),
        );
    }
    out
}

pub async fn run(
    client: aws_sdk_cloudwatch::Client,
    metrics: Metrics,
    namespace: String,
    fleet: String,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        if crate::sleep_or_stop(interval, &mut stop).await {
            return;
        }
        let data = datums(metrics.take_window(), interval, &fleet);
        if let Err(e) = client.put_metric_data().namespace(&namespace).set_metric_data(Some(data)).send().await {
            tracing::warn!(error = %aws_sdk_cloudwatch::error::DisplayErrorContext(&e), "PutMetricData failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn makes_rates_per_second() {
        let d = datums(WindowSample { jobs: 120, failed: 2, mean_latency_secs: 1.5 }, Duration::from_secs(60), "prod");
        assert_eq!(d.len(), 3);
        assert_eq!(d[0].value(), Some(2.0));
        assert_eq!(d[1].value(), Some(2.0));
        assert_eq!(d[2].value(), Some(1.5));
        assert_eq!(
            datums(WindowSample { jobs: 0, failed: 0, mean_latency_secs: 0.0 }, Duration::from_secs(60), "p").len(),
            2
        );
    }
}
