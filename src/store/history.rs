//! The price history's durable store in the database: [`HistoryStore`] for [`Store`], so
//! history frames live in the `price_history` table, survive a restart and are shared by every
//! gateway instance on the same database.
//!
//! The history writer is a plain thread, so each call blocks it on the store runtime
//! ([`Store::wait`]). Compaction is a retention delete, not a rewrite: other instances' frames
//! in a shared database are not this process's to rewrite.

use std::sync::Arc;

use super::{Store, StoreError};
use crate::pricing::history::{Frame, HistoryError, HistoryStore};

/// Blocks the calling thread: call it from the history writer thread or at start-up, never
/// from inside an async runtime.
impl HistoryStore for Store {
    fn load(&mut self, since: i64, until: i64) -> Result<Vec<Frame>, HistoryError> {
        self.wait(self.price_frames(since, until)).map_err(history_error)
    }

    fn append(&mut self, frames: &[Arc<Frame>]) -> Result<(), HistoryError> {
        self.wait(self.append_price_frames(frames.to_vec())).map_err(history_error)
    }

    fn compact(&mut self, cutoff: i64, _keep: &[Arc<Frame>]) -> Result<(), HistoryError> {
        let rows = self.wait(self.delete_price_frames_before(cutoff)).map_err(history_error)?;
        tracing::debug!(rows, cutoff, "price history: expired frames deleted from the store");
        Ok(())
    }
}

/// Invalid frames are refused for good; anything else may pass on a retry.
fn history_error(e: StoreError) -> HistoryError {
    match e {
        StoreError::Invalid(m) => HistoryError::Refused(m),
        other => HistoryError::Unavailable(other.to_string()),
    }
}
