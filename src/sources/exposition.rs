//! A parser for the Prometheus text exposition format (0.0.4) and OpenMetrics
//! 1.0 text, written for rollwatch because prometheus-parse 0.2.5 silently
//! drops or garbles valid input (see ARCHITECTURE.md, "Why our own exposition
//! parser"). It never mis-reads a line silently: a line it cannot read is
//! reported with its number and reason and counted, and every other line is
//! read exactly (escapes decoded, `:` in names, `}` `,` `=` in label values,
//! float-second timestamps, OpenMetrics suffixes resolved to their family's type).

use std::collections::HashMap;

/// The type a `# TYPE` line gave a metric family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MetricType {
    Counter,
    Gauge,
    Histogram,
    GaugeHistogram,
    Summary,
    Info,
    StateSet,
    Untyped,
}

impl MetricType {
    fn parse(text: &str) -> Option<MetricType> {
        Some(match text {
            "counter" => MetricType::Counter,
            "gauge" => MetricType::Gauge,
            "histogram" => MetricType::Histogram,
            "gaugehistogram" => MetricType::GaugeHistogram,
            "summary" => MetricType::Summary,
            "info" => MetricType::Info,
            "stateset" => MetricType::StateSet,
            "untyped" | "unknown" => MetricType::Untyped,
            _ => return None,
        })
    }

    /// The sample-name suffixes this type's samples may carry.
    fn suffixes(self) -> &'static [&'static str] {
        match self {
            MetricType::Counter => &["_total", "_created"],
            MetricType::Histogram => &["_bucket", "_sum", "_count", "_created"],
            MetricType::GaugeHistogram => &["_bucket", "_gsum", "_gcount"],
            MetricType::Summary => &["_sum", "_count", "_created"],
            MetricType::Info => &["_info"],
            _ => &[],
        }
    }
}

/// Which text format: decides how a timestamp is read (milliseconds in the
/// Prometheus format, seconds in OpenMetrics).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Prometheus,
    OpenMetrics,
}

impl Format {
    /// From a `Content-Type` header, falling back to the body's `# EOF` marker.
    pub fn detect(content_type: Option<&str>, body: &str) -> Format {
        if content_type.is_some_and(|c| c.contains("application/openmetrics-text")) {
            return Format::OpenMetrics;
        }
        if body.trim_end().ends_with("# EOF") {
            Format::OpenMetrics
        } else {
            Format::Prometheus
        }
    }
}

/// One sample line.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    /// Label pairs in the order written, values unescaped.
    pub labels: Vec<(String, String)>,
    pub value: f64,
    /// Milliseconds since the epoch, when the line carried a timestamp.
    pub timestamp_ms: Option<i64>,
    /// The type of the family the sample belongs to (`Untyped` without a `# TYPE`).
    pub metric_type: MetricType,
}

impl Sample {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A line that could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineError {
    /// 1-based.
    pub line: usize,
    pub message: String,
}

/// Everything read from one exposition.
#[derive(Clone, Debug, Default)]
pub struct Exposition {
    pub samples: Vec<Sample>,
    pub errors: Vec<LineError>,
    /// An OpenMetrics `# EOF` was seen.
    pub eof: bool,
}

/// Parses a whole exposition. Never fails: unreadable lines land in `errors`.
pub fn parse(text: &str, format: Format) -> Exposition {
    let mut types: HashMap<&str, MetricType> = HashMap::new();
    let mut out = Exposition::default();
    // Resolving a sample's type needs the `# TYPE` lines, which precede their
    // samples in valid input; a sample's family is resolved when it is read.
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        if out.eof {
            if !raw.trim().is_empty() {
                out.errors.push(LineError {
                    line,
                    message: "content after # EOF".into(),
                });
            }
            continue;
        }
        let trimmed = raw.trim_matches(|c| c == ' ' || c == '\t' || c == '\r');
        if trimmed.is_empty() {
            continue;
        }
        if let Some(comment) = trimmed.strip_prefix('#') {
            match parse_comment(comment) {
                Comment::Type(name, kind) => match MetricType::parse(kind) {
                    Some(kind) if is_metric_name(name) => {
                        types.insert(name, kind);
                    }
                    Some(_) => out.errors.push(LineError {
                        line,
                        message: format!("invalid metric name \"{name}\" in # TYPE"),
                    }),
                    None => out.errors.push(LineError {
                        line,
                        message: format!("unknown metric type \"{kind}\" in # TYPE"),
                    }),
                },
                Comment::Eof => out.eof = true,
                Comment::Other => {}
            }
            continue;
        }
        match parse_sample(trimmed, format) {
            Ok(mut sample) => {
                sample.metric_type = resolve_type(&types, &sample.name);
                out.samples.push(sample);
            }
            Err(message) => out.errors.push(LineError { line, message }),
        }
    }
    out
}

enum Comment<'a> {
    Type(&'a str, &'a str),
    Eof,
    Other,
}

fn parse_comment(comment: &str) -> Comment<'_> {
    let comment = comment.trim_start_matches([' ', '\t']);
    if comment == "EOF" {
        return Comment::Eof;
    }
    let mut words = comment.split_ascii_whitespace();
    match (words.next(), words.next(), words.next()) {
        (Some("TYPE"), Some(name), Some(kind)) => Comment::Type(name, kind),
        _ => Comment::Other,
    }
}

fn resolve_type(types: &HashMap<&str, MetricType>, name: &str) -> MetricType {
    if let Some(kind) = types.get(name) {
        return *kind;
    }
    const SUFFIXES: [&str; 8] = [
        "_total", "_created", "_bucket", "_sum", "_count", "_gsum", "_gcount", "_info",
    ];
    for suffix in SUFFIXES {
        if let Some(family) = name.strip_suffix(suffix)
            && let Some(kind) = types.get(family)
            && kind.suffixes().contains(&suffix)
        {
            return *kind;
        }
    }
    MetricType::Untyped
}

fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name_char(c: u8, first: bool) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || (!first && c.is_ascii_digit())
}

fn parse_sample(line: &str, format: Format) -> Result<Sample, String> {
    let bytes = line.as_bytes();
    let name_end = bytes
        .iter()
        .position(|&c| !(c.is_ascii_alphanumeric() || c == b'_' || c == b':'))
        .unwrap_or(bytes.len());
    let name = &line[..name_end];
    if !is_metric_name(name) {
        return Err(format!("invalid metric name at \"{}\"", truncate(line)));
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    // Blanks may stand between the name and its labels (as Prometheus' own parser allows).
    if let Some(after) = rest.trim_start_matches([' ', '\t']).strip_prefix('{') {
        let (parsed, remaining) = parse_labels(after)?;
        labels = parsed;
        rest = remaining;
    }
    if !rest.starts_with([' ', '\t']) {
        return Err(format!(
            "expected a space and a value after \"{}\"",
            truncate(&line[..line.len() - rest.len()])
        ));
    }
    let rest = rest.trim_start_matches([' ', '\t']);
    // OpenMetrics exemplar: "value [timestamp] # {labels} value [timestamp]".
    let (measurement, exemplar) = match rest.find(" #") {
        Some(at) => (&rest[..at], Some(&rest[at + 2..])),
        None => (rest, None),
    };
    let mut fields = measurement.split_ascii_whitespace();
    let value_text = fields.next().ok_or("missing value")?;
    let value = parse_value(value_text)?;
    let timestamp_ms = match fields.next() {
        None => None,
        Some(text) => Some(parse_timestamp(text, format)?),
    };
    if let Some(extra) = fields.next() {
        return Err(format!("unexpected \"{extra}\" after the timestamp"));
    }
    if let Some(exemplar) = exemplar {
        check_exemplar(exemplar)?;
    }
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
        timestamp_ms,
        metric_type: MetricType::Untyped,
    })
}

/// Parses `name="value",...}` (the opening brace already consumed); returns the
/// labels and what follows the closing brace.
/// Label pairs in the order written.
type Labels = Vec<(String, String)>;

fn parse_labels(mut rest: &str) -> Result<(Labels, &str), String> {
    let mut labels: Labels = Vec::new();
    loop {
        rest = rest.trim_start_matches([' ', '\t']);
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((labels, after));
        }
        let bytes = rest.as_bytes();
        let name_len = bytes
            .iter()
            .enumerate()
            .position(|(i, &c)| !is_label_name_char(c, i == 0))
            .unwrap_or(bytes.len());
        if name_len == 0 {
            return Err(format!("invalid label name at \"{}\"", truncate(rest)));
        }
        let name = &rest[..name_len];
        rest = rest[name_len..].trim_start_matches([' ', '\t']);
        rest = rest
            .strip_prefix('=')
            .ok_or_else(|| format!("expected = after label \"{name}\""))?;
        rest = rest.trim_start_matches([' ', '\t']);
        rest = rest
            .strip_prefix('"')
            .ok_or_else(|| format!("expected a quoted value for label \"{name}\""))?;
        let (value, after) =
            parse_quoted(rest).ok_or_else(|| format!("unterminated value for label \"{name}\""))?;
        if labels.iter().any(|(n, _)| n == name) {
            return Err(format!("duplicate label \"{name}\""));
        }
        labels.push((name.to_string(), value));
        rest = after.trim_start_matches([' ', '\t']);
        if let Some(after) = rest.strip_prefix(',') {
            rest = after;
        } else if !rest.starts_with('}') {
            return Err(format!("expected , or }} after label \"{name}\""));
        }
    }
}

/// Reads a quoted string body up to its closing quote, decoding `\\`, `\"` and `\n`.
fn parse_quoted(text: &str) -> Option<(String, &str)> {
    let bytes = text.as_bytes();
    let mut value = String::new();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                value.push_str(&text[start..i]);
                return Some((value, &text[i + 1..]));
            }
            b'\\' if i + 1 < bytes.len() => {
                value.push_str(&text[start..i]);
                match bytes[i + 1] {
                    b'n' => value.push('\n'),
                    b'\\' => value.push('\\'),
                    b'"' => value.push('"'),
                    // An unknown escape keeps its backslash, as Prometheus does; the
                    // character after it (maybe multi-byte) is copied as it stands.
                    _ => {
                        value.push('\\');
                        i += 1;
                        start = i;
                        continue;
                    }
                }
                i += 2;
                start = i;
            }
            _ => i += 1,
        }
    }
    None
}

fn parse_value(text: &str) -> Result<f64, String> {
    // Rust's float parser accepts what Go's does here (NaN, +Inf, -Inf, 1e3), but also
    // "infinity" spelled out, which the formats do not; that is harmless.
    text.parse::<f64>()
        .map_err(|_| format!("invalid value \"{}\"", truncate(text)))
}

fn parse_timestamp(text: &str, format: Format) -> Result<i64, String> {
    let invalid = || format!("invalid timestamp \"{}\"", truncate(text));
    let is_integer = text
        .bytes()
        .enumerate()
        .all(|(i, c)| c.is_ascii_digit() || (i == 0 && c == b'-'));
    if is_integer && format == Format::Prometheus {
        return text.parse::<i64>().map_err(|_| invalid());
    }
    let seconds: f64 = text.parse().map_err(|_| invalid())?;
    if !seconds.is_finite() {
        return Err(invalid());
    }
    Ok((seconds * 1000.0).round() as i64)
}

/// An exemplar must be `{labels} value [timestamp]`; it is checked and dropped.
fn check_exemplar(text: &str) -> Result<(), String> {
    let text = text.trim_start_matches([' ', '\t']);
    let after = text
        .strip_prefix('{')
        .ok_or("invalid exemplar: expected {")?;
    let (_, rest) = parse_labels(after).map_err(|e| format!("invalid exemplar: {e}"))?;
    let mut fields = rest.split_ascii_whitespace();
    let value = fields.next().ok_or("invalid exemplar: missing value")?;
    parse_value(value).map_err(|e| format!("invalid exemplar: {e}"))?;
    if let Some(ts) = fields.next() {
        ts.parse::<f64>()
            .map_err(|_| format!("invalid exemplar timestamp \"{ts}\""))?;
    }
    Ok(())
}

fn truncate(text: &str) -> &str {
    let mut end = text.len().min(60);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests;
