//! Connections: the accept loop with a cap on open connections, HTTP/1.1 with a timer
//! (header-read timeout, which is also the keep-alive idle timeout), WebSocket upgrades,
//! and a graceful close of every connection on shutdown.
//!
//! `axum::serve` runs hyper without a timer, so a client that never finishes its headers,
//! or an idle keep-alive connection, holds a descriptor forever: enough of them and the
//! process cannot accept `/health`. Here every connection has a deadline for its headers,
//! and the number of connections stays below the descriptor limit.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::metrics as m;

/// Connection limits (from [`crate::ServerConfig`]).
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
}

/// Descriptors kept free for everything but client connections (model files, logs,
/// outgoing URL fetches, the blocking pool).
const RESERVED_DESCRIPTORS: u64 = 64;

/// `wanted`, lowered so that connections can never exhaust the process's descriptors.
pub fn fit_to_descriptor_limit(wanted: usize) -> usize {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `getrlimit` writes one `rlimit` through a valid, exclusively borrowed pointer.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    if !ok || limit.rlim_cur == libc::RLIM_INFINITY {
        return wanted;
    }
    let usable = limit.rlim_cur.saturating_sub(RESERVED_DESCRIPTORS).max(4);
    wanted.min(usize::try_from(usable).unwrap_or(usize::MAX))
}

/// Serves `app` on `listener` until `shutdown` resolves; then stops accepting, asks every
/// connection to close once its current request is answered (idle ones close at once) and
/// returns when all are closed.
pub async fn serve(listener: TcpListener, app: Router, limits: ConnectionLimits, shutdown: impl Future<Output = ()>) {
    let max = limits.max_connections.clamp(1, u32::MAX as usize);
    let slots = Arc::new(Semaphore::new(max));
    let (close_tx, close_rx) = watch::channel(false);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout).keep_alive(true);
    tokio::pin!(shutdown);
    loop {
        // At the cap, wait for a connection to close: new ones wait in the listen backlog.
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = &mut shutdown => break,
        };
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors or a connection reset before accept: wait a little
                    // rather than spin.
                    tracing::debug!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let conn = http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone())).with_upgrades();
        let mut close = close_rx.clone();
        metrics::gauge!(m::CONNECTIONS).increment(1.0);
        tokio::spawn(async move {
            let _permit = permit;
            tokio::pin!(conn);
            let closing = async move {
                let _ = close.wait_for(|c| *c).await;
            };
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = closing => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
            metrics::gauge!(m::CONNECTIONS).decrement(1.0);
        });
    }
    drop(listener);
    close_tx.send_replace(true);
    // Every connection holds a slot until it ends.
    let _ = slots.acquire_many(max as u32).await;
}
