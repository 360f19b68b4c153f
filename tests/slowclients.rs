//! The API against clients that hold its connections (issue 13, "slow clients
//! are never dropped"): half requests that stall, kept-alive connections
//! that idle, bodies that stop, and more connections than it serves. Real
//! sockets on port 0; clients come from other loopback addresses
//! (127.0.0.2, ...) to stand for other hosts.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rollwatch::server::listen::{Limits, serve};
use rollwatch::server::{Api, app};
use rollwatch::telemetry::Telemetry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;

/// How long a test waits for the server to close a connection before it
/// fails: far beyond the limits under test, so only a hang trips it.
const GUARD: Duration = Duration::from_secs(30);

/// The start of a request whose head never ends.
const HALF_REQUEST: &[u8] = b"GET /api/v1/status HTTP/1.1\r\nHost: rollwatch\r\nAccept: */*\r\n";

/// Limits under which a test's stalled clients stay until it ends.
fn patient() -> Limits {
    Limits {
        header_read_timeout: Duration::from_secs(600),
        idle_timeout: Duration::from_secs(600),
        max_connections: 1000,
        max_per_client: 1000,
        max_refusals: 1000,
        retry_after: Duration::from_secs(7),
    }
}

struct Server {
    address: SocketAddr,
    _shutdown: tokio_util::sync::DropGuard,
}

async fn start(limits: Limits) -> Server {
    let telemetry = Telemetry::new();
    let api = Api {
        telemetry: Arc::clone(&telemetry),
        status: Default::default(),
        store: None,
        inputs: Default::default(),
        token: None,
        reads_need_token: false,
        readiness: Default::default(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    tokio::spawn(serve(
        listener,
        app(api),
        limits,
        telemetry,
        shutdown.clone(),
    ));
    Server {
        address,
        _shutdown: shutdown.drop_guard(),
    }
}

/// A connection from the loopback address `127.0.0.{host}`.
async fn connect_from(host: u8, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::from(([127, 0, 0, host], 0)))
        .unwrap();
    socket.connect(to).await.unwrap()
}

/// Connections from `127.0.0.{host}` that each send half a request and stall.
async fn stallers(host: u8, count: usize, to: SocketAddr) -> Vec<TcpStream> {
    let mut streams = Vec::with_capacity(count);
    for _ in 0..count {
        let mut stream = connect_from(host, to).await;
        stream.write_all(HALF_REQUEST).await.unwrap();
        streams.push(stream);
    }
    streams
}

/// What the server sent until it closed the connection; fails the test if
/// it never does.
async fn read_until_closed(stream: &mut TcpStream) -> String {
    let read = async {
        let mut got = Vec::new();
        let mut buffer = [0u8; 4096];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return got,
                Ok(n) => got.extend_from_slice(&buffer[..n]),
            }
        }
    };
    let got = tokio::time::timeout(GUARD, read)
        .await
        .expect("the server never closed the connection");
    String::from_utf8_lossy(&got).into_owned()
}

/// `GET path` from `127.0.0.{host}` on a connection of its own: the whole answer.
async fn get(host: u8, to: SocketAddr, path: &str) -> String {
    let mut stream = connect_from(host, to).await;
    let request = format!("GET {path} HTTP/1.1\r\nHost: rollwatch\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    read_until_closed(&mut stream).await
}

fn status_line(answer: &str) -> &str {
    answer.lines().next().unwrap_or_default()
}

fn has_header(answer: &str, name: &str, value: &str) -> bool {
    let head = answer.split("\r\n\r\n").next().unwrap_or_default();
    head.lines().any(|line| {
        line.split_once(':').is_some_and(|(n, v)| {
            n.trim().eq_ignore_ascii_case(name) && v.trim().eq_ignore_ascii_case(value)
        })
    })
}

/// The value of a sample in `/metrics`, 0 when absent.
async fn metric(server: &Server, sample: &str) -> f64 {
    let answer = get(1, server.address, "/metrics").await;
    answer
        .lines()
        .find_map(|line| line.strip_prefix(sample)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_half_requests_that_stall_are_dropped_after_the_header_read_timeout() {
    let server = start(Limits {
        header_read_timeout: Duration::from_secs(1),
        ..patient()
    })
    .await;
    let mut stalled = Vec::new();
    for host in 2..6 {
        stalled.extend(stallers(host, 100, server.address).await);
    }
    // Served meanwhile.
    let answer = get(1, server.address, "/healthz").await;
    assert_eq!(status_line(&answer), "HTTP/1.1 200 OK", "{answer}");
    let closed = stalled.iter_mut().map(read_until_closed);
    let answers = futures_util::future::join_all(closed).await;
    // Closed without an answer to a request that never came.
    assert!(answers.iter().all(|a| !a.contains("200 OK")), "{answers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_per_client_cap_a_client_is_answered_503_and_other_clients_are_served() {
    let server = start(Limits {
        max_per_client: 32,
        ..patient()
    })
    .await;
    // 32 served, 68 over the cap (held by their own stall).
    let _stalled = stallers(2, 100, server.address).await;

    let refused = get(2, server.address, "/api/v1/status").await;
    assert_eq!(
        status_line(&refused),
        "HTTP/1.1 503 Service Unavailable",
        "{refused}"
    );
    assert!(has_header(&refused, "connection", "close"), "{refused}");
    assert!(has_header(&refused, "retry-after", "7"), "{refused}");
    assert!(refused.contains("too many connections"), "{refused}");
    // A liveness probe from the same address is still answered.
    let probe = get(2, server.address, "/healthz").await;
    assert_eq!(status_line(&probe), "HTTP/1.1 200 OK", "{probe}");
    assert!(probe.ends_with("ok\n"), "{probe}");
    // Another client is served as usual.
    let status = get(1, server.address, "/api/v1/status").await;
    assert_eq!(status_line(&status), "HTTP/1.1 200 OK", "{status}");

    let counted = metric(
        &server,
        "rollwatch_http_connections_refused_total{limit=\"per_client\"}",
    )
    .await;
    assert_eq!(counted, 70.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_total_cap_requests_get_503_and_healthz_is_still_answered() {
    let server = start(Limits {
        max_connections: 40,
        max_per_client: 32,
        ..patient()
    })
    .await;
    let _stalled = (
        stallers(2, 32, server.address).await,
        stallers(3, 8, server.address).await,
    );

    let refused = get(4, server.address, "/api/v1/status").await;
    assert_eq!(
        status_line(&refused),
        "HTTP/1.1 503 Service Unavailable",
        "{refused}"
    );
    assert!(has_header(&refused, "connection", "close"), "{refused}");
    assert!(has_header(&refused, "retry-after", "7"), "{refused}");
    let probe = get(4, server.address, "/healthz").await;
    assert_eq!(status_line(&probe), "HTTP/1.1 200 OK", "{probe}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_the_refusals_cap_a_connection_is_closed_at_once() {
    let server = start(Limits {
        max_per_client: 1,
        max_refusals: 1,
        ..patient()
    })
    .await;
    // One served, one held in a refusal.
    let _stalled = stallers(2, 2, server.address).await;
    let dropped = get(2, server.address, "/api/v1/status").await;
    assert_eq!(dropped, "", "closed without an answer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_kept_alive_connection_is_closed_after_the_idle_timeout() {
    let server = start(Limits {
        idle_timeout: Duration::from_secs(1),
        ..patient()
    })
    .await;
    let mut stream = connect_from(2, server.address).await;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: rollwatch\r\n\r\n")
        .await
        .unwrap();
    let answer = read_until_closed(&mut stream).await;
    assert_eq!(status_line(&answer), "HTTP/1.1 200 OK", "{answer}");
    assert!(
        !has_header(&answer, "connection", "close"),
        "kept alive: {answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_that_stops_half_way_is_closed_after_the_idle_timeout() {
    let server = start(Limits {
        idle_timeout: Duration::from_secs(1),
        ..patient()
    })
    .await;
    let mut stream = connect_from(2, server.address).await;
    stream
        .write_all(
            b"POST /api/v1/declare HTTP/1.1\r\nHost: rollwatch\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"tier\": ",
        )
        .await
        .unwrap();
    read_until_closed(&mut stream).await;
}
