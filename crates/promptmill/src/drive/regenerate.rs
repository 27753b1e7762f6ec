//! Regeneration (`regenerate = N`): once a live run has sent its rows, the rows whose
//! answers the checks reject are sent again, each with the failed checks' reasons as
//! feedback, round by round, until they pass or have had N new answers (counted in the
//! journal, so across runs too). Each attempt is a request like any other: limited,
//! reserved in the ledger against the caps before it goes, settled from its usage, and
//! journaled. A new answer stands for the row's own request (`Record::regen_of`), so resume
//! and the output take it as the row's answer; an attempt that fails keeps the last answer.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::sync::mpsc;

use crate::checks::feedback;
use crate::config::Job;
use crate::cost::{ModelPrice, Tier};
use crate::journal::JournalReader;
use crate::pipeline::ledger::{Ledger, Tally};
use crate::pipeline::rows::{RowLoop, Spool};
use crate::plan::Planner;
use crate::scheduler::{Scheduler, StopReason, WorkItem};
use crate::sink;

/// What regeneration did in one run.
#[derive(Debug, Default, Clone, Copy)]
pub struct Regenerated {
    /// Rows sent again at least once.
    pub rows: u64,
    /// New attempts that ended (answered, or failed keeping the old answer).
    pub requests: u64,
    /// What those attempts cost.
    pub cost: Tally,
}

/// Runs the regeneration rounds on the run's scheduler; returns what they did, and updates
/// `stop` with how the last round ended. Does nothing unless the first round completed.
pub(super) async fn rounds(
    job: &Job,
    planner: &Arc<Planner>,
    price: Option<&ModelPrice>,
    spool: &Arc<Spool>,
    sched: &Arc<Scheduler>,
    ledger: &Ledger,
    stop: &mut StopReason,
) -> anyhow::Result<Regenerated> {
    let mut done = Regenerated::default();
    let before = ledger.this_run();
    for _ in 0..job.regenerate {
        if !matches!(stop, StopReason::Completed) {
            break;
        }
        let (tx, rx) = mpsc::channel::<WorkItem>(256);
        let feeder = {
            let (job, planner, spool, sched) =
                (job.clone(), planner.clone(), spool.clone(), sched.clone());
            let price = price.cloned();
            tokio::task::spawn_blocking(move || {
                feed(&job, &planner, price.as_ref(), &spool, &sched, tx)
            })
        };
        let ended = sched.clone().run(rx).await;
        let sent = feeder
            .await
            .context("regeneration feeder failed")?
            .context("finding rejected rows")?;
        *stop = ended;
        if sent == 0 {
            break;
        }
    }
    // What the scheduler ended, not what was fed: a round the cap stopped sent less.
    done.requests = sched.stats.regenerated.load(Ordering::Relaxed);
    done.rows = sched
        .stats
        .regenerated_rows
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .len() as u64;
    let after = ledger.this_run();
    done.cost = Tally {
        priced: after.priced.saturating_sub(before.priced),
        unpriced: after.unpriced.saturating_sub(before.unpriced),
    };
    Ok(done)
}

/// Checks every answered row as the output will (same checks, input order) and sends the
/// rejected ones that may have another answer. Runs on a blocking thread; returns how many
/// it fed the scheduler.
fn feed(
    job: &Job,
    planner: &Planner,
    price: Option<&ModelPrice>,
    spool: &Spool,
    sched: &Scheduler,
    tx: mpsc::Sender<WorkItem>,
) -> anyhow::Result<u64> {
    let rows = RowLoop::new(job, planner, price, Tier::Live, None);
    let mut checks = job.compile_checks()?;
    let index = sched
        .journal
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .index()
        .clone();
    let mut reader = JournalReader::open(&job.journal_path())?;
    let mut want = spool.wanted()?;
    // Rows with the same identity share one answer: it is regenerated once.
    let mut seen = HashSet::new();
    let mut sent = 0;
    for row in spool.output_rows()? {
        if sched.stop.is_cancelled() {
            break;
        }
        let Ok(row) = row else { continue };
        let wanted = want(&row);
        let Some(rec) = sink::current_record(Some(&mut reader), &index, &wanted)? else {
            continue;
        };
        // Checked as the output checks it; a failed answer gives no results.
        let results = sink::check_answer(&mut checks, &row, Some(&rec));
        if results.iter().all(|r| r.passed)
            || rec.regenerated >= job.regenerate
            || !seen.insert(wanted.id.clone())
        {
            continue;
        }
        let Some(base) = wanted.hash else { continue };
        let req = match rows.regenerate(&row, wanted.id, &feedback(&results)) {
            Ok(req) => req,
            Err(e) => {
                tracing::warn!("row {}: cannot render its next attempt: {e}", row.index + 1);
                continue;
            }
        };
        let item = WorkItem::of(req, Some((base, rec.regenerated + 1)));
        sent += 1;
        if tx.blocking_send(item).is_err() {
            break;
        }
    }
    Ok(sent)
}
