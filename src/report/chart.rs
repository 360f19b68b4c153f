//! The report's chart: error rate (%) above latency (ms) on one time axis, the
//! rules' thresholds as dashed red lines, and the incident's moments (each
//! decision, the first rollback step, the end of the stabilization watch) as
//! labelled vertical lines. Drawn with plotters' SVG backend into a `String`;
//! text stays `<text>` elements, so no font library is needed.

use std::collections::HashSet;

use chrono::{DateTime, TimeDelta, Timelike, Utc};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::{ERROR_RATE, LATENCY, ReportError, ReportInput, StoredReading, readings};
use crate::engine::policy::Action;
use crate::store::{DecisionRecord, IncidentTimeline, SamplePoint, StepStage};
use crate::units::format_percent;

const WIDTH: u32 = 1000;
const HEIGHT: u32 = 680;
/// Width of a panel's y label area, in pixels.
const Y_LABEL_AREA: u32 = 70;
const MARGIN: u32 = 12;
/// Height of the x label area under each panel, in pixels.
const X_LABEL_AREA: u32 = 28;
/// Height of the chart's title, in pixels (font size plus spacing).
const TITLE_HEIGHT: u32 = 30;
/// Rows of marker labels, so that labels of close instants do not overlap.
const LABEL_ROWS: usize = 5;
const LABEL_ROW_HEIGHT: i32 = 13;
/// Roughly how wide one character of an 11 px label is, in pixels.
const LABEL_CHAR_WIDTH: f64 = 6.5;

pub(super) const ERROR_RATE_COLOR: RGBColor = RGBColor(31, 119, 180);
pub(super) const LATENCY_COLOR: RGBColor = RGBColor(44, 140, 44);
pub(super) const THRESHOLD_COLOR: RGBColor = RGBColor(214, 39, 40);
const MARKER_COLOR: RGBColor = RGBColor(110, 110, 110);

/// The chart as an SVG document: error rate (%) and latency (ms) over time, with the thresholds
/// as horizontal lines and each decision instant (and rollback step start, watch end) marked as
/// a vertical line with a short label. Err when there is nothing to plot (no samples).
pub fn chart_svg(input: &ReportInput<'_>) -> Result<String, ReportError> {
    let incident = input.timeline.incident.id;
    let mut samples: Vec<&SamplePoint> = input.samples.iter().collect();
    samples.sort_by_key(|s| s.at);
    let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
        return Err(ReportError::NoSamples { incident });
    };
    let axis = TimeAxis::new(first.at, last.at);
    let error_rate = segments(&samples, &axis, |s| s.error_rate().map(|r| r * 100.0));
    let latency = segments(&samples, &axis, |s| s.latency_ms);
    if error_rate.is_empty() && latency.is_empty() {
        return Err(ReportError::NoValues {
            incident,
            samples: samples.len(),
        });
    }
    let markers = markers(input.timeline, &axis);
    let (error_thresholds, latency_thresholds) = thresholds(&input.timeline.decisions);
    let x_range = x_range(&samples, &markers, &axis);

    let panels = [
        Panel {
            caption: "error rate (%)",
            unit: "%",
            color: ERROR_RATE_COLOR,
            segments: error_rate,
            thresholds: error_thresholds,
            minimum_top: 1.0,
        },
        Panel {
            caption: "latency (ms)",
            unit: "ms",
            color: LATENCY_COLOR,
            segments: latency,
            thresholds: latency_thresholds,
            minimum_top: 10.0,
        },
    ];
    let title = format!(
        "incident {incident}: {} (times UTC)",
        input.timeline.incident.target
    );

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_error)?;
        let root = root
            .titled(&title, ("sans-serif", TITLE_HEIGHT - 12))
            .map_err(draw_error)?;
        let plot_width = f64::from(WIDTH - Y_LABEL_AREA - 2 * MARGIN);
        let places = place_labels(&markers, &x_range, plot_width);
        let areas = root.split_evenly((2, 1));
        for (index, (area, panel)) in areas.iter().zip(&panels).enumerate() {
            // Marker labels go on the top panel only: the lines cross both.
            let labels = (index == 0).then_some(places.as_slice());
            draw_panel(area, panel, &axis, x_range.clone(), &markers, labels)?;
        }
        root.present().map_err(draw_error)?;
    }
    Ok(svg)
}

/// Minutes since the hour of the first sample on the x axis, so that the
/// "nice" tick values plotters picks (5, 10, 0.5) fall on round wall-clock
/// times; printed as UTC wall time.
struct TimeAxis {
    origin: DateTime<Utc>,
    /// The chart spans more than a day: labels carry the date.
    with_date: bool,
}

impl TimeAxis {
    fn new(first: DateTime<Utc>, last: DateTime<Utc>) -> TimeAxis {
        let origin = first
            .with_minute(0)
            .and_then(|t| t.with_second(0))
            .and_then(|t| t.with_nanosecond(0))
            .unwrap_or(first);
        TimeAxis {
            origin,
            with_date: last - first > TimeDelta::days(1),
        }
    }

    fn x(&self, at: DateTime<Utc>) -> f64 {
        (at - self.origin).num_milliseconds() as f64 / 60_000.0
    }

    fn label(&self, x: f64) -> String {
        if !x.is_finite() {
            return String::new();
        }
        let format = if self.with_date {
            "%m-%d %H:%M"
        } else {
            "%H:%M:%S"
        };
        TimeDelta::try_milliseconds((x * 60_000.0).round() as i64)
            .and_then(|offset| self.origin.checked_add_signed(offset))
            .map_or_else(String::new, |at| at.format(format).to_string())
    }
}

/// One panel's data, in the panel's unit.
struct Panel {
    caption: &'static str,
    unit: &'static str,
    color: RGBColor,
    /// Runs of consecutive known values: an unknown value breaks the line.
    segments: Vec<Vec<(f64, f64)>>,
    thresholds: Vec<Threshold>,
    /// The y axis reaches at least this far, so an all-zero series is readable.
    minimum_top: f64,
}

struct Threshold {
    value: f64,
    label: String,
}

/// A vertical line at an instant of the incident.
struct Marker {
    x: f64,
    label: String,
}

fn segments(
    samples: &[&SamplePoint],
    axis: &TimeAxis,
    value: impl Fn(&SamplePoint) -> Option<f64>,
) -> Vec<Vec<(f64, f64)>> {
    let mut all = Vec::new();
    let mut current = Vec::new();
    for sample in samples {
        match value(sample).filter(|v| v.is_finite()) {
            Some(v) => current.push((axis.x(sample.at), v)),
            None if current.is_empty() => {}
            None => all.push(std::mem::take(&mut current)),
        }
    }
    if !current.is_empty() {
        all.push(current);
    }
    all
}

/// Each decision (labelled with its action, or its cause when it asks for no
/// action), the start of the first rollback step, and the end of the watch.
fn markers(timeline: &IncidentTimeline, axis: &TimeAxis) -> Vec<Marker> {
    let mut markers: Vec<Marker> = timeline
        .decisions
        .iter()
        .map(|decision| Marker {
            x: axis.x(decision.at),
            label: if decision.action == Action::None {
                decision.cause.to_string()
            } else {
                decision.action.to_string()
            },
        })
        .collect();
    let rollback_step = timeline
        .steps
        .iter()
        .filter(|s| matches!(s.stage, StepStage::Application | StepStage::Database))
        .min_by_key(|s| s.started_at);
    if let Some(step) = rollback_step {
        markers.push(Marker {
            x: axis.x(step.started_at),
            label: format!("{} starts", step.name),
        });
    }
    if let Some(until) = timeline.incident.watch_until {
        markers.push(Marker {
            x: axis.x(until),
            label: "watch ends".to_string(),
        });
    }
    markers.sort_by(|a, b| a.x.total_cmp(&b.x));
    markers
}

/// The error-rate thresholds (in %) and latency bounds (in ms) the decisions'
/// readings were judged against, one line per distinct rule and value.
fn thresholds(decisions: &[DecisionRecord]) -> (Vec<Threshold>, Vec<Threshold>) {
    let mut error_rate = Vec::new();
    let mut latency = Vec::new();
    let mut seen = HashSet::new();
    for (decision, reading) in readings(decisions) {
        let line = threshold_line(&decision.rule, &reading);
        if let Some((signal, threshold)) = line {
            // One line per rule and value: many decisions repeat one reading's threshold.
            if seen.insert((signal, decision.rule.clone(), threshold.value.to_bits())) {
                if signal == ERROR_RATE {
                    error_rate.push(threshold);
                } else {
                    latency.push(threshold);
                }
            }
        }
    }
    (error_rate, latency)
}

fn threshold_line(rule: &str, reading: &StoredReading) -> Option<(&'static str, Threshold)> {
    match reading.signal.as_str() {
        ERROR_RATE => {
            let threshold = reading.threshold()?;
            Some((
                ERROR_RATE,
                Threshold {
                    value: threshold * 100.0,
                    label: format!("threshold {} ({rule})", format_percent(threshold)),
                },
            ))
        }
        LATENCY => {
            let bound = reading.latency_bound_ms()?;
            let threshold = reading.threshold()?;
            Some((
                LATENCY,
                Threshold {
                    value: bound,
                    label: format!(
                        "bound {bound:.0} ms = baseline +{} ({rule})",
                        format_percent(threshold)
                    ),
                },
            ))
        }
        _ => None,
    }
}

fn x_range(samples: &[&SamplePoint], markers: &[Marker], axis: &TimeAxis) -> std::ops::Range<f64> {
    let xs = samples
        .iter()
        .map(|s| axis.x(s.at))
        .chain(markers.iter().map(|m| m.x))
        .filter(|x| x.is_finite());
    let (low, high) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(low, high), x| {
        (low.min(x), high.max(x))
    });
    if !low.is_finite() || !high.is_finite() {
        return -0.5..0.5;
    }
    // A single instant still gets a readable minute of axis.
    if high - low < 1.0 / 60.0 {
        return (low - 0.5)..(high + 0.5);
    }
    let pad = (high - low) * 0.02;
    (low - pad)..(high + pad)
}

/// The top of a panel's y axis: above its highest value and threshold, with
/// `headroom` (a fraction of the plot's height) left free for marker labels.
fn y_top(panel: &Panel, headroom: f64) -> f64 {
    let highest = panel
        .segments
        .iter()
        .flatten()
        .map(|(_, y)| *y)
        .chain(panel.thresholds.iter().map(|t| t.value))
        .fold(0.0_f64, f64::max);
    let top = highest * 1.1 / (1.0 - headroom);
    if top.is_finite() && top > panel.minimum_top {
        top
    } else {
        panel.minimum_top
    }
}

fn y_bottom(panel: &Panel) -> f64 {
    let lowest = panel
        .segments
        .iter()
        .flatten()
        .map(|(_, y)| *y)
        .fold(0.0_f64, f64::min);
    if lowest.is_finite() {
        lowest * 1.1
    } else {
        0.0
    }
}

fn draw_panel(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    panel: &Panel,
    axis: &TimeAxis,
    x_range: std::ops::Range<f64>,
    markers: &[Marker],
    labels: Option<&[LabelPlace]>,
) -> Result<(), ReportError> {
    let headroom = labels.map_or(0.0, label_headroom);
    let (top, bottom) = (y_top(panel, headroom), y_bottom(panel));
    let mut chart = ChartBuilder::on(area)
        .caption(panel.caption, ("sans-serif", 14))
        .margin(MARGIN)
        .x_label_area_size(X_LABEL_AREA)
        .y_label_area_size(Y_LABEL_AREA)
        .build_cartesian_2d(x_range.clone(), bottom..top)
        .map_err(draw_error)?;
    let x_label = |x: &f64| axis.label(*x);
    chart
        .configure_mesh()
        .x_labels(8)
        .y_labels(6)
        .x_label_formatter(&x_label)
        .y_desc(panel.unit)
        .light_line_style(RGBColor(238, 238, 238))
        .draw()
        .map_err(draw_error)?;

    let marker_style = MARKER_COLOR.stroke_width(1);
    for marker in markers {
        chart
            .draw_series(LineSeries::new(
                [(marker.x, bottom), (marker.x, top)],
                marker_style,
            ))
            .map_err(draw_error)?;
    }
    if let Some(places) = labels {
        let right_of_line = ("sans-serif", 11).into_font().color(&BLACK);
        let left_of_line = right_of_line.pos(Pos::new(HPos::Right, VPos::Top));
        chart
            .draw_series(markers.iter().zip(places).map(|(marker, place)| {
                let y = 3 + LABEL_ROW_HEIGHT * place.row as i32;
                let text = if place.leftward {
                    Text::new(marker.label.clone(), (-3, y), left_of_line.clone())
                } else {
                    Text::new(marker.label.clone(), (3, y), right_of_line.clone())
                };
                EmptyElement::at((marker.x, top)) + text
            }))
            .map_err(draw_error)?;
    }

    let threshold_style = THRESHOLD_COLOR.stroke_width(1);
    let threshold_font = ("sans-serif", 11).into_font().color(&THRESHOLD_COLOR);
    for threshold in &panel.thresholds {
        chart
            .draw_series(DashedLineSeries::new(
                [
                    (x_range.start, threshold.value),
                    (x_range.end, threshold.value),
                ],
                8,
                5,
                threshold_style,
            ))
            .map_err(draw_error)?;
        chart
            .draw_series(std::iter::once(
                EmptyElement::at((x_range.start, threshold.value))
                    + Text::new(threshold.label.clone(), (4, -14), threshold_font.clone()),
            ))
            .map_err(draw_error)?;
    }

    let line_style = panel.color.stroke_width(2);
    for segment in &panel.segments {
        // Points too: a run of one value has no line to show it.
        chart
            .draw_series(LineSeries::new(segment.iter().copied(), line_style).point_size(2))
            .map_err(draw_error)?;
    }
    if panel.segments.is_empty() {
        let font = ("sans-serif", 14).into_font().color(&MARKER_COLOR);
        let middle = (
            x_range.start + (x_range.end - x_range.start) / 2.0,
            (bottom + top) / 2.0,
        );
        chart
            .draw_series(std::iter::once(Text::new("no data", middle, font)))
            .map_err(draw_error)?;
    }
    Ok(())
}

/// Where a marker's label goes: its row from the top, and whether it is
/// written left of its line (near the right edge, so it is not cut off).
#[derive(Clone, Copy, Debug, PartialEq)]
struct LabelPlace {
    row: usize,
    leftward: bool,
}

/// Places the markers' labels (sorted by x): each in the first row where it
/// does not run into an earlier label, so labels of close instants stack.
/// Widths are estimates: without a font library no text is measured.
fn place_labels(
    markers: &[Marker],
    x_range: &std::ops::Range<f64>,
    plot_width: f64,
) -> Vec<LabelPlace> {
    let span = x_range.end - x_range.start;
    let pixels_per_unit = if span > 0.0 { plot_width / span } else { 0.0 };
    let mut row_ends = [f64::NEG_INFINITY; LABEL_ROWS];
    markers
        .iter()
        .map(|marker| {
            let line = (marker.x - x_range.start) * pixels_per_unit;
            let width = 6.0 + marker.label.chars().count() as f64 * LABEL_CHAR_WIDTH;
            let leftward = line + width > plot_width;
            let (start, end) = if leftward {
                (line - width, line)
            } else {
                (line, line + width)
            };
            let row = row_ends
                .iter()
                .position(|row_end| *row_end < start)
                .unwrap_or_else(|| {
                    // Every row is taken here: reuse the one that frees up first.
                    (0..LABEL_ROWS)
                        .min_by(|a, b| row_ends[*a].total_cmp(&row_ends[*b]))
                        .unwrap_or(0)
                });
            row_ends[row] = end;
            LabelPlace { row, leftward }
        })
        .collect()
}

/// The fraction of a panel's plot height its marker labels take.
fn label_headroom(places: &[LabelPlace]) -> f64 {
    let Some(rows) = places.iter().map(|p| p.row + 1).max() else {
        return 0.0;
    };
    let plot_height =
        f64::from(HEIGHT - TITLE_HEIGHT) / 2.0 - 20.0 - f64::from(X_LABEL_AREA + 2 * MARGIN);
    let needed = f64::from(LABEL_ROW_HEIGHT) * rows as f64 + 6.0;
    (needed / plot_height).clamp(0.0, 0.5)
}

fn draw_error<E: std::error::Error + Send + Sync>(error: DrawingAreaErrorKind<E>) -> ReportError {
    ReportError::Draw(error.to_string())
}
