//! `${VAR}` and `${VAR:-default}` substitution in policy text, done before the
//! TOML parser sees it. Comments are left alone (a comment may mention a variable
//! that is not set), `$${` writes a literal `${`, and every substitution is
//! remembered so that a parser error inside the substituted text can be pointed
//! back at the original file's line and column.

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
                    (Some(value), _) => value,
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
        lexer.step(&bytes[i..]);
        i += 1;
    }
    text.push_str(&source[copied_up_to..]);
    Ok(Interpolated { text, replacements })
}

/// Just enough of TOML's lexical structure to know whether a `#` starts a comment.
#[derive(Default)]
struct TomlLexer {
    state: LexState,
    skip: usize,
}

#[derive(Default, PartialEq, Eq, Clone, Copy)]
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

    /// Advances over the first byte of `rest`.
    fn step(&mut self, rest: &[u8]) {
        if self.skip > 0 {
            self.skip -= 1;
            return;
        }
        let c = rest[0];
        use LexState::*;
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
    }
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
