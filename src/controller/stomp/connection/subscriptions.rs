//! SUBSCRIBE and UNSUBSCRIBE, and what each subscription remembers of the
//! pushes it has yet to see acked.

use super::*;

impl Connection {
    pub(super) async fn on_subscribe(&mut self, frame: &Frame) -> Step {
        let id = frame
            .header("id")
            .ok_or_else(|| Fatal::new("SUBSCRIBE needs an id header", Some(frame)))?
            .to_string();
        let dest = frame
            .header("destination")
            .ok_or_else(|| Fatal::new("SUBSCRIBE needs a destination header", Some(frame)))?;
        let target = destination::parse_subscribe(dest)
            .ok_or_else(|| Fatal::new(format!("unknown destination {dest}"), Some(frame)))?;
        let ack = match frame.header("ack").unwrap_or("auto") {
            "auto" => AckMode::Auto,
            "client" => AckMode::Client,
            "client-individual" => AckMode::ClientIndividual,
            other => return Err(Fatal::new(format!("unknown ack mode {other}"), Some(frame))),
        };
        let (user_id, conn_id) = {
            let s = self.session()?;
            if s.subs.contains_key(&id) {
                return Err(Fatal::new(
                    format!("subscription id {id} is in use"),
                    Some(frame),
                ));
            }
            (s.user_id, s.conn_id)
        };
        if let SubscribeTarget::Topic(topic) = &target {
            Self::authorize_topic(&self.services, user_id, topic, frame).await?;
            self.services
                .delivery
                .subscribe_topic(&topic.destination, user_id, conn_id);
        }
        self.session()?
            .subs
            .insert(id, Subscription { target, ack });
        Ok(())
    }

    /// Session topics are for the session's members only.
    pub(super) async fn authorize_topic(
        services: &Services,
        user_id: u64,
        topic: &TopicName,
        frame: &Frame,
    ) -> Step {
        if let Some(session_id) = topic.session {
            services
                .directory
                .member_session(user_id, session_id)
                .await
                .map_err(|e| Fatal::new(e.to_string(), Some(frame)))?;
        }
        Ok(())
    }

    pub(super) fn on_unsubscribe(&mut self, frame: &Frame) -> Step {
        let id = frame
            .header("id")
            .ok_or_else(|| Fatal::new("UNSUBSCRIBE needs an id header", Some(frame)))?;
        let s = self.session()?;
        // An unknown id (a client unsubscribing twice, say) changes nothing;
        // closing the connection for it would cost the client its session.
        let Some(sub) = s.subs.remove(id) else {
            return Ok(());
        };
        s.unacked.retain(|_, u| u.subscription != id);
        if let SubscribeTarget::Topic(topic) = sub.target {
            let still = s
                .subs
                .values()
                .any(|o| o.target == SubscribeTarget::Topic(topic.clone()));
            if !still {
                let conn_id = s.conn_id;
                self.services
                    .delivery
                    .unsubscribe_topic(&topic.destination, conn_id);
            }
        }
        Ok(())
    }

    // ----- SEND -----

    /// (id, ack mode) of this connection's subscriptions whose target matches.
    pub(super) fn subscriptions(
        &self,
        matches: impl Fn(&SubscribeTarget) -> bool,
    ) -> Vec<(String, AckMode)> {
        let Some(s) = self.session.as_ref() else {
            return Vec::new();
        };
        s.subs
            .iter()
            .filter(|(_, sub)| matches(&sub.target))
            .map(|(id, sub)| (id.clone(), sub.ack))
            .collect()
    }

    /// Remembers a client-mode push until it is acked; returns its `ack` id.
    pub(super) fn remember(
        &mut self,
        sub_id: &str,
        mode: AckMode,
        ack_id: &str,
        kind: UnackedKind,
    ) -> Option<String> {
        if mode == AckMode::Auto {
            return None;
        }
        let s = self.session.as_mut()?;
        if s.unacked.len() >= MAX_UNACKED {
            // Forget the oldest: the redelivery clock still covers messages.
            if let Some(oldest) = s
                .unacked
                .iter()
                .min_by_key(|(_, u)| u.order)
                .map(|(k, _)| k.clone())
            {
                s.unacked.remove(&oldest);
            }
        }
        s.counter += 1;
        let order = s.counter;
        s.unacked.insert(
            ack_id.to_string(),
            Unacked {
                subscription: sub_id.to_string(),
                kind,
                order,
            },
        );
        Some(ack_id.to_string())
    }

    // ----- heart-beats, I/O, teardown -----
}
