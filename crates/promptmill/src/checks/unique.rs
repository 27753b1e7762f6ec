//! `unique`: exact and near-duplicate answers across rows; the first answer is kept, later
//! ones are flagged naming the row they repeat.
//!
//! Texts are compared in Unicode normal form C, lowercased, whitespace runs collapsed.
//! Exact duplicates are found by a 64-bit hash of that text. Near-duplicates by MinHash
//! over shingles of 4 characters (grapheme clusters, so CJK and emoji work as well as
//! Latin text): 128 hash functions, each minimum kept as its low 16 bits (b-bit MinHash),
//! so a signature is 256 bytes whatever the answer's length. The share of equal values
//! estimates the Jaccard similarity of the two shingle sets (standard error about 0.03 at
//! 0.9, 0.02 at 0.96); at or above `threshold` an answer is a near-duplicate. Candidates
//! are found by banding the first 64 values (locality-sensitive hashing) rather than by
//! comparing every pair: bands are chosen from the threshold so that pairs near it are
//! found with high probability (≈99% at 0.9 with 8 bands of 8).
//!
//! Only kept answers are indexed: about 0.5–0.7 KB each at the default threshold (the
//! signature, row number, two hash-map entries and 8 band entries), up to about 3 KB for
//! thresholds under 0.28 (64 bands). A row evaluated again (a regenerated answer) replaces
//! its own earlier entry.

use std::collections::{HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};

use unicode_normalization::UnicodeNormalization;
use unicode_segmentation::UnicodeSegmentation;

/// MinHash values per signature.
const K: usize = 128;
/// The first `BANDED` values are cut into bands to find candidates; all `K` estimate.
const BANDED: usize = 64;
/// Shingle width in grapheme clusters.
const SHINGLE: usize = 4;
const NONE: u32 = u32::MAX;

#[derive(Debug)]
pub(crate) struct Unique {
    threshold: f64,
    /// Signature values per band (`BANDED / bands`).
    rows_per_band: usize,
    bands: usize,
    slots: Vec<Slot>,
    exact: HashMap<u64, u32>,
    by_row: HashMap<u64, u32>,
    /// Band key → the newest slot in that bucket; `next` chains the older ones.
    heads: HashMap<u64, u32>,
    next: Vec<u32>,
}

#[derive(Debug)]
struct Slot {
    row: u64,
    exact: u64,
    sig: [u16; K],
    /// False once the row's answer was replaced by a regenerated one.
    live: bool,
}

impl Unique {
    pub(crate) fn new(threshold: f64) -> Unique {
        // The most rows per band whose S-curve midpoint (1/b)^(1/r) stays 0.1 under the
        // threshold: fewer false candidates, few missed pairs.
        let rows_per_band = [32usize, 16, 8, 4, 2]
            .into_iter()
            .find(|r| {
                let b = (BANDED / r) as f64;
                (1.0 / b).powf(1.0 / *r as f64) <= threshold - 0.1
            })
            .unwrap_or(1);
        Unique {
            threshold,
            rows_per_band,
            bands: BANDED / rows_per_band,
            slots: Vec::new(),
            exact: HashMap::new(),
            by_row: HashMap::new(),
            heads: HashMap::new(),
            next: Vec::new(),
        }
    }

    pub(crate) fn check(&mut self, row: u64, text: &str) -> Result<(), String> {
        // A regenerated answer replaces the row's earlier one.
        if let Some(old) = self.by_row.remove(&row) {
            if let Some(slot) = self.slots.get_mut(old as usize) {
                slot.live = false;
                if self.exact.get(&slot.exact) == Some(&old) {
                    self.exact.remove(&slot.exact);
                }
            }
        }
        let norm = normalise(text);
        let exact = hash(&norm);
        if let Some(slot) = self
            .exact
            .get(&exact)
            .and_then(|&s| self.slots.get(s as usize))
        {
            return Err(format!("duplicate of row {}", slot.row.saturating_add(1)));
        }
        let sig = signature(&norm);
        let mut best: Option<(f64, u64)> = None;
        if let Some(sig) = &sig {
            let mut seen = HashSet::new();
            for band in 0..self.bands {
                let mut at = self.heads.get(&self.band_key(sig, band)).copied();
                while let Some(s) = at.filter(|s| *s != NONE) {
                    at = self.next.get(s as usize * self.bands + band).copied();
                    let Some(slot) = self.slots.get(s as usize) else {
                        break;
                    };
                    if !slot.live || !seen.insert(s) {
                        continue;
                    }
                    let sim = similarity(sig, &slot.sig);
                    if sim >= self.threshold
                        && best.is_none_or(|(b, r)| sim > b || (sim == b && slot.row < r))
                    {
                        best = Some((sim, slot.row));
                    }
                }
            }
        }
        if let Some((sim, r)) = best {
            // Floor, not round: "(1.00)" must not name a pair that is not identical.
            let shown = (sim * 100.0).floor() / 100.0;
            return Err(format!(
                "near-duplicate of row {} ({shown:.2})",
                r.saturating_add(1)
            ));
        }
        // Kept: index it. Slot numbers are u32; past 4 billion answers stop indexing.
        let Ok(id) = u32::try_from(self.slots.len()) else {
            return Ok(());
        };
        if id == NONE {
            return Ok(());
        }
        self.exact.insert(exact, id);
        self.by_row.insert(row, id);
        let sig_or_empty = sig.unwrap_or([u16::MAX; K]);
        for band in 0..self.bands {
            let prev = if sig.is_some() {
                self.heads
                    .insert(self.band_key(&sig_or_empty, band), id)
                    .unwrap_or(NONE)
            } else {
                NONE
            };
            self.next.push(prev);
        }
        self.slots.push(Slot {
            row,
            exact,
            sig: sig_or_empty,
            live: true,
        });
        Ok(())
    }

    fn band_key(&self, sig: &[u16; K], band: usize) -> u64 {
        let start = band * self.rows_per_band;
        let mut h = DefaultHasher::new();
        band.hash(&mut h);
        sig[start..start + self.rows_per_band].hash(&mut h);
        h.finish()
    }
}

/// Normal form C, lowercase, whitespace runs as one space, trimmed.
fn normalise(text: &str) -> String {
    let nfc: String = text.nfc().collect();
    nfc.split_whitespace()
        .map(str::to_lowercase)
        .collect::<Vec<_>>()
        .join(" ")
}

fn hash(s: &str) -> u64 {
    let mut h = DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}

/// SplitMix64's finaliser: one well-mixed hash function per seed.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The MinHash signature of a normalised text; `None` for empty text (no shingles).
fn signature(norm: &str) -> Option<[u16; K]> {
    if norm.is_empty() {
        return None;
    }
    let mut bounds: Vec<usize> = norm.grapheme_indices(true).map(|(i, _)| i).collect();
    bounds.push(norm.len());
    let graphemes = bounds.len() - 1;
    let width = SHINGLE.min(graphemes);
    let seeds: [u64; K] = std::array::from_fn(|j| mix(j as u64 + 1));
    let mut mins = [u64::MAX; K];
    for start in 0..=graphemes - width {
        let h = hash(&norm[bounds[start]..bounds[start + width]]);
        for (m, seed) in mins.iter_mut().zip(seeds) {
            let v = mix(h ^ seed);
            if v < *m {
                *m = v;
            }
        }
    }
    // b-bit MinHash: the low 16 bits of each minimum (the high bits of a minimum are
    // mostly zeros).
    Some(mins.map(|m| m as u16))
}

fn similarity(a: &[u16; K], b: &[u16; K]) -> f64 {
    let same = a.iter().zip(b).filter(|(x, y)| x == y).count();
    same as f64 / K as f64
}
