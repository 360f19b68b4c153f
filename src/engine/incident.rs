//! An incident's lifecycle: opening, the decisions that belong to it, human
//! answers and declarations, the page-then-rollback deadline, the escalation
//! of an unanswered page, the stabilization watch, and resolution.

use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;

use super::decision::{Cause, Guard, MANUAL_ROLLBACK_RULE, awaits_answer};
use super::guards::Asker;
use super::policy::{Action, Tier};
use super::{Draft, Engine, time_text};
use crate::units::format_duration;

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
    pub(super) clear: ClearClock,
    pub(super) from_version: Option<String>,
    pub(super) to_version: Option<String>,
}

impl Incident {
    /// When the unanswered page escalates, if it is still waiting for an
    /// answer: open (not rolling back or handed over), not acknowledged, held
    /// or approved, and not escalated yet.
    pub(super) fn unanswered_due(&self, escalate_after: TimeDelta) -> Option<DateTime<Utc>> {
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
pub(super) struct ClearClock {
    /// Clear time observed before the current stretch (before a gap, or in a
    /// previous run).
    pub(super) before: TimeDelta,
    /// The current stretch: its first and its latest clear observation.
    pub(super) since: Option<DateTime<Utc>>,
    pub(super) seen: Option<DateTime<Utc>>,
}

impl ClearClock {
    /// A clear observation at `now`; returns the clear time so far.
    pub(super) fn observe_clear(&mut self, now: DateTime<Utc>, max_gap: TimeDelta) -> TimeDelta {
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

    pub(super) fn total(&self) -> TimeDelta {
        match (self.since, self.seen) {
            (Some(since), Some(seen)) => self.before + (seen - since),
            _ => self.before,
        }
    }

    pub(super) fn equivalent_start(&self) -> Option<DateTime<Utc>> {
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

/// A human's rollback by hand: the fields of `Event::ManualRollback`.
pub(super) struct ManualRollback {
    pub(super) by: Option<String>,
    pub(super) reason: String,
    pub(super) component: Option<String>,
    pub(super) to: Option<String>,
    pub(super) force: bool,
}

impl Engine {
    /// The least time after a restart before every rule that can act has
    /// been judged on current data: the longest `for` of a consider or
    /// immediate rule, plus one interval.
    pub(super) fn least_to_judge(&self) -> TimeDelta {
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

    pub(super) fn open_incident(
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
    pub(super) fn emit_incident_decision(
        &mut self,
        now: DateTime<Utc>,
        tier: Tier,
        rule: &str,
        draft: Draft,
    ) {
        let versions = self.rollback_versions();
        self.emit_incident_decision_to(now, tier, rule, draft, versions);
    }

    /// `emit_incident_decision`, a rollback going from and to these versions.
    fn emit_incident_decision_to(
        &mut self,
        now: DateTime<Utc>,
        tier: Tier,
        rule: &str,
        mut draft: Draft,
        (from, to): (Option<String>, Option<String>),
    ) {
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
    pub(super) fn emit_for_incident(&mut self, now: DateTime<Utc>, draft: Draft) {
        let Some(incident) = &self.incident else {
            return;
        };
        let (tier, rule) = (incident.tier, incident.rule.clone());
        self.emit_incident_decision(now, tier, &rule, draft);
    }

    pub(super) fn maintain_incident(&mut self, now: DateTime<Utc>) {
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
    pub(super) fn page_unanswered(&mut self, now: DateTime<Utc>) {
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
    pub(super) fn deadline_passed(&mut self, now: DateTime<Utc>) {
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
        // The same test as a firing: a breach whose most recent evidence is
        // confidently healthy has ended, and a rollback would answer nothing.
        let still: Vec<usize> = current
            .iter()
            .copied()
            .filter(|&i| !self.rules[i].recovered_now())
            .collect();
        let refusal = match (
            declared,
            firing.is_empty(),
            current.is_empty(),
            still.is_empty(),
        ) {
            (true, ..) | (false, false, false, false) => None,
            (false, true, ..) => Some((
                Guard::Recovered,
                format!(
                    "page-then-rollback deadline passed unanswered{postponed}, but {rule_name} is no longer breaching (or is a known issue): not rolling back"
                ),
            )),
            (false, false, true, _) => Some((
                Guard::NoData,
                format!(
                    "page-then-rollback deadline passed unanswered{postponed}, but there is no current data to confirm {rule_name}: not rolling back on stale evidence; the page stands"
                ),
            )),
            (false, false, false, true) => {
                let described = self.describe_rule(current[0], now);
                Some((
                    Guard::Recovered,
                    format!(
                        "page-then-rollback deadline passed unanswered{postponed}; {described}: the burst has ended (its most recent evidence is healthy), not rolling back; the incident stays open until every rule is clear"
                    ),
                ))
            }
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
        let preexisting = still.iter().any(|&i| self.rules[i].preexisting);
        let (action, guard) = self.effective_action(now, Action::Rollback, preexisting, false);
        let (reading, described) = match still.first() {
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

    pub(super) fn watch_ended(&mut self, now: DateTime<Utc>, saw_data: bool) {
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

    pub(super) fn declared(
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

    /// A human's rollback by hand: refused by the guards of a human's
    /// rollback (nothing changes, one decision says why), or the rollback
    /// decision, in the open incident (its answer, as an approval) or in a
    /// new one (an escalated incident's attempt is over).
    pub(super) fn manual_rollback(&mut self, now: DateTime<Utc>, manual: ManualRollback) {
        let ManualRollback {
            by,
            reason,
            component,
            to,
            force,
        } = manual;
        let by = by.unwrap_or_else(|| "a human".to_string());
        let asked = format!("manual rollback by {by}: {reason}");
        if let Some(guard) = self.rollback_guard(now, Asker::Manual { force }) {
            let core = format!(
                "{asked}; not rolling back: {}",
                self.guard_text(now, &guard, MANUAL_ROLLBACK_RULE)
            );
            self.emit(
                now,
                Tier::Immediate,
                MANUAL_ROLLBACK_RULE,
                Draft {
                    action: Action::None,
                    cause: Cause::Declared,
                    guard: Some(guard),
                    reading: None,
                    core,
                    deadline: None,
                },
            );
            return;
        }
        let forced = self
            .rollback_guard(now, Asker::Manual { force: false })
            .map_or_else(String::new, |guard| {
                format!(
                    "; forced past a guard: {}",
                    self.guard_text(now, &guard, MANUAL_ROLLBACK_RULE)
                )
            });
        let (from, previous) = self.rollback_versions();
        let to = to.or(previous);
        match &mut self.incident {
            // The page's answer: the same incident, now the human's.
            Some(incident) if matches!(incident.phase, Phase::Open | Phase::Watching { .. }) => {
                incident.held = false;
                incident.acknowledged = true;
                incident.deadline = None;
                incident.component = component;
            }
            // None open, or an escalated attempt that is over: a new one starts.
            _ => {
                self.incident = None;
                self.open_incident(now, Tier::Immediate, MANUAL_ROLLBACK_RULE, component);
                if let Some(incident) = &mut self.incident {
                    incident.declared = true;
                }
            }
        }
        let core = format!(
            "{asked}{forced}; rolling back {} -> {}",
            from.as_deref().unwrap_or("the current version"),
            to.as_deref().unwrap_or("the previous version")
        );
        self.emit_incident_decision_to(
            now,
            Tier::Immediate,
            MANUAL_ROLLBACK_RULE,
            Draft {
                action: Action::Rollback,
                cause: Cause::Declared,
                guard: None,
                reading: None,
                core,
                deadline: None,
            },
            (from, to),
        );
    }

    pub(super) fn approved(&mut self, now: DateTime<Utc>, by: Option<String>) {
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

    pub(super) fn answered(&mut self, now: DateTime<Utc>, cause: Cause, by: Option<String>) {
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
}
