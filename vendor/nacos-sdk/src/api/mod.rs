pub mod constants;
pub mod error;
pub mod props;

/// Plugin define.
pub mod plugin;

/// Api of Config
#[cfg(feature = "config")]
pub mod config;

/// Api of Naming
#[cfg(feature = "naming")]
pub mod naming;
