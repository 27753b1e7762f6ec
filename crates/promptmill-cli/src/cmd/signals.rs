//! Ctrl-C and SIGTERM for the commands that run for a while (`run`, `collect`).
//!
//! The handlers are installed first thing, before the job is read, so a signal in any phase
//! (loading, validating, sending, waiting for batches) is seen instead of killing the
//! process with nothing written (the default action of both signals). The first signal is
//! a request to stop, which each phase honours its own way: the live run stops sending,
//! gives requests in flight a few seconds and writes the output and summary (exit 3);
//! batch waiting stops at once (exit 4, the batches keep running on the server). A second
//! signal quits at once (exit 3): the journal is consistent after every record.

use tokio_util::sync::CancellationToken;

use super::exit;

/// A stop requested by Ctrl-C or SIGTERM; cheap to clone, every phase holds one.
#[derive(Debug, Clone, Default)]
pub struct Interrupt {
    first: CancellationToken,
}

impl Interrupt {
    /// Installs the SIGINT and SIGTERM handlers; from now on the first signal sets this
    /// stop request and the second ends the process (exit 3). Needs the tokio runtime.
    pub fn install() -> std::io::Result<Interrupt> {
        let mut signals = Signals::new()?;
        let me = Interrupt::default();
        let first = me.first.clone();
        tokio::spawn(async move {
            signals.next().await;
            eprintln!("\ninterrupted: stopping; press Ctrl-C again to quit now");
            first.cancel();
            signals.next().await;
            eprintln!("\ninterrupted again: quitting now; run the same command to resume");
            std::process::exit(i32::from(exit::STOPPED));
        });
        tracing::debug!("signal handlers installed");
        Ok(me)
    }

    /// Whether a stop was requested.
    pub fn requested(&self) -> bool {
        self.first.is_cancelled()
    }

    /// Resolves once a stop is requested (at once if it was already).
    pub async fn wait(&self) {
        self.first.cancelled().await
    }
}

/// SIGINT and SIGTERM as one stream.
struct Signals {
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Signals {
                int: signal(SignalKind::interrupt())?,
                term: signal(SignalKind::terminate())?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Signals {})
        }
    }

    /// The next signal; never resolves once the streams have ended.
    async fn next(&mut self) {
        #[cfg(unix)]
        {
            let got = tokio::select! {
                s = self.int.recv() => s,
                s = self.term.recv() => s,
            };
            if got.is_none() {
                std::future::pending::<()>().await;
            }
        }
        #[cfg(not(unix))]
        {
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}
