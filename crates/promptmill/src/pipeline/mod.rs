//! The pipeline's shared parts: the row loop (`rows`) every driver consumes, and the ledger
//! that adds up money.

pub mod ledger;
pub mod rows;
pub mod shared_budget;
