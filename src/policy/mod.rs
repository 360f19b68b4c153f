//! Policy files: TOML text → `${VAR}` substitution → serde types that mirror the
//! file (`raw`) → a validated `engine::Policy` (`compile`). Every problem is
//! collected and reported as `FILE:LINE:COL: what is wrong, what is expected`.

mod compile;
mod interpolate;
pub mod notify;
mod raw;

use std::fmt;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::engine::policy::Policy;

pub use interpolate::{InterpolationError, interpolate};

/// One problem in a policy file, with its position (1-based line and column).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )
    }
}

/// Every problem found in one policy file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyErrors(pub Vec<PolicyError>);

impl fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PolicyErrors {}

pub use compile::Compiled;

/// Reads, substitutes, parses and validates the policy at `path`, taking
/// variables from the process environment.
pub fn load(path: &Path) -> Result<Policy, PolicyErrors> {
    load_target(path).map(|compiled| compiled.policy)
}

/// Like `load`, with the target's source, health probe and checks.
pub fn load_target(path: &Path) -> Result<Compiled, PolicyErrors> {
    let file = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|error| {
        PolicyErrors(vec![PolicyError {
            file: file.clone(),
            line: 1,
            column: 1,
            message: format!("cannot read policy file: {error}"),
        }])
    })?;
    compile_bytes(&file, &bytes, |name| std::env::var(name).ok())
}

/// Like `load`, for text already in memory and an explicit variable lookup.
pub fn from_bytes(
    file: &str,
    bytes: &[u8],
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Policy, PolicyErrors> {
    compile_bytes(file, bytes, lookup).map(|compiled| compiled.policy)
}

/// Like `load_target`, for text already in memory and an explicit variable lookup.
pub fn compile_bytes(
    file: &str,
    bytes: &[u8],
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Compiled, PolicyErrors> {
    let sha256 = hex(&Sha256::digest(bytes));
    let source = std::str::from_utf8(bytes).map_err(|error| {
        let (line, column) = line_column(
            &String::from_utf8_lossy(&bytes[..error.valid_up_to()]),
            error.valid_up_to(),
        );
        PolicyErrors(vec![PolicyError {
            file: file.to_string(),
            line,
            column,
            message: "the file is not valid UTF-8".into(),
        }])
    })?;
    let interpolated = interpolate(source, lookup).map_err(|error| {
        let (line, column) = line_column(source, error.offset);
        PolicyErrors(vec![PolicyError {
            file: file.to_string(),
            line,
            column,
            message: error.message,
        }])
    })?;
    let locate = |offset: usize| line_column(source, interpolated.original_offset(offset));
    let raw: raw::RawPolicy = toml::from_str(&interpolated.text).map_err(|error| {
        let (line, column) = error.span().map_or((1, 1), |span| locate(span.start));
        PolicyErrors(vec![PolicyError {
            file: file.to_string(),
            line,
            column,
            message: compile::rewrite_parser_message(
                error.message(),
                error
                    .span()
                    .map(|span| key_on_line(&interpolated.text, span.start)),
            ),
        }])
    })?;
    compile::compile(raw, file, sha256).map_err(|problems| {
        PolicyErrors(
            problems
                .into_iter()
                .map(|(span, message)| {
                    let (line, column) = locate(span.start);
                    PolicyError {
                        file: file.to_string(),
                        line,
                        column,
                        message,
                    }
                })
                .collect(),
        )
    })
}

/// The key assigned on the line holding `offset`, if the line is `key = ...`.
fn key_on_line(text: &str, offset: usize) -> String {
    let offset = floor_char_boundary(text, offset.min(text.len()));
    let start = text[..offset].rfind('\n').map_or(0, |n| n + 1);
    let line = &text[start..];
    let line = &line[..line.find('\n').unwrap_or(line.len())];
    line.split_once('=')
        .map(|(key, _)| key.trim().to_string())
        .unwrap_or_default()
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..floor_char_boundary(text, offset)];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |n| n + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

fn floor_char_boundary(text: &str, mut offset: usize) -> usize {
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    offset
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests;
