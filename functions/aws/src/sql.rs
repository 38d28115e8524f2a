//! Statements sent as text (COM_QUERY) with their values inlined.
//!
//! Why not prepared statements: behind RDS Proxy a server-side prepared statement pins the
//! client's connection to one database connection until it disconnects, so a fleet of Lambda
//! environments would hold one database connection each and the proxy could share none. The
//! other pinning cause, a `SET` on every new connection, is gone too (times are epoch
//! milliseconds; nothing depends on the session's time zone). `tests/integration/pinning.rs`
//! counts both on the wire.
//!
//! Values are inlined so that no `sql_mode` can change their meaning: numbers as digits, `NULL`,
//! a string without quote, backslash or control characters as `'…'` (which reads the same with
//! and without `NO_BACKSLASH_ESCAPES`), and every other string as a hex literal with the
//! `_utf8mb4` introducer (a character string, compared under the column's collation as a quoted
//! one would be, that no escaping rule touches).

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use mysql_async::prelude::{FromRow, Queryable};
use mysql_async::{Conn, Params, Transaction, TxOpts, Value};
use mysql_common::named_params::ParsedNamedParams;
use ocr_core::PortError;

use crate::mysql::db_error;

/// The longest wait for the database on one step (a connection from the pool, a statement, a
/// transaction's start or commit), in milliseconds: `DB_TIMEOUT_MS`, set once per process by
/// [`set_timeout`]. The driver has no read timeout of its own, so a server that stops answering
/// without closing its connections (stopped, a hung proxy, a half-open link) would otherwise
/// hold a request or a batch forever; past this wait the step fails as retryable instead.
static TIMEOUT_MS: AtomicU64 = AtomicU64::new(DEFAULT_TIMEOUT_MS);

/// `DB_TIMEOUT_MS`'s default: well above any statement here on a healthy server (they are
/// single-row or bounded-batch), well under a Lambda's 10 s for the API's few steps.
pub const DEFAULT_TIMEOUT_MS: u64 = 5_000;

/// Sets the process's database timeout ([`TIMEOUT_MS`]); at least 100 ms.
pub fn set_timeout(timeout: Duration) {
    TIMEOUT_MS.store((timeout.as_millis() as u64).max(100), Ordering::Relaxed);
}

/// The process's database timeout.
pub fn timeout() -> Duration {
    Duration::from_millis(TIMEOUT_MS.load(Ordering::Relaxed))
}

/// `step` within [`timeout`], its error mapped; past it, `Unavailable` (a retry may help).
/// Dropping a statement mid-flight leaves its connection to the pool, which cleans it up or
/// closes it; the step's caller has its answer in bounded time either way.
pub(crate) async fn timed<T>(
    what: &str,
    step: impl Future<Output = Result<T, mysql_async::Error>>,
) -> Result<T, PortError> {
    let limit = timeout();
    match tokio::time::timeout(limit, step).await {
        Ok(result) => result.map_err(db_error),
        Err(_) => Err(PortError::unavailable("mysql", format!("no answer to {what} within {limit:?} (DB_TIMEOUT_MS)"))),
    }
}

/// Starts a transaction on `conn`, within the timeout.
pub(crate) async fn begin(conn: &mut Conn) -> Result<Transaction<'_>, PortError> {
    timed("starting a transaction", conn.start_transaction(TxOpts::default())).await
}

/// Commits `tx`, within the timeout.
pub(crate) async fn commit(tx: Transaction<'_>) -> Result<(), PortError> {
    timed("a commit", tx.commit()).await
}

/// A statement with its values in its text, ready to send.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Statement(String);

/// `template` with `?` (positional) or `:name` (named) placeholders, and its values.
pub(crate) fn bind(template: impl AsRef<str>, params: impl Into<Params>) -> Result<Statement, PortError> {
    let template = template.as_ref();
    let bad = |e: &dyn std::fmt::Display| PortError::permanent("mysql", format!("binding a statement: {e}"));
    let parsed = ParsedNamedParams::parse(template.as_bytes()).map_err(|_| bad(&"mixed ? and :name"))?;
    let names: Vec<Vec<u8>> = parsed.params().iter().map(|n| n.to_vec()).collect();
    let values = params.into().into_values((!names.is_empty()).then_some(&names[..])).map_err(|e| bad(&e))?;
    let positional = std::str::from_utf8(parsed.query()).map_err(|e| bad(&e))?;
    let text = inline(positional, &values).ok_or_else(|| {
        bad(&format!("{} placeholders for {} values in {template:?}", placeholders(positional), values.len()))
    })?;
    Ok(Statement(text))
}

impl Statement {
    #[cfg(test)]
    pub(crate) fn text(&self) -> &str {
        &self.0
    }

    /// Runs it, dropping any result.
    pub(crate) async fn ignore(self, conn: &mut impl Queryable) -> Result<(), PortError> {
        timed("a statement", conn.query_drop(self.0)).await
    }

    /// Its first row, if any.
    pub(crate) async fn first<T>(self, conn: &mut impl Queryable) -> Result<Option<T>, PortError>
    where
        T: FromRow + Send + 'static,
    {
        timed("a query", conn.query_first(self.0)).await
    }

    /// All of its rows.
    pub(crate) async fn fetch<T>(self, conn: &mut impl Queryable) -> Result<Vec<T>, PortError>
    where
        T: FromRow + Send + 'static,
    {
        timed("a query", conn.query(self.0)).await
    }
}

/// `query` with each `?` outside quotes and comments-free SQL replaced by the next value, or
/// `None` when the counts differ.
fn inline(query: &str, values: &[Value]) -> Option<String> {
    let mut out = String::with_capacity(query.len() + values.len() * 8);
    let mut values = values.iter();
    let mut quote: Option<char> = None;
    for c in query.chars() {
        match (quote, c) {
            (None, '?') => out.push_str(&literal(values.next()?)),
            (None, '\'' | '"' | '`') => {
                quote = Some(c);
                out.push(c);
            }
            (Some(q), c) if c == q => {
                quote = None;
                out.push(c);
            }
            _ => out.push(c),
        }
    }
    values.next().is_none().then_some(out)
}

fn placeholders(query: &str) -> usize {
    query.matches('?').count()
}

/// One value as SQL that means the same under every `sql_mode`.
fn literal(value: &Value) -> String {
    const SPECIAL: [char; 7] = ['\0', '\n', '\r', '\\', '\'', '"', '\x1a'];
    match value {
        Value::Bytes(bytes) if bytes.is_empty() => "''".to_owned(),
        Value::Bytes(bytes) => match std::str::from_utf8(bytes) {
            Ok(s) if !s.contains(SPECIAL) => format!("'{s}'"),
            Ok(_) => format!("_utf8mb4 X'{}'", hex_upper(bytes)),
            Err(_) => format!("X'{}'", hex_upper(bytes)),
        },
        // NULL, integers, floats, dates: digits and fixed punctuation only.
        other => other.as_sql(false),
    }
}

fn hex_upper(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02X}");
        s
    })
}

#[cfg(test)]
mod tests {
    use mysql_async::params;

    use super::*;

    #[test]
    fn positional_and_named_values_are_inlined_in_order() {
        let s = bind("UPDATE t SET a = ?, b = ? WHERE id = ?", vec![Value::from(1), Value::NULL, Value::from("x1")]);
        assert_eq!(s.unwrap().text(), "UPDATE t SET a = 1, b = NULL WHERE id = 'x1'");
        let s = bind("SELECT :b + :a + :b", params! { "a" => 1, "b" => 2 }).unwrap();
        assert_eq!(s.text(), "SELECT 2 + 1 + 2");
        assert!(bind("SELECT ?, ?", vec![Value::from(1)]).is_err(), "too few values");
        assert!(bind("SELECT ?", vec![Value::from(1), Value::from(2)]).is_err(), "too many values");
        assert!(bind("SELECT :a", params! { "b" => 1 }).is_err(), "a name without a value");
    }

    #[test]
    fn strings_that_escaping_could_change_become_hex() {
        let hostile = "x' OR '1'='1 \\' -- ";
        let s = bind("SELECT ?", vec![Value::from(hostile)]).unwrap();
        assert_eq!(s.text(), format!("SELECT _utf8mb4 X'{}'", hex_upper(hostile.as_bytes())));
        let s = bind("SELECT ?, ?", vec![Value::from("ünïcode ok"), Value::from("")]).unwrap();
        assert_eq!(s.text(), "SELECT 'ünïcode ok', ''");
        let json = serde_json::json!({"text": "a\"b\nc"}).to_string();
        assert!(bind("SELECT ?", vec![Value::from(json)]).unwrap().text().starts_with("SELECT _utf8mb4 X'"));
    }

    #[test]
    fn question_marks_inside_quotes_are_left_alone() {
        let s = bind("SELECT '?', `a?`, ?", vec![Value::from(7)]).unwrap();
        assert_eq!(s.text(), "SELECT '?', `a?`, 7");
    }
}
