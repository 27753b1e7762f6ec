//! Review rounds, once a run's rows have their answers: the judge (`[judge]`) scores the
//! answers that passed the checks, then (`regenerate = N`) the rows the checks or the judge
//! rejected are sent again, each with the reasons as feedback, and the new answers are
//! judged, round by round, until they pass or have had N new answers (counted in the
//! journal, so across runs too). Each request is like any other: reserved in the ledger
//! against the caps before it goes, settled from its usage, and journaled. A new answer
//! stands for the row's own request (`Record::regen_of`), so resume and the output take it
//! as the row's answer; an attempt that fails keeps the last answer.
//!
//! Which round comes next ([`next_round`]) and what a round asks for ([`plan_round`]) are
//! the same in both modes; only where a round's requests go differs ([`RoundSink`]): the
//! live driver feeds them to its scheduler and waits ([`rounds`]), the batch driver writes
//! them into batch input files, one round per set of batches, driven by `collect`.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::sync::mpsc;

use super::{output_rows, wanted};
use crate::config::Job;
use crate::cost::{ModelPrice, Tier};
use crate::identity::{Identity, Wanted};
use crate::journal::{JournalIndex, JournalReader};
pub use crate::judge::Round;
use crate::judge::{self, Judge, Judged};
use crate::pipeline::ledger::{Ledger, Tally};
use crate::pipeline::rows::{RowLoop, Spool};
use crate::plan::Planner;
use crate::scheduler::{Kind, Scheduler, StopReason, WorkItem};
use crate::sink::{self, RowStatus};
use crate::types::Row;

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

/// Where a review round reads the rows from.
#[derive(Clone)]
pub(super) enum ReviewRows {
    /// The validation pass's spool (a run).
    Spool(Arc<Spool>),
    /// The input, read again and each row planned for its request hash (`collect`, which
    /// runs no validation pass).
    Input,
}

/// What a review round needs.
#[derive(Clone)]
pub(super) struct Review {
    pub job: Job,
    pub planner: Arc<Planner>,
    pub judge: Option<Arc<Judge>>,
    pub price: Option<ModelPrice>,
    pub rows: ReviewRows,
    /// The tier worst cases are priced at (live, or batch).
    pub tier: Tier,
    /// Where rows' own models (`model.name_column`) are priced.
    pub prices: std::borrow::Cow<'static, crate::cost::PriceTable>,
}

/// Where a review round's requests go: the live scheduler, or a batch input file.
pub(super) trait RoundSink {
    /// Whether the run was told to stop: no more rows are looked at.
    fn stopped(&self) -> bool {
        false
    }

    /// Takes one request; `false` when it takes no more (the scheduler stopped, or the
    /// budget cap has no room for it: then it was not taken).
    fn send(&mut self, item: WorkItem) -> anyhow::Result<bool>;
}

/// The round after the rounds `done` (each with how many requests it sent), or None when
/// the review is over: with a judge, judge → regenerate → judge … ending with a judge
/// round, at most `regenerate` regeneration rounds; a regeneration round that sent nothing
/// ends it (every row passed, or has had its attempts).
pub(super) fn next_round(judge: bool, regenerate: u32, done: &[(Round, u64)]) -> Option<Round> {
    let regens = done.iter().filter(|(r, _)| *r == Round::Regenerate).count();
    let may_regenerate = regens < regenerate as usize;
    match done.last() {
        None if judge => Some(Round::Judge),
        Some((Round::Regenerate, 0)) => None,
        Some((Round::Regenerate, _)) if judge => Some(Round::Judge),
        _ if may_regenerate => Some(Round::Regenerate),
        _ => None,
    }
}

/// Feeds the live scheduler.
struct ToScheduler<'a> {
    sched: &'a Scheduler,
    tx: mpsc::Sender<WorkItem>,
}

impl RoundSink for ToScheduler<'_> {
    fn stopped(&self) -> bool {
        self.sched.stop.is_cancelled()
    }

    fn send(&mut self, item: WorkItem) -> anyhow::Result<bool> {
        Ok(self.tx.blocking_send(item).is_ok())
    }
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
    let mut past = Vec::new();
    while let Some(round) = next_round(review.judge.is_some(), review.job.regenerate, &past) {
        if !matches!(stop, StopReason::Completed) {
            break;
        }
        let (sent, cost) = run_round(review, sched, ledger, stop, round).await?;
        match round {
            Round::Judge => judge_cost.merge(cost),
            Round::Regenerate => regeneration_cost.merge(cost),
        }
        past.push((round, sent));
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
        tokio::task::spawn_blocking(move || {
            let index = sched
                .journal
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .index()
                .clone();
            let mut sink = ToScheduler { sched: &sched, tx };
            plan_round(&review, &index, round, &mut sink)
        })
    };
    let ended = sched.clone().run(rx).await;
    let sent = feeder
        .await
        .context("review feeder failed")?
        .context("reviewing answers")?;
    *stop = ended;
    Ok((sent, ledger.this_run().since(before)))
}

/// The rows a round reviews, in input order.
type Rows<'r> = Box<dyn Iterator<Item = Result<Row, String>> + 'r>;
/// What each row asks for now (called once per row, in step with [`Rows`]).
type Want<'r> = Box<dyn FnMut(&Row) -> Wanted + 'r>;

/// Reviews every answered row as the output will (same checks, same judge, input order)
/// and hands `sink`, for a judge round, the judge's requests about answers it has yet to
/// see, or, for a regeneration round, the rejected rows that may have another answer.
/// `index` is the journal's as it is now. Blocks (run it on a blocking thread); returns how
/// many requests `sink` took.
pub(super) fn plan_round(
    review: &Review,
    index: &JournalIndex,
    round: Round,
    sink: &mut dyn RoundSink,
) -> anyhow::Result<u64> {
    let job = &review.job;
    let judge = review.judge.as_deref();
    let rows = RowLoop::new(
        job,
        &review.planner,
        review.price.as_ref(),
        review.tier,
        None,
    )
    .with_prices(Some(&review.prices));
    let judge_rows =
        judge.map(|j| RowLoop::new(&j.job, &j.planner, j.price.as_ref(), review.tier, None));
    let mut checks = job.compile_checks()?;
    let mut reader = JournalReader::open(&job.journal_path())?;
    let (input, mut want): (Rows<'_>, Want<'_>) = match &review.rows {
        ReviewRows::Spool(spool) => (Box::new(spool.output_rows()?), Box::new(spool.wanted()?)),
        ReviewRows::Input => (
            Box::new(output_rows(job)?),
            Box::new(wanted(&review.planner, Identity::of(job))),
        ),
    };
    let outputs: Vec<String> = job.outputs.iter().map(|o| o.name.clone()).collect();
    // Rows with the same identity share one answer: it is judged or regenerated once.
    let mut seen = HashSet::new();
    // Judge requests fed in this round, by hash.
    let mut asked = HashSet::new();
    let mut sent = 0;
    for row in input {
        if sink.stopped() {
            break;
        }
        let Ok(row) = row else { continue };
        let wanted = want(&row);
        let Some(rec) = sink::current_record(Some(&mut reader), index, &wanted)? else {
            continue;
        };
        let extras = sink::extra_records(&outputs, Some(&mut reader), index, &wanted)?;
        let verdict = sink::review(
            &mut checks,
            judge,
            Some(&mut reader),
            index,
            &row,
            &wanted.id,
            sink::Answered {
                record: Some(&rec),
                extra: sink::extra_texts(&outputs, &extras).as_ref(),
            },
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
        if !sink.send(item)? {
            break;
        }
        sent += 1;
    }
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::{next_round, Round};
    use Round::{Judge as J, Regenerate as R};

    /// The rounds [`next_round`] gives when each regeneration round sends `sent[i]`.
    fn rounds(judge: bool, n: u32, sent: &[u64]) -> Vec<Round> {
        let mut done = Vec::new();
        let mut regens = sent.iter();
        while let Some(r) = next_round(judge, n, &done) {
            let sent = match r {
                J => 1,
                R => *regens.next().unwrap_or(&1),
            };
            done.push((r, sent));
            assert!(done.len() < 50, "never ends: {done:?}");
        }
        done.iter().map(|(r, _)| *r).collect()
    }

    #[test]
    fn rounds_alternate_and_end_with_a_verdict_or_when_nothing_is_regenerated() {
        assert_eq!(rounds(true, 0, &[]), [J]);
        assert_eq!(rounds(true, 2, &[3, 1]), [J, R, J, R, J]);
        assert_eq!(rounds(true, 2, &[3, 0]), [J, R, J, R]);
        assert_eq!(rounds(true, 3, &[0]), [J, R]);
        assert_eq!(rounds(false, 2, &[3, 1]), [R, R]);
        assert_eq!(rounds(false, 3, &[3, 0]), [R, R]);
        assert_eq!(rounds(false, 0, &[]), []);
    }
}
