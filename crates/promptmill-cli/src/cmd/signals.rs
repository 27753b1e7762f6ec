//! Ctrl-C and SIGTERM for the commands that run for a while (`run`, `collect`).
//!
//! The handlers are installed first thing, before the job is read, so a signal in any phase
//! (loading, validating, sending, waiting for batches) is seen instead of killing the
//! process with nothing written (the default action of both signals). The first signal is
//! a request to stop, which each phase honours its own way: the live run stops sending,
//! gives requests in flight a few seconds and writes the output and summary (exit 3);
//! batch waiting stops at once (exit 4, the batches keep running on the server). A second
//! signal quits at once (exit 3): the journal is consistent after every record.

use promptmill::drive::Interrupt;

use super::exit;

/// Installs the SIGINT and SIGTERM handlers and returns the stop request they set: from now
/// on the first signal sets it and the second ends the process (exit 3). Needs the tokio
/// runtime.
pub fn install() -> anyhow::Result<Interrupt> {
    use anyhow::Context as _;
    let mut signals = Signals::new().context("cannot install the Ctrl-C/SIGTERM handlers")?;
    let me = Interrupt::default();
    let first = me.clone();
    tokio::spawn(async move {
        signals.next().await;
        eprintln!("\ninterrupted: stopping; press Ctrl-C again to quit now");
        first.request();
        signals.next().await;
        eprintln!("\ninterrupted again: quitting now; run the same command to resume");
        std::process::exit(i32::from(exit::STOPPED));
    });
    tracing::debug!("signal handlers installed");
    Ok(me)
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
