//! Length, regex and word-list checks, and the Unicode text helpers the other checks share.
//!
//! Characters are extended grapheme clusters (what a user sees as one character: "e"
//! plus a combining accent, a flag, a family emoji), words are Unicode word boundaries
//! (UAX #29) that hold a letter or digit, so CJK text counts one word per ideograph.
//! Word lists compare text in Unicode normal form C, so precomposed and combining accents
//! match.

use unicode_normalization::UnicodeNormalization;
use unicode_segmentation::UnicodeSegmentation;

/// The text's words in Unicode normal form C (so "e" + U+0301 equals "é"), lowercased when
/// `fold` is set. Punctuation or symbols between two words leave an empty marker, so a
/// phrase matches only words separated by whitespace ("free, shipping" is not "free
/// shipping"); there is no marker at either end.
pub(crate) fn words(text: &str, fold: bool) -> Vec<String> {
    let nfc: String = text.nfc().collect();
    let mut out: Vec<String> = Vec::new();
    let mut gap = false;
    for seg in nfc.split_word_bounds() {
        if seg.chars().any(char::is_alphanumeric) {
            if gap && !out.is_empty() {
                out.push(String::new());
            }
            gap = false;
            out.push(if fold {
                seg.to_lowercase()
            } else {
                seg.to_string()
            });
        } else if !seg.chars().all(char::is_whitespace) {
            gap = true;
        }
    }
    out
}

/// Whether `needle` occurs in `hay` as a run of whole words.
pub(crate) fn contains_phrase(hay: &[String], needle: &[String]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// At most `max` characters of `s`, with "…" when cut (for quoting answers in reasons).
pub(crate) fn snippet(s: &str, max: usize) -> String {
    let mut g = s.graphemes(true);
    let head: String = g.by_ref().take(max).collect();
    if g.next().is_some() {
        format!("{head}…")
    } else {
        head
    }
}

/// `max_chars`, `min_chars` and `max_words` (surrounding whitespace not counted).
pub(crate) fn length(
    text: &str,
    max_chars: Option<u64>,
    min_chars: Option<u64>,
    max_words: Option<u64>,
) -> Result<(), String> {
    let text = text.trim();
    let mut fails = Vec::new();
    if max_chars.is_some() || min_chars.is_some() {
        let n = text.graphemes(true).count() as u64;
        if let Some(max) = max_chars.filter(|m| n > *m) {
            fails.push(format!("{n} characters, max {max}"));
        }
        if let Some(min) = min_chars.filter(|m| n < *m) {
            fails.push(format!("{n} characters, min {min}"));
        }
    }
    if let Some(max) = max_words {
        let n = text.unicode_words().count() as u64;
        if n > max {
            fails.push(format!("{n} words, max {max}"));
        }
    }
    if fails.is_empty() {
        Ok(())
    } else {
        Err(fails.join("; "))
    }
}

/// `regex` (must match) and `not_regex` (must not match).
pub(crate) fn regex(
    text: &str,
    must: Option<&regex::Regex>,
    must_not: Option<&regex::Regex>,
) -> Result<(), String> {
    let mut fails = Vec::new();
    if let Some(re) = must {
        if !re.is_match(text) {
            fails.push(format!(
                "does not match regex '{}'",
                snippet(re.as_str(), 40)
            ));
        }
    }
    if let Some(re) = must_not {
        if let Some(m) = re.find(text) {
            fails.push(format!(
                "matches not_regex '{}' at '{}'",
                snippet(re.as_str(), 40),
                snippet(m.as_str(), 40)
            ));
        }
    }
    if fails.is_empty() {
        Ok(())
    } else {
        Err(fails.join("; "))
    }
}

/// `must_contain` / `never_contain`: whole words or phrases, case folded unless
/// `case_insensitive = false`.
#[derive(Debug)]
pub(crate) struct WordLists {
    fold: bool,
    /// Each entry as written (for reasons) and as words.
    must: Vec<(String, Vec<String>)>,
    never: Vec<(String, Vec<String>)>,
}

impl WordLists {
    pub(crate) fn new(
        must: Option<&[String]>,
        never: Option<&[String]>,
        fold: bool,
    ) -> Result<WordLists, String> {
        let list = |key: &str, entries: Option<&[String]>| {
            let entries = entries.unwrap_or_default();
            let mut out = Vec::with_capacity(entries.len());
            for (i, e) in entries.iter().enumerate() {
                let w = words(e, fold);
                if w.is_empty() {
                    return Err(format!(
                        "{key}[{i}]: {e:?} has no word in it; entries are words or phrases \
                         (with at least one letter or digit)"
                    ));
                }
                out.push((e.clone(), w));
            }
            Ok(out)
        };
        let lists = WordLists {
            fold,
            must: list("must_contain", must)?,
            never: list("never_contain", never)?,
        };
        if lists.must.is_empty() && lists.never.is_empty() {
            return Err(
                "must_contain and never_contain are both empty; give at least one word".into(),
            );
        }
        Ok(lists)
    }

    pub(crate) fn check(&self, text: &str) -> Result<(), String> {
        let hay = words(text, self.fold);
        let quote = |v: Vec<&String>| {
            v.iter()
                .map(|e| format!("'{e}'"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let missing: Vec<&String> = self
            .must
            .iter()
            .filter(|(_, w)| !contains_phrase(&hay, w))
            .map(|(e, _)| e)
            .collect();
        let banned: Vec<&String> = self
            .never
            .iter()
            .filter(|(_, w)| contains_phrase(&hay, w))
            .map(|(e, _)| e)
            .collect();
        let mut fails = Vec::new();
        match banned.len() {
            0 => {}
            1 => fails.push(format!("contains banned word {}", quote(banned))),
            _ => fails.push(format!("contains banned words {}", quote(banned))),
        }
        match missing.len() {
            0 => {}
            1 => fails.push(format!("missing required word {}", quote(missing))),
            _ => fails.push(format!("missing required words {}", quote(missing))),
        }
        if fails.is_empty() {
            Ok(())
        } else {
            Err(fails.join("; "))
        }
    }
}
