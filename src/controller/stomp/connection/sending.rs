//! SEND: `/app/send` into the ordered pipeline of in-flight sends, the
//! answers to the sender, and broadcasts to `/topic/...`.

use super::*;

impl Connection {
    pub(super) async fn on_send(&mut self, frame: Frame) -> Step {
        let dest = frame
            .header("destination")
            .ok_or_else(|| Fatal::new("SEND needs a destination header", Some(&frame)))?;
        let target = destination::parse_send(dest)
            .ok_or_else(|| Fatal::new(format!("unknown destination {dest}"), Some(&frame)))?;
        match target {
            SendTarget::AppSend => self.on_app_send(&frame).await,
            SendTarget::AppAck => self.on_app_ack(&frame).await,
            SendTarget::Topic(topic) => self.on_topic_send(&frame, &topic).await,
        }
    }

    pub(super) async fn on_app_send(&mut self, frame: &Frame) -> Step {
        let (user_id, conn_id) = {
            let s = self.session()?;
            (s.user_id, s.conn_id)
        };
        let receipt = frame.header("receipt").map(str::to_string);
        let req: SendReq = match crate::model::dto::from_stomp_body(&frame.body) {
            Ok(r) => r,
            Err(e) => {
                let cmid = client_message_id_of(&frame.body);
                let e = AppError::invalid(format!("malformed SendReq: {e}"));
                self.reject_in_order(receipt, cmid, e);
                return Ok(());
            }
        };
        let cmid = req.client_message_id.to_string();
        match self
            .services
            .messages
            .send(user_id, req, Some(conn_id))
            .await
        {
            Ok(pending) => {
                self.in_flight.push_back(Box::pin(
                    async move { (receipt, Some(cmid), pending.await) },
                ));
            }
            Err(e) => self.reject_in_order(receipt, Some(cmid), e),
        }
        Ok(())
    }

    /// A SEND rejected before it reached the pipeline is answered in its
    /// place: after the sends read before it, and with its RECEIPT (a
    /// client waiting on the receipt must not hang).
    fn reject_in_order(&mut self, receipt: Option<String>, cmid: Option<String>, e: AppError) {
        self.in_flight
            .push_back(Box::pin(std::future::ready((receipt, cmid, Err(e)))));
    }

    pub(super) fn on_send_done(
        &mut self,
        receipt: Option<String>,
        cmid: Option<String>,
        result: AppResult<SendAck>,
    ) {
        match result {
            Ok(ack) => {
                if let Ok(body) = serde_json::to_vec(&ack) {
                    self.write_own_queue(
                        &SubscribeTarget::SendAcks,
                        destination::SEND_ACKS,
                        Bytes::from(body),
                    );
                }
            }
            Err(e) => self.reject(e, cmid),
        }
        if let Some(r) = receipt {
            self.outgoing.push(frames::receipt(&r));
        }
    }

    /// A rejected SEND: an error on `/user/queue/errors`, the connection stays.
    pub(super) fn reject(&mut self, e: AppError, client_message_id: Option<String>) {
        metrics::counter!("herald_rejected_sends_total", "code" => e.code()).increment(1);
        let vo = SendErrorVo {
            code: e.code().into(),
            message: e.to_string(),
            client_message_id,
        };
        if let Ok(body) = serde_json::to_vec(&vo) {
            self.write_own_queue(
                &SubscribeTarget::Errors,
                destination::ERRORS,
                Bytes::from(body),
            );
        }
    }

    /// Writes a JSON MESSAGE to every subscription of this connection to `target`.
    pub(super) fn write_own_queue(&mut self, target: &SubscribeTarget, dest: &str, body: Bytes) {
        let subs = self.subscriptions(|t| t == target);
        for (sub_id, mode) in subs {
            let message_id = self.next_id();
            let ack = self.remember(&sub_id, mode, &message_id, UnackedKind::Other);
            self.outgoing.push(frames::json_message(
                dest,
                &sub_id,
                &message_id,
                ack.as_deref(),
                body.clone(),
            ));
        }
    }

    pub(super) async fn on_topic_send(&mut self, frame: &Frame, topic: &TopicName) -> Step {
        let user_id = self.session()?.user_id;
        Self::authorize_topic(&self.services, user_id, topic, frame).await?;
        let headers = frame
            .headers
            .iter()
            .filter(|(k, _)| {
                !matches!(
                    k.as_str(),
                    "destination" | "receipt" | "transaction" | "content-length"
                )
            })
            .cloned()
            .collect();
        self.services
            .relay
            .broadcast(Broadcast {
                destination: Arc::from(topic.destination.as_str()),
                headers,
                body: frame.body.clone(),
            })
            .await;
        self.receipt_for(frame);
        Ok(())
    }

    // ----- ACK / NACK -----
}

/// The `clientMessageId` of a SendReq that failed to parse, if it has one.
pub(super) fn client_message_id_of(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v.get("clientMessageId")?.as_str().map(str::to_string)
}
