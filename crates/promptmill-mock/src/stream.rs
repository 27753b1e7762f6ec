//! Streaming (`"stream": true`): a finished answer re-told as server-sent events in the
//! provider's shape. OpenAI: `chat.completion.chunk`s (or text-completion chunks), the
//! usage in a last chunk with empty `choices` when `stream_options.include_usage` is set,
//! then `data: [DONE]`. Anthropic: `message_start` … `content_block_delta` … `message_delta`,
//! `message_stop`, each with its `event:` name.

use serde_json::{json, Value};

/// Splits a text in two pieces (on a char boundary), so every answer spans several chunks.
fn pieces(text: &str) -> Vec<&str> {
    let mut mid = text.len() / 2;
    while !text.is_char_boundary(mid) {
        mid -= 1;
    }
    [&text[..mid], &text[mid..]]
        .into_iter()
        .filter(|p| !p.is_empty())
        .collect()
}

fn data(out: &mut String, v: &Value) {
    out.push_str("data: ");
    out.push_str(&v.to_string());
    out.push_str("\n\n");
}

/// An OpenAI chat or text completion (as serialised for a plain answer) as an SSE body.
pub(crate) fn openai(answer: &Value, include_usage: bool) -> Vec<u8> {
    let chat = answer["object"] == "chat.completion";
    let object = if chat {
        "chat.completion.chunk"
    } else {
        "text_completion"
    };
    let base = |choices: Value, usage: Value| {
        json!({"id": answer["id"], "object": object, "created": answer["created"],
               "model": answer["model"], "choices": choices, "usage": usage})
    };
    let mut out = String::new();
    let empty = Vec::new();
    for (i, c) in answer["choices"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .enumerate()
    {
        let text = if chat {
            c["message"]["content"].as_str().unwrap_or_default()
        } else {
            c["text"].as_str().unwrap_or_default()
        };
        // A refusal streams as `delta.refusal` pieces instead of content.
        let refusal = c["message"]["refusal"].as_str();
        let text = refusal.unwrap_or(text);
        let field = if refusal.is_some() {
            "refusal"
        } else {
            "content"
        };
        let choice = |piece: &str, finish: Value| {
            if chat {
                json!([{"index": i, "delta": {field: piece}, "finish_reason": finish}])
            } else {
                json!([{"index": i, "text": piece, "finish_reason": finish}])
            }
        };
        if chat {
            data(
                &mut out,
                &base(
                    json!([{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]),
                    Value::Null,
                ),
            );
        }
        for p in pieces(text) {
            data(&mut out, &base(choice(p, Value::Null), Value::Null));
        }
        data(
            &mut out,
            &base(choice("", c["finish_reason"].clone()), Value::Null),
        );
    }
    if include_usage {
        data(&mut out, &base(json!([]), answer["usage"].clone()));
    }
    out.push_str("data: [DONE]\n\n");
    out.into_bytes()
}

/// An Anthropic message (as serialised for a plain answer) as an SSE body.
pub(crate) fn anthropic(message: &Value) -> Vec<u8> {
    let mut out = String::new();
    let mut event = |name: &str, v: Value| {
        out.push_str("event: ");
        out.push_str(name);
        out.push('\n');
        data(&mut out, &v);
    };
    let mut start = message.clone();
    start["content"] = json!([]);
    start["stop_reason"] = Value::Null;
    start["usage"]["output_tokens"] = json!(1);
    event(
        "message_start",
        json!({"type": "message_start", "message": start}),
    );
    let text = message["content"][0]["text"].as_str().unwrap_or_default();
    event(
        "content_block_start",
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
    );
    event("ping", json!({"type": "ping"}));
    for p in pieces(text) {
        event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}}),
        );
    }
    event(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 0}),
    );
    event(
        "message_delta",
        json!({"type": "message_delta",
               "delta": {"stop_reason": message["stop_reason"], "stop_sequence": null},
               "usage": {"output_tokens": message["usage"]["output_tokens"]}}),
    );
    event("message_stop", json!({"type": "message_stop"}));
    out.into_bytes()
}
