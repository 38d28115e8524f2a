//! A TCP proxy in front of MySQL that reads what clients send, the way RDS Proxy does, and
//! counts the commands that would pin a client to one database connection there: server-side
//! prepared statements (COM_STMT_PREPARE) and statements that change session state (`SET …`,
//! named locks).

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What clients sent through a [`CommandCounter`].
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Commands {
    /// COM_QUERY: statements sent as text.
    pub queries: usize,
    /// COM_STMT_PREPARE: server-side prepared statements.
    pub prepares: usize,
    /// Text statements that change session state: `SET …` (and `/*…*/ SET`).
    pub sets: Vec<String>,
    /// Text statements taking a named lock (`GET_LOCK`): they pin the connection too.
    pub locks: usize,
    /// Connections opened.
    pub connections: usize,
}

pub struct CommandCounter {
    pub port: u16,
    seen: Arc<Mutex<Commands>>,
}

impl CommandCounter {
    /// Proxies 127.0.0.1:<port> to `target` (`host:port`) until the test ends.
    pub async fn start(target: &str) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let seen: Arc<Mutex<Commands>> = Arc::default();
        let (target, counts) = (target.to_owned(), seen.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(&target).await else { continue };
                counts.lock().unwrap().connections += 1;
                tokio::spawn(relay(client, server, counts.clone()));
            }
        });
        Ok(CommandCounter { port, seen })
    }

    pub fn commands(&self) -> Commands {
        self.seen.lock().unwrap().clone()
    }
}

/// Copies both ways; the client's side is also read packet by packet (3-byte length, sequence
/// number, payload). A command is a packet with sequence 0; its first byte says which.
async fn relay(client: TcpStream, server: TcpStream, seen: Arc<Mutex<Commands>>) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let down = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
    });
    let mut header = [0u8; 4];
    while client_read.read_exact(&mut header).await.is_ok() {
        let len = usize::from(header[0]) | usize::from(header[1]) << 8 | usize::from(header[2]) << 16;
        let mut payload = vec![0u8; len];
        if client_read.read_exact(&mut payload).await.is_err() {
            break;
        }
        if header[3] == 0 && !payload.is_empty() {
            count(&payload, &seen);
        }
        if server_write.write_all(&header).await.is_err() || server_write.write_all(&payload).await.is_err() {
            break;
        }
    }
    let _ = server_write.shutdown().await;
    down.abort();
}

fn count(payload: &[u8], seen: &Mutex<Commands>) {
    const COM_QUERY: u8 = 0x03;
    const COM_STMT_PREPARE: u8 = 0x16;
    let mut seen = seen.lock().unwrap();
    match payload[0] {
        COM_STMT_PREPARE => seen.prepares += 1,
        COM_QUERY => {
            seen.queries += 1;
            let sql = String::from_utf8_lossy(&payload[1..]);
            let statement = strip_comments(&sql).trim_start().to_ascii_uppercase();
            if statement.starts_with("SET ") || statement.starts_with("SET\n") {
                seen.sets.push(sql.chars().take(120).collect());
            }
            if statement.contains("GET_LOCK(") {
                seen.locks += 1;
            }
        }
        _ => {}
    }
}

/// The statement without leading `/* … */` comments.
fn strip_comments(sql: &str) -> &str {
    let mut rest = sql.trim_start();
    while let Some(after) = rest.strip_prefix("/*") {
        rest = after.split_once("*/").map_or("", |(_, r)| r).trim_start();
    }
    rest
}
