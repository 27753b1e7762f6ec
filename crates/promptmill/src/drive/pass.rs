//! The validation pass, the first half of every run and the whole of a dry run: every row
//! rendered, counted, priced and decided before a single request is sent.

use std::sync::Arc;

use anyhow::Context as _;

use super::{start_err, Interrupt, JobCtx};
use crate::cache::Cache;
use crate::cost::Tier;
use crate::estimate::{estimate, Estimate, EstimateOptions};
use crate::identity::Identity;
use crate::journal;
use crate::pipeline::rows::Spool;
use crate::plan::Planner;
use crate::resume::Resume;

/// How [`first_pass`] reads the rows.
#[derive(Debug, Clone, Copy)]
pub(super) struct Pass {
    /// Decide each row against the journal as it is now (batch mode decides when it writes
    /// a round instead: the journal may grow before then).
    pub resume: bool,
    /// Rows that failed before are to be sent again.
    pub retry_failed: bool,
    /// Rendered prompts to keep for display.
    pub show: usize,
    /// Keep every row and its Step in a spool beside the journal, for the send pass.
    pub keep: bool,
    /// The tier the worst cases are priced at.
    pub tier: Tier,
}

/// The validation pass, on a blocking thread: every row rendered, counted and decided before
/// a single request is sent. `None` when a stop was requested first (nothing is sent then).
pub(super) async fn first_pass(
    ctx: &JobCtx,
    planner: &Arc<Planner>,
    cache: Option<Cache>,
    pass: Pass,
    interrupt: &Interrupt,
) -> anyhow::Result<Option<(Estimate, Option<Spool>)>> {
    let (job, planner, price) = (ctx.job.clone(), planner.clone(), ctx.price.clone());
    let prices = ctx.prices.clone();
    let outputs = super::job::outputs_for(ctx).map_err(start_err)?;
    // The judge's templates are checked on every row here.
    let judge = super::judge_for(ctx).map_err(start_err)?;
    let task = tokio::task::spawn_blocking(move || {
        // Read-only: the journal is repaired only when the run really starts.
        let path = job.journal_path();
        let resume = match journal::read_index(&path)? {
            Some(index) if pass.resume => Some(Resume::new(
                &path,
                index,
                pass.retry_failed,
                Identity::of(&job),
            )?),
            _ => None,
        };
        let opts = EstimateOptions {
            price: price.as_ref(),
            show: pass.show,
            workers: 0,
            resume: resume.as_ref(),
            cache: cache.as_ref(),
            tier: pass.tier,
            spool_beside: pass.keep.then_some(path.as_path()),
            judge: judge.as_deref(),
            prices: Some(&prices),
            outputs: &outputs,
        };
        estimate(&job, &planner, &opts)
    });
    tokio::select! {
        biased;
        _ = interrupt.wait() => Ok(None),
        v = task => Ok(Some(
            v.context("validation task failed")
                .map_err(start_err)?
                .map_err(start_err)?,
        )),
    }
}
