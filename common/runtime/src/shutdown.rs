//! Shutdown signalling: SIGTERM or Ctrl-C resolves [`signal`]; components receive a
//! [`Shutdown`] handle they can await or poll.

use tokio::sync::watch;

/// A cloneable "time to stop" flag.
#[derive(Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

/// The trigger of a [`Shutdown`].
pub struct Trigger {
    tx: watch::Sender<bool>,
}

/// A new flag and its trigger.
pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (Trigger { tx }, Shutdown { rx })
}

impl Trigger {
    /// Asks everyone holding the flag to stop.
    pub fn fire(&self) {
        let _ = self.tx.send(true);
    }
}

impl Shutdown {
    /// Resolves once stop was asked (or the trigger is gone).
    pub async fn wait(mut self) {
        let _ = self.rx.wait_for(|stop| *stop).await;
    }

    /// Whether stop was asked.
    pub fn is_stopping(&self) -> bool {
        *self.rx.borrow()
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
