//! The dry run: every row rendered, counted, priced and decided (what a run would skip,
//! answer from the cache or send), nothing sent, no key needed. The same pass is the first
//! half of every run ([`super::pass`]): no request goes out before every row is known
//! good, and the send pass reads what this pass kept instead of the input.

use std::sync::Arc;

use super::pass::{first_pass, Pass};
use super::{cap_names, exit, output_spec, planner_for, start_err, Interrupt, JobCtx};
use crate::cache::Cache;
use crate::cost::Tier;
use crate::identity::Identity;

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
