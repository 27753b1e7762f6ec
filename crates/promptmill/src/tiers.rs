//! The tier table and the deadline planner.
//!
//! The estimate prices the job at every tier the model is billed at (standard, flex,
//! priority, batch) and says how long each is expected to take: the live tiers from the
//! job's rate limits (the estimate's `min_wall_time`; flex that many times
//! `plan.flex_slowdown` longer, since it is served from spare capacity), batch from
//! `plan.batch_hours`, a typical completion time (the Batch API promises only its 24-hour
//! window). With `plan.tier = "auto"` the planner picks the cheapest tier whose expected
//! time fits the deadline less its margin ([`choose`]); pure, so it is tested without I/O.

use serde::Serialize;

use crate::config::PlanConfig;
use crate::cost::Tier;
use crate::types::usd;

/// The typical hours a batch takes when `plan.batch_hours` is not set.
pub const DEFAULT_BATCH_HOURS: f64 = 6.0;
/// The share of the deadline kept in hand when `plan.margin` is not set.
pub const DEFAULT_MARGIN: f64 = 0.1;
/// How many times longer flex is assumed to take when `plan.flex_slowdown` is not set.
pub const DEFAULT_FLEX_SLOWDOWN: f64 = 2.0;

/// One tier's line of the table (`--json`: `tiers`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TierEstimate {
    /// `standard`, `flex`, `priority` or `batch`.
    pub tier: &'static str,
    /// The expected cost (prompt tokens plus the expected output, with the prompt cache's
    /// reads when it applies); `None` = unknown price.
    pub expected_usd: Option<f64>,
    /// True when batch prices are derived as half the standard ones (the table had none).
    pub derived: bool,
    /// The expected wall time in seconds; `None` = unknown (a live tier without rate limits).
    pub wall_seconds: Option<f64>,
    /// Where the wall time comes from.
    pub wall_time_from: String,
    /// With a deadline: whether the wall time fits it less its margin.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fits_deadline: Option<bool>,
}

impl TierEstimate {
    /// The tier this line is for.
    pub fn kind(&self) -> Tier {
        Tier::ALL
            .into_iter()
            .find(|t| t.name() == self.tier)
            .unwrap_or(Tier::Live)
    }
}

/// What the planner chose (`--json`: `plan`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Choice {
    /// The tier picked: `standard`, `flex`, `priority` or `batch`.
    pub tier: &'static str,
    /// True when no tier is expected to fit the deadline (the fastest was picked).
    pub late: bool,
    /// One line saying what was chosen and why, and what the others would cost and take.
    pub reason: String,
}

impl Choice {
    /// The tier picked.
    pub fn kind(&self) -> Tier {
        Tier::ALL
            .into_iter()
            .find(|t| t.name() == self.tier)
            .unwrap_or(Tier::Live)
    }
}

/// The plan's settings with their defaults applied.
#[derive(Debug, Clone, Copy)]
pub struct Assumptions {
    pub batch_hours: f64,
    pub margin: f64,
    pub flex_slowdown: f64,
    /// Seconds, if a deadline is set.
    pub deadline: Option<f64>,
}

impl Assumptions {
    /// `plan`'s settings, defaults where unset.
    pub fn of(plan: &PlanConfig) -> Assumptions {
        Assumptions {
            batch_hours: plan.batch_hours.unwrap_or(DEFAULT_BATCH_HOURS),
            margin: plan.margin.unwrap_or(DEFAULT_MARGIN),
            flex_slowdown: plan.flex_slowdown.unwrap_or(DEFAULT_FLEX_SLOWDOWN),
            deadline: plan.deadline_secs(),
        }
    }

    /// The time a tier may take: the deadline less its margin.
    pub fn allowed(&self) -> Option<f64> {
        self.deadline.map(|d| d * (1.0 - self.margin))
    }
}

/// The table: for each tier in `costs` (the model's tiers, with their expected cost and
/// whether it is derived), its expected wall time; `live_seconds` is what the rate limits
/// allow at best (`None`: no limits set).
pub fn table(
    costs: &[(Tier, Option<f64>, bool)],
    live_seconds: Option<f64>,
    a: &Assumptions,
) -> Vec<TierEstimate> {
    costs
        .iter()
        .map(|&(tier, expected_usd, derived)| {
            let (wall_seconds, wall_time_from) = match (tier, live_seconds) {
                (Tier::Batch, _) => (
                    Some(a.batch_hours * 3600.0),
                    "typical batch time, plan.batch_hours".to_string(),
                ),
                (_, None) => (None, "no rate limits set".to_string()),
                (Tier::Flex, Some(s)) => (
                    Some(s * a.flex_slowdown),
                    format!(
                        "rate limits, flex assumed {}x slower, plan.flex_slowdown",
                        a.flex_slowdown
                    ),
                ),
                (_, Some(s)) => (Some(s), "rate limits".to_string()),
            };
            let fits_deadline = a
                .allowed()
                .map(|allowed| wall_seconds.is_none_or(|w| w <= allowed));
            TierEstimate {
                tier: tier.name(),
                expected_usd,
                derived,
                wall_seconds,
                wall_time_from,
                fits_deadline,
            }
        })
        .collect()
}

/// The planner: the cheapest tier expected to finish within the deadline less its margin
/// (every tier fits when there is no deadline; a live tier without rate limits is assumed
/// to fit, and the line says so). Equal costs go to the earlier of batch, flex, standard,
/// priority. When none fits, the fastest is picked and `late` is set. `batch` = whether
/// batch mode is possible for this run. An error when a cost is unknown.
pub fn choose(tiers: &[TierEstimate], a: &Assumptions, batch: bool) -> Result<Choice, String> {
    let order = |t: &TierEstimate| match t.kind() {
        Tier::Batch => 0,
        Tier::Flex => 1,
        Tier::Live => 2,
        Tier::Priority => 3,
    };
    let mut usable: Vec<(&TierEstimate, f64)> = Vec::new();
    for t in tiers.iter().filter(|t| batch || t.kind() != Tier::Batch) {
        let cost = t.expected_usd.ok_or_else(|| {
            format!(
                "plan.tier = \"auto\": the {} price of this model is unknown, so tiers cannot \
                 be compared; give a price table with --prices FILE, or drop plan.tier",
                t.tier
            )
        })?;
        usable.push((t, cost));
    }
    usable.sort_by(|(x, cx), (y, cy)| cx.total_cmp(cy).then(order(x).cmp(&order(y))));
    let fits = |t: &TierEstimate| t.fits_deadline != Some(false);
    let (pick, late) = match usable.iter().find(|(t, _)| fits(t)) {
        Some(p) => (*p, false),
        None => {
            let fastest = usable
                .iter()
                .min_by(|(x, cx), (y, cy)| {
                    let (wx, wy) = (x.wall_seconds.unwrap_or(0.0), y.wall_seconds.unwrap_or(0.0));
                    wx.total_cmp(&wy).then(cx.total_cmp(cy))
                })
                .copied()
                .ok_or_else(|| "plan.tier = \"auto\": no tier to choose from".to_string())?;
            (fastest, true)
        }
    };
    let (t, cost) = pick;
    let deadline = match (a.deadline, a.allowed()) {
        (Some(d), Some(allowed)) => format!(
            "the deadline {} less its {:.0}% margin leaves {}",
            duration(d),
            a.margin * 100.0,
            duration(allowed)
        ),
        _ => "no deadline set".to_string(),
    };
    let why = if late {
        format!("no tier is expected to finish in time ({deadline}): the fastest")
    } else if t.wall_seconds.is_none() {
        format!("the cheapest that fits ({deadline}; its time is unknown: no rate limits set)")
    } else {
        format!("the cheapest expected to finish in time ({deadline})")
    };
    let others: Vec<String> = usable
        .iter()
        .filter(|(o, _)| o.tier != t.tier)
        .map(|(o, c)| {
            format!(
                "{} {} in {}{}",
                o.tier,
                usd(*c),
                o.wall_seconds.map_or("unknown time".into(), duration),
                if fits(o) { "" } else { " (too slow)" }
            )
        })
        .collect();
    let reason = format!(
        "{} ({} expected, {}): {why}{}",
        t.tier,
        usd(cost),
        t.wall_seconds
            .map_or("time unknown".into(), |w| format!("about {}", duration(w))),
        if others.is_empty() {
            String::new()
        } else {
            format!("; others: {}", others.join(", "))
        }
    );
    Ok(Choice {
        tier: t.tier,
        late,
        reason,
    })
}

/// `1h 02m`, `3m 20s`, `12.5s`, `2d 03h`.
pub fn duration(secs: f64) -> String {
    if secs < 60.0 {
        return format!("{secs:.1}s");
    }
    let s = secs.round() as u64;
    if s < 3600 {
        format!("{}m {:02}s", s / 60, s % 60)
    } else if s < 86_400 {
        format!("{}h {:02}m", s / 3600, (s % 3600) / 60)
    } else {
        format!("{}d {:02}h", s / 86_400, (s % 86_400) / 3600)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(deadline: Option<f64>) -> Assumptions {
        Assumptions {
            batch_hours: 6.0,
            margin: 0.1,
            flex_slowdown: 2.0,
            deadline,
        }
    }

    fn costs() -> Vec<(Tier, Option<f64>, bool)> {
        vec![
            (Tier::Live, Some(1.0), false),
            (Tier::Flex, Some(0.5), false),
            (Tier::Priority, Some(1.8), false),
            (Tier::Batch, Some(0.5), false),
        ]
    }

    #[test]
    fn wall_times_come_from_the_limits_and_the_batch_hours() {
        let t = table(&costs(), Some(100.0), &a(None));
        let secs: Vec<Option<f64>> = t.iter().map(|t| t.wall_seconds).collect();
        assert_eq!(
            secs,
            vec![Some(100.0), Some(200.0), Some(100.0), Some(21_600.0)]
        );
        assert!(t.iter().all(|t| t.fits_deadline.is_none()));
        let t = table(&costs(), None, &a(None));
        assert_eq!(t[0].wall_seconds, None);
        assert_eq!(t[3].wall_seconds, Some(21_600.0));
    }

    #[test]
    fn the_cheapest_tier_that_fits_is_chosen() {
        // 24 hours: batch fits (6 h <= 21.6 h) and ties with flex on cost: batch first.
        let x = a(Some(86_400.0));
        let c = choose(&table(&costs(), Some(100.0), &x), &x, true).unwrap();
        assert_eq!((c.tier, c.late), ("batch", false), "{}", c.reason);
        assert!(c.reason.contains("others: flex $"), "{}", c.reason);
        // 5 minutes (270 s allowed): batch is too slow, flex (200 s) fits.
        let x = a(Some(300.0));
        let c = choose(&table(&costs(), Some(100.0), &x), &x, true).unwrap();
        assert_eq!(c.tier, "flex", "{}", c.reason);
        assert!(
            c.reason.contains("batch $0.50 in 6h 00m (too slow)"),
            "{}",
            c.reason
        );
        // 3 minutes (162 s): flex is too slow too; standard before priority.
        let x = a(Some(180.0));
        let c = choose(&table(&costs(), Some(100.0), &x), &x, true).unwrap();
        assert_eq!(c.tier, "standard", "{}", c.reason);
        // Batch not possible: flex wins the tie.
        let x = a(Some(86_400.0));
        let c = choose(&table(&costs(), Some(100.0), &x), &x, false).unwrap();
        assert_eq!(c.tier, "flex");
    }

    #[test]
    fn an_impossible_deadline_picks_the_fastest_and_says_so() {
        let x = a(Some(60.0));
        let c = choose(&table(&costs(), Some(100.0), &x), &x, true).unwrap();
        assert_eq!((c.tier, c.late), ("standard", true), "{}", c.reason);
        assert!(c.reason.contains("no tier is expected to finish in time"));
    }

    #[test]
    fn an_unknown_price_is_refused() {
        let mut k = costs();
        k[1].1 = None;
        let x = a(Some(600.0));
        let e = choose(&table(&k, Some(1.0), &x), &x, true).unwrap_err();
        assert!(e.contains("flex price of this model is unknown"), "{e}");
    }

    #[test]
    fn durations() {
        assert_eq!(duration(12.46), "12.5s");
        assert_eq!(duration(3720.0), "1h 02m");
        assert_eq!(duration(2.0 * 86_400.0 + 3.0 * 3600.0), "2d 03h");
        assert_eq!(crate::time::parse_duration("6h"), Ok(21_600.0));
        assert_eq!(crate::time::parse_duration("90m"), Ok(5_400.0));
        assert_eq!(crate::time::parse_duration("2d"), Ok(172_800.0));
        assert_eq!(crate::time::parse_duration(" 1h30m "), Ok(5_400.0));
        for bad in ["", "6", "soon", "-1h", "0s", "1mo", "2y"] {
            assert!(crate::time::parse_duration(bad).is_err(), "{bad}");
        }
    }
}
