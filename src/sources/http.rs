//! Bounded HTTP GETs: every request has a timeout over the whole exchange and
//! a response size limit, so a slow, hung or flooding target costs at most
//! that much time and memory.

use std::sync::OnceLock;
use std::time::Duration;

/// The process's one reqwest client (rustls, ring provider), handed out as
/// clones that share its connection pool and TLS setup: a client per target
/// would load the certificate store a thousand times.
pub fn client() -> Result<reqwest::Client, reqwest::Error> {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    if let Some(client) = CLIENT.get() {
        return Ok(client.clone());
    }
    // Installing twice fails harmlessly: the first provider stays.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .user_agent(concat!("rollwatch/", env!("CARGO_PKG_VERSION")))
        .no_proxy()
        .pool_max_idle_per_host(2)
        .build()?;
    Ok(CLIENT.get_or_init(|| client).clone())
}

/// `(host, port)` of a URL, to tell whether two URLs share a connection.
pub fn authority(url: &str) -> Option<(String, u16)> {
    let url = reqwest::Url::parse(url).ok()?;
    Some((url.host_str()?.to_string(), url.port_or_known_default()?))
}

#[derive(Clone, Debug)]
pub struct Fetched {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: String,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("connection failed: {0}")]
    Connect(String),
    #[error("response larger than {0} bytes")]
    TooLarge(u64),
    #[error("{0}")]
    Other(String),
}

impl FetchError {
    /// The target itself did not answer (refused or timed out), as opposed to
    /// answering badly.
    pub fn target_unreachable(&self) -> bool {
        matches!(self, FetchError::Timeout(_) | FetchError::Connect(_))
    }
}

/// GETs `url` for its status alone: the body is never read (a health endpoint
/// may answer 200 with a large or binary page).
pub async fn status(
    client: &reqwest::Client,
    url: impl reqwest::IntoUrl,
    timeout: Duration,
) -> Result<u16, FetchError> {
    let request = async {
        let response = client.get(url).send().await.map_err(|e| {
            if e.is_connect() {
                FetchError::Connect(error_chain(&e))
            } else {
                FetchError::Other(error_chain(&e))
            }
        })?;
        Ok(response.status().as_u16())
    };
    match tokio::time::timeout(timeout, request).await {
        Ok(result) => result,
        Err(_) => Err(FetchError::Timeout(timeout)),
    }
}

/// GETs `url`, reading at most `max_bytes` of body, all within `timeout`.
pub async fn get(
    client: &reqwest::Client,
    url: impl reqwest::IntoUrl,
    timeout: Duration,
    max_bytes: u64,
) -> Result<Fetched, FetchError> {
    match tokio::time::timeout(timeout, get_unbounded_time(client, url, max_bytes)).await {
        Ok(result) => result,
        Err(_) => Err(FetchError::Timeout(timeout)),
    }
}

async fn get_unbounded_time(
    client: &reqwest::Client,
    url: impl reqwest::IntoUrl,
    max_bytes: u64,
) -> Result<Fetched, FetchError> {
    let mut response = client.get(url).send().await.map_err(|e| {
        if e.is_connect() {
            FetchError::Connect(error_chain(&e))
        } else if e.is_timeout() {
            FetchError::Timeout(Duration::ZERO)
        } else {
            FetchError::Other(error_chain(&e))
        }
    })?;
    if response.content_length().is_some_and(|len| len > max_bytes) {
        return Err(FetchError::TooLarge(max_bytes));
    }
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut body: Vec<u8> = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| FetchError::Other(format!("reading the body: {}", error_chain(&e))))?
    {
        if body.len() as u64 + chunk.len() as u64 > max_bytes {
            return Err(FetchError::TooLarge(max_bytes));
        }
        body.extend_from_slice(&chunk);
    }
    let body = String::from_utf8(body)
        .map_err(|_| FetchError::Other("the body is not UTF-8 text".into()))?;
    Ok(Fetched {
        status,
        content_type,
        body,
    })
}

/// "error sending request: connection refused" rather than the outermost layer only.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
