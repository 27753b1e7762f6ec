//! `[[outputs]]`: more named texts per row, each from its own prompt and model settings, in
//! its own output column. Each is a request of its own, planned in the row loop beside the
//! row's answer, sent through the same scheduler, ledger and journal, and journaled under
//! its own identity ([`id`]): the row's identity with the output's name, so resume, the
//! response cache and the output treat it like any answer. The output keeps one row per
//! input row.

use crate::config::Job;
use crate::plan::Planner;

/// One `[[outputs]]` entry, ready to plan rows.
pub struct Extra {
    /// Its column.
    pub name: String,
    /// The job its requests are planned as ([`Job::output_job`]).
    pub job: Job,
    pub planner: Planner,
    /// The model its requests go to (priced from the price table).
    pub model: String,
}

/// The journal identity of output `name` of the row whose identity is `row_id`.
pub fn id(name: &str, row_id: &str) -> String {
    format!("out\u{1f}{name}\u{1f}{row_id}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_never_meet_row_or_judge_ids() {
        let a = super::id("headline", "sku-1");
        assert_ne!(a, "sku-1");
        assert_ne!(a, crate::judge::id("sku-1"));
        assert_ne!(a, super::id("description", "sku-1"));
        // Names are letters, digits and '_', so the name always ends at the second
        // separator, whatever the row's id holds.
        assert_ne!(super::id("a", "b\u{1f}c"), super::id("a", "b"));
    }
}
