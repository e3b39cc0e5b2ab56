//! Exit codes and the one-line error the command prints.

use std::fmt;
use std::process::ExitCode;

/// How a command ended. Scripts can rely on these numbers; the README lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Success (for `watch`, `register --keep` and `sync`: ended by Ctrl-C or SIGTERM).
    Ok,
    /// The operation ran and failed.
    Failure,
    /// Bad arguments, registry URL or configuration (clap uses 2 for usage errors too).
    Usage,
    /// The instance or service does not exist.
    NotFound,
    /// The registry, or the service called, could not be reached in time.
    Unavailable,
    /// `health`: at least one instance failed its probe.
    Unhealthy,
}

impl Exit {
    /// The process exit status.
    #[must_use]
    pub fn code(self) -> u8 {
        match self {
            Exit::Ok => 0,
            Exit::Failure => 1,
            Exit::Usage => 2,
            Exit::NotFound => 3,
            Exit::Unavailable => 4,
            Exit::Unhealthy => 5,
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        ExitCode::from(exit.code())
    }
}

/// An error the command reports on one line (`waypost: error: …`) before exiting with
/// [`CliError::exit`].
#[derive(Debug)]
pub struct CliError {
    /// The exit status.
    pub exit: Exit,
    /// What went wrong and why, on one line, without secrets.
    pub message: String,
}

impl CliError {
    /// An error with the given exit status.
    pub fn new(exit: Exit, message: impl Into<String>) -> Self {
        CliError {
            exit,
            message: message.into(),
        }
    }

    /// A usage error (exit 2).
    pub fn usage(message: impl Into<String>) -> Self {
        CliError::new(Exit::Usage, message)
    }

    /// Prefixes the message with what was being done: `listing services: <cause>`.
    #[must_use]
    pub fn context(mut self, what: impl fmt::Display) -> Self {
        self.message = format!("{what}: {}", self.message);
        self
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // One line, whatever the cause carried.
        for (i, line) in self.message.lines().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            f.write_str(line.trim_end())?;
        }
        Ok(())
    }
}

impl std::error::Error for CliError {}

impl From<waypost::Error> for CliError {
    fn from(err: waypost::Error) -> Self {
        use waypost::Error as E;
        let exit = match &err {
            E::NotFound(_) | E::ServiceNotFound(_) => Exit::NotFound,
            E::InvalidInstance(_) | E::InvalidConfig(_) => Exit::Usage,
            E::Timeout { .. } | E::Unavailable(_) => Exit::Unavailable,
            _ if err.is_retryable() => Exit::Unavailable,
            _ => Exit::Failure,
        };
        CliError::new(exit, err.to_string())
    }
}

/// What every command returns.
pub type CliResult<T = Exit> = std::result::Result<T, CliError>;
