//! Shutdown signalling: SIGTERM or Ctrl-C fires the [`Trigger`]; components hold a
//! [`Shutdown`] they can await or poll. A fatal task failure stops the process the same way
//! ([`Shutdown::stop`], from [`crate::tasks`]).

use tokio_util::sync::CancellationToken;

/// A cloneable "time to stop" flag.
#[derive(Clone)]
pub struct Shutdown {
    token: CancellationToken,
}

/// The trigger of a [`Shutdown`], held by whoever handles the signals.
pub struct Trigger {
    token: CancellationToken,
}

/// A new flag and its trigger.
pub fn channel() -> (Trigger, Shutdown) {
    let token = CancellationToken::new();
    (
        Trigger {
            token: token.clone(),
        },
        Shutdown { token },
    )
}

impl Trigger {
    /// Asks everyone holding the flag to stop.
    pub fn fire(&self) {
        self.token.cancel();
    }
}

impl Shutdown {
    /// Resolves once stop was asked.
    pub async fn wait(self) {
        self.token.cancelled_owned().await;
    }

    /// Whether stop was asked.
    pub fn is_stopping(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Asks the whole process to stop (a fatal fault; normally the [`Trigger`] does).
    pub fn stop(&self) {
        self.token.cancel();
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
