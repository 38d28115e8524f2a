//! [`JobStore`] on MySQL 8 / MariaDB 10.6+.

use async_trait::async_trait;
use std::path::Path;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, OptsBuilder, Pool, PoolConstraints, PoolOpts, Row, params};
use ocr_core::job::Idempotency;
use ocr_core::ports::{JobStatuses, JobStore, STATUS_BATCH, SlotToken, StatusChange, WaitSlots};
use ocr_core::quota::{Admission, CallerQuota, TokenBucket};
use ocr_core::signing::{KeyState, WebhookKeys};
use ocr_core::{Job, JobId, JobStatus, NewJob, OcrResult, PortError};

use crate::sql::bind;

/// Schema changes, applied in order, each once. Never edit an applied one: add a new one.
const MIGRATIONS: &[(u32, &str)] = &[
    (
        1,
        r"CREATE TABLE IF NOT EXISTS jobs (
            id CHAR(32) CHARACTER SET ascii NOT NULL PRIMARY KEY,
            owner VARCHAR(191) NOT NULL,
            status VARCHAR(16) CHARACTER SET ascii NOT NULL,
            priority VARCHAR(8) CHARACTER SET ascii NOT NULL,
            content_type VARCHAR(32) CHARACTER SET ascii NOT NULL,
            content_length BIGINT UNSIGNED NOT NULL,
            callback_url TEXT NULL,
            metadata LONGTEXT NULL,
            idempotency_key VARCHAR(191) NULL,
            request_hash CHAR(64) CHARACTER SET ascii NULL,
            attempts INT UNSIGNED NOT NULL DEFAULT 0,
            error TEXT NULL,
            created_at_ms BIGINT NOT NULL,
            updated_at_ms BIGINT NOT NULL,
            queued_at_ms BIGINT NULL,
            enqueued_at_ms BIGINT NULL,
            started_at_ms BIGINT NULL,
            finished_at_ms BIGINT NULL,
            UNIQUE KEY uq_jobs_owner_idempotency (owner, idempotency_key),
            KEY ix_jobs_status_created (status, created_at_ms)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
    ),
    (
        2,
        r"CREATE TABLE IF NOT EXISTS job_results (
            job_id CHAR(32) CHARACTER SET ascii NOT NULL PRIMARY KEY,
            result LONGTEXT NOT NULL,
            created_at_ms BIGINT NOT NULL
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
    ),
    (
        3,
        r"CREATE TABLE IF NOT EXISTS webhook_deliveries (
            id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
            job_id CHAR(32) CHARACTER SET ascii NOT NULL,
            url TEXT NOT NULL,
            outcome VARCHAR(16) CHARACTER SET ascii NOT NULL,
            attempts INT UNSIGNED NOT NULL,
            status_code SMALLINT UNSIGNED NULL,
            error TEXT NULL,
            at_ms BIGINT NOT NULL,
            KEY ix_webhook_job (job_id)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
    ),
    (
        4,
        // The webhook outbox: set when a job with a callback ends, cleared when the call's
        // outcome is recorded. Indexed for the sweep; NULL for every settled job.
        r"ALTER TABLE jobs ADD COLUMN notify_since_ms BIGINT NULL, ADD KEY ix_jobs_notify (notify_since_ms)",
    ),
    (
        5,
        // Callers and their keys are compared byte for byte: under the default collation
        // `Alice` found `alice`'s idempotency key (and with it her job). Only the collation
        // changes: code of any version reads the columns as before.
        r"ALTER TABLE jobs
            MODIFY owner VARCHAR(191) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
            MODIFY idempotency_key VARCHAR(191) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL",
    ),
    (
        6,
        // The version (S3 ETag) of the image the on-upload check passed: the worker reads that
        // version or fails the job, so a second PUT to a still-valid URL is never read unchecked.
        r"ALTER TABLE jobs ADD COLUMN checked_etag VARCHAR(128) CHARACTER SET ascii NULL",
    ),
    (
        7,
        // Each caller's webhook key generation (ocr_core::signing); no row: generation 1.
        r"CREATE TABLE IF NOT EXISTS webhook_keys (
            owner VARCHAR(191) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL PRIMARY KEY,
            generation INT UNSIGNED NOT NULL,
            previous_until_ms BIGINT NULL,
            updated_at_ms BIGINT NOT NULL
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
    ),
    (
        8,
        // When a job first owed its webhook: a failing receiver is retried through the outbox
        // (notify_since_ms moves on) until a window counted from here has passed.
        r"ALTER TABLE jobs ADD COLUMN notify_first_ms BIGINT NULL",
    ),
    (
        9,
        // Retention: when the purge stripped a job past it (results, webhook records, what the
        // caller sent), and the index its batches walk.
        r"ALTER TABLE jobs ADD COLUMN purged_at_ms BIGINT NULL, ADD KEY ix_jobs_created (created_at_ms)",
    ),
    (
        10,
        // Each caller's creation budget (ocr_core::quota::TokenBucket). No row: a full bucket,
        // so idle callers' rows may be deleted at any time.
        r"CREATE TABLE IF NOT EXISTS caller_quotas (
            owner VARCHAR(191) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL PRIMARY KEY,
            milli_tokens BIGINT NOT NULL,
            at_ms BIGINT NOT NULL,
            KEY ix_caller_quotas_at (at_ms)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
    ),
    (
        11,
        // A caller's waiting jobs (the quota's count) without reading its finished ones.
        r"ALTER TABLE jobs ADD KEY ix_jobs_owner_status (owner, status, created_at_ms)",
    ),
    (
        12,
        // When an operator last redrove the job (`dlq redrive --reset-jobs`): the dead-letter
        // sweep leaves such a job alone until its redriven message has had time to move
        // (ocr_core::worker::REDRIVE_GRACE_MS), instead of failing it again from the old copy.
        r"ALTER TABLE jobs ADD COLUMN redriven_at_ms BIGINT NULL",
    ),
    (
        13,
        // The places of requests waiting for a job (`GET /v1/jobs/{id}?wait=`), counted across
        // every API process (ocr_core::ports::WaitSlots). The caller is compared byte for byte
        // (binary: no collation, no trailing-space padding); a row past `expires_ms` counts no
        // more, and the acquire's sweep deletes it.
        r"CREATE TABLE IF NOT EXISTS job_waits (
            token CHAR(32) CHARACTER SET ascii NOT NULL PRIMARY KEY,
            caller VARBINARY(764) NOT NULL,
            job_id CHAR(32) CHARACTER SET ascii NOT NULL,
            expires_ms BIGINT NOT NULL,
            KEY ix_job_waits_expires (expires_ms),
            KEY ix_job_waits_caller (caller, expires_ms)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
    ),
    (
        14,
        // One row whose lock admits waits one at a time (count, then insert), and when the
        // expired waits were last swept.
        r"CREATE TABLE IF NOT EXISTS job_wait_gate (
            id TINYINT UNSIGNED NOT NULL PRIMARY KEY,
            swept_ms BIGINT NOT NULL
        ) ENGINE=InnoDB",
    ),
    (15, r"INSERT IGNORE INTO job_wait_gate (id, swept_ms) VALUES (1, 0)"),
];

/// A caller's jobs holding a waiting place (ocr_core::quota::CallerQuota::holds_a_place),
/// counted up to the limit only: a caller far over it costs no more than one at it.
const WAITING_SQL: &str = "SELECT COUNT(*) FROM (SELECT 1 FROM jobs WHERE owner = :owner
     AND (status = 'queued' OR (status = 'awaiting_upload' AND created_at_ms >= :since)) LIMIT :cap) w";

const JOB_COLUMNS: &str = "id, owner, status, priority, content_type, content_length, callback_url, metadata, \
     idempotency_key, request_hash, attempts, error, created_at_ms, updated_at_ms, queued_at_ms, \
     enqueued_at_ms, started_at_ms, finished_at_ms";

/// How long a pooled connection may stay idle: under RDS Proxy's client idle timeout (600 s).
const IDLE_LIMIT: std::time::Duration = std::time::Duration::from_secs(300);

/// Jobs and results in MySQL.
#[derive(Debug, Clone)]
pub struct MySqlJobStore {
    pool: Pool,
}

/// Maps driver errors: connection trouble, deadlocks and lock waits are retryable,
/// duplicate keys are conflicts, everything else is permanent.
pub(crate) fn db_error(err: mysql_async::Error) -> PortError {
    match &err {
        mysql_async::Error::Server(server) => match server.code {
            1062 => PortError::Conflict(server.message.clone()),
            // deadlock, lock wait timeout, too many connections, server shutdown, read-only
            1213 | 1205 | 1040 | 1053 | 1290 | 1836 => PortError::unavailable("mysql", &err),
            _ => PortError::permanent("mysql", &err),
        },
        mysql_async::Error::Url(_) => PortError::permanent("mysql", &err),
        _ => PortError::unavailable("mysql", &err),
    }
}

impl MySqlJobStore {
    /// A pool of at most `max_connections` (1 on Lambda; RDS Proxy multiplexes). Connections
    /// open lazily; call [`MySqlJobStore::migrate`] once at start.
    ///
    /// TLS when the URL says `require_ssl=true` (production: RDS Proxy), verified against the
    /// public roots and, when given, the PEM certificates in `extra_ca` (a private CA: tests).
    /// No statement changes session state on a new connection and nothing is prepared (see
    /// [`crate::sql`]), so a connection is never pinned by the proxy; returning one to the pool
    /// therefore needs no `COM_RESET_CONNECTION` round trip either.
    pub fn new(database_url: &str, max_connections: usize, extra_ca: Option<&Path>) -> Result<Self, PortError> {
        Self::open(database_url, None, max_connections, extra_ca)
    }

    /// Like [`MySqlJobStore::new`], with the password given apart from the URL (read from
    /// Secrets Manager: see [`crate::config::DbArgs`]).
    pub fn open(
        database_url: &str,
        password: Option<&str>,
        max_connections: usize,
        extra_ca: Option<&Path>,
    ) -> Result<Self, PortError> {
        crate::process::install_crypto_provider();
        let mut opts = Opts::from_url(database_url).map_err(|e| PortError::permanent("mysql", e))?;
        if let Some(password) = password {
            opts = OptsBuilder::from_opts(opts).pass(Some(password)).into();
        }
        let ssl = ssl_trusting(&opts, extra_ca);
        let max = max_connections.max(1);
        let constraints = PoolConstraints::new(0, max).expect("0 <= max");
        let opts = OptsBuilder::from_opts(opts)
            // Connect where the URL says: mysql_async would otherwise switch a TCP connection
            // to the server's Unix socket when the server is on this machine, past any proxy
            // in between (the tests' fault-injecting proxies were bypassed that way).
            .prefer_socket(false)
            .ssl_opts(ssl)
            // A connection idle longer than this is not used again but replaced: RDS Proxy closes
            // client connections idle for 10 minutes (a Lambda environment sits frozen that long),
            // and a closed one would fail its next request.
            .conn_ttl(Some(IDLE_LIMIT))
            .pool_opts(
                PoolOpts::default()
                    .with_constraints(constraints)
                    .with_reset_connection(false)
                    // Keep idle connections (up to the maximum) instead of closing each one as it
                    // comes back, which mysql_async does with its default TTL of 0: every request
                    // would reconnect (TCP, TLS, authentication).
                    .with_inactive_connection_ttl(IDLE_LIMIT),
            );
        Ok(Self { pool: Pool::new(opts) })
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// A connection from the pool (opened when none is idle), within `DB_TIMEOUT_MS`.
    pub async fn conn(&self) -> Result<Conn, PortError> {
        crate::sql::timed("a connection", self.pool.get_conn()).await
    }

    /// Applies pending migrations. Safe to run from many processes at once:
    /// a named lock serialises them and applied versions are recorded.
    pub async fn migrate(&self) -> Result<(), PortError> {
        let mut conn = self.conn().await?;
        conn.query_drop(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INT UNSIGNED NOT NULL PRIMARY KEY, applied_at_ms BIGINT NOT NULL)",
        )
        .await
        .map_err(db_error)?;
        let got: Option<i64> =
            conn.query_first("SELECT GET_LOCK('ocr_fleet_migrations', 30)").await.map_err(db_error)?;
        if got != Some(1) {
            return Err(PortError::unavailable("mysql", "timed out waiting for the migration lock"));
        }
        let result = apply_migrations(&mut conn).await;
        let _ = conn.query_drop("DO RELEASE_LOCK('ocr_fleet_migrations')").await;
        // A named lock pins this connection behind RDS Proxy: close it rather than pool it.
        let _ = conn.disconnect().await;
        result
    }

    pub async fn disconnect(self) {
        let _ = self.pool.disconnect().await;
    }
}

async fn apply_migrations(conn: &mut Conn) -> Result<(), PortError> {
    let applied: Vec<u32> = conn.query("SELECT version FROM schema_migrations").await.map_err(db_error)?;
    for (version, sql) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        conn.query_drop(*sql).await.map_err(db_error)?;
        bind(
            "INSERT INTO schema_migrations (version, applied_at_ms) VALUES (:version, :at)",
            params! { "version" => version, "at" => ocr_core::ports::now_ms() },
        )?
        .ignore(&mut *conn)
        .await?;
        tracing::info!(version, "applied database migration");
    }
    Ok(())
}

/// The URL's TLS settings (`require_ssl=true`), trusting `extra_ca` (a PEM file) besides the
/// public roots; `None` when the URL asks for no TLS.
pub fn ssl_trusting(opts: &Opts, extra_ca: Option<&Path>) -> Option<mysql_async::SslOpts> {
    match (opts.ssl_opts(), extra_ca) {
        (Some(ssl), Some(ca)) => Some(ssl.clone().with_root_certs(vec![ca.to_path_buf().into()])),
        (ssl, _) => ssl.cloned(),
    }
}

/// `'a', 'b'`: the statuses that may become `to` ([`JobStatus::sources`], the one definition
/// of the life cycle), for a compare-and-set `WHERE status IN (…)`. Literals from the enum,
/// never from input.
pub(crate) fn may_become(to: JobStatus) -> String {
    JobStatus::sources(to).map(|s| format!("'{}'", s.as_str())).collect::<Vec<_>>().join(", ")
}

fn corrupt(what: &str) -> PortError {
    PortError::permanent("mysql", format!("unreadable {what} in jobs row"))
}

pub(crate) fn job_from_row(mut row: Row) -> Result<Job, PortError> {
    fn take<T: mysql_async::prelude::FromValue>(row: &mut Row, i: usize, what: &str) -> Result<T, PortError> {
        row.take_opt::<T, usize>(i).ok_or_else(|| corrupt(what))?.map_err(|_| corrupt(what))
    }
    let id: String = take(&mut row, 0, "id")?;
    let status: String = take(&mut row, 2, "status")?;
    let priority: String = take(&mut row, 3, "priority")?;
    let content_type: String = take(&mut row, 4, "content_type")?;
    let metadata: Option<String> = take(&mut row, 7, "metadata")?;
    let idem_key: Option<String> = take(&mut row, 8, "idempotency_key")?;
    let idem_hash: Option<String> = take(&mut row, 9, "request_hash")?;
    Ok(Job {
        id: id.parse().map_err(|_| corrupt("id"))?,
        owner: take(&mut row, 1, "owner")?,
        status: status.parse().map_err(|_| corrupt("status"))?,
        priority: priority.parse().map_err(|_| corrupt("priority"))?,
        content_type: content_type.parse().map_err(|_| corrupt("content_type"))?,
        content_length: take(&mut row, 5, "content_length")?,
        callback_url: take(&mut row, 6, "callback_url")?,
        metadata: metadata.map(|m| serde_json::from_str(&m)).transpose().map_err(|_| corrupt("metadata"))?,
        idempotency: match (idem_key, idem_hash) {
            (Some(key), Some(request_hash)) => Some(Idempotency { key, request_hash }),
            _ => None,
        },
        attempts: take(&mut row, 10, "attempts")?,
        error: take(&mut row, 11, "error")?,
        created_at_ms: take(&mut row, 12, "created_at_ms")?,
        updated_at_ms: take(&mut row, 13, "updated_at_ms")?,
        queued_at_ms: take(&mut row, 14, "queued_at_ms")?,
        enqueued_at_ms: take(&mut row, 15, "enqueued_at_ms")?,
        started_at_ms: take(&mut row, 16, "started_at_ms")?,
        finished_at_ms: take(&mut row, 17, "finished_at_ms")?,
    })
}

async fn insert_job(conn: &mut impl Queryable, new: NewJob) -> Result<Job, PortError> {
    let job = Job::from_new(new);
    let metadata = job.metadata.as_ref().map(|m| m.to_string());
    let (idem_key, idem_hash) = match &job.idempotency {
        Some(i) => (Some(i.key.clone()), Some(i.request_hash.clone())),
        None => (None, None),
    };
    bind(
        r"INSERT INTO jobs (id, owner, status, priority, content_type, content_length, callback_url, metadata,
          idempotency_key, request_hash, attempts, created_at_ms, updated_at_ms)
      VALUES (:id, :owner, :status, :priority, :content_type, :content_length, :callback_url, :metadata,
          :idem_key, :idem_hash, 0, :created, :created)",
        params! {
            "id" => job.id.to_string(),
            "owner" => &job.owner,
            "status" => job.status.as_str(),
            "priority" => job.priority.as_str(),
            "content_type" => job.content_type.as_str(),
            "content_length" => job.content_length,
            "callback_url" => &job.callback_url,
            "metadata" => metadata,
            "idem_key" => idem_key,
            "idem_hash" => idem_hash,
            "created" => job.created_at_ms,
        },
    )?
    .ignore(conn)
    .await?;
    Ok(job)
}

#[async_trait]
impl JobStore for MySqlJobStore {
    async fn insert(&self, new: NewJob) -> Result<Job, PortError> {
        let mut conn = self.conn().await?;
        insert_job(&mut conn, new).await
    }

    async fn insert_within(&self, new: NewJob, quota: &CallerQuota) -> Result<Admission, PortError> {
        if quota.is_unlimited() {
            return Ok(Admission::Admitted(Box::new(self.insert(new).await?)));
        }
        let now = new.created_at_ms;
        let mut conn = self.conn().await?;
        let mut tx = crate::sql::begin(&mut conn).await?;
        // Creates the caller's row or locks it: one caller's creations (from every API
        // instance) pass here one at a time, so the count below cannot go stale before the
        // insert. Other callers never wait on this row.
        bind(
            "INSERT INTO caller_quotas (owner, milli_tokens, at_ms) VALUES (:owner, :full, :now)
             ON DUPLICATE KEY UPDATE owner = owner",
            params! { "owner" => &new.owner, "full" => i64::from(quota.burst.max(1)) * 1000, "now" => now },
        )?
        .ignore(&mut tx)
        .await?;
        let bucket: Option<(i64, i64)> = bind(
            "SELECT milli_tokens, at_ms FROM caller_quotas WHERE owner = :owner FOR UPDATE",
            params! { "owner" => &new.owner },
        )?
        .first(&mut tx)
        .await?;
        let bucket = bucket.map(|(milli_tokens, at_ms)| TokenBucket { milli_tokens, at_ms });
        if quota.max_waiting > 0 {
            let waiting: Option<u64> = bind(
                WAITING_SQL,
                params! { "owner" => &new.owner, "since" => quota.upload_window_start(now), "cap" => quota.max_waiting },
            )?
            .first(&mut tx)
            .await?;
            if let Err(refusal) = quota.check_waiting(waiting.unwrap_or(0)) {
                tx.rollback().await.map_err(db_error)?;
                return Ok(Admission::Refused(refusal));
            }
        }
        let bucket = match quota.take(bucket, now) {
            Ok(bucket) => bucket,
            Err(refusal) => {
                tx.rollback().await.map_err(db_error)?;
                return Ok(Admission::Refused(refusal));
            }
        };
        let owner = new.owner.clone();
        let job = insert_job(&mut tx, new).await?;
        bind(
            "UPDATE caller_quotas SET milli_tokens = :milli, at_ms = :at WHERE owner = :owner",
            params! { "milli" => bucket.milli_tokens, "at" => bucket.at_ms, "owner" => owner },
        )?
        .ignore(&mut tx)
        .await?;
        crate::sql::commit(tx).await?;
        Ok(Admission::Admitted(Box::new(job)))
    }

    async fn get(&self, id: &JobId) -> Result<Option<Job>, PortError> {
        let mut conn = self.conn().await?;
        let row: Option<Row> =
            bind(format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = :id"), params! { "id" => id.to_string() })?
                .first(&mut conn)
                .await?;
        row.map(job_from_row).transpose()
    }

    async fn find_by_idempotency_key(&self, owner: &str, key: &str) -> Result<Option<Job>, PortError> {
        let mut conn = self.conn().await?;
        let row: Option<Row> = bind(
            format!("SELECT {JOB_COLUMNS} FROM jobs WHERE owner = :owner AND idempotency_key = :key"),
            params! { "owner" => owner, "key" => key },
        )?
        .first(&mut conn)
        .await?;
        row.map(job_from_row).transpose()
    }

    async fn remove(&self, id: &JobId) -> Result<(), PortError> {
        let mut conn = self.conn().await?;
        bind("DELETE FROM jobs WHERE id = :id", params! { "id" => id.to_string() })?.ignore(&mut conn).await
    }

    async fn set_status(
        &self,
        id: &JobId,
        from: JobStatus,
        to: JobStatus,
        change: StatusChange,
    ) -> Result<bool, PortError> {
        from.transition(to)?;
        let timestamp_column = match to {
            JobStatus::Queued => ", queued_at_ms = :at",
            JobStatus::Processing => ", started_at_ms = :at, attempts = attempts + 1",
            // A job failed here (its upload was refused) never reaches a worker: record its
            // webhook as owed, so that a worker's sweep (webhook::sweep) sends it.
            JobStatus::Failed => {
                ", finished_at_ms = :at, notify_since_ms = IF(callback_url IS NULL, NULL, :at), \
                 notify_first_ms = IF(callback_url IS NULL, NULL, :at)"
            }
            JobStatus::Succeeded | JobStatus::Expired => ", finished_at_ms = :at",
            JobStatus::AwaitingUpload | JobStatus::Deleted => "",
        };
        let sql = format!(
            "UPDATE jobs SET status = :to, updated_at_ms = :at, error = COALESCE(:error, error), \
             checked_etag = COALESCE(:etag, checked_etag){timestamp_column} WHERE id = :id AND status = :from"
        );
        let mut conn = self.conn().await?;
        bind(
            sql,
            params! {
                "to" => to.as_str(),
                "from" => from.as_str(),
                "at" => change.at_ms,
                "error" => change.error,
                "etag" => change.checked_etag,
                "id" => id.to_string(),
            },
        )?
        .ignore(&mut conn)
        .await?;
        Ok(conn.affected_rows() == 1)
    }

    async fn mark_enqueued(&self, id: &JobId, at_ms: i64) -> Result<(), PortError> {
        let mut conn = self.conn().await?;
        bind("UPDATE jobs SET enqueued_at_ms = :at WHERE id = :id", params! { "at" => at_ms, "id" => id.to_string() })?
            .ignore(&mut conn)
            .await
    }

    async fn get_result(&self, id: &JobId) -> Result<Option<OcrResult>, PortError> {
        let mut conn = self.conn().await?;
        let json: Option<String> =
            bind("SELECT result FROM job_results WHERE job_id = :id", params! { "id" => id.to_string() })?
                .first(&mut conn)
                .await?;
        json.map(|j| serde_json::from_str(&j).map_err(|_| corrupt("result"))).transpose()
    }

    async fn mark_deleted(&self, id: &JobId, at_ms: i64) -> Result<(), PortError> {
        let mut conn = self.conn().await?;
        let mut tx = crate::sql::begin(&mut conn).await?;
        bind("DELETE FROM job_results WHERE job_id = :id", params! { "id" => id.to_string() })?.ignore(&mut tx).await?;
        // The row stays (as `deleted`) so the id keeps answering "deleted", but what the
        // caller sent with it goes.
        bind(
            format!(
                "UPDATE jobs SET status = 'deleted', updated_at_ms = :at, metadata = NULL, callback_url = NULL \
             WHERE id = :id AND status IN ({})",
                may_become(JobStatus::Deleted)
            ),
            params! { "at" => at_ms, "id" => id.to_string() },
        )?
        .ignore(&mut tx)
        .await?;
        crate::sql::commit(tx).await
    }
}

#[async_trait]
impl WebhookKeys for MySqlJobStore {
    async fn key_state(&self, owner: &str) -> Result<KeyState, PortError> {
        let mut conn = self.conn().await?;
        Ok(read_key_state(&mut conn, owner).await?.unwrap_or_default())
    }

    async fn rotate_key(&self, owner: &str, overlap: std::time::Duration, now_ms: i64) -> Result<KeyState, PortError> {
        let until = now_ms + overlap.as_millis() as i64;
        let mut conn = self.conn().await?;
        let mut tx = crate::sql::begin(&mut conn).await?;
        // One statement: two rotations at once are two generations, never one lost.
        bind(
            "INSERT INTO webhook_keys (owner, generation, previous_until_ms, updated_at_ms) VALUES (:owner, 2, :until, :at) \
             ON DUPLICATE KEY UPDATE generation = generation + 1, previous_until_ms = :until, updated_at_ms = :at",
            params! { "owner" => owner, "until" => until, "at" => now_ms },
        )?
        .ignore(&mut tx)
        .await?;
        let state = read_key_state(&mut tx, owner).await?;
        crate::sql::commit(tx).await?;
        state.ok_or_else(|| corrupt("webhook key"))
    }
}

/// One `SELECT … WHERE id IN (…)` per [`STATUS_BATCH`] ids: the waiting hub's check of every
/// watched job each tick.
#[async_trait]
impl JobStatuses for MySqlJobStore {
    async fn statuses(&self, ids: &[JobId]) -> Result<Vec<(JobId, JobStatus)>, PortError> {
        let mut found = Vec::with_capacity(ids.len());
        if ids.is_empty() {
            return Ok(found);
        }
        let mut conn = self.conn().await?;
        for chunk in ids.chunks(STATUS_BATCH) {
            let marks = vec!["?"; chunk.len()].join(", ");
            let values: Vec<mysql_async::Value> = chunk.iter().map(|id| id.to_string().into()).collect();
            let rows: Vec<(String, String)> =
                bind(format!("SELECT id, status FROM jobs WHERE id IN ({marks})"), values)?.fetch(&mut conn).await?;
            for (id, status) in rows {
                found.push((id.parse().map_err(|_| corrupt("id"))?, status.parse().map_err(|_| corrupt("status"))?));
            }
        }
        Ok(found)
    }
}

/// Live waits in all and of one caller, each counted up to its cap only (a full table costs no
/// more than one at the cap). No locks: a consistent read.
const WAITS_SQL: &str = "SELECT
     (SELECT COUNT(*) FROM (SELECT 1 FROM job_waits WHERE expires_ms > :now LIMIT :total) t),
     (SELECT COUNT(*) FROM (SELECT 1 FROM job_waits WHERE caller = :caller AND expires_ms > :now LIMIT :per) c)";

/// How often (at most) an acquire deletes expired waits, and how many at once: rows are
/// deleted by their release, so only a process that died mid-wait (or a failed release) leaves
/// one; they count no more once expired, and the sweep only keeps the table small.
const WAIT_SWEEP_EVERY_MS: i64 = 60_000;
const WAIT_SWEEP_MAX: u64 = 500;

/// Waiting places in `job_waits`, admitted one at a time through the `job_wait_gate` row.
///
/// An acquire first counts without locking and refuses at once when a cap is reached (a caller
/// at its cap, retrying, never touches the gate). Otherwise, in one transaction, it locks the
/// gate row (`SELECT … FOR UPDATE`: every API process's admissions queue there), counts again
/// and inserts. The count is a consistent read whose snapshot InnoDB takes at the transaction's
/// first non-locking read, so after the gate was granted: it sees every admission committed
/// before (each one commits before it lets the gate go). So concurrent acquires never get past
/// a cap together, with no overshoot; a release only deletes its own row and never waits for
/// the gate. Nothing here pins an RDS Proxy connection (text statements, no session state).
#[async_trait]
impl WaitSlots for MySqlJobStore {
    async fn acquire(
        &self,
        caller: &str,
        job: JobId,
        until_ms: i64,
        now_ms: i64,
        max_total: u32,
        max_per_caller: u32,
    ) -> Result<Option<SlotToken>, PortError> {
        if max_total == 0 || max_per_caller == 0 {
            return Ok(None);
        }
        let counts = || {
            bind(
                WAITS_SQL,
                params! { "now" => now_ms, "total" => max_total, "per" => max_per_caller, "caller" => caller },
            )
        };
        let under_caps = |counts: Option<(u64, u64)>| {
            let (total, mine) = counts.unwrap_or_default();
            total < u64::from(max_total) && mine < u64::from(max_per_caller)
        };
        let mut conn = self.conn().await?;
        if !under_caps(counts()?.first(&mut conn).await?) {
            return Ok(None);
        }
        let mut tx = crate::sql::begin(&mut conn).await?;
        let gate: Option<i64> =
            bind("SELECT swept_ms FROM job_wait_gate WHERE id = 1 FOR UPDATE", mysql_async::Params::Empty)?
                .first(&mut tx)
                .await?;
        let swept_ms = match gate {
            Some(swept_ms) => swept_ms,
            None => {
                // The migration made the row; should it be gone, the first acquire makes it again.
                bind(
                    "INSERT INTO job_wait_gate (id, swept_ms) VALUES (1, 0) ON DUPLICATE KEY UPDATE id = id",
                    mysql_async::Params::Empty,
                )?
                .ignore(&mut tx)
                .await?;
                0
            }
        };
        let token = if under_caps(counts()?.first(&mut tx).await?) {
            let token = SlotToken::new();
            bind(
                "INSERT INTO job_waits (token, caller, job_id, expires_ms) VALUES (:token, :caller, :job, :until)",
                params! { "token" => token.as_str(), "caller" => caller, "job" => job.to_string(), "until" => until_ms },
            )?
            .ignore(&mut tx)
            .await?;
            Some(token)
        } else {
            None
        };
        let sweep = now_ms - swept_ms >= WAIT_SWEEP_EVERY_MS;
        if sweep {
            bind("UPDATE job_wait_gate SET swept_ms = :now WHERE id = 1", params! { "now" => now_ms })?
                .ignore(&mut tx)
                .await?;
        }
        crate::sql::commit(tx).await?;
        if sweep {
            // Outside the gate: admissions do not wait for it. Failing is harmless (expired rows
            // count no more); the next sweep, a minute on, tries again.
            let swept = bind(
                "DELETE FROM job_waits WHERE expires_ms <= :now ORDER BY expires_ms LIMIT :max",
                params! { "now" => now_ms, "max" => WAIT_SWEEP_MAX },
            )?
            .ignore(&mut conn)
            .await;
            match swept {
                Ok(()) => tracing::debug!(deleted = conn.affected_rows(), "expired waits swept"),
                Err(e) => tracing::warn!(error = %e, "sweeping expired waits failed"),
            }
        }
        Ok(token)
    }

    async fn release(&self, token: &SlotToken) -> Result<(), PortError> {
        let mut conn = self.conn().await?;
        bind("DELETE FROM job_waits WHERE token = :token", params! { "token" => token.as_str() })?
            .ignore(&mut conn)
            .await
    }
}

/// The caller's stored key state; `None` when it never rotated.
async fn read_key_state(conn: &mut impl Queryable, owner: &str) -> Result<Option<KeyState>, PortError> {
    let row: Option<(u32, Option<i64>)> = bind(
        "SELECT generation, previous_until_ms FROM webhook_keys WHERE owner = :owner",
        params! { "owner" => owner },
    )?
    .first(conn)
    .await?;
    Ok(row.map(|(generation, previous_until_ms)| KeyState { generation, previous_until_ms }))
}
