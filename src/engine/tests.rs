//! Engine tests on a simulated clock: each test drives the engine the way the
//! runtime does (timeouts first, then the input) and asserts decisions with
//! their instants, in seconds from the start.

use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};

use super::decision::{Cause, Decision, Guard};
use super::input::{Event, LatencyQuantiles, Observation};
use super::policy::{Action, BaselineMode, Tier};
use super::signals::Verdict;
use super::*;

const PRODUCTION: &str = include_str!("../../policies/production.toml");
const STAGING: &str = include_str!("../../policies/staging.toml");

fn start() -> DateTime<Utc> {
    "2026-11-24T10:00:00Z".parse().unwrap()
}

/// A simulated target: healthy by default, 15 s polls.
struct Sim {
    engine: Engine,
    now: DateTime<Utc>,
    decisions: Vec<Decision>,
    /// Report rollbacks as finished at once (like backtest) unless false.
    finish_rollbacks: bool,
    version: String,
}

impl Sim {
    fn new(policy_text: &str) -> Sim {
        let policy =
            crate::policy::from_bytes("policy.toml", policy_text.as_bytes(), |_| None).unwrap();
        Sim {
            engine: Engine::new(Arc::new(policy)),
            now: start(),
            decisions: Vec::new(),
            finish_rollbacks: true,
            version: "v1".into(),
        }
    }

    fn production() -> Sim {
        Sim::new(PRODUCTION)
    }

    fn secs(&self) -> i64 {
        (self.now - start()).num_seconds()
    }

    fn healthy_observation(&self) -> Observation {
        Observation {
            at: self.now,
            up: Some(true),
            requests: Some(1200.0),
            errors: Some(6.0),
            latency_ms: LatencyQuantiles {
                p50: Some(80.0),
                p90: Some(150.0),
                p95: Some(200.0),
                p99: Some(400.0),
            },
            users: Some(900.0),
            users_affected: Some(4.0),
            checks: vec![
                ("data_integrity".into(), true),
                ("critical_features".into(), true),
            ],
            version: Some(self.version.clone()),
        }
    }

    fn wake_until(&mut self, at: DateTime<Utc>) {
        while let Some(deadline) = self.engine.poll_timeout().filter(|d| *d <= at) {
            self.engine.handle_timeout(deadline).unwrap();
            self.drain();
        }
    }

    fn drain(&mut self) {
        while let Some(decision) = self.engine.poll_decision() {
            if decision.action == Action::Rollback && self.finish_rollbacks {
                self.engine
                    .handle_rollback_finished(decision.at, decision.incident.unwrap(), Ok(()))
                    .unwrap();
            }
            self.decisions.push(decision);
        }
    }

    /// One poll with `change` applied to a healthy observation, then 15 s pass.
    fn poll(&mut self, change: impl Fn(&mut Observation)) {
        self.wake_until(self.now);
        let mut observation = self.healthy_observation();
        change(&mut observation);
        self.engine.handle_observation(&observation).unwrap();
        self.drain();
        self.now += TimeDelta::seconds(15);
    }

    fn polls(&mut self, n: usize, change: impl Fn(&mut Observation)) {
        for _ in 0..n {
            self.poll(&change);
        }
    }

    fn healthy(&mut self, n: usize) {
        self.polls(n, |_| {});
    }

    fn event(&mut self, event: Event) {
        self.wake_until(self.now);
        if let Event::Deploy {
            version: Some(v), ..
        } = &event
        {
            self.version = v.clone();
        }
        self.engine.handle_event(self.now, event).unwrap();
        self.drain();
    }

    fn deploy(&mut self, version: &str) {
        let previous = Some(self.version.clone());
        self.event(Event::Deploy {
            version: Some(version.into()),
            previous,
            migrations: vec![],
        });
    }

    fn no_data(&mut self, n: usize) {
        for _ in 0..n {
            self.wake_until(self.now);
            self.engine
                .handle_no_data(self.now, "connection refused")
                .unwrap();
            self.drain();
            self.now += TimeDelta::seconds(15);
        }
    }

    /// (seconds from start, action, rule) of every decision so far.
    fn log(&self) -> Vec<(i64, Action, String)> {
        self.decisions
            .iter()
            .map(|d| ((d.at - start()).num_seconds(), d.action, d.rule.clone()))
            .collect()
    }

    fn actions(&self) -> Vec<(i64, Action)> {
        self.decisions
            .iter()
            .map(|d| ((d.at - start()).num_seconds(), d.action))
            .collect()
    }

    fn rollback_decisions(&self) -> Vec<&Decision> {
        self.decisions
            .iter()
            .filter(|d| d.action == Action::Rollback)
            .collect()
    }

    fn rollbacks(&self) -> usize {
        self.decisions
            .iter()
            .filter(|d| d.action == Action::Rollback)
            .count()
    }

    fn pages(&self) -> usize {
        self.decisions.iter().filter(|d| d.action.pages()).count()
    }
}

fn errors(rate: f64) -> impl Fn(&mut Observation) {
    move |o| o.errors = Some(1200.0 * rate)
}

/// 30 min healthy, so the pre-deploy baseline exists, then a deploy of v2 at 1800 s.
fn deployed(policy: &str) -> Sim {
    let mut sim = Sim::new(policy);
    sim.healthy(120);
    sim.deploy("v2");
    sim
}

#[test]
fn error_rate_fires_after_its_for_time_and_pages_then_rolls_back_at_the_deadline() {
    let mut sim = deployed(PRODUCTION);
    sim.polls(60, errors(0.15));
    // First bad observation after the deploy instant: 1800 (left out, stamped at the deploy), 1815 counts.
    // for = 2m: fires at 1815 + 120 = 1935; deadline 10 min later at 2535.
    assert_eq!(
        sim.actions()[..3],
        [
            (1935, Action::PageThenRollback),
            (2535, Action::Rollback),
            (2535, Action::None)
        ]
    );
    let page = &sim.decisions[0];
    assert_eq!(page.rule, "error-rate");
    assert_eq!(page.tier, Tier::Consider);
    assert_eq!(
        page.deadline.map(|d| (d - start()).num_seconds()),
        Some(2535)
    );
    assert!(
        page.explanation.contains("error-rate 15%"),
        "{}",
        page.explanation
    );
    assert!(
        page.explanation.contains("lower bound"),
        "{}",
        page.explanation
    );
    assert!(page.explanation.contains("> 5%"), "{}", page.explanation);
    assert!(page.explanation.contains("sha256:"), "{}", page.explanation);
    let rollback = &sim.decisions[1];
    assert_eq!(
        (
            rollback.from_version.as_deref(),
            rollback.to_version.as_deref()
        ),
        (Some("v2"), Some("v1"))
    );
}

#[test]
fn staging_rolls_back_at_once_when_a_consider_rule_fires() {
    let mut sim = deployed(STAGING);
    sim.polls(20, errors(0.15));
    assert_eq!(sim.log()[0], (1935, Action::Rollback, "error-rate".into()));
}

#[test]
fn the_bound_not_the_raw_ratio_decides() {
    // 6 % raw errors: above 5 %, but at 120 requests per poll (960 in the 2 min
    // window) the lower bound stays below.
    let mut sim = deployed(STAGING);
    sim.polls(40, |o| {
        o.requests = Some(120.0);
        o.errors = Some(7.2);
    });
    assert_eq!(sim.rollbacks(), 0, "{:?}", sim.log());
    // The same ratio at 20x the traffic is significant.
    let mut sim = deployed(STAGING);
    sim.polls(40, |o| {
        o.requests = Some(2400.0);
        o.errors = Some(144.0);
    });
    assert_eq!(sim.rollbacks(), 1, "{:?}", sim.log());
}

#[test]
fn low_traffic_is_inconclusive_never_33_percent_errors() {
    let mut sim = deployed(STAGING);
    sim.polls(60, |o| {
        o.requests = Some(3.0);
        o.errors = Some(1.0);
    });
    assert!(sim.decisions.is_empty(), "{:?}", sim.log());
    let status = sim.engine.rule_status();
    let error_rate = status.iter().find(|s| s.rule == "error-rate").unwrap();
    assert_eq!(
        error_rate.reading.as_ref().unwrap().verdict,
        Verdict::Inconclusive
    );
}

#[test]
fn a_one_interval_blip_does_not_fire() {
    let mut sim = deployed(STAGING);
    sim.healthy(10);
    sim.poll(|o| {
        o.up = Some(false);
        o.errors = Some(1200.0);
    });
    sim.healthy(40);
    assert!(sim.decisions.is_empty(), "{:?}", sim.log());
}

#[test]
fn system_down_rolls_back_after_one_minute() {
    let mut sim = deployed(PRODUCTION);
    sim.polls(10, |o| o.up = Some(false));
    // Down from 1800 (the probe is judged per observation), for = 1m.
    assert_eq!(sim.log()[0], (1860, Action::Rollback, "system-down".into()));
    assert_eq!(sim.decisions[0].tier, Tier::Immediate);
}

#[test]
fn a_missing_probe_result_neither_confirms_nor_clears_down() {
    let mut sim = deployed(PRODUCTION);
    sim.polls(2, |o| o.up = Some(false));
    sim.polls(2, |o| o.up = None);
    sim.polls(1, |o| o.up = Some(false));
    assert_eq!(
        sim.log(),
        [
            (1860, Action::Rollback, "system-down".into()),
            (1860, Action::None, "system-down".into())
        ]
    );
}

#[test]
fn failing_checks_roll_back() {
    let mut sim = deployed(PRODUCTION);
    sim.polls(5, |o| {
        o.checks = vec![
            ("data_integrity".into(), false),
            ("critical_features".into(), true),
        ]
    });
    assert_eq!(
        sim.log()[0],
        (1830, Action::Rollback, "data-corruption".into())
    );
    let mut sim = deployed(PRODUCTION);
    sim.polls(6, |o| {
        o.checks = vec![
            ("data_integrity".into(), true),
            ("critical_features".into(), false),
        ]
    });
    assert_eq!(
        sim.log()[0],
        (1860, Action::Rollback, "feature-broken".into())
    );
}

#[test]
fn latency_is_judged_against_the_pre_deploy_baseline() {
    let mut sim = deployed(STAGING);
    // Baseline p95 = 200 ms; 360 ms is +80 %. min_samples = 4: conclusive from the
    // fourth sample after the deploy (1860), and for = 5m: fires at 2160.
    sim.polls(40, |o| o.latency_ms.p95 = Some(360.0));
    assert_eq!(
        sim.log()[0],
        (2160, Action::Rollback, "latency-degradation".into())
    );
    let reading = sim.decisions[0].reading.as_ref().unwrap();
    assert_eq!(
        reading.baseline.as_ref().map(|b| (b.ms, b.source)),
        Some((200.0, BaselineMode::PreDeploy))
    );
    assert!((reading.value.unwrap() - 0.8).abs() < 1e-9);
}

#[test]
fn latency_in_the_watch_band_is_logged_never_paged() {
    let mut sim = deployed(PRODUCTION);
    sim.polls(60, |o| o.latency_ms.p95 = Some(260.0)); // +30 %
    assert_eq!(sim.pages(), 0);
    assert_eq!(sim.rollbacks(), 0);
    assert_eq!(
        sim.log(),
        [(2160, Action::None, "latency-degradation".into())]
    );
    assert_eq!(sim.decisions[0].tier, Tier::Watch);
    assert_eq!(sim.decisions[0].cause, Cause::WatchBand);
}

#[test]
fn latency_below_twenty_percent_is_ignored() {
    let mut sim = deployed(PRODUCTION);
    sim.polls(60, |o| o.latency_ms.p95 = Some(220.0)); // +10 %
    assert!(sim.decisions.is_empty(), "{:?}", sim.log());
}

#[test]
fn without_a_deploy_latency_uses_the_fixed_baseline() {
    // No deployment seen: the fixed 300 ms baseline applies; 500 ms is +67 %, but with
    // no recent deploy the rule pages instead of rolling back.
    let mut sim = Sim::new(STAGING);
    sim.polls(40, |o| o.latency_ms.p95 = Some(500.0));
    assert_eq!(
        sim.log()[0],
        (345, Action::Page, "latency-degradation".into())
    );
    assert_eq!(sim.decisions[0].guard, Some(Guard::NoRecentDeploy));
    assert_eq!(
        sim.decisions[0]
            .reading
            .as_ref()
            .unwrap()
            .baseline
            .as_ref()
            .unwrap()
            .source,
        BaselineMode::Fixed
    );
}

#[test]
fn users_affected_fires_on_its_bound() {
    let mut sim = deployed(STAGING);
    sim.polls(30, |o| o.users_affected = Some(225.0)); // 25 %
    assert_eq!(
        sim.log()[0],
        (1935, Action::Rollback, "users-affected".into())
    );
}

#[test]
fn no_recent_deploy_pages_and_says_why() {
    let mut sim = Sim::new(STAGING);
    sim.healthy(10);
    sim.deploy("v2");
    sim.now += TimeDelta::hours(25);
    sim.polls(20, errors(0.15));
    let first = &sim.decisions[0];
    assert_eq!(
        (first.action, first.guard),
        (Action::Page, Some(Guard::NoRecentDeploy))
    );
    assert!(
        first
            .explanation
            .contains("outside the 24h recent-deploy window"),
        "{}",
        first.explanation
    );
    assert_eq!(sim.rollbacks(), 0);
}

#[test]
fn a_preexisting_breach_pages_instead_of_rolling_back() {
    let mut sim = Sim::new(STAGING);
    sim.polls(40, errors(0.15));
    sim.deploy("v2");
    sim.polls(40, errors(0.15));
    assert_eq!(sim.rollbacks(), 0, "{:?}", sim.log());
    assert!(
        sim.decisions
            .iter()
            .any(|d| d.guard == Some(Guard::Preexisting) || d.guard == Some(Guard::NoRecentDeploy))
    );
    let after_deploy: Vec<_> = sim
        .decisions
        .iter()
        .filter(|d| d.at >= start() + TimeDelta::seconds(600))
        .collect();
    assert!(after_deploy.iter().all(|d| d.action != Action::Rollback));
}

#[test]
fn a_rollback_that_does_not_help_escalates_and_never_rolls_back_twice() {
    let mut sim = deployed(STAGING);
    sim.polls(120, errors(0.15));
    assert_eq!(sim.rollbacks(), 1);
    let escalation = sim
        .decisions
        .iter()
        .find(|d| d.cause == Cause::WatchFailed)
        .expect("escalation");
    assert_eq!(escalation.action, Action::Page);
    assert_eq!(escalation.guard, Some(Guard::RollbackOfRollback));
    // Rolled back at 1935; the watch restarts windows there; fires again 2m after the first bad poll.
    assert_eq!((escalation.at - start()).num_seconds(), 1935 + 15 + 120);
}

#[test]
fn a_breach_still_building_when_the_watch_ends_is_not_stable() {
    let mut sim = deployed(STAGING);
    sim.polls(10, errors(0.15));
    assert_eq!(sim.rollbacks(), 1);
    sim.version = "v1".into();
    // Errors come back in the watch's last minute: too short to fire (2m), not stable either.
    sim.healthy(56);
    sim.polls(6, errors(0.15));
    let last = sim.decisions.last().unwrap();
    assert_eq!(
        (last.action, last.cause),
        (Action::Page, Cause::WatchFailed)
    );
    assert_eq!((last.at - start()).num_seconds(), 1935 + 900);
    assert!(
        last.explanation
            .contains("still breaching at the end of the 15m stabilization watch"),
        "{}",
        last.explanation
    );
    assert_eq!(sim.rollbacks(), 1, "never a second automatic rollback");
}

#[test]
fn a_stable_watch_resolves_the_incident() {
    let mut sim = deployed(STAGING);
    sim.polls(10, errors(0.15));
    assert_eq!(sim.rollbacks(), 1);
    sim.version = "v1".into(); // the rollback landed: not a new deployment
    sim.healthy(70);
    let last = sim.decisions.last().unwrap();
    assert_eq!((last.action, last.cause), (Action::Notify, Cause::Stable));
    assert_eq!((last.at - start()).num_seconds(), 1935 + 900);
    assert!(sim.engine.incident().is_none());
    assert!(sim.engine.deployment().unwrap().rollback);
}

#[test]
fn cooldown_stops_a_second_automatic_rollback() {
    let mut sim = deployed(STAGING);
    sim.polls(10, errors(0.15));
    sim.version = "v1".into();
    sim.healthy(61); // watch passes at 2835
    sim.deploy("v3");
    sim.polls(20, errors(0.15));
    let last = sim.decisions.last().unwrap();
    assert_eq!(
        (last.action, last.guard),
        (Action::Page, Some(Guard::Cooldown)),
        "{:#?}",
        sim.decisions
            .iter()
            .map(|d| (&d.at, &d.action, &d.explanation))
            .collect::<Vec<_>>()
    );
    assert_eq!(sim.rollbacks(), 1);
}

#[test]
fn no_rollback_while_one_runs() {
    let mut sim = deployed(STAGING);
    sim.finish_rollbacks = false;
    sim.polls(30, |o| {
        o.up = Some(false);
        o.errors = Some(180.0);
    });
    assert_eq!(sim.rollbacks(), 1, "{:?}", sim.log());
    assert_eq!(sim.engine.incident().unwrap().phase, Phase::RollingBack);
}

#[test]
fn a_failed_rollback_escalates() {
    let mut sim = deployed(STAGING);
    sim.finish_rollbacks = false;
    sim.polls(5, |o| o.up = Some(false));
    let incident = sim.decisions[0].incident.unwrap();
    sim.engine
        .handle_rollback_finished(
            sim.now,
            incident,
            Err("rollback-production.sh exited 1".into()),
        )
        .unwrap();
    sim.drain();
    let last = sim.decisions.last().unwrap();
    assert_eq!(
        (last.action, last.cause),
        (Action::Page, Cause::RollbackFailed)
    );
    assert!(last.explanation.contains("exited 1"));
    assert_eq!(sim.engine.incident().unwrap().phase, Phase::Escalated);
}

#[test]
fn a_known_issue_turns_firing_into_a_log_line_until_it_expires() {
    let mut sim = deployed(STAGING);
    let until = sim.now + TimeDelta::minutes(5);
    sim.event(Event::Suppress {
        rule: "error-rate".into(),
        until,
        reason: "fix in review".into(),
    });
    sim.polls(40, errors(0.15));
    assert_eq!(sim.actions()[0], (1935, Action::None));
    assert_eq!(sim.decisions[0].guard, Some(Guard::KnownIssue));
    // Expired at 2100: the still-firing rule acts on the next poll.
    assert_eq!(sim.log()[1], (2100, Action::Rollback, "error-rate".into()));
}

#[test]
fn immediate_rules_cannot_be_suppressed_unless_allowed() {
    let mut sim = deployed(STAGING);
    let until = sim.now + TimeDelta::hours(1);
    sim.event(Event::Suppress {
        rule: "system-down".into(),
        until,
        reason: "flaky probe".into(),
    });
    sim.polls(6, |o| o.up = Some(false));
    assert_eq!(sim.rollbacks(), 1);
}

#[test]
fn ack_cancels_the_automatic_rollback() {
    let mut sim = deployed(PRODUCTION);
    sim.polls(10, errors(0.15));
    sim.event(Event::Ack {
        by: Some("alice".into()),
    });
    sim.polls(80, errors(0.15));
    assert_eq!(sim.rollbacks(), 0, "{:?}", sim.log());
    let ack = sim
        .decisions
        .iter()
        .find(|d| d.cause == Cause::Acknowledged)
        .unwrap();
    assert!(ack.explanation.contains("alice"));
    assert!(ack.explanation.contains("cancelled"));
    assert_eq!(sim.pages(), 1);
}

#[test]
fn hold_means_no_rollback_for_the_incident_but_approve_rolls_back_at_once() {
    let mut sim = deployed(PRODUCTION);
    sim.polls(10, errors(0.15));
    sim.event(Event::Hold { by: None });
    sim.polls(50, |o| {
        o.errors = Some(180.0);
        o.up = Some(false);
    });
    assert_eq!(sim.rollbacks(), 0, "{:?}", sim.log());
    let at = sim.secs();
    sim.event(Event::Approve {
        by: Some("bob".into()),
    });
    assert_eq!(sim.log().last().unwrap().0, at);
    assert_eq!(
        sim.decisions
            .iter()
            .filter(|d| d.action == Action::Rollback)
            .count(),
        1
    );
}

#[test]
fn a_declaration_acts_at_once() {
    let mut sim = deployed(PRODUCTION);
    sim.healthy(4);
    sim.event(Event::Declare {
        tier: Tier::Immediate,
        reason: "critical security vulnerability".into(),
        component: None,
    });
    assert_eq!(sim.log()[0], (1860, Action::Rollback, "declare".into()));
    assert!(
        sim.decisions[0]
            .explanation
            .contains("critical security vulnerability")
    );
}

#[test]
fn metrics_outage_after_a_deploy_pages_blind_and_never_rolls_back() {
    let mut sim = deployed(PRODUCTION);
    sim.no_data(40);
    assert_eq!(sim.log(), [(2100, Action::Page, "watchdog-blind".into())]);
    assert_eq!(sim.decisions[0].guard, Some(Guard::NoData));
}

#[test]
fn a_version_change_is_a_deployment() {
    let mut sim = Sim::new(STAGING);
    sim.healthy(120);
    sim.version = "v2".into();
    sim.polls(20, errors(0.15));
    let rollback = sim
        .decisions
        .iter()
        .find(|d| d.action == Action::Rollback)
        .expect("rollback");
    assert_eq!(
        (
            rollback.from_version.as_deref(),
            rollback.to_version.as_deref()
        ),
        (Some("v2"), Some("v1"))
    );
    assert_eq!((rollback.at - start()).num_seconds(), 1815 + 120);
}

#[test]
fn time_going_backwards_is_refused_and_changes_nothing() {
    let mut sim = Sim::production();
    sim.healthy(3);
    let before = sim.engine.observations();
    let late = Observation::new(start());
    assert!(matches!(
        sim.engine.handle_observation(&late),
        Err(InputError::TimeWentBackwards { .. })
    ));
    assert_eq!(sim.engine.observations(), before);
}

#[test]
fn history_is_bounded_by_the_policy_windows() {
    let mut sim = Sim::production();
    sim.healthy(2000);
    // Full samples go back over the widest rule window (latency, 5 min: 20 polls,
    // plus one interval of margin); the 30 min baseline keeps latency values only.
    assert!(
        sim.engine.history_len() <= 22,
        "{}",
        sim.engine.history_len()
    );
}

#[test]
fn a_rule_fires_only_on_an_observation_that_shows_the_breach() {
    // Down at 1800 and 1815, then 4 polls without a probe result: the 1m has
    // passed, but nobody saw the system down at 1860; it fires when it is seen again.
    let mut sim = deployed(PRODUCTION);
    sim.polls(2, |o| o.up = Some(false));
    sim.polls(4, |o| o.up = None);
    assert!(sim.decisions.is_empty(), "{:?}", sim.log());
    sim.polls(1, |o| o.up = Some(false));
    assert_eq!(sim.log()[0], (1890, Action::Rollback, "system-down".into()));
}

#[test]
fn a_breach_anywhere_in_the_baseline_window_makes_the_regression_preexisting() {
    // Errors from 300 s to 600 s, healthy until the deploy at 1800 s (within the
    // 30m baseline window), errors again after it: rolling back would not fix it.
    let mut sim = Sim::new(STAGING);
    sim.healthy(20);
    sim.polls(20, errors(0.15));
    sim.healthy(80);
    sim.deploy("v2");
    sim.polls(20, errors(0.15));
    assert_eq!(sim.rollbacks(), 0, "{:?}", sim.log());
    let last = sim
        .decisions
        .iter()
        .rfind(|d| d.cause == Cause::RuleFired)
        .unwrap();
    assert_eq!(
        (last.action, last.guard),
        (Action::Page, Some(Guard::Preexisting))
    );
    assert!(
        last.explanation
            .contains("already breaching before the deploy of v2"),
        "{}",
        last.explanation
    );
}

#[test]
fn a_rule_unhealthy_through_a_short_sampling_counts_as_confirmed() {
    let mut sim = deployed(STAGING);
    // Three unhealthy readings: far less than the 2m `for`.
    sim.polls(3, errors(0.15));
    assert!(sim.decisions.is_empty());
    let end = sim.now;
    sim.engine.handle_sampling_end(end).unwrap();
    sim.drain();
    assert_eq!(sim.log()[0], (1845, Action::Rollback, "error-rate".into()));
    // A rule that was healthy once during the sampling is not confirmed (the
    // poll stamped at the deploy instant is left out of the window: two polls).
    let mut sim = deployed(STAGING);
    sim.polls(2, errors(0.0));
    sim.polls(3, errors(0.15));
    let end = sim.now;
    sim.engine.handle_sampling_end(end).unwrap();
    sim.drain();
    assert!(sim.decisions.is_empty(), "{:?}", sim.log());
}

// ---------------------------------------------------------------------------
// 1. Wrong decisions
// ---------------------------------------------------------------------------

/// SPEC 3: "A known-issue suppression turns that rule's firing into a log line."
/// On-call is paged for error-rate, recognises a known issue and suppresses the
/// rule well before the page-then-rollback deadline. `deadline_passed` filters
/// on the `suppressed` flag, which is only set when a rule *fires* under an
/// active suppression, so the rollback goes ahead at the deadline anyway.
#[test]
fn regression_suppression_added_after_the_page_stops_the_rollback_at_the_deadline() {
    let mut sim = deployed(PRODUCTION);
    sim.polls(10, errors(0.15)); // fires at 1935: page-then-rollback, deadline 2535
    assert_eq!(sim.decisions[0].action, Action::PageThenRollback);
    let until = sim.now + TimeDelta::hours(2);
    sim.event(Event::Suppress {
        rule: "error-rate".into(),
        until,
        reason: "known retry storm, fix in review".into(),
    });
    sim.polls(50, errors(0.15)); // well past the 2535 deadline
    assert!(
        sim.rollback_decisions().is_empty(),
        "a suppressed rule rolled back at the deadline: {:?}",
        sim.log()
    );
}

/// "One bad interval is a blip", but a single failed health probe 20 min before
/// a deploy marks `system-down` as preexisting for the whole epoch
/// (`last_breach_at` is set by any one unhealthy reading). When the new version
/// then takes the system completely down, the immediate tier pages instead of
/// rolling back.
#[test]
fn regression_one_failed_probe_before_the_deploy_does_not_block_the_rollback() {
    let mut sim = Sim::new(STAGING);
    sim.healthy(40);
    sim.poll(|o| o.up = Some(false)); // a blip at 600 s: never fired
    sim.healthy(79);
    sim.deploy("v2"); // 1800 s
    sim.polls(20, |o| o.up = Some(false)); // v2 is completely down
    assert_eq!(
        sim.rollback_decisions().len(),
        1,
        "system completely down after a deploy was not rolled back: {:?}",
        sim.log()
    );
}

/// SPEC 3: a rule must hold for its `for` time over consecutive observations.
/// An inconclusive reading keeps `breach_since`, and the time it covers counts
/// toward `for` without bound: one failed probe, an hour with no probe result,
/// then one more failed probe fires `system-down` (for = 1m) and rolls back.
#[test]
fn regression_two_failed_probes_an_hour_apart_do_not_make_one_minute_down() {
    let mut sim = deployed(STAGING);
    sim.healthy(4);
    sim.poll(|o| o.up = Some(false));
    sim.polls(240, |o| o.up = None); // an hour without a probe result
    sim.poll(|o| o.up = Some(false));
    assert!(
        sim.rollback_decisions().is_empty(),
        "two failed probes an hour apart fired a 1m rule: {:?}",
        sim.log()
    );
}

/// SPEC 3: a metrics outage after a deploy is no data and must page "watchdog
/// blind". With a `[health]` probe configured (as `policies/examples/scrape.toml`
/// does) the poller turns every failed scrape into an observation carrying only
/// `up` (poll.rs: `source_failed && !has_anything`), and `Sample::has_data`
/// counts `up` as data, so the blind page never comes while error rate, latency
/// and users are unjudgeable.
#[test]
fn regression_a_metrics_outage_with_a_healthy_probe_pages_blind() {
    let mut sim = deployed(PRODUCTION);
    // What poll.rs hands the engine when /metrics fails and /healthz answers 200.
    for _ in 0..40 {
        sim.wake_until(sim.now);
        let observation = Observation {
            up: Some(true),
            ..Observation::new(sim.now)
        };
        sim.engine.handle_observation(&observation).unwrap();
        sim.drain();
        sim.now += TimeDelta::seconds(15);
    }
    assert!(
        sim.decisions.iter().any(|d| d.cause == Cause::Blind),
        "10 min without metrics after a deploy and no blind page: {:?}",
        sim.log()
    );
}

/// SPEC 3: "never a rollback of a rollback". On-call rolls back by hand (the
/// runbook's script) while the page is open: the version goes back to v1, and
/// `deployed()` records that as an ordinary forward deployment (rollback: false).
/// When v1 then fails its data-integrity check against v2's migrated schema,
/// rollwatch "rolls back" v1 -> v2, to the version the human just removed.
#[test]
fn regression_a_manual_rollback_is_never_rolled_forward() {
    let mut sim = deployed(PRODUCTION);
    sim.polls(10, errors(0.15)); // page-then-rollback at 1935
    sim.version = "v1".into(); // on-call ran rollback-production.sh
    sim.healthy(4);
    sim.polls(10, |o| {
        o.checks = vec![
            ("data_integrity".into(), false),
            ("critical_features".into(), true),
        ]
    });
    let forward: Vec<_> = sim
        .rollback_decisions()
        .into_iter()
        .filter(|d| d.to_version.as_deref() == Some("v2"))
        .map(|d| (d.from_version.clone(), d.to_version.clone(), d.rule.clone()))
        .collect();
    assert!(
        forward.is_empty(),
        "rolled a manual rollback forward to the bad version: {forward:?}"
    );
}

/// Live, a rollback procedure runs for minutes and the scraped build_info shows
/// the target version before `handle_rollback_finished` arrives. `deployed()`
/// treats that as a new forward deployment and recomputes the latency baseline
/// from the 30 min before it, which by then is mostly the bad version. The
/// stabilization watch then judges the unchanged +150 % latency against that
/// polluted baseline and reports "stable" instead of escalating.
#[test]
fn regression_our_rollback_landing_early_keeps_the_baseline_and_the_watch_escalates() {
    let slow = |o: &mut Observation| o.latency_ms.p95 = Some(500.0);
    let mut sim = deployed(PRODUCTION);
    sim.finish_rollbacks = false;
    sim.polls(66, slow); // fires at 2160, deadline 2760: rollback decided
    let rollback = sim.rollback_decisions()[0].clone();
    sim.version = "v1".into(); // the procedure has deployed v1; smoke tests still running
    sim.polls(4, slow);
    sim.engine
        .handle_rollback_finished(sim.now, rollback.incident.unwrap(), Ok(()))
        .unwrap();
    sim.drain();
    sim.polls(70, slow); // the rollback did not help: latency is still +150 %
    let after: Vec<_> = sim
        .decisions
        .iter()
        .filter(|d| matches!(d.cause, Cause::Stable | Cause::WatchFailed))
        .map(|d| d.cause)
        .collect();
    assert_eq!(
        after,
        [Cause::WatchFailed],
        "baseline after the early landing: {:?}; {:?}",
        sim.engine.baseline(),
        sim.log()
    );
}

/// A rolling deploy: v2 is announced at 1800 and serves errors at once, but the
/// scraped build_info still says v1 for the first polls. Each observed version
/// change is a new deployment, so v1 "is deployed" at 1800 and v2 again at
/// 1845; the errors seen in between count as a breach *before* v2, v2's
/// regression is marked preexisting, and staging pages instead of rolling back.
#[test]
fn regression_old_version_seen_during_a_rollout_is_not_a_deployment() {
    let mut sim = deployed(STAGING);
    sim.version = "v1".into(); // build_info not yet updated
    sim.polls(3, errors(0.15));
    sim.version = "v2".into();
    sim.polls(20, errors(0.15));
    assert_eq!(
        sim.rollback_decisions().len(),
        1,
        "v2's regression was not rolled back: {:?}",
        sim.log()
    );
}

/// A human declares a consider-tier incident in production (something the
/// metrics cannot see). The page says "rolling back at T unless acknowledged or
/// held", but `maintain_incident` only looks at metric rules: with every rule
/// clear it resolves the declared incident after `resolve_after` (5 min),
/// silently dropping the announced deadline. (Had it survived, `deadline_passed`
/// would also not roll back: it only looks for firing rules.)
#[test]
fn regression_a_declared_consider_incident_rolls_back_at_its_deadline() {
    let mut sim = deployed(PRODUCTION);
    sim.healthy(4);
    sim.event(Event::Declare {
        tier: Tier::Consider,
        reason: "checkout broken for EU customers".into(),
        component: None,
    });
    assert_eq!(sim.decisions[0].action, Action::PageThenRollback);
    let deadline = sim.decisions[0].deadline.expect("a deadline");
    sim.healthy(50); // nobody answers; metrics cannot see the problem
    assert!(
        sim.rollback_decisions().iter().any(|d| d.at == deadline),
        "the rollback announced for {deadline} did not happen: {:?}",
        sim.log()
    );
}

/// SPEC 3: "sustained no-data after a deploy pages a human but never rolls
/// back". After a page-then-rollback, the metrics source dies; `deadline_passed`
/// trusts the `firing` flag from readings up to 10 minutes old and rolls back
/// without any current evidence.
#[test]
fn regression_the_deadline_never_rolls_back_on_stale_evidence() {
    let mut sim = deployed(PRODUCTION);
    sim.polls(10, errors(0.15)); // page-then-rollback at 1935, deadline 2535
    sim.no_data(60); // Prometheus down from 1950 to 2850
    assert!(
        sim.rollback_decisions().is_empty(),
        "rolled back after 10 min without data: {:?}",
        sim.log()
    );
}

#[test]
fn a_reloaded_policy_applies_at_once_and_keeps_the_incident_and_the_breach() {
    let mut sim = deployed(STAGING);
    // One minute into a 15 % breach (the rule needs two).
    sim.polls(4, errors(0.15));
    assert_eq!(sim.rollbacks(), 0);
    // An edit raises the threshold past the breach: it no longer fires.
    let raised = STAGING.replacen("threshold = \"5%\"", "threshold = \"20%\"", 1);
    let policy = crate::policy::from_bytes("policy.toml", raised.as_bytes(), |_| None).unwrap();
    let sha = policy.sha256.clone();
    sim.engine.replace_policy(Arc::new(policy));
    assert_eq!(sim.engine.policy().sha256, sha);
    sim.polls(20, errors(0.15));
    assert_eq!(sim.rollbacks(), 0, "{:?}", sim.log());
    // Back to 5 %: the breach, still going, fires within the rule's 2 minutes.
    let policy = crate::policy::from_bytes("policy.toml", STAGING.as_bytes(), |_| None).unwrap();
    sim.engine.replace_policy(Arc::new(policy));
    sim.polls(9, errors(0.15));
    assert_eq!(sim.rollbacks(), 1, "{:?}", sim.log());
    assert!(
        sim.rollback_decisions()[0]
            .explanation
            .contains(sim.engine.policy().short_hash())
    );
}

// --- Timers that decide: the escalation of an unanswered page, the deadline,
// the watch's end and `resolve_after`, live and restored after a restart ------

/// Production with `consider` paging only (never rolling back) and an
/// unanswered page escalating after `escalate_after`.
fn paging_only(escalate_after: &str) -> String {
    PRODUCTION.replacen(
        "consider = \"page-then-rollback\"",
        "consider = \"page\"",
        1,
    ) + &format!("\n[notify]\nescalate_after = \"{escalate_after}\"\n")
}

fn at(secs: i64) -> DateTime<Utc> {
    start() + TimeDelta::seconds(secs)
}

fn unanswered(sim: &Sim) -> Vec<&Decision> {
    sim.decisions
        .iter()
        .filter(|d| d.cause == Cause::Unanswered)
        .collect()
}

#[test]
fn an_unanswered_page_escalates_once_exactly_at_paged_at_plus_escalate_after() {
    let mut sim = deployed(&paging_only("100s"));
    sim.polls(10, errors(0.15)); // paged at 1935
    assert_eq!(sim.log(), [(1935, Action::Page, "error-rate".into())]);
    // The escalation is the engine's deadline, not a poll's business.
    assert_eq!(sim.engine.poll_timeout(), Some(at(1935 + 100)));
    sim.polls(120, errors(0.15)); // 30 more minutes, nobody answers
    let escalations = unanswered(&sim);
    assert_eq!(escalations.len(), 1, "{:?}", sim.log());
    let escalation = escalations[0];
    // 2035 is no poll's instant (polls are 15 s apart from 0): it is the deadline's.
    assert_eq!(
        (escalation.at, escalation.action, escalation.rule.as_str()),
        (at(2035), Action::Page, "error-rate")
    );
    assert!(
        escalation
            .explanation
            .contains("nobody acknowledged, held or approved the page of 2026-11-24T10:32:15Z within 1m40s; escalating to the escalation contacts"),
        "{}",
        escalation.explanation
    );
    assert_eq!(escalation.incident, sim.decisions[0].incident);
    assert_eq!(sim.engine.poll_timeout(), None, "nothing more is due");
}

#[test]
fn an_acknowledged_held_or_approved_page_never_escalates() {
    for answer in [
        Event::Ack { by: None },
        Event::Hold { by: None },
        Event::Approve { by: None },
    ] {
        let name = answer.name();
        let mut sim = deployed(&paging_only("100s"));
        sim.polls(10, errors(0.15)); // paged at 1935
        sim.now = at(2034); // one second before the escalation
        sim.event(answer);
        sim.now = at(2040);
        sim.polls(120, errors(0.15));
        assert!(
            unanswered(&sim).is_empty(),
            "escalated after {name}: {:?}",
            sim.log()
        );
    }
}

#[test]
fn a_page_then_rollback_escalates_at_its_time_and_still_rolls_back_at_its_deadline() {
    let policy = format!("{PRODUCTION}\n[notify]\nescalate_after = \"5m\"\n");
    let mut sim = deployed(&policy);
    sim.polls(60, errors(0.15));
    assert_eq!(
        sim.actions()[..3],
        [
            (1935, Action::PageThenRollback),
            (2235, Action::Page),
            (2535, Action::Rollback),
        ],
        "{:?}",
        sim.log()
    );
    let escalation = unanswered(&sim)[0];
    assert_eq!(escalation.deadline, Some(at(2535)));
    assert!(
        escalation
            .explanation
            .contains("the automatic rollback at 2026-11-24T10:42:15Z still follows"),
        "{}",
        escalation.explanation
    );
    assert_eq!(unanswered(&sim).len(), 1);
}

#[test]
fn a_rollback_at_the_deadline_answers_the_page_before_it_escalates() {
    // page_timeout 10m, escalate_after 15m (the default): the rollback comes first.
    let mut sim = deployed(PRODUCTION);
    sim.polls(120, errors(0.15));
    assert_eq!(sim.rollbacks(), 1);
    assert!(unanswered(&sim).is_empty(), "{:?}", sim.log());
}

#[test]
fn a_second_rule_firing_in_the_incident_does_not_restart_the_escalation_clock() {
    let mut sim = deployed(&paging_only("5m"));
    sim.polls(10, errors(0.15)); // error-rate pages at 1935
    // Latency degrades too: latency-degradation fires within the same
    // incident (nothing new to announce), and the page's clock runs on.
    sim.polls(40, |o| {
        o.errors = Some(180.0);
        o.latency_ms.p95 = Some(500.0);
    });
    assert!(
        sim.engine.rule_status().iter().filter(|r| r.firing).count() >= 2,
        "{:?}",
        sim.engine.rule_status()
    );
    assert_eq!(
        unanswered(&sim).iter().map(|d| d.at).collect::<Vec<_>>(),
        [at(1935 + 300)],
        "{:?}",
        sim.log()
    );
}

/// What a restarted rollwatch hands back for the incident `sim` has open.
fn resumed_from(sim: &Sim) -> Resumed {
    let incident = sim.engine.incident().expect("an open incident");
    Resumed {
        opened_at: incident.opened_at,
        tier: incident.tier,
        rule: incident.rule.clone(),
        component: None,
        phase: incident.phase,
        phase_at: incident.opened_at,
        announced: incident.strongest,
        acknowledged: incident.acknowledged,
        held: incident.held,
        deadline: incident.deadline,
        declared: incident.declared,
        from_version: Some("v2".into()),
        to_version: Some("v1".into()),
        paged_at: incident.paged_at,
        unanswered_escalated: incident.unanswered_escalated,
        clear_for: TimeDelta::zero(),
    }
}

/// A fresh engine (a restarted rollwatch) taking `resumed` up at `secs`, with
/// the v2 deployment of 1800 restored.
fn restarted(policy: &str, secs: i64, resumed: Resumed) -> Sim {
    let mut sim = Sim::new(policy);
    sim.version = "v2".into();
    sim.now = at(secs);
    sim.engine.restore_deployment(Deployment {
        at: at(1800),
        version: Some("v2".into()),
        previous: Some("v1".into()),
        migrations: vec![],
        rollback: false,
        seen: true,
    });
    sim.engine.resume_incident(sim.now, resumed).unwrap();
    sim
}

#[test]
fn a_resumed_page_escalates_at_the_original_instant() {
    let policy = paging_only("100s");
    let mut before = deployed(&policy);
    before.polls(10, errors(0.15)); // paged at 1935; killed 3 s after the page
    let resumed = resumed_from(&before);
    assert_eq!(resumed.paged_at, Some(at(1935)));
    let mut after = restarted(&policy, 1938, resumed);
    assert_eq!(after.engine.poll_timeout(), Some(at(2035)));
    after.now = at(1950);
    after.polls(60, errors(0.15));
    let escalations = unanswered(&after);
    assert_eq!(
        escalations.iter().map(|d| d.at).collect::<Vec<_>>(),
        [at(2035)],
        "{:?}",
        after.log()
    );
    assert!(
        escalations[0]
            .explanation
            .contains("the page of 2026-11-24T10:32:15Z")
    );
}

#[test]
fn a_resumed_page_already_escalated_never_escalates_again() {
    let policy = paging_only("100s");
    let mut before = deployed(&policy);
    before.polls(20, errors(0.15)); // paged at 1935, escalated at 2035
    assert_eq!(unanswered(&before).len(), 1);
    let mut after = restarted(&policy, 2100, resumed_from(&before));
    after.polls(60, errors(0.15));
    assert!(unanswered(&after).is_empty(), "{:?}", after.log());
}

#[test]
fn a_resumed_page_whose_escalation_fell_due_while_down_escalates_at_once_and_says_so() {
    let policy = paging_only("100s");
    let mut before = deployed(&policy);
    before.polls(10, errors(0.15)); // paged at 1935, killed at once
    let mut after = restarted(&policy, 2400, resumed_from(&before));
    after.polls(4, errors(0.15));
    let escalations = unanswered(&after);
    assert_eq!(
        escalations.iter().map(|d| d.at).collect::<Vec<_>>(),
        [at(2400)]
    );
    assert!(
        escalations[0]
            .explanation
            .contains("(due at 2026-11-24T10:33:55Z, while rollwatch was not running)"),
        "{}",
        escalations[0].explanation
    );
}

#[test]
fn a_resumed_page_then_rollback_rolls_back_at_its_stored_deadline() {
    let mut before = deployed(PRODUCTION);
    before.polls(10, errors(0.15)); // paged at 1935, deadline 2535
    let resumed = resumed_from(&before);
    assert_eq!(resumed.deadline, Some(at(2535)));
    let mut after = restarted(PRODUCTION, 2000, resumed);
    after.polls(60, errors(0.15));
    let rollbacks: Vec<_> = after.rollback_decisions().iter().map(|d| d.at).collect();
    assert_eq!(rollbacks, [at(2535)], "{:?}", after.log());
    assert_eq!(
        after.decisions[0].cause,
        Cause::DeadlinePassed,
        "nothing announced twice: {:?}",
        after.log()
    );
}

#[test]
fn a_resumed_page_then_rollback_overdue_after_the_restart_waits_for_current_evidence() {
    let mut before = deployed(PRODUCTION);
    before.polls(10, errors(0.15)); // paged at 1935, deadline 2535; down until 2700
    let mut after = restarted(PRODUCTION, 2700, resumed_from(&before));
    // Production's longest consider or immediate `for` is 5m, its interval 15 s.
    assert_eq!(
        after.engine.incident().and_then(|i| i.deadline),
        Some(at(2700 + 300 + 15))
    );
    after.polls(40, errors(0.15));
    let rollbacks = after.rollback_decisions();
    assert_eq!(
        rollbacks.iter().map(|d| d.at).collect::<Vec<_>>(),
        [at(3015)],
        "{:?}",
        after.log()
    );
    assert!(
        rollbacks[0]
            .explanation
            .contains("(due at 2026-11-24T10:42:15Z, postponed after rollwatch restarted so the breach could be confirmed on current data)"),
        "{}",
        rollbacks[0].explanation
    );
}

#[test]
fn a_resumed_acknowledged_page_then_rollback_never_rolls_back_or_escalates() {
    let policy = format!("{PRODUCTION}\n[notify]\nescalate_after = \"5m\"\n");
    let mut before = deployed(&policy);
    before.polls(10, errors(0.15)); // paged at 1935, deadline 2535
    before.event(Event::Ack { by: None });
    let mut resumed = resumed_from(&before);
    resumed.deadline = Some(at(2535)); // as an older store kept it after the ack
    let mut after = restarted(&policy, 2000, resumed);
    after.polls(80, errors(0.15));
    assert!(after.rollback_decisions().is_empty(), "{:?}", after.log());
    assert!(unanswered(&after).is_empty(), "{:?}", after.log());
}

/// A watch resumed at `secs` (the rollback finished at 2000, so it was to
/// end at 2900), then healthy polls.
fn resumed_watch(secs: i64) -> Sim {
    let mut before = deployed(PRODUCTION);
    before.polls(10, |o| o.up = Some(false)); // system-down rolls back at 1860
    let mut resumed = resumed_from(&before);
    resumed.phase = Phase::Watching {
        until: at(2900),
        saw_data: false,
    };
    resumed.phase_at = at(2000);
    let mut sim = restarted(PRODUCTION, secs, resumed);
    sim.version = "v1".into();
    sim.healthy(80);
    sim
}

#[test]
fn a_resumed_watch_ends_at_its_stored_end() {
    let sim = resumed_watch(2100);
    let stable: Vec<_> = sim
        .decisions
        .iter()
        .filter(|d| d.cause == Cause::Stable)
        .collect();
    assert_eq!(stable.len(), 1, "{:?}", sim.log());
    assert_eq!(stable[0].at, at(2900));
    assert!(
        stable[0]
            .explanation
            .contains("rollwatch took the watch up at 2026-11-24T10:35:00Z: nothing was observed while it was not running"),
        "{}",
        stable[0].explanation
    );
    assert!(!stable[0].explanation.contains("extended"));
}

#[test]
fn a_resumed_watch_with_too_little_left_is_extended_to_the_longest_for_plus_one_interval() {
    // 30 s left of the stored watch; production's longest consider/immediate
    // `for` is 5m (latency-degradation), its interval 15 s.
    let sim = resumed_watch(2870);
    let stable: Vec<_> = sim
        .decisions
        .iter()
        .filter(|d| d.cause == Cause::Stable)
        .collect();
    assert_eq!(stable.len(), 1, "{:?}", sim.log());
    assert_eq!(stable[0].at, at(2870 + 300 + 15));
    assert!(
        stable[0]
            .explanation
            .contains("its stored end 2026-11-24T10:48:20Z was extended to 2026-11-24T10:53:05Z"),
        "{}",
        stable[0].explanation
    );
}

/// Paged at 1935 (page only), the errors stop at 1950; returns the sim and
/// the instant every rule has been clear since.
fn paged_then_clear() -> (Sim, DateTime<Utc>) {
    let mut sim = deployed(&paging_only("1h"));
    sim.polls(10, errors(0.15));
    sim.healthy(12);
    let since = sim
        .engine
        .incident()
        .and_then(Incident::clear_since)
        .expect("clear by now");
    (sim, since)
}

fn recovered_at(sim: &Sim) -> Vec<DateTime<Utc>> {
    sim.decisions
        .iter()
        .filter(|d| d.cause == Cause::Recovered)
        .map(|d| d.at)
        .collect()
}

#[test]
fn resolve_after_counts_observed_clear_time_only() {
    // Without a gap: resolved resolve_after (5m) after the rules cleared.
    let (mut sim, since) = paged_then_clear();
    sim.healthy(40);
    assert_eq!(recovered_at(&sim), [since + TimeDelta::minutes(5)]);

    // The source fails for 10 minutes: that time is not counted as clear,
    // and what was seen clear before it is kept.
    let (mut sim, since) = paged_then_clear();
    let seen_before = sim.now - TimeDelta::seconds(15);
    sim.no_data(40);
    let back = sim.now;
    sim.healthy(40);
    let observed_before = seen_before - since;
    assert_eq!(
        recovered_at(&sim),
        [back + (TimeDelta::minutes(5) - observed_before)],
        "{:?}",
        sim.log()
    );
    let recovered = sim
        .decisions
        .iter()
        .find(|d| d.cause == Cause::Recovered)
        .unwrap();
    assert!(
        recovered
            .explanation
            .contains("every rule clear for 5m (observed time only"),
        "{}",
        recovered.explanation
    );
}

#[test]
fn a_resumed_incident_goes_on_counting_its_clear_time_without_the_downtime() {
    let (before, since) = paged_then_clear();
    let seen = before.now - TimeDelta::seconds(15);
    // What the store gives back: the clear time up to the last sample.
    let mut resumed = resumed_from(&before);
    resumed.clear_for = seen - since;
    assert!(resumed.clear_for > TimeDelta::zero() && resumed.clear_for < TimeDelta::minutes(5));
    // Down for 20 minutes: had that counted, the first observation would resolve it.
    let restart = (seen - start()).num_seconds() + 20 * 60;
    let mut after = restarted(&paging_only("1h"), restart, resumed.clone());
    after.healthy(40);
    let first = at(restart);
    assert_eq!(
        recovered_at(&after),
        [first + (TimeDelta::minutes(5) - (seen - since))],
        "{:?}",
        after.log()
    );
    assert!(
        after
            .decisions
            .last()
            .unwrap()
            .explanation
            .contains(&format!(
                "rollwatch was not running before {}",
                time_text(first)
            ))
    );
    // A breach after the restart starts the count over.
    let mut breached = restarted(&paging_only("1h"), restart, resumed);
    breached.polls(4, errors(0.15));
    breached.healthy(60);
    let recovered = recovered_at(&breached);
    let cleared = recovered[0] - TimeDelta::minutes(5);
    assert!(cleared > first, "{:?}", breached.log());
}

#[test]
fn every_cause_is_stored_under_its_serde_word() {
    crate::text_enum::assert_round_trips::<Cause>();
}

/// A human's rollback by hand, as `rollwatch rollback` hands it in.
fn manual(to: Option<&str>, force: bool) -> Event {
    Event::ManualRollback {
        by: Some("alice".into()),
        reason: "bad deploy".into(),
        component: Some("frontend".into()),
        to: to.map(str::to_string),
        force,
    }
}

/// The decision on the latest manual rollback.
fn manual_decision(sim: &Sim) -> &Decision {
    sim.decisions
        .iter()
        .rev()
        .find(|d| d.rule == decision::MANUAL_ROLLBACK_RULE && d.cause == Cause::Declared)
        .expect("a decision on the manual rollback")
}

#[test]
fn a_manual_rollback_after_a_recent_deploy_rolls_back_in_its_own_incident() {
    let mut sim = deployed(PRODUCTION);
    sim.finish_rollbacks = false;
    sim.healthy(4);
    sim.event(manual(None, false));
    let decision = manual_decision(&sim);
    assert_eq!(decision.action, Action::Rollback, "{decision:?}");
    assert_eq!(decision.tier, Tier::Immediate);
    assert_eq!(decision.cause, Cause::Declared);
    assert_eq!(decision.guard, None);
    assert_eq!(decision.from_version.as_deref(), Some("v2"));
    assert_eq!(decision.to_version.as_deref(), Some("v1"));
    assert_eq!(decision.component.as_deref(), Some("frontend"));
    assert!(
        decision
            .explanation
            .starts_with("manual rollback by alice: bad deploy; rolling back v2 -> v1 ["),
        "{}",
        decision.explanation
    );
    let incident = sim.engine.incident().unwrap();
    assert_eq!(incident.phase, Phase::RollingBack);
    assert!(incident.declared);
    assert_eq!(incident.rule, "manual-rollback");
    assert_eq!(Some(incident.id), decision.incident);
}

#[test]
fn a_manual_rollback_with_no_deployment_known_is_the_humans_to_judge() {
    let mut sim = Sim::production();
    sim.healthy(4);
    sim.event(manual(Some("v0"), false));
    let decision = manual_decision(&sim);
    assert_eq!(decision.action, Action::Rollback, "{decision:?}");
    assert_eq!(decision.from_version.as_deref(), Some("v1"));
    assert_eq!(decision.to_version.as_deref(), Some("v0"));
    assert!(
        decision.explanation.contains("rolling back v1 -> v0"),
        "{}",
        decision.explanation
    );
}

#[test]
fn a_manual_rollback_answers_the_open_incident_even_when_held() {
    let mut sim = deployed(PRODUCTION);
    sim.finish_rollbacks = false;
    sim.polls(10, errors(0.15));
    let paged = sim.engine.incident().unwrap().id;
    sim.event(Event::Hold { by: None });
    sim.event(manual(Some("v1"), false));
    let decision = manual_decision(&sim);
    assert_eq!(decision.action, Action::Rollback, "{decision:?}");
    assert_eq!(decision.incident, Some(paged), "the same incident");
    let incident = sim.engine.incident().unwrap();
    assert_eq!(incident.id, paged);
    assert!(!incident.held && incident.acknowledged);
    assert_eq!(
        incident.deadline, None,
        "the automatic rollback is cancelled"
    );
    assert_eq!(incident.component.as_deref(), Some("frontend"));
    assert_eq!(sim.rollbacks(), 1, "{:?}", sim.log());
}

#[test]
fn a_manual_rollback_is_refused_while_a_rollback_runs_even_forced() {
    let mut sim = deployed(PRODUCTION);
    sim.finish_rollbacks = false;
    sim.healthy(2);
    sim.event(manual(None, false));
    let running = sim.engine.incident().unwrap().id;
    for force in [false, true] {
        sim.event(manual(None, force));
        let decision = manual_decision(&sim);
        assert_eq!(decision.action, Action::None, "{decision:?}");
        assert_eq!(decision.guard, Some(Guard::InProgress));
        assert!(
            decision
                .explanation
                .contains("not rolling back: a rollback is already running"),
            "{}",
            decision.explanation
        );
    }
    let incident = sim.engine.incident().unwrap();
    assert_eq!((incident.id, incident.phase), (running, Phase::RollingBack));
    assert_eq!(sim.rollbacks(), 1, "{:?}", sim.log());
}

#[test]
fn a_manual_rollback_of_a_rollback_is_refused_even_forced() {
    // During the watch after rollwatch's own rollback.
    let mut sim = deployed(PRODUCTION);
    sim.healthy(2);
    sim.event(manual(None, false));
    assert!(matches!(
        sim.engine.incident().unwrap().phase,
        Phase::Watching { .. }
    ));
    for force in [false, true] {
        sim.event(manual(None, force));
        let decision = manual_decision(&sim);
        assert_eq!(decision.action, Action::None, "{decision:?}");
        assert_eq!(decision.guard, Some(Guard::RollbackOfRollback));
    }
    // Long after a human's rollback seen as the previous version coming back,
    // outside the cooldown: still never.
    let mut sim = deployed(PRODUCTION);
    sim.healthy(2);
    sim.version = "v1".into();
    sim.healthy(4);
    assert!(sim.engine.deployment().unwrap().rollback);
    sim.now += TimeDelta::hours(2);
    sim.event(manual(Some("v0"), true));
    let decision = manual_decision(&sim);
    assert_eq!(decision.action, Action::None, "{decision:?}");
    assert_eq!(decision.guard, Some(Guard::RollbackOfRollback));
    assert!(
        decision
            .explanation
            .contains("is itself a rollback, and a rollback is never rolled back"),
        "{}",
        decision.explanation
    );
    assert!(sim.engine.incident().is_none(), "a refusal opens nothing");
}

#[test]
fn a_manual_rollback_of_an_old_deployment_needs_force() {
    let mut sim = deployed(PRODUCTION);
    sim.healthy(4);
    sim.now += TimeDelta::hours(25);
    sim.event(manual(None, false));
    let decision = manual_decision(&sim);
    assert_eq!(decision.action, Action::None, "{decision:?}");
    assert_eq!(decision.guard, Some(Guard::NoRecentDeploy));
    assert!(
        decision
            .explanation
            .contains("outside the 24h recent-deploy window"),
        "{}",
        decision.explanation
    );
    assert!(sim.engine.incident().is_none(), "a refusal opens nothing");
    sim.event(manual(None, true));
    let decision = manual_decision(&sim);
    assert_eq!(decision.action, Action::Rollback, "{decision:?}");
    assert_eq!(decision.guard, None);
    assert!(
        decision.explanation.contains(
            "; forced past a guard: the latest deployment (v2 at 2026-11-24T10:30:00Z) is"
        ),
        "{}",
        decision.explanation
    );
    assert!(decision.explanation.contains("; rolling back v2 -> v1"));
}

#[test]
fn a_manual_rollback_meets_neither_the_cooldown_nor_a_preexisting_breach() {
    // A rollback finished and stable, then v3 deployed within the cooldown
    // while the error rate already breached: automatic rollbacks are guarded,
    // a human's is not.
    let mut sim = deployed(PRODUCTION);
    sim.healthy(2);
    sim.event(Event::Approve { by: None });
    assert_eq!(sim.rollbacks(), 1, "{:?}", sim.log());
    sim.version = "v1".into();
    sim.healthy(70);
    assert!(sim.engine.incident().is_none(), "{:?}", sim.log());
    sim.polls(12, errors(0.15));
    sim.deploy("v3");
    sim.polls(2, errors(0.15));
    assert!(
        sim.engine
            .rule_status()
            .iter()
            .any(|r| r.rule == "error-rate" && r.preexisting)
    );
    sim.event(manual(None, false));
    let decision = manual_decision(&sim);
    assert_eq!(decision.action, Action::Rollback, "{decision:?}");
    assert_eq!(decision.to_version.as_deref(), Some("v1"));
}

#[test]
fn a_manual_rollback_after_an_escalation_is_a_new_attempt() {
    let mut sim = deployed(PRODUCTION);
    sim.finish_rollbacks = false;
    sim.healthy(2);
    sim.event(manual(None, false));
    let first = sim.engine.incident().unwrap().id;
    sim.engine
        .handle_rollback_finished(sim.now, first, Err("step failed".into()))
        .unwrap();
    sim.drain();
    assert_eq!(sim.engine.incident().unwrap().phase, Phase::Escalated);
    sim.event(manual(None, false));
    let decision = manual_decision(&sim);
    assert_eq!(decision.action, Action::Rollback, "{decision:?}");
    let incident = sim.engine.incident().unwrap();
    assert_ne!(incident.id, first, "a new incident");
    assert_eq!(decision.incident, Some(incident.id));
    assert_eq!(incident.phase, Phase::RollingBack);
}

// --- A burst that ended (docs/decisions.md, issue 18) --------------------------------

fn all_errors(o: &mut Observation) {
    o.errors = o.requests;
}

#[test]
fn a_burst_that_ended_before_for_is_told_once_and_never_paged() {
    let mut sim = deployed(PRODUCTION);
    // 1800 is stamped at the deploy (left out); 1815-1845 fail, then 0.5 %.
    sim.polls(4, all_errors);
    sim.healthy(30);
    assert_eq!(sim.actions(), [(1935, Action::Notify)], "{:?}", sim.log());
    let told = &sim.decisions[0];
    assert_eq!(
        (told.cause, told.guard, told.incident),
        (Cause::BurstEnded, Some(Guard::Recovered), None)
    );
    for words in [
        "v2: 100% errors for 45s after its deploy",
        "recovered by itself; no action",
        "over 2m of 9600 requests, 0.50% over the last 15s",
    ] {
        assert!(told.explanation.contains(words), "{}", told.explanation);
    }
    assert!(sim.engine.incident().is_none());
    assert_eq!((sim.pages(), sim.rollbacks()), (0, 0));
}

#[test]
fn a_burst_that_resumes_while_the_window_breaches_acts_then() {
    let mut sim = deployed(PRODUCTION);
    sim.polls(4, all_errors);
    sim.healthy(6); // 1860-1935: told at 1935
    sim.polls(2, all_errors); // 1950: the long window still breaches
    assert_eq!(
        sim.actions(),
        [(1935, Action::Notify), (1950, Action::PageThenRollback)],
        "{:?}",
        sim.log()
    );
    assert!(
        sim.decisions[1]
            .explanation
            .contains("100% over the last 15s"),
        "{}",
        sim.decisions[1].explanation
    );
}

#[test]
fn a_burst_told_in_an_open_incident_is_recorded_in_it() {
    let mut sim = deployed(PRODUCTION);
    // Users affected for good: paged at 1935. Errors for 45s only: the
    // error-rate rule holds its `for` at the same instant on history alone.
    sim.polls(4, |o| {
        all_errors(o);
        o.users_affected = Some(450.0);
    });
    sim.polls(6, |o| o.users_affected = Some(450.0));
    assert_eq!(
        sim.log(),
        [
            (1935, Action::PageThenRollback, "users-affected".into()),
            (1935, Action::Notify, "error-rate".into()),
        ]
    );
    assert_eq!(sim.decisions[1].incident, sim.decisions[0].incident);
    assert!(sim.decisions[1].incident.is_some());
}

#[test]
fn at_low_traffic_an_inconclusive_short_window_does_not_veto() {
    let mut sim = deployed(PRODUCTION);
    // 15 requests a poll: the 2m window is conclusive from its 7th poll, the
    // 15s window's 15 requests without an error cannot tell 0 % from 15 %.
    let quiet = |o: &mut Observation| {
        o.requests = Some(15.0);
        o.errors = Some(0.0);
    };
    sim.polls(10, |o| {
        quiet(o);
        all_errors(o);
    });
    sim.polls(10, quiet);
    let recent = sim.engine.rules[3].recent.clone().unwrap();
    assert_eq!(recent.verdict, Verdict::Inconclusive, "{recent:?}");
    assert_eq!(
        sim.actions(),
        [(2025, Action::PageThenRollback)],
        "{:?}",
        sim.log()
    );
}

#[test]
fn a_deadline_whose_breach_has_ended_does_not_roll_back() {
    let mut sim = deployed(PRODUCTION);
    // 15 % from 1815 to 2505, paged at 1935 with the deadline at 2535; at the
    // deadline the 2m window still breaches but its last 15s are healthy.
    sim.polls(48, errors(0.15));
    sim.healthy(30);
    assert_eq!(
        sim.actions()[..2],
        [(1935, Action::PageThenRollback), (2535, Action::None)]
    );
    let refused = &sim.decisions[1];
    assert_eq!(
        (refused.cause, refused.guard),
        (Cause::DeadlinePassed, Some(Guard::Recovered))
    );
    assert!(
        refused.explanation.contains("the burst has ended"),
        "{}",
        refused.explanation
    );
    assert_eq!(sim.rollbacks(), 0, "{:?}", sim.log());
}

#[test]
fn instant_signals_have_no_short_window() {
    let mut sim = deployed(PRODUCTION);
    sim.healthy(2);
    assert!(sim.engine.rules[0].recent.is_none());
    assert!(sim.engine.rules[3].recent.is_some());
}

#[test]
fn a_short_sampling_that_ends_after_the_burst_tells_it() {
    let mut sim = deployed(STAGING);
    // 1815 and 1830 fail, 1845 is healthy: the window breaches at every
    // reading, but the last 15s do not.
    sim.polls(3, all_errors);
    sim.healthy(1);
    let end = sim.now;
    sim.engine.handle_sampling_end(end).unwrap();
    sim.drain();
    assert_eq!(sim.actions(), [(1860, Action::Notify)], "{:?}", sim.log());
    assert_eq!(sim.decisions[0].cause, Cause::BurstEnded);
}
