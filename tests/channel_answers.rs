//! A webhook or Alertmanager that answers with a body that does not end
//! (issue 13: "webhook and Alertmanager responses are read without a size
//! limit"): rollwatch reads at most `MAX_ANSWER_BODY` of it, neither hangs
//! nor holds more, and says what happened. A real HTTP server on port 0.

use std::time::Duration;

use chrono::Utc;
use rollwatch::notify::channels::{MAX_ANSWER_BODY, SendError, post_alert, send};
use rollwatch::notify::message::Details;
use rollwatch::policy::notify::{Channel, ChannelKind};
use rollwatch::store::{NotificationKind, NotificationRecord, NotificationState};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// What the flooding server sends at most: far more than anyone should read.
const FLOOD: u64 = 256 * 1024 * 1024;

/// Long enough that only a hang trips it.
const GUARD: Duration = Duration::from_secs(60);

/// A server that answers one request with `status` and a chunked body of
/// `FLOOD` bytes; its task ends with how many body bytes it got to send
/// before the client hung up.
async fn flooding_server(status: &'static str) -> (String, JoinHandle<u64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        read_request(&mut stream).await;
        let head = format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let chunk = vec![b'x'; 64 * 1024];
        let framed = [format!("{:x}\r\n", chunk.len()).as_bytes(), &chunk, b"\r\n"].concat();
        let mut sent = 0u64;
        while sent < FLOOD {
            if stream.write_all(&framed).await.is_err() {
                return sent;
            }
            sent += chunk.len() as u64;
        }
        let _ = stream.write_all(b"0\r\n\r\n").await;
        sent
    });
    (url, task)
}

/// Reads a request's head and its `Content-Length` body.
async fn read_request(stream: &mut tokio::net::TcpStream) {
    let mut got = Vec::new();
    let mut buffer = [0u8; 8192];
    loop {
        let n = stream.read(&mut buffer).await.unwrap();
        assert!(n > 0, "the client hung up before its request ended");
        got.extend_from_slice(&buffer[..n]);
        let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&got[..end]).to_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse().unwrap());
        if got.len() >= end + 4 + length {
            return;
        }
    }
}

fn webhook(url: &str) -> Channel {
    Channel {
        name: "hook".into(),
        kind: ChannelKind::Webhook {
            url: format!("{url}/hook").into(),
        },
        timeout: Duration::from_secs(30),
        deadline: Duration::from_secs(3600),
    }
}

fn notification() -> NotificationRecord {
    NotificationRecord {
        id: 1,
        incident: Some(1),
        kind: NotificationKind::Page,
        channel: "hook".into(),
        recipients: vec![],
        subject: "PAGE production web".into(),
        body: "error rate above 5%".into(),
        dedupe_key: "page-1".into(),
        state: NotificationState::Pending,
        attempts: 0,
        next_attempt_at: Utc::now(),
        last_error: None,
        created_at: Utc::now(),
        sent_at: None,
        target: "web/production".into(),
        details: serde_json::json!({}),
    }
}

/// The server stopped being read long before it finished: rollwatch held
/// at most the bound plus what the sockets' buffers took in.
async fn assert_cut_off(server: JoinHandle<u64>) {
    let sent = tokio::time::timeout(GUARD, server)
        .await
        .expect("the server is still being read")
        .unwrap();
    assert!(sent < FLOOD / 8, "read {sent} bytes of the answer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_answering_500_with_an_endless_body_is_a_retry_that_says_so() {
    let (url, server) = flooding_server("500 Internal Server Error").await;
    let result = tokio::time::timeout(GUARD, send(&webhook(&url), &notification(), None))
        .await
        .expect("rollwatch hangs on the answer's body");
    let error = result.expect_err("a 500 is not delivered");
    assert!(matches!(error, SendError::Transient(_)), "{error:?}");
    let text = error.to_string();
    assert!(text.starts_with("the webhook answered 500: xxx"), "{text}");
    assert!(
        text.ends_with(&format!(
            "… (a body of more than {} KiB, not read further)",
            MAX_ANSWER_BODY / 1024
        )),
        "{text}"
    );
    assert!(text.len() < 1024, "{} bytes of error", text.len());
    assert_cut_off(server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alertmanager_answering_200_with_an_endless_body_has_the_alert() {
    let (url, server) = flooding_server("200 OK").await;
    let posted = tokio::time::timeout(
        GUARD,
        post_alert(
            &url,
            Duration::from_secs(30),
            &Details::default(),
            Utc::now(),
        ),
    )
    .await
    .expect("rollwatch hangs on the answer's body");
    assert_eq!(posted, Ok(()));
    assert_cut_off(server).await;
}
