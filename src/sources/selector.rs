//! PromQL-style series selectors for the scrape source, written in policies as
//! `http_requests_total{code=~"5..",job="web"}`: a metric name and label
//! matchers with `=`, `!=`, `=~` and `!~` (regexes fully anchored, as in PromQL).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use regex::Regex;

#[derive(Clone, Debug)]
pub struct Selector {
    pub metric: String,
    pub matchers: Vec<Matcher>,
    text: String,
}

#[derive(Clone, Debug)]
pub struct Matcher {
    pub label: String,
    pub op: MatchOp,
    pub value: String,
    regex: Option<Arc<Regex>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatchOp {
    Equal,
    NotEqual,
    Regex,
    NotRegex,
}

impl Matcher {
    pub fn matches(&self, value: Option<&str>) -> bool {
        // A missing label matches like an empty one, as in PromQL.
        let value = value.unwrap_or("");
        match self.op {
            MatchOp::Equal => value == self.value,
            MatchOp::NotEqual => value != self.value,
            MatchOp::Regex => self.regex.as_ref().is_some_and(|r| r.is_match(value)),
            MatchOp::NotRegex => !self.regex.as_ref().is_some_and(|r| r.is_match(value)),
        }
    }
}

impl Selector {
    pub fn parse(text: &str) -> Result<Selector, String> {
        let trimmed = text.trim();
        let name_end = trimmed
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(trimmed.len());
        let metric = &trimmed[..name_end];
        if metric.is_empty() || metric.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(format!(
                "selector \"{text}\" does not start with a metric name, expected e.g. http_requests_total{{code=~\"5..\"}}"
            ));
        }
        let mut rest = trimmed[name_end..].trim_start();
        let mut matchers = Vec::new();
        if !rest.is_empty() {
            rest = rest.strip_prefix('{').ok_or_else(|| {
                format!(
                    "unexpected \"{rest}\" in selector \"{text}\", expected {{label=\"value\"}}"
                )
            })?;
            loop {
                rest = rest.trim_start();
                if let Some(after) = rest.strip_prefix('}') {
                    if !after.trim().is_empty() {
                        return Err(format!(
                            "unexpected \"{}\" after the selector \"{text}\"",
                            after.trim()
                        ));
                    }
                    break;
                }
                let label_end = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                let label = &rest[..label_end];
                if label.is_empty() {
                    return Err(format!("expected a label name in selector \"{text}\""));
                }
                rest = rest[label_end..].trim_start();
                let (op, after) = if let Some(a) = rest.strip_prefix("=~") {
                    (MatchOp::Regex, a)
                } else if let Some(a) = rest.strip_prefix("!~") {
                    (MatchOp::NotRegex, a)
                } else if let Some(a) = rest.strip_prefix("!=") {
                    (MatchOp::NotEqual, a)
                } else if let Some(a) = rest.strip_prefix('=') {
                    (MatchOp::Equal, a)
                } else {
                    return Err(format!(
                        "expected =, !=, =~ or !~ after \"{label}\" in selector \"{text}\""
                    ));
                };
                let after = after.trim_start().strip_prefix('"').ok_or_else(|| {
                    format!("expected a quoted value for \"{label}\" in selector \"{text}\"")
                })?;
                let close = find_closing_quote(after).ok_or_else(|| {
                    format!("unterminated value for \"{label}\" in selector \"{text}\"")
                })?;
                let value = after[..close].replace("\\\"", "\"").replace("\\\\", "\\");
                rest = after[close + 1..].trim_start();
                let regex = match op {
                    MatchOp::Regex | MatchOp::NotRegex => {
                        Some(anchored_regex(&value).map_err(|e| {
                            format!("invalid regex \"{value}\" in selector \"{text}\": {e}")
                        })?)
                    }
                    _ => None,
                };
                matchers.push(Matcher {
                    label: label.to_string(),
                    op,
                    value,
                    regex,
                });
                if let Some(after) = rest.strip_prefix(',') {
                    rest = after;
                } else if !rest.starts_with('}') {
                    return Err(format!("expected , or }} in selector \"{text}\""));
                }
            }
        }
        Ok(Selector {
            metric: metric.to_string(),
            matchers,
            text: trimmed.to_string(),
        })
    }

    /// Whether a series with these labels is selected (the name is checked by the caller).
    pub fn matches_labels(&self, labels: &[(String, String)]) -> bool {
        self.matchers.iter().all(|m| {
            m.matches(
                labels
                    .iter()
                    .find(|(n, _)| *n == m.label)
                    .map(|(_, v)| v.as_str()),
            )
        })
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

static COMPILED: OnceLock<Mutex<HashMap<String, Weak<Regex>>>> = OnceLock::new();

/// `^(?:pattern)$`, compiled once while any selector uses it: a thousand
/// policies with the same selector share one compiled regex and its match
/// caches (behind an `Arc`: a `Regex` clone brings a cache pool of its own,
/// 7 KB a target). The cache holds them weakly, so a pattern no selector
/// uses any more (a policy edited or removed, a parse that was thrown away)
/// is freed: the cache never outgrows the selectors alive.
fn anchored_regex(pattern: &str) -> Result<Arc<Regex>, regex::Error> {
    let cache = COMPILED.get_or_init(Mutex::default);
    let mut cache = cache
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(regex) = cache.get(pattern).and_then(Weak::upgrade) {
        return Ok(regex);
    }
    let regex = Arc::new(Regex::new(&format!("^(?:{pattern})$"))?);
    // Amortized: the dead are swept when the cache has doubled since the
    // last sweep, so an insert costs O(1) on average.
    if cache.len() >= 64 && cache.len().is_power_of_two() {
        cache.retain(|_, weak| weak.strong_count() > 0);
    }
    cache.insert(pattern.to_string(), Arc::downgrade(&regex));
    Ok(regex)
}

/// How many compiled patterns the cache holds (alive or not yet swept).
#[cfg(test)]
fn cached_patterns() -> usize {
    COMPILED
        .get()
        .map_or(0, |cache| cache.lock().unwrap().len())
}

fn find_closing_quote(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => return Some(i),
            _ => i += 1,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn regexes_no_selector_uses_are_freed_and_live_ones_shared() {
        let kept = Selector::parse(r#"x{code=~"5..kept"}"#).unwrap();
        // A policy edited ten thousand times, each edit a new pattern: the
        // compiled patterns of the old selectors do not pile up.
        for i in 0..10_000 {
            drop(Selector::parse(&format!(r#"x{{code=~"5..{i}"}}"#)).unwrap());
        }
        let cached = cached_patterns();
        assert!(
            cached < 1_000,
            "{cached} patterns cached for 1 live selector"
        );
        let again = Selector::parse(r#"x{code=~"5..kept"}"#).unwrap();
        assert_eq!(format!("{kept}"), format!("{again}"));
        assert!(again.matches_labels(&labels(&[("code", "500kept")])));
    }

    #[test]
    fn matchers_follow_promql() {
        let s = Selector::parse(
            r#"http_requests_total{code=~"5..", job="web", env!="dev", path!~"/health.*"}"#,
        )
        .unwrap();
        assert_eq!(s.metric, "http_requests_total");
        assert!(s.matches_labels(&labels(&[
            ("code", "503"),
            ("job", "web"),
            ("path", "/api")
        ])));
        assert!(!s.matches_labels(&labels(&[("code", "200"), ("job", "web")])));
        // Anchored: "5.." does not match "1503".
        assert!(!s.matches_labels(&labels(&[("code", "1503"), ("job", "web")])));
        assert!(!s.matches_labels(&labels(&[
            ("code", "500"),
            ("job", "web"),
            ("path", "/healthz")
        ])));
        assert!(!s.matches_labels(&labels(&[("code", "500"), ("job", "web"), ("env", "dev")])));
    }

    #[test]
    fn a_bare_name_selects_every_series() {
        let s = Selector::parse("app_sessions_total").unwrap();
        assert!(s.matchers.is_empty());
        assert!(s.matches_labels(&labels(&[("a", "b")])));
    }

    #[test]
    fn bad_selectors_say_what_is_wrong() {
        assert!(Selector::parse("").unwrap_err().contains("metric name"));
        assert!(
            Selector::parse("m{code=5}")
                .unwrap_err()
                .contains("quoted value")
        );
        assert!(
            Selector::parse("m{code=~\"(\"}")
                .unwrap_err()
                .contains("invalid regex")
        );
        assert!(
            Selector::parse("m{code=\"5\"")
                .unwrap_err()
                .contains("expected , or }")
        );
        assert!(
            Selector::parse("m{code<\"5\"}")
                .unwrap_err()
                .contains("expected =, !=, =~ or !~")
        );
    }
}
