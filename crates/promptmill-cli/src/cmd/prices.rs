//! `promptmill prices MODEL` (every price known for a model, with its source and date) and
//! `promptmill prices update [--from URL|FILE]` (refresh the cached price file).

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::exit;
use promptmill::cost::{fresh, key_name, update, Part, PriceTable, Tier};
use promptmill::drive::price_table;
use promptmill::types::Money;

/// `promptmill prices`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, arg_required_else_help = true)]
pub struct PricesArgs {
    #[command(subcommand)]
    pub command: Option<PricesCommand>,
    /// The model to show, as written in a job file (`gpt-5-mini`, `openai/gpt-4o`...).
    pub model: Option<String>,
    /// A price table in LiteLLM's format over the cached or built-in one (as `run` takes).
    #[arg(long, value_name = "FILE")]
    pub prices: Option<PathBuf>,
}

/// `promptmill prices update`.
#[derive(Debug, Subcommand)]
pub enum PricesCommand {
    /// Download LiteLLM's current price file into the cache folder; later runs use it.
    Update {
        /// Where from: an https:// URL (or http:// to this machine) or a local file.
        #[arg(long, value_name = "URL|FILE", default_value = update::DEFAULT_URL)]
        from: String,
    },
}

/// Runs `promptmill prices`.
pub async fn run(args: PricesArgs) -> anyhow::Result<u8> {
    match (args.command, args.model) {
        (Some(PricesCommand::Update { from }), _) => run_update(&from).await,
        (None, Some(model)) => show(&model, args.prices),
        (None, None) => {
            eprintln!("error: name a model (`promptmill prices gpt-5-mini`) or `update`");
            Ok(exit::CANNOT_START)
        }
    }
}

async fn run_update(from: &str) -> anyhow::Result<u8> {
    match update::update(from, &update::today()).await {
        Ok(done) => {
            eprintln!(
                "prices updated: {} models from {from}, saved to {}",
                done.models,
                done.path.display()
            );
            Ok(exit::OK)
        }
        Err(e) => {
            eprintln!("error: prices update failed: {e}");
            if let Some(path) = update::cache_file().filter(|p| p.is_file()) {
                eprintln!("the cached prices in {} are kept", path.display());
            }
            Ok(exit::STOPPED)
        }
    }
}

/// Prints every price known for `model` on stdout.
fn show(model: &str, prices: Option<PathBuf>) -> anyhow::Result<u8> {
    let table = match price_table(prices.as_deref()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {}", promptmill::drive::error_text(&e));
            return Ok(exit::CANNOT_START);
        }
    };
    let Some(p) = table.lookup(model) else {
        eprintln!(
            "error: no price for model '{model}' in the {}",
            fresh::describe(&table)
        );
        let close = table.suggest(model, 5);
        if !close.is_empty() {
            eprintln!("close names: {}", close.join(", "));
        }
        return Ok(exit::CANNOT_START);
    };
    print!("{}", render(model, p, &table));
    for w in fresh::warnings(&table, model, Some(p), &update::today()) {
        eprintln!("warning: {w}");
    }
    Ok(exit::OK)
}

/// The text `prices MODEL` prints.
fn render(asked: &str, p: &promptmill::cost::ModelPrice, table: &PriceTable) -> String {
    let mut s = String::new();
    let name = if asked == p.model {
        p.model.clone()
    } else {
        format!("{} (asked as {asked})", p.model)
    };
    s.push_str(&format!("model        {name}\n"));
    if !p.provider.is_empty() {
        s.push_str(&format!("provider     {}\n", p.provider));
    }
    s.push_str(&format!("prices from  {}\n", fresh::describe(table)));
    if let Some(d) = &p.deprecation_date {
        s.push_str(&format!("deprecation  {d}\n"));
    }
    if let Some(n) = p.max_input_tokens {
        s.push_str(&format!("context      {n} input tokens\n"));
    }
    let tiers: Vec<&str> = p.tiers().iter().map(|t| t.name()).collect();
    s.push_str(&format!("tiers        {}\n", tiers.join(", ")));
    s.push_str(&format!(
        "\n{:<9} {:<26} {:>16} {:>12}  {}\n",
        "tier", "price", "USD per token", "USD per 1M", "key"
    ));
    let parts = [
        (Part::Input, "input"),
        (Part::CacheRead, "cache read"),
        (Part::CacheWrite, "cache write (5m)"),
        (Part::CacheWrite1h, "cache write (1h)"),
        (Part::Output, "output"),
    ];
    let bands: Vec<Option<u64>> = std::iter::once(None)
        .chain(p.long_context_thresholds().iter().map(|b| Some(*b)))
        .collect();
    for tier in Tier::ALL {
        if !p.has_tier(tier) {
            continue;
        }
        for above in &bands {
            let rates = p.rates_at(tier, *above);
            for (part, label) in parts {
                let value = match part {
                    Part::Input => rates.input,
                    Part::Output => rates.output,
                    Part::CacheRead => rates.cache_read,
                    Part::CacheWrite => rates.cache_write,
                    Part::CacheWrite1h => rates.cache_write_1h,
                };
                let key = promptmill::cost::PriceKey {
                    part,
                    above: *above,
                    tier,
                };
                let how = if p.listed(part, *above, tier).is_some() {
                    key_name(&key)
                } else {
                    "(derived)".to_string()
                };
                let label = match above {
                    Some(b) => format!("{label}, prompt > {}k", b / 1000),
                    None => label.to_string(),
                };
                s.push_str(&format!(
                    "{:<9} {:<26} {:>16} {:>12}  {how}\n",
                    tier.name(),
                    label,
                    per_token(value),
                    per_million(value)
                ));
            }
        }
    }
    s
}

/// USD per token, exactly (picodollars have 12 decimals).
fn per_token(m: Money) -> String {
    trim(format!(
        "{}.{:012}",
        m.0 / 1_000_000_000_000,
        m.0 % 1_000_000_000_000
    ))
}

/// USD per million tokens, exactly.
fn per_million(m: Money) -> String {
    trim(format!("{}.{:06}", m.0 / 1_000_000, m.0 % 1_000_000))
}

/// `1.250000` → `1.25`, `2.000` → `2`.
fn trim(s: String) -> String {
    let t = s.trim_end_matches('0').trim_end_matches('.');
    t.to_string()
}
