//! The built-in mock API behind `--mock`: started on 127.0.0.1 for one command and stopped
//! after it. It comes from the `promptmill-mock` crate through the `mock` feature (on by
//! default); a build without it refuses `--mock` and has no `mock-server` command.

/// `--mock` and how the mock behaves (`--mock-*`), for `run`.
#[derive(Debug, clap::Args)]
pub struct MockArgs {
    /// Start the built-in mock API on 127.0.0.1 and send everything there (no key, no cost).
    #[arg(long)]
    pub mock: bool,
    /// Mock API: latency per answer in milliseconds.
    #[arg(long, default_value_t = 20, value_name = "MS")]
    pub mock_latency_ms: u64,
    /// Mock API: fraction of requests answered with a 500 (0 to 1).
    #[arg(long, default_value_t = 0.0, value_name = "RATE", value_parser = promptmill::bounds::fail_rate)]
    pub mock_fail_rate: f64,
    /// Mock API: requests per minute it enforces.
    #[arg(long, value_name = "N")]
    pub mock_rpm: Option<u32>,
    /// Mock API: tokens per minute it enforces.
    #[arg(long, value_name = "N")]
    pub mock_tpm: Option<u32>,
}

impl MockArgs {
    /// How the mock is to behave.
    pub fn flags(&self) -> MockFlags {
        MockFlags {
            rpm: self.mock_rpm,
            tpm: self.mock_tpm,
            latency_ms: self.mock_latency_ms,
            fail_rate: self.mock_fail_rate,
        }
    }
}

/// How the mock behaves: the `--mock-*` flags.
#[derive(Debug, Clone, Copy, Default)]
#[cfg_attr(not(feature = "mock"), allow(dead_code))]
pub struct MockFlags {
    pub rpm: Option<u32>,
    pub tpm: Option<u32>,
    pub latency_ms: u64,
    pub fail_rate: f64,
}

/// A running mock API.
pub struct Mock {
    #[cfg(feature = "mock")]
    server: promptmill_mock::MockServer,
    /// Without the feature no mock can exist.
    #[cfg(not(feature = "mock"))]
    server: std::convert::Infallible,
}

impl Mock {
    /// Starts the mock on an ephemeral 127.0.0.1 port.
    #[cfg(feature = "mock")]
    pub async fn start(flags: MockFlags) -> anyhow::Result<Mock> {
        use anyhow::Context as _;
        let cfg = promptmill_mock::MockConfig {
            rpm: flags.rpm,
            tpm: flags.tpm,
            latency_ms: flags.latency_ms,
            fail_rate: flags.fail_rate,
            ..promptmill_mock::MockConfig::default()
        };
        let server = promptmill_mock::MockServer::start(cfg, ([127, 0, 0, 1], 0).into())
            .await
            .context("cannot start the mock API")?;
        Ok(Mock { server })
    }

    /// Without the `mock` feature there is no mock to start.
    #[cfg(not(feature = "mock"))]
    pub async fn start(_flags: MockFlags) -> anyhow::Result<Mock> {
        anyhow::bail!(
            "--mock: this promptmill was built without the mock API (cargo feature `mock`)"
        )
    }

    /// The base URL a job's `api.base_url` takes to send everything to the mock.
    pub fn base_url(&self) -> String {
        #[cfg(feature = "mock")]
        {
            self.server.base_url()
        }
        #[cfg(not(feature = "mock"))]
        {
            match self.server {}
        }
    }

    /// Stops the mock.
    pub async fn shutdown(self) {
        #[cfg(feature = "mock")]
        self.server.shutdown().await;
        #[cfg(not(feature = "mock"))]
        match self.server {}
    }
}

/// With `on`, starts the mock and points the job context at it; the caller hands the result
/// to [`detach`] once the driver is done.
pub async fn attach(
    ctx: &mut promptmill::drive::JobCtx,
    on: bool,
    flags: MockFlags,
) -> anyhow::Result<Option<Mock>> {
    if !on {
        return Ok(None);
    }
    let mock = Mock::start(flags).await.map_err(super::start_err)?;
    ctx.use_mock(mock.base_url());
    Ok(Some(mock))
}

/// Stops the mock [`attach`] started, if any.
pub async fn detach(mock: Option<Mock>) {
    if let Some(m) = mock {
        m.shutdown().await;
    }
}
