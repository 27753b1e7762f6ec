//! The pipeline's shared parts: the ledger that adds up money.

pub mod ledger;
