//! The integration tests: one test binary, one module per feature. Each module runs the real
//! `promptmill` binary (or the library) against loopback servers only.

mod common;

mod anthropic_batch;
mod batch;
mod batch_any;
mod batch_prime;
mod batch_review;
mod budget;
mod checks;
mod deadline;
mod estimate;
mod hostile;
mod identity;
mod init;
mod judge;
mod ledger;
mod misbehaving_client;
mod misbehaving_limits;
mod misbehaving_money;
mod mock_api;
mod one_run;
mod outputs;
mod pipeline;
mod preview;
mod prices;
mod prime;
mod prompt_cache;
mod providers;
mod ratelimit;
mod readme;
mod render;
mod report;
mod resume;
mod retry_schedule;
mod row_settings;
mod rows;
mod shard;
mod shared_budget;
mod shared_limits;
mod shared_pace;
mod signals;
mod snapshots_cli;
mod token_counts;
mod xlsx;
