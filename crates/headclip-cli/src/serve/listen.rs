//! The accept loop: HTTP/1 connections with a header-read timeout, at most `--max-connections`
//! of them open at once, and a shutdown that answers the requests being handled but does not
//! wait for clients that never finish one.
//!
//! `axum::serve` has neither a header timeout nor a connection limit, so connections are served
//! here with hyper's own HTTP/1 builder and a tokio timer.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use axum::Router;
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tower::ServiceExt as _;

/// How connections are accepted and let go.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections open at once; the next ones wait in the kernel's accept backlog.
    pub max_connections: usize,
    /// Time a client has to send a request's whole head, the first one and each one after it on
    /// a kept-alive connection.
    pub header_timeout: Duration,
    /// Time the requests being handled at shutdown have to finish.
    pub shutdown_grace: Duration,
}

/// How long to wait before accepting again after `accept` failed (out of file descriptors, or
/// a connection reset before it was accepted).
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// Serves `router` on `listener` until `shutdown` resolves, then lets the connections go (see
/// [`serve_connection`]) and returns once every one is closed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let places = Arc::new(Semaphore::new(limits.max_connections));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let http = Arc::new(http);
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = accept_within_limit(&listener, &places) => accepted,
        };
        let Some((stream, place)) = accepted else {
            continue;
        };
        tokio::spawn(serve_connection(
            stream,
            router.clone(),
            http.clone(),
            stop_rx.clone(),
            limits.shutdown_grace,
            place,
        ));
    }
    drop(listener);
    let _ = stop_tx.send(true);
    // Every place back means every connection closed.
    let all = u32::try_from(limits.max_connections)?;
    let _ = places.acquire_many(all).await?;
    Ok(())
}

/// Waits for a free place, then for a connection; `None` when accepting failed.
async fn accept_within_limit(
    listener: &TcpListener,
    places: &Arc<Semaphore>,
) -> Option<(TcpStream, OwnedSemaphorePermit)> {
    // The place first: over the limit, clients wait in the backlog and cost no descriptor.
    let place = places.clone().acquire_owned().await.ok()?;
    match listener.accept().await {
        Ok((stream, _)) => Some((stream, place)),
        Err(e) => {
            tracing::warn!("accepting a connection failed: {e}");
            tokio::time::sleep(ACCEPT_RETRY).await;
            None
        }
    }
}

/// Serves one connection until it closes. At shutdown a connection with no request being handled
/// is closed at once (idle keep-alive, a head still arriving, a client that never sent a byte);
/// one with a request gets keep-alive turned off and up to `grace` to answer it.
async fn serve_connection(
    stream: TcpStream,
    router: Router,
    http: Arc<http1::Builder>,
    stop: watch::Receiver<bool>,
    grace: Duration,
    _place: OwnedSemaphorePermit,
) {
    let busy = Arc::new(AtomicUsize::new(0));
    let service = {
        let busy = busy.clone();
        hyper::service::service_fn(move |req: Request<Incoming>| {
            handle(router.clone(), req, RequestGuard::enter(&busy))
        })
    };
    let conn = http.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => log_connection_end(result),
        () = stopping(stop) => {
            if busy.load(Ordering::SeqCst) == 0 {
                return;
            }
            conn.as_mut().graceful_shutdown();
            if tokio::time::timeout(grace, conn).await.is_err() {
                tracing::warn!("a request in flight was cut off at the end of the shutdown grace period");
            }
        }
    }
}

async fn stopping(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|&stopping| stopping).await;
}

fn log_connection_end(result: Result<(), hyper::Error>) {
    match result {
        Err(e) if e.is_timeout() => tracing::debug!("closed a connection: {e}"),
        Err(e) => tracing::debug!("connection ended with an error: {e}"),
        Ok(()) => {}
    }
}

/// Runs the router; the guard lives until the response body has been written (or dropped).
async fn handle(
    router: Router,
    req: Request<Incoming>,
    guard: RequestGuard,
) -> Result<Response, Infallible> {
    let response = router.oneshot(req.map(Body::new)).await?;
    // Moved into the body's frame mapper, so that it is dropped with the body.
    Ok(response.map(|body| {
        Body::new(body.map_frame(move |frame| {
            let _ = &guard;
            frame
        }))
    }))
}

/// Counts a request as being handled on its connection while alive.
struct RequestGuard(Arc<AtomicUsize>);

impl RequestGuard {
    fn enter(busy: &Arc<AtomicUsize>) -> Self {
        busy.fetch_add(1, Ordering::SeqCst);
        Self(busy.clone())
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The soft limit on this process's open files (`ulimit -n`), if it can be read.
pub fn open_file_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    (rc == 0 && limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
}

/// Descriptors kept for everything but client connections: the listener, standard streams, the
/// runtime's event queue, files the model or libtorch opens.
pub const RESERVED_FILES: u64 = 64;

/// Above this, the default limit stops following the file limit: each connection may buffer
/// up to hyper's ~400 KiB while its head arrives, so 4096 of them can hold ~1.6 GiB.
const DEFAULT_CONNECTIONS_CAP: u64 = 4096;

/// `--max-connections` when not given: the file limit less [`RESERVED_FILES`], at most
/// [`DEFAULT_CONNECTIONS_CAP`].
pub fn default_max_connections() -> usize {
    let from_files = open_file_limit()
        .map_or(DEFAULT_CONNECTIONS_CAP, |n| {
            n.saturating_sub(RESERVED_FILES)
        })
        .clamp(1, DEFAULT_CONNECTIONS_CAP);
    from_files as usize
}
