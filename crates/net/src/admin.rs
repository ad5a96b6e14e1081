//! The admin socket: a Unix socket under the data directory through which `canto user del`
//! asks the running server to delete an account, so that online sessions are closed and
//! contacts' rosters (cached by the server) are updated and pushed. One request per
//! connection, one line each way: `user-del JID` → `ok` / `error: …`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use canto_core::Server;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tracing::{info, warn};

/// Longest request line accepted.
const MAX_LINE: usize = 4096;

/// Binds the socket (replacing a stale one) with owner-only permissions.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if path.exists() {
        // A socket left by a server that did not exit cleanly; a live server would have
        // answered `canto serve`'s own listen attempt on the c2s ports first.
        std::fs::remove_file(path)?;
    }
    let l = UnixListener::bind(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(l)
}

/// Serves requests until shutdown, then removes the socket file.
pub async fn serve(
    server: Arc<Server>,
    listener: UnixListener,
    path: PathBuf,
    mut stop: watch::Receiver<bool>,
) {
    info!(path = %path.display(), "admin socket ready");
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((conn, _)) => {
                    let server = server.clone();
                    tokio::spawn(async move {
                        if let Err(e) = handle(server, conn).await {
                            warn!(error = %e, "admin request failed");
                        }
                    });
                }
                Err(e) => {
                    warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
            _ = stop.changed() => break,
        }
    }
    let _ = std::fs::remove_file(&path);
}

async fn handle(server: Arc<Server>, conn: UnixStream) -> std::io::Result<()> {
    let (r, mut w) = conn.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(r).take(MAX_LINE as u64);
    reader.read_line(&mut line).await?;
    let answer = answer(&server, line.trim()).await;
    w.write_all(answer.as_bytes()).await?;
    w.write_all(b"\n").await
}

/// Carries out one request line.
pub async fn answer(server: &Arc<Server>, line: &str) -> String {
    let Some(jid) = line.strip_prefix("user-del ") else {
        return format!("error: unknown request {line:?}");
    };
    let bare = match canto_stanza::BareJid::new(jid.trim()) {
        Ok(b) if b.node().is_some() => b,
        _ => return format!("error: {jid:?} is not user@host"),
    };
    match server.delete_account(&bare).await {
        Ok(true) => "ok".into(),
        Ok(false) => format!("error: {bare} does not exist"),
        Err(e) => format!("error: {e}"),
    }
}

/// Client side: sends one request; `None` if no server listens on `path`.
pub async fn request(path: &Path, line: &str) -> Option<std::io::Result<String>> {
    let mut conn = UnixStream::connect(path).await.ok()?;
    let r = async {
        conn.write_all(line.as_bytes()).await?;
        conn.write_all(b"\n").await?;
        let mut out = String::new();
        BufReader::new(conn)
            .take(MAX_LINE as u64)
            .read_line(&mut out)
            .await?;
        Ok(out.trim().to_string())
    }
    .await;
    Some(r)
}
