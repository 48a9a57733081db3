//! Wakes long-polls: one Redis pub/sub subscription per ingress process listens to the
//! workers' "decided" announcements and fans them out in-process. Announcements can be lost
//! (reconnects); waiters therefore also re-check on a timer.

use std::time::Duration;

use futures::StreamExt;
use slotq_runtime::tasks::Tasks;
use tokio::sync::broadcast;
use uuid::Uuid;

/// Sender side of decided request ids, fed by [`listen`].
pub type Decided = broadcast::Sender<Uuid>;

/// Subscribes to `channel` and forwards every announced id, reconnecting forever (a task of
/// `tasks`, restarted should it panic).
pub fn listen(client: redis::Client, channel: String, tx: Decided, tasks: &Tasks) {
    let shutdown = tasks.shutdown().clone();
    tasks.spawn_restarting("decisions listener", move || {
        let (client, channel, tx) = (client.clone(), channel.clone(), tx.clone());
        let shutdown = shutdown.clone();
        let listen = async move {
            loop {
                match subscribe(&client, &channel, &tx).await {
                    Ok(()) => tracing::warn!("decision subscription ended; reconnecting"),
                    Err(e) => {
                        tracing::warn!(error = %e, "decision subscription failed; reconnecting")
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        };
        async move {
            tokio::select! {
                () = listen => {}
                () = shutdown.wait() => {}
            }
        }
    });
}

async fn subscribe(client: &redis::Client, channel: &str, tx: &Decided) -> redis::RedisResult<()> {
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(channel).await?;
    let mut messages = pubsub.on_message();
    while let Some(msg) = messages.next().await {
        let payload: String = msg.get_payload()?;
        for id in payload.split(',').filter_map(|s| s.parse().ok()) {
            // No receivers is fine: nobody is waiting.
            let _ = tx.send(id);
        }
    }
    Ok(())
}
