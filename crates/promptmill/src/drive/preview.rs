//! Previews (`run --limit N`, `run --sample N --seed S`): a live run that sends only a few of
//! the rows it would send, prints them with their answers, and projects the full run's cost
//! from what they cost.
//!
//! A preview is an ordinary live run with a filter on the send pass: the chosen rows go through
//! the same limiter, ledger (so the budget caps hold) and journal, so the full run later skips
//! them as done. Every other row stays pending: it is not journaled, and the output lists it
//! as `pending`, as after a run that stopped early.
//!
//! The sample is reproducible without an RNG: each row a run would send is ranked by the
//! SHA-256 of the seed and the row's identity (its `input.id`, or its cells' hash), and the
//! N lowest are sent. The same seed picks the same rows from the same input, wherever they
//! sit in the file; another seed picks others.

use std::collections::{BTreeSet, BinaryHeap};
use std::io::Write as _;

use sha2::{Digest, Sha256};

use super::exit;
use crate::journal::{JournalIndex, JournalReader, Status};
use crate::pipeline::ledger::Tally;
use crate::pipeline::rows::{Spool, Step, Stepped};
use crate::sink::OutputTotals;
use crate::summary::{PreviewSummary, Summary};
use crate::types::Money;

/// Which rows a preview sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preview {
    /// The first N rows the run would send, in input order.
    Limit(u64),
    /// N rows the run would send, picked by `seed` (see the module comment).
    Sample { rows: u64, seed: u64 },
}

/// The rows a preview sends, out of those the first pass would send.
#[derive(Debug)]
pub(super) struct Selection {
    preview: Preview,
    chosen: Chosen,
    /// Rows chosen (at most N).
    pub chosen_rows: u64,
    /// Rows the run would send that the preview leaves for later.
    pub rest: u64,
}

#[derive(Debug)]
enum Chosen {
    /// Every row to send up to this row index (a limit needs no set: the spool is in order).
    Upto(Option<u64>),
    /// These row indexes.
    Rows(BTreeSet<u64>),
}

impl Selection {
    /// Chooses the rows from the first pass's spool (read once more; memory holds at most N
    /// entries for a sample and nothing for a limit).
    pub(super) fn of(preview: Preview, spool: &Spool) -> anyhow::Result<Selection> {
        let sends = || -> anyhow::Result<_> {
            Ok(spool.read()?.filter_map(|s| match s {
                Ok(Stepped {
                    step: Step::Send(r),
                    ..
                }) => Some(Ok((r.row, r.id))),
                Ok(_) => None,
                Err(e) => Some(Err(e)),
            }))
        };
        let (mut total, mut chosen_rows) = (0u64, 0u64);
        let chosen = match preview {
            Preview::Limit(n) => {
                let mut last = None;
                for send in sends()? {
                    let (row, _) = send?;
                    total += 1;
                    if chosen_rows < n {
                        chosen_rows += 1;
                        last = Some(row);
                    }
                }
                Chosen::Upto(last)
            }
            Preview::Sample { rows: n, seed } => {
                // The N lowest ranks seen so far, highest on top to be dropped first.
                let cap = usize::try_from(n).unwrap_or(usize::MAX);
                let mut lowest: BinaryHeap<([u8; 32], u64)> = BinaryHeap::new();
                for send in sends()? {
                    let (row, id) = send?;
                    total += 1;
                    lowest.push((rank(seed, &id), row));
                    if lowest.len() > cap {
                        lowest.pop();
                    }
                }
                let rows: BTreeSet<u64> = lowest.into_iter().map(|(_, row)| row).collect();
                chosen_rows = rows.len() as u64;
                Chosen::Rows(rows)
            }
        };
        Ok(Selection {
            preview,
            chosen,
            chosen_rows,
            rest: total - chosen_rows,
        })
    }

    /// Whether the preview sends this row (only rows the run would send are chosen).
    pub(super) fn admits(&self, stepped: &Stepped) -> bool {
        let Step::Send(r) = &stepped.step else {
            return false;
        };
        match &self.chosen {
            Chosen::Upto(last) => last.is_some_and(|last| r.row <= last),
            Chosen::Rows(rows) => rows.contains(&r.row),
        }
    }
}

/// A row's place in the sample drawn with `seed`: the SHA-256 of the seed and its identity.
fn rank(seed: u64, id: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(seed.to_le_bytes());
    h.update(id.as_bytes());
    h.finalize().into()
}

/// The width preview blocks are cut to: `COLUMNS` when the shell exports a sensible one,
/// else 100.
fn width() -> usize {
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.trim().parse::<usize>().ok())
        .filter(|w| (20..=1000).contains(w))
        .unwrap_or(100)
}

/// `text` on one line, cut to `max` characters (ending with `…` when cut). Line breaks and
/// tabs become spaces and other control characters `�`, so no cell or answer can move the
/// cursor or send escape sequences to the terminal.
fn one_line(text: &str, max: usize) -> String {
    let mut out = String::new();
    let mut chars = text.chars().map(|c| match c {
        '\n' | '\r' | '\t' => ' ',
        c if c.is_control() => '\u{FFFD}',
        c => c,
    });
    for _ in 0..max.saturating_sub(1) {
        match chars.next() {
            Some(c) => out.push(c),
            None => return out,
        }
    }
    match (chars.next(), chars.next()) {
        (Some(c), None) => out.push(c),
        (Some(_), Some(_)) => out.push('…'),
        (None, _) => {}
    }
    out
}

/// Prints one block per previewed row on stderr: its row number and id, its input cells and
/// its answer (or why it has none), each on one line cut to the terminal's width. Returns how
/// many previewed rows were answered (ok or failed) in this run.
pub(super) fn print_rows(
    selection: &Selection,
    spool: &Spool,
    index: &JournalIndex,
    journal: &std::path::Path,
) -> anyhow::Result<u64> {
    let mut answered = 0u64;
    let width = width();
    let mut reader = match JournalReader::open(journal) {
        Ok(r) => Some(r),
        Err(_) if index.records == 0 => None,
        Err(e) => return Err(e.into()),
    };
    let mut err = std::io::stderr().lock();
    for stepped in spool.read()? {
        let stepped = stepped?;
        if !selection.admits(&stepped) {
            continue;
        }
        let Step::Send(req) = &stepped.step else {
            continue;
        };
        let record = match reader.as_mut() {
            Some(r) => r.get(index, &req.id)?,
            None => None,
        };
        // Only an answer to the request sent now is this row's answer.
        let record = record.filter(|r| r.answers() == req.hash);
        answered += u64::from(record.is_some());
        let answer = match record {
            Some(r) if r.status == Status::Ok => r
                .choices
                .first()
                .map_or_else(String::new, |c| c.text.clone()),
            Some(r) => format!("failed: {}", r.error.unwrap_or_default()),
            None => "pending: not answered in this run".to_string(),
        };
        let head = format!("── row {} (id {}) ", stepped.row.index + 1, req.id);
        let rule = width.saturating_sub(head.chars().count());
        writeln!(err, "{}{}", one_line(&head, width), "─".repeat(rule))?;
        let key_width = stepped
            .row
            .fields
            .keys()
            .map(|k| k.chars().count())
            .chain(["answer".len()])
            .max()
            .unwrap_or(6)
            .min(20);
        let mut line = |key: &str, value: &str| -> std::io::Result<()> {
            let key = one_line(key, key_width);
            let room = width.saturating_sub(key_width + 4).max(10);
            writeln!(err, "  {key:<key_width$}  {}", one_line(value, room))
        };
        for (key, value) in &stepped.row.fields {
            let text = match value {
                serde_json::Value::String(s) => s.clone(),
                v => v.to_string(),
            };
            line(key, &text)?;
        }
        line("answer", &answer)?;
    }
    Ok(answered)
}

/// The preview's numbers: what the `sent` rows answered in this run cost, per row, and the
/// projected cost of the rows still to send (the preview's cost per row times their number).
pub(super) fn project(
    selection: &Selection,
    sent: u64,
    spent: Tally,
    priced: bool,
) -> PreviewSummary {
    // Chosen rows left unanswered (a budget cap, an interrupt) are still to send too.
    let rest = selection.rest + selection.chosen_rows.saturating_sub(sent);
    let cost = spent.known().filter(|_| priced);
    let per_row = cost.filter(|_| sent > 0).map(|c| Money(c.0 / sent));
    let projected = cost.filter(|_| sent > 0).map(|c| {
        Money(
            u64::try_from(u128::from(c.0) * u128::from(rest) / u128::from(sent))
                .unwrap_or(u64::MAX),
        )
    });
    PreviewSummary {
        rows: sent,
        cost_usd: cost,
        cost_per_row_usd: per_row,
        rows_to_send: rest,
        projected_cost_usd: projected,
        seed: match selection.preview {
            Preview::Sample { seed, .. } => Some(seed),
            Preview::Limit(_) => None,
        },
    }
}

/// The preview's cost line, for the summary's status.
fn cost_line(p: &PreviewSummary) -> String {
    let (sent, rest) = (p.rows, p.rows_to_send);
    match (p.cost_usd, p.cost_per_row_usd, p.projected_cost_usd) {
        (Some(cost), Some(per_row), Some(projected)) => format!(
            "{sent} rows for {cost} ({per_row} a row); projection for the {rest} rows still to \
             send: {projected} (preview cost per row × {rest} rows)"
        ),
        (Some(cost), _, _) => {
            format!("{sent} rows for {cost}; {rest} rows still to send, no projection")
        }
        _ => format!(
            "{sent} rows, cost unknown (no price for this model; see --prices); {rest} rows \
             still to send, no projection"
        ),
    }
}

/// The summary of a preview that went through its rows: status `preview`, the cost line as
/// its message, and exit 0 unless a row failed or was rejected (the rows left pending are
/// the point of a preview, not a failure). A preview stopped early (budget, abort,
/// interrupt) keeps the run's status and code, and gets the cost line printed. Returns the
/// exit code.
pub(super) fn retitle(
    summary: &mut Summary,
    code: u8,
    completed: bool,
    totals: &OutputTotals,
    preview: PreviewSummary,
) -> u8 {
    let line = cost_line(&preview);
    summary.preview = Some(preview);
    if !completed {
        eprintln!("preview: {line}");
        return code;
    }
    summary.status = "preview".into();
    summary.message = Some(format!(
        "{line}; run again without --limit/--sample to send the rest"
    ));
    let code = if totals.failed + totals.rejected == 0 {
        exit::OK
    } else {
        exit::ROWS_FAILED
    };
    summary.exit_code = i32::from(code);
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_cuts_with_an_ellipsis_and_defuses_control_characters() {
        assert_eq!(one_line("short", 10), "short");
        assert_eq!(one_line("exactly10!", 10), "exactly10!");
        assert_eq!(one_line("eleven char", 10), "eleven ch…");
        assert_eq!(one_line("a\nb\tc\u{1b}[31m", 20), "a b c\u{FFFD}[31m");
        assert_eq!(one_line("ééééé", 3), "éé…");
        assert_eq!(one_line("", 3), "");
    }

    #[test]
    fn a_rank_depends_on_the_seed_and_the_identity_only() {
        assert_eq!(rank(7, "r1"), rank(7, "r1"));
        assert_ne!(rank(7, "r1"), rank(8, "r1"));
        assert_ne!(rank(7, "r1"), rank(7, "r2"));
    }

    #[test]
    fn the_projection_is_the_cost_per_row_times_the_rows_left() {
        let mut sel = Selection {
            preview: Preview::Limit(5),
            chosen: Chosen::Upto(Some(4)),
            chosen_rows: 5,
            rest: 95,
        };
        let mut spent = Tally::default();
        spent.add(crate::pipeline::ledger::Charge::of(
            true,
            Some(Money::from_usd(0.5).0),
        ));
        let p = project(&sel, 5, spent, true);
        assert_eq!(p.cost_per_row_usd, Some(Money::from_usd(0.1)));
        assert_eq!(p.projected_cost_usd, Some(Money::from_usd(9.5)));
        let line = cost_line(&p);
        assert!(line.contains("5 rows for $0.50 ($0.10 a row)"), "{line}");
        assert!(line.contains("95 rows still to send: $9.50"), "{line}");
        // Two chosen rows never answered (a budget stop) are still to send.
        let p = project(&sel, 3, spent, true);
        assert_eq!((p.rows_to_send, p.seed), (97, None));
        // Nothing answered: no projection, and never $0 a row.
        let p = project(&sel, 0, Tally::default(), true);
        assert_eq!((p.cost_per_row_usd, p.projected_cost_usd), (None, None));
        assert!(cost_line(&p).contains("no projection"), "{}", cost_line(&p));
        let line = cost_line(&project(&sel, 5, spent, false));
        sel.preview = Preview::Sample { rows: 5, seed: 3 };
        assert_eq!(project(&sel, 5, spent, true).seed, Some(3));
        assert!(
            line.contains("cost unknown") && !line.contains('$'),
            "{line}"
        );
    }
}
