//! Admission in groups: one Redis call for the submissions that arrive while the previous
//! call is in flight.
//!
//! Every submission ends in one admission call (`FastPath::admit_many`): idempotency, the
//! availability pre-check, the `queued` status and the job — an atomic script when a request
//! of the group has an Idempotency-Key, a pre-check read and a `MULTI` otherwise. One task
//! sends those calls,
//! one at a time; whatever queued up meanwhile (at most [`ADMIT_MAX`]) goes into the next
//! call, and the requests it admits become one job (`queue::HoldTask`). Nothing waits for a
//! group to fill: an idle ingress sends each submission at once, alone, so latency at low load
//! is what it was, and under load the Redis calls and the jobs (and apalis' commands per job)
//! are shared.

use slotq_redis::fast_path::{Admission, AdmitItem, FastPath};
use slotq_redis::queue::{ADMIT_MAX, HoldQueue};
use slotq_runtime::tasks::Tasks;
use tokio::sync::{mpsc, oneshot};

struct Waiting {
    item: AdmitItem,
    answer: oneshot::Sender<Result<Admission, String>>,
}

/// Hands submissions to the admission task.
#[derive(Clone)]
pub struct Admitter {
    tx: mpsc::Sender<Waiting>,
}

impl Admitter {
    /// Starts the admission task, a critical one of `tasks` (it owns the submissions waiting
    /// for it: should it die, no submission could be admitted, so the process stops). It ends
    /// when the last `Admitter` clone is dropped, after answering everything handed to it.
    pub fn start(fast: FastPath, queue: HoldQueue, tasks: &Tasks) -> Self {
        let (tx, mut rx) = mpsc::channel::<Waiting>(ADMIT_MAX * 64);
        tasks.spawn_critical("admitter", async move {
            let mut group = Vec::with_capacity(ADMIT_MAX);
            while let Some(first) = rx.recv().await {
                group.push(first);
                while group.len() < ADMIT_MAX {
                    match rx.try_recv() {
                        Ok(w) => group.push(w),
                        Err(_) => break,
                    }
                }
                let items: Vec<&AdmitItem> = group.iter().map(|w| &w.item).collect();
                match fast.admit_many(&items, &queue).await {
                    Ok(verdicts) => {
                        for (w, v) in group.drain(..).zip(verdicts) {
                            let _ = w.answer.send(Ok(v));
                        }
                    }
                    Err(e) => {
                        let e = e.to_string();
                        for w in group.drain(..) {
                            let _ = w.answer.send(Err(e.clone()));
                        }
                    }
                }
            }
        });
        Self { tx }
    }

    /// Admits one submission (with whatever else is waiting); `Err` when the Redis call
    /// failed for its whole group (the client may retry; with an Idempotency-Key a retry is
    /// answered like the original should the call have gone through after all).
    pub async fn admit(&self, item: AdmitItem) -> Result<Admission, String> {
        let (answer, rx) = oneshot::channel();
        self.tx
            .send(Waiting { item, answer })
            .await
            .map_err(|_| "the admission task has stopped".to_string())?;
        rx.await
            .map_err(|_| "the admission task dropped the request".to_string())?
    }
}
