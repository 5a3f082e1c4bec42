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

    /// Checks an `Authorization` header value (the scheme is case-insensitive, as HTTP
    /// says) and answers which configured key it is: the client's identity for rate
    /// limits, so spelling one key differently (`bearer`, extra spaces, a tab) is still
    /// the same client. `None` when keys are off. Every configured key is compared in
    /// constant time, so response timing reveals nothing about a key's contents.
    pub fn check(&self, authorization: Option<&str>) -> Result<Option<usize>, ApiError> {
        if !self.enabled() {
            return Ok(None);
        }
        let presented = authorization
            .map(str::trim)
            .and_then(|h| h.split_once(|c: char| c.is_ascii_whitespace()))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, key)| key.trim())
            .ok_or_else(|| {
                ApiError::Unauthorized("missing API key: send `Authorization: Bearer <key>`".into())
            })?;
        let mut found = subtle::CtOption::new(0u64, subtle::Choice::from(0));
        for (i, key) in self.keys.iter().enumerate() {
            let this = subtle::CtOption::new(i as u64, key.as_bytes().ct_eq(presented.as_bytes()));
            found =
                subtle::ConditionallySelectable::conditional_select(&found, &this, this.is_some());
        }
        Option::<u64>::from(found)
            .map(|i| Some(i as usize))
            .ok_or_else(|| ApiError::Unauthorized("invalid API key".into()))
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

/// The most buckets kept: past it the longest idle are forgotten first (clients are
/// key indices or addresses, but addresses are many).
const MAX_BUCKETS: usize = 10_000;

/// Failed API-key attempts allowed per client address and minute before a 429.
pub const AUTH_FAILURES_PER_MINUTE: u32 = 30;

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

    pub fn buckets(&self) -> usize {
        self.buckets.lock().map(|b| b.len()).unwrap_or(0)
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
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(client) {
            buckets.retain(|_, b| {
                now.saturating_duration_since(b.updated).as_secs_f64() < FORGET_AFTER_SECONDS
            });
            if buckets.len() >= MAX_BUCKETS {
                let mut ages: Vec<Instant> = buckets.values().map(|b| b.updated).collect();
                ages.sort_unstable();
                let cut = ages[ages.len() / 2];
                buckets.retain(|_, b| b.updated > cut);
            }
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
        assert_eq!(keys.check(Some("Bearer beta")).unwrap(), Some(1));
        // One key, however it is spelled, is one client.
        for spelling in [
            "bearer beta",
            "BEARER beta",
            "Bearer  beta",
            "Bearer beta\t",
            " Bearer\tbeta ",
        ] {
            assert_eq!(keys.check(Some(spelling)).unwrap(), Some(1), "{spelling:?}");
        }
        assert_eq!(keys.check(Some("Bearer alpha")).unwrap(), Some(0));
        assert!(matches!(
            keys.check(Some("Basic beta")),
            Err(ApiError::Unauthorized(_))
        ));
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
        assert_eq!(
            ApiKeys::default().check(None).unwrap(),
            None,
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

    #[test]
    fn the_bucket_table_stays_bounded() {
        let limiter = RateLimiter::new(60);
        let t0 = Instant::now();
        for i in 0..(MAX_BUCKETS + 500) {
            limiter
                .check_at(&format!("client-{i}"), t0 + Duration::from_micros(i as u64))
                .unwrap();
        }
        assert!(limiter.buckets() <= MAX_BUCKETS, "{}", limiter.buckets());
    }
}
