//! The dry run: every row rendered, counted, priced and decided (what a run would skip,
//! answer from the cache or send), nothing sent, no key needed. The same pass is the first
//! half of every run ([`first_pass`]): no request goes out before every row is known good,
//! and the send pass reads what this pass kept instead of the input.

use std::sync::Arc;

use anyhow::Context as _;

use super::{cap_names, exit, output_spec, planner_for, start_err, Interrupt, JobCtx};
use crate::cache::Cache;
use crate::cost::Tier;
use crate::estimate::{estimate, Estimate, EstimateOptions};
use crate::identity::Identity;
use crate::journal;
use crate::pipeline::rows::Spool;
use crate::plan::Planner;
use crate::resume::Resume;

/// What the dry run prints.
#[derive(Debug, Clone, Copy, Default)]
pub struct DryRunOptions {
    /// Also print the first N rendered prompts.
    pub show: usize,
    /// Print the estimate as JSON on stdout.
    pub json: bool,
    /// Count rows that failed before as rows to send (as `run --retry-failed` would).
    pub retry_failed: bool,
}

/// Runs the dry run: the estimate on stderr (and as JSON on stdout with `json`).
pub async fn run(ctx: &JobCtx, opts: DryRunOptions, interrupt: &Interrupt) -> anyhow::Result<u8> {
    let job = &ctx.job;
    let planner = Arc::new(planner_for(job, ctx.mock).map_err(start_err)?);
    // The output's shape is checked as a run would, so a dry run finds what would stop it.
    output_spec(job).map_err(start_err)?;
    // A dry run only reads: it looks in a cache folder that exists and creates none.
    let cache = match &job.cache.dir {
        Some(dir) if dir.is_dir() => Some(Cache::open(dir).map_err(start_err)?),
        _ => None,
    };
    let pass = Pass {
        resume: true,
        retry_failed: opts.retry_failed,
        show: opts.show,
        keep: false,
        tier: Tier::Live,
    };
    let Some((estimate, _)) = first_pass(ctx, &planner, cache, pass, interrupt).await? else {
        eprintln!("interrupted: the estimate was not finished");
        return Ok(exit::STOPPED);
    };
    if let Some(line) = estimate.resume.line(Identity::of(job)) {
        eprintln!("{line}");
    }
    let mut estimate = estimate;
    estimate.plan = super::deadline::choice(job, &estimate)?;
    estimate.prices = ctx.prices_line();
    estimate.price_warnings = ctx.price_warnings();
    eprint!("{}", estimate.render());
    if job.budget.any_cap() && ctx.price.is_none() {
        eprintln!(
            "warning: {} is set but model '{}' has no price: a run would refuse to start; \
             give a price table with --prices FILE",
            cap_names(job),
            job.model.name
        );
    }
    if opts.json {
        crate::stdout::print(&format!("{}\n", serde_json::to_string_pretty(&estimate)?))?;
    }
    Ok(exit::OK)
}

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
