//! Choosing the registry from the environment, for twelve-factor services.

use waypost_core_types::{Error, Result};

use crate::{RegistryBuilder, RegistryConfig};

/// The environment variable that names the registry: a registry URL
/// (`etcd://user:pass@10.0.0.1:2379/laravel-go/services`, `memory://`, …).
pub const REGISTRY_ENV: &str = "WAYPOST_REGISTRY";

impl RegistryConfig {
    /// The registry named by the environment variable [`REGISTRY_ENV`] (`WAYPOST_REGISTRY`), a
    /// registry URL (see [`from_url`](Self::from_url)).
    ///
    /// An unset or empty variable is an error, not the in-memory registry: a service meant to
    /// join a fleet must not start alone because a deployment forgot the variable. Say
    /// `WAYPOST_REGISTRY=memory://` to mean the in-memory registry.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when the variable is unset, empty or not Unicode, or what
    /// [`from_url`](Self::from_url) says of the URL (never quoting its password).
    pub fn from_env() -> Result<Self> {
        Self::from_env_value(std::env::var(REGISTRY_ENV))
    }

    pub(crate) fn from_env_value(
        value: std::result::Result<String, std::env::VarError>,
    ) -> Result<Self> {
        match value {
            Ok(url) if !url.trim().is_empty() => Self::from_url(url.trim()),
            Ok(_) | Err(std::env::VarError::NotPresent) => Err(Error::InvalidConfig(format!(
                "{REGISTRY_ENV} is not set; set it to a registry URL such as \
                 etcd://127.0.0.1:2379 or memory://"
            ))),
            Err(std::env::VarError::NotUnicode(_)) => Err(Error::InvalidConfig(format!(
                "{REGISTRY_ENV} is not valid Unicode"
            ))),
        }
    }
}

impl RegistryBuilder {
    /// Starts from the registry named by `WAYPOST_REGISTRY` (see
    /// [`RegistryConfig::from_env`]); a missing or malformed value fails at
    /// [`build`](Self::build).
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> waypost::Result<()> {
    /// // WAYPOST_REGISTRY=etcd://10.0.0.1:2379/laravel-go/services
    /// let registry = waypost::RegistryBuilder::from_env().build().await?;
    /// # Ok(()) }
    /// ```
    pub fn from_env() -> Self {
        match RegistryConfig::from_env() {
            Ok(config) => Self::from_config(config),
            Err(e) => Self::new().fail(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::env::VarError;

    #[test]
    fn unset_or_empty_is_an_error_not_a_silent_default() {
        for value in [
            Err(VarError::NotPresent),
            Ok(String::new()),
            Ok("  ".into()),
        ] {
            let err = RegistryConfig::from_env_value(value).unwrap_err();
            assert!(err.to_string().contains(REGISTRY_ENV), "{err}");
        }
    }

    #[test]
    fn a_url_is_parsed_and_its_password_never_quoted() {
        let config =
            RegistryConfig::from_env_value(Ok(" memory://?default_ttl=30s ".into())).unwrap();
        assert_eq!(config.kind(), crate::RegistryType::Memory);
        let err =
            RegistryConfig::from_env_value(Ok("etdc://admin:hunter2@h:2379".into())).unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }
}
