//! Progress while a job runs: an indicatif bar on a terminal, plain periodic lines otherwise
//! (cron logs want lines, not carriage returns).

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::types::Money;

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
    cost_pico: AtomicU64,
    started: Instant,
    plain: bool,
}

impl Progress {
    /// Progress over `total` rows; a bar when stderr is a terminal and `quiet` is off.
    pub fn new(total: u64, quiet: bool) -> Progress {
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
                cost_pico: AtomicU64::new(0),
                started: Instant::now(),
                plain: !tty && !quiet,
            }),
        }
    }

    /// Records a finished row.
    pub fn row_done(&self, ok: bool, cost: Money) {
        self.inner.done.fetch_add(1, Relaxed);
        if !ok {
            self.inner.failed.fetch_add(1, Relaxed);
        }
        let spent = self.inner.cost_pico.fetch_add(cost.0, Relaxed) + cost.0;
        self.bar.inc(1);
        let failed = self.inner.failed.load(Relaxed);
        if failed > 0 {
            self.bar
                .set_message(format!("· {failed} failed · {}", Money(spent)));
        } else {
            self.bar.set_message(format!("· {}", Money(spent)));
        }
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
                eprintln!(
                    "promptmill: {done}/{} rows, {} failed, {} spent, {:.0} rows/min",
                    inner.total,
                    inner.failed.load(Relaxed),
                    Money(inner.cost_pico.load(Relaxed)),
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
