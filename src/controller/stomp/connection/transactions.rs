//! Transactions: SENDs and ACKs between BEGIN and COMMIT take effect at
//! COMMIT, in order; none of them at ABORT.

use super::*;

impl Connection {
    pub(super) fn tx_name(frame: &Frame) -> Result<&str, Fatal> {
        frame.header("transaction").ok_or_else(|| {
            Fatal::new(
                format!("{} needs a transaction header", frame.command.as_str()),
                Some(frame),
            )
        })
    }

    pub(super) fn on_begin(&mut self, frame: &Frame) -> Step {
        let name = Self::tx_name(frame)?.to_string();
        let s = self.session()?;
        if s.transactions.contains_key(&name) {
            return Err(Fatal::new(
                format!("transaction {name} already began"),
                Some(frame),
            ));
        }
        s.transactions.insert(name, Vec::new());
        Ok(())
    }

    pub(super) fn buffer_in_transaction(&mut self, mut frame: Frame) -> Step {
        let name = Self::tx_name(&frame)?.to_string();
        let s = self.session()?;
        let Some(frames) = s.transactions.get_mut(&name) else {
            return Err(Fatal::new(
                format!("unknown transaction {name}"),
                Some(&frame),
            ));
        };
        if frames.len() >= MAX_TX_FRAMES {
            return Err(Fatal::new(
                "too many frames in one transaction",
                Some(&frame),
            ));
        }
        // The receipt confirms receipt of the frame, now; the effect comes at COMMIT.
        let receipt = frame.remove_header("receipt");
        frame.remove_header("transaction");
        frames.push(frame);
        if let Some(r) = receipt {
            self.outgoing.push(frames::receipt(&r));
        }
        Ok(())
    }

    pub(super) async fn on_commit(&mut self, frame: &Frame) -> Step {
        let name = Self::tx_name(frame)?.to_string();
        let Some(frames) = self.session()?.transactions.remove(&name) else {
            return Err(Fatal::new(
                format!("unknown transaction {name}"),
                Some(frame),
            ));
        };
        for f in frames {
            Box::pin(self.dispatch(f)).await?;
        }
        self.receipt_for(frame);
        Ok(())
    }

    pub(super) fn on_abort(&mut self, frame: &Frame) -> Step {
        let name = Self::tx_name(frame)?.to_string();
        if self.session()?.transactions.remove(&name).is_none() {
            return Err(Fatal::new(
                format!("unknown transaction {name}"),
                Some(frame),
            ));
        }
        Ok(())
    }

    // ----- pushes -----
}
