//! On EC2: notice that this instance is going away (Auto Scaling's terminating
//! lifecycle hook, or a spot interruption notice), trigger the same drain as SIGTERM,
//! then tell Auto Scaling it may proceed.

use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;

/// Why the instance is going away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Departure {
    /// `autoscaling/target-lifecycle-state` says `Terminated`.
    Terminating,
    /// `spot/instance-action` exists (two minutes' notice).
    SpotInterruption,
}

/// Reads instance metadata (IMDS in production; a table in tests).
#[async_trait]
pub trait InstanceMetadata: Send + Sync {
    /// The value at `path` (e.g. `meta-data/instance-id`), or `None` when it does not exist.
    async fn get(&self, path: &str) -> Result<Option<String>, String>;
}

/// Instance Metadata Service v2, through the AWS SDK's own client (session tokens, retries,
/// `AWS_EC2_METADATA_SERVICE_ENDPOINT`). Only reachable on EC2.
pub struct Imds(aws_config::imds::Client);

impl Imds {
    pub fn new() -> Self {
        Imds(aws_config::imds::Client::builder().build())
    }
}

impl Default for Imds {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl InstanceMetadata for Imds {
    async fn get(&self, path: &str) -> Result<Option<String>, String> {
        use aws_config::imds::client::error::ImdsError;
        match self.0.get(format!("/latest/{path}")).await {
            Ok(value) => Ok(Some(value.as_ref().to_owned())),
            Err(ImdsError::ErrorResponse(e)) if e.response().status().as_u16() == 404 => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// Whether the instance is leaving now.
pub async fn departure(md: &dyn InstanceMetadata) -> Option<Departure> {
    if let Ok(Some(state)) = md.get("meta-data/autoscaling/target-lifecycle-state").await
        && state.trim() == "Terminated"
    {
        return Some(Departure::Terminating);
    }
    if let Ok(Some(_)) = md.get("meta-data/spot/instance-action").await {
        return Some(Departure::SpotInterruption);
    }
    None
}

/// Polls every `interval` until the instance is leaving, then sets `drain`.
pub async fn watch(md: &dyn InstanceMetadata, interval: Duration, drain: watch::Sender<bool>) -> Option<Departure> {
    let mut stopped = drain.subscribe();
    loop {
        if let Some(d) = departure(md).await {
            tracing::warn!(departure = ?d, "instance is leaving: draining");
            let _ = drain.send(true);
            return Some(d);
        }
        if crate::sleep_or_stop(interval, &mut stopped).await {
            return None;
        }
    }
}

/// Lets Auto Scaling terminate the instance now that the worker has drained.
pub async fn complete_lifecycle_action(
    client: &aws_sdk_autoscaling::Client,
    md: &dyn InstanceMetadata,
    hook: &str,
    group: &str,
) -> Result<(), String> {
    let instance_id = md.get("meta-data/instance-id").await?.ok_or("no instance id in metadata")?;
    client
        .complete_lifecycle_action()
        .lifecycle_hook_name(hook)
        .auto_scaling_group_name(group)
        .instance_id(instance_id)
        .lifecycle_action_result("CONTINUE")
        .send()
        .await
        .map_err(|e| aws_sdk_autoscaling::error::DisplayErrorContext(&e).to_string())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use super::*;

    struct Table(Mutex<HashMap<String, String>>);

    #[async_trait]
    impl InstanceMetadata for Table {
        async fn get(&self, path: &str) -> Result<Option<String>, String> {
            Ok(self.0.lock().unwrap().get(path).cloned())
        }
    }

    #[tokio::test]
    async fn notices_each_way_of_leaving() {
        let md = Table(Mutex::new(HashMap::new()));
        md.0.lock().unwrap().insert("meta-data/autoscaling/target-lifecycle-state".into(), "InService".into());
        assert_eq!(departure(&md).await, None);
        md.0.lock().unwrap().insert("meta-data/spot/instance-action".into(), r#"{"action":"terminate"}"#.into());
        assert_eq!(departure(&md).await, Some(Departure::SpotInterruption));
        md.0.lock().unwrap().insert("meta-data/autoscaling/target-lifecycle-state".into(), "Terminated".into());
        assert_eq!(departure(&md).await, Some(Departure::Terminating));

        let (tx, rx) = watch::channel(false);
        assert_eq!(watch(&md, Duration::from_millis(5), tx).await, Some(Departure::Terminating));
        assert!(*rx.borrow(), "drain was triggered");
    }
}
