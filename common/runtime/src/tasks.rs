//! Supervised background tasks (docs/adr/0003-supervised-tasks.md).
//!
//! Every long-running task of a process starts here, never with a bare `tokio::spawn`. A task
//! that returns or panics while the process is not stopping is a fault: it is logged and
//! counted (`slotq_task_failures_total{task}`), then
//! - [`Tasks::spawn_restarting`]: started again after a backoff (0.5 s doubling to 30 s), for
//!   loops that rebuild what they need (a listener, a poller);
//! - [`Tasks::spawn_critical`]: the process stops with exit status 1, so the orchestrator
//!   starts a fresh one, for tasks that own state no one else can rebuild (the admitter's
//!   queue of waiting submissions, a committer's share of the batches). A process that goes
//!   on half-alive (every submission answering 503) is worse than a restart.
//!
//! Shutdown cancels the process's [`Shutdown`] and [`Tasks::wait`] waits for every task.

use std::{
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::FutureExt;
use prometheus::IntCounterVec;
use tokio_util::task::TaskTracker;

use crate::shutdown::Shutdown;

/// The supervised tasks of one process. Cheap to clone.
#[derive(Clone)]
pub struct Tasks {
    /// Every task started here, so shutdown can wait for them.
    tracker: TaskTracker,
    /// The process's stop flag: watched by the tasks, fired by a fatal failure.
    shutdown: Shutdown,
    /// `slotq_task_failures_total{task}`.
    failures: IntCounterVec,
    /// The first fatal failure, which makes the process exit 1.
    fault: Arc<Mutex<Option<String>>>,
}

impl Tasks {
    /// Supervises tasks until `shutdown`, counting failures in `failures`.
    pub fn new(shutdown: Shutdown, failures: IntCounterVec) -> Self {
        Tasks {
            tracker: TaskTracker::new(),
            shutdown,
            failures,
            fault: Arc::new(Mutex::new(None)),
        }
    }

    /// The stop flag the tasks watch.
    pub fn shutdown(&self) -> &Shutdown {
        &self.shutdown
    }

    /// Starts `make()` as the task `name`; if it ends or panics before shutdown, it is counted
    /// and started again (`make` is called anew) after a backoff: 0.5 s, doubling to 30 s.
    pub fn spawn_restarting<F, Fut>(&self, name: &'static str, make: F)
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let this = self.clone();
        self.tracker.spawn(async move {
            let mut backoff = Duration::from_millis(500);
            loop {
                let ended = this.supervise(name, make()).await;
                let Some(how) = ended else { return };
                tracing::error!(
                    task = name,
                    "background task {how}; restarting in {backoff:?}"
                );
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = this.shutdown.clone().wait() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        });
    }

    /// Starts `task` as the critical task `name`: if it ends or panics before shutdown, it is
    /// counted and the process stops (exit status 1).
    pub fn spawn_critical<Fut>(&self, name: &'static str, task: Fut)
    where
        Fut: Future<Output = ()> + Send + 'static,
    {
        let this = self.clone();
        self.tracker.spawn(async move {
            if let Some(how) = this.supervise(name, task).await {
                tracing::error!(
                    task = name,
                    "critical background task {how}; stopping the process"
                );
                this.fail(format!("the task {name} {how}"));
            }
        });
    }

    /// Runs `task`; `None` when it ended because of shutdown, else how it ended (counted).
    async fn supervise(
        &self,
        name: &'static str,
        task: impl Future<Output = ()>,
    ) -> Option<String> {
        // A panic is caught here (not by the runtime), so it is handled as an end.
        let ended = std::panic::AssertUnwindSafe(task).catch_unwind().await;
        if self.shutdown.is_stopping() {
            return None;
        }
        self.failures.with_label_values(&[name]).inc();
        Some(match ended {
            Ok(()) => "ended".to_owned(),
            Err(panic) => format!("panicked: {}", panic_message(&panic)),
        })
    }

    /// Records a fatal fault (the first one wins) and stops the process.
    pub fn fail(&self, why: String) {
        if let Ok(mut fault) = self.fault.lock() {
            fault.get_or_insert(why);
        }
        self.shutdown.stop();
    }

    /// The fatal fault, if one stopped the process.
    pub fn fault(&self) -> Option<String> {
        self.fault.lock().ok().and_then(|f| f.clone())
    }

    /// Waits until every task has ended (after shutdown), then reports a fatal fault as an
    /// error so `main` exits 1.
    pub async fn wait(&self) -> anyhow::Result<()> {
        self.tracker.close();
        self.tracker.wait().await;
        match self.fault() {
            Some(why) => Err(anyhow::anyhow!(why)),
            None => Ok(()),
        }
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-text panic".to_owned())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::shutdown;

    fn counter() -> IntCounterVec {
        IntCounterVec::new(prometheus::Opts::new("t", "t"), &["task"]).unwrap()
    }

    #[tokio::test]
    async fn a_task_that_panics_is_counted_and_restarted_until_shutdown() {
        let (trigger, stop) = shutdown::channel();
        let tasks = Tasks::new(stop, counter());
        let runs = Arc::new(AtomicU32::new(0));
        let r = runs.clone();
        tasks.spawn_restarting("flaky", move || {
            let r = r.clone();
            async move {
                if r.fetch_add(1, Ordering::SeqCst) < 2 {
                    panic!("boom");
                }
                std::future::pending::<()>().await;
            }
        });
        // Backoffs of 0.5 s and 1 s.
        for _ in 0..100 {
            if runs.load(Ordering::SeqCst) >= 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(runs.load(Ordering::SeqCst), 3, "two panics, two restarts");
        assert_eq!(tasks.failures.with_label_values(&["flaky"]).get(), 2);
        trigger.fire();
        // A task still running at shutdown must end by itself; this one never does, so
        // `wait` is not called here. No fault was recorded.
        assert!(tasks.fault().is_none());
    }

    #[tokio::test]
    async fn a_critical_task_that_ends_stops_the_process_with_an_error() {
        let (_trigger, stop) = shutdown::channel();
        let tasks = Tasks::new(stop.clone(), counter());
        tasks.spawn_critical("admitter", async {});
        tokio::time::timeout(Duration::from_secs(5), stop.clone().wait())
            .await
            .expect("the process is told to stop");
        let err = tasks.wait().await.unwrap_err();
        assert!(err.to_string().contains("admitter"), "{err}");
    }

    #[tokio::test]
    async fn a_task_ending_because_of_shutdown_is_no_fault() {
        let (trigger, stop) = shutdown::channel();
        let tasks = Tasks::new(stop, counter());
        let s = tasks.shutdown().clone();
        tasks.spawn_critical("loop", s.wait());
        trigger.fire();
        tasks.wait().await.unwrap();
        assert_eq!(tasks.failures.with_label_values(&["loop"]).get(), 0);
    }
}
