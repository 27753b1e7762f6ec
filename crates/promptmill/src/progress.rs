//! Progress while a job runs: an indicatif bar on a terminal, plain periodic lines otherwise
//! (cron logs want lines, not carriage returns).

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::client::ErrorKind;
use crate::pipeline::ledger::Ledger;

/// Rows done, failed and money spent, shown as the job goes.
#[derive(Clone)]
pub struct Progress {
    bar: ProgressBar,
    inner: Arc<Inner>,
}

struct Inner {
    total: u64,
    done: AtomicU64,
    failed: AtomicU64,
    /// Where this run's spend is read from (the ledger adds it up, not the progress line).
    ledger: Option<Arc<Ledger>>,
    /// Attempts that were retries.
    retries: AtomicU64,
    /// Failed attempts by kind: connection, timeout, 5xx, 429.
    errors: [AtomicU64; 4],
    started: Instant,
    plain: bool,
}

impl Inner {
    /// This run's spend as the ledger has it (`unknown` while any answer has no price).
    fn spent(&self) -> String {
        match self.ledger.as_ref().map(|l| l.this_run()) {
            Some(t) => match t.known() {
                Some(m) => m.to_string(),
                None => format!("{} + {} unpriced", t.priced, t.unpriced),
            },
            None => crate::types::Money::ZERO.to_string(),
        }
    }

    /// `3 retries (2 connection, 0 timeout, 1 5xx, 0 429)`, or None while there are none.
    fn retries_line(&self) -> Option<String> {
        let retries = self.retries.load(Relaxed);
        let e: Vec<u64> = self.errors.iter().map(|a| a.load(Relaxed)).collect();
        if retries == 0 && e.iter().all(|n| *n == 0) {
            return None;
        }
        Some(format!(
            "{retries} retries ({} connection, {} timeout, {} 5xx, {} 429)",
            e[0], e[1], e[2], e[3]
        ))
    }
}

impl Progress {
    /// Progress over `total` rows; a bar when stderr is a terminal and `quiet` is off.
    pub fn new(total: u64, quiet: bool, ledger: Option<Arc<Ledger>>) -> Progress {
        let tty = std::io::stderr().is_terminal();
        let bar = if tty && !quiet {
            let b = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            b.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} rows {msg} ({per_sec}, eta {eta})",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            b.enable_steady_tick(Duration::from_millis(200));
            b
        } else {
            ProgressBar::hidden()
        };
        Progress {
            bar,
            inner: Arc::new(Inner {
                total,
                done: AtomicU64::new(0),
                failed: AtomicU64::new(0),
                ledger,
                retries: AtomicU64::new(0),
                errors: Default::default(),
                started: Instant::now(),
                plain: !tty && !quiet,
            }),
        }
    }

    /// Records a finished row (its cost is in the ledger).
    pub fn row_done(&self, ok: bool) {
        self.inner.done.fetch_add(1, Relaxed);
        if !ok {
            self.inner.failed.fetch_add(1, Relaxed);
        }
        self.bar.inc(1);
        self.refresh_bar();
    }

    /// Records an attempt that is a retry of its row.
    pub fn retried(&self) {
        self.inner.retries.fetch_add(1, Relaxed);
    }

    /// Records a failed attempt; connection errors, timeouts, 5xx and 429s are counted by
    /// kind on the progress line.
    pub fn attempt_failed(&self, kind: ErrorKind) {
        let i = match kind {
            ErrorKind::Connection => 0,
            ErrorKind::Timeout => 1,
            ErrorKind::Server => 2,
            ErrorKind::RateLimited => 3,
            _ => return,
        };
        self.inner.errors[i].fetch_add(1, Relaxed);
        self.refresh_bar();
    }

    fn refresh_bar(&self) {
        let failed = self.inner.failed.load(Relaxed);
        let mut msg = String::from("·");
        if failed > 0 {
            msg.push_str(&format!(" {failed} failed ·"));
        }
        if let Some(r) = self.inner.retries_line() {
            msg.push_str(&format!(" {r} ·"));
        }
        msg.push_str(&format!(" {}", self.inner.spent()));
        self.bar.set_message(msg);
    }

    /// Starts the plain-text reporter (a line every `every`) when not on a terminal.
    pub fn spawn_plain_reporter(&self, every: Duration) -> Option<tokio::task::JoinHandle<()>> {
        if !self.inner.plain {
            return None;
        }
        let inner = self.inner.clone();
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let done = inner.done.load(Relaxed);
                let secs = inner.started.elapsed().as_secs_f64().max(0.001);
                let retries = inner
                    .retries_line()
                    .map(|r| format!(", {r}"))
                    .unwrap_or_default();
                eprintln!(
                    "promptmill: {done}/{} rows, {} failed{retries}, {} spent, {:.0} rows/min",
                    inner.total,
                    inner.failed.load(Relaxed),
                    inner.spent(),
                    done as f64 * 60.0 / secs
                );
            }
        }))
    }

    /// Removes the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_and_failed_attempts_are_counted_by_kind() {
        let p = Progress::new(10, true, None);
        assert_eq!(p.inner.retries_line(), None);
        p.retried();
        p.retried();
        for k in [
            ErrorKind::Connection,
            ErrorKind::Timeout,
            ErrorKind::Server,
            ErrorKind::Server,
            ErrorKind::RateLimited,
            ErrorKind::BadRequest,
        ] {
            p.attempt_failed(k);
        }
        assert_eq!(
            p.inner.retries_line().as_deref(),
            Some("2 retries (1 connection, 1 timeout, 2 5xx, 1 429)")
        );
    }
}
