//! Storage latency for `/metrics`: a drop-guard timer at the start of each backend operation.
//! The name is re-exported by `canto_core::metrics`, where every metric name is listed.

use std::time::Instant;

/// Histogram of the time one storage operation takes, in seconds; label `op` (`kv_get`,
/// `archive_append`, …).
pub const STORAGE_DURATION: &str = "canto_storage_duration_seconds";

/// Records the time from its creation to its drop under `op`.
pub(crate) struct Timed {
    op: &'static str,
    start: Instant,
}

/// Starts timing `op` (dropped when the operation returns, however it returns).
pub(crate) fn timed(op: &'static str) -> Timed {
    Timed {
        op,
        start: Instant::now(),
    }
}

impl Drop for Timed {
    fn drop(&mut self) {
        metrics::histogram!(STORAGE_DURATION, "op" => self.op)
            .record(self.start.elapsed().as_secs_f64());
    }
}
