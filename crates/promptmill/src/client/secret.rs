//! An API key that cannot leak by accident: no Display, a redacting Debug.

use std::fmt;

/// An API key. `Debug` prints `Secret(***)`; there is no `Display`. The only way to the
/// text is [`Secret::expose`], used where a header is built (and that header is marked
/// sensitive so HTTP-level debug output redacts it too).
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// Wraps a key.
    pub fn new(key: String) -> Secret {
        Secret(key)
    }

    /// The key's text, for building an auth header.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The text with every occurrence of the key replaced by `***`.
    pub fn scrub(&self, text: &str) -> String {
        if self.0.len() < 4 {
            return text.to_string();
        }
        text.replace(&self.0, "***")
    }

    /// A header value holding `prefix` + the key, marked sensitive.
    pub fn header_value(&self, prefix: &str) -> Option<reqwest::header::HeaderValue> {
        let mut v = reqwest::header::HeaderValue::from_str(&format!("{prefix}{}", self.0)).ok()?;
        v.set_sensitive(true);
        Some(v)
    }
}

/// Request headers that carry credentials, for any provider: OpenAI's `Authorization`,
/// Azure's `api-key`, Anthropic's `x-api-key`, and a proxy's.
pub const SENSITIVE_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "api-key",
    "x-api-key",
];

/// Marks every credential header sensitive, so any `Debug` print of the headers (ours,
/// reqwest's, hyper's, at any log level) shows `Sensitive` instead of the value.
pub fn mark_sensitive(headers: &mut reqwest::header::HeaderMap) {
    for name in SENSITIVE_HEADERS {
        if let reqwest::header::Entry::Occupied(mut e) = headers.entry(*name) {
            for v in e.iter_mut() {
                v.set_sensitive(true);
            }
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_key() {
        let s = Secret::new("sk-live-abcdef".into());
        assert_eq!(format!("{s:?}"), "Secret(***)");
        let h = s.header_value("Bearer ").unwrap();
        assert!(h.is_sensitive());
        assert!(!format!("{h:?}").contains("abcdef"));
    }

    #[test]
    fn credential_headers_are_redacted_in_debug_prints() {
        use reqwest::header::{HeaderMap, HeaderValue};
        let mut h = HeaderMap::new();
        for name in [
            "Authorization",
            "api-key",
            "X-Api-Key",
            "Proxy-Authorization",
        ] {
            h.insert(name, HeaderValue::from_static("sk-leaky-123456"));
        }
        h.insert("content-type", HeaderValue::from_static("application/json"));
        mark_sensitive(&mut h);
        let printed = format!("{h:?}");
        assert!(!printed.contains("sk-leaky"), "{printed}");
        assert_eq!(printed.matches("Sensitive").count(), 4, "{printed}");
        assert!(printed.contains("application/json"));

        // A whole request built the way the client builds it prints no key either.
        let key = Secret::new("sk-leaky-abcdef".into());
        let mut req = reqwest::Client::new()
            .post("http://127.0.0.1:9/v1/chat/completions")
            .header("api-key", key.expose())
            .header("x-api-key", key.expose())
            .header(
                reqwest::header::AUTHORIZATION,
                key.header_value("Bearer ").unwrap(),
            )
            .build()
            .unwrap();
        mark_sensitive(req.headers_mut());
        let printed = format!("{req:?} {:?}", req.headers());
        assert!(!printed.contains("sk-leaky"), "{printed}");
    }

    #[test]
    fn scrub_removes_every_copy_of_the_key() {
        let s = Secret::new("sk-live-abcdef".into());
        assert_eq!(
            s.scrub("bad key sk-live-abcdef, again sk-live-abcdef"),
            "bad key ***, again ***"
        );
    }
}
