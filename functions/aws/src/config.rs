//! The settings every process that reaches the queues, the bucket or the database reads (the API
//! and on-upload functions, `api-local`, the worker): one declaration, one default, one name
//! per setting, the names template.yaml, infra/ and the README use.

use std::path::PathBuf;

use secrecy::{ExposeSecret, SecretString};

use crate::MySqlJobStore;

/// Where the job queues and the bucket are.
#[derive(clap::Args, Debug, Clone)]
pub struct ResourceArgs {
    /// Bucket that receives uploads under `uploads/`; job messages naming another are refused.
    #[arg(long, env = "UPLOAD_BUCKET")]
    pub upload_bucket: String,
    /// URL of the express job queue.
    #[arg(long, env = "EXPRESS_QUEUE_URL")]
    pub express_queue_url: String,
    /// URL of the bulk job queue.
    #[arg(long, env = "BULK_QUEUE_URL")]
    pub bulk_queue_url: String,
}

/// The database connection.
#[derive(clap::Args, Debug, Clone)]
pub struct DbArgs {
    /// `mysql://user:password@host:port/database` (never shown: it carries the password).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: SecretString,
    /// The password, when the URL has none: the password itself, or where Secrets Manager keeps
    /// it (`arn:aws:secretsmanager:…:secret:<name>#password`, read at start; see
    /// [`crate::secrets`]). On AWS it is always the latter, so no configuration holds it.
    #[arg(long, env = "DATABASE_PASSWORD", hide_env_values = true)]
    pub database_password: Option<SecretString>,
    /// Most connections this process opens (the template sets 1 on Lambda, where one
    /// environment serves one request at a time).
    #[arg(long, env = "DB_POOL_MAX", default_value_t = 4)]
    pub db_pool_max: usize,
    /// PEM file of a private CA to trust for the database's TLS certificate, besides the public
    /// roots (tests: a MariaDB with its own CA). Production leaves it unset: RDS Proxy presents
    /// a certificate from a public CA.
    #[arg(long, env = "DATABASE_CA_FILE")]
    pub database_ca_file: Option<PathBuf>,
    /// Longest wait for the database on one step (a connection, a statement, a commit), in
    /// milliseconds; past it the step fails as retryable, so a server that stops answering
    /// without closing its connections cannot hang a request or a batch.
    #[arg(long, env = "DB_TIMEOUT_MS", default_value_t = crate::sql::DEFAULT_TIMEOUT_MS)]
    pub db_timeout_ms: u64,
}

impl DbArgs {
    /// The store on this database (connections open on first use), its password read from
    /// Secrets Manager first when `DATABASE_PASSWORD` names it.
    pub async fn connect(&self, aws: &aws_config::SdkConfig) -> Result<MySqlJobStore, ocr_core::PortError> {
        crate::sql::set_timeout(std::time::Duration::from_millis(self.db_timeout_ms));
        let password = match &self.database_password {
            Some(p) => Some(crate::secrets::resolve(p, aws).await?),
            None => None,
        };
        MySqlJobStore::open(
            self.database_url.expose_secret(),
            password.as_ref().map(ExposeSecret::expose_secret),
            self.db_pool_max,
            self.database_ca_file.as_deref(),
        )
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(clap::Parser, Debug)]
    struct Both {
        #[command(flatten)]
        resources: ResourceArgs,
        #[command(flatten)]
        db: DbArgs,
    }

    #[test]
    fn the_password_never_shows_in_debug() {
        let args = Both::parse_from([
            "x",
            "--upload-bucket=b",
            "--express-queue-url=e",
            "--bulk-queue-url=q",
            "--database-url=mysql://u:hunter2@db:3306/ocr",
        ]);
        let shown = format!("{args:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert_eq!(args.db.database_url.expose_secret(), "mysql://u:hunter2@db:3306/ocr");
        assert_eq!(args.db.db_pool_max, 4);
    }
}
