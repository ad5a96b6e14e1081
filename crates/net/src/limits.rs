//! Connection limits that live in the network layer: the per-connection read rate (a token
//! bucket, as Prosody's mod_limits) and the number of connections open from one address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use canto_core::config::ReadLimit;
use canto_core::server::address_key;
use tokio::time::{Duration, Instant};

/// Reads are never larger than this while a limit is in force, so that one read cannot run far
/// ahead of the bucket.
const MAX_CHUNK: u64 = 4096;

/// A token bucket on the bytes read from one connection. Tokens are bytes; the bucket holds
/// `rate × burst` and refills at `rate`. A read may take at most the tokens present, so the
/// count never goes negative; an empty bucket pauses reading (the socket's buffers then push
/// back on the client) until a chunk's worth has refilled. Nothing is dropped.
#[derive(Debug)]
pub struct ReadBucket {
    rate: f64,
    capacity: f64,
    tokens: f64,
    last: Instant,
}

impl ReadBucket {
    /// A full bucket for `limit`.
    pub fn new(limit: ReadLimit, now: Instant) -> ReadBucket {
        let capacity = limit.capacity() as f64;
        ReadBucket {
            rate: (limit.bytes_per_second as f64).max(1.0),
            capacity,
            tokens: capacity,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.capacity);
        self.last = now;
    }

    /// How many bytes may be read now (0: wait until [`ReadBucket::ready_at`]).
    pub fn allowance(&mut self, now: Instant) -> usize {
        self.refill(now);
        // The epsilon absorbs float rounding: waking at `ready_at` must find the chunk there.
        ((self.tokens + 1e-6).floor() as u64).min(MAX_CHUNK) as usize
    }

    /// Takes `n` bytes' worth of tokens (what a read returned). A message-framed transport
    /// (WebSocket, BOSH) returns a whole message, which may be more than the allowance: the
    /// bucket then goes into debt and reading waits until it is repaid, so a large message
    /// does not buy more than the configured rate.
    pub fn consume(&mut self, n: usize) {
        self.tokens -= n as f64;
    }

    /// When reading should resume after the bucket ran dry: once a chunk (or the whole bucket,
    /// if smaller) has refilled, so a throttled connection is read in chunks, not byte by byte.
    pub fn ready_at(&self) -> Instant {
        let want = self.capacity.min(MAX_CHUNK as f64).max(1.0);
        let missing = (want - self.tokens).max(0.0);
        self.last + Duration::from_secs_f64(missing / self.rate)
    }
}

/// Counts open connections per address (IPv6 per /64); shared by every listener.
#[derive(Debug, Default)]
pub struct ConnectionCounter {
    open: Mutex<HashMap<IpAddr, u32>>,
}

/// A counted connection; dropping it gives the slot back.
#[derive(Debug)]
pub struct ConnectionSlot {
    counter: Arc<ConnectionCounter>,
    key: IpAddr,
}

impl ConnectionCounter {
    /// Takes a slot for a connection from `ip` if fewer than `max` are open from its address
    /// (`max` 0: no cap, nothing counted). `None`: refuse the connection.
    pub fn acquire(self: &Arc<Self>, ip: IpAddr, max: u32) -> Option<Option<ConnectionSlot>> {
        if max == 0 {
            return Some(None);
        }
        let key = address_key(ip);
        let Ok(mut open) = self.open.lock() else {
            return Some(None);
        };
        let n = open.entry(key).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Some(ConnectionSlot {
            counter: self.clone(),
            key,
        }))
    }

    /// Connections counted for `ip`'s address now.
    pub fn count(&self, ip: IpAddr) -> u32 {
        self.open
            .lock()
            .ok()
            .and_then(|m| m.get(&address_key(ip)).copied())
            .unwrap_or(0)
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        if let Ok(mut open) = self.counter.open.lock()
            && let Some(n) = open.get_mut(&self.key)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                // No entry for an address with nothing open: the table stays as small as the
                // set of connected addresses.
                open.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(bps: u64, burst_ms: u64) -> ReadLimit {
        ReadLimit {
            bytes_per_second: bps,
            burst: Duration::from_millis(burst_ms),
        }
    }

    #[test]
    fn a_full_bucket_allows_the_burst_then_refills_at_the_rate() {
        let t0 = Instant::now();
        // 10 kB/s, 1 s burst: 10,000 bytes at once, read in chunks of at most 4096.
        let mut b = ReadBucket::new(limit(10_000, 1000), t0);
        let mut read = 0;
        loop {
            let n = b.allowance(t0);
            if n == 0 {
                break;
            }
            assert!(n <= 4096);
            b.consume(n);
            read += n;
        }
        assert_eq!(read, 10_000);
        // Dry: reading resumes once a 4096-byte chunk has refilled (409.6 ms at 10 kB/s).
        let at = b.ready_at();
        assert_eq!(at.duration_since(t0), Duration::from_secs_f64(0.4096));
        assert_eq!(b.allowance(t0 + Duration::from_millis(100)), 1000);
        assert_eq!(b.allowance(at), 4096);
        // Long quiet: never more than the bucket holds.
        assert_eq!(b.allowance(t0 + Duration::from_secs(60)), 4096);
        b.consume(4096);
        assert_eq!(b.allowance(t0 + Duration::from_secs(60)), 4096);
        b.consume(4096);
        assert_eq!(b.allowance(t0 + Duration::from_secs(60)), 10_000 - 8192);
    }

    #[test]
    fn over_a_minute_the_rate_holds() {
        let t0 = Instant::now();
        let mut b = ReadBucket::new(limit(1000, 2000), t0);
        let mut now = t0;
        let mut read = 0u64;
        while now < t0 + Duration::from_secs(60) {
            match b.allowance(now) {
                0 => now = b.ready_at().max(now + Duration::from_millis(1)),
                n => {
                    b.consume(n);
                    read += n as u64;
                }
            }
        }
        // The 2,000-byte burst plus 1,000 B/s: read in bucket-sized chunks every 2 s, the last
        // at 58 s — 60,000 bytes, and never more than burst + rate × time.
        assert!((59_000..=62_000).contains(&read), "{read}");
    }

    #[test]
    fn whole_messages_bigger_than_the_allowance_are_paid_back_before_the_next_read() {
        // A WebSocket or BOSH read returns a whole message: 1 token allows 100,000 bytes, but
        // then nothing more is read for 100 s at 1,000 B/s (the rate holds over messages).
        let t0 = Instant::now();
        let mut b = ReadBucket::new(limit(1000, 1000), t0);
        assert!(b.allowance(t0) > 0);
        b.consume(100_000);
        assert_eq!(b.allowance(t0 + Duration::from_secs(50)), 0);
        assert!(
            b.ready_at() >= t0 + Duration::from_secs(99),
            "{:?}",
            b.ready_at() - t0
        );
        assert!(b.allowance(t0 + Duration::from_secs(101)) > 0);
    }

    #[test]
    fn a_tiny_bucket_still_makes_progress() {
        let t0 = Instant::now();
        let mut b = ReadBucket::new(limit(1, 1), t0);
        assert_eq!(b.allowance(t0), 1);
        b.consume(1);
        assert_eq!(b.allowance(t0), 0);
        assert_eq!(b.ready_at(), t0 + Duration::from_secs(1));
        assert_eq!(b.allowance(t0 + Duration::from_secs(1)), 1);
    }

    #[test]
    fn connections_are_counted_per_address_and_released() {
        let c = Arc::new(ConnectionCounter::default());
        let a: IpAddr = [192, 0, 2, 1].into();
        let b: IpAddr = [192, 0, 2, 2].into();
        let s1 = c.acquire(a, 2);
        let s2 = c.acquire(a, 2);
        assert!(matches!(s1, Some(Some(_))) && matches!(s2, Some(Some(_))));
        assert!(c.acquire(a, 2).is_none(), "third from one address");
        assert!(matches!(c.acquire(b, 2), Some(Some(_))), "other address");
        drop(s1);
        assert_eq!(c.count(a), 1);
        let s3 = c.acquire(a, 2);
        assert!(matches!(s3, Some(Some(_))));
        drop((s2, s3));
        assert_eq!(c.count(a), 0);
        assert!(c.open.lock().map(|m| m.is_empty()).unwrap_or(false));
        // IPv6 per /64.
        let v6 = |s: &str| s.parse::<IpAddr>().unwrap_or_else(|e| panic!("{e}"));
        let x = c.acquire(v6("2001:db8::1"), 1);
        assert!(matches!(x, Some(Some(_))));
        assert!(c.acquire(v6("2001:db8::2"), 1).is_none());
        assert!(matches!(c.acquire(v6("2001:db8:0:1::2"), 1), Some(Some(_))));
        // No cap: nothing counted.
        assert!(matches!(c.acquire(a, 0), Some(None)));
    }
}
