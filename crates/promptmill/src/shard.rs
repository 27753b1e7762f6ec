//! Shards (`run --shard K/N`): one job's rows split across N runs that share nothing but the
//! input, each on its own machine or all on one.
//!
//! A row belongs to shard `1 + (h mod N)`, where `h` is the first 8 bytes (big-endian) of
//! the SHA-256 of `promptmill-shard\0` and the row's identity (its `input.id`, or its cells'
//! hash; see [`crate::identity`]). Position never matters: a reordered input keeps every
//! row in its shard, and rows with one identity share a shard.
//!
//! Shard K of N is the job with its output renamed `<stem>.shard-K-of-N.<ext>` ([`Shard::output`]):
//! its journal, reservations, summary, lock and batch state are named from that stem like
//! any job's, so no two shards touch one file. A journal knows its companions by name alone
//! ([`companions`]): the job's own journal reads every shard journal beside it, and a shard
//! reads the job's own journal, so a row answered in any of them is not paid again, and
//! `promptmill merge` writes the one output from all of them.

use std::fmt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The most shards a job can be split into.
pub const MAX_SHARDS: u32 = 1024;

/// Shard `k` of `n` (1 ≤ k ≤ n ≤ [`MAX_SHARDS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Shard {
    /// Which shard, from 1.
    pub k: u32,
    /// How many shards.
    pub n: u32,
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.k, self.n)
    }
}

impl Shard {
    /// Shard `k` of `n`, if that is one.
    pub fn new(k: u32, n: u32) -> Option<Shard> {
        (1..=MAX_SHARDS)
            .contains(&n)
            .then_some(())
            .filter(|()| (1..=n).contains(&k))
            .map(|()| Shard { k, n })
    }

    /// `--shard K/N` (value parser): a clear message for anything else.
    pub fn parse(s: &str) -> Result<Shard, String> {
        let usage = format!(
            "--shard takes K/N, shard K of N, with 1 <= K <= N <= {MAX_SHARDS} (e.g. 2/4); got \
             '{s}'"
        );
        let (k, n) = s.trim().split_once('/').ok_or_else(|| usage.clone())?;
        let (k, n) = match (k.trim().parse::<u32>(), n.trim().parse::<u32>()) {
            (Ok(k), Ok(n)) => (k, n),
            _ => return Err(usage),
        };
        Shard::new(k, n).ok_or(usage)
    }

    /// Whether the row whose identity is `id` belongs to this shard.
    pub fn holds(&self, id: &str) -> bool {
        of(id, self.n) == self.k
    }

    /// The tag in a shard's file names: `shard-K-of-N`.
    pub fn tag(&self) -> String {
        format!("shard-{}-of-{}", self.k, self.n)
    }

    /// The shard's own output: `out/copy.csv` → `out/copy.shard-2-of-4.csv`. Every other
    /// file of the shard is named from this one. An output without an extension gets the
    /// format's (`ext`), so the shard's stem keeps its tag.
    pub fn output(&self, output: &Path, ext: &str) -> PathBuf {
        let stem = output
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "output".into());
        let ext = output
            .extension()
            .map(|e| e.to_string_lossy().into_owned())
            .unwrap_or_else(|| ext.to_string());
        output.with_file_name(format!("{stem}.{}.{ext}", self.tag()))
    }
}

/// The shard (1 to `n`) the row whose identity is `id` belongs to.
pub fn of(id: &str, n: u32) -> u32 {
    let mut h = Sha256::new();
    h.update(b"promptmill-shard\0");
    h.update(id.as_bytes());
    let digest = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    let n = u64::from(n.max(1));
    // The remainder is below n <= 1024, so it fits.
    (u64::from_be_bytes(first) % n) as u32 + 1
}

/// The end of every journal's name (see [`crate::config::Job::journal_path`]).
const JOURNAL: &str = ".journal.jsonl";

/// A journal's place among a job's journals: the job's own (`None`) or a shard's.
pub type Place = Option<Shard>;

/// Splits a journal's name into the job's stem and its place: `copy.shard-2-of-4.journal.jsonl`
/// → (`copy`, shard 2/4); `copy.journal.jsonl` → (`copy`, the job's own). None for a name
/// that is no journal's.
fn split(journal: &Path) -> Option<(String, Place)> {
    let name = journal.file_name()?.to_str()?;
    let stem = name.strip_suffix(JOURNAL)?;
    Some(
        match stem.rsplit_once(".shard-").and_then(|(base, tag)| {
            let (k, n) = tag.split_once("-of-")?;
            // Digits only, no sign or leading zero: the name is one this module wrote.
            let number = |s: &str| {
                (!s.is_empty() && !s.starts_with('0') && s.bytes().all(|b| b.is_ascii_digit()))
                    .then(|| s.parse::<u32>().ok())
                    .flatten()
            };
            Some((base, Shard::new(number(k)?, number(n)?)?))
        }) {
            Some((base, shard)) => (base.to_string(), Some(shard)),
            None => (stem.to_string(), None),
        },
    )
}

/// The journal at `place` among the journals of the job `journal` belongs to.
pub fn journal_at(journal: &Path, place: Place) -> Option<PathBuf> {
    file_at(journal, place, JOURNAL)
}

/// The file ending in `end` (`.lock`, `.journal.jsonl`) at `place` among the files of the
/// job `journal` belongs to.
pub fn file_at(journal: &Path, place: Place, end: &str) -> Option<PathBuf> {
    let (base, _) = split(journal)?;
    Some(journal.with_file_name(match place {
        Some(s) => format!("{base}.{}{end}", s.tag()),
        None => format!("{base}{end}"),
    }))
}

/// The journals whose records count as `journal`'s own (read only): for the job's own
/// journal, every shard journal beside it (whatever its N), in (N, K) order; for a shard's,
/// the job's own journal. Only those that exist.
pub fn companions(journal: &Path) -> Vec<(Shard, PathBuf)> {
    companions_at(journal)
        .into_iter()
        .filter_map(|(place, path)| place.map(|s| (s, path)))
        .collect()
}

/// [`companions`], with the job's own journal as place `None`.
pub fn companions_at(journal: &Path) -> Vec<(Place, PathBuf)> {
    let Some((base, place)) = split(journal) else {
        return Vec::new();
    };
    if place.is_some() {
        return journal_at(journal, None)
            .filter(|p| p.is_file())
            .map(|p| vec![(None, p)])
            .unwrap_or_default();
    }
    let dir = match journal.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<(Place, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let path = journal.with_file_name(e.file_name());
            match split(&path) {
                Some((b, Some(shard))) if b == base && path.is_file() => Some((Some(shard), path)),
                _ => None,
            }
        })
        .collect();
    found.sort_by_key(|(place, _)| place.map(|s| (s.n, s.k)));
    found
}

/// The shard journals of `n` shards beside the job's own `journal`, and which of them do not
/// exist.
pub fn missing(journal: &Path, n: u32) -> Vec<(Shard, PathBuf)> {
    (1..=n)
        .filter_map(|k| Shard::new(k, n))
        .filter_map(|s| journal_at(journal, Some(s)).map(|p| (s, p)))
        .filter(|(_, p)| !p.is_file())
        .collect()
}

/// The shard counts (N) of the shard journals beside the job's own `journal`.
pub fn counts(journal: &Path) -> Vec<u32> {
    let mut n: Vec<u32> = companions(journal).iter().map(|(s, _)| s.n).collect();
    n.dedup();
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_k_of_n_within_range_parses() {
        assert_eq!(Shard::parse("2/4"), Ok(Shard { k: 2, n: 4 }));
        assert_eq!(Shard::parse(" 1 / 1 "), Ok(Shard { k: 1, n: 1 }));
        assert_eq!(Shard::parse("1024/1024"), Ok(Shard { k: 1024, n: 1024 }));
        for bad in [
            "0/4", "5/4", "1/0", "1/1025", "2", "a/b", "-1/4", "2/4/8", "",
        ] {
            let e = Shard::parse(bad).unwrap_err();
            assert!(e.contains("1 <= K <= N <= 1024"), "{bad}: {e}");
        }
    }

    #[test]
    fn every_row_lands_in_exactly_one_shard_and_the_split_is_even_enough() {
        let n = 4;
        let mut per = [0u32; 4];
        for i in 0..4000 {
            let id = format!("row-{i}");
            let holders: Vec<u32> = (1..=n).filter(|&k| Shard { k, n }.holds(&id)).collect();
            assert_eq!(holders.len(), 1, "{id}");
            per[(holders[0] - 1) as usize] += 1;
        }
        for c in per {
            assert!((800..1200).contains(&c), "{per:?}");
        }
        // Stable: the same identity, the same shard, in every version.
        assert_eq!(of("row-0", 4), of("row-0", 4));
    }

    #[test]
    fn a_shard_s_files_are_named_from_its_output() {
        let s = Shard { k: 2, n: 4 };
        assert_eq!(
            s.output(Path::new("out/copy.csv"), "csv"),
            PathBuf::from("out/copy.shard-2-of-4.csv")
        );
        assert_eq!(
            s.output(Path::new("out/copy"), "jsonl"),
            PathBuf::from("out/copy.shard-2-of-4.jsonl")
        );
        let own = Path::new("out/copy.journal.jsonl");
        let shard = journal_at(own, Some(s)).unwrap();
        assert_eq!(shard, PathBuf::from("out/copy.shard-2-of-4.journal.jsonl"));
        assert_eq!(journal_at(&shard, None).unwrap(), own);
        assert_eq!(split(&shard), Some(("copy".into(), Some(s))));
        assert_eq!(
            split(Path::new("a.shard-02-of-4.journal.jsonl")),
            Some(("a.shard-02-of-4".into(), None))
        );
        assert_eq!(split(Path::new("copy.csv")), None);
    }

    #[test]
    fn companions_are_found_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let own = dir.path().join("copy.journal.jsonl");
        for name in [
            "copy.shard-2-of-2.journal.jsonl",
            "copy.shard-1-of-2.journal.jsonl",
            "copy.shard-1-of-3.journal.jsonl",
            "other.shard-1-of-2.journal.jsonl",
            "copy.shard-3-of-2.journal.jsonl",
        ] {
            std::fs::write(dir.path().join(name), "").unwrap();
        }
        let found: Vec<Shard> = companions(&own).into_iter().map(|(s, _)| s).collect();
        assert_eq!(
            found,
            vec![
                Shard { k: 1, n: 2 },
                Shard { k: 2, n: 2 },
                Shard { k: 1, n: 3 }
            ]
        );
        assert_eq!(counts(&own), vec![2, 3]);
        let gone: Vec<u32> = missing(&own, 3).iter().map(|(s, _)| s.k).collect();
        assert_eq!(gone, vec![2, 3]);
        // A shard sees the job's own journal once it exists.
        let shard = dir.path().join("copy.shard-1-of-2.journal.jsonl");
        assert!(companions_at(&shard).is_empty());
        std::fs::write(&own, "").unwrap();
        assert_eq!(companions_at(&shard), vec![(None, own)]);
    }
}
