//! Per-row checks on answers (`[[checks]]` in the job file): length, regex, word lists,
//! invented terms (`no_new_terms`) and duplicates across rows (`unique`).
//!
//! Pure: no I/O. [`Checks::new`] validates and compiles the job's checks once (regexes,
//! word lists); [`Checks::evaluate`] turns one answer into one [`CheckResult`] per check,
//! and [`feedback`] turns the failed ones into the text appended to a regenerated prompt.
//! Only `unique` keeps state between rows: a fixed-size signature per kept answer.

mod terms;
mod text;
mod unique;

#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::types::Row;

/// One `[[checks]]` entry as written in the job file. Which keys are set decides its kind;
/// [`Checks::new`] refuses a check with keys of two kinds, or none.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckSpec {
    /// Unique name; the output column is `check_<name>`.
    pub name: String,
    /// What is checked: `output` (the whole answer, the default) or a structured-output field.
    #[serde(default)]
    pub on: Option<String>,
    /// Length: at most this many characters (grapheme clusters, as users see them).
    #[serde(default)]
    pub max_chars: Option<u64>,
    /// Length: at least this many characters.
    #[serde(default)]
    pub min_chars: Option<u64>,
    /// Length: at most this many words (Unicode word boundaries).
    #[serde(default)]
    pub max_words: Option<u64>,
    /// The answer must match this regular expression.
    #[serde(default)]
    pub regex: Option<String>,
    /// The answer must not match this regular expression.
    #[serde(default)]
    pub not_regex: Option<String>,
    /// Words or phrases that must all appear (whole words).
    #[serde(default)]
    pub must_contain: Option<Vec<String>>,
    /// Words or phrases that must not appear (whole words).
    #[serde(default)]
    pub never_contain: Option<Vec<String>>,
    /// Word lists ignore case (default true).
    #[serde(default)]
    pub case_insensitive: Option<bool>,
    /// Flag capitalised terms and numbers found in none of `columns`.
    #[serde(default)]
    pub no_new_terms: Option<bool>,
    /// `no_new_terms`: the input columns whose text the answer may draw on.
    #[serde(default)]
    pub columns: Option<Vec<String>>,
    /// `no_new_terms`: terms always allowed.
    #[serde(default)]
    pub allow: Option<Vec<String>>,
    /// Flag exact and near-duplicate answers across rows, keeping the first.
    #[serde(default)]
    pub unique: Option<bool>,
    /// `unique`: estimated Jaccard similarity from which an answer is a near-duplicate.
    #[serde(default)]
    pub threshold: Option<f64>,
}

/// The outcome of one check on one answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckResult {
    /// The check's name (its column is `check_<name>`).
    pub name: String,
    pub passed: bool,
    /// Why it failed, short enough for a spreadsheet cell ("147 characters, max 90").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A `[[checks]]` entry that cannot work, naming the entry and the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("checks[{index}] ({name}): {message}")]
pub struct CheckConfigError {
    /// Position in the job file's `[[checks]]` list (0-based, as `checks[i]`).
    pub index: usize,
    pub name: String,
    pub message: String,
}

/// The default `unique.threshold`.
pub const DEFAULT_THRESHOLD: f64 = 0.9;
/// The largest `max_chars`, `min_chars` and `max_words` accepted.
pub const MAX_COUNT: u64 = 1_000_000;

/// A job's checks, compiled and ready to evaluate answers.
#[derive(Debug)]
pub struct Checks {
    checks: Vec<Compiled>,
}

#[derive(Debug)]
struct Compiled {
    name: String,
    /// `None`: the whole answer; `Some(field)`: a structured-output field.
    field: Option<String>,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Length {
        max_chars: Option<u64>,
        min_chars: Option<u64>,
        max_words: Option<u64>,
    },
    Regex {
        must: Option<regex::Regex>,
        must_not: Option<regex::Regex>,
    },
    Words(text::WordLists),
    NoNewTerms(terms::NoNewTerms),
    Unique(unique::Unique),
}

impl Checks {
    /// Validates and compiles `specs`. `schema_fields` are the structured-output fields
    /// (`None` when the job has no schema), which `on` may name.
    pub fn new(
        specs: &[CheckSpec],
        schema_fields: Option<&[String]>,
    ) -> Result<Checks, CheckConfigError> {
        let mut checks: Vec<Compiled> = Vec::with_capacity(specs.len());
        for (index, spec) in specs.iter().enumerate() {
            let err = |message: String| CheckConfigError {
                index,
                name: spec.name.clone(),
                message,
            };
            validate_name(&spec.name).map_err(err)?;
            if checks.iter().any(|c| c.name == spec.name) {
                return Err(err(format!(
                    "name: another check is already named {:?}; names must be unique (each \
                     becomes the column check_{})",
                    spec.name, spec.name
                )));
            }
            let field = target(spec, schema_fields).map_err(err)?;
            let kind = compile(spec).map_err(err)?;
            checks.push(Compiled {
                name: spec.name.clone(),
                field,
                kind,
            });
        }
        Ok(Checks { checks })
    }

    /// No checks configured.
    pub fn is_empty(&self) -> bool {
        self.checks.is_empty()
    }

    /// The output columns, one per check, in job-file order (`check_<name>`).
    pub fn columns(&self) -> Vec<String> {
        self.checks
            .iter()
            .map(|c| format!("check_{}", c.name))
            .collect()
    }

    /// Runs every check on one answer. `row` gives the input columns (`no_new_terms`) and
    /// the row number (`unique`); `fields` is the parsed structured output, if any.
    /// Evaluating the same row again (a regenerated answer) replaces its earlier answer in
    /// the `unique` index.
    pub fn evaluate(
        &mut self,
        row: &Row,
        answer: &str,
        fields: Option<&Map<String, Value>>,
    ) -> Vec<CheckResult> {
        let mut out = Vec::with_capacity(self.checks.len());
        for check in &mut self.checks {
            let outcome = match target_text(check.field.as_deref(), answer, fields) {
                Err(reason) => Err(reason),
                Ok(text) => match &mut check.kind {
                    Kind::Length {
                        max_chars,
                        min_chars,
                        max_words,
                    } => text::length(&text, *max_chars, *min_chars, *max_words),
                    Kind::Regex { must, must_not } => {
                        text::regex(&text, must.as_ref(), must_not.as_ref())
                    }
                    Kind::Words(lists) => lists.check(&text),
                    Kind::NoNewTerms(t) => t.check(&text, row),
                    Kind::Unique(u) => u.check(row.index, &text),
                },
            };
            out.push(CheckResult {
                name: check.name.clone(),
                passed: outcome.is_ok(),
                reason: outcome.err(),
            });
        }
        out
    }
}

/// The line before the feedback appended to a rejected row's prompt (when its template
/// does not place `check_feedback` itself).
pub const FEEDBACK_HEADER: &str =
    "Your previous answer did not pass these checks; write a new answer that passes them:";

/// The feedback appended to a prompt when a rejected row is sent again: one line per
/// failed check (`- name: reason`); empty when every check passed.
pub fn feedback(results: &[CheckResult]) -> String {
    let mut lines = Vec::new();
    for r in results.iter().filter(|r| !r.passed) {
        let reason = r.reason.as_deref().unwrap_or("failed");
        lines.push(format!("- {}: {}", r.name, reason));
    }
    lines.join("\n")
}

fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("name: must not be empty (it becomes the column check_<name>)".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        return Err(format!(
            "name: {c:?} is not allowed; use only letters A-Z a-z, digits, '_' and '-' (it \
             becomes the column check_{name})"
        ));
    }
    Ok(())
}

/// The field a check reads (`None` for the whole answer), checked against the schema.
fn target(spec: &CheckSpec, schema_fields: Option<&[String]>) -> Result<Option<String>, String> {
    let on = match spec.on.as_deref() {
        None | Some("output") => return Ok(None),
        Some(on) => on,
    };
    match schema_fields {
        None => Err(format!(
            "on: {on:?} would be a structured-output field, but the job has no model.schema; \
             use on = \"output\" (the default) or add a schema"
        )),
        Some(fields) if !fields.iter().any(|f| f == on) => Err(format!(
            "on: {on:?} is neither a field of model.schema nor an [[outputs]] name; allowed: \
             \"output\" or one of {}",
            fields
                .iter()
                .map(|f| format!("{f:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        )),
        Some(_) => Ok(Some(on.to_string())),
    }
}

/// The text a check reads: the answer, or one field of the structured output.
fn target_text(
    field: Option<&str>,
    answer: &str,
    fields: Option<&Map<String, Value>>,
) -> Result<String, String> {
    let Some(field) = field else {
        return Ok(answer.to_string());
    };
    match fields.and_then(|f| f.get(field)) {
        None => Err(format!("the answer has no field '{field}'")),
        Some(v) => Ok(value_text(v)),
    }
}

/// A JSON value as text: strings as they are, null as empty, anything else as JSON.
pub(crate) fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Which kind a check is, from the keys that are set; refuses mixed or missing kinds.
fn compile(spec: &CheckSpec) -> Result<Kind, String> {
    let length = spec.max_chars.is_some() || spec.min_chars.is_some() || spec.max_words.is_some();
    let regex = spec.regex.is_some() || spec.not_regex.is_some();
    let words = spec.must_contain.is_some() || spec.never_contain.is_some();
    let terms = spec.no_new_terms.is_some();
    let unique = spec.unique.is_some();
    let kinds: Vec<&str> = [
        (length, "length (max_chars, min_chars, max_words)"),
        (regex, "regex (regex, not_regex)"),
        (words, "word list (must_contain, never_contain)"),
        (terms, "no_new_terms"),
        (unique, "unique"),
    ]
    .iter()
    .filter(|(set, _)| *set)
    .map(|(_, k)| *k)
    .collect();
    match kinds.len() {
        0 => {
            return Err(
                "no check given; set one of max_chars, min_chars, max_words, regex, \
                        not_regex, must_contain, never_contain, no_new_terms = true or \
                        unique = true"
                    .into(),
            )
        }
        1 => {}
        _ => {
            return Err(format!(
                "keys of several kinds of check are set: {}; one [[checks]] entry is one kind \
                 (write several entries)",
                kinds.join(" and ")
            ))
        }
    }
    // Keys that only one kind reads, refused elsewhere so a typo'd job does not silently
    // check less than it says.
    let stray = |set: bool, key: &str, kind: &str, ok: bool| -> Result<(), String> {
        if set && !ok {
            return Err(format!("{key}: only used by {kind} checks"));
        }
        Ok(())
    };
    stray(
        spec.case_insensitive.is_some(),
        "case_insensitive",
        "must_contain/never_contain",
        words,
    )?;
    stray(spec.columns.is_some(), "columns", "no_new_terms", terms)?;
    stray(spec.allow.is_some(), "allow", "no_new_terms", terms)?;
    stray(spec.threshold.is_some(), "threshold", "unique", unique)?;

    if length {
        for (key, v) in [
            ("max_chars", spec.max_chars),
            ("min_chars", spec.min_chars),
            ("max_words", spec.max_words),
        ] {
            if let Some(v) = v {
                if !(1..=MAX_COUNT).contains(&v) {
                    return Err(format!(
                        "{key}: {v} is outside the allowed range 1–{MAX_COUNT}"
                    ));
                }
            }
        }
        if let (Some(min), Some(max)) = (spec.min_chars, spec.max_chars) {
            if min > max {
                return Err(format!(
                    "min_chars ({min}) is greater than max_chars ({max}); no answer could pass"
                ));
            }
        }
        return Ok(Kind::Length {
            max_chars: spec.max_chars,
            min_chars: spec.min_chars,
            max_words: spec.max_words,
        });
    }
    if regex {
        let compile = |key: &str, p: &Option<String>| -> Result<Option<regex::Regex>, String> {
            p.as_deref()
                .map(|p| {
                    regex::Regex::new(p)
                        .map_err(|e| format!("{key}: not a valid regular expression: {e}"))
                })
                .transpose()
        };
        return Ok(Kind::Regex {
            must: compile("regex", &spec.regex)?,
            must_not: compile("not_regex", &spec.not_regex)?,
        });
    }
    if words {
        return text::WordLists::new(
            spec.must_contain.as_deref(),
            spec.never_contain.as_deref(),
            spec.case_insensitive.unwrap_or(true),
        )
        .map(Kind::Words);
    }
    if terms {
        if spec.no_new_terms != Some(true) {
            return Err("no_new_terms: set it to true (or remove the check)".into());
        }
        return terms::NoNewTerms::new(spec.columns.as_deref(), spec.allow.as_deref())
            .map(Kind::NoNewTerms);
    }
    if spec.unique != Some(true) {
        return Err("unique: set it to true (or remove the check)".into());
    }
    let threshold = spec.threshold.unwrap_or(DEFAULT_THRESHOLD);
    if !(threshold > 0.0 && threshold <= 1.0) {
        return Err(format!(
            "threshold: {threshold} is outside the allowed range: more than 0, at most 1 \
             (the estimated Jaccard similarity from which answers are near-duplicates)"
        ));
    }
    Ok(Kind::Unique(unique::Unique::new(threshold)))
}
