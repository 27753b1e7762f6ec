//! A hash table from text keys to numbers kept in an unnamed temporary file, not in RAM: the
//! journal's "row identity → latest record" and "request → latest record" indexes, the
//! input's "id → line" check and a run's "requests already asked for" set. A million keys
//! take a few tens of MB of file (held by the OS's page cache) and nothing on the heap.
//!
//! Open addressing with linear probing. A slot is 24 bytes: the first 16 bytes of the key's
//! SHA-256 (never all zero: zero marks an empty slot) and the value. Keys are known by that
//! 128-bit digest alone: two different keys share one with a chance of about 2^-128 per
//! pair, far below a disk error. The table doubles (into a new file) when half full.
//!
//! Like [`crate::slots`], only ever a cache of something worked out again on every start.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::slots::{read_exact_at, temp_file_beside, write_all_at};

const SLOT: u64 = 24;
/// Slots read per probe (one `pread` of 192 bytes covers most probe runs).
const PROBE: u64 = 8;
const FIRST_CAPACITY: u64 = 4096;

/// See the module comment.
#[derive(Debug)]
pub struct KeyTable {
    file: File,
    /// Where new files go (beside the journal or input, else the system temp dir).
    beside: PathBuf,
    /// Number of slots: a power of two.
    capacity: u64,
    len: u64,
}

/// A key's digest: what the table knows a key by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Digest16(u128);

impl Digest16 {
    /// The digest of `key`.
    pub fn of(key: &str) -> Digest16 {
        let d = Sha256::digest(key.as_bytes());
        let mut b = [0u8; 16];
        b.copy_from_slice(&d[..16]);
        // 0 marks an empty slot; a digest of 0 is moved to 1 (one more collision in 2^128).
        Digest16(u128::from_le_bytes(b).max(1))
    }

    /// A digest already taken (128 bits of a SHA-256, say), as the table knows it.
    pub fn from_bits(bits: u128) -> Digest16 {
        Digest16(bits.max(1))
    }
}

impl KeyTable {
    /// An empty table in a temporary file in the folder of `beside`.
    pub fn create_beside(beside: &Path) -> io::Result<KeyTable> {
        Self::with_capacity(beside, FIRST_CAPACITY)
    }

    fn with_capacity(beside: &Path, capacity: u64) -> io::Result<KeyTable> {
        let file = temp_file_beside(beside)?;
        file.set_len(capacity * SLOT)?;
        Ok(KeyTable {
            file,
            beside: beside.to_path_buf(),
            capacity,
            len: 0,
        })
    }

    /// Keys held.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when no key is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> io::Result<Option<u64>> {
        self.get_digest(Digest16::of(key))
    }

    /// The value of the key with digest `d`.
    pub fn get_digest(&self, d: Digest16) -> io::Result<Option<u64>> {
        Ok(match self.find(d)? {
            (_, Some(v)) => Some(v),
            (_, None) => None,
        })
    }

    /// Sets the value of `key`; returns the value it had.
    pub fn insert(&mut self, key: &str, value: u64) -> io::Result<Option<u64>> {
        self.insert_digest(Digest16::of(key), value)
    }

    /// Sets the value of the key with digest `d`; returns the value it had.
    pub fn insert_digest(&mut self, d: Digest16, value: u64) -> io::Result<Option<u64>> {
        if (self.len + 1) * 2 > self.capacity {
            self.grow()?;
        }
        let (slot, old) = self.find(d)?;
        write_slot(&self.file, slot, d, value)?;
        if old.is_none() {
            self.len += 1;
        }
        Ok(old)
    }

    /// The slot holding `d` and its value, or the empty slot where it would go.
    fn find(&self, d: Digest16) -> io::Result<(u64, Option<u64>)> {
        let mask = self.capacity - 1;
        let mut slot = (d.0 as u64) & mask;
        let mut buf = [0u8; (SLOT * PROBE) as usize];
        // The table is never more than half full, so an empty slot comes within `capacity`.
        for _ in 0..self.capacity.div_ceil(PROBE) {
            let n = PROBE.min(self.capacity - slot);
            let bytes = &mut buf[..(n * SLOT) as usize];
            read_exact_at(&self.file, bytes, slot * SLOT)?;
            for i in 0..n {
                let (digest, value) = parse_slot(&bytes[(i * SLOT) as usize..]);
                if digest == 0 {
                    return Ok((slot + i, None));
                }
                if digest == d.0 {
                    return Ok((slot + i, Some(value)));
                }
            }
            slot = (slot + n) & mask;
        }
        Err(io::Error::other("key table full"))
    }

    /// Moves every key into a table twice as large.
    fn grow(&mut self) -> io::Result<()> {
        let mut bigger = KeyTable::with_capacity(&self.beside, self.capacity * 2)?;
        let chunk = 4096u64;
        let mut buf = vec![0u8; (chunk * SLOT) as usize];
        let mut at = 0;
        while at < self.capacity {
            let n = chunk.min(self.capacity - at);
            let bytes = &mut buf[..(n * SLOT) as usize];
            read_exact_at(&self.file, bytes, at * SLOT)?;
            for i in 0..n {
                let (digest, value) = parse_slot(&bytes[(i * SLOT) as usize..]);
                if digest != 0 {
                    let (slot, _) = bigger.find(Digest16(digest))?;
                    write_slot(&bigger.file, slot, Digest16(digest), value)?;
                    bigger.len += 1;
                }
            }
            at += n;
        }
        *self = bigger;
        Ok(())
    }
}

fn parse_slot(b: &[u8]) -> (u128, u64) {
    let mut d = [0u8; 16];
    d.copy_from_slice(&b[..16]);
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[16..24]);
    (u128::from_le_bytes(d), u64::from_le_bytes(v))
}

fn write_slot(file: &File, slot: u64, d: Digest16, value: u64) -> io::Result<()> {
    let mut b = [0u8; SLOT as usize];
    b[..16].copy_from_slice(&d.0.to_le_bytes());
    b[16..].copy_from_slice(&value.to_le_bytes());
    write_all_at(file, &b, slot * SLOT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_survive_growth_and_the_latest_value_wins() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = KeyTable::create_beside(&dir.path().join("x")).unwrap();
        assert!(t.is_empty());
        let n = 3 * FIRST_CAPACITY;
        for i in 0..n {
            assert_eq!(t.insert(&format!("key-{i}"), i).unwrap(), None);
        }
        assert_eq!(t.insert("key-7", 70).unwrap(), Some(7));
        assert_eq!(t.len(), n);
        assert!(t.capacity >= 2 * n);
        for i in 0..n {
            let want = if i == 7 { 70 } else { i };
            assert_eq!(t.get(&format!("key-{i}")).unwrap(), Some(want), "{i}");
        }
        assert_eq!(t.get("key-absent").unwrap(), None);
        assert_eq!(t.get("").unwrap(), None);
        t.insert("", 0).unwrap();
        assert_eq!(t.get("").unwrap(), Some(0));
    }
}
