//! Warnings about the age of the price data and the model's deprecation date, shown by the
//! summary, the estimate and `promptmill prices MODEL`.

use super::{ModelPrice, PriceTable};
use crate::time::days_between;

/// Price data older than this many days is flagged.
pub const STALE_AFTER_DAYS: i64 = 60;
/// A deprecation date this close (or past) is flagged.
pub const DEPRECATION_WARN_DAYS: i64 = 30;

/// One line naming the price data: its origin, source and date.
pub fn describe(table: &PriceTable) -> String {
    let date = if table.as_of().is_empty() {
        "date unknown"
    } else {
        table.as_of()
    };
    format!(
        "{} ({}), dated {date}",
        table.origin().describe(),
        table.source()
    )
}

/// Warnings for a run of `model` on `today` (`YYYY-MM-DD`): stale price data, and a model
/// whose `deprecation_date` is past or within 30 days.
pub fn warnings(
    table: &PriceTable,
    model: &str,
    price: Option<&ModelPrice>,
    today: &str,
) -> Vec<String> {
    let mut out = Vec::new();
    match days_between(table.as_of(), today) {
        Some(age) if age > STALE_AFTER_DAYS => out.push(format!(
            "the price data is dated {} ({age} days old, more than {STALE_AFTER_DAYS}); \
             run `promptmill prices update` for current prices",
            table.as_of()
        )),
        None => out.push(
            "the price data has no date; run `promptmill prices update` for current prices".into(),
        ),
        Some(_) => {}
    }
    if let Some(date) = price.and_then(|p| p.deprecation_date.as_deref()) {
        match days_between(today, date) {
            Some(left) if left < 0 => out.push(format!(
                "model '{model}' was deprecated on {date} (per the price data): it may be \
                 gone or repriced"
            )),
            Some(left) if left <= DEPRECATION_WARN_DAYS => out.push(format!(
                "model '{model}' is deprecated on {date}, in {left} day{}",
                if left == 1 { "" } else { "s" }
            )),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_data_and_deprecations_warn() {
        let t = PriceTable::builtin(); // dated 2026-11-20
        let gpt5 = t.lookup("gpt-5"); // deprecation_date 2026-12-11
        assert!(warnings(t, "gpt-5.5", t.lookup("gpt-5.5"), "2026-12-01").is_empty());
        // 61 days after the data's date.
        let w = warnings(t, "gpt-5.5", t.lookup("gpt-5.5"), "2027-01-20");
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("61 days old"), "{w:?}");
        assert!(warnings(t, "gpt-5.5", None, "2027-01-19").is_empty());
        // 10 days before gpt-5's deprecation.
        let w = warnings(t, "gpt-5", gpt5, "2026-12-01");
        assert_eq!(w, ["model 'gpt-5' is deprecated on 2026-12-11, in 10 days"]);
        assert!(warnings(t, "gpt-5", gpt5, "2026-11-10").is_empty());
        let w = warnings(t, "gpt-5", gpt5, "2026-12-12");
        assert!(w[0].contains("was deprecated on 2026-12-11"), "{w:?}");
        assert!(
            describe(t).starts_with("built-in snapshot (LiteLLM"),
            "{}",
            describe(t)
        );
        assert!(describe(t).ends_with("dated 2026-11-20"), "{}", describe(t));
    }
}
