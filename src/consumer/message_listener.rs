//! The message-sent listener: pushes each stored message to every online
//! device of every recipient, on whichever node holds it, in topic (and
//! so `seq`) order.

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::service::relay::{MessageSent, Relay};

pub async fn run(mut events: mpsc::Receiver<Vec<MessageSent>>, relay: Arc<Relay>) {
    while let Some(batch) = events.recv().await {
        relay.push_messages(&batch).await;
    }
    tracing::info!("message listener stopped");
}
