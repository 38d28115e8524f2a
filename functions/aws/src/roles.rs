//! The database users each component connects as, and the grants each needs: the API, the
//! on-upload check and the workers never use the account that migrates (which may do
//! anything), and each may touch only what its code does. The migrator (a worker starting with
//! `DB_MIGRATE=true` and `MIGRATION_DATABASE_URL`) creates or updates them after the migrations
//! (`DB_ROLE_USERS`), with passwords from Secrets Manager that RDS Proxy holds too.

use std::str::FromStr;

use mysql_async::prelude::Queryable;
use ocr_core::PortError;
use secrecy::{ExposeSecret, SecretString};

use crate::MySqlJobStore;
use crate::mysql::db_error;

/// A component that connects to the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The HTTP API: creates, reads and deletes jobs, reads results, keeps webhook keys and the
    /// places of waiting requests.
    Api,
    /// The on-upload check: moves jobs from `awaiting_upload` to `queued` or `failed`.
    Upload,
    /// The workers: take, complete and fail jobs, write results and webhook records, purge.
    Worker,
}

impl Role {
    /// `(table, privileges)` the role's code needs, nothing more.
    pub fn grants(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Role::Api => &[
                ("jobs", "SELECT, INSERT, UPDATE, DELETE"),
                ("job_results", "SELECT, DELETE"),
                ("webhook_keys", "SELECT, INSERT, UPDATE"),
                ("caller_quotas", "SELECT, INSERT, UPDATE"),
                // Waiting requests' places: taken, released, expired ones swept.
                ("job_waits", "SELECT, INSERT, DELETE"),
                ("job_wait_gate", "SELECT, INSERT, UPDATE"),
            ],
            Role::Upload => &[("jobs", "SELECT, UPDATE")],
            Role::Worker => &[
                ("jobs", "SELECT, UPDATE, DELETE"),
                ("job_results", "SELECT, INSERT, UPDATE, DELETE"),
                ("webhook_deliveries", "SELECT, INSERT, DELETE"),
                ("webhook_keys", "SELECT"),
                // The purge drops idle callers' budgets.
                ("caller_quotas", "SELECT, DELETE"),
            ],
        }
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "api" => Ok(Role::Api),
            "upload" => Ok(Role::Upload),
            "worker" => Ok(Role::Worker),
            other => Err(format!("unknown database role {other:?}: api, upload or worker")),
        }
    }
}

/// One role's user: name and password (the password itself or a Secrets Manager reference).
#[derive(Debug, Clone)]
pub struct RoleUser {
    pub role: Role,
    pub user: String,
    pub password: SecretString,
}

/// Parses `DB_ROLE_USERS`: `api=<user>:<password>,upload=…,worker=…`; a password may be a
/// Secrets Manager reference (`arn:…:secret:<name>#password`, which holds `:` but no `,`).
pub fn parse_role_users(spec: &str) -> Result<Vec<RoleUser>, String> {
    spec.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(|entry| {
            let (role, rest) = entry.split_once('=').ok_or("DB_ROLE_USERS entries are role=user:password")?;
            let (user, password) = rest.split_once(':').ok_or("DB_ROLE_USERS entries are role=user:password")?;
            if user.is_empty() || !user.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') || user.len() > 32 {
                return Err(format!("database user {user:?}: letters, digits and _ only, at most 32"));
            }
            Ok(RoleUser {
                role: role.parse()?,
                user: user.to_owned(),
                password: SecretString::from(password.to_owned()),
            })
        })
        .collect()
}

impl MySqlJobStore {
    /// Creates each role's user (or sets its password, which may have been rotated) and grants
    /// it its tables' privileges in this database. Run by the migrator, after the migrations.
    /// Passwords are resolved already (not references).
    pub async fn provision_roles(&self, users: &[RoleUser]) -> Result<(), PortError> {
        let mut conn = self.conn().await?;
        let database: Option<String> = conn.query_first("SELECT DATABASE()").await.map_err(db_error)?;
        let database = database.ok_or_else(|| PortError::permanent("mysql", "the migration URL names no database"))?;
        for u in users {
            let password = quotable(u.password.expose_secret())?;
            let account = format!("'{}'@'%'", u.user);
            // Account management statements take literals only; the user name is checked
            // (letters, digits, _) and the password holds no quote, backslash or control character.
            conn.query_drop(format!("CREATE USER IF NOT EXISTS {account} IDENTIFIED BY '{password}'"))
                .await
                .map_err(db_error)?;
            conn.query_drop(format!("ALTER USER {account} IDENTIFIED BY '{password}'")).await.map_err(db_error)?;
            for (table, privileges) in u.role.grants() {
                conn.query_drop(format!("GRANT {privileges} ON `{database}`.`{table}` TO {account}"))
                    .await
                    .map_err(db_error)?;
            }
            tracing::info!(user = %u.user, role = ?u.role, "database user provisioned");
        }
        Ok(())
    }
}

fn quotable(password: &str) -> Result<&str, PortError> {
    if password.is_empty() || password.chars().any(|c| c == '\'' || c == '\\' || c.is_control()) {
        return Err(PortError::permanent(
            "mysql",
            "a role password is empty or holds a quote, backslash or control character",
        ));
    }
    Ok(password)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_users_parse_with_references() {
        let users = parse_role_users(
            "api=ocr_api:arn:aws:secretsmanager:us-east-1:1:secret:db-api-Ab12#password, upload=ocr_upload:s3cret",
        )
        .unwrap();
        assert_eq!(users.len(), 2);
        assert_eq!((users[0].role, users[0].user.as_str()), (Role::Api, "ocr_api"));
        assert_eq!(users[0].password.expose_secret(), "arn:aws:secretsmanager:us-east-1:1:secret:db-api-Ab12#password");
        assert_eq!(users[1].password.expose_secret(), "s3cret");
        for bad in ["api", "api=x", "root=u:p", "api=a;b:p", "api=:p"] {
            assert!(parse_role_users(bad).is_err(), "{bad}");
        }
        assert!(quotable("it's").is_err() && quotable("a\\b").is_err() && quotable("").is_err());
        assert_eq!(quotable("Zx9!~#%").ok(), Some("Zx9!~#%"));
    }
}
