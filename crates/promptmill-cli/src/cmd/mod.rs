//! One module per subcommand: parse the flags, build the job context, call one driver of
//! the library (`promptmill::drive`), map the result to an exit code.

pub mod args;
pub mod batch;
pub mod completions;
pub mod estimate;
pub mod export;
pub mod init;
pub mod merge;
pub mod mock;
pub mod pipes;
pub mod prices;
pub mod report;
pub mod run;
pub mod signals;

pub use promptmill::drive::{exit, start_err};
