//! CONNECT: authentication, registration with the delivery hub, and
//! heart-beats.

use super::*;

impl Connection {
    pub(super) async fn on_connect(&mut self, frame: &Frame) -> Step {
        let version = StompVersion::negotiate(frame.header("accept-version"));
        let version = match version {
            Some(v) if v >= StompVersion::V1_1 => v,
            _ => {
                return Err(Fatal::new(
                    "supported STOMP versions are 1.1 and 1.2",
                    Some(frame),
                ));
            }
        };
        self.version = version;
        self.decoder.set_version(version);
        let tokens = self.services.tokens.clone();
        let caller = match (
            frame
                .header("Authorization")
                .or(frame.header("authorization")),
            frame.header("passcode"),
        ) {
            (Some(h), _) => tokens.authenticate_bearer(Some(h)).await,
            (None, Some(p)) => {
                tokens
                    .authenticate(p.strip_prefix("Bearer ").unwrap_or(p))
                    .await
            }
            (None, None) => Err(AppError::Unauthenticated("missing token".into())),
        };
        let refused = |e: AppError| Fatal::new(format!("authentication failed: {e}"), Some(frame));
        let caller = caller.map_err(refused)?;
        // Watched from here on; a revocation that came between the check
        // above and the watch is caught by checking once more (from the
        // cache, unless that revocation emptied it).
        let token = tokens.watch(&caller);
        tokens.check(caller).await.map_err(refused)?;
        let user_id = caller.user_id;
        let max = self.services.config.max_connections_per_user;
        let admitted = self
            .services
            .presence
            .device_connected(user_id, max)
            .await
            .map_err(|e| Fatal::new(AppError::from(e).to_string(), Some(frame)))?;
        if !admitted {
            return Err(Fatal::new(
                format!("at most {max} connections per user"),
                Some(frame),
            ));
        }
        let registration = self.services.delivery.register(user_id);
        let client = frame
            .header("heart-beat")
            .and_then(parse_heart_beat)
            .unwrap_or((0, 0));
        let hb = self.services.config.heartbeat_ms;
        let (send_ms, expect_ms) = negotiate_heart_beat(client, (hb, hb));
        let conn_id = registration.conn_id;
        self.session = Some(Session {
            user_id,
            conn_id,
            subs: HashMap::new(),
            unacked: HashMap::new(),
            transactions: HashMap::new(),
            counter: 0,
            send_every: (send_ms > 0).then(|| Duration::from_millis(send_ms)),
            expect_every: (expect_ms > 0).then(|| Duration::from_millis(expect_ms)),
            token,
        });
        self.pending_registration = Some((registration.rx, registration.kill));
        if let Some(t) = &self.ticket {
            t.unlimit_reads();
        }
        let connected = Frame::new(Command::Connected)
            .with_header("version", version.as_str())
            .with_header("heart-beat", format!("{send_ms},{expect_ms}"))
            .with_header("session", conn_id.to_string())
            .with_header("server", concat!("herald/", env!("CARGO_PKG_VERSION")))
            .with_header("user-name", user_id.to_string());
        self.outgoing.push(connected);
        self.receipt_for(frame);
        tracing::debug!(user_id, conn_id, "stomp connected");
        Ok(())
    }

    // ----- SUBSCRIBE / UNSUBSCRIBE -----

    pub(super) fn heartbeat_interval(&self) -> Option<tokio::time::Interval> {
        let s = self.session.as_ref()?;
        let shortest = [s.send_every, s.expect_every].into_iter().flatten().min()?;
        let period = (shortest / 2).max(Duration::from_millis(20));
        let mut i = tokio::time::interval(period);
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Some(i)
    }

    pub(super) fn on_heartbeat_tick(&mut self) -> Step {
        let Some(s) = self.session.as_ref() else {
            return Ok(());
        };
        if let Some(expect) = s.expect_every {
            if self.last_read.elapsed() > expect * 2 {
                return Err(Fatal::new("no heart-beat from the client", None));
            }
        }
        if let Some(every) = s.send_every {
            if self.last_write.elapsed() >= every.mul_f32(0.9) && self.outgoing.is_empty() {
                self.heartbeat_due = true;
            }
        }
        Ok(())
    }

    pub(super) fn take_registration(&mut self) -> Option<(mpsc::Receiver<Outbound>, Arc<Notify>)> {
        self.pending_registration.take()
    }
}
