//! The API's accept loop: serves `app()` over HTTP/1.1 with limits a slow or
//! flooding client cannot get around, so that it cannot blind rollwatch (its
//! liveness probe, its metrics) or use up its file descriptors. A request's
//! head must arrive within a header-read timeout; a connection on which no
//! byte moves for an idle timeout is closed; open connections are capped in
//! total and per client address. Over a cap a connection is answered 503
//! with `Retry-After` and `Connection: close` rather than queued, except for
//! `/healthz`, which is answered: a liveness probe that fails because
//! someone floods the port would restart rollwatch in the middle of a
//! rollback. The refusals are capped too (beyond, a connection is closed at
//! once) and counted in `/metrics` (`rollwatch_http_connections_refused_total`).
//!
//! Architecture Invariant: nothing here waits on a client without a bound.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderValue, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::telemetry::{RefusedLabels, Telemetry};

/// How much the API lets its clients hold.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// A request's head must arrive whole within this. hyper starts the
    /// timer as soon as a connection waits for a request, so it also bounds
    /// how long a kept-alive connection sits between two requests.
    pub header_read_timeout: Duration,
    /// A connection on which no byte moves either way for this long is
    /// closed: a request body that stops half-way, a client that stops
    /// reading its answer.
    pub idle_timeout: Duration,
    /// Connections served at once, from everyone.
    pub max_connections: usize,
    /// Connections served at once from one client address.
    pub max_per_client: usize,
    /// Connections over a cap being answered (503, or `/healthz`) at once;
    /// beyond, a connection over a cap is closed without an answer.
    pub max_refusals: usize,
    /// The `Retry-After` of a 503.
    pub retry_after: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            header_read_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            max_connections: 256,
            max_per_client: 32,
            max_refusals: 64,
            retry_after: Duration::from_secs(5),
        }
    }
}

/// hyper's buffer per connection (the request head must fit): 256
/// connections hold at most a few tens of MiB, whatever their clients send.
const MAX_BUFFER: usize = 64 * 1024;

/// Serves `app` on `listener` within `limits` until `shutdown`; then stops
/// accepting, lets each connection finish the request it is on, and returns
/// once all are closed.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    telemetry: Arc<Telemetry>,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Slots::new(limits, telemetry));
    let refusals = Arc::new(Semaphore::new(limits.max_refusals));
    let connections = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                accept_failed(error, &shutdown).await;
                continue;
            }
        };
        let shutdown = shutdown.clone();
        match Slots::take(&slots, peer.ip()) {
            Ok(slot) => {
                let service = TowerToHyperService::new(app.clone());
                connections.spawn(async move {
                    drive(stream, service, &limits, true, &shutdown).await;
                    drop(slot);
                });
            }
            Err(limit) => {
                slots.refused(limit, peer.ip());
                // Without a permit the stream is dropped here: closed unanswered.
                if let Ok(permit) = Arc::clone(&refusals).try_acquire_owned() {
                    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                        refusal(request, limits.retry_after)
                    });
                    connections.spawn(async move {
                        drive(stream, service, &limits, false, &shutdown).await;
                        drop(permit);
                    });
                }
            }
        }
    }
    connections.close();
    connections.wait().await;
}

/// A failed accept: a connection reset before it was accepted is nothing;
/// anything else (out of file descriptors) is logged, and accepting resumes
/// a second later rather than spinning.
async fn accept_failed(error: std::io::Error, shutdown: &CancellationToken) {
    use std::io::ErrorKind;
    if matches!(
        error.kind(),
        ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset | ErrorKind::ConnectionRefused
    ) {
        return;
    }
    tracing::error!(error = %error, "API: cannot accept a connection; trying again in 1s");
    tokio::select! {
        () = shutdown.cancelled() => {}
        () = tokio::time::sleep(Duration::from_secs(1)) => {}
    }
}

/// The answer on a connection over a cap: `/healthz` as always, anything
/// else 503.
async fn refusal(
    request: Request<Incoming>,
    retry_after: Duration,
) -> Result<Response, Infallible> {
    if request.uri().path() == "/healthz" {
        return Ok(super::healthz().await.into_response());
    }
    let seconds = retry_after.as_secs().max(1);
    let mut response = super::error(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("too many connections to rollwatch's API; try again in {seconds}s"),
    )
    .into_response();
    let headers = response.headers_mut();
    headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    Ok(response)
}

/// Runs one connection to its end, its idle timeout, or (after `shutdown`)
/// the end of the request it is on.
async fn drive<S, B>(
    stream: TcpStream,
    service: S,
    limits: &Limits,
    keep_alive: bool,
    shutdown: &CancellationToken,
) where
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched {
        inner: stream,
        activity: Arc::clone(&activity),
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(MAX_BUFFER)
        .keep_alive(keep_alive);
    let mut connection = pin!(builder.serve_connection(io, service));
    let mut idle = pin!(activity.idle_for(limits.idle_timeout));
    let mut draining = false;
    loop {
        tokio::select! {
            ended = connection.as_mut() => {
                if let Err(error) = ended {
                    tracing::debug!(error = %error, "API: a connection ended with an error");
                }
                return;
            }
            () = &mut idle => {
                tracing::debug!(
                    idle_s = limits.idle_timeout.as_secs_f64(),
                    "API: closing a connection on which nothing moved"
                );
                return;
            }
            () = shutdown.cancelled(), if !draining => {
                connection.as_mut().graceful_shutdown();
                draining = true;
            }
        }
    }
}

/// Open connections, in total and per client address.
struct Slots {
    limits: Limits,
    telemetry: Arc<Telemetry>,
    open: Mutex<Open>,
    /// When a refusal was last logged (seconds since `started`): a flood
    /// is logged once in a while, counted always.
    last_warned: AtomicU64,
    started: Instant,
}

#[derive(Default)]
struct Open {
    total: usize,
    per_client: HashMap<IpAddr, usize>,
}

#[derive(Clone, Copy, Debug)]
enum Limit {
    Total,
    PerClient,
}

impl Limit {
    fn label(self) -> &'static str {
        match self {
            Limit::Total => "total",
            Limit::PerClient => "per_client",
        }
    }
}

/// A connection's place among the open ones, given back when dropped.
struct Slot {
    slots: Arc<Slots>,
    client: IpAddr,
}

const REFUSAL_LOG_INTERVAL_S: u64 = 10;

impl Slots {
    fn new(limits: Limits, telemetry: Arc<Telemetry>) -> Slots {
        Slots {
            limits,
            telemetry,
            open: Mutex::default(),
            last_warned: AtomicU64::new(0),
            started: Instant::now(),
        }
    }

    fn take(slots: &Arc<Slots>, client: IpAddr) -> Result<Slot, Limit> {
        // An IPv4 client on an IPv6 socket is the same client as on IPv4.
        let client = client.to_canonical();
        let mut open = slots.open.lock().unwrap_or_else(|e| e.into_inner());
        if open.total >= slots.limits.max_connections {
            return Err(Limit::Total);
        }
        let of_client = open.per_client.entry(client).or_default();
        if *of_client >= slots.limits.max_per_client {
            return Err(Limit::PerClient);
        }
        *of_client += 1;
        open.total += 1;
        slots.telemetry.http_connections_open.inc();
        Ok(Slot {
            slots: Arc::clone(slots),
            client,
        })
    }

    fn refused(&self, limit: Limit, client: IpAddr) {
        self.telemetry
            .http_connections_refused
            .get_or_create(&RefusedLabels {
                limit: limit.label().to_string(),
            })
            .inc();
        let now = self.started.elapsed().as_secs() + REFUSAL_LOG_INTERVAL_S;
        let last = self.last_warned.load(Ordering::Relaxed);
        if now >= last + REFUSAL_LOG_INTERVAL_S
            && self
                .last_warned
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                limit = limit.label(),
                client = %client,
                max_connections = self.limits.max_connections,
                max_per_client = self.limits.max_per_client,
                "API: refusing connections over a cap (counted in rollwatch_http_connections_refused_total)"
            );
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().unwrap_or_else(|e| e.into_inner());
        open.total = open.total.saturating_sub(1);
        if let Some(of_client) = open.per_client.get_mut(&self.client) {
            *of_client -= 1;
            if *of_client == 0 {
                open.per_client.remove(&self.client);
            }
        }
        self.slots.telemetry.http_connections_open.dec();
    }
}

/// When a byte last moved on a connection.
struct Activity {
    started: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            started: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Returns once nothing has moved for `timeout`.
    async fn idle_for(&self, timeout: Duration) {
        loop {
            let last = self.started + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = last + timeout;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// A stream that records when bytes move on it.
struct Watched {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(written)) if written > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(written)) if written > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
