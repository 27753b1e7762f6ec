//! The judge (`[judge]`): a second prompt that sees a row and its answer and returns
//! `{score, reason}` as structured output. It runs after the checks, on the answers that
//! passed them (a rejected answer is not worth paying to judge), through the same
//! scheduler, limiter, ledger and journal as the answers, priced at its own model's price.
//!
//! A verdict is journaled under the judge's own identity for the row ([`id`]), with the
//! hash of the judge's request, which covers the answer: when the answer, the judge's
//! template or its model changes, the old verdict no longer answers the request the job
//! would send and is ignored, like any stale answer.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::Job;
use crate::cost::ModelPrice;
use crate::journal::{JournalError, JournalIndex, JournalReader, Record, Status};
use crate::plan::{Planned, Planner};
use crate::render::RenderError;
use crate::types::Row;

/// What a journal id of a verdict starts with: a unit separator no input id holds.
const ID_PREFIX: &str = "judge\u{1f}";

/// The journal identity of the verdict on the answer of the row whose identity is `row_id`.
pub fn id(row_id: &str) -> String {
    format!("{ID_PREFIX}{row_id}")
}

/// What one review round sends (see `drive::regenerate`): the judge's verdicts on answers
/// it has yet to see, or new answers for the rows the checks or the judge rejected. Live
/// runs feed a round to the scheduler; batch mode submits it as batches (and records its
/// kind in the batch state, hence the names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Round {
    Judge,
    Regenerate,
}

/// The judge of a job: its planner (the judge's templates and model), its price and its
/// bar.
pub struct Judge {
    /// The job the judge's requests are planned as ([`Job::judge_job`]).
    pub job: Job,
    pub planner: Planner,
    /// The judge model's price; None = unknown.
    pub price: Option<ModelPrice>,
    pub model: String,
    pub min_score: Option<f64>,
}

/// A verdict as the journal holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub score: f64,
    pub reason: String,
}

/// Where a row's answer stands with the judge.
#[derive(Debug)]
pub enum Judged {
    /// No current verdict: the judge has yet to see this answer. The request to send.
    Missing(Planned),
    /// The judge's request failed (the record says why).
    Failed(Record),
    /// The judge's prompt could not be rendered for this answer (why).
    Unplanned(String),
    /// The verdict, and the record it came in (for its tokens and cost).
    Scored(Verdict, Record),
}

impl Judge {
    /// The judge of `job`, planned through `planner` (built from [`Job::judge_job`]).
    /// Refuses templates that never show the judge the answer.
    pub fn new(job: &Job, planner: Planner, price: Option<ModelPrice>) -> anyhow::Result<Judge> {
        let judge_job = job
            .judge_job()
            .ok_or_else(|| anyhow::anyhow!("the job has no [judge]"))?;
        if !planner.reads_answer() {
            anyhow::bail!(
                "{}: [judge]: its templates never read {{{{ answer }}}}, so the judge would \
                 not see what it scores",
                job.file.display()
            );
        }
        Ok(Judge {
            model: judge_job.model.name.clone(),
            job: judge_job,
            planner,
            price,
            min_score: job.judge.as_ref().and_then(|j| j.min_score),
        })
    }

    /// The judge's request about `answer`.
    pub fn plan(&self, row: &Row, answer: &str) -> Result<Planned, RenderError> {
        self.planner.plan_judge(row, answer)
    }

    /// Whether `verdict` clears the bar (always, without `min_score`).
    pub fn passes(&self, verdict: &Verdict) -> bool {
        self.min_score.is_none_or(|min| verdict.score >= min)
    }

    /// The verdict on `answer` (the row's current answer), as the journal has it.
    pub fn judged(
        &self,
        reader: Option<&mut JournalReader>,
        index: &JournalIndex,
        row: &Row,
        row_id: &str,
        answer: &str,
    ) -> Result<Result<Judged, RenderError>, JournalError> {
        let planned = match self.plan(row, answer) {
            Ok(p) => p,
            Err(e) => return Ok(Err(e)),
        };
        let Some(reader) = reader else {
            return Ok(Ok(Judged::Missing(planned)));
        };
        let own = id(row_id);
        let mut record = match index.offset(&own)? {
            Some(at) => Some(reader.read_at(at)?).filter(|r| r.hash == planned.hash),
            None => None,
        };
        if record.is_none() {
            // Another row asked the judge the very same thing (same row cells the judge
            // reads, same answer): its verdict stands for this row too, paid once.
            if let Some(at) = index.offset_of_request(&planned.hash)? {
                let mut shared = reader.read_at(at)?;
                if shared.id != own {
                    shared.shared_with = Some(shared.id.trim_start_matches(ID_PREFIX).into());
                }
                record = Some(shared);
            }
        }
        Ok(Ok(match record {
            None => Judged::Missing(planned),
            Some(r) if r.status != Status::Ok => Judged::Failed(r),
            Some(r) => match verdict(r.fields.as_ref()) {
                Some(v) => Judged::Scored(v, r),
                None => Judged::Missing(planned),
            },
        }))
    }
}

/// The verdict in a judge record's structured fields.
pub fn verdict(fields: Option<&Map<String, Value>>) -> Option<Verdict> {
    let f = fields?;
    let score = f.get("score")?.as_f64()?;
    let reason = f
        .get("reason")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    Some(Verdict { score, reason })
}

/// The minimum, median and maximum of `scores` (None when empty).
pub fn spread(scores: &mut [f64]) -> Option<(f64, f64, f64)> {
    if scores.is_empty() {
        return None;
    }
    scores.sort_by(f64::total_cmp);
    let n = scores.len();
    let median = if n % 2 == 1 {
        scores[n / 2]
    } else {
        (scores[n / 2 - 1] + scores[n / 2]) / 2.0
    };
    Some((scores[0], median, scores[n - 1]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn verdicts_are_read_from_fields() {
        let f = json!({"score": 7, "reason": "fine"});
        let v = verdict(f.as_object()).unwrap();
        assert_eq!(v.score, 7.0);
        assert_eq!(v.reason, "fine");
        assert!(verdict(json!({"reason": "x"}).as_object()).is_none());
        assert!(verdict(None).is_none());
    }

    #[test]
    fn spread_is_min_median_max() {
        assert_eq!(spread(&mut []), None);
        assert_eq!(spread(&mut [3.0]), Some((3.0, 3.0, 3.0)));
        assert_eq!(spread(&mut [9.0, 1.0, 4.0]), Some((1.0, 4.0, 9.0)));
        assert_eq!(spread(&mut [9.0, 1.0, 4.0, 2.0]), Some((1.0, 3.0, 9.0)));
    }

    #[test]
    fn verdict_ids_cannot_meet_row_ids() {
        assert_eq!(id("7"), "judge\u{1f}7");
        assert_ne!(id("7"), "judge:7");
    }
}
