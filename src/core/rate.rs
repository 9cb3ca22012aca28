//! The per-session rate limit: a token bucket per session (`--rate-limit` texts a second, bursts of
//! `--rate-burst`), forgotten when the session has been quiet long enough to have a full bucket again.

use std::time::Instant;

use foldhash::HashMap;

use crate::error::AppError;

/// A token bucket.
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// The buckets of this process's sessions. Not shared across a cluster: each process limits what reaches it.
#[derive(Default)]
pub(super) struct Buckets {
    by_session: HashMap<String, Bucket>,
}

impl Buckets {
    /// Takes one token from `session`'s bucket, which refills at `rate` a second up to `burst` (a new session's
    /// bucket is full).
    ///
    /// # Errors
    /// [`AppError::RateLimited`] with the wait until a token is back, when the bucket is empty.
    pub(super) fn take(&mut self, session: &str, rate: f64, burst: f64, now: Instant) -> Result<(), AppError> {
        let bucket = self.by_session.entry(session.to_owned()).or_insert(Bucket { tokens: burst, last: now });
        bucket.tokens = (bucket.tokens + now.duration_since(bucket.last).as_secs_f64() * rate).min(burst);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait_ms = ((1.0 - bucket.tokens) / rate * 1000.0).ceil() as u64;
            Err(AppError::RateLimited(wait_ms))
        }
    }

    /// Forgets a session's bucket (it left).
    pub(super) fn forget(&mut self, session: &str) {
        self.by_session.remove(session);
    }

    /// Forgets the buckets not used since `horizon` (a full bucket is what a new one starts with anyway).
    pub(super) fn forget_quiet_since(&mut self, horizon: Instant) {
        self.by_session.retain(|_, bucket| bucket.last > horizon);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::Buckets;

    /// A burst passes, the next text is refused with the wait for one token, and it passes once that wait is over;
    /// each session has its own bucket.
    #[test]
    fn a_bucket_allows_a_burst_then_the_rate() {
        let mut buckets = Buckets::default();
        let start = std::time::Instant::now();
        for _ in 0..3 {
            buckets.take("a", 2.0, 3.0, start).unwrap();
        }
        let refused = buckets.take("a", 2.0, 3.0, start).unwrap_err();
        assert_eq!(refused.code(), "rate_limited");
        assert_eq!(refused.to_string(), "too many texts: slow down (retry in 500 ms)");
        buckets.take("b", 2.0, 3.0, start).expect("another session has its own bucket");
        buckets.take("a", 2.0, 3.0, start + Duration::from_millis(500)).expect("one token back after 1/rate");
        buckets.forget_quiet_since(start + Duration::from_millis(100));
        assert_eq!(buckets.by_session.len(), 1, "b, quiet since start, is forgotten");
        buckets.forget("a");
        assert!(buckets.by_session.is_empty());
    }
}
