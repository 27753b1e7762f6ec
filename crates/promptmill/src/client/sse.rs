//! Server-sent events, as OpenAI and Anthropic stream them: lines `event: NAME` and
//! `data: TEXT`, events separated by a blank line, `:` comments ignored.
//!
//! Hand-written (about forty lines) rather than a crate: we need only the `event` and `data`
//! fields, fed from reqwest's byte chunks.

/// One server-sent event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` name, when the server sent one (Anthropic does; OpenAI does not).
    pub event: Option<String>,
    /// The `data:` lines, joined by newlines.
    pub data: String,
}

/// Splits a byte stream into events; bytes may arrive cut anywhere.
#[derive(Debug, Default)]
pub(crate) struct SseParser {
    buf: Vec<u8>,
    event: Option<String>,
    data: Vec<String>,
}

impl SseParser {
    /// Feeds bytes; returns the events they completed.
    pub(crate) fn feed(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(nl) = self.buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=nl).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                if !self.data.is_empty() {
                    out.push(SseEvent {
                        event: self.event.take(),
                        data: std::mem::take(&mut self.data).join("\n"),
                    });
                }
                self.event = None;
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => self.event = Some(value.to_string()),
                "data" => self.data.push(value.to_string()),
                _ => {}
            }
        }
        out
    }

    /// Bytes held that do not yet form a whole line.
    pub(crate) fn pending(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_survive_any_split() {
        let text = b": keep-alive\n\nevent: message_start\ndata: {\"a\":1}\n\ndata: x\r\ndata: y\r\n\r\ndata: [DONE]\n\n";
        for cut in 0..text.len() {
            let mut p = SseParser::default();
            let mut evs = p.feed(&text[..cut]);
            evs.extend(p.feed(&text[cut..]));
            assert_eq!(evs.len(), 3, "cut at {cut}");
            assert_eq!(evs[0].event.as_deref(), Some("message_start"));
            assert_eq!(evs[0].data, "{\"a\":1}");
            assert_eq!(evs[1].data, "x\ny");
            assert_eq!(evs[1].event, None);
            assert_eq!(evs[2].data, "[DONE]");
        }
    }
}
