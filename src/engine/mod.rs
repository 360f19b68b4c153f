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

pub mod decision;
pub mod input;
pub mod policy;
pub mod signals;
pub mod stats;

use std::collections::VecDeque;
use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use serde::Serialize;

use crate::units::format_duration;
use decision::{Cause, Decision, Guard, awaits_answer};
use input::{Event, Observation};
use policy::{Action, BaselineMode, KnownIssue, Policy, Signal, Tier};
use signals::{History, LatencyBaseline, LatencyTrail, Reading, Sample, Verdict};

/// An input the engine refuses.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    #[error("time went backwards: {at} is before the previous input at {previous}")]
    TimeWentBackwards {
        at: DateTime<Utc>,
        previous: DateTime<Utc>,
    },
}

/// A deployment the engine knows of: announced, seen as a version change, or
/// the engine's own rollback.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Deployment {
    pub at: DateTime<Utc>,
    pub version: Option<String>,
    pub previous: Option<String>,
    pub migrations: Vec<String>,
    /// This deployment is a rollback: it is never rolled back automatically.
    pub rollback: bool,
    /// Its version has been observed (an announced rollout may lag).
    pub seen: bool,
}

/// Where an incident stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "phase")]
pub enum Phase {
    /// Opened; paged, notified or waiting for a page-then-rollback deadline.
    Open,
    /// A rollback decision was made and the procedure is running.
    RollingBack,
    /// The rollback finished; watching for stability until `until`.
    Watching {
        until: DateTime<Utc>,
        saw_data: bool,
    },
    /// Handed to humans: the rollback failed or did not help.
    Escalated,
}

/// Everything from the first firing rule to resolution.
#[derive(Clone, Debug, Serialize)]
pub struct Incident {
    pub id: u64,
    pub opened_at: DateTime<Utc>,
    pub tier: Tier,
    pub rule: String,
    pub component: Option<String>,
    /// The strongest action announced so far: a later firing is only announced
    /// when it asks for more (one incident, one page).
    pub strongest: Action,
    pub acknowledged: bool,
    pub held: bool,
    /// A page-then-rollback rolls back at this instant unless answered.
    pub deadline: Option<DateTime<Utc>>,
    pub phase: Phase,
    /// Opened by a human's declaration rather than a rule.
    pub declared: bool,
    /// When its page went out (the first decision that waits for an answer):
    /// unanswered, it escalates at `paged_at + escalate_after`.
    pub paged_at: Option<DateTime<Utc>>,
    /// The unanswered page has gone to the escalation contacts (once).
    pub unanswered_escalated: bool,
    /// Taken up by `resume_incident` at this instant (a restart or a takeover).
    pub resumed_at: Option<DateTime<Utc>>,
    /// A resumed watch whose stored end left too little time to judge any
    /// rule was extended: this was its stored end.
    pub watch_extended_from: Option<DateTime<Utc>>,
    /// Likewise a resumed page-then-rollback deadline: its stored instant.
    pub deadline_postponed_from: Option<DateTime<Utc>>,
    #[serde(skip)]
    clear: ClearClock,
    from_version: Option<String>,
    to_version: Option<String>,
}

impl Incident {
    /// When the unanswered page escalates, if it is still waiting for an
    /// answer: open (not rolling back or handed over), not acknowledged, held
    /// or approved, and not escalated yet.
    fn unanswered_due(&self, escalate_after: TimeDelta) -> Option<DateTime<Utc>> {
        let waiting = self.phase == Phase::Open
            && !self.acknowledged
            && !self.held
            && !self.unanswered_escalated;
        self.paged_at
            .filter(|_| waiting)
            .map(|paged| paged + escalate_after)
    }

    /// The instant every rule would have been clear since, had the clear time
    /// observed so far been one unbroken stretch ending at the latest clear
    /// observation; `None` while a rule breaches. What the store keeps, so a
    /// restart goes on counting without counting the time it was down.
    pub fn clear_since(&self) -> Option<DateTime<Utc>> {
        self.clear.equivalent_start()
    }
}

/// How long every rule of an incident has been seen clear, for
/// `resolve_after`: observed time only. A stretch without observations
/// longer than two intervals (the source failed, or rollwatch was not
/// running) is not counted, but does not undo the clear time seen before it;
/// a breach does.
#[derive(Clone, Debug, Default)]
struct ClearClock {
    /// Clear time observed before the current stretch (before a gap, or in a
    /// previous run).
    before: TimeDelta,
    /// The current stretch: its first and its latest clear observation.
    since: Option<DateTime<Utc>>,
    seen: Option<DateTime<Utc>>,
}

impl ClearClock {
    /// A clear observation at `now`; returns the clear time so far.
    fn observe_clear(&mut self, now: DateTime<Utc>, max_gap: TimeDelta) -> TimeDelta {
        match (self.since, self.seen) {
            (Some(since), Some(seen)) if now - seen > max_gap => {
                self.before += seen - since;
                self.since = Some(now);
            }
            (None, _) => self.since = Some(now),
            _ => {}
        }
        self.seen = Some(now);
        self.total()
    }

    fn total(&self) -> TimeDelta {
        match (self.since, self.seen) {
            (Some(since), Some(seen)) => self.before + (seen - since),
            _ => self.before,
        }
    }

    fn equivalent_start(&self) -> Option<DateTime<Utc>> {
        self.seen.map(|seen| seen - self.total())
    }
}

/// An unfinished incident handed back to the engine: see `Engine::resume_incident`.
#[derive(Clone, Debug)]
pub struct Resumed {
    pub opened_at: DateTime<Utc>,
    pub tier: Tier,
    pub rule: String,
    pub component: Option<String>,
    /// For `Watching`, `until` is the stored end of the watch (it is
    /// extended when too little of it is left to judge any rule).
    pub phase: Phase,
    /// When the phase began (the rollback's start, the watch's start).
    pub phase_at: DateTime<Utc>,
    /// The strongest action already announced (one incident, one page).
    pub announced: Action,
    pub acknowledged: bool,
    pub held: bool,
    pub deadline: Option<DateTime<Utc>>,
    pub declared: bool,
    pub from_version: Option<String>,
    pub to_version: Option<String>,
    /// When its page went out: the instant of the first stored decision that
    /// waits for an answer (`decision::awaits_answer`), if it paged.
    pub paged_at: Option<DateTime<Utc>>,
    /// The unanswered page already went to the escalation contacts.
    pub unanswered_escalated: bool,
    /// How long every rule had been seen clear when the previous run last
    /// observed the target (zero if a rule was breaching, or unknown). The
    /// time between that observation and this run's first is not counted.
    pub clear_for: TimeDelta,
}

/// A rule's place in Inactive → Pending → Firing, as in Prometheus alerting,
/// plus the same for its watch band.
#[derive(Clone, Debug, Default)]
struct RuleState {
    /// First observation of the current unbroken breach.
    breach_since: Option<DateTime<Utc>>,
    /// Unhealthy readings in the current breach.
    breach_readings: u32,
    /// First observation of the current unbroken stay in the watch band or above.
    band_since: Option<DateTime<Utc>>,
    /// The latest reading in the breach, and in the band.
    last_unhealthy_at: Option<DateTime<Utc>>,
    last_band_at: Option<DateTime<Utc>>,
    /// The first and the latest conclusive reading since the latest deployment.
    first_conclusive_at: Option<DateTime<Utc>>,
    last_conclusive_at: Option<DateTime<Utc>>,
    firing: bool,
    watching: bool,
    /// When the rule last fired (held for its `for`); survives a deployment.
    last_fired_at: Option<DateTime<Utc>>,
    /// The current firing was turned into a log line by a known issue.
    suppressed: bool,
    /// The rule fired within the baseline window before the latest deployment,
    /// or was breaching as it happened.
    preexisting: bool,
    reading: Option<Reading>,
}

impl RuleState {
    /// Applies a verdict; returns (fired, entered watch band). A breach
    /// interrupted by inconclusive readings for longer than `max_gap` starts over:
    /// two failed probes an hour apart are not one minute of "down".
    fn update(
        &mut self,
        verdict: Verdict,
        now: DateTime<Utc>,
        hold_for: TimeDelta,
        max_gap: TimeDelta,
    ) -> (bool, bool) {
        // An inconclusive reading keeps the state as it is: no data neither
        // confirms a rule (it must be seen breaching to fire) nor clears it.
        if verdict == Verdict::Inconclusive {
            return (false, false);
        }
        let stale = |last: Option<DateTime<Utc>>| last.is_some_and(|t| now - t > max_gap);
        if stale(self.last_unhealthy_at) {
            self.breach_since = None;
            self.breach_readings = 0;
        }
        if stale(self.last_band_at) {
            self.band_since = None;
        }
        match verdict {
            Verdict::Unhealthy => {
                self.breach_since.get_or_insert(now);
                self.breach_readings += 1;
                self.band_since.get_or_insert(now);
                self.last_unhealthy_at = Some(now);
                self.last_band_at = Some(now);
            }
            Verdict::Watch => {
                self.breach_since = None;
                self.breach_readings = 0;
                self.band_since.get_or_insert(now);
                self.last_band_at = Some(now);
            }
            Verdict::Healthy | Verdict::Inconclusive => {
                self.breach_since = None;
                self.breach_readings = 0;
                self.band_since = None;
            }
        }
        self.first_conclusive_at.get_or_insert(now);
        self.last_conclusive_at = Some(now);
        let held = |since: Option<DateTime<Utc>>| since.is_some_and(|s| now - s >= hold_for);
        let firing = held(self.breach_since);
        let watching = !firing && held(self.band_since);
        let fired = firing && !self.firing;
        let entered_watch = watching && !self.watching;
        self.firing = firing;
        self.watching = watching;
        if fired {
            self.last_fired_at = Some(now);
        }
        if !firing {
            self.suppressed = false;
        }
        (fired, entered_watch)
    }

    /// Restarts the state machine at a new epoch.
    fn reset(&mut self, preexisting: bool, last_fired_at: Option<DateTime<Utc>>) {
        *self = RuleState {
            preexisting,
            last_fired_at,
            ..RuleState::default()
        };
    }

    /// The latest reading is conclusive and recent: the rule's state rests on
    /// current evidence, not on what was seen before the data stopped.
    fn evidence_is_current(&self, now: DateTime<Utc>, window: TimeDelta) -> bool {
        self.last_conclusive_at.is_some_and(|t| now - t <= window)
    }
}

/// A snapshot of one rule for status pages and `evaluate`.
#[derive(Clone, Debug, Serialize)]
pub struct RuleStatus {
    pub rule: String,
    pub tier: Tier,
    pub firing: bool,
    pub watching: bool,
    pub pending_since: Option<DateTime<Utc>>,
    pub preexisting: bool,
    pub reading: Option<Reading>,
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
        if self.baseline.as_ref().is_none_or(|b| b.source == "fixed") {
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

    /// The least time after a restart before every rule that can act has
    /// been judged on current data: the longest `for` of a consider or
    /// immediate rule, plus one interval.
    fn least_to_judge(&self) -> TimeDelta {
        let longest_for = self
            .policy
            .rules
            .iter()
            .filter(|r| r.tier >= Tier::Consider)
            .map(|r| r.hold_for)
            .max()
            .unwrap_or_else(TimeDelta::zero);
        longest_for + self.policy.evaluation.interval
    }

    /// The end of a short sampling (`evaluate`): a rule that has read unhealthy
    /// at every conclusive reading since the sampling began, at least twice,
    /// counts as confirmed even when its `for` is longer than the sampling.
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

    /// `input::clean_version`, said when the cleaned version is new (not at
    /// every poll of the same hostile version).
    fn clean_version<'v>(&self, version: &'v str) -> std::borrow::Cow<'v, str> {
        match input::clean_version(version) {
            Ok(clean) => std::borrow::Cow::Borrowed(clean),
            Err((clean, warning)) => {
                if self.last_seen_version.as_deref() != Some(clean.as_str()) {
                    tracing::warn!(target_service = %self.policy.service, "{warning}");
                }
                std::borrow::Cow::Owned(clean)
            }
        }
    }

    fn observe_version(&mut self, now: DateTime<Utc>, version: &str) {
        let Some(seen) = self.last_seen_version.clone() else {
            self.last_seen_version = Some(version.to_string());
            return;
        };
        if seen == version {
            return;
        }
        if let Some(deployment) = &mut self.deployment
            && !deployment.seen
        {
            if deployment.version.as_deref() == Some(version) {
                // The announced version has rolled out.
                deployment.seen = true;
                self.last_seen_version = Some(version.to_string());
                return;
            }
            if deployment.previous.as_deref() == Some(version) {
                // The announced rollout is still in progress: old instances answer.
                return;
            }
        }
        self.last_seen_version = Some(version.to_string());
        self.deployed(now, Some(version.to_string()), Some(seen), Vec::new(), true);
    }

    /// A deployment, announced (`seen` false until its version is observed) or
    /// observed as a version change.
    fn deployed(
        &mut self,
        now: DateTime<Utc>,
        version: Option<String>,
        previous: Option<String>,
        migrations: Vec<String>,
        seen: bool,
    ) {
        if let Some(current) = &mut self.deployment
            && version.is_some()
        {
            if current.version == version {
                // The announced version showing up, or announced twice.
                current.seen |= seen;
                if !migrations.is_empty() {
                    current.migrations = migrations;
                }
                return;
            }
            if current.previous == version {
                self.rolled_back_to(now, version, seen);
                return;
            }
        }
        tracing::info!(
            target_service = %self.policy.service,
            version = version.as_deref().unwrap_or("unknown"),
            previous = previous.as_deref().unwrap_or("unknown"),
            "deployment"
        );
        self.baseline = self.pre_deploy_baseline(now);
        self.deployment = Some(Deployment {
            at: now,
            version,
            previous,
            migrations,
            rollback: false,
            seen,
        });
        self.start_epoch(now, true);
    }

    /// The previous version is back: rollwatch's own rollback landing before its
    /// procedure reported, or a human's rollback. Either way it is a rollback
    /// (never rolled back in turn) and the baseline, which describes that
    /// version, stays.
    fn rolled_back_to(&mut self, now: DateTime<Utc>, version: Option<String>, seen: bool) {
        let ours = self
            .incident
            .as_ref()
            .is_some_and(|i| i.phase == Phase::RollingBack);
        let from = self.deployment.as_ref().and_then(|d| d.version.clone());
        tracing::info!(
            target_service = %self.policy.service,
            version = version.as_deref().unwrap_or("unknown"),
            by = if ours { "rollwatch" } else { "a human" },
            "rollback landed"
        );
        self.deployment = Some(Deployment {
            at: now,
            version,
            previous: from,
            migrations: Vec::new(),
            rollback: true,
            seen,
        });
        if !ours {
            // Judge the restored version on its own data; ours restarts at the watch.
            self.start_epoch(now, false);
        }
    }

    /// Windows restart at `now`; rule states restart, remembering which rules
    /// fired within the baseline window before it, or were breaching as it came
    /// (a regression must be new). A rollback forgets: those breaches belonged
    /// to the version rolled back.
    fn start_epoch(&mut self, now: DateTime<Utc>, remember_breaches: bool) {
        self.epoch = Some(now);
        let since = now - self.policy.baseline.window;
        for state in &mut self.rules {
            let fired_recently = state.last_fired_at.is_some_and(|t| t >= since);
            let breaching = state.breach_since.is_some() && state.breach_readings >= 2;
            let preexisting = remember_breaches && (fired_recently || breaching);
            let last_fired_at = if remember_breaches {
                state.last_fired_at
            } else {
                None
            };
            state.reset(preexisting, last_fired_at);
        }
    }

    fn pre_deploy_baseline(&self, deploy_at: DateTime<Utc>) -> Option<LatencyBaseline> {
        if self.policy.baseline.mode == BaselineMode::Fixed {
            return fixed_baseline(&self.policy);
        }
        let min_samples = self
            .policy
            .rules
            .iter()
            .find_map(|r| match r.signal {
                Signal::LatencyDegradation { min_samples, .. } => Some(min_samples),
                _ => None,
            })
            .unwrap_or(3);
        let mut values: Vec<f64> = self
            .latency_trail
            .as_ref()
            .map(|trail| {
                trail
                    .between(deploy_at - self.policy.baseline.window, deploy_at)
                    .collect()
            })
            .unwrap_or_default();
        if values.len() >= min_samples
            && let Some(ms) = stats::median(&mut values)
            && ms > 0.0
        {
            return Some(LatencyBaseline {
                ms,
                source: "pre-deploy",
            });
        }
        // Keep what is known when the new window is too thin: the previous
        // deployment's baseline, else the fixed one.
        self.baseline
            .clone()
            .or_else(|| fixed_baseline(&self.policy))
    }

    fn evaluate_rules(&mut self, now: DateTime<Utc>) {
        let mut fired = Vec::new();
        let mut entered_watch = Vec::new();
        let mut any_conclusive = false;
        for (index, rule) in self.policy.rules.iter().enumerate() {
            let reading = signals::read(
                rule,
                &self.history,
                now,
                self.epoch,
                self.baseline.as_ref(),
                self.policy.evaluation.z,
            );
            let state = &mut self.rules[index];
            any_conclusive |= reading.verdict != Verdict::Inconclusive;
            let max_gap = rule.hold_for + self.policy.evaluation.interval;
            let (did_fire, did_enter_watch) =
                state.update(reading.verdict, now, rule.hold_for, max_gap);
            state.reading = Some(reading);
            let suppression_lapsed = state.firing
                && state.suppressed
                && self.active_suppression(&rule.name, now).is_none();
            if did_fire || suppression_lapsed {
                fired.push(index);
            }
            if did_enter_watch {
                entered_watch.push(index);
            }
        }
        if any_conclusive
            && let Some(Incident {
                phase: Phase::Watching { saw_data, .. },
                ..
            }) = &mut self.incident
        {
            *saw_data = true;
        }
        // The strongest tier first: an immediate rule decides before a consider rule at the same instant.
        fired.sort_by_key(|&index| std::cmp::Reverse(self.policy.rules[index].tier));
        for index in fired {
            self.rule_fired(now, index);
        }
        for index in entered_watch {
            self.entered_watch_band(now, index);
        }
    }

    fn active_suppression(&self, rule: &str, now: DateTime<Utc>) -> Option<&KnownIssue> {
        self.suppressions
            .iter()
            .find(|s| s.rule == rule && s.until > now)
    }

    fn rule_fired(&mut self, now: DateTime<Utc>, index: usize) {
        let policy = Arc::clone(&self.policy);
        let rule = &policy.rules[index];
        let reading = self.rules[index].reading.clone();
        let described = self.describe_rule(index, now);
        if matches!(rule.tier, Tier::Watch | Tier::Ignore) {
            let action = policy.actions.for_tier(rule.tier);
            if rule.tier == Tier::Watch {
                let core = format!("{described}; watching only, no page");
                self.emit(
                    now,
                    rule.tier,
                    &rule.name,
                    Draft {
                        action,
                        cause: Cause::RuleFired,
                        guard: None,
                        reading,
                        core,
                        deadline: None,
                    },
                );
            }
            return;
        }
        if let Some(issue) = self.active_suppression(&rule.name, now) {
            let core = format!(
                "{described}; suppressed as a known issue until {}: {}",
                time_text(issue.until),
                issue.reason
            );
            self.rules[index].suppressed = true;
            self.emit(
                now,
                rule.tier,
                &rule.name,
                Draft {
                    action: Action::None,
                    cause: Cause::RuleFired,
                    guard: Some(Guard::KnownIssue),
                    reading,
                    core,
                    deadline: None,
                },
            );
            return;
        }
        self.rules[index].suppressed = false;
        let tier_action = policy.actions.for_tier(rule.tier);
        let preexisting = self.rules[index].preexisting;
        match self.incident.as_ref().map(|i| i.phase) {
            Some(Phase::Watching { .. }) => {
                let core = format!(
                    "{described}; not stable after the rollback: escalating (never a second automatic rollback)"
                );
                if let Some(incident) = &mut self.incident {
                    incident.phase = Phase::Escalated;
                }
                self.emit_incident_decision(
                    now,
                    rule.tier,
                    &rule.name,
                    Draft {
                        action: Action::Page,
                        cause: Cause::WatchFailed,
                        guard: Some(Guard::RollbackOfRollback),
                        reading,
                        core,
                        deadline: None,
                    },
                );
            }
            Some(Phase::RollingBack) | Some(Phase::Escalated) => {
                tracing::info!(rule = %rule.name, "rule fired while the incident is already being handled");
            }
            Some(Phase::Open) | None => {
                let opened = self.incident.is_none();
                if opened {
                    self.open_incident(now, rule.tier, &rule.name, rule.component.clone());
                }
                let (action, guard) = self.effective_action(now, tier_action, preexisting, false);
                let strongest = self.incident.as_ref().map_or(Action::None, |i| i.strongest);
                // One incident, one page: a later rule is announced only when it asks for more.
                if opened || action > strongest {
                    let core = format!(
                        "{described}; {}",
                        self.consequence(now, action, guard.as_ref(), &rule.name)
                    );
                    self.emit_incident_decision(
                        now,
                        rule.tier,
                        &rule.name,
                        Draft {
                            action,
                            cause: Cause::RuleFired,
                            guard,
                            reading,
                            core,
                            deadline: None,
                        },
                    );
                } else {
                    tracing::info!(rule = %rule.name, incident = ?self.incident.as_ref().map(|i| i.id), "rule fired within an open incident: already handled");
                }
            }
        }
    }

    fn entered_watch_band(&mut self, now: DateTime<Utc>, index: usize) {
        let rule = &self.policy.rules[index];
        let (name, action) = (rule.name.clone(), self.policy.actions.watch);
        let watch_above = rule.watch_above.unwrap_or(0.0);
        let threshold = rule.signal.threshold().unwrap_or(0.0);
        let reading = self.rules[index].reading.clone();
        let core = format!(
            "{}; in the watch band ({} to {}): logged and shown in status, no page",
            self.describe_rule(index, now),
            crate::units::format_percent(watch_above),
            crate::units::format_percent(threshold),
        );
        self.emit(
            now,
            Tier::Watch,
            &name,
            Draft {
                action,
                cause: Cause::WatchBand,
                guard: None,
                reading,
                core,
                deadline: None,
            },
        );
    }

    /// "error-rate (consider): error-rate 8.1% (95% lower bound 7.4%) > 5% over 2m of 9600 requests, held 2m since the deploy of v2.3.1 at 10:00:15Z"
    fn describe_rule(&self, index: usize, now: DateTime<Utc>) -> String {
        let rule = &self.policy.rules[index];
        let state = &self.rules[index];
        let reading = state.reading.as_ref().map_or_else(
            || "no reading".to_string(),
            |r| r.describe(rule, self.policy.evaluation.confidence),
        );
        let held = state
            .breach_since
            .or(state.band_since)
            .map_or_else(String::new, |since| {
                format!(", held {}", format_duration(now - since))
            });
        let deploy = self.deployment.as_ref().map_or_else(String::new, |d| {
            format!(
                " since the {} of {} at {}",
                if d.rollback { "rollback" } else { "deploy" },
                version_text(d.version.as_deref()),
                time_text(d.at)
            )
        });
        format!("{} ({}): {reading}{held}{deploy}", rule.name, rule.tier)
    }

    /// What the tier's action becomes once the guards have had their say.
    fn effective_action(
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
        if let Some(guard) = self.rollback_guard(now, preexisting, human) {
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

    /// The first reason not to roll back now, if any. `human`: a person asked
    /// (declare, approve), so the cooldown, which stops automatic flapping, does not apply.
    fn rollback_guard(&self, now: DateTime<Utc>, preexisting: bool, human: bool) -> Option<Guard> {
        let evaluation = &self.policy.evaluation;
        if self
            .incident
            .as_ref()
            .is_some_and(|i| i.phase == Phase::RollingBack)
        {
            return Some(Guard::InProgress);
        }
        let Some(deployment) = &self.deployment else {
            return Some(Guard::NoRecentDeploy);
        };
        if deployment.rollback {
            return Some(Guard::RollbackOfRollback);
        }
        if now - deployment.at > evaluation.recent_deploy_window {
            return Some(Guard::NoRecentDeploy);
        }
        if !human
            && self
                .last_rollback_at
                .is_some_and(|t| now - t < evaluation.cooldown)
        {
            return Some(Guard::Cooldown);
        }
        if preexisting && !human {
            return Some(Guard::Preexisting);
        }
        None
    }

    fn guard_text(&self, now: DateTime<Utc>, guard: &Guard, rule: &str) -> String {
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
    fn consequence(
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

    fn rollback_versions(&self) -> (Option<String>, Option<String>) {
        match &self.deployment {
            Some(d) => (d.version.clone(), d.previous.clone()),
            None => (self.last_seen_version.clone(), None),
        }
    }

    fn open_incident(
        &mut self,
        now: DateTime<Utc>,
        tier: Tier,
        rule: &str,
        component: Option<String>,
    ) {
        self.incidents_opened += 1;
        self.incident = Some(Incident {
            id: self.incidents_opened,
            opened_at: now,
            tier,
            rule: rule.to_string(),
            component,
            strongest: Action::None,
            acknowledged: false,
            held: false,
            deadline: None,
            phase: Phase::Open,
            declared: false,
            paged_at: None,
            unanswered_escalated: false,
            resumed_at: None,
            watch_extended_from: None,
            deadline_postponed_from: None,
            clear: ClearClock::default(),
            from_version: None,
            to_version: None,
        });
    }

    /// Emits a decision in the open incident and applies what it starts.
    fn emit_incident_decision(
        &mut self,
        now: DateTime<Utc>,
        tier: Tier,
        rule: &str,
        mut draft: Draft,
    ) {
        let (from, to) = self.rollback_versions();
        let page_timeout = self.policy.actions.page_timeout;
        let Some(incident) = &mut self.incident else {
            tracing::error!("incident decision without an incident: dropped");
            return;
        };
        incident.strongest = incident.strongest.max(draft.action);
        if incident.phase == Phase::Open && awaits_answer(draft.action, draft.cause) {
            incident.paged_at.get_or_insert(now);
        }
        match draft.action {
            Action::PageThenRollback => {
                draft.deadline = Some(now + page_timeout);
                incident.deadline = draft.deadline;
            }
            Action::Rollback => {
                incident.phase = Phase::RollingBack;
                incident.deadline = None;
                incident.from_version = from;
                incident.to_version = to;
                self.last_rollback_at = Some(now);
            }
            _ => {}
        }
        self.emit(now, tier, rule, draft);
    }

    /// Emits a decision that belongs to the open incident, with its tier and rule.
    fn emit_for_incident(&mut self, now: DateTime<Utc>, draft: Draft) {
        let Some(incident) = &self.incident else {
            return;
        };
        let (tier, rule) = (incident.tier, incident.rule.clone());
        self.emit_incident_decision(now, tier, &rule, draft);
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

    /// Rules of the consider and immediate tiers that are breaching now and not
    /// silenced by a known issue.
    fn breaching_rules(&self, now: DateTime<Utc>) -> Vec<usize> {
        self.policy
            .rules
            .iter()
            .enumerate()
            .filter(|(i, rule)| {
                let state = &self.rules[*i];
                rule.tier >= Tier::Consider
                    && (state.firing || state.breach_since.is_some())
                    && self.active_suppression(&rule.name, now).is_none()
            })
            .map(|(i, _)| i)
            .collect()
    }

    fn maintain_incident(&mut self, now: DateTime<Utc>) {
        let breaching = !self.breaching_rules(now).is_empty();
        let resolve_after = self.policy.evaluation.resolve_after;
        let max_gap = self.policy.evaluation.interval * 2;
        let Some(incident) = &mut self.incident else {
            return;
        };
        // A human's declaration is not the metrics' to close while it waits for its rollback.
        let awaiting_declared_rollback = incident.declared && incident.phase == Phase::Open;
        if !matches!(incident.phase, Phase::Open | Phase::Escalated) || awaiting_declared_rollback {
            return;
        }
        if breaching {
            incident.clear = ClearClock::default();
            return;
        }
        let clear_for = incident.clear.observe_clear(now, max_gap);
        if clear_for >= resolve_after {
            let unobserved = if incident.clear.before > TimeDelta::zero() {
                match incident.resumed_at {
                    Some(at) => format!(
                        " (observed time only: rollwatch was not running before {}, and a stretch without observations is not counted)",
                        time_text(at)
                    ),
                    None => " (observed time only: a stretch without observations is not counted)"
                        .to_string(),
                }
            } else {
                String::new()
            };
            let core = format!(
                "every rule clear for {}{unobserved}: incident resolved",
                format_duration(clear_for)
            );
            self.emit_for_incident(
                now,
                Draft {
                    action: Action::Notify,
                    cause: Cause::Recovered,
                    guard: Some(Guard::Recovered),
                    reading: None,
                    core,
                    deadline: None,
                },
            );
            self.incident = None;
        }
    }

    /// Nobody answered the incident's page within `escalate_after`: it goes to
    /// the escalation contacts, once. A page-then-rollback's deadline still
    /// stands.
    fn page_unanswered(&mut self, now: DateTime<Utc>) {
        let after = self.policy.actions.escalate_after;
        let Some(incident) = &mut self.incident else {
            return;
        };
        incident.unanswered_escalated = true;
        let Some(paged_at) = incident.paged_at else {
            return;
        };
        let due = paged_at + after;
        let late = if now > due {
            format!(
                " (due at {}, while rollwatch was not running)",
                time_text(due)
            )
        } else {
            String::new()
        };
        let deadline = incident.deadline;
        let rollback = deadline.map_or_else(String::new, |d| {
            format!(
                "; the automatic rollback at {} still follows unless acknowledged or held",
                time_text(d)
            )
        });
        let core = format!(
            "nobody acknowledged, held or approved the page of {} within {}{late}; escalating to the escalation contacts{rollback}",
            time_text(paged_at),
            format_duration(after)
        );
        self.emit_for_incident(
            now,
            Draft {
                action: Action::Page,
                cause: Cause::Unanswered,
                guard: None,
                reading: None,
                core,
                deadline,
            },
        );
    }

    /// A page-then-rollback deadline passed unanswered: roll back if the breach
    /// still stands on current evidence (or a human declared it), through the guards.
    fn deadline_passed(&mut self, now: DateTime<Utc>) {
        let Some(incident) = &mut self.incident else {
            return;
        };
        incident.deadline = None;
        let postponed = incident.deadline_postponed_from.take().map_or_else(String::new, |stored| {
            format!(
                " (due at {}, postponed after rollwatch restarted so the breach could be confirmed on current data)",
                time_text(stored)
            )
        });
        let (rule_name, declared) = (incident.rule.clone(), incident.declared);
        let firing: Vec<usize> = self
            .breaching_rules(now)
            .into_iter()
            .filter(|&i| self.rules[i].firing)
            .collect();
        let current: Vec<usize> = firing
            .iter()
            .copied()
            .filter(|&i| {
                let rule = &self.policy.rules[i];
                self.rules[i].evidence_is_current(now, rule.window.max(rule.hold_for))
            })
            .collect();
        let refusal = match (declared, firing.is_empty(), current.is_empty()) {
            (true, _, _) | (false, false, false) => None,
            (false, true, _) => Some((
                Guard::Recovered,
                format!(
                    "page-then-rollback deadline passed unanswered{postponed}, but {rule_name} is no longer breaching (or is a known issue): not rolling back"
                ),
            )),
            (false, false, true) => Some((
                Guard::NoData,
                format!(
                    "page-then-rollback deadline passed unanswered{postponed}, but there is no current data to confirm {rule_name}: not rolling back on stale evidence; the page stands"
                ),
            )),
        };
        if let Some((guard, core)) = refusal {
            self.emit_for_incident(
                now,
                Draft {
                    action: Action::None,
                    cause: Cause::DeadlinePassed,
                    guard: Some(guard),
                    reading: None,
                    core,
                    deadline: None,
                },
            );
            return;
        }
        let preexisting = current.iter().any(|&i| self.rules[i].preexisting);
        let (action, guard) = self.effective_action(now, Action::Rollback, preexisting, false);
        let (reading, described) = match current.first() {
            Some(&first) => (
                self.rules[first].reading.clone(),
                self.describe_rule(first, now),
            ),
            None => (None, format!("{rule_name} was declared by a human")),
        };
        let (action, guard) = match (action, guard) {
            (Action::Rollback, None) => (Action::Rollback, None),
            // Already paged: a guard turns the rollback into nothing new.
            (_, guard) => (Action::None, guard),
        };
        let core = format!(
            "no answer to the page within {}{postponed}; {described}; {}",
            format_duration(self.policy.actions.page_timeout),
            self.consequence(now, action, guard.as_ref(), &rule_name)
        );
        self.emit_for_incident(
            now,
            Draft {
                action,
                cause: Cause::DeadlinePassed,
                guard,
                reading,
                core,
                deadline: None,
            },
        );
    }

    /// For a watch taken up after a restart: what was not observed, and
    /// whether its end was extended.
    fn resumed_watch_note(&self, now: DateTime<Utc>) -> String {
        let Some(incident) = &self.incident else {
            return String::new();
        };
        let Some(resumed_at) = incident.resumed_at else {
            return String::new();
        };
        let extended = incident.watch_extended_from.map_or_else(String::new, |stored| {
            format!(
                "; its stored end {} was extended to {} to leave the longest rule's `for` plus one interval to judge",
                time_text(stored),
                time_text(now)
            )
        });
        format!(
            " (rollwatch took the watch up at {}: nothing was observed while it was not running{extended})",
            time_text(resumed_at)
        )
    }

    fn watch_ended(&mut self, now: DateTime<Utc>, saw_data: bool) {
        let duration = format_duration(self.policy.stabilization);
        let resumed = self.resumed_watch_note(now);
        // Stable means inside the bounds to the end: a breach still building
        // up when the watch ends (not yet held for its `for`) is not stable.
        let still_breaching = self
            .breaching_rules(now)
            .into_iter()
            .find(|&i| self.rules[i].breach_since.is_some());
        if saw_data && let Some(index) = still_breaching {
            let rule = self.policy.rules[index].clone();
            let reading = self.rules[index].reading.clone();
            let core = format!(
                "{}; still breaching at the end of the {duration} stabilization watch{resumed}: not stable after the rollback, escalating (never a second automatic rollback)",
                self.describe_rule(index, now)
            );
            if let Some(incident) = &mut self.incident {
                incident.phase = Phase::Escalated;
            }
            self.emit_incident_decision(
                now,
                rule.tier,
                &rule.name,
                Draft {
                    action: Action::Page,
                    cause: Cause::WatchFailed,
                    guard: Some(Guard::RollbackOfRollback),
                    reading,
                    core,
                    deadline: None,
                },
            );
            return;
        }
        if saw_data {
            let core =
                format!("stable for {duration} after the rollback{resumed}: incident resolved");
            self.emit_for_incident(
                now,
                Draft {
                    action: Action::Notify,
                    cause: Cause::Stable,
                    guard: None,
                    reading: None,
                    core,
                    deadline: None,
                },
            );
            self.incident = None;
        } else {
            if let Some(incident) = &mut self.incident {
                incident.phase = Phase::Escalated;
            }
            let core = format!(
                "no usable data during the {duration} stabilization watch{resumed}: cannot confirm the rollback helped; escalating"
            );
            self.emit_for_incident(
                now,
                Draft {
                    action: Action::Page,
                    cause: Cause::WatchFailed,
                    guard: Some(Guard::NoData),
                    reading: None,
                    core,
                    deadline: None,
                },
            );
        }
    }

    fn check_blind(&mut self, now: DateTime<Utc>, reason: &str) {
        if self.blind_paged {
            return;
        }
        let evaluation = &self.policy.evaluation;
        let Some(deployment) = self
            .deployment
            .as_ref()
            .filter(|d| now - d.at <= evaluation.recent_deploy_window)
        else {
            return;
        };
        let since = self
            .last_data_at
            .map_or(deployment.at, |t| t.max(deployment.at));
        if now - since < evaluation.blind_after {
            return;
        }
        self.blind_paged = true;
        let core = format!(
            "watchdog blind: no usable data for {} (last problem: {reason}) after the deploy of {} at {}; \
             cannot judge the deployment, paging a human; never rolling back on missing data",
            format_duration(now - since),
            version_text(deployment.version.as_deref()),
            time_text(deployment.at)
        );
        self.emit(
            now,
            Tier::Consider,
            "watchdog-blind",
            Draft {
                action: Action::Page,
                cause: Cause::Blind,
                guard: Some(Guard::NoData),
                reading: None,
                core,
                deadline: None,
            },
        );
    }

    fn declared(
        &mut self,
        now: DateTime<Utc>,
        tier: Tier,
        reason: &str,
        component: Option<String>,
    ) {
        let rule = "declare";
        if self.incident.is_none() {
            self.open_incident(now, tier, rule, component);
        }
        if let Some(incident) = &mut self.incident {
            incident.declared = true;
        }
        let tier_action = self.policy.actions.for_tier(tier);
        let (action, guard) = self.effective_action(now, tier_action, false, true);
        let core = format!(
            "declared {tier} by a human: {reason}; {}",
            self.consequence(now, action, guard.as_ref(), rule)
        );
        self.emit_incident_decision(
            now,
            tier,
            rule,
            Draft {
                action,
                cause: Cause::Declared,
                guard,
                reading: None,
                core,
                deadline: None,
            },
        );
    }

    fn approved(&mut self, now: DateTime<Utc>, by: Option<String>) {
        let by = by.unwrap_or_else(|| "a human".to_string());
        if self.incident.is_none() {
            self.open_incident(now, Tier::Consider, "approve", None);
        }
        if let Some(incident) = &mut self.incident {
            incident.held = false;
            incident.acknowledged = true;
            incident.deadline = None;
        }
        let (action, guard) = self.effective_action(now, Action::Rollback, false, true);
        let action = if guard.is_some() {
            Action::None
        } else {
            action
        };
        let rule = self
            .incident
            .as_ref()
            .map_or_else(String::new, |i| i.rule.clone());
        let core = format!(
            "rollback approved by {by}; {}",
            self.consequence(now, action, guard.as_ref(), &rule)
        );
        self.emit_for_incident(
            now,
            Draft {
                action,
                cause: Cause::Approved,
                guard,
                reading: None,
                core,
                deadline: None,
            },
        );
    }

    fn answered(&mut self, now: DateTime<Utc>, cause: Cause, by: Option<String>) {
        let by = by.unwrap_or_else(|| "a human".to_string());
        let Some(incident) = &mut self.incident else {
            tracing::warn!(answer = ?cause, %by, "answer without an open incident: ignored");
            return;
        };
        let cancelled = incident.deadline.take().map(time_text);
        let (verb, guard) = if cause == Cause::Held {
            incident.held = true;
            ("held", Guard::Held)
        } else {
            incident.acknowledged = true;
            ("acknowledged", Guard::Acknowledged)
        };
        let cancelled = cancelled.map_or_else(String::new, |t| {
            format!("; the automatic rollback due at {t} is cancelled")
        });
        let next = if cause == Cause::Held {
            "no rollback for this incident unless approved"
        } else {
            "escalation stops; approve or hold to decide"
        };
        let core = format!("{verb} by {by}{cancelled}; {next}");
        self.emit_for_incident(
            now,
            Draft {
                action: Action::None,
                cause,
                guard: Some(guard),
                reading: None,
                core,
                deadline: None,
            },
        );
    }

    fn suppress(&mut self, now: DateTime<Utc>, rule: String, until: DateTime<Utc>, reason: String) {
        match self.policy.rule(&rule) {
            None => tracing::warn!(%rule, "suppression for an unknown rule: ignored"),
            Some(r)
                if r.tier == Tier::Immediate
                    && !self.policy.evaluation.allow_immediate_suppression =>
            {
                tracing::warn!(%rule, "suppression of an immediate rule refused: the policy does not allow it")
            }
            Some(_) if until <= now => {
                tracing::warn!(%rule, %until, "suppression already expired: ignored")
            }
            Some(_) => {
                tracing::info!(%rule, %until, %reason, "known issue: rule suppressed");
                self.suppressions.retain(|s| s.rule != rule);
                self.suppressions.push(KnownIssue {
                    rule,
                    until,
                    reason,
                });
            }
        }
    }
}

/// Samples the widest rule window holds at the policy's interval, plus slack.
fn history_capacity(policy: &Policy) -> usize {
    let interval = policy.evaluation.interval.num_milliseconds().max(1);
    (policy.rules_span().num_milliseconds() / interval) as usize + 3
}

fn fixed_baseline(policy: &Policy) -> Option<LatencyBaseline> {
    policy.baseline.fixed_ms.map(|ms| LatencyBaseline {
        ms,
        source: "fixed",
    })
}

/// RFC 3339 in UTC, whole seconds unless the input had fractions.
pub fn time_text(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

fn version_text(version: Option<&str>) -> &str {
    version.unwrap_or("an unknown version")
}

#[cfg(test)]
mod tests;
