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
}
