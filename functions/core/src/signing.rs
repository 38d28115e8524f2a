//! Webhook signing keys: one per caller, derived from a master key, rotated with an overlap.
//!
//! A caller's receiver must be able to tell its own webhooks from forgeries by other callers,
//! so no two callers share a key: caller `c`'s key of generation `g` is
//! `whsec_` + hex(HMAC-SHA256(master, "ocr-fleet webhook signing key" 0 c 0 g)). Only the
//! generation is stored (per caller); keys are derived where they are needed (the API shows a
//! caller its key, the worker signs with it), so no key sits in the database.
//!
//! Rotation moves a caller to the next generation and keeps the previous one valid for an
//! overlap; meanwhile every webhook carries both signatures (`t=…,v1=<new>,v1=<old>`, as
//! Stripe does), so the receiver can switch keys at its own pace.

use std::time::Duration;

use async_trait::async_trait;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::error::PortError;

/// Longest overlap a rotation may ask for.
pub const MAX_OVERLAP: Duration = Duration::from_secs(7 * 24 * 3600);
/// The overlap when a rotation names none.
pub const DEFAULT_OVERLAP: Duration = Duration::from_secs(24 * 3600);

/// A caller's key generations: the current one, and the previous one while it still signs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyState {
    pub generation: u32,
    /// Until when (epoch milliseconds) generation − 1 signs too.
    pub previous_until_ms: Option<i64>,
}

impl Default for KeyState {
    /// A caller who never rotated: generation 1 alone.
    fn default() -> Self {
        KeyState { generation: 1, previous_until_ms: None }
    }
}

impl KeyState {
    /// The generations that sign at `now_ms`, newest first.
    pub fn signing(&self, now_ms: i64) -> Vec<u32> {
        let mut out = vec![self.generation];
        if self.generation > 1 && self.previous_until_ms.is_some_and(|until| now_ms < until) {
            out.push(self.generation - 1);
        }
        out
    }
}

/// Where each caller's key generation is kept.
#[async_trait]
pub trait WebhookKeys: Send + Sync {
    /// The caller's state ([`KeyState::default`] when it never rotated).
    async fn key_state(&self, owner: &str) -> Result<KeyState, PortError>;

    /// Moves the caller to the next generation; the current one keeps signing until
    /// `now_ms + overlap`. Atomic: two rotations at once make two generations.
    async fn rotate_key(&self, owner: &str, overlap: Duration, now_ms: i64) -> Result<KeyState, PortError>;
}

/// The master key every caller's key derives from (`WEBHOOK_SECRET`).
#[derive(Clone)]
pub struct MasterKey(Vec<u8>);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    pub fn new(secret: impl AsRef<[u8]>) -> Self {
        MasterKey(secret.as_ref().to_vec())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The caller's signing key of `generation`.
    pub fn caller_key(&self, owner: &str, generation: u32) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(b"ocr-fleet webhook signing key\0");
        mac.update(owner.as_bytes());
        mac.update(b"\0");
        mac.update(generation.to_string().as_bytes());
        format!("whsec_{}", hex::encode(mac.finalize().into_bytes()))
    }

    /// The `Ocr-Signature` header of `body` sent at `timestamp` (unix seconds) for `owner`:
    /// `t=<timestamp>` then one `v1=<hex HMAC-SHA256(key, "<t>.<body>")>` per signing key.
    pub fn signature_header(&self, owner: &str, state: &KeyState, timestamp: i64, body: &[u8]) -> String {
        let mut header = format!("t={timestamp}");
        for generation in state.signing(timestamp.saturating_mul(1000)) {
            header.push_str(",v1=");
            header.push_str(&sign(self.caller_key(owner, generation).as_bytes(), timestamp, body));
        }
        header
    }
}

/// hex HMAC-SHA256(key, "<timestamp>.<body>"): what a receiver recomputes with its key.
pub fn sign(key: &[u8], timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// Whether `header` carries a valid signature of `body` by `key` (what a receiver does; tests
/// and the chaos run use it).
pub fn verify(key: &str, header: &str, body: &[u8]) -> bool {
    let mut parts = header.split(',');
    let Some(timestamp) = parts.next().and_then(|t| t.strip_prefix("t=")).and_then(|t| t.parse::<i64>().ok()) else {
        return false;
    };
    let want = sign(key.as_bytes(), timestamp, body);
    parts.filter_map(|p| p.strip_prefix("v1=")).any(|v| v == want)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_caller_has_its_own_key_and_no_other_callers_key_verifies() {
        let master = MasterKey::new("master");
        let state = KeyState::default();
        let body = br#"{"job_id":"j","status":"succeeded"}"#;
        let header = master.signature_header("alice", &state, 1_700_000_000, body);
        assert!(verify(&master.caller_key("alice", 1), &header, body));
        for other in ["bob", "Alice", "alicé", "alice ", ""] {
            assert_ne!(master.caller_key(other, 1), master.caller_key("alice", 1), "{other:?}");
            assert!(!verify(&master.caller_key(other, 1), &header, body), "{other:?} verified alice's webhook");
        }
        assert!(!verify(&master.caller_key("alice", 2), &header, body), "another generation");
        assert!(!verify(&MasterKey::new("other").caller_key("alice", 1), &header, body), "another master");
        assert!(!verify(&master.caller_key("alice", 1), &header, b"{}"), "another body");
    }

    #[test]
    fn during_the_overlap_both_keys_sign_then_only_the_new_one() {
        let master = MasterKey::new("master");
        let state = KeyState { generation: 3, previous_until_ms: Some(1_000_000) };
        let body = b"{}";
        let during = master.signature_header("alice", &state, 999, body);
        assert_eq!(during.matches("v1=").count(), 2, "{during}");
        assert!(verify(&master.caller_key("alice", 3), &during, body));
        assert!(verify(&master.caller_key("alice", 2), &during, body));
        let after = master.signature_header("alice", &state, 1_000, body);
        assert_eq!(after.matches("v1=").count(), 1, "{after}");
        assert!(!verify(&master.caller_key("alice", 2), &after, body));
        assert_eq!(KeyState::default().signing(0), [1]);
    }
}
