//! promptmill: turn a spreadsheet into thousands of LLM calls and back into a spreadsheet.
//!
//! Data flows one way: `source` → `pipeline::rows` (render, plan, resume, cache) → a driver
//! in `drive` (live: `limit` → `client` through the `scheduler`; batch; dry run) →
//! `journal` → `sink`, with money added in one place, `pipeline::ledger`. The command line
//! (the `promptmill-cli` crate) only parses flags, builds a `drive::JobCtx` and calls a
//! driver.

pub mod batch;
pub mod bounds;
pub mod cache;
pub mod checks;
pub mod client;
pub mod config;
pub mod cost;
pub mod drive;
pub mod estimate;
pub mod identity;
pub mod job_lock;
pub mod journal;
pub mod judge;
pub mod key_table;
pub mod limit;
pub mod output_paths;
pub mod outputs;
pub mod pipeline;
pub mod plan;
pub mod prefix;
pub mod prime;
pub mod progress;
pub mod render;
pub mod report;
pub mod resume;
pub mod scheduler;
pub mod schema;
pub mod shard;
pub mod sink;
pub mod slots;
pub mod source;
pub mod starter;
pub mod stdout;
pub mod summary;
pub mod tiers;
pub mod time;
pub mod tokens;
pub mod types;
pub mod watchdog;
