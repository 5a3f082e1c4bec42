//! API keys and per-client rate limits for the inference endpoints. `/health`,
//! `/readyz` and `/metrics` stay open so probes and scrapers need no secret.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use subtle::ConstantTimeEq;

use super::errors::ApiError;

/// Accepted API keys; empty means authentication is off.
#[derive(Debug, Clone, Default)]
pub struct ApiKeys {
    keys: Vec<String>,
}

impl ApiKeys {
    pub fn new(keys: Vec<String>) -> Self {
        Self { keys }
    }

    pub fn enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    /// Checks an `Authorization` header value. Every configured key is compared in
    /// constant time, so response timing reveals nothing about a key's contents.
    pub fn check(&self, authorization: Option<&str>) -> Result<(), ApiError> {
        if !self.enabled() {
            return Ok(());
        }
        let presented = authorization
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or_else(|| {
                ApiError::Unauthorized("missing API key: send `Authorization: Bearer <key>`".into())
            })?;
        let mut matched = subtle::Choice::from(0);
        for key in &self.keys {
            matched |= key.as_bytes().ct_eq(presented.as_bytes());
        }
        if bool::from(matched) {
            Ok(())
        } else {
            Err(ApiError::Unauthorized("invalid API key".into()))
        }
    }
}

/// A token bucket per client (API key, or address when keys are off): `per_minute`
/// requests of burst, refilled continuously.
#[derive(Debug)]
pub struct RateLimiter {
    per_minute: u32,
    buckets: Mutex<HashMap<String, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Buckets idle this long are full again and can be forgotten.
const FORGET_AFTER_SECONDS: f64 = 120.0;

impl RateLimiter {
    /// `per_minute == 0` disables limiting.
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_minute,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    pub fn check(&self, client: &str) -> Result<(), ApiError> {
        self.check_at(client, Instant::now())
    }

    fn check_at(&self, client: &str, now: Instant) -> Result<(), ApiError> {
        if self.per_minute == 0 {
            return Ok(());
        }
        let capacity = f64::from(self.per_minute);
        let per_second = capacity / 60.0;
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if buckets.len() > 10_000 {
            buckets
                .retain(|_, b| now.duration_since(b.updated).as_secs_f64() < FORGET_AFTER_SECONDS);
        }
        let bucket = buckets.entry(client.to_string()).or_insert(Bucket {
            tokens: capacity,
            updated: now,
        });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * per_second).min(capacity);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait = ((1.0 - bucket.tokens) / per_second).ceil().max(1.0);
            Err(ApiError::RateLimited {
                retry_after_seconds: wait as u64,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn keys_are_checked_when_configured() {
        let keys = ApiKeys::new(vec!["alpha".into(), "beta".into()]);
        assert!(keys.check(Some("Bearer beta")).is_ok());
        assert!(matches!(
            keys.check(Some("Bearer gamma")),
            Err(ApiError::Unauthorized(_))
        ));
        assert!(matches!(
            keys.check(Some("Bearer alph")),
            Err(ApiError::Unauthorized(_))
        ));
        assert!(matches!(
            keys.check(Some("beta")),
            Err(ApiError::Unauthorized(_))
        ));
        assert!(matches!(keys.check(None), Err(ApiError::Unauthorized(_))));
        assert!(
            ApiKeys::default().check(None).is_ok(),
            "no keys, no authentication"
        );
    }

    #[test]
    fn token_bucket_allows_a_burst_then_refills() {
        let limiter = RateLimiter::new(60);
        let t0 = Instant::now();
        for _ in 0..60 {
            limiter.check_at("a", t0).unwrap();
        }
        let err = limiter.check_at("a", t0).unwrap_err();
        assert_eq!(
            err,
            ApiError::RateLimited {
                retry_after_seconds: 1
            }
        );
        assert!(
            limiter.check_at("b", t0).is_ok(),
            "clients have separate buckets"
        );
        assert!(
            limiter
                .check_at("a", t0 + Duration::from_millis(1000))
                .is_ok(),
            "one request per second refills"
        );
        assert!(RateLimiter::new(0).check_at("a", t0).is_ok());
    }
}
