//! What every subcommand gets: the registry URL, the printer and the time limit.

use std::sync::Arc;
use std::time::Duration;

use waypost::{RegistryConfig, ServiceRegistry};

use crate::error::{CliError, CliResult, Exit};
use crate::output::Printer;

/// The global options, resolved.
#[derive(Debug, Clone)]
pub struct Context {
    /// `--registry` or `WAYPOST_REGISTRY` (may hold a password: never print it).
    pub registry_url: Option<String>,
    /// How to print.
    pub printer: Printer,
    /// `--timeout`: the limit for connecting and for each registry call.
    pub timeout: Duration,
}

impl Context {
    /// The registry config from `--registry`/`WAYPOST_REGISTRY`.
    ///
    /// # Errors
    /// Usage (exit 2) when neither is given or the URL is malformed.
    pub fn registry_config(&self) -> CliResult<RegistryConfig> {
        let url = self.registry_url.as_deref().ok_or_else(|| {
            CliError::usage("no registry: pass --registry URL or set WAYPOST_REGISTRY")
        })?;
        Ok(RegistryConfig::from_url(url)?)
    }

    /// Connects to the registry within `--timeout`.
    ///
    /// # Errors
    /// Usage for a bad URL; Unavailable (exit 4) when the registry cannot be reached in time.
    pub async fn open_registry(&self) -> CliResult<Arc<dyn ServiceRegistry>> {
        let config = self.registry_config()?;
        let kind = config.kind();
        match tokio::time::timeout(self.timeout, waypost::new_service_registry(&config)).await {
            Ok(Ok(registry)) => Ok(registry),
            Ok(Err(err)) => Err(CliError::from(err).context(format!("connecting to {kind}"))),
            Err(_) => Err(CliError::new(
                Exit::Unavailable,
                format!("connecting to {kind}: no answer within {:?}", self.timeout),
            )),
        }
    }
}
