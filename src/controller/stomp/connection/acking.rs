//! Acks: STOMP ACK and NACK of pushed messages, and `/app/ack`.

use super::*;

impl Connection {
    pub(super) async fn on_app_ack(&mut self, frame: &Frame) -> Step {
        let user_id = self.session()?.user_id;
        let parsed = crate::model::dto::from_stomp_body::<StompAckReq>(&frame.body)
            .map_err(|e| AppError::invalid(format!("malformed ack: {e}")))
            .and_then(ack_command);
        let command = match parsed {
            Ok(c) => c,
            Err(e) => {
                self.reject(e, None);
                self.receipt_for(frame);
                return Ok(());
            }
        };
        if let AckCommand::Messages { message_ids, .. } = &command {
            if let Some(s) = self.session.as_mut() {
                s.unacked.retain(
                    |_, u| !matches!(u.kind, UnackedKind::Message { id, .. } if message_ids.contains(&id)),
                );
            }
        }
        // Applied before answering, so a REST read after the RECEIPT sees it.
        if let Err(e) = self.services.acks.apply(user_id, command).await {
            self.reject(e, None);
        }
        // Answered either way: a client waiting on the receipt must not hang.
        self.receipt_for(frame);
        Ok(())
    }

    /// Handles ACK/NACK bookkeeping; returns the (message id, inboxSeq)
    /// entries a positive ACK acknowledged (NACKs are handled here).
    pub(super) fn on_ack(
        &mut self,
        frame: &Frame,
        positive: bool,
    ) -> Result<Vec<(u64, i64)>, Fatal> {
        let id = frame
            .header("id")
            .or_else(|| frame.header("message-id"))
            .ok_or_else(|| Fatal::new("ACK and NACK need an id header", Some(frame)))?
            .to_string();
        let s = self.session()?;
        let user_id = s.user_id;
        let conn_id = s.conn_id;
        let Some(entry) = s.unacked.remove(&id) else {
            // Unknown or already acked: acks are idempotent.
            return Ok(Vec::new());
        };
        let mut acked = vec![entry.kind];
        let cumulative = s
            .subs
            .get(&entry.subscription)
            .is_some_and(|sub| sub.ack == AckMode::Client);
        if cumulative && positive {
            let earlier: Vec<String> = s
                .unacked
                .iter()
                .filter(|(_, u)| u.subscription == entry.subscription && u.order < entry.order)
                .map(|(k, _)| k.clone())
                .collect();
            for k in earlier {
                if let Some(u) = s.unacked.remove(&k) {
                    acked.push(u.kind);
                }
            }
        }
        let entries: Vec<(u64, i64)> = acked
            .into_iter()
            .filter_map(|k| match k {
                UnackedKind::Message { id, inbox_seq } => Some((id, inbox_seq)),
                UnackedKind::Other => None,
            })
            .collect();
        if positive {
            return Ok(entries);
        }
        for (mid, _) in entries {
            self.nack(user_id, conn_id, mid);
        }
        Ok(Vec::new())
    }

    /// Marks acked messages `delivered`: batched in the background, or
    /// applied before returning when the client waits for a RECEIPT.
    pub(super) async fn ack_messages(&mut self, entries: Vec<(u64, i64)>, wait: bool) {
        let Some(user_id) = self.session.as_ref().map(|s| s.user_id) else {
            return;
        };
        if entries.is_empty() {
            return;
        }
        if !wait {
            for (mid, inbox_seq) in entries {
                self.services
                    .acks
                    .ack_soon(user_id, mid, inbox_seq, InboxStatus::Delivered);
            }
            return;
        }
        let command = AckCommand::Entries {
            entries,
            status: InboxStatus::Delivered,
        };
        if let Err(e) = self.services.acks.apply(user_id, command).await {
            tracing::warn!(error = %e, "ack with receipt was not applied");
        }
    }

    /// A NACK asks for an immediate redelivery to this connection.
    pub(super) fn nack(&self, user_id: u64, conn_id: u64, message_id: u64) {
        match self.services.redelivery.nack(user_id, message_id) {
            Verdict::Redeliver => {
                let messages = self.services.messages.clone();
                tokio::spawn(async move {
                    if let Err(e) = messages
                        .redeliver(user_id, &[message_id], Some(conn_id))
                        .await
                    {
                        tracing::warn!(error = %e, "nack redelivery failed");
                    }
                });
            }
            Verdict::DeadLetter => {
                metrics::counter!("herald_messages_dead_lettered_total").increment(1)
            }
        }
    }

    // ----- transactions -----
}

pub(super) fn ack_command(req: StompAckReq) -> AppResult<AckCommand> {
    // The fields were checked when the body was parsed (`model::wire`).
    let status = req.ack_type.status();
    match (req.message_ids, req.session_id) {
        (Some(ids), None) => Ok(AckCommand::Messages {
            message_ids: ids.ids().to_vec(),
            status,
        }),
        (None, Some(sid)) if status == InboxStatus::Read => Ok(AckCommand::SessionRead {
            session_id: sid.get(),
            up_to_seq: req.up_to_seq.map(|s| s.get()),
        }),
        (None, Some(_)) => Err(AppError::invalid("a session ack must have ackType read")),
        _ => Err(AppError::invalid("give either messageIds or sessionId")),
    }
}
