//! `slotq-workers [run|migrate]`.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    slotq_runtime::process::service_main(
        slotq_runtime::config::Role::Workers,
        "slotq-workers",
        "decide queued holds in batches, relay the outbox to Kafka, dispatch webhooks",
        "shutting down: finishing claimed jobs",
        |config, shutdown| {
            slotq_workers::run(
                config,
                shutdown,
                |addr| tracing::info!(%addr, "admin listening"),
            )
        },
    )
    .await;
}
