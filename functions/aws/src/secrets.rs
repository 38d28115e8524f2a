//! Secret settings that name where the secret is instead of holding it: a value of the form
//! `arn:aws:secretsmanager:<region>:<account>:secret:<name>[#<json key>]` is read from Secrets
//! Manager at start (the key picks a field of a JSON secret, as RDS-style secrets have
//! `username` and `password`); any other value is the secret itself. So a function's
//! configuration carries an ARN, never a password.

use aws_sdk_secretsmanager::Client;
use ocr_core::PortError;
use secrecy::{ExposeSecret, SecretString};

use crate::errors::sdk_error;

const REFERENCE: &str = "arn:aws:secretsmanager:";

/// The secret `value` names, or `value` itself when it names none.
pub async fn resolve(value: &SecretString, aws: &aws_config::SdkConfig) -> Result<SecretString, PortError> {
    let Some((arn, key)) = reference(value.expose_secret()) else { return Ok(value.clone()) };
    let out =
        Client::new(aws).get_secret_value().secret_id(arn).send().await.map_err(|e| sdk_error("secretsmanager", e))?;
    let secret =
        out.secret_string().ok_or_else(|| PortError::permanent("secretsmanager", format!("{arn} holds no string")))?;
    match key {
        None => Ok(SecretString::from(secret.to_owned())),
        Some(key) => {
            let json: serde_json::Value = serde_json::from_str(secret).map_err(|_| {
                PortError::permanent("secretsmanager", format!("{arn} is not JSON, so it has no {key:?}"))
            })?;
            json.get(key)
                .and_then(serde_json::Value::as_str)
                .map(|s| SecretString::from(s.to_owned()))
                .ok_or_else(|| PortError::permanent("secretsmanager", format!("{arn} has no string field {key:?}")))
        }
    }
}

/// `(arn, key)` of a reference.
fn reference(value: &str) -> Option<(&str, Option<&str>)> {
    if !value.starts_with(REFERENCE) {
        return None;
    }
    Some(match value.split_once('#') {
        Some((arn, key)) => (arn, Some(key)),
        None => (value, None),
    })
}

#[cfg(test)]
mod tests {
    use super::reference;

    #[test]
    fn references_and_literals() {
        let arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:ocr-prod-db-api-AbCdEf";
        assert_eq!(reference(&format!("{arn}#password")), Some((arn, Some("password"))));
        assert_eq!(reference(arn), Some((arn, None)));
        assert_eq!(reference("hunter2"), None);
        assert_eq!(reference("arn:aws:s3:::bucket#x"), None);
    }
}
