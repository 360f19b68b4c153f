#!/usr/bin/env python3
"""Writes the traces tests/backtest.rs replays: one small JSON Lines file per
scenario, next to this script. Run it again after editing a scenario:

    python3 tests/traces/generate.py

The traces share one shape, so their times are easy to reason about
(low-traffic, no-recent-deploy, down-without-deploy, preexisting and
preexisting-in-baseline-window depart from it where their docstrings say):

- 09:00:00 .. 09:30:00  healthy lead-in on v1.0.0, one observation every 15 s
                        (121 observations): the pre-deploy latency baseline
                        (p95 200 ms) comes from it
- 09:30:00              deploy of v1.1.0, written after the 09:30:00
                        observation (that observation counts what happened
                        before the deploy, so windows leave it out)
- 09:30:15 ..           the scenario: the first bad observation is 09:30:15

A healthy observation: up, 1000 requests with 2 errors (0.2 %), p95 200 ms,
500 users with 5 affected (1 %), both named checks passing. The traces are
deterministic (no randomness) so a decision's time follows from the policy's
`for`, `window` and `min_*` values alone; tests/backtest.rs works them out.
The trace files are committed; a trace that changes here changes the
expectations there.

Standard library only.
"""

import datetime
import json
from pathlib import Path

DAY = datetime.date(2026, 11, 24)
STEP = datetime.timedelta(seconds=15)
HERE = Path(__file__).resolve().parent


def t(clock, day=DAY):
    """09:30:15 on the trace's day, as a datetime."""
    hour, minute, second = (int(part) for part in clock.split(":"))
    return datetime.datetime(day.year, day.month, day.day, hour, minute, second, tzinfo=datetime.timezone.utc)


def stamp(at):
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def healthy(at, version="v1.1.0"):
    return {
        "at": stamp(at),
        "up": True,
        "requests": 1000,
        "errors": 2,
        "latency_ms": {"p50": 80, "p95": 200, "p99": 400},
        "users": 500,
        "users_affected": 5,
        "checks": {"data_integrity": True, "critical_features": True},
        "version": version,
    }


def down(at):
    """The health probe fails; nothing else could be scraped."""
    return {"at": stamp(at), "up": False}


def with_errors(errors):
    def change(line):
        line["errors"] = errors

    return change


def with_p95(ms):
    def change(line):
        line["latency_ms"]["p95"] = ms

    return change


def with_users_affected(count):
    def change(line):
        line["users_affected"] = count

    return change


def with_check(name, passed):
    def change(line):
        line["checks"][name] = passed

    return change


class Trace:
    """A trace being written, in time order."""

    def __init__(self):
        self.lines = []

    def observe(self, first, last, change=None, make=healthy, **kwargs):
        """One observation every 15 s from `first` to `last`, both included."""
        at = t(first)
        while at <= t(last):
            line = make(at, **kwargs)
            if change is not None:
                change(line)
            self.lines.append(line)
            at += STEP
        return self

    def event(self, clock, kind, **fields):
        self.lines.append({"at": stamp(t(clock)), "event": kind, **fields})
        return self

    def raw(self, line):
        self.lines.append(line)
        return self

    def source_error(self, first, last, reason):
        at = t(first)
        while at <= t(last):
            self.lines.append({"at": stamp(at), "source_error": reason})
            at += STEP
        return self

    def observations(self):
        return sum(1 for line in self.lines if "event" not in line and "source_error" not in line)


def deployed(lead_in_change=None):
    """The healthy lead-in and the deploy of v1.1.0 at 09:30:00."""
    trace = Trace().observe("09:00:00", "09:30:00", lead_in_change, version="v1.0.0")
    return trace.event("09:30:00", "deploy", version="v1.1.0", previous="v1.0.0", migrations=["0042_add_index"])


ERRORS_15_PERCENT = with_errors(150)


# --- Roll back immediately ---------------------------------------------------


def system_down():
    """Runbook: "System is completely down". Probe fails 09:30:15-09:31:15 (5 probes)."""
    return deployed().observe("09:30:15", "09:31:15", make=down).observe("09:31:30", "09:47:00")


def data_corruption():
    """Runbook: "Data corruption detected". data_integrity fails 09:30:15-09:30:45."""
    return (
        deployed()
        .observe("09:30:15", "09:30:45", with_check("data_integrity", False))
        .observe("09:31:00", "09:47:00")
    )


def feature_broken():
    """Runbook: "Major feature completely broken". critical_features fails 09:30:15-09:31:15."""
    return (
        deployed()
        .observe("09:30:15", "09:31:15", with_check("critical_features", False))
        .observe("09:31:30", "09:47:00")
    )


def declare_security():
    """Runbook: "Critical security vulnerability": no metric shows it, a human
    declares it at 09:35:00 while every signal is healthy."""
    trace = deployed().observe("09:30:15", "09:35:00")
    trace.event("09:35:00", "declare", tier="immediate", reason="critical security vulnerability")
    return trace.observe("09:35:15", "09:51:00")


def suppress_immediate_refused():
    """A known-issue suppression of system-down (the shipped policies refuse
    it), then the system is down 09:30:15-09:31:15 as in system-down."""
    trace = deployed()
    trace.event("09:30:00", "suppress", rule="system-down", until=stamp(t("12:00:00")), reason="planned restart")
    return trace.observe("09:30:15", "09:31:15", make=down).observe("09:31:30", "09:47:00")


# --- Consider rollback ---------------------------------------------------------


def latency_80_percent():
    """Runbook: "Performance degradation > 50%". p95 360 ms (+80 % over the
    200 ms baseline) 09:30:15-09:46:00, then healthy again."""
    return deployed().observe("09:30:15", "09:46:00", with_p95(360)).observe("09:46:15", "10:02:00")


def error_rate_15_percent():
    """Runbook: "Error rate > 5%". 150 errors in 1000 requests 09:30:15-09:42:15,
    then healthy again."""
    return deployed().observe("09:30:15", "09:42:15", ERRORS_15_PERCENT).observe("09:42:30", "09:58:00")


def users_affected_25_percent():
    """Runbook: "User-facing bugs affecting > 10% users". 125 of 500 users
    affected 09:30:15-09:42:15 (no more errors than usual), then healthy."""
    return (
        deployed()
        .observe("09:30:15", "09:42:15", with_users_affected(125))
        .observe("09:42:30", "09:58:00")
    )


# --- Don't roll back -----------------------------------------------------------


def latency_30_percent():
    """The 20-50 % watch band: p95 260 ms (+30 %) from 09:30:15 to the end."""
    return deployed().observe("09:30:15", "09:45:00", with_p95(260))


def latency_10_percent():
    """Runbook: "Performance issues < 20%": p95 220 ms (+10 %) to the end."""
    return deployed().observe("09:30:15", "09:45:00", with_p95(220))


# --- Guards ----------------------------------------------------------------------


def low_traffic():
    """3 requests and 2 users per interval all along; after the deploy 1 of the
    3 requests fails and 1 of the 2 users is affected. Raw ratios of 33 % and
    50 %, but 24 requests in a 2 m window (100 needed) and 40 users in a 5 m
    window (50 needed): inconclusive, never a breach."""

    def quiet(line):
        line.update(requests=3, errors=0, users=2, users_affected=0)

    def quiet_and_failing(line):
        line.update(requests=3, errors=1, users=2, users_affected=1)

    return deployed(quiet).observe("09:30:15", "09:45:00", quiet_and_failing)


def blip():
    """One bad interval each: 600 errors in 1000 requests at 09:35:00, a failed
    health probe at 09:40:00. Healthy otherwise."""
    trace = deployed().observe("09:30:15", "09:34:45").observe("09:35:00", "09:35:00", with_errors(600))
    return trace.observe("09:35:15", "09:39:45").raw(down(t("09:40:00"))).observe("09:40:15", "09:50:00")


def blip_after_deploy():
    """One bad interval right after the deploy, then healthy: at 09:30:15 600
    of 1000 requests fail and all 500 users are affected (cold caches, say)."""

    def everything_fails_once(line):
        line.update(errors=600, users_affected=500)

    trace = deployed().observe("09:30:15", "09:30:15", everything_fails_once)
    return trace.observe("09:30:30", "09:45:00")


def users_burst():
    """One bad interval at 09:35:00: a burst of 2000 sessions, every one of them
    affected (errors as usual). Healthy otherwise."""

    def burst(line):
        line.update(users=2000, users_affected=2000)

    trace = deployed().observe("09:30:15", "09:34:45").observe("09:35:00", "09:35:00", burst)
    return trace.observe("09:35:15", "09:45:00")


def no_recent_deploy():
    """The only deployment is 25 h old (2026-11-23 08:00): 15 % errors from
    09:30:15 to the end. A rollback would not answer a change."""
    trace = Trace().event("08:00:00", "deploy", version="v1.0.0", previous="v0.9.0")
    trace.lines[0]["at"] = stamp(t("08:00:00", DAY - datetime.timedelta(days=1)))
    return trace.observe("09:00:00", "09:30:00", version="v1.0.0").observe(
        "09:30:15", "09:40:00", ERRORS_15_PERCENT, version="v1.0.0"
    )


def unanswered_page():
    """As no-recent-deploy (the only deployment is 25 h old, so a firing rule
    pages), but the 15 % errors go on until 09:50:00 and nobody answers the
    page: 15 minutes after it (`escalate_after`'s default) it goes to the
    escalation contacts."""
    trace = Trace().event("08:00:00", "deploy", version="v1.0.0", previous="v0.9.0")
    trace.lines[0]["at"] = stamp(t("08:00:00", DAY - datetime.timedelta(days=1)))
    return trace.observe("09:00:00", "09:30:00", version="v1.0.0").observe(
        "09:30:15", "09:50:00", ERRORS_15_PERCENT, version="v1.0.0"
    )


def down_without_deploy():
    """No deployment in the trace at all; the health probe fails
    09:30:15-09:31:15, then healthy until 09:40:00."""
    trace = Trace().observe("09:00:00", "09:30:00", version="v1.0.0")
    return trace.observe("09:30:15", "09:31:15", make=down).observe("09:31:30", "09:40:00", version="v1.0.0")


def metrics_outage():
    """The metrics source fails from 09:30:15 to 09:40:00 (source_error lines,
    no observation at all), then healthy data returns until 09:45:00."""
    trace = deployed().source_error("09:30:15", "09:40:00", "prometheus: connection refused")
    return trace.observe("09:40:15", "09:45:00")


def suppression():
    """error-rate is suppressed as a known issue at 09:30:00 until 12:00; 15 %
    errors from 09:30:15 to the end."""
    trace = deployed()
    trace.event("09:30:00", "suppress", rule="error-rate", until=stamp(t("12:00:00")), reason="fix in review")
    return trace.observe("09:30:15", "09:45:00", ERRORS_15_PERCENT)


def suppression_expires():
    """As suppression, but the known issue expires at 09:40:00 while the errors
    go on until 09:51:00."""
    trace = deployed()
    trace.event("09:30:00", "suppress", rule="error-rate", until=stamp(t("09:40:00")), reason="fix in review")
    return trace.observe("09:30:15", "09:51:00", ERRORS_15_PERCENT)


def answered(kind, by):
    """15 % errors from 09:30:15 to 09:50:00 and a human's `kind` at 09:35:00."""
    trace = deployed().observe("09:30:15", "09:35:00", ERRORS_15_PERCENT)
    trace.event("09:35:00", kind, by=by)
    return trace.observe("09:35:15", "09:50:00", ERRORS_15_PERCENT)


def approve():
    """15 % errors 09:30:15-09:35:00; a human approves the rollback at 09:35:00;
    healthy from 09:35:15 to 09:51:00."""
    trace = deployed().observe("09:30:15", "09:35:00", ERRORS_15_PERCENT)
    trace.event("09:35:00", "approve", by="carol")
    return trace.observe("09:35:15", "09:51:00")


def rollback_does_not_help():
    """15 % errors from 09:30:15 to 10:20:00, before and after any rollback:
    the fault is not in the deployment."""
    return deployed().observe("09:30:15", "10:20:00", ERRORS_15_PERCENT)


def preexisting():
    """15 % errors from 09:29:00, one minute before the deploy (too short to fire
    before it), to 09:45:00: the deployment did not cause them."""
    trace = Trace().observe("09:00:00", "09:28:45", version="v1.0.0")
    trace.observe("09:29:00", "09:30:00", ERRORS_15_PERCENT, version="v1.0.0")
    trace.event("09:30:00", "deploy", version="v1.1.0", previous="v1.0.0")
    return trace.observe("09:30:15", "09:45:00", ERRORS_15_PERCENT)


def preexisting_in_baseline_window():
    """15 % errors 09:05:00-09:15:00, inside the 30 m baseline window before the
    09:30:00 deploy (no deploy before: it pages), healthy 09:15:15-09:30:00,
    15 % errors again after the deploy from 09:30:15 to 09:45:00."""
    trace = Trace().observe("09:00:00", "09:04:45", version="v1.0.0")
    trace.observe("09:05:00", "09:15:00", ERRORS_15_PERCENT, version="v1.0.0")
    trace.observe("09:15:15", "09:30:00", version="v1.0.0")
    trace.event("09:30:00", "deploy", version="v1.1.0", previous="v1.0.0")
    return trace.observe("09:30:15", "09:45:00", ERRORS_15_PERCENT)


def cooldown():
    """The system is down after the deploy of v1.1.0 (09:30:15-09:31:15, rolled
    back at 09:31:15; the recording shows v1.0.0 again from 09:31:30). v1.2.0
    is deployed at 09:50:00, 18m45s after that rollback, and 15 % errors follow
    from 09:50:15 to 10:00:00."""
    trace = deployed().observe("09:30:15", "09:31:15", make=down)
    trace.observe("09:31:30", "09:50:00", version="v1.0.0")
    trace.event("09:50:00", "deploy", version="v1.2.0", previous="v1.0.0")
    return trace.observe("09:50:15", "10:00:00", ERRORS_15_PERCENT, version="v1.2.0")


# --- A burst that ended (docs/decisions.md) -------------------------------------

ALL_ERRORS = with_errors(1000)
AFTER_COLD_START = with_errors(4)


def cold_start():
    """A cold start: the new version answers every request with an error for
    45 s (09:30:15-09:30:45), then 0.4 % errors (4 in 1000) for good, to
    09:45:00. The 2 m window stays above 5 % until 09:32:30, long enough to
    meet `for` on history alone."""
    trace = deployed().observe("09:30:15", "09:30:45", ALL_ERRORS)
    return trace.observe("09:31:00", "09:45:00", AFTER_COLD_START)


def cold_start_resumes():
    """As cold-start, but every request fails again from 09:32:30 to 09:42:30,
    while the 2 m window still breaches; healthy from 09:42:45 to 09:58:00."""
    trace = deployed().observe("09:30:15", "09:30:45", ALL_ERRORS)
    trace.observe("09:31:00", "09:32:15", AFTER_COLD_START)
    return trace.observe("09:32:30", "09:42:30", ALL_ERRORS).observe("09:42:45", "09:58:00")


def errors_end_before_deadline():
    """15 % errors 09:30:15-09:41:30, then healthy to 09:50:00: the errors end
    after the page but 45 s before its deadline, while the 2 m window still
    breaches."""
    trace = deployed().observe("09:30:15", "09:41:30", ERRORS_15_PERCENT)
    return trace.observe("09:41:45", "09:50:00")


def errors_end_after_page():
    """15 % errors 09:30:15-09:33:00, then healthy to 09:50:00: the errors end
    soon after the page; the window clears long before the deadline."""
    trace = deployed().observe("09:30:15", "09:33:00", ERRORS_15_PERCENT)
    return trace.observe("09:33:15", "09:50:00")


def low_traffic_cold_start():
    """15 requests per interval all along. After the deploy every request
    fails until 09:32:30, then none does, to 09:45:00. The 2 m window (120
    requests) is conclusive; the short window's 15 requests without an error
    cannot tell 0 % from 15 %: inconclusive, so the rule acts as before."""

    def quiet(line):
        line.update(requests=15, errors=0)

    def quiet_and_failing(line):
        line.update(requests=15, errors=15)

    trace = deployed(quiet).observe("09:30:15", "09:32:30", quiet_and_failing)
    return trace.observe("09:32:45", "09:45:00", quiet)


def latency_cold_start():
    """p95 1000 ms (5x the baseline) 09:30:15-09:34:00 while caches warm,
    then 200 ms again, to 09:45:00."""
    trace = deployed().observe("09:30:15", "09:34:00", with_p95(1000))
    return trace.observe("09:34:15", "09:45:00")


def users_cold_start():
    """Every one of the 500 users affected 09:30:15-09:30:45 (errors as
    usual), then 1 % again, to 09:45:00."""
    trace = deployed().observe("09:30:15", "09:30:45", with_users_affected(500))
    return trace.observe("09:31:00", "09:45:00")


SCENARIOS = {
    "system-down": system_down,
    "data-corruption": data_corruption,
    "feature-broken": feature_broken,
    "declare-security": declare_security,
    "suppress-immediate-refused": suppress_immediate_refused,
    "latency-80pct": latency_80_percent,
    "error-rate-15pct": error_rate_15_percent,
    "users-affected-25pct": users_affected_25_percent,
    "latency-30pct": latency_30_percent,
    "latency-10pct": latency_10_percent,
    "low-traffic": low_traffic,
    "blip": blip,
    "blip-after-deploy": blip_after_deploy,
    "users-burst": users_burst,
    "no-recent-deploy": no_recent_deploy,
    "unanswered-page": unanswered_page,
    "down-without-deploy": down_without_deploy,
    "metrics-outage": metrics_outage,
    "suppression": suppression,
    "suppression-expires": suppression_expires,
    "ack": lambda: answered("ack", "alice"),
    "hold": lambda: answered("hold", "bob"),
    "approve": approve,
    "rollback-does-not-help": rollback_does_not_help,
    "preexisting": preexisting,
    "preexisting-in-baseline-window": preexisting_in_baseline_window,
    "cooldown": cooldown,
    "cold-start": cold_start,
    "cold-start-resumes": cold_start_resumes,
    "errors-end-before-deadline": errors_end_before_deadline,
    "errors-end-after-page": errors_end_after_page,
    "low-traffic-cold-start": low_traffic_cold_start,
    "latency-cold-start": latency_cold_start,
    "users-cold-start": users_cold_start,
}


def main():
    for stale in HERE.glob("*.jsonl"):
        if stale.stem not in SCENARIOS:
            stale.unlink()
    for name, build in SCENARIOS.items():
        trace = build()
        text = "".join(json.dumps(line, separators=(",", ":")) + "\n" for line in trace.lines)
        (HERE / f"{name}.jsonl").write_text(text)
        print(f"{name}.jsonl: {len(trace.lines)} lines, {trace.observations()} observations")


if __name__ == "__main__":
    main()
