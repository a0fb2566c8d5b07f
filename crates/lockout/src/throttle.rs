//! Throttling: token buckets per client IP and per tenant in front of sign-in, so that one
//! source cannot spray passwords across thousands of users, and no tenant's burst starves the
//! others.
//!
//! The client IP is the one the application reports in the request (it travels in the body, so
//! the limiter runs at the start of `SignIn` rather than as a transport layer). Buckets live in
//! each gateway replica's memory: with N replicas behind a balancer, a source gets up to N
//! times the rate. The number of buckets is bounded; idle ones are dropped first.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use serde::Deserialize;

/// Throttling settings (the gateway's `throttle` table). A rate of 0 turns that limit off.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ThrottleConfig {
    /// Sign-ins per minute from one client IP, sustained.
    pub per_client_ip_per_minute: u32,
    /// Sign-ins from one client IP at once, before the rate applies.
    pub per_client_ip_burst: u32,
    /// Sign-ins per second for the whole tenant, sustained.
    pub per_tenant_per_second: u32,
    /// Sign-ins for the tenant at once, before the rate applies.
    pub per_tenant_burst: u32,
    /// Most client IPs tracked at once.
    pub max_tracked_ips: usize,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        Self {
            // An office behind one NAT address signs in together at nine: generous per
            // address, still far below what spraying thousands of users needs.
            per_client_ip_per_minute: 600,
            per_client_ip_burst: 100,
            per_tenant_per_second: 5_000,
            per_tenant_burst: 10_000,
            max_tracked_ips: 100_000,
        }
    }
}

/// What was over its limit, and when to try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Throttled {
    /// Too many sign-ins from this client IP.
    #[error("too many sign-ins from this address; retry in {} s", .0.as_secs().max(1))]
    ClientIp(Duration),
    /// Too many sign-ins for this tenant.
    #[error("too many sign-ins; retry in {} s", .0.as_secs().max(1))]
    Tenant(Duration),
}

impl Throttled {
    /// When the caller may try again.
    pub fn retry_after(&self) -> Duration {
        match self {
            Throttled::ClientIp(d) | Throttled::Tenant(d) => *d,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// A set of token buckets of one rate and burst.
#[derive(Debug)]
struct Buckets {
    per_second: f64,
    burst: f64,
    max: usize,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl Buckets {
    fn new(per_second: f64, burst: u32, max: usize) -> Self {
        Self {
            per_second,
            burst: f64::from(burst.max(1)),
            max: max.max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token for `key`, or says how long until one is there.
    fn take(&self, key: &str, now: Instant) -> Result<(), Duration> {
        if self.per_second <= 0.0 {
            return Ok(());
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if !buckets.contains_key(key) && buckets.len() >= self.max {
            // A full bucket is as good as none: drop those first, then the idlest.
            let (burst, rate) = (self.burst, self.per_second);
            buckets.retain(|_, b| {
                b.tokens + now.duration_since(b.updated).as_secs_f64() * rate < burst
            });
            if buckets.len() >= self.max
                && let Some(idlest) = buckets
                    .iter()
                    .min_by_key(|(_, b)| b.updated)
                    .map(|(k, _)| k.clone())
            {
                buckets.remove(&idlest);
            }
        }
        let bucket = buckets.entry(key.to_owned()).or_insert(Bucket {
            tokens: self.burst,
            updated: now,
        });
        let refilled = now.duration_since(bucket.updated).as_secs_f64() * self.per_second;
        bucket.tokens = (bucket.tokens + refilled).min(self.burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - bucket.tokens) / self.per_second,
            ))
        }
    }

    fn len(&self) -> usize {
        self.buckets.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// The limits in front of sign-in.
#[derive(Debug)]
pub struct Throttle {
    per_ip: Buckets,
    per_tenant: Buckets,
}

impl Throttle {
    /// Limits as `config` says.
    pub fn new(config: &ThrottleConfig) -> Self {
        Self {
            per_ip: Buckets::new(
                f64::from(config.per_client_ip_per_minute) / 60.0,
                config.per_client_ip_burst,
                config.max_tracked_ips,
            ),
            per_tenant: Buckets::new(
                f64::from(config.per_tenant_per_second),
                config.per_tenant_burst,
                1_024,
            ),
        }
    }

    /// Admits one sign-in for `tenant` from `client_ip` (if reported) at `now`, or says which
    /// limit it is over and when to retry. The tenant's token is taken only once the client's
    /// was, so a throttled source does not use up the tenant's budget.
    pub fn admit(
        &self,
        tenant: &str,
        client_ip: Option<&str>,
        now: Instant,
    ) -> Result<(), Throttled> {
        if let Some(ip) = client_ip {
            self.per_ip.take(ip, now).map_err(Throttled::ClientIp)?;
        }
        self.per_tenant.take(tenant, now).map_err(Throttled::Tenant)
    }

    /// Client IPs currently tracked.
    pub fn tracked_ips(&self) -> usize {
        self.per_ip.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(per_minute: u32, burst: u32) -> ThrottleConfig {
        ThrottleConfig {
            per_client_ip_per_minute: per_minute,
            per_client_ip_burst: burst,
            per_tenant_per_second: 1_000,
            per_tenant_burst: 1_000,
            max_tracked_ips: 100,
        }
    }

    #[test]
    fn a_burst_then_the_rate_per_client_ip() {
        let throttle = Throttle::new(&config(60, 5));
        let t0 = Instant::now();
        for _ in 0..5 {
            throttle.admit("t", Some("198.51.100.9"), t0).unwrap();
        }
        let over = throttle.admit("t", Some("198.51.100.9"), t0).unwrap_err();
        assert!(matches!(over, Throttled::ClientIp(_)));
        assert_eq!(over.retry_after(), Duration::from_secs(1));
        // Another address is served meanwhile; a second later one more token is back.
        throttle.admit("t", Some("203.0.113.7"), t0).unwrap();
        throttle
            .admit("t", Some("198.51.100.9"), t0 + Duration::from_secs(1))
            .unwrap();
        assert!(
            throttle
                .admit("t", Some("198.51.100.9"), t0 + Duration::from_secs(1))
                .is_err()
        );
    }

    #[test]
    fn the_tenant_limit_applies_to_everyone_and_zero_turns_a_limit_off() {
        let throttle = Throttle::new(&ThrottleConfig {
            per_tenant_per_second: 2,
            per_tenant_burst: 2,
            per_client_ip_per_minute: 0,
            ..ThrottleConfig::default()
        });
        let t0 = Instant::now();
        throttle.admit("t", Some("a"), t0).unwrap();
        throttle.admit("t", None, t0).unwrap();
        assert!(matches!(
            throttle.admit("t", Some("b"), t0),
            Err(Throttled::Tenant(_))
        ));
        throttle.admit("other", None, t0).unwrap();
        assert_eq!(throttle.tracked_ips(), 0, "the per-IP limit is off");
    }

    #[test]
    fn tracked_addresses_are_bounded() {
        let throttle = Throttle::new(&config(60, 5));
        let t0 = Instant::now();
        for n in 0..1_000 {
            throttle
                .admit("t", Some(&format!("10.0.{}.{}", n / 256, n % 256)), t0)
                .unwrap();
        }
        assert!(throttle.tracked_ips() <= 100);
    }
}
