//! Values that can hold a credential, by type: a webhook URL whose path is
//! its token, a database URL with a password in its user part or its query.
//! Their `Display`, `Debug` and `Serialize` show only what identifies them
//! (scheme, host and port, the first path segment); the whole value comes
//! out through `expose`, for the one place that connects with it.

use std::fmt;

/// `url` as it may be shown: scheme, host and port, the first path segment;
/// a password in the user part becomes `***`, a longer path `/…`, a query
/// `?…` and a fragment is dropped. A SQLite location (a path, or
/// `sqlite:PATH`) holds no secret and is kept whole; so is text that is not
/// a URL.
pub fn redact_url(url: &str) -> String {
    if url.starts_with("sqlite:") {
        return url.to_string();
    }
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let (scheme, rest) = (&url[..scheme_end], &url[scheme_end + 3..]);
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let host = match authority.rfind('@') {
        Some(at) => {
            let user = &authority[..at];
            let name = user.split(':').next().unwrap_or_default();
            if user.contains(':') {
                format!("{name}:***@{}", &authority[at + 1..])
            } else {
                format!("{name}@{}", &authority[at + 1..])
            }
        }
        None => authority.to_string(),
    };
    let path_end = tail.find(['?', '#']).unwrap_or(tail.len());
    let (path, after) = tail.split_at(path_end);
    let mut segments = path.split('/').filter(|s| !s.is_empty());
    let mut shown = match segments.next() {
        Some(first) => format!("/{first}"),
        None => String::new(),
    };
    if segments.next().is_some() {
        shown.push_str("/…");
    }
    if after.starts_with('?') {
        shown.push_str("?…");
    }
    format!("{scheme}://{host}{shown}")
}

/// A URL that may carry a credential (a Slack webhook's path, a token in
/// its query, a password in its user part).
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(String);

impl SecretUrl {
    pub fn new(url: impl Into<String>) -> SecretUrl {
        SecretUrl(url.into())
    }

    /// The whole URL, credentials included: only to connect with.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for SecretUrl {
    fn from(url: String) -> SecretUrl {
        SecretUrl(url)
    }
}

impl From<&str> for SecretUrl {
    fn from(url: &str) -> SecretUrl {
        SecretUrl(url.to_string())
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_url(&self.0))
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretUrl({})", redact_url(&self.0))
    }
}

impl serde::Serialize for SecretUrl {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&redact_url(&self.0))
    }
}

/// Removes every occurrence of `secret` (when it is long enough to be one)
/// from `text`: for messages of libraries that quote a URL or a value they
/// were given (an HTTP client's error names the URL it failed on).
pub fn scrub(text: &str, secret: &str) -> String {
    if secret.len() < 8 || !text.contains(secret) {
        return text.to_string();
    }
    text.replace(secret, &redact_url(secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_keeps_scheme_host_and_first_segment() {
        assert_eq!(
            redact_url("https://hooks.slack.com/services/T0001/B0002/XXXXsecretXXXX"),
            "https://hooks.slack.com/services/…"
        );
        assert_eq!(
            redact_url(
                "postgres://rw:hunter2@db.internal:5432/rollwatch?sslmode=require&password=x"
            ),
            "postgres://rw:***@db.internal:5432/rollwatch?…"
        );
        assert_eq!(
            redact_url("postgres://postgres@127.0.0.1:5432/test"),
            "postgres://postgres@127.0.0.1:5432/test"
        );
        assert_eq!(redact_url("http://127.0.0.1:9093"), "http://127.0.0.1:9093");
        assert_eq!(
            redact_url("https://example.com/hook?token=abc#x"),
            "https://example.com/hook?…"
        );
        assert_eq!(
            redact_url("sqlite:///var/lib/rollwatch/rollwatch.db"),
            "sqlite:///var/lib/rollwatch/rollwatch.db"
        );
        assert_eq!(redact_url("rollwatch.db"), "rollwatch.db");
    }

    #[test]
    fn display_debug_and_serialize_never_show_the_secret() {
        let url = SecretUrl::new("https://hooks.slack.com/services/T1/B2/s3cr3tT0ken");
        for shown in [
            url.to_string(),
            format!("{url:?}"),
            serde_json::to_string(&url).unwrap(),
        ] {
            assert!(!shown.contains("s3cr3tT0ken"), "{shown}");
            assert!(shown.contains("hooks.slack.com/services"), "{shown}");
        }
        assert!(url.expose().ends_with("s3cr3tT0ken"));
    }

    #[test]
    fn scrub_removes_a_quoted_url() {
        let secret = "https://hooks.slack.com/services/T1/B2/s3cr3tT0ken";
        let error = format!("error sending request for url ({secret}): connection refused");
        let clean = scrub(&error, secret);
        assert!(!clean.contains("s3cr3tT0ken"), "{clean}");
        assert!(clean.contains("connection refused"));
    }
}
