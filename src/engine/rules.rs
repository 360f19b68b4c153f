//! Each rule's state (Inactive → Pending → Firing, and its watch band), its
//! evaluation at every observation, what a firing does, known issues, and the
//! watchdog-blind page.

use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;

use super::decision::{Cause, Guard};
use super::explanation::version_text;
use super::incident::{Incident, Phase};
use super::policy::{Action, KnownIssue, Signal, Tier};
use super::recent;
use super::signals::{self, Reading, Verdict};
use super::{Draft, Engine, time_text};
use crate::units::{format_duration, format_percent};

/// A rule's place in Inactive → Pending → Firing, as in Prometheus alerting,
/// plus the same for its watch band.
#[derive(Clone, Debug, Default)]
pub(super) struct RuleState {
    /// First observation of the current unbroken breach.
    pub(super) breach_since: Option<DateTime<Utc>>,
    /// Unhealthy readings in the current breach.
    pub(super) breach_readings: u32,
    /// First observation of the current unbroken stay in the watch band or above.
    pub(super) band_since: Option<DateTime<Utc>>,
    /// The latest reading in the breach, and in the band.
    pub(super) last_unhealthy_at: Option<DateTime<Utc>>,
    pub(super) last_band_at: Option<DateTime<Utc>>,
    /// The first and the latest conclusive reading since the latest deployment.
    pub(super) first_conclusive_at: Option<DateTime<Utc>>,
    pub(super) last_conclusive_at: Option<DateTime<Utc>>,
    pub(super) firing: bool,
    pub(super) watching: bool,
    /// When the rule last fired (held for its `for`); survives a deployment.
    pub(super) last_fired_at: Option<DateTime<Utc>>,
    /// The current firing was turned into a log line by a known issue.
    pub(super) suppressed: bool,
    /// The rule fired within the baseline window before the latest deployment,
    /// or was breaching as it happened.
    pub(super) preexisting: bool,
    pub(super) reading: Option<Reading>,
    /// The same signal over the rule's short window: the most recent
    /// evidence (`None` for instant signals).
    pub(super) recent: Option<Reading>,
    /// The current breach held for `for` on a burst that had ended, and
    /// that was told (once per breach).
    pub(super) burst_told: bool,
}

/// What one verdict did to a rule's state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Update {
    /// Held for `for` on current evidence: the rule acts.
    pub(super) fired: bool,
    pub(super) entered_watch: bool,
    /// Held for `for`, but the most recent evidence is confidently healthy:
    /// a burst that ended, told once per breach.
    pub(super) burst_ended: bool,
}

impl RuleState {
    /// Applies a verdict. A breach interrupted by inconclusive readings for
    /// longer than `max_gap` starts over: two failed probes an hour apart are
    /// not one minute of "down". A breach that held for `for` fires only when
    /// `recovered_now` is false (`RuleState::recovered_now`); otherwise it
    /// stays unfired, so it fires when the burst resumes while the window
    /// still breaches.
    pub(super) fn update(
        &mut self,
        verdict: Verdict,
        now: DateTime<Utc>,
        hold_for: TimeDelta,
        max_gap: TimeDelta,
        recovered_now: bool,
    ) -> Update {
        // An inconclusive reading keeps the state as it is: no data neither
        // confirms a rule (it must be seen breaching to fire) nor clears it.
        if verdict == Verdict::Inconclusive {
            return Update::default();
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
        let breach_held = held(self.breach_since);
        let vetoed = breach_held && !self.firing && recovered_now;
        let firing = breach_held && !vetoed;
        let watching = !breach_held && held(self.band_since);
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
        if self.breach_since.is_none() {
            self.burst_told = false;
        }
        let burst_ended = vetoed && !self.burst_told;
        if burst_ended {
            self.burst_told = true;
        }
        Update {
            fired,
            entered_watch,
            burst_ended,
        }
    }

    /// Restarts the state machine at a new epoch.
    pub(super) fn reset(&mut self, preexisting: bool, last_fired_at: Option<DateTime<Utc>>) {
        *self = RuleState {
            preexisting,
            last_fired_at,
            ..RuleState::default()
        };
    }

    /// The latest reading is conclusive and recent: the rule's state rests on
    /// current evidence, not on what was seen before the data stopped.
    pub(super) fn evidence_is_current(&self, now: DateTime<Utc>, window: TimeDelta) -> bool {
        self.last_conclusive_at.is_some_and(|t| now - t <= window)
    }

    /// The most recent evidence says the breach is over: the rule's short
    /// window is confidently healthy. The one definition behind both a
    /// firing told instead of paged and a page-then-rollback deadline that
    /// does not roll back. Inconclusive (too little traffic to tell) is not
    /// recovered, and instant signals have no short window.
    pub(super) fn recovered_now(&self) -> bool {
        self.recent
            .as_ref()
            .is_some_and(|r| r.verdict == Verdict::Healthy)
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

impl Engine {
    pub(super) fn evaluate_rules(&mut self, now: DateTime<Utc>) {
        let mut fired = Vec::new();
        let mut entered_watch = Vec::new();
        let mut burst_ended = Vec::new();
        let mut any_conclusive = false;
        for (index, rule) in self.policy.rules.iter().enumerate() {
            let (z, baseline) = (self.policy.evaluation.z, self.baseline.as_ref());
            let reading = signals::read(rule, &self.history, now, self.epoch, baseline, z);
            let recent = recent::read_recent(rule, &self.history, now, self.epoch, baseline, z);
            // Only a rule that would page or roll back is held to its most
            // recent evidence; a known issue's log line stays as it was.
            let judged_now =
                rule.tier >= Tier::Consider && self.active_suppression(&rule.name, now).is_none();
            let state = &mut self.rules[index];
            any_conclusive |= reading.verdict != Verdict::Inconclusive;
            let max_gap = rule.hold_for + self.policy.evaluation.interval;
            state.recent = recent;
            let recovered_now = judged_now && state.recovered_now();
            let update = state.update(reading.verdict, now, rule.hold_for, max_gap, recovered_now);
            let (did_fire, did_enter_watch) = (update.fired, update.entered_watch);
            if update.burst_ended {
                burst_ended.push(index);
            }
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
        for index in burst_ended {
            self.told_burst_ended(now, index);
        }
    }

    /// A rule held for its `for` on a burst that has ended: told to the
    /// team's notice channels (in the open incident, if any), never paged
    /// and never rolled back.
    pub(super) fn told_burst_ended(&mut self, now: DateTime<Utc>, index: usize) {
        let rule = &self.policy.rules[index];
        let (tier, name) = (rule.tier, rule.name.clone());
        let burst = recent::burst(rule, &self.history, self.epoch, self.baseline.as_ref());
        let what = match (&rule.signal, &burst) {
            (_, None) => format!("{} over its threshold", rule.signal.name()),
            (Signal::ErrorRate { .. }, Some(b)) => format!("{} errors", format_percent(b.peak)),
            (Signal::UsersAffected { .. }, Some(b)) => {
                format!("{} of users affected", format_percent(b.peak))
            }
            (_, Some(b)) => format!("latency +{} over the baseline", format_percent(b.peak)),
        };
        let interval = self.policy.evaluation.interval;
        // A burst reaching back to the oldest sample kept may have begun earlier.
        let oldest = self.history.iter().next().map(|s| s.at());
        let span = burst.as_ref().map_or_else(String::new, |b| {
            let at_least = if oldest == Some(b.from) {
                "at least "
            } else {
                ""
            };
            format!(
                " for {at_least}{}",
                format_duration(b.to - b.from + interval)
            )
        });
        let when = match (&self.deployment, &burst) {
            (Some(d), Some(b)) if b.from > d.at => format!(
                " after its {} at {}",
                if d.rollback { "rollback" } else { "deploy" },
                time_text(d.at)
            ),
            (_, Some(b)) => format!(" from {}", time_text(b.from - interval)),
            _ => String::new(),
        };
        let version = self
            .deployment
            .as_ref()
            .map_or("the service", |d| version_text(d.version.as_deref()));
        let core = format!(
            "{version}: {what}{span}{when}, recovered by itself; no action ({}; a burst that has ended is told, not paged)",
            self.describe_rule(index, now)
        );
        let reading = self.rules[index].reading.clone();
        self.emit(
            now,
            tier,
            &name,
            Draft {
                action: Action::Notify,
                cause: Cause::BurstEnded,
                guard: Some(Guard::Recovered),
                reading,
                core,
                deadline: None,
            },
        );
    }

    pub(super) fn active_suppression(&self, rule: &str, now: DateTime<Utc>) -> Option<&KnownIssue> {
        self.suppressions
            .iter()
            .find(|s| s.rule == rule && s.until > now)
    }

    pub(super) fn rule_fired(&mut self, now: DateTime<Utc>, index: usize) {
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

    pub(super) fn entered_watch_band(&mut self, now: DateTime<Utc>, index: usize) {
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

    /// Rules of the consider and immediate tiers that are breaching now and not
    /// silenced by a known issue.
    pub(super) fn breaching_rules(&self, now: DateTime<Utc>) -> Vec<usize> {
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

    pub(super) fn check_blind(&mut self, now: DateTime<Utc>, reason: &str) {
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

    pub(super) fn suppress(
        &mut self,
        now: DateTime<Utc>,
        rule: String,
        until: DateTime<Utc>,
        reason: String,
    ) {
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
