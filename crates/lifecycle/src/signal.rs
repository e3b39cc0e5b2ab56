//! SIGTERM and Ctrl-C (SIGINT) as stop requests.
//!
//! The handlers are installed when [`Announcer::serve`](crate::Announcer::serve) starts and stay
//! for the life of the process (tokio's signal handling cannot be uninstalled): from then on,
//! these signals no longer end the process by themselves; the announcer does.

use waypost_core_types::{Error, Result};

/// The process's stop signals, listened to from creation on (none is missed between two
/// requests).
pub(crate) struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Signals {
    pub(crate) fn new() -> Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let listen = |kind: SignalKind, name: &str| {
                signal(kind).map_err(|e| {
                    Error::InvalidConfig(format!("lifecycle: cannot listen for {name}: {e}"))
                })
            };
            Ok(Signals {
                term: listen(SignalKind::terminate(), "SIGTERM")?,
                int: listen(SignalKind::interrupt(), "SIGINT")?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Signals {})
        }
    }

    /// The next signal, by name.
    pub(crate) async fn next(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.term.recv() => "SIGTERM",
                _ = self.int.recv() => "SIGINT",
            }
        }
        #[cfg(not(unix))]
        {
            match tokio::signal::ctrl_c().await {
                Ok(()) => "Ctrl-C",
                Err(_) => std::future::pending().await,
            }
        }
    }
}
