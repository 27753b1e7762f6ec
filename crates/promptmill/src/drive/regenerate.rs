//! Review rounds, after a live run has sent its rows: the judge (`[judge]`) scores the
//! answers that passed the checks, then (`regenerate = N`) the rows the checks or the judge
//! rejected are sent again, each with the reasons as feedback, and the new answers are
//! judged, round by round, until they pass or have had N new answers (counted in the
//! journal, so across runs too). Each request is like any other: limited, reserved in the
//! ledger against the caps before it goes, settled from its usage, and journaled. A new
//! answer stands for the row's own request (`Record::regen_of`), so resume and the output
//! take it as the row's answer; an attempt that fails keeps the last answer.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::sync::mpsc;

use crate::config::Job;
use crate::cost::{ModelPrice, Tier};
use crate::journal::JournalReader;
use crate::judge::{self, Judge, Judged};
use crate::pipeline::ledger::{Ledger, Tally};
use crate::pipeline::rows::{RowLoop, Spool};
use crate::plan::Planner;
use crate::scheduler::{Kind, Scheduler, StopReason, WorkItem};
use crate::sink::{self, RowStatus};

/// What regeneration and the judge did in one run.
#[derive(Debug, Default, Clone, Copy)]
pub struct Reviewed {
    /// Rows sent again at least once.
    pub regenerated_rows: u64,
    /// New attempts that ended (answered, or failed keeping the old answer).
    pub regenerated: u64,
    /// What those attempts cost.
    pub regeneration_cost: Tally,
    /// Judge requests that ended.
    pub judged: u64,
    /// What they cost.
    pub judge_cost: Tally,
}

/// One review round's work: judging answers, or regenerating rejected rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Round {
    Judge,
    Regenerate,
}

/// What a review round needs.
#[derive(Clone)]
pub(super) struct Review {
    pub job: Job,
    pub planner: Arc<Planner>,
    pub judge: Option<Arc<Judge>>,
    pub price: Option<ModelPrice>,
    pub spool: Arc<Spool>,
}

/// Runs the review rounds on the run's scheduler; returns what they did, and updates
/// `stop` with how the last round ended. Does nothing unless the run so far completed.
pub(super) async fn rounds(
    review: &Review,
    sched: &Arc<Scheduler>,
    ledger: &Ledger,
    stop: &mut StopReason,
) -> anyhow::Result<Reviewed> {
    let mut done = Reviewed::default();
    let mut regeneration_cost = Tally::default();
    let mut judge_cost = Tally::default();
    let n = review.job.regenerate;
    for round in 0..=n {
        if review.judge.is_some() {
            if !matches!(stop, StopReason::Completed) {
                break;
            }
            let (_, cost) = run_round(review, sched, ledger, stop, Round::Judge).await?;
            judge_cost.merge(cost);
        }
        if round == n || !matches!(stop, StopReason::Completed) {
            break;
        }
        let (sent, cost) = run_round(review, sched, ledger, stop, Round::Regenerate).await?;
        regeneration_cost.merge(cost);
        if sent == 0 {
            break;
        }
    }
    // What the scheduler ended, not what was fed: a round the cap stopped sent less.
    done.regenerated = sched.stats.regenerated.load(Ordering::Relaxed);
    done.regenerated_rows = sched
        .stats
        .regenerated_rows
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .len() as u64;
    done.judged = sched.stats.judged.load(Ordering::Relaxed);
    done.regeneration_cost = regeneration_cost;
    done.judge_cost = judge_cost;
    Ok(done)
}

/// Feeds one round to the scheduler and waits for it; returns how many requests were fed
/// and what the round cost.
async fn run_round(
    review: &Review,
    sched: &Arc<Scheduler>,
    ledger: &Ledger,
    stop: &mut StopReason,
    round: Round,
) -> anyhow::Result<(u64, Tally)> {
    let before = ledger.this_run();
    let (tx, rx) = mpsc::channel::<WorkItem>(256);
    let feeder = {
        let (review, sched) = (review.clone(), sched.clone());
        tokio::task::spawn_blocking(move || feed(&review, &sched, round, tx))
    };
    let ended = sched.clone().run(rx).await;
    let sent = feeder
        .await
        .context("review feeder failed")?
        .context("reviewing answers")?;
    *stop = ended;
    Ok((sent, ledger.this_run().since(before)))
}

/// Reviews every answered row as the output will (same checks, same judge, input order)
/// and sends, for a judge round, the judge's requests about answers it has yet to see, or,
/// for a regeneration round, the rejected rows that may have another answer. Runs on a
/// blocking thread; returns how many requests it fed the scheduler.
fn feed(
    review: &Review,
    sched: &Scheduler,
    round: Round,
    tx: mpsc::Sender<WorkItem>,
) -> anyhow::Result<u64> {
    let job = &review.job;
    let judge = review.judge.as_deref();
    let rows = RowLoop::new(
        job,
        &review.planner,
        review.price.as_ref(),
        sched.reserve_tier(),
        None,
    );
    let judge_rows =
        judge.map(|j| RowLoop::new(&j.job, &j.planner, j.price.as_ref(), Tier::Live, None));
    let mut checks = job.compile_checks()?;
    let index = sched
        .journal
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .index()
        .clone();
    let mut reader = JournalReader::open(&job.journal_path())?;
    let mut want = review.spool.wanted()?;
    // Rows with the same identity share one answer: it is judged or regenerated once.
    let mut seen = HashSet::new();
    // Judge requests fed in this round, by hash.
    let mut asked = HashSet::new();
    let mut sent = 0;
    for row in review.spool.output_rows()? {
        if sched.stop.is_cancelled() {
            break;
        }
        let Ok(row) = row else { continue };
        let wanted = want(&row);
        let Some(rec) = sink::current_record(Some(&mut reader), &index, &wanted)? else {
            continue;
        };
        let verdict = sink::review(
            &mut checks,
            judge,
            Some(&mut reader),
            &index,
            &row,
            &wanted.id,
            Some(&rec),
        )?;
        let item = match round {
            Round::Judge => {
                let (Some(Judged::Missing(planned)), Some(loop_)) = (verdict.judged, &judge_rows)
                else {
                    continue;
                };
                // The same request asked for another row in this round: its verdict will
                // stand for this row too.
                if !seen.insert(wanted.id.clone()) || !asked.insert(planned.hash.clone()) {
                    continue;
                }
                let req = loop_.judge_request(&row, judge::id(&wanted.id), planned);
                WorkItem::of(req, Kind::Judge)
            }
            Round::Regenerate => {
                if verdict.status(Some(&rec), judge) != RowStatus::Rejected
                    || rec.regenerated >= job.regenerate
                    || !seen.insert(wanted.id.clone())
                {
                    continue;
                }
                let Some(base) = wanted.hash else { continue };
                let req = match rows.regenerate(&row, wanted.id, &verdict.feedback(judge)) {
                    Ok(req) => req,
                    Err(e) => {
                        tracing::warn!(
                            "row {}: cannot render its next attempt: {e}",
                            row.index + 1
                        );
                        continue;
                    }
                };
                WorkItem::of(
                    req,
                    Kind::Regen {
                        of: base,
                        attempt: rec.regenerated + 1,
                    },
                )
            }
        };
        sent += 1;
        if tx.blocking_send(item).is_err() {
            break;
        }
    }
    Ok(sent)
}
