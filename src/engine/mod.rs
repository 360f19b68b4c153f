//! The decision engine: a pure state machine per target. No IO, no clock, no
//! async, no environment: observations and events go in through `handle_*`,
//! decisions come out through `poll_decision`, and the next instant it needs to
//! be woken at comes out of `poll_timeout`. Every method that depends on time
//! takes it from its input, so the live sidecar, `backtest` and the tests drive
//! the very same code.
//!
//! Every timer that decides is an engine deadline, returned by `poll_timeout`:
//! a page-then-rollback's deadline, the escalation of a page nobody answered
//! (`escalate_after`), the end of the stabilization watch. A driver only wakes
//! the engine; after a restart `resume_incident` restores them from what was
//! stored, at their original instants.
//!
//! Calling order, for a driver:
//! 1. Before handing in an input stamped `at`, call `handle_timeout(t)` for
//!    every `t = poll_timeout()` with `t <= at`, draining `poll_decision` after each.
//! 2. Hand in the input (`handle_observation`, `handle_no_data`, `handle_event`).
//! 3. Drain `poll_decision`. For a `Rollback` decision, run the procedure and
//!    report its end with `handle_rollback_finished` (a backtest reports success
//!    at once, at the decision's instant).
//!
//! Inputs must come in time order; an input older than the last one is refused
//! with `InputError::TimeWentBackwards` and changes nothing.
//!
//! The engine's code is split by concern: `rules` (each rule's state, its
//! evaluation and firing, the watch band, known issues, watchdog blind),
//! `incident` (an incident's lifecycle: opening, answers, declarations,
//! deadlines, the stabilization watch, escalation, resolution, resuming),
//! `recent` (each windowed rule's short window: the most recent evidence a
//! rule must still show before it pages or rolls back, and the shape of a
//! burst that ended), `guards` (what stands between a tier's action and a rollback),
//! `explanation` (the prose decisions are explained in) and `deploy`
//! (deployments, versions, epochs and baselines). This file holds the
//! `Engine` and its public API.

pub mod decision;
mod deploy;
mod explanation;
mod guards;
mod incident;
pub mod input;
pub mod policy;
mod recent;
mod rules;
pub mod signals;
pub mod stats;

use std::collections::VecDeque;
use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};

use crate::units::format_duration;
use decision::{Cause, Decision, Guard};
use deploy::{fixed_baseline, history_capacity};
use explanation::version_text;
use incident::ClearClock;
use input::{Event, Observation};
use policy::{Action, BaselineMode, KnownIssue, Policy, Tier};
use rules::RuleState;
use signals::{History, LatencyBaseline, LatencyTrail, Reading, Sample};

pub use deploy::Deployment;
pub use explanation::time_text;
pub use incident::{Incident, Phase, Resumed};
pub use rules::RuleStatus;

/// An input the engine refuses.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    #[error("time went backwards: {at} is before the previous input at {previous}")]
    TimeWentBackwards {
        at: DateTime<Utc>,
        previous: DateTime<Utc>,
    },
}

/// The decision engine for one target. See the module documentation for the
/// calling order.
pub struct Engine {
    policy: Arc<Policy>,
    now: Option<DateTime<Utc>>,
    history: History,
    /// Latency for the pre-deployment baseline (absent when none is taken).
    latency_trail: Option<LatencyTrail>,
    rules: Vec<RuleState>,
    last_seen_version: Option<String>,
    deployment: Option<Deployment>,
    baseline: Option<LatencyBaseline>,
    /// Windows start no earlier than this: the latest deployment or rollback.
    epoch: Option<DateTime<Utc>>,
    incident: Option<Incident>,
    incidents_opened: u64,
    last_rollback_at: Option<DateTime<Utc>>,
    suppressions: Vec<KnownIssue>,
    last_data_at: Option<DateTime<Utc>>,
    blind_paged: bool,
    observations: u64,
    decisions: VecDeque<Decision>,
}

/// A decision before the engine stamps it with the time, tier, rule, incident
/// and versions.
struct Draft {
    action: Action,
    cause: Cause,
    guard: Option<Guard>,
    reading: Option<Reading>,
    /// What happened and what follows; the policy and its hash are appended.
    core: String,
    /// When a page-then-rollback rolls back unless answered.
    deadline: Option<DateTime<Utc>>,
}

impl Engine {
    pub fn new(policy: Arc<Policy>) -> Engine {
        let baseline = fixed_baseline(&policy);
        let history = History::with_capacity(history_capacity(&policy));
        let latency_trail = policy
            .needs_latency_trail()
            .then(|| LatencyTrail::new(policy.baseline.window, policy.evaluation.interval));
        Engine {
            rules: vec![RuleState::default(); policy.rules.len()],
            suppressions: policy.known_issues.clone(),
            policy,
            now: None,
            history,
            latency_trail,
            last_seen_version: None,
            deployment: None,
            baseline,
            epoch: None,
            incident: None,
            incidents_opened: 0,
            last_rollback_at: None,
            last_data_at: None,
            blind_paged: false,
            observations: 0,
            decisions: VecDeque::new(),
        }
    }

    pub fn policy(&self) -> &Arc<Policy> {
        &self.policy
    }

    /// Observations handed in so far.
    pub fn observations(&self) -> u64 {
        self.observations
    }

    pub fn deployment(&self) -> Option<&Deployment> {
        self.deployment.as_ref()
    }

    pub fn incident(&self) -> Option<&Incident> {
        self.incident.as_ref()
    }

    pub fn baseline(&self) -> Option<&LatencyBaseline> {
        self.baseline.as_ref()
    }

    /// The samples kept (back to the policy's widest window), oldest first.
    pub fn samples(&self) -> impl Iterator<Item = &Sample> {
        self.history.iter()
    }

    /// Samples currently kept: bounded by the policy's widest window.
    pub fn history_len(&self) -> usize {
        self.history.sample_count()
    }

    pub fn rule_status(&self) -> Vec<RuleStatus> {
        self.policy
            .rules
            .iter()
            .zip(&self.rules)
            .map(|(rule, state)| RuleStatus {
                rule: rule.name.clone(),
                tier: rule.tier,
                firing: state.firing,
                watching: state.watching,
                pending_since: state.breach_since,
                preexisting: state.preexisting,
                reading: state.reading.clone(),
            })
            .collect()
    }

    /// The next decision, oldest first.
    pub fn poll_decision(&mut self) -> Option<Decision> {
        self.decisions.pop_front()
    }

    /// The next instant the engine must be woken at with `handle_timeout`:
    /// the page-then-rollback deadline, the escalation of an unanswered page
    /// or the end of the stabilization watch, whichever comes first. One that
    /// passed before the latest input (while rollwatch was not running, for
    /// a resumed incident) is due at once.
    pub fn poll_timeout(&self) -> Option<DateTime<Utc>> {
        let incident = self.incident.as_ref()?;
        let watch_end = match incident.phase {
            Phase::Watching { until, .. } => Some(until),
            _ => None,
        };
        let unanswered = incident.unanswered_due(self.policy.actions.escalate_after);
        let next = [incident.deadline, unanswered, watch_end]
            .into_iter()
            .flatten()
            .min()?;
        Some(self.now.map_or(next, |now| next.max(now)))
    }

    fn advance(&mut self, at: DateTime<Utc>) -> Result<(), InputError> {
        if let Some(previous) = self.now
            && at < previous
        {
            return Err(InputError::TimeWentBackwards { at, previous });
        }
        self.now = Some(at);
        Ok(())
    }

    pub fn handle_observation(&mut self, observation: &Observation) -> Result<(), InputError> {
        let now = observation.at;
        self.advance(now)?;
        self.observations += 1;
        let (sample, problems) = Sample::from_observation(observation, &self.policy);
        for problem in problems {
            tracing::warn!(target_service = %self.policy.service, at = %now, "observation: {problem}");
        }
        if let Some(version) = &observation.version {
            let version = self.clean_version(version);
            self.observe_version(now, &version);
        }
        let keep = self.policy.rules_span() + self.policy.evaluation.interval;
        self.history.push(sample, keep);
        if let (Some(trail), Some(latency)) = (&mut self.latency_trail, sample.latency_ms()) {
            trail.push(now, latency);
        }
        // With metric rules, a health probe alone does not make the watchdog see:
        // error rate, latency and users would be unjudgeable.
        let sees = if self.policy.rules.iter().any(|r| r.signal.is_windowed()) {
            sample.has_metrics()
        } else {
            sample.has_data()
        };
        if sees {
            self.last_data_at = Some(now);
            self.blind_paged = false;
        } else {
            self.check_blind(now, "observations carry no metrics");
        }
        self.evaluate_rules(now);
        self.maintain_incident(now);
        Ok(())
    }

    /// The source failed (unreachable, bad response): no data at `at`. Never
    /// "down", never "healthy".
    pub fn handle_no_data(&mut self, at: DateTime<Utc>, reason: &str) -> Result<(), InputError> {
        self.advance(at)?;
        tracing::warn!(target_service = %self.policy.service, at = %at, reason, "no data");
        self.check_blind(at, reason);
        Ok(())
    }

    pub fn handle_event(&mut self, at: DateTime<Utc>, event: Event) -> Result<(), InputError> {
        self.advance(at)?;
        match event {
            Event::Deploy {
                version,
                previous,
                migrations,
            } => {
                let version = version.map(|v| self.clean_version(&v).into_owned());
                let previous = previous.map(|v| self.clean_version(&v).into_owned());
                // The version counts as running once observed (a rollout may lag).
                let previous = previous.or_else(|| self.last_seen_version.clone());
                self.deployed(at, version, previous, migrations, false);
            }
            Event::Declare {
                tier,
                reason,
                component,
            } => self.declared(at, tier, &reason, component),
            Event::Suppress {
                rule,
                until,
                reason,
            } => self.suppress(at, rule, until, reason),
            Event::Ack { by } => self.answered(at, Cause::Acknowledged, by),
            Event::Hold { by } => self.answered(at, Cause::Held, by),
            Event::Approve { by } => self.approved(at, by),
            Event::ManualRollback {
                by,
                reason,
                component,
                to,
                force,
            } => self.manual_rollback(
                at,
                incident::ManualRollback {
                    by,
                    reason,
                    component,
                    to,
                    force,
                },
            ),
        }
        Ok(())
    }

    /// Wakes the engine at a deadline it asked for through `poll_timeout`.
    pub fn handle_timeout(&mut self, now: DateTime<Utc>) -> Result<(), InputError> {
        self.advance(now)?;
        let Some(incident) = &self.incident else {
            return Ok(());
        };
        if incident.deadline.is_some_and(|d| d <= now) {
            self.deadline_passed(now);
        }
        let escalate_after = self.policy.actions.escalate_after;
        if self
            .incident
            .as_ref()
            .and_then(|i| i.unanswered_due(escalate_after))
            .is_some_and(|due| due <= now)
        {
            self.page_unanswered(now);
        }
        if let Some(Incident {
            phase: Phase::Watching { until, saw_data },
            ..
        }) = &self.incident
            && *until <= now
        {
            let saw_data = *saw_data;
            self.watch_ended(now, saw_data);
        }
        Ok(())
    }

    /// Puts an edited policy in force between inputs (hot reload), keeping
    /// what the engine knows: the deployment, the open incident, known issues
    /// added since, and the state of every rule that keeps its name (a breach
    /// in progress goes on being confirmed, against the new threshold). The
    /// history is kept unless the samples' meaning changed (another latency
    /// quantile, other named checks): then windows fill again from now.
    pub fn replace_policy(&mut self, policy: Arc<Policy>) {
        let same_samples = policy.baseline.quantile == self.policy.baseline.quantile
            && policy.checks == self.policy.checks;
        let rules = policy
            .rules
            .iter()
            .map(|rule| {
                self.policy
                    .rules
                    .iter()
                    .position(|old| old.name == rule.name)
                    .map(|i| self.rules[i].clone())
                    .unwrap_or_default()
            })
            .collect();
        self.rules = rules;
        if !same_samples {
            self.history = History::with_capacity(history_capacity(&policy));
            self.latency_trail = policy
                .needs_latency_trail()
                .then(|| LatencyTrail::new(policy.baseline.window, policy.evaluation.interval));
        } else if self.latency_trail.is_none() && policy.needs_latency_trail() {
            self.latency_trail = Some(LatencyTrail::new(
                policy.baseline.window,
                policy.evaluation.interval,
            ));
        }
        for issue in &policy.known_issues {
            if !self.suppressions.contains(issue) {
                self.suppressions.push(issue.clone());
            }
        }
        if self
            .baseline
            .as_ref()
            .is_none_or(|b| b.source == BaselineMode::Fixed)
        {
            self.baseline = fixed_baseline(&policy);
        }
        tracing::info!(
            target_service = %policy.service,
            sha256 = %policy.sha256,
            kept_history = same_samples,
            "policy replaced"
        );
        self.policy = policy;
    }

    /// Takes up the latest deployment a previous run recorded, so a restart
    /// still knows what changed recently (and whether it was a rollback).
    pub fn restore_deployment(&mut self, deployment: Deployment) {
        if deployment.seen && deployment.version.is_some() {
            self.last_seen_version = deployment.version.clone();
        }
        if deployment.rollback {
            self.last_rollback_at = Some(deployment.at);
        }
        self.epoch = Some(deployment.at);
        self.deployment = Some(deployment);
    }

    /// Takes up an incident a previous run left unfinished (a restart after a
    /// crash, a takeover, or a manual rollback handed to the loop), in its
    /// stored phase, with its timers at their stored instants; returns the
    /// engine's id for it.
    ///
    /// - `Open`: the escalation of an unanswered page (`paged_at +
    ///   escalate_after`) stands, and is due at once if that instant passed
    ///   while rollwatch was not running. So does the page-then-rollback
    ///   deadline (none once a human acknowledged or held), but a rollback
    ///   needs the breach confirmed on current data (SPEC 3): a deadline
    ///   sooner than the longest rule's `for` plus one interval after the
    ///   restart is postponed to that, and the decision says so.
    /// - `RollingBack`: the caller goes on with the procedure and reports its end.
    /// - `Watching`: the watch ends at its stored end, judged on this run's
    ///   data. Nothing was observed while rollwatch was down, so when less
    ///   than the longest rule's `for` plus one interval is left (no rule could
    ///   be confirmed or cleared in time), it is extended to that, and the
    ///   watch's end says so.
    /// - `Escalated`: humans have it; it closes when every rule has been seen
    ///   clear for `resolve_after`, counting `clear_for` from before the stop
    ///   but never the time nothing was observed.
    ///
    /// An incident already open in the engine is replaced (there is one per target).
    pub fn resume_incident(
        &mut self,
        now: DateTime<Utc>,
        resumed: Resumed,
    ) -> Result<u64, InputError> {
        self.advance(now)?;
        self.incidents_opened += 1;
        let id = self.incidents_opened;
        let least = now + self.least_to_judge();
        let answered = resumed.acknowledged || resumed.held;
        let mut deadline = resumed
            .deadline
            .filter(|_| resumed.phase == Phase::Open && !answered);
        let mut deadline_postponed_from = None;
        if let Some(stored) = deadline
            && stored < least
            && !resumed.declared
        {
            tracing::warn!(
                target_service = %self.policy.service,
                stored_deadline = %time_text(stored),
                deadline = %time_text(least),
                "resumed page-then-rollback deadline postponed: the breach must be confirmed on current data before rolling back"
            );
            deadline_postponed_from = Some(stored);
            deadline = Some(least);
        }
        let mut phase = resumed.phase;
        let mut watch_extended_from = None;
        if let Phase::Watching { until, .. } = phase {
            if until < least {
                tracing::warn!(
                    target_service = %self.policy.service,
                    stored_end = %time_text(until),
                    until = %time_text(least),
                    "resumed watch extended: nothing was observed while rollwatch was down, and the longest rule's `for` plus one interval is needed to judge"
                );
                watch_extended_from = Some(until);
            }
            phase = Phase::Watching {
                until: until.max(least),
                saw_data: false,
            };
        }
        match resumed.phase {
            Phase::RollingBack => self.last_rollback_at = Some(resumed.phase_at),
            Phase::Watching { .. } => {
                self.last_rollback_at = Some(resumed.phase_at);
                self.deployment = Some(Deployment {
                    at: resumed.phase_at,
                    version: resumed.to_version.clone(),
                    previous: resumed.from_version.clone(),
                    migrations: Vec::new(),
                    rollback: true,
                    seen: true,
                });
                // The restored version is judged on its own data.
                self.start_epoch(now, false);
            }
            Phase::Open | Phase::Escalated => {}
        }
        let strongest = match resumed.phase {
            Phase::Open if resumed.deadline.is_some() => Action::PageThenRollback,
            Phase::Open => resumed.announced,
            _ => Action::Rollback,
        };
        self.incident = Some(Incident {
            id,
            opened_at: resumed.opened_at,
            tier: resumed.tier,
            rule: resumed.rule,
            component: resumed.component,
            strongest: strongest.max(resumed.announced),
            acknowledged: resumed.acknowledged,
            held: resumed.held,
            deadline,
            deadline_postponed_from,
            phase,
            declared: resumed.declared,
            paged_at: resumed.paged_at,
            unanswered_escalated: resumed.unanswered_escalated,
            resumed_at: Some(now),
            watch_extended_from,
            clear: ClearClock {
                before: resumed.clear_for.max(TimeDelta::zero()),
                ..ClearClock::default()
            },
            from_version: resumed.from_version,
            to_version: resumed.to_version,
        });
        Ok(id)
    }

    /// The end of a short sampling (`evaluate`): a rule that has read unhealthy
    /// at every conclusive reading since the sampling began, at least twice,
    /// counts as confirmed even when its `for` is longer than the sampling,
    /// unless its short window says the burst has ended.
    pub fn handle_sampling_end(&mut self, now: DateTime<Utc>) -> Result<(), InputError> {
        self.advance(now)?;
        let held_throughout: Vec<usize> = self
            .rules
            .iter()
            .enumerate()
            .filter(|(_, s)| {
                !s.firing
                    && s.breach_readings >= 2
                    && s.breach_since.is_some()
                    && s.breach_since == s.first_conclusive_at
            })
            .map(|(i, _)| i)
            .collect();
        for index in held_throughout {
            // As at any firing, a burst whose most recent evidence is
            // confidently healthy is told, not acted on.
            let rule = &self.policy.rules[index];
            let judged_now =
                rule.tier >= Tier::Consider && self.active_suppression(&rule.name, now).is_none();
            let state = &mut self.rules[index];
            if judged_now && state.recovered_now() {
                if !state.burst_told {
                    state.burst_told = true;
                    self.told_burst_ended(now, index);
                }
                continue;
            }
            self.rules[index].firing = true;
            self.rules[index].last_fired_at = Some(now);
            self.rule_fired(now, index);
        }
        Ok(())
    }

    /// The rollback procedure of incident `incident` ended: `Ok` starts the
    /// stabilization watch, `Err(reason)` escalates.
    pub fn handle_rollback_finished(
        &mut self,
        now: DateTime<Utc>,
        incident: u64,
        outcome: Result<(), String>,
    ) -> Result<(), InputError> {
        self.advance(now)?;
        let Some(current) = self
            .incident
            .as_mut()
            .filter(|i| i.id == incident && i.phase == Phase::RollingBack)
        else {
            tracing::warn!(
                incident,
                "rollback result for an incident that is not rolling back: ignored"
            );
            return Ok(());
        };
        match outcome {
            Ok(()) => {
                let until = now + self.policy.stabilization;
                current.phase = Phase::Watching {
                    until,
                    saw_data: false,
                };
                let (from, to) = (current.from_version.clone(), current.to_version.clone());
                self.deployment = Some(Deployment {
                    at: now,
                    version: to.clone(),
                    previous: from,
                    migrations: Vec::new(),
                    rollback: true,
                    seen: true,
                });
                self.start_epoch(now, false);
                let core = format!(
                    "rollback to {} finished; watching error rate and latency for {} until {}",
                    version_text(to.as_deref()),
                    format_duration(self.policy.stabilization),
                    time_text(until)
                );
                self.emit_for_incident(
                    now,
                    Draft {
                        action: Action::None,
                        cause: Cause::RollbackFinished,
                        guard: None,
                        reading: None,
                        core,
                        deadline: None,
                    },
                );
            }
            Err(reason) => {
                current.phase = Phase::Escalated;
                let core =
                    format!("rollback failed: {reason}; escalating to the escalation contacts");
                self.emit_for_incident(
                    now,
                    Draft {
                        action: Action::Page,
                        cause: Cause::RollbackFailed,
                        guard: None,
                        reading: None,
                        core,
                        deadline: None,
                    },
                );
            }
        }
        Ok(())
    }

    fn emit(&mut self, now: DateTime<Utc>, tier: Tier, rule: &str, draft: Draft) {
        let Draft {
            action,
            cause,
            guard,
            reading,
            core,
            deadline,
        } = draft;
        let policy = &self.policy;
        let explanation = format!("{core} [{} sha256:{}]", policy.path, policy.short_hash());
        let incident = self.incident.as_ref();
        let rolls_back = action == Action::Rollback;
        let (from_version, to_version) = match incident {
            Some(i) if rolls_back => (i.from_version.clone(), i.to_version.clone()),
            _ => (None, None),
        };
        let migrations = match &self.deployment {
            Some(d) if rolls_back => d.migrations.clone(),
            _ => Vec::new(),
        };
        let decision = Decision {
            at: now,
            action,
            tier,
            rule: rule.to_string(),
            explanation,
            cause,
            incident: incident.map(|i| i.id),
            guard,
            reading,
            deadline,
            component: incident.and_then(|i| i.component.clone()),
            from_version,
            to_version,
            migrations,
        };
        tracing::info!(
            target_service = %policy.service,
            action = %decision.action,
            tier = %decision.tier,
            rule = %decision.rule,
            "decision: {}",
            decision.explanation
        );
        self.decisions.push_back(decision);
    }
}

#[cfg(test)]
mod tests;
