//! `${VAR}` and `${VAR:-default}` substitution in policy text, done before the
//! TOML parser sees it. Comments are left alone (a comment may mention a variable
//! that is not set), `$${` writes a literal `${`, and every substitution is
//! remembered so that a parser error inside the substituted text can be pointed
//! back at the original file's line and column.
//!
//! A variable's value is data, never policy text: it is escaped for where it
//! lands (a TOML basic string, a PromQL string literal inside a query or
//! selector) or, where no escape exists (a TOML literal string, bare TOML, bare
//! PromQL), refused unless it is plain. A `"` or a newline in a value cannot end
//! a string and add keys or matchers. Errors name the variable, never its value
//! (it may be a secret). A `:-default` is written in the file by its author and
//! is pasted as it stands.

use std::ops::Range;

/// The text after substitution and a map from its offsets back to the original.
#[derive(Debug)]
pub struct Interpolated {
    pub text: String,
    /// (range in `text`, range in the original) for every substitution, in order.
    replacements: Vec<(Range<usize>, Range<usize>)>,
}

impl Interpolated {
    /// Maps an offset in the substituted text to an offset in the original text.
    /// An offset inside a substituted value maps to the start of its `${`.
    pub fn original_offset(&self, offset: usize) -> usize {
        let mut shift: isize = 0;
        for (new, old) in &self.replacements {
            if offset < new.start {
                break;
            }
            if offset < new.end {
                return old.start;
            }
            shift = old.end as isize - new.end as isize;
        }
        (offset as isize + shift).max(0) as usize
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterpolationError {
    /// Byte offset of the `${` in the original text.
    pub offset: usize,
    pub message: String,
}

/// Replaces variables using `lookup` (the process environment in production, a
/// map in tests).
pub fn interpolate(
    source: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Interpolated, InterpolationError> {
    let bytes = source.as_bytes();
    let mut text = String::with_capacity(source.len());
    let mut replacements = Vec::new();
    let mut lexer = TomlLexer::default();
    let mut copied_up_to = 0;
    let mut i = 0;
    while i < bytes.len() {
        if !lexer.in_comment() && bytes[i] == b'$' {
            if bytes[i..].starts_with(b"$${") {
                text.push_str(&source[copied_up_to..i]);
                text.push_str("${");
                replacements.push((text.len() - 2..text.len(), i..i + 3));
                i += 3;
                copied_up_to = i;
                continue;
            }
            if bytes[i..].starts_with(b"${") {
                let line_end = source[i..].find('\n').map_or(source.len(), |n| i + n);
                let close = source[i..line_end]
                    .find('}')
                    .map(|c| i + c)
                    .ok_or_else(|| InterpolationError {
                        offset: i,
                        message: "unclosed \"${\", expected ${VAR} or ${VAR:-default}".into(),
                    })?;
                let inner = &source[i + 2..close];
                let (name, default) = match inner.split_once(":-") {
                    Some((name, default)) => (name, Some(default)),
                    None => (inner, None),
                };
                if name.is_empty()
                    || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    || name.starts_with(|c: char| c.is_ascii_digit())
                {
                    return Err(InterpolationError {
                        offset: i,
                        message: format!(
                            "invalid variable name \"{name}\", expected letters, digits and _"
                        ),
                    });
                }
                let value = match (lookup(name), default) {
                    (Some(value), _) => {
                        let context = lexer.context(source, i);
                        escape_for(context, name, &value)
                            .map_err(|message| InterpolationError { offset: i, message })?
                    }
                    (None, Some(default)) => default.to_string(),
                    (None, None) => {
                        return Err(InterpolationError {
                            offset: i,
                            message: format!(
                                "environment variable \"{name}\" is not set and has no default; \
                                 set it or write ${{{name}:-default}}"
                            ),
                        });
                    }
                };
                text.push_str(&source[copied_up_to..i]);
                let start = text.len();
                text.push_str(&value);
                replacements.push((start..text.len(), i..close + 1));
                i = close + 1;
                copied_up_to = i;
                continue;
            }
        }
        lexer.step(bytes, i);
        i += 1;
    }
    text.push_str(&source[copied_up_to..]);
    Ok(Interpolated { text, replacements })
}

/// Where a substituted value lands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Context {
    /// Outside any string: the value would be TOML syntax.
    BareToml,
    /// In a TOML string (`state` says which kind); `promql` when the string is a
    /// query or selector under `[source.queries]` or `[source.metrics]`.
    TomlString {
        state: LexState,
        promql: Option<PromqlContext>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PromqlContext {
    /// Outside a PromQL string: the value would be PromQL syntax.
    Bare,
    /// Inside a PromQL string literal opened by this quote (`"`, `'` or `` ` ``).
    Quoted(u8),
}

/// The value as it must be written at `context`, or why it cannot be.
fn escape_for(context: Context, name: &str, value: &str) -> Result<String, String> {
    match context {
        Context::BareToml => {
            if value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.:+-".contains(c))
            {
                Ok(value.to_string())
            } else {
                Err(format!(
                    "the value of environment variable \"{name}\" is used outside a string and holds \
                     characters that would change the policy's TOML; only letters, digits and _ . : + - \
                     can stand there, write \"${{{name}}}\" to use it as a string"
                ))
            }
        }
        Context::TomlString { state, promql } => {
            let value = match promql {
                None => value.to_string(),
                Some(promql) => escape_for_promql(promql, name, value)?,
            };
            escape_for_toml(state, name, &value)
        }
    }
}

fn escape_for_promql(context: PromqlContext, name: &str, value: &str) -> Result<String, String> {
    match context {
        PromqlContext::Bare => {
            if value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_:.".contains(c))
            {
                Ok(value.to_string())
            } else {
                Err(format!(
                    "the value of environment variable \"{name}\" is used outside a quoted label value \
                     in a query or selector and holds characters that would change it; only letters, \
                     digits and _ : . can stand there, quote it as in job=\"${{{name}}}\""
                ))
            }
        }
        PromqlContext::Quoted(quote) => {
            if value.chars().any(char::is_control) || (quote == b'`' && value.contains('`')) {
                return Err(format!(
                    "the value of environment variable \"{name}\" holds a control character{} \
                     that cannot stand in a query's quoted value",
                    if quote == b'`' { " or a backquote" } else { "" }
                ));
            }
            if quote == b'`' {
                return Ok(value.to_string());
            }
            let mut escaped = String::with_capacity(value.len());
            for c in value.chars() {
                if c == '\\' || c == quote as char {
                    escaped.push('\\');
                }
                escaped.push(c);
            }
            Ok(escaped)
        }
    }
}

fn escape_for_toml(state: LexState, name: &str, value: &str) -> Result<String, String> {
    match state {
        LexState::Basic | LexState::MultiBasic => {
            let mut escaped = String::with_capacity(value.len());
            for c in value.chars() {
                match c {
                    '"' => escaped.push_str("\\\""),
                    '\\' => escaped.push_str("\\\\"),
                    '\n' => escaped.push_str("\\n"),
                    '\r' => escaped.push_str("\\r"),
                    '\t' => escaped.push_str("\\t"),
                    c if c.is_control() => escaped.push_str(&format!("\\u{:04X}", c as u32)),
                    c => escaped.push(c),
                }
            }
            Ok(escaped)
        }
        _ => {
            // A literal string has no escapes: refuse what would end or break it.
            let multi = state == LexState::MultiLiteral;
            let breaks =
                |c: char| c == '\'' || (c.is_control() && c != '\t' && !(multi && c == '\n'));
            if value.chars().any(breaks) {
                Err(format!(
                    "the value of environment variable \"{name}\" holds a quote or a control character, \
                     which a '...' string cannot hold; write \"${{{name}}}\" in a \"...\" string instead"
                ))
            } else {
                Ok(value.to_string())
            }
        }
    }
}

/// Just enough of TOML's lexical structure to know whether a `#` starts a
/// comment and what kind of string, if any, a `${` stands in.
#[derive(Default)]
struct TomlLexer {
    state: LexState,
    skip: usize,
    /// Offset of the first byte after the opening quote of the current string.
    string_start: usize,
}

#[derive(Default, PartialEq, Eq, Clone, Copy, Debug)]
enum LexState {
    #[default]
    Code,
    Comment,
    Basic,
    Literal,
    MultiBasic,
    MultiLiteral,
}

impl TomlLexer {
    fn in_comment(&self) -> bool {
        self.state == LexState::Comment
    }

    /// Where a value substituted at `offset` of `source` lands.
    fn context(&self, source: &str, offset: usize) -> Context {
        let state = match self.state {
            LexState::Code | LexState::Comment => return Context::BareToml,
            state => state,
        };
        let string_start = self.string_start.min(offset);
        let promql = is_query_or_selector(source, string_start)
            .then(|| promql_context(state, &source.as_bytes()[string_start..offset]));
        Context::TomlString { state, promql }
    }

    /// Advances over the byte at `offset` of `bytes`.
    fn step(&mut self, bytes: &[u8], offset: usize) {
        if self.skip > 0 {
            self.skip -= 1;
            return;
        }
        let rest = &bytes[offset..];
        let c = rest[0];
        use LexState::*;
        let before = self.state;
        self.state = match (self.state, c) {
            (Code, b'#') => Comment,
            (Code, b'"') if rest.starts_with(b"\"\"\"") => {
                self.skip = 2;
                MultiBasic
            }
            (Code, b'\'') if rest.starts_with(b"'''") => {
                self.skip = 2;
                MultiLiteral
            }
            (Code, b'"') => Basic,
            (Code, b'\'') => Literal,
            (Comment, b'\n') => Code,
            (Basic, b'\\') | (MultiBasic, b'\\') => {
                self.skip = 1;
                self.state
            }
            (Basic, b'"') | (Basic, b'\n') => Code,
            (Literal, b'\'') | (Literal, b'\n') => Code,
            (MultiBasic, b'"') if rest.starts_with(b"\"\"\"") => {
                self.skip = 2;
                Code
            }
            (MultiLiteral, b'\'') if rest.starts_with(b"'''") => {
                self.skip = 2;
                Code
            }
            (state, _) => state,
        };
        if before == Code && self.state != Code && self.state != Comment {
            self.string_start = offset + 1 + self.skip;
        }
    }
}

/// Whether the string starting at `string_start` is the value of a key under
/// `[source.queries]` or `[source.metrics]` (a table header, dotted keys or an
/// inline table), where text is PromQL or a selector.
fn is_query_or_selector(source: &str, string_start: usize) -> bool {
    let before = &source[..string_start];
    let line_start = before.rfind('\n').map_or(0, |n| n + 1);
    let key = before[line_start..].split('=').next().unwrap_or("");
    let table = before[..line_start]
        .lines()
        .rev()
        .map(|line| line.split('#').next().unwrap_or("").trim())
        .find(|line| line.starts_with('['))
        .map_or("", |header| header.trim_matches(|c| c == '[' || c == ']'));
    let path: String = format!("{table}.{key}")
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '"' && *c != '\'')
        .collect();
    let path = path.trim_start_matches('.');
    ["source.queries", "source.metrics"]
        .iter()
        .any(|table| path.starts_with(table))
}

/// Whether the text of a query so far (`content`, the raw TOML string content
/// from its opening quote) leaves the next character inside a PromQL string.
fn promql_context(state: LexState, content: &[u8]) -> PromqlContext {
    let toml_escapes = matches!(state, LexState::Basic | LexState::MultiBasic);
    let mut quote: Option<u8> = None;
    let mut i = 0;
    while i < content.len() {
        let mut c = content[i];
        // In a TOML basic string `\"` is a `"` and `\\` a `\` of the query.
        if toml_escapes && c == b'\\' && i + 1 < content.len() {
            i += 1;
            c = content[i];
            if c != b'"' && c != b'\\' {
                i += 1;
                continue;
            }
            if c == b'\\' && quote.is_some_and(|q| q != b'`') {
                // A PromQL escape: skip the escaped character too.
                i += 1;
                if content.get(i) == Some(&b'\\') {
                    i += 1;
                }
                i += 1;
                continue;
            }
        } else if c == b'\\' && quote.is_some_and(|q| q != b'`') {
            i += 2;
            continue;
        }
        quote = match quote {
            None if matches!(c, b'"' | b'\'' | b'`') => Some(c),
            Some(q) if q == c => None,
            other => other,
        };
        i += 1;
    }
    quote.map_or(PromqlContext::Bare, PromqlContext::Quoted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "TARGET_URL" => Some("http://127.0.0.1:8080".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn substitutes_set_variables_and_defaults() {
        let out = interpolate(
            "url = \"${TARGET_URL}/metrics\"\nx = \"${NOPE:-fallback}\"\ne = \"${EMPTY:-d}\"",
            env,
        )
        .unwrap();
        assert_eq!(
            out.text,
            "url = \"http://127.0.0.1:8080/metrics\"\nx = \"fallback\"\ne = \"\""
        );
    }

    #[test]
    fn missing_variable_without_default_is_named_with_its_offset() {
        let err = interpolate("a = 1\nurl = \"${PROMETHEUS_URL}\"", env).unwrap_err();
        assert_eq!(err.offset, 13);
        assert!(
            err.message.contains("\"PROMETHEUS_URL\" is not set"),
            "{}",
            err.message
        );
    }

    #[test]
    fn comments_are_not_interpolated_but_hashes_in_strings_are_not_comments() {
        let out = interpolate(
            "# uses ${UNSET}\nx = \"#${TARGET_URL}\" # ${ALSO_UNSET}",
            env,
        )
        .unwrap();
        assert_eq!(
            out.text,
            "# uses ${UNSET}\nx = \"#http://127.0.0.1:8080\" # ${ALSO_UNSET}"
        );
    }

    #[test]
    fn double_dollar_escapes() {
        let out = interpolate("x = \"$${HOME}\"", env).unwrap();
        assert_eq!(out.text, "x = \"${HOME}\"");
    }

    #[test]
    fn offsets_map_back_across_substitutions() {
        let source = "u = \"${TARGET_URL}\"\nbad";
        let out = interpolate(source, env).unwrap();
        let bad_new = out.text.find("bad").unwrap();
        assert_eq!(out.original_offset(bad_new), source.find("bad").unwrap());
        let inside = out.text.find("127").unwrap();
        assert_eq!(out.original_offset(inside), source.find("${").unwrap());
    }

    #[test]
    fn unclosed_and_invalid_names_are_errors() {
        assert!(
            interpolate("x = \"${OOPS\"", env)
                .unwrap_err()
                .message
                .contains("unclosed")
        );
        assert!(
            interpolate("x = \"${A-B}\"", env)
                .unwrap_err()
                .message
                .contains("invalid variable")
        );
    }
}
