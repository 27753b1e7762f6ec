//! The ways to run a job, and what they share.
//!
//! [`retry`] is the retry policy every request follows: a pure function from a failed
//! attempt to the wait before the next one (or giving up), with seeded jitter.

pub mod retry;
