//! promptmill: turn a spreadsheet into thousands of LLM calls and back into a spreadsheet.
//!
//! Data flows one way: `source` → `render` → `limit` → `client` → `sink`, wired together by
//! the commands in `cmd`. See DESIGN notes in README.md.

pub mod cost;
pub mod tokens;
pub mod types;
