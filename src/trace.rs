//! The trace format (docs/trace-format.md): JSON Lines, one observation or event per line,
//! in time order. Parsing is pure; reading a file is the caller's business.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::engine::input::{Event, LatencyQuantiles, Observation};
use crate::engine::policy::Tier;

/// One line of a trace.
#[derive(Clone, Debug, PartialEq)]
pub enum TraceItem {
    Observation(Observation),
    Event {
        at: DateTime<Utc>,
        event: Event,
    },
    /// The source failed at `at`: no data.
    NoData {
        at: DateTime<Utc>,
        reason: String,
    },
}

impl TraceItem {
    pub fn at(&self) -> DateTime<Utc> {
        match self {
            TraceItem::Observation(o) => o.at,
            TraceItem::Event { at, .. } | TraceItem::NoData { at, .. } => *at,
        }
    }
}

/// The wire shape of a line: the union of every kind's fields.
#[derive(Debug, Default, Deserialize, Serialize)]
struct Line {
    at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    event: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    up: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    requests: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    errors: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    latency_ms: Option<Latency>,
    #[serde(skip_serializing_if = "Option::is_none")]
    users: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    users_affected: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    checks: Option<BTreeMap<String, bool>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    previous: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    migrations: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tier: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rule: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    until: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    component: Option<String>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
struct Latency {
    #[serde(skip_serializing_if = "Option::is_none")]
    p50: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    p90: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    p95: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    p99: Option<f64>,
}

/// Parses one line. The message says what is wrong; the caller adds the line number.
pub fn parse_line(text: &str) -> Result<TraceItem, String> {
    let line: Line = serde_json::from_str(text).map_err(|e| format!("not a trace line: {e}"))?;
    let at = line
        .at
        .ok_or("missing \"at\", expected an RFC 3339 time like \"2026-11-24T10:00:00Z\"")?;
    if let Some(reason) = line.source_error {
        return Ok(TraceItem::NoData { at, reason });
    }
    let Some(kind) = line.event else {
        let latency = line.latency_ms.unwrap_or_default();
        return Ok(TraceItem::Observation(Observation {
            at,
            up: line.up,
            requests: line.requests,
            errors: line.errors,
            latency_ms: LatencyQuantiles {
                p50: latency.p50,
                p90: latency.p90,
                p95: latency.p95,
                p99: latency.p99,
            },
            users: line.users,
            users_affected: line.users_affected,
            checks: line.checks.unwrap_or_default().into_iter().collect(),
            version: line.version,
        }));
    };
    let event = match kind.as_str() {
        "deploy" => Event::Deploy {
            version: line.version,
            previous: line.previous,
            migrations: line.migrations.unwrap_or_default(),
        },
        "declare" => {
            let tier_name = line
                .tier
                .ok_or("declare needs \"tier\": \"immediate\" or \"consider\"")?;
            let tier = Tier::parse(&tier_name).ok_or_else(|| {
                format!(
                    "unknown tier \"{tier_name}\", expected immediate, consider, watch or ignore"
                )
            })?;
            Event::Declare {
                tier,
                reason: line.reason.unwrap_or_else(|| "no reason given".into()),
                component: line.component,
            }
        }
        "suppress" => Event::Suppress {
            rule: line.rule.ok_or("suppress needs \"rule\"")?,
            until: line
                .until
                .ok_or("suppress needs \"until\", an RFC 3339 time")?,
            reason: line.reason.unwrap_or_else(|| "no reason given".into()),
        },
        "ack" => Event::Ack { by: line.by },
        "hold" => Event::Hold { by: line.by },
        "approve" => Event::Approve { by: line.by },
        other => {
            return Err(format!(
                "unknown event \"{other}\", expected one of deploy, declare, suppress, ack, hold, approve"
            ));
        }
    };
    Ok(TraceItem::Event { at, event })
}

/// Writes an item as one trace line (without the newline), the inverse of `parse_line`.
pub fn to_line(item: &TraceItem) -> String {
    let mut line = Line {
        at: Some(item.at()),
        ..Line::default()
    };
    match item {
        TraceItem::NoData { reason, .. } => line.source_error = Some(reason.clone()),
        TraceItem::Observation(o) => {
            line.up = o.up;
            line.requests = o.requests;
            line.errors = o.errors;
            let q = o.latency_ms;
            if q != LatencyQuantiles::default() {
                line.latency_ms = Some(Latency {
                    p50: q.p50,
                    p90: q.p90,
                    p95: q.p95,
                    p99: q.p99,
                });
            }
            line.users = o.users;
            line.users_affected = o.users_affected;
            if !o.checks.is_empty() {
                line.checks = Some(o.checks.iter().cloned().collect());
            }
            line.version = o.version.clone();
        }
        TraceItem::Event { event, .. } => {
            line.event = Some(event.name().to_string());
            match event {
                Event::Deploy {
                    version,
                    previous,
                    migrations,
                } => {
                    line.version = version.clone();
                    line.previous = previous.clone();
                    line.migrations = (!migrations.is_empty()).then(|| migrations.clone());
                }
                Event::Declare {
                    tier,
                    reason,
                    component,
                } => {
                    line.tier = Some(tier.as_str().to_string());
                    line.reason = Some(reason.clone());
                    line.component = component.clone();
                }
                Event::Suppress {
                    rule,
                    until,
                    reason,
                } => {
                    line.rule = Some(rule.clone());
                    line.until = Some(*until);
                    line.reason = Some(reason.clone());
                }
                Event::Ack { by } | Event::Hold { by } | Event::Approve { by } => {
                    line.by = by.clone()
                }
                // Decided by `rollwatch rollback` alone: never recorded by a run.
                Event::ManualRollback {
                    by,
                    reason,
                    component,
                    to,
                    ..
                } => {
                    line.by = by.clone();
                    line.reason = Some(reason.clone());
                    line.component = component.clone();
                    line.version = to.clone();
                }
            }
        }
    }
    // Serializing a struct of strings, numbers and maps cannot fail.
    serde_json::to_string(&line).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC_EXAMPLE: &str = r#"{"at":"2026-11-24T10:00:00Z","up":true,"requests":1200,"errors":6,"latency_ms":{"p50":80,"p95":210,"p99":400},"users":900,"users_affected":4,"checks":{"data_integrity":true},"version":"v2.3.0"}
{"at":"2026-11-24T10:00:15Z","event":"deploy","version":"v2.3.1","previous":"v2.3.0","migrations":["0042_add_index"]}
{"at":"2026-11-24T10:00:30Z","source_error":"prometheus: connection refused"}
{"at":"2026-11-24T10:05:00Z","event":"declare","tier":"immediate","reason":"critical security vulnerability"}
{"at":"2026-11-24T10:06:00Z","event":"suppress","rule":"error-rate","until":"2026-11-24T12:00:00Z","reason":"fix in review"}
{"at":"2026-11-24T10:07:00Z","event":"ack"}
{"at":"2026-11-24T10:07:00Z","event":"hold"}"#;

    /// Found by `cargo fuzz run trace_line`: a value written with a long
    /// decimal parsed to an f64 one unit off the one its own output parses
    /// to, so a trace written back by rollwatch said something else.
    #[test]
    fn a_long_decimal_round_trips_to_the_same_value() {
        let text = format!(
            r#"{{"at":"2026-11-24T09:31:00Z","requests":1000,"errors":2,"latency_ms":{{"p50":8{}0}},"users":500}}"#,
            "3".repeat(64)
        );
        let line = to_line(&parse_line(&text).unwrap());
        assert_eq!(to_line(&parse_line(&line).unwrap()), line);
    }

    #[test]
    fn every_line_of_the_spec_example_parses_and_round_trips() {
        for text in SPEC_EXAMPLE.lines() {
            let item = parse_line(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(parse_line(&to_line(&item)).unwrap(), item, "{text}");
        }
    }

    #[test]
    fn the_observation_keeps_unknown_fields_unknown() {
        let TraceItem::Observation(o) =
            parse_line(r#"{"at":"2026-11-24T10:00:00Z","requests":10}"#).unwrap()
        else {
            panic!("not an observation")
        };
        assert_eq!(o.requests, Some(10.0));
        assert_eq!(o.errors, None);
        assert_eq!(o.up, None);
    }

    #[test]
    fn malformed_lines_say_what_is_wrong() {
        assert!(parse_line("{").unwrap_err().contains("not a trace line"));
        assert!(
            parse_line(r#"{"up":true}"#)
                .unwrap_err()
                .contains("missing \"at\"")
        );
        assert!(
            parse_line(r#"{"at":"yesterday"}"#)
                .unwrap_err()
                .contains("not a trace line")
        );
        assert!(
            parse_line(r#"{"at":"2026-11-24T10:00:00Z","event":"explode"}"#)
                .unwrap_err()
                .contains("unknown event")
        );
        assert!(
            parse_line(r#"{"at":"2026-11-24T10:00:00Z","event":"declare","tier":"urgent"}"#)
                .unwrap_err()
                .contains("unknown tier")
        );
        assert!(parse_line(r#"{"at":"2026-11-24T10:00:00Z","requests":"many"}"#).is_err());
    }
}
