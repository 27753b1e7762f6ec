//! The provider Batch API as a backend of the same job: rows become batch input files
//! (`input`), which are uploaded and turned into batches (`api`), tracked in a state file
//! beside the output (`state`), and whose output and error files come back into the journal
//! (`results`). The commands that drive it live in `cmd::batch`.

pub mod api;
pub mod input;
pub mod results;
pub mod state;

/// Metadata key holding the job name on every batch promptmill creates.
pub const META_JOB: &str = "promptmill_job";
/// Metadata key holding the chunk identity (see [`state::Chunk::key`]).
pub const META_CHUNK: &str = "promptmill_chunk";
