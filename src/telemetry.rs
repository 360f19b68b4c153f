//! rollwatch's own metrics, in Prometheus conventions (`rollwatch_` prefix,
//! base units, `_total` counters), served on `/metrics`. One place per event
//! updates the counter and writes the log line.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabels {
    /// `service/environment`.
    pub target: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    pub target: String,
    pub action: String,
    pub tier: String,
}

/// A delivery attempt's channel and result (`sent`, `retry`, `failed`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabels {
    pub channel: String,
    pub result: String,
}

/// A notification channel.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChannelLabels {
    pub channel: String,
}

/// A policy reload's target and result (`ok`, `failed`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    pub target: String,
    pub result: String,
}

/// A procedure step's target, stage and outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepLabels {
    pub target: String,
    pub stage: String,
    pub result: String,
}

/// Why the API refused a connection: `total` (the cap on open connections)
/// or `per_client` (the cap per client address).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    pub limit: String,
}

/// A rule of a target.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabels {
    pub target: String,
    pub rule: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

type HistogramFamily = Family<TargetLabels, Histogram, fn() -> Histogram>;

pub struct Telemetry {
    registry: Registry,
    pub polls: Family<TargetLabels, Counter>,
    pub source_errors: Family<TargetLabels, Counter>,
    pub unreadable_lines: Family<TargetLabels, Counter>,
    pub missed_ticks: Family<TargetLabels, Counter>,
    pub decisions: Family<DecisionLabels, Counter>,
    pub poll_duration: HistogramFamily,
    /// Notification delivery attempts by channel and result.
    pub deliveries: Family<DeliveryLabels, Counter>,
    /// Escalations that could not be delivered and went no further.
    pub undelivered_escalations: Family<ChannelLabels, Counter>,
    /// Policy reloads by target and result.
    pub reloads: Family<ReloadLabels, Counter>,
    /// 1 while this replica owns (acts on) the target.
    pub leader: Family<TargetLabels, Gauge>,
    /// 1 while the target has an open incident.
    pub incident_open: Family<TargetLabels, Gauge>,
    /// Procedure steps run, by stage and outcome.
    pub steps: Family<StepLabels, Counter>,
    /// Each rule's current signal value (a ratio for rates, the degradation
    /// for latency, 1/0 for down and checks), its confidence bound, and its
    /// threshold.
    pub signal_value: Family<RuleLabels, FloatGauge>,
    pub signal_bound: Family<RuleLabels, FloatGauge>,
    pub signal_threshold: Family<RuleLabels, FloatGauge>,
    /// Acting writes refused because another replica owns the target now
    /// (`store::FENCED_WRITES`, copied in at each scrape).
    fenced_writes: Counter,
    /// Connections to the API refused over a cap (answered 503, or closed
    /// at once when even the refusals are too many).
    pub http_connections_refused: Family<RefusedLabels, Counter>,
    /// Connections to the API open now (served ones, not refusals).
    pub http_connections_open: Gauge,
}

fn poll_duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 14))
}

impl Telemetry {
    /// Drops the gauges of a target no longer watched (counters stay: they
    /// are totals).
    pub fn forget(&self, target: &str, rules: &[String]) {
        let labels = Telemetry::target(target);
        self.leader.remove(&labels);
        self.incident_open.remove(&labels);
        for rule in rules {
            let labels = RuleLabels {
                target: target.to_string(),
                rule: rule.clone(),
            };
            for family in [
                &self.signal_value,
                &self.signal_bound,
                &self.signal_threshold,
            ] {
                family.remove(&labels);
            }
        }
    }

    pub fn new() -> Arc<Telemetry> {
        let mut registry = Registry::default();
        let polls = Family::<TargetLabels, Counter>::default();
        let source_errors = Family::<TargetLabels, Counter>::default();
        let unreadable_lines = Family::<TargetLabels, Counter>::default();
        let missed_ticks = Family::<TargetLabels, Counter>::default();
        let decisions = Family::<DecisionLabels, Counter>::default();
        let poll_duration: HistogramFamily = Family::new_with_constructor(poll_duration_histogram);
        registry.register("rollwatch_polls", "Polls of a target", polls.clone());
        registry.register(
            "rollwatch_source_errors",
            "Polls whose metrics source failed (no data)",
            source_errors.clone(),
        );
        registry.register(
            "rollwatch_exposition_unreadable_lines",
            "Lines of a scraped exposition that could not be read",
            unreadable_lines.clone(),
        );
        registry.register(
            "rollwatch_missed_ticks",
            "Polls skipped because the previous one overran the interval",
            missed_ticks.clone(),
        );
        registry.register(
            "rollwatch_decisions",
            "Decisions by action and tier",
            decisions.clone(),
        );
        registry.register(
            "rollwatch_poll_duration_seconds",
            "How long one poll of a target took",
            poll_duration.clone(),
        );
        let deliveries = Family::<DeliveryLabels, Counter>::default();
        registry.register(
            "rollwatch_notification_deliveries",
            "Notification delivery attempts by channel and result (sent, retry, failed: given up and escalated)",
            deliveries.clone(),
        );
        let undelivered_escalations = Family::<ChannelLabels, Counter>::default();
        registry.register(
            "rollwatch_undelivered_escalations",
            "Escalations that finally failed on their channel: not escalated again, logged at error and listed as undelivered in status",
            undelivered_escalations.clone(),
        );
        let reloads = Family::<ReloadLabels, Counter>::default();
        registry.register(
            "rollwatch_policy_reloads",
            "Policy reloads by result (ok: in force; failed: rejected, the last good policy stays)",
            reloads.clone(),
        );
        let leader = Family::<TargetLabels, Gauge>::default();
        registry.register(
            "rollwatch_leader",
            "1 while this replica owns the target and acts on it, 0 while passive",
            leader.clone(),
        );
        let incident_open = Family::<TargetLabels, Gauge>::default();
        registry.register(
            "rollwatch_incident_open",
            "1 while the target has an open incident",
            incident_open.clone(),
        );
        let steps = Family::<StepLabels, Counter>::default();
        registry.register(
            "rollwatch_procedure_steps",
            "Procedure steps run, by stage and result (succeeded, failed, timed-out, failed-to-start)",
            steps.clone(),
        );
        let signal_value = Family::<RuleLabels, FloatGauge>::default();
        registry.register(
            "rollwatch_signal_value",
            "A rule's current signal: a ratio for rates, the degradation for latency, 1 or 0 for down and checks",
            signal_value.clone(),
        );
        let signal_bound = Family::<RuleLabels, FloatGauge>::default();
        registry.register(
            "rollwatch_signal_bound",
            "A rate rule's one-sided confidence bound (what is compared with the threshold)",
            signal_bound.clone(),
        );
        let signal_threshold = Family::<RuleLabels, FloatGauge>::default();
        registry.register(
            "rollwatch_signal_threshold",
            "A rule's threshold",
            signal_threshold.clone(),
        );
        let fenced_writes = Counter::default();
        registry.register(
            "rollwatch_fenced_writes",
            "Acting writes (step starts, phases, incidents, decisions, messages) refused because a newer owner of the target exists",
            fenced_writes.clone(),
        );
        let http_connections_refused = Family::<RefusedLabels, Counter>::default();
        registry.register(
            "rollwatch_http_connections_refused",
            "Connections to the API refused over a cap on open connections, by limit (total, per_client)",
            http_connections_refused.clone(),
        );
        let http_connections_open = Gauge::default();
        registry.register(
            "rollwatch_http_connections_open",
            "Connections to the API open now",
            http_connections_open.clone(),
        );
        Arc::new(Telemetry {
            fenced_writes,
            http_connections_refused,
            http_connections_open,
            registry,
            polls,
            source_errors,
            unreadable_lines,
            missed_ticks,
            decisions,
            poll_duration,
            deliveries,
            undelivered_escalations,
            reloads,
            leader,
            incident_open,
            steps,
            signal_value,
            signal_bound,
            signal_threshold,
        })
    }

    pub fn target(name: &str) -> TargetLabels {
        TargetLabels {
            target: name.to_string(),
        }
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let total = crate::store::FENCED_WRITES.load(std::sync::atomic::Ordering::Relaxed);
        let shown = self.fenced_writes.get();
        if total > shown {
            self.fenced_writes.inc_by(total - shown);
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
