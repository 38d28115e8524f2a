//! [`ResultStore`] on MySQL: the worker's batch writes.

use async_trait::async_trait;
use mysql_async::{Params, Row, Value, params};
use ocr_core::worker::{OwedNotification, Purged, REDRIVE_GRACE_MS, ResultStore, TakenJob, WebhookRecord};
use ocr_core::{JobId, JobStatus, OcrResult, PortError};

use crate::mysql::{MySqlJobStore, may_become};
use crate::sql::bind;

/// `?, ?, ?` for `n` values.
fn placeholders(n: usize) -> String {
    vec!["?"; n].join(", ")
}

fn id_values(ids: &[JobId]) -> Vec<Value> {
    ids.iter().map(|id| Value::from(id.to_string())).collect()
}

fn unreadable(what: &str) -> PortError {
    PortError::permanent("mysql", format!("unreadable {what}"))
}

impl MySqlJobStore {
    /// Fails a job that has not ended, setting `error` to `error_sql` (which may use
    /// `:reason` and the old `error`), and records its webhook as owed when it has a callback.
    /// `guard` is more SQL the row must meet (it may use `:since`, bound to `since_ms`).
    async fn end_failed(
        &self,
        id: &JobId,
        error_sql: &str,
        reason: &str,
        at_ms: i64,
        guard: &str,
        since_ms: i64,
    ) -> Result<bool, PortError> {
        let mut conn = self.conn().await?;
        let params = if guard.is_empty() {
            params! { "reason" => reason, "at" => at_ms, "id" => id.to_string() }
        } else {
            params! { "reason" => reason, "at" => at_ms, "id" => id.to_string(), "since" => since_ms }
        };
        bind(
            format!(
                "UPDATE jobs SET status = 'failed', error = {error_sql}, finished_at_ms = :at, updated_at_ms = :at, \
             notify_since_ms = IF(callback_url IS NULL, NULL, :at), notify_first_ms = IF(callback_url IS NULL, NULL, :at) \
             WHERE id = :id AND status IN ({}) {guard}",
                may_become(JobStatus::Failed)
            ),
            params,
        )?
        .ignore(&mut conn)
        .await?;
        Ok(conn.affected_rows() == 1)
    }

    /// Records one webhook try (a `webhook_deliveries` row) and updates the job's debt with
    /// `settle` (SQL assignments, which may use `:since`), in one transaction.
    async fn webhook_attempt(&self, r: &WebhookRecord, settle: &str, since: Option<i64>) -> Result<(), PortError> {
        let mut conn = self.conn().await?;
        let mut tx = crate::sql::begin(&mut conn).await?;
        bind(
            "INSERT INTO webhook_deliveries (job_id, url, outcome, attempts, status_code, error, at_ms) \
         VALUES (:job_id, :url, :outcome, :attempts, :status_code, :error, :at)",
            params! {
                "job_id" => r.job_id.to_string(),
                "url" => &r.url,
                "outcome" => &r.outcome,
                "attempts" => r.attempts,
                "status_code" => r.status_code,
                "error" => &r.error,
                "at" => r.at_ms,
            },
        )?
        .ignore(&mut tx)
        .await?;
        let params = match since {
            Some(since) => params! { "id" => r.job_id.to_string(), "since" => since },
            None => params! { "id" => r.job_id.to_string() },
        };
        bind(format!("UPDATE jobs SET {settle} WHERE id = :id"), params)?.ignore(&mut tx).await?;
        crate::sql::commit(tx).await
    }

    /// An operator's redrive ([`JobStatus::REDRIVE`]): the jobs that failed go back to `queued`
    /// with no attempts and no error, so that their redriven messages are really tried again
    /// (a worker acknowledges a message whose job has ended). Returns how many changed.
    pub async fn requeue_failed(&self, ids: &[JobId], at_ms: i64) -> Result<u64, PortError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let (from, to) = JobStatus::REDRIVE;
        let mut params = vec![Value::from(to.as_str()), Value::from(at_ms), Value::from(at_ms), Value::from(at_ms)];
        params.extend(id_values(ids));
        params.push(Value::from(from.as_str()));
        let mut conn = self.conn().await?;
        bind(format!(
            "UPDATE jobs SET status = ?, attempts = 0, error = NULL, finished_at_ms = NULL, notify_since_ms = NULL, notify_first_ms = NULL, \
             queued_at_ms = ?, updated_at_ms = ?, redriven_at_ms = ? WHERE id IN ({}) AND status = ?",
            placeholders(ids.len())
        ), Params::Positional(params))?.ignore(&mut conn).await?;
        Ok(conn.affected_rows())
    }
}

#[async_trait]
impl ResultStore for MySqlJobStore {
    async fn take(&self, ids: &[JobId], at_ms: i64) -> Result<Vec<TakenJob>, PortError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn().await?;
        let mut tx = crate::sql::begin(&mut conn).await?;
        let list = placeholders(ids.len());
        // Row locks keep a concurrent `complete` or delete from slipping between read and write.
        let rows: Vec<Row> = bind(
            format!(
                "SELECT id, owner, status, callback_url, queued_at_ms, checked_etag FROM jobs WHERE id IN ({list}) \
                 FOR UPDATE"
            ),
            Params::Positional(id_values(ids)),
        )?
        .fetch(&mut tx)
        .await?;
        let mut taken = Vec::with_capacity(rows.len());
        for mut row in rows {
            let id: String = row.take(0).ok_or_else(|| unreadable("id"))?;
            let status: String = row.take(2).ok_or_else(|| unreadable("status"))?;
            taken.push(TakenJob {
                id: id.parse().map_err(|_| unreadable("id"))?,
                owner: row.take(1).ok_or_else(|| unreadable("owner"))?,
                status: status.parse().map_err(|_| unreadable("status"))?,
                callback_url: row.take(3).ok_or_else(|| unreadable("callback_url"))?,
                queued_at_ms: row.take(4).ok_or_else(|| unreadable("queued_at_ms"))?,
                checked_etag: row.take(5).ok_or_else(|| unreadable("checked_etag"))?,
            });
        }
        let mut params = vec![Value::from(at_ms), Value::from(at_ms)];
        params.extend(id_values(ids));
        bind(
            format!(
                "UPDATE jobs SET status = 'processing', attempts = attempts + 1, started_at_ms = ?, updated_at_ms = ? \
             WHERE id IN ({list}) AND status IN ({})",
                may_become(JobStatus::Processing)
            ),
            Params::Positional(params),
        )?
        .ignore(&mut tx)
        .await?;
        crate::sql::commit(tx).await?;
        Ok(taken)
    }

    async fn complete(&self, results: &[(JobId, OcrResult)], at_ms: i64) -> Result<Vec<JobId>, PortError> {
        if results.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<JobId> = results.iter().map(|(id, _)| *id).collect();
        let mut conn = self.conn().await?;
        let mut tx = crate::sql::begin(&mut conn).await?;
        let eligible: Vec<String> = bind(
            format!(
                "SELECT id FROM jobs WHERE id IN ({}) AND status IN ({}) FOR UPDATE",
                placeholders(ids.len()),
                may_become(JobStatus::Succeeded)
            ),
            Params::Positional(id_values(&ids)),
        )?
        .fetch(&mut tx)
        .await?;
        let written: Vec<JobId> = ids.iter().copied().filter(|id| eligible.contains(&id.to_string())).collect();
        if !written.is_empty() {
            let mut values = Vec::with_capacity(written.len() * 3);
            for (id, result) in results.iter().filter(|(id, _)| written.contains(id)) {
                let json = serde_json::to_string(result).map_err(|e| PortError::permanent("mysql", e))?;
                values.extend([Value::from(id.to_string()), Value::from(json), Value::from(at_ms)]);
            }
            // One multi-row insert per batch; a result already there is kept (first wins).
            bind(
                format!(
                    "INSERT INTO job_results (job_id, result, created_at_ms) VALUES {} \
                 ON DUPLICATE KEY UPDATE job_id = job_id",
                    vec!["(?, ?, ?)"; written.len()].join(", ")
                ),
                Params::Positional(values),
            )?
            .ignore(&mut tx)
            .await?;
            let mut params = vec![Value::from(at_ms); 4];
            params.extend(id_values(&written));
            bind(
                format!(
                    "UPDATE jobs SET status = 'succeeded', finished_at_ms = ?, updated_at_ms = ?, error = NULL, \
                 notify_since_ms = IF(callback_url IS NULL, NULL, ?), notify_first_ms = IF(callback_url IS NULL, NULL, ?) \
                 WHERE id IN ({}) AND status IN ({})",
                    placeholders(written.len()),
                    may_become(JobStatus::Succeeded)
                ),
                Params::Positional(params),
            )?
            .ignore(&mut tx)
            .await?;
        }
        crate::sql::commit(tx).await?;
        Ok(written)
    }

    async fn fail(&self, id: &JobId, reason: &str, at_ms: i64) -> Result<bool, PortError> {
        self.end_failed(id, ":reason", reason, at_ms, "", 0).await
    }

    async fn give_up(&self, id: &JobId, reason: &str, at_ms: i64) -> Result<bool, PortError> {
        // A job an operator just redrove, not taken since, is what its old dead letter names
        // while the message move is under way: not a job to fail (REDRIVE_GRACE_MS).
        self.end_failed(
            id,
            "IF(error IS NULL OR error = '', :reason, CONCAT(error, '; ', :reason))",
            reason,
            at_ms,
            "AND NOT (status = 'queued' AND attempts = 0 AND redriven_at_ms IS NOT NULL AND redriven_at_ms >= :since)",
            at_ms - REDRIVE_GRACE_MS,
        )
        .await
    }

    async fn note_attempt_error(&self, id: &JobId, reason: &str, at_ms: i64) -> Result<(), PortError> {
        let mut conn = self.conn().await?;
        // Only while the job is still being worked on (it may be taken again).
        bind(
            format!(
                "UPDATE jobs SET error = :reason, updated_at_ms = :at WHERE id = :id AND status IN ({})",
                may_become(JobStatus::Processing)
            ),
            params! { "reason" => reason, "at" => at_ms, "id" => id.to_string() },
        )?
        .ignore(&mut conn)
        .await
    }

    async fn record_webhook(&self, r: &WebhookRecord) -> Result<(), PortError> {
        self.webhook_attempt(r, "notify_since_ms = NULL, notify_first_ms = NULL", None).await
    }

    async fn purge(
        &self,
        strip_before_ms: i64,
        delete_before_ms: i64,
        max: usize,
        at_ms: i64,
    ) -> Result<Purged, PortError> {
        let mut conn = self.conn().await?;
        // Strip: one short transaction over at most `max` rows, walked by ix_jobs_created.
        let mut tx = crate::sql::begin(&mut conn).await?;
        let ids: Vec<String> = bind(
            "SELECT id FROM jobs WHERE created_at_ms < :before AND purged_at_ms IS NULL \
             ORDER BY created_at_ms LIMIT :max FOR UPDATE SKIP LOCKED",
            params! { "before" => strip_before_ms, "max" => max as u64 },
        )?
        .fetch(&mut tx)
        .await?;
        if !ids.is_empty() {
            let list = placeholders(ids.len());
            let values = || Params::Positional(ids.iter().map(|i| Value::from(i.as_str())).collect());
            bind(format!("DELETE FROM job_results WHERE job_id IN ({list})"), values())?.ignore(&mut tx).await?;
            bind(format!("DELETE FROM webhook_deliveries WHERE job_id IN ({list})"), values())?.ignore(&mut tx).await?;
            let mut params = vec![Value::from(at_ms), Value::from(at_ms)];
            params.extend(ids.iter().map(|i| Value::from(i.as_str())));
            bind(
                format!(
                    "UPDATE jobs SET purged_at_ms = ?, updated_at_ms = ?, metadata = NULL, callback_url = NULL, \
                     notify_since_ms = NULL, notify_first_ms = NULL WHERE id IN ({list})"
                ),
                Params::Positional(params),
            )?
            .ignore(&mut tx)
            .await?;
        }
        crate::sql::commit(tx).await?;
        // Delete: stripped rows only, oldest first, at most `max` (a single-table DELETE with
        // ORDER BY … LIMIT locks no more than it removes).
        bind(
            "DELETE FROM jobs WHERE created_at_ms < :before AND purged_at_ms IS NOT NULL ORDER BY created_at_ms LIMIT :max",
            params! { "before" => delete_before_ms, "max" => max as u64 },
        )?
        .ignore(&mut conn)
        .await?;
        let deleted = conn.affected_rows() as usize;
        // Callers idle for the whole retention: no row is a full bucket, so their rows go and
        // the table holds only recent callers.
        bind(
            "DELETE FROM caller_quotas WHERE at_ms < :before ORDER BY at_ms LIMIT :max",
            params! { "before" => strip_before_ms, "max" => max as u64 },
        )?
        .ignore(&mut conn)
        .await?;
        Ok(Purged { stripped: ids.len(), deleted })
    }

    async fn defer_webhook(&self, r: &WebhookRecord, owed_since_ms: i64) -> Result<(), PortError> {
        // Only while it is still owed: a delivery by another worker meanwhile settled it.
        self.webhook_attempt(
            r,
            // In this order: MySQL assigns left to right, the second reads the first's result.
            "notify_first_ms = IF(notify_since_ms IS NULL, NULL, COALESCE(notify_first_ms, notify_since_ms)), \
             notify_since_ms = IF(notify_since_ms IS NULL, NULL, :since)",
            Some(owed_since_ms),
        )
        .await
    }

    async fn claim_notifications(
        &self,
        owed_before_ms: i64,
        now_ms: i64,
        max: usize,
    ) -> Result<Vec<OwedNotification>, PortError> {
        let mut conn = self.conn().await?;
        let mut tx = crate::sql::begin(&mut conn).await?;
        // SKIP LOCKED: workers sweeping at the same moment take disjoint rows.
        let rows: Vec<(String, String, String, Option<String>, i64)> = bind(
            "SELECT id, owner, status, callback_url, COALESCE(notify_first_ms, notify_since_ms) FROM jobs \
             WHERE notify_since_ms <= :before ORDER BY notify_since_ms LIMIT :max FOR UPDATE SKIP LOCKED",
            params! { "before" => owed_before_ms, "max" => max as u64 },
        )?
        .fetch(&mut tx)
        .await?;
        let mut claimed = Vec::with_capacity(rows.len());
        let mut ids = Vec::with_capacity(rows.len());
        for (id, owner, status, url, first_owed_ms) in rows {
            let job_id: JobId = id.parse().map_err(|_| unreadable("id"))?;
            ids.push(job_id);
            if let Some(callback_url) = url {
                let status = status.parse().map_err(|_| unreadable("status"))?;
                claimed.push(OwedNotification { job_id, owner, status, callback_url, first_owed_ms });
            }
        }
        if !ids.is_empty() {
            let mut params = vec![Value::from(now_ms)];
            params.extend(id_values(&ids));
            // A row without a callback URL owes nothing: settle it.
            bind(
                format!(
                    "UPDATE jobs SET notify_since_ms = IF(callback_url IS NULL, NULL, ?) WHERE id IN ({})",
                    placeholders(ids.len())
                ),
                Params::Positional(params),
            )?
            .ignore(&mut tx)
            .await?;
        }
        crate::sql::commit(tx).await?;
        Ok(claimed)
    }
}
