//! The spine of a job: the one row loop (and, beside it, the one money ledger).

pub mod rows;
