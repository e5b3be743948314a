//! What the connection writes: pushes and broadcasts from the delivery
//! hub, and the frames queued by the handlers, in batches.

use super::*;

impl Connection {
    pub(super) fn on_outbound(
        &mut self,
        first: Outbound,
        rx: Option<&mut mpsc::Receiver<Outbound>>,
    ) -> Step {
        self.write_outbound(first);
        if let Some(rx) = rx {
            for _ in 1..WRITE_BATCH {
                match rx.try_recv() {
                    Ok(item) => self.write_outbound(item),
                    Err(_) => break,
                }
            }
        }
        Ok(())
    }

    pub(super) fn write_outbound(&mut self, item: Outbound) {
        match item {
            Outbound::Event(ev) => self.write_event(&ev),
            Outbound::Broadcast(b) => self.write_broadcast(&b),
        }
    }

    pub(super) fn write_event(&mut self, ev: &UserEvent) {
        let Some(s) = self.session.as_ref() else {
            return;
        };
        let user_id = s.user_id;
        let subs = self.subscriptions(|t| *t == SubscribeTarget::Messages);
        let message_id = ev.message_id.to_string();
        for (sub_id, mode) in subs {
            let ack = self.remember(
                &sub_id,
                mode,
                &message_id,
                UnackedKind::Message {
                    id: ev.message_id,
                    inbox_seq: ev.inbox_seq,
                },
            );
            self.outgoing.push(frames::json_message(
                destination::MESSAGES,
                &sub_id,
                &message_id,
                ack.as_deref(),
                ev.body.clone(),
            ));
            metrics::counter!("herald_messages_delivered_total").increment(1);
            if !ev.redelivery {
                metrics::histogram!("herald_store_to_push_seconds")
                    .record(ev.stored_at.elapsed().as_secs_f64());
            }
            if ev.pending {
                match mode {
                    // Written to the connection counts as received.
                    AckMode::Auto => self.services.acks.ack_soon(
                        user_id,
                        ev.message_id,
                        ev.inbox_seq,
                        InboxStatus::Delivered,
                    ),
                    // A redelivery's clock runs on the node that pushed
                    // the message first (maybe another one).
                    _ if !ev.redelivery => self.services.redelivery.track(user_id, ev.message_id),
                    _ => {}
                }
            }
        }
    }

    pub(super) fn write_broadcast(&mut self, b: &Broadcast) {
        let subs = self.subscriptions(
            |t| matches!(t, SubscribeTarget::Topic(topic) if *topic.destination == *b.destination),
        );
        for (sub_id, mode) in subs {
            let message_id = self.next_id();
            let mut f = Frame::new(Command::Message).with_header("destination", &*b.destination);
            for (k, v) in &b.headers {
                if !matches!(k.as_str(), "subscription" | "message-id" | "ack") {
                    f.push_header(k.clone(), v.clone());
                }
            }
            f.push_header("subscription", sub_id.clone());
            f.push_header("message-id", message_id.clone());
            if let Some(ack) = self.remember(&sub_id, mode, &message_id, UnackedKind::Other) {
                f.push_header("ack", ack);
            }
            self.outgoing.push(f.with_body(b.body.clone()));
        }
    }

    pub(super) async fn flush(&mut self) -> Result<(), poem::Error> {
        if self.outgoing.is_empty() && !self.heartbeat_due {
            return Ok(());
        }
        let frames = std::mem::take(&mut self.outgoing);
        let heartbeat = std::mem::take(&mut self.heartbeat_due) && frames.is_empty();
        let result = self.write_frames(frames, heartbeat).await;
        self.last_write = Instant::now();
        result.map_err(|e| {
            poem::Error::from_string(e.to_string(), poem::http::StatusCode::BAD_GATEWAY)
        })
    }

    pub(super) async fn write_frames(
        &mut self,
        frames: Vec<Frame>,
        heartbeat: bool,
    ) -> Result<(), poem::Error> {
        if heartbeat {
            let msg = if self.binary {
                Message::Binary(b"\n".to_vec())
            } else {
                Message::Text("\n".into())
            };
            self.sink.send(msg).await.map_err(to_poem)?;
            return Ok(());
        }
        for f in &frames {
            let bytes = encode_to_vec(f, self.version);
            let msg = if self.binary {
                Message::Binary(bytes)
            } else {
                match String::from_utf8(bytes) {
                    Ok(text) => Message::Text(text),
                    Err(e) => Message::Binary(e.into_bytes()),
                }
            };
            self.sink.feed(msg).await.map_err(to_poem)?;
        }
        self.sink.flush().await.map_err(to_poem)
    }
}

pub(super) fn to_poem(e: impl std::fmt::Display) -> poem::Error {
    poem::Error::from_string(e.to_string(), poem::http::StatusCode::BAD_GATEWAY)
}
