//! What each target loop publishes for `GET /api/v1/status`: a snapshot
//! replaced after every poll, decision and answer, so a status request never
//! waits for a target (nor a target for a status request beyond one write).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::engine::decision::Decision;
use crate::engine::{Deployment, Incident, RuleStatus};
use crate::store::NotificationRecord;
use crate::text_enum::text_enum;

/// The source's health as the last poll saw it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SourceHealth {
    pub last_poll_at: Option<DateTime<Utc>>,
    /// The last poll returned something to judge.
    pub ok: bool,
    pub problems: Vec<String>,
    pub polls: u64,
}

text_enum! {
    /// What a replica does with a target's decisions.
    pub enum Mode ("mode") {
        /// It owns the target and acts.
        Acting => "acting",
        /// It prints what it would do (`--dry-run`).
        DryRun => "dry-run",
        /// Another replica owns the target: it evaluates and acts on nothing.
        Passive => "passive",
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct TargetStatus {
    pub target: String,
    pub policy: String,
    pub sha256: String,
    pub mode: Mode,
    /// Every rule with its current reading against its threshold.
    pub rules: Vec<RuleStatus>,
    pub deployment: Option<Deployment>,
    pub incident: Option<Incident>,
    /// The stored incident's id, for the answer endpoints.
    pub incident_id: Option<i64>,
    pub last_decision: Option<Decision>,
    pub source: SourceHealth,
    /// The last rejected policy edit, if the policy in force is an older one.
    pub reload_error: Option<String>,
}

/// A policy file that defines no watched target: it was rejected when it
/// appeared (or when it became a second file for one target).
#[derive(Clone, Debug, Serialize)]
pub struct RejectedFile {
    pub policy: String,
    pub error: String,
    pub at: DateTime<Utc>,
}

#[derive(Default)]
struct Board {
    targets: BTreeMap<String, TargetStatus>,
    rejected: BTreeMap<String, RejectedFile>,
}

/// Every target's latest snapshot, by target name.
#[derive(Clone, Default)]
pub struct StatusBoard(Arc<RwLock<Board>>);

impl StatusBoard {
    pub fn publish(&self, status: TargetStatus) {
        let mut board = self.0.write().unwrap_or_else(|e| e.into_inner());
        board.targets.insert(status.target.clone(), status);
    }

    /// A target no longer watched (its policy file was removed).
    pub fn remove(&self, target: &str) {
        let mut board = self.0.write().unwrap_or_else(|e| e.into_inner());
        board.targets.remove(target);
    }

    /// Shows (`Some`) or clears (`None`) a policy file's rejection.
    pub fn set_rejected(&self, policy: &str, error: Option<String>) {
        let mut board = self.0.write().unwrap_or_else(|e| e.into_inner());
        match error {
            Some(error) => {
                board.rejected.insert(
                    policy.to_string(),
                    RejectedFile {
                        policy: policy.to_string(),
                        error,
                        at: Utc::now(),
                    },
                );
            }
            None => {
                board.rejected.remove(policy);
            }
        }
    }

    pub fn snapshot(&self) -> Vec<TargetStatus> {
        let board = self.0.read().unwrap_or_else(|e| e.into_inner());
        board.targets.values().cloned().collect()
    }

    /// JSON of every target, serialized under the read lock (no clone).
    pub fn to_json(&self) -> serde_json::Result<String> {
        self.to_json_with(&[])
    }

    /// The same, with the messages that finally failed to be delivered.
    pub fn to_json_with(&self, undelivered: &[NotificationRecord]) -> serde_json::Result<String> {
        #[derive(Serialize)]
        struct Body<'a> {
            targets: Vec<&'a TargetStatus>,
            /// Policy files that define no target: rejected when they appeared.
            rejected_policies: Vec<&'a RejectedFile>,
            undelivered: &'a [NotificationRecord],
        }
        let board = self.0.read().unwrap_or_else(|e| e.into_inner());
        serde_json::to_string(&Body {
            targets: board.targets.values().collect(),
            rejected_policies: board.rejected.values().collect(),
            undelivered,
        })
    }

    pub fn targets(&self) -> Vec<String> {
        let board = self.0.read().unwrap_or_else(|e| e.into_inner());
        board.targets.keys().cloned().collect()
    }
}
