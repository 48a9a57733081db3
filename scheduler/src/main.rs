//! `slotq-scheduler [run|migrate]`.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    slotq_runtime::process::service_main(
        slotq_runtime::config::Role::Scheduler,
        "slotq-scheduler",
        "expire unpaid holds, delete published outbox events after their retention, re-check schedule conflicts",
        "shutting down after the current sweep",
        |config, shutdown| {
            slotq_scheduler::run(
                config,
                shutdown,
                |addr| tracing::info!(%addr, "admin listening"),
            )
        },
    )
    .await;
}
