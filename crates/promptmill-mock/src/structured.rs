//! Structured answers: when a request asks for JSON following a schema (OpenAI
//! `response_format: {type: "json_schema"}`, or the schema instruction promptmill puts in an
//! Anthropic system prompt), the mock answers with a value that follows it, chosen
//! deterministically from the prompt hash.
//!
//! Supported: objects (every property is filled), strings (respecting `enum`, `const`,
//! `maxLength`), numbers and integers (respecting `minimum`/`maximum`), booleans, arrays
//! (one item), null, and type lists (the first non-null type).

use serde_json::{Map, Value};

use super::text::mix;

/// The schema of an OpenAI `response_format`: a `json_schema` one, or a `json_object` one
/// carrying a `schema` (as llama-cpp-python takes it).
pub(crate) fn openai_schema(response_format: Option<&Value>) -> Option<&Value> {
    let rf = response_format?;
    match rf.get("type")?.as_str()? {
        "json_schema" => rf.get("json_schema")?.get("schema"),
        "json_object" => rf.get("schema"),
        _ => None,
    }
}

/// True for a `response_format` of type `json_schema`.
pub(crate) fn is_json_schema(response_format: Option<&Value>) -> bool {
    response_format
        .and_then(|rf| rf.get("type"))
        .and_then(Value::as_str)
        == Some("json_schema")
}

/// The schema promptmill's Anthropic provider puts after "JSON schema:" in the system prompt.
pub(crate) fn instruction_schema(system: &str) -> Option<Value> {
    let at = system.find("JSON schema:")? + "JSON schema:".len();
    let mut de = serde_json::Deserializer::from_str(system[at..].trim_start()).into_iter();
    de.next()?.ok()
}

/// A value following `schema`; `source` (the prompt) seeds the strings.
pub(crate) fn sample(schema: &Value, source: &str, hash: u64) -> Value {
    sample_at(schema, source, hash, "value")
}

fn sample_at(schema: &Value, source: &str, hash: u64, name: &str) -> Value {
    let Some(s) = schema.as_object() else {
        return Value::Null;
    };
    if let Some(c) = s.get("const") {
        return c.clone();
    }
    if let Some(Value::Array(options)) = s.get("enum") {
        if !options.is_empty() {
            return options[(mix(hash) % options.len() as u64) as usize].clone();
        }
    }
    let ty = match s.get("type") {
        Some(Value::String(t)) => t.as_str(),
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null")
            .unwrap_or("null"),
        _ if s.contains_key("properties") => "object",
        _ => "string",
    };
    match ty {
        "object" => {
            let mut out = Map::new();
            if let Some(props) = s.get("properties").and_then(Value::as_object) {
                for (i, (k, ps)) in props.iter().enumerate() {
                    out.insert(k.clone(), sample_at(ps, source, mix(hash ^ i as u64), k));
                }
            }
            Value::Object(out)
        }
        "array" => {
            let item = s.get("items").cloned().unwrap_or(Value::Null);
            Value::Array(vec![sample_at(&item, source, mix(hash), name)])
        }
        "integer" | "number" => {
            let min = s.get("minimum").and_then(Value::as_f64).unwrap_or(0.0);
            let max = s
                .get("maximum")
                .and_then(Value::as_f64)
                .unwrap_or(min + 100.0);
            let span = (max - min).max(0.0);
            let x = min + (mix(hash) % 101) as f64 / 100.0 * span;
            if ty == "integer" {
                Value::from(x.floor().max(min.ceil()) as i64)
            } else {
                serde_json::Number::from_f64((x * 100.0).round() / 100.0)
                    .map_or(Value::from(0), Value::Number)
            }
        }
        "boolean" => Value::Bool(mix(hash).is_multiple_of(2)),
        "null" => Value::Null,
        _ => {
            let words: Vec<&str> = source
                .split_whitespace()
                .filter(|w| !w.contains("[[mock:"))
                .take(6)
                .collect();
            let mut text = format!("Mock {name} for: {}", words.join(" "));
            if let Some(max) = s.get("maxLength").and_then(Value::as_u64) {
                text = text.chars().take(max as usize).collect();
            }
            Value::String(text)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn samples_follow_the_schema_promptmill_validates() {
        let schema = json!({"type": "object", "additionalProperties": false,
        "required": ["headline", "tone", "score", "ok", "tags"],
        "properties": {
            "headline": {"type": "string", "maxLength": 12},
            "tone": {"type": "string", "enum": ["fun", "calm"]},
            "score": {"type": "integer", "minimum": 1, "maximum": 5},
            "ok": {"type": "boolean"},
            "tags": {"type": "array", "items": {"type": ["string", "null"]}}
        }});
        for h in 0..50 {
            let v = sample(&schema, "Describe the red kettle", h);
            promptmill::schema::validate(&schema, &v, "$").unwrap();
        }
        let sys = format!("Be nice.\n\nIt must validate against this JSON schema:\n{schema}");
        assert_eq!(instruction_schema(&sys), Some(schema.clone()));
        let rf = serde_json::json!({"type": "json_object", "schema": schema});
        assert_eq!(openai_schema(Some(&rf)), Some(&schema));
        assert!(!is_json_schema(Some(&rf)));
        assert_eq!(
            openai_schema(Some(&serde_json::json!({"type": "json_object"}))),
            None
        );
    }
}
