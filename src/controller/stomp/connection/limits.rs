//! What a connection may hold open: unfinished frames are charged to the
//! node's frame budget and must be finished within `frameTimeoutMs`, and
//! so must a WebSocket message begun, whatever the heart-beats.

use super::*;

impl Connection {
    /// Charges the unfinished frame the decoder now holds to the budget
    /// (and notes when it began); an ERROR if the budget is spent.
    pub(super) fn charge_partial_frame(&mut self) -> Step {
        let held = self.decoder.buffered_len();
        let owner = self.session.as_ref().map_or(0, |s| s.user_id);
        if held == self.partial.held && owner == self.partial.owner {
            return Ok(());
        }
        let budget = &self.services.frame_budget;
        if owner != self.partial.owner {
            // The frames read before CONNECT move to the user.
            let _ = budget.update(self.partial.owner, self.partial.held, 0);
            self.partial.held = 0;
            self.partial.owner = owner;
        }
        if let Err(over) = budget.update(owner, self.partial.held, held) {
            metrics::counter!("herald_partial_frames_refused_total").increment(1);
            return Err(Fatal::new(over.message(), None));
        }
        self.partial.held = held;
        self.partial.since = match (held, self.partial.since) {
            (0, _) => None,
            (_, Some(t)) => Some(t),
            (_, None) => Some(Instant::now()),
        };
        Ok(())
    }

    /// Gives back what the connection held.
    pub(super) fn release_partial_frame(&mut self) {
        let p = std::mem::take(&mut self.partial);
        let _ = self.services.frame_budget.update(p.owner, p.held, 0);
    }

    /// Closes a connection that began a frame, or a WebSocket message, and
    /// did not finish it in time; otherwise returns when to look again.
    pub(super) fn check_stall(&mut self, timeout: Duration) -> Result<Instant, Fatal> {
        let now = Instant::now();
        if let Some(since) = self.partial.since {
            if now.duration_since(since) >= timeout {
                return Err(stalled("frame", timeout));
            }
        }
        let mid_message = self
            .ticket
            .as_ref()
            .is_some_and(|t| t.bytes_read() > self.bytes_at_last_message);
        if mid_message && now.duration_since(self.last_read) >= timeout {
            // The WebSocket layer holds a message it cannot finish.
            self.stream_failed = true;
            return Err(stalled("WebSocket message", timeout));
        }
        let mut next = self.last_read + timeout;
        if let Some(since) = self.partial.since {
            next = next.min(since + timeout);
        }
        Ok(if next > now { next } else { now + timeout })
    }
}

fn stalled(what: &str, timeout: Duration) -> Fatal {
    metrics::counter!("herald_stalled_frames_total").increment(1);
    Fatal::new(
        format!("{what} not completed within {} s", timeout.as_secs()),
        None,
    )
}
