//! `no_new_terms`: capitalised terms and numbers in an answer that none of the named
//! input columns mention (FeedGen's invented-facts check).
//!
//! A term is a run of capitalised words (a word with an uppercase letter, e.g. "Acme Pro",
//! "iPhone") separated by single spaces; the first word of a sentence on its own is not a
//! term, and neither is a single letter. A number is a word of digits (with `,` `.` `'`
//! between them), with its unit when one follows ("3kg", "50 ml", "20%", "24-hour").
//! A term passes when its words appear, in order, in some column or `allow` entry (case
//! ignored); a number passes when the same number (thousands separators ignored:
//! "1,000" == "1000") appears there, with the same unit when the answer gives one.

use std::collections::HashSet;

use unicode_normalization::UnicodeNormalization;
use unicode_segmentation::UnicodeSegmentation;

use super::text::{contains_phrase, words};
use crate::types::Row;

/// Unit words recognised after a number and a space or hyphen (lowercase, singular).
const UNITS: &[&str] = &[
    "ml", "cl", "dl", "l", "g", "kg", "mg", "lb", "oz", "m", "cm", "mm", "km", "in", "inch", "ft",
    "mph", "h", "hr", "hour", "min", "minute", "s", "sec", "second", "day", "week", "month",
    "year", "w", "kw", "kwh", "wh", "v", "mah", "kb", "mb", "gb", "tb", "hz", "khz", "mhz", "ghz",
    "mp", "px", "dpi", "x", "pc", "pcs", "pack", "percent",
];

#[derive(Debug)]
pub(crate) struct NoNewTerms {
    columns: Vec<String>,
    /// The `allow` entries, read like one more column.
    allow: Known,
}

/// What some text mentions: its words (lowercase) and its numbers.
#[derive(Debug, Default)]
struct Known {
    texts: Vec<Vec<String>>,
    /// `1000` and, when a unit followed, `1000 kg`.
    numbers: HashSet<String>,
}

impl Known {
    fn add(&mut self, text: &str) {
        self.texts.push(words(text, true));
        for item in scan(text) {
            if let Item::Number { bare, unit, .. } = item {
                if let Some(u) = unit {
                    self.numbers.insert(format!("{bare} {u}"));
                }
                self.numbers.insert(bare);
            }
        }
    }

    fn has_phrase(&self, phrase: &[String]) -> bool {
        self.texts.iter().any(|t| contains_phrase(t, phrase))
    }
}

impl NoNewTerms {
    pub(crate) fn new(
        columns: Option<&[String]>,
        allow: Option<&[String]>,
    ) -> Result<NoNewTerms, String> {
        let columns = columns.unwrap_or_default();
        if columns.is_empty() {
            return Err(
                "columns: name at least one input column whose text the answer may \
                        draw on, e.g. columns = [\"name\", \"description\"]"
                    .into(),
            );
        }
        if let Some(i) = columns.iter().position(|c| c.trim().is_empty()) {
            return Err(format!("columns[{i}]: must not be empty"));
        }
        let mut known = Known::default();
        for a in allow.unwrap_or_default() {
            known.add(a);
        }
        Ok(NoNewTerms {
            columns: columns.to_vec(),
            allow: known,
        })
    }

    pub(crate) fn check(&self, answer: &str, row: &Row) -> Result<(), String> {
        let mut known = Known::default();
        for c in &self.columns {
            // A column missing from a row (sparse JSONL) counts as empty.
            if let Some(v) = row.fields.get(c) {
                known.add(&super::value_text(v));
            }
        }
        let has_phrase = |p: &[String]| known.has_phrase(p) || self.allow.has_phrase(p);
        let has_number = |n: &str| known.numbers.contains(n) || self.allow.numbers.contains(n);

        let mut new: Vec<String> = Vec::new();
        let mut flag = |t: String| {
            if !new.contains(&t) {
                new.push(t);
            }
        };
        // The column side is compared in normal form C (`words`); so is the answer.
        let answer: String = answer.nfc().collect();
        let items = scan(&answer);
        let mut i = 0;
        while i < items.len() {
            match &items[i] {
                Item::Number {
                    bare,
                    unit,
                    display,
                } => {
                    let key = match unit {
                        Some(u) => format!("{bare} {u}"),
                        None => bare.clone(),
                    };
                    if !has_number(&key) {
                        flag(display.clone());
                    }
                    i += 1;
                }
                Item::Word { cap: false, .. } => i += 1,
                Item::Word {
                    cap: true,
                    sentence_start,
                    ..
                } => {
                    // The run of capitalised words joined by single spaces.
                    let mut end = i + 1;
                    while let Some(Item::Word {
                        cap: true,
                        joined: true,
                        ..
                    }) = items.get(end)
                    {
                        end += 1;
                    }
                    let run: Vec<&str> = items[i..end].iter().filter_map(Item::word).collect();
                    let lower = |ws: &[&str]| -> Vec<String> {
                        ws.iter().map(|w| w.to_lowercase()).collect()
                    };
                    if !has_phrase(&lower(&run)) {
                        // A sentence's first word is capitalised anyway: only the rest of
                        // the run is a term.
                        let rest = if *sentence_start { &run[1..] } else { &run[..] };
                        let single_letter = rest.len() == 1 && rest[0].graphemes(true).count() == 1;
                        if !rest.is_empty() && !single_letter && !has_phrase(&lower(rest)) {
                            flag(rest.join(" "));
                        }
                    }
                    i = end;
                }
            }
        }
        if new.is_empty() {
            Ok(())
        } else {
            Err(format!("new terms: {}", new.join(", ")))
        }
    }
}

#[derive(Debug)]
enum Item<'a> {
    Word {
        word: &'a str,
        /// Has an uppercase letter.
        cap: bool,
        /// The first word of its sentence.
        sentence_start: bool,
        /// Follows the previous word with one space between them.
        joined: bool,
    },
    Number {
        /// Digits and decimal point, thousands separators removed.
        bare: String,
        /// Lowercase, singular.
        unit: Option<String>,
        /// As written in the text.
        display: String,
    },
}

impl<'a> Item<'a> {
    fn word(&self) -> Option<&'a str> {
        match self {
            Item::Word { word, .. } => Some(word),
            Item::Number { .. } => None,
        }
    }
}

fn is_word(seg: &str) -> bool {
    seg.chars().any(char::is_alphanumeric)
}

fn singular(unit: &str) -> String {
    let u = unit.to_lowercase();
    if u == "%" {
        return "percent".into();
    }
    match u.strip_suffix('s') {
        Some(stem) if stem.chars().count() >= 2 && UNITS.contains(&stem) => stem.to_string(),
        _ => u,
    }
}

/// `("1000", "kg")` for "1,000kg"; `None` for a word that is not a number with an optional
/// alphabetic unit ("A4", "mp3", "v2").
fn split_number(word: &str) -> Option<(String, &str)> {
    let first = word.chars().next()?;
    if !first.is_numeric() {
        return None;
    }
    let end = word
        .char_indices()
        .find(|(_, c)| !(c.is_numeric() || matches!(c, ',' | '.' | '\'' | '_')))
        .map_or(word.len(), |(i, _)| i);
    let (num, unit) = word.split_at(end);
    if !unit.chars().all(char::is_alphabetic) {
        return None;
    }
    let bare: String = num
        .trim_end_matches(|c: char| !c.is_numeric())
        .chars()
        .filter(|c| !matches!(c, ',' | '\'' | '_'))
        .collect();
    Some((bare, unit))
}

/// The words and numbers of a text, in order, sentence by sentence.
fn scan(text: &str) -> Vec<Item<'_>> {
    let mut items = Vec::new();
    for sentence in text.split_sentence_bounds() {
        let segs: Vec<(usize, &str)> = sentence.split_word_bound_indices().collect();
        let mut first = true;
        // Whether only one space separates the current segment from the previous word.
        let mut joined = false;
        let mut k = 0;
        while k < segs.len() {
            let (start, seg) = segs[k];
            if !is_word(seg) {
                joined =
                    !items.is_empty() && (seg == " " || seg == "\u{a0}") && joined_ok(&segs, k);
                k += 1;
                continue;
            }
            let sentence_start = first;
            first = false;
            if let Some((bare, suffix)) = split_number(seg) {
                let mut end = start + seg.len();
                let mut unit = (!suffix.is_empty()).then(|| singular(suffix));
                k += 1;
                if unit.is_none() {
                    if let Some((_, "%")) = segs.get(k) {
                        unit = Some("percent".into());
                        end += 1;
                        k += 1;
                    } else if let (Some((_, sep)), Some((_, u))) = (segs.get(k), segs.get(k + 1)) {
                        let u_s = singular(u);
                        if matches!(*sep, " " | "-" | "\u{a0}") && UNITS.contains(&u_s.as_str()) {
                            unit = Some(u_s);
                            end += sep.len() + u.len();
                            k += 2;
                        }
                    }
                }
                if !bare.is_empty() {
                    items.push(Item::Number {
                        bare,
                        unit,
                        display: sentence[start..end].to_string(),
                    });
                }
                joined = false;
                continue;
            }
            items.push(Item::Word {
                word: seg,
                cap: seg.chars().any(char::is_uppercase),
                sentence_start,
                joined,
            });
            joined = false;
            k += 1;
        }
    }
    items
}

/// A space segment joins two words only when a word came right before it.
fn joined_ok(segs: &[(usize, &str)], k: usize) -> bool {
    k > 0 && is_word(segs[k - 1].1)
}
