//! Structured output: a JSON schema (`model.schema` or `model.schema_file`) that every
//! answer must follow, and whose top-level fields become output columns.
//!
//! Validation covers the subset of JSON Schema that structured-output schemas use:
//! `type` (one or a list), `properties`, `required`, `additionalProperties: false`, `enum`,
//! `const`, `items`, `minLength`/`maxLength`, `minimum`/`maximum`, `minItems`/`maxItems`.
//! Other keywords are accepted and not checked (OpenAI's strict mode enforces them on its
//! side). A full validator crate (`jsonschema`) would pull in a regex engine and dozens of
//! crates for keywords these schemas do not use.

use std::path::Path;

use serde_json::{Map, Value};

use crate::types::{json_type, Choice};

/// Loads a job's schema (`model.schema`, an inline TOML table, or `model.schema_file`, a
/// JSON file) and checks it describes an object with properties. Errors are messages
/// naming the key or file.
pub fn load(inline: Option<&toml::Value>, file: Option<&Path>) -> Result<Option<Value>, String> {
    let schema = match (inline, file) {
        (Some(inline), _) => serde_json::to_value(inline)
            .map_err(|e| format!("model.schema: cannot read it as JSON schema: {e}"))?,
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("model.schema_file: cannot read {}: {e}", path.display()))?;
            serde_json::from_str(&text)
                .map_err(|e| format!("model.schema_file: {} is not JSON: {e}", path.display()))?
        }
        (None, None) => return Ok(None),
    };
    if field_names(&schema).is_empty() || schema.get("type") != Some(&Value::from("object")) {
        return Err(
            "model.schema: the schema must be {type = \"object\", properties = {...}} with at \
             least one property (its top-level fields become output columns)"
                .into(),
        );
    }
    Ok(Some(schema))
}

/// The schema's top-level property names, in the order written: the output columns.
pub fn field_names(schema: &Value) -> Vec<String> {
    schema
        .get("properties")
        .and_then(Value::as_object)
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default()
}

/// Why an answer is not usable structured output.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StructuredError {
    /// Cut off at `max_tokens`: retrying would cut it again.
    #[error(
        "the answer was cut off at model.max_tokens (finish_reason = \"length\"), so its JSON \
         is incomplete; raise model.max_tokens"
    )]
    Truncated,
    /// Not JSON, or JSON that does not follow the schema (worth another attempt).
    #[error("the answer does not follow model.schema: {0}")]
    Invalid(String),
}

/// Checks every variant of an answer against the schema and returns the fields of the
/// first one (the columns of the output row).
pub fn structure(
    schema: &Value,
    choices: &[Choice],
) -> Result<Map<String, Value>, StructuredError> {
    let mut first = None;
    for (i, c) in choices.iter().enumerate() {
        if c.finish_reason.as_deref() == Some("length") {
            return Err(StructuredError::Truncated);
        }
        let value = parse_json_answer(&c.text).map_err(|e| {
            let which = if choices.len() > 1 {
                format!("variant {}: ", i + 1)
            } else {
                String::new()
            };
            StructuredError::Invalid(format!("{which}{e}"))
        })?;
        validate(schema, &value, "$").map_err(StructuredError::Invalid)?;
        if first.is_none() {
            if let Value::Object(m) = value {
                first = Some(m);
            }
        }
    }
    first.ok_or_else(|| StructuredError::Invalid("the answer is empty".into()))
}

/// Parses an answer as JSON, tolerating surrounding whitespace and a Markdown code fence.
fn parse_json_answer(text: &str) -> Result<Value, String> {
    let t = text.trim();
    let t = t
        .strip_prefix("```json")
        .or_else(|| t.strip_prefix("```"))
        .and_then(|r| r.trim_end().strip_suffix("```"))
        .unwrap_or(t)
        .trim();
    serde_json::from_str(t).map_err(|e| {
        let mut end = t.len().min(80);
        while !t.is_char_boundary(end) {
            end -= 1;
        }
        format!("not JSON ({e}): {:?}", &t[..end])
    })
}

fn type_matches(ty: &str, v: &Value) -> bool {
    match ty {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "number" => v.is_number(),
        "integer" => {
            v.as_i64().is_some()
                || v.as_u64().is_some()
                || v.as_f64().is_some_and(|f| f.fract() == 0.0)
        }
        "boolean" => v.is_boolean(),
        "null" => v.is_null(),
        _ => true,
    }
}

/// Validates `v` against the supported subset of `schema`; the error names the path.
pub fn validate(schema: &Value, v: &Value, path: &str) -> Result<(), String> {
    let Some(s) = schema.as_object() else {
        return Ok(()); // `true` / `{}`-like schemas accept anything
    };
    match s.get("type") {
        Some(Value::String(t)) if !type_matches(t, v) => {
            return Err(format!("{path} should be {t}, got {}", json_type(v)))
        }
        Some(Value::Array(ts))
            if !ts
                .iter()
                .filter_map(Value::as_str)
                .any(|t| type_matches(t, v)) =>
        {
            return Err(format!(
                "{path} has type {}, not one of {}",
                json_type(v),
                Value::Array(ts.clone())
            ))
        }
        _ => {}
    }
    if let Some(Value::Array(allowed)) = s.get("enum") {
        if !allowed.contains(v) {
            return Err(format!(
                "{path} is {v}, not one of {}",
                Value::Array(allowed.clone())
            ));
        }
    }
    if let Some(c) = s.get("const") {
        if c != v {
            return Err(format!("{path} must be {c}"));
        }
    }
    if let Some(text) = v.as_str() {
        let n = text.chars().count() as u64;
        if let Some(min) = s.get("minLength").and_then(Value::as_u64) {
            if n < min {
                return Err(format!("{path} is shorter than {min} characters"));
            }
        }
        if let Some(max) = s.get("maxLength").and_then(Value::as_u64) {
            if n > max {
                return Err(format!("{path} is longer than {max} characters"));
            }
        }
    }
    if let Some(x) = v.as_f64() {
        if let Some(min) = s.get("minimum").and_then(Value::as_f64) {
            if x < min {
                return Err(format!("{path} is {x}, below the minimum {min}"));
            }
        }
        if let Some(max) = s.get("maximum").and_then(Value::as_f64) {
            if x > max {
                return Err(format!("{path} is {x}, above the maximum {max}"));
            }
        }
    }
    if let Value::Array(items) = v {
        if let Some(min) = s.get("minItems").and_then(Value::as_u64) {
            if (items.len() as u64) < min {
                return Err(format!("{path} has fewer than {min} items"));
            }
        }
        if let Some(max) = s.get("maxItems").and_then(Value::as_u64) {
            if (items.len() as u64) > max {
                return Err(format!("{path} has more than {max} items"));
            }
        }
        if let Some(item_schema) = s.get("items") {
            for (i, item) in items.iter().enumerate() {
                validate(item_schema, item, &format!("{path}[{i}]"))?;
            }
        }
    }
    if let Value::Object(obj) = v {
        let props = s.get("properties").and_then(Value::as_object);
        if let Some(Value::Array(req)) = s.get("required") {
            for r in req.iter().filter_map(Value::as_str) {
                if !obj.contains_key(r) {
                    return Err(format!("{path} lacks the required field \"{r}\""));
                }
            }
        }
        for (k, val) in obj {
            match props.and_then(|p| p.get(k)) {
                Some(ps) => validate(ps, val, &format!("{path}.{k}"))?,
                None if s.get("additionalProperties") == Some(&Value::Bool(false)) => {
                    return Err(format!(
                        "{path} has a field \"{k}\" the schema does not allow"
                    ))
                }
                None => {}
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({"type": "object", "additionalProperties": false,
        "required": ["headline", "body", "tone", "score"],
        "properties": {
            "headline": {"type": "string", "maxLength": 20},
            "body": {"type": "string"},
            "tone": {"type": "string", "enum": ["fun", "calm"]},
            "score": {"type": "integer", "minimum": 0},
            "tags": {"type": "array", "items": {"type": "string"}}
        }})
    }

    fn choice(text: &str, finish: &str) -> Choice {
        Choice {
            text: text.into(),
            finish_reason: Some(finish.into()),
        }
    }

    #[test]
    fn valid_answers_give_their_fields_in_order() {
        let c = choice(
            "```json\n{\"headline\":\"Hi\",\"body\":\"B\",\"tone\":\"fun\",\"score\":3}\n```",
            "stop",
        );
        let m = structure(&schema(), &[c]).unwrap();
        assert_eq!(m["headline"], "Hi");
        assert_eq!(field_names(&schema())[..3], ["headline", "body", "tone"]);
    }

    #[test]
    fn every_rule_names_the_path_that_broke_it() {
        let s = schema();
        let bad = |v: Value| validate(&s, &v, "$").unwrap_err();
        let ok = json!({"headline":"Hi","body":"B","tone":"fun","score":3});
        assert!(validate(&s, &ok, "$").is_ok());
        assert!(bad(json!({"headline":"Hi","body":"B","tone":"fun"})).contains("\"score\""));
        assert!(bad(json!({"headline":1,"body":"B","tone":"fun","score":3}))
            .contains("$.headline should be string"));
        assert!(
            bad(json!({"headline":"Hi","body":"B","tone":"loud","score":3})).contains("$.tone")
        );
        assert!(
            bad(json!({"headline":"Hi","body":"B","tone":"fun","score":-1})).contains("minimum")
        );
        assert!(
            bad(json!({"headline":"Hi","body":"B","tone":"fun","score":1.5})).contains("integer")
        );
        assert!(
            bad(json!({"headline":"x".repeat(21),"body":"B","tone":"fun","score":1}))
                .contains("longer")
        );
        assert!(
            bad(json!({"headline":"Hi","body":"B","tone":"fun","score":1,"x":1})).contains("\"x\"")
        );
        assert!(
            bad(json!({"headline":"Hi","body":"B","tone":"fun","score":1,"tags":[1]}))
                .contains("$.tags[0]")
        );
        assert!(bad(json!([1])).contains("should be object"));
    }

    #[test]
    fn truncation_and_non_json_are_told_apart() {
        let s = schema();
        assert_eq!(
            structure(&s, &[choice("{\"headline\":", "length")]),
            Err(StructuredError::Truncated)
        );
        let e = structure(&s, &[choice("Sure! Here it is", "stop")]).unwrap_err();
        assert!(
            matches!(&e, StructuredError::Invalid(m) if m.contains("not JSON")),
            "{e}"
        );
    }
}
