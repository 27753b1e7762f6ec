//! `plan.tier = "auto"`: before a run, the tier planner ([`crate::tiers::choose`]) picks
//! batch or a live `service_tier` from the estimate's tier table, and the job is run that
//! way. The planner needs the table, so such a run reads and counts its input once more
//! than another run (the estimate pass, here, before the driver's own validation pass).

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::pass::{first_pass, Pass};
use super::{planner_for, start_err, Interrupt, JobCtx};
use crate::batch::backend;
use crate::cache::Cache;
use crate::config::{Job, Mode, PlanTier, ServiceTier};
use crate::cost::Tier;
use crate::estimate::Estimate;
use crate::tiers::{self, Assumptions, Choice};

/// Whether this job could run in batch mode (the planner leaves batch out otherwise): a
/// provider with a Batch API, one model for every row, no `[[outputs]]`, not a shard.
pub fn batch_possible(job: &Job) -> bool {
    backend::supports(job.api.provider)
        && job.model.row_columns().next().is_none()
        && job.outputs.is_empty()
        && job.shard.is_none()
}

/// The planner's choice for `job` from its estimate, when `plan.tier = "auto"`.
pub fn choice(job: &Job, e: &Estimate) -> anyhow::Result<Option<Choice>> {
    if job.plan.tier != Some(PlanTier::Auto) {
        return Ok(None);
    }
    if e.tiers.is_empty() {
        return Err(start_err(anyhow::anyhow!(
            "plan.tier = \"auto\": model '{}' has no price, so tiers cannot be compared; give \
             a price table with --prices FILE, or drop plan.tier",
            job.model.name
        )));
    }
    let c = tiers::choose(&e.tiers, &Assumptions::of(&job.plan), batch_possible(job))
        .map_err(|m| start_err(anyhow::anyhow!(m)))?;
    Ok(Some(c))
}

/// Makes `job` run at the chosen tier: batch mode, or live with that `service_tier`.
pub fn apply(job: &mut Job, tier: Tier) {
    let m = &mut job.model;
    match tier {
        Tier::Batch => {
            job.mode = Mode::Batch;
            m.service_tier = None;
        }
        Tier::Flex => {
            job.mode = Mode::Live;
            m.service_tier = Some(ServiceTier::Flex);
        }
        Tier::Priority => {
            job.mode = Mode::Live;
            m.service_tier = Some(ServiceTier::Priority);
        }
        Tier::Live => {
            job.mode = Mode::Live;
            if matches!(
                m.service_tier,
                Some(ServiceTier::Flex | ServiceTier::Priority)
            ) {
                m.service_tier = None;
            }
        }
    }
    if m.service_tier != Some(ServiceTier::Flex) {
        m.flex_fallback_after_secs = None;
    }
}

/// With `plan.tier = "auto"`: estimates the rows a run would send, prints the planner's
/// line and sets the job's mode and `service_tier` to its choice. `Ok(false)` when a stop
/// was requested first (nothing was sent).
pub async fn plan(
    ctx: &mut JobCtx,
    retry_failed: bool,
    interrupt: &Interrupt,
) -> anyhow::Result<bool> {
    if ctx.job.plan.tier != Some(PlanTier::Auto) {
        return Ok(true);
    }
    let planner = Arc::new(planner_for(&ctx.job, ctx.mock).map_err(start_err)?);
    let pass = Pass {
        resume: true,
        retry_failed,
        show: 0,
        keep: false,
        tier: Tier::Live,
    };
    // The response cache answers rows at no cost, as in the run: looked in, never created.
    let cache = match &ctx.job.cache.dir {
        Some(dir) if dir.is_dir() => Some(Cache::open(dir).map_err(start_err)?),
        _ => None,
    };
    let Some((estimate, _)) = first_pass(ctx, &planner, cache, pass, interrupt).await? else {
        return Ok(false);
    };
    if let Some(c) = choice(&ctx.job, &estimate)? {
        eprintln!("plan: {}", c.reason);
        apply(&mut ctx.job, c.kind());
    }
    Ok(true)
}

/// Batch mode with a deadline (`run --mode batch --wait`, `collect --wait`): when the
/// deadline less its margin, counted from the start of the command, has passed, the batches
/// still running are cancelled (what they finished is collected as usual), nothing more is
/// submitted, and the rows left without an answer are sent live in the same process.
#[derive(Debug, Clone, Copy)]
pub(super) struct Cut {
    at: Option<Instant>,
}

impl Cut {
    /// The cut of `job` for a command that started at `started`; none without a deadline or
    /// without waiting (a command that does not wait cannot finish anything live later).
    pub(super) fn new(job: &Job, started: Instant, wait: bool) -> Cut {
        let allowed = Assumptions::of(&job.plan)
            .allowed()
            .filter(|_| wait)
            .and_then(|s| Duration::try_from_secs_f64(s).ok());
        Cut {
            at: allowed.and_then(|d| started.checked_add(d)),
        }
    }

    /// Whether the cut has come.
    pub(super) fn passed(&self) -> bool {
        self.at.is_some_and(|t| Instant::now() >= t)
    }

    /// How long until the cut, if there is one.
    pub(super) fn left(&self) -> Option<Duration> {
        self.at.map(|t| t.saturating_duration_since(Instant::now()))
    }
}

/// Whether a batch in this status has been asked to stop already (or has ended).
pub(super) fn stopping(status: Option<&str>) -> bool {
    matches!(
        status,
        Some("cancelling" | "canceling" | "cancelled" | "canceled" | "ending")
    ) || status.is_some_and(crate::batch::state::is_terminal)
}

/// Runs the rows the cancelled batches left without an answer live (the journal decides
/// which: every row answered, or failed and kept, is not sent again).
pub(super) async fn finish_live(
    jc: &JobCtx,
    opts: super::live::LiveOptions,
    interrupt: &Interrupt,
    started: Instant,
) -> anyhow::Result<u8> {
    let mut live = jc.clone();
    live.job.mode = Mode::Live;
    super::live::run(&live, opts, interrupt, started).await
}
