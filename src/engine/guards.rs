//! The guards: what stands between a tier's action and a rollback, and how
//! the explanation says so.

use chrono::{DateTime, Utc};

use super::decision::Guard;
use super::explanation::version_text;
use super::incident::Phase;
use super::policy::Action;
use super::{Engine, time_text};
use crate::units::format_duration;

/// Who asks for a rollback: the guards differ only in what a person may
/// decide for themselves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Asker {
    /// A rule, or a page-then-rollback deadline: every guard. `preexisting`:
    /// the breach was there before the deployment.
    Automatic { preexisting: bool },
    /// A human's declaration or approval: not the cooldown, which stops
    /// automatic flapping, nor a breach older than the deployment.
    Human,
    /// A human's rollback by hand: as `Human`, and with no deployment known
    /// the human judges whether the change is recent. `force`: they have
    /// checked it, past the recent-deploy window too.
    Manual { force: bool },
}

impl Engine {
    /// What the tier's action becomes once the guards have had their say.
    pub(super) fn effective_action(
        &self,
        now: DateTime<Utc>,
        tier_action: Action,
        preexisting: bool,
        human: bool,
    ) -> (Action, Option<Guard>) {
        if !tier_action.may_roll_back() {
            return (tier_action, None);
        }
        let incident = self.incident.as_ref();
        if incident.is_some_and(|i| i.held) {
            return (Action::Page, Some(Guard::Held));
        }
        let asker = if human {
            Asker::Human
        } else {
            Asker::Automatic { preexisting }
        };
        if let Some(guard) = self.rollback_guard(now, asker) {
            let action = if guard == Guard::InProgress {
                Action::None
            } else {
                Action::Page
            };
            return (action, Some(guard));
        }
        if tier_action == Action::PageThenRollback && incident.is_some_and(|i| i.acknowledged) {
            return (Action::Page, Some(Guard::Acknowledged));
        }
        (tier_action, None)
    }

    /// The first reason not to roll back now, if any: the one set of rules
    /// for every rollback, whoever asks (`Asker`). Never while a rollback
    /// runs, and never a rollback of a rollback, whoever asks; only for a
    /// change within `recent_deploy_window`; the cooldown and a breach older
    /// than the deployment stop automatic rollbacks only.
    pub(super) fn rollback_guard(&self, now: DateTime<Utc>, asker: Asker) -> Option<Guard> {
        let evaluation = &self.policy.evaluation;
        if self
            .incident
            .as_ref()
            .is_some_and(|i| i.phase == Phase::RollingBack)
        {
            return Some(Guard::InProgress);
        }
        let Some(deployment) = &self.deployment else {
            // Knowing of no deployment, rollwatch cannot say the change is
            // old: a rollback by hand is the human's to judge.
            return match asker {
                Asker::Manual { .. } => None,
                _ => Some(Guard::NoRecentDeploy),
            };
        };
        if deployment.rollback {
            return Some(Guard::RollbackOfRollback);
        }
        if now - deployment.at > evaluation.recent_deploy_window
            && asker != (Asker::Manual { force: true })
        {
            return Some(Guard::NoRecentDeploy);
        }
        let Asker::Automatic { preexisting } = asker else {
            return None;
        };
        if self
            .last_rollback_at
            .is_some_and(|t| now - t < evaluation.cooldown)
        {
            return Some(Guard::Cooldown);
        }
        if preexisting {
            return Some(Guard::Preexisting);
        }
        None
    }

    pub(super) fn guard_text(&self, now: DateTime<Utc>, guard: &Guard, rule: &str) -> String {
        let evaluation = &self.policy.evaluation;
        let deployment = self.deployment.as_ref();
        match guard {
            Guard::NoRecentDeploy => match deployment {
                None => format!(
                    "no deployment seen, and a rollback only answers a change within {}",
                    format_duration(evaluation.recent_deploy_window)
                ),
                Some(d) => format!(
                    "the latest deployment ({} at {}) is {} old, outside the {} recent-deploy window",
                    version_text(d.version.as_deref()),
                    time_text(d.at),
                    format_duration(now - d.at),
                    format_duration(evaluation.recent_deploy_window)
                ),
            },
            Guard::Preexisting => format!(
                "{rule} was already breaching before the deploy of {}, so a rollback would not fix it",
                version_text(deployment.and_then(|d| d.version.as_deref()))
            ),
            Guard::InProgress => "a rollback is already running".to_string(),
            Guard::Cooldown => format!(
                "the last rollback was {} ago, within the {} cooldown",
                self.last_rollback_at
                    .map_or_else(|| "?".into(), |t| format_duration(now - t)),
                format_duration(evaluation.cooldown)
            ),
            Guard::RollbackOfRollback => format!(
                "the running version {} is itself a rollback, and a rollback is never rolled back",
                version_text(deployment.and_then(|d| d.version.as_deref()))
            ),
            Guard::Held => "a human holds this incident".to_string(),
            Guard::Acknowledged => {
                "a human has acknowledged this incident and owns the rollback decision".to_string()
            }
            Guard::KnownIssue => "a known issue suppresses this rule".to_string(),
            Guard::Recovered => format!("{rule} is no longer breaching"),
            Guard::NoData => "there is no usable data".to_string(),
        }
    }

    /// The part of an explanation that says what happens next.
    pub(super) fn consequence(
        &self,
        now: DateTime<Utc>,
        action: Action,
        guard: Option<&Guard>,
        rule: &str,
    ) -> String {
        let not_rolling_back =
            guard.map(|g| format!("not rolling back: {}", self.guard_text(now, g, rule)));
        match (action, not_rolling_back) {
            (Action::Rollback, _) => {
                let (from, to) = self.rollback_versions();
                format!(
                    "rolling back {} -> {}",
                    version_text(from.as_deref()),
                    version_text(to.as_deref())
                )
            }
            (Action::PageThenRollback, _) => format!(
                "paging on-call; rolling back at {} unless acknowledged or held",
                time_text(now + self.policy.actions.page_timeout)
            ),
            (Action::Page, Some(why)) => format!("{why}; paging on-call"),
            (Action::Page, None) => "paging on-call".to_string(),
            (Action::Notify, _) => "notifying the team".to_string(),
            (Action::None, Some(why)) => why,
            (Action::None, None) => "no action in this environment".to_string(),
        }
    }
}
