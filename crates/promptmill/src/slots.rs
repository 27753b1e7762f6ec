//! Per-row numbers kept on disk instead of in RAM: one 8-byte slot per row, at `row * 8` in an
//! unnamed temporary file, so that memory stays flat however many rows a job has (a million
//! rows is 8 MB of file, held by the OS's page cache rather than our heap), and short texts
//! by row ([`TextSlots`]) the same way.
//!
//! Only ever a cache of something that can be worked out again (the journal's offsets, the
//! estimate's token counts, the input's row ids): the OS removes the file when the process ends, however it ends.

use std::fs::File;
use std::io;
use std::path::Path;

/// Slots per page read or written at once (32 KiB).
pub const PAGE: u64 = 4096;

/// A table of `Option<u64>` by row. A slot holds `value + 1`, so 0 (a hole in the file, or
/// past its end) is "none".
#[derive(Debug)]
pub struct SlotFile {
    file: File,
}

impl SlotFile {
    /// An empty table in the folder of `beside` (the system temp dir when that folder is
    /// read-only, as in a dry run over someone else's files).
    pub fn create_beside(beside: &Path) -> io::Result<SlotFile> {
        Ok(SlotFile {
            file: temp_file_beside(beside)?,
        })
    }

    /// The value of a row.
    pub fn get(&self, row: u64) -> io::Result<Option<u64>> {
        let mut b = [0u8; 8];
        match read_at(&self.file, &mut b, row.saturating_mul(8)) {
            Ok(n) if n == b.len() => Ok(u64::from_le_bytes(b).checked_sub(1)),
            Ok(_) => Ok(None), // past the end
            Err(e) => Err(slot_err(row, e)),
        }
    }

    /// Sets the value of a row.
    pub fn set(&self, row: u64, value: u64) -> io::Result<()> {
        let at = byte_of(row)?;
        write_all_at(&self.file, &(value + 1).to_le_bytes(), at).map_err(|e| slot_err(row, e))
    }

    /// Sets rows `first..first + values.len()` in one write.
    pub fn set_run(&self, first: u64, values: &[Option<u64>]) -> io::Result<()> {
        let at = byte_of(first)?;
        let bytes: Vec<u8> = values
            .iter()
            .flat_map(|v| v.map_or(0, |v| v + 1).to_le_bytes())
            .collect();
        write_all_at(&self.file, &bytes, at).map_err(|e| slot_err(first, e))
    }

    /// Reads rows asked for in increasing order, a page at a time. It does not see values
    /// set after its page was read.
    pub fn cursor(&self) -> SlotCursor<'_> {
        SlotCursor::over(Some(self))
    }

    /// Sets rows a page at a time (read, changed, written back when another page is needed):
    /// for many values set in roughly increasing row order. Call [`PageWriter::flush`] at the
    /// end.
    pub fn page_writer(&self) -> PageWriter<'_> {
        PageWriter {
            slots: self,
            page: None,
            buf: Vec::new(),
            dirty: false,
        }
    }

    /// Reads page `page` into `buf` (zeros past the end of the file).
    fn read_page(&self, page: u64, buf: &mut Vec<u8>) -> io::Result<()> {
        buf.clear();
        buf.resize((PAGE * 8) as usize, 0);
        let mut done = 0;
        while done < buf.len() {
            let at = page * PAGE * 8 + done as u64;
            match read_at(&self.file, &mut buf[done..], at) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(slot_err(page * PAGE, e)),
            }
        }
        Ok(())
    }
}

/// Reads slots in increasing row order (see [`SlotFile::cursor`]).
#[derive(Debug)]
pub struct SlotCursor<'a> {
    slots: Option<&'a SlotFile>,
    page: Option<u64>,
    buf: Vec<u8>,
}

impl SlotCursor<'_> {
    /// A cursor over `slots`; over no table, every row is none.
    pub fn over(slots: Option<&SlotFile>) -> SlotCursor<'_> {
        SlotCursor {
            slots,
            page: None,
            buf: Vec::new(),
        }
    }

    /// The value of a row.
    pub fn get(&mut self, row: u64) -> io::Result<Option<u64>> {
        let Some(slots) = self.slots else {
            return Ok(None);
        };
        let page = row / PAGE;
        if self.page != Some(page) {
            slots.read_page(page, &mut self.buf)?;
            self.page = Some(page);
        }
        Ok(slot_in(&self.buf, row).checked_sub(1))
    }
}

/// Buffered slot writes (see [`SlotFile::page_writer`]).
pub struct PageWriter<'a> {
    slots: &'a SlotFile,
    page: Option<u64>,
    buf: Vec<u8>,
    dirty: bool,
}

impl PageWriter<'_> {
    /// Sets the value of a row; true when the row had none before.
    pub fn set(&mut self, row: u64, value: u64) -> io::Result<bool> {
        byte_of(row)?;
        let page = row / PAGE;
        if self.page != Some(page) {
            self.flush()?;
            self.slots.read_page(page, &mut self.buf)?;
            self.page = Some(page);
        }
        let first = slot_in(&self.buf, row) == 0;
        let i = (row % PAGE) as usize * 8;
        self.buf[i..i + 8].copy_from_slice(&(value + 1).to_le_bytes());
        self.dirty = true;
        Ok(first)
    }

    /// Writes the page in hand.
    pub fn flush(&mut self) -> io::Result<()> {
        if let (Some(page), true) = (self.page, self.dirty) {
            write_all_at(&self.slots.file, &self.buf, page * PAGE * 8)
                .map_err(|e| slot_err(page * PAGE, e))?;
            self.dirty = false;
        }
        Ok(())
    }
}

/// Short texts by row (the input's row ids) kept on disk like a [`SlotFile`]: each slot holds
/// where the row's text starts in a second temporary file (a 4-byte length, then the bytes),
/// so a million ids cost two files in the page cache and nothing on the heap.
#[derive(Debug)]
pub struct TextSlots {
    offsets: SlotFile,
    texts: File,
    rows: u64,
}

impl TextSlots {
    /// A table of `rows` (row, text) pairs, given in increasing row order (gaps allowed),
    /// in the folder of `beside` (see [`SlotFile::create_beside`]).
    pub fn from_rows(
        beside: &Path,
        rows: impl IntoIterator<Item = (u64, String)>,
    ) -> io::Result<TextSlots> {
        let offsets = SlotFile::create_beside(beside)?;
        let texts = temp_file_beside(beside)?;
        let mut out = io::BufWriter::new(texts.try_clone()?);
        let (mut end, mut count) = (0u64, 0u64);
        let mut slots = offsets.page_writer();
        for (row, text) in rows {
            let len = u32::try_from(text.len())
                .map_err(|_| slot_err(row, io::Error::other("text longer than 4 GiB")))?;
            io::Write::write_all(&mut out, &len.to_le_bytes())?;
            io::Write::write_all(&mut out, text.as_bytes())?;
            if slots.set(row, end)? {
                count += 1;
            }
            end += 4 + u64::from(len);
        }
        slots.flush()?;
        io::Write::flush(&mut out)?;
        Ok(TextSlots {
            offsets,
            texts,
            rows: count,
        })
    }

    /// The text of a row (None for a row that was not given).
    pub fn get(&self, row: u64) -> io::Result<Option<String>> {
        let Some(at) = self.offsets.get(row)? else {
            return Ok(None);
        };
        let mut len = [0u8; 4];
        read_exact_at(&self.texts, &mut len, at).map_err(|e| slot_err(row, e))?;
        let mut text = vec![0u8; u32::from_le_bytes(len) as usize];
        read_exact_at(&self.texts, &mut text, at + 4).map_err(|e| slot_err(row, e))?;
        String::from_utf8(text)
            .map(Some)
            .map_err(|e| slot_err(row, io::Error::new(io::ErrorKind::InvalidData, e)))
    }

    /// How many rows have a text.
    pub fn rows(&self) -> u64 {
        self.rows
    }
}

/// An unnamed temporary file in the folder of `beside`, else in the system temp dir.
pub(crate) fn temp_file_beside(beside: &Path) -> io::Result<File> {
    let dir = beside
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    tempfile::tempfile_in(dir).or_else(|_| tempfile::tempfile())
}

pub(crate) fn read_exact_at(file: &File, mut buf: &mut [u8], mut at: u64) -> io::Result<()> {
    while !buf.is_empty() {
        match read_at(file, buf, at) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                buf = &mut buf[n..];
                at += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn byte_of(row: u64) -> io::Result<u64> {
    row.checked_mul(8)
        .ok_or_else(|| slot_err(row, io::Error::other("row number out of range")))
}

fn slot_err(row: u64, e: io::Error) -> io::Error {
    io::Error::new(
        e.kind(),
        format!("slot of row {row} in a temporary file: {e}"),
    )
}

/// Slot `row` of the page held in `buf`.
fn slot_in(buf: &[u8], row: u64) -> u64 {
    let i = (row % PAGE) as usize * 8;
    u64::from_le_bytes(buf[i..i + 8].try_into().expect("8 bytes"))
}

#[cfg(unix)]
pub(crate) fn read_at(file: &File, buf: &mut [u8], at: u64) -> io::Result<usize> {
    std::os::unix::fs::FileExt::read_at(file, buf, at)
}

#[cfg(unix)]
pub(crate) fn write_all_at(file: &File, buf: &[u8], at: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, buf, at)
}

#[cfg(windows)]
pub(crate) fn read_at(file: &File, buf: &mut [u8], at: u64) -> io::Result<usize> {
    std::os::windows::fs::FileExt::seek_read(file, buf, at)
}

#[cfg(windows)]
pub(crate) fn write_all_at(file: &File, mut buf: &[u8], mut at: u64) -> io::Result<()> {
    while !buf.is_empty() {
        let n = std::os::windows::fs::FileExt::seek_write(file, buf, at)?;
        buf = &buf[n..];
        at += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_by_row_across_pages() {
        let dir = tempfile::tempdir().unwrap();
        let s = SlotFile::create_beside(&dir.path().join("x")).unwrap();
        s.set(PAGE + 1, 0).unwrap();
        s.set_run(3, &[Some(7), None, Some(9)]).unwrap();
        let mut w = s.page_writer();
        assert!(w.set(2 * PAGE, 5).unwrap());
        assert!(!w.set(2 * PAGE, 6).unwrap(), "set twice");
        assert!(w.set(1, 1).unwrap());
        w.flush().unwrap();
        let want = |row| match row {
            1 => Some(1),
            3 => Some(7),
            5 => Some(9),
            r if r == PAGE + 1 => Some(0),
            r if r == 2 * PAGE => Some(6),
            _ => None,
        };
        let mut c = s.cursor();
        for row in 0..3 * PAGE {
            assert_eq!(s.get(row).unwrap(), want(row), "{row}");
            assert_eq!(c.get(row).unwrap(), want(row), "{row}");
        }
        assert_eq!(SlotCursor::over(None).get(1).unwrap(), None);
        assert!(s.set(u64::MAX, 1).is_err());
    }

    #[test]
    fn texts_by_row_across_pages_with_gaps() {
        let dir = tempfile::tempdir().unwrap();
        let rows = (0..3 * PAGE).filter(|r| r % 5 != 3).map(|r| {
            (
                r,
                if r == 7 {
                    String::new()
                } else {
                    format!("id-é{r}")
                },
            )
        });
        let t = TextSlots::from_rows(&dir.path().join("x"), rows).unwrap();
        assert_eq!(
            t.rows(),
            (0..3 * PAGE).filter(|r| r % 5 != 3).count() as u64
        );
        for row in (0..3 * PAGE + 10).rev() {
            let want = match row {
                7 => Some(String::new()),
                r if r % 5 == 3 || r >= 3 * PAGE => None,
                r => Some(format!("id-é{r}")),
            };
            assert_eq!(t.get(row).unwrap(), want, "{row}");
        }
        let empty = TextSlots::from_rows(&dir.path().join("x"), []).unwrap();
        assert_eq!((empty.rows(), empty.get(0).unwrap()), (0, None));
    }
}
