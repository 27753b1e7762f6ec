//! The provider Batch API as a backend of the same job: rows become batch input files
//! (`input`), which are uploaded and turned into batches (`api`), tracked in a state file
//! beside the output (`state`), and whose output and error files come back into the journal
//! (`results`). The commands that drive it live in `cmd::batch`. `backend` picks the
//! provider's Batch API: OpenAI's (`api`) or Anthropic's Message Batches (`anthropic`).

pub mod anthropic;
pub mod api;
pub mod backend;
pub mod input;
pub mod results;
pub mod state;

/// Metadata key holding the job name on every batch promptmill creates.
pub const META_JOB: &str = "promptmill_job";
/// Metadata key holding the chunk identity (see [`state::Chunk::key`]).
pub const META_CHUNK: &str = "promptmill_chunk";

/// Test hook: `PROMPTMILL_TEST_CRASH_AT=<point>` exits at once (as a crash would) there.
pub fn crash_point(point: &str) {
    if std::env::var("PROMPTMILL_TEST_CRASH_AT").is_ok_and(|p| p == point) {
        std::process::exit(101);
    }
}
