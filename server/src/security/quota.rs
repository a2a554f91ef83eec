//! Per-principal rate limits: produce bytes/s, fetch bytes/s and requests/s,
//! each a token bucket. Buckets live on the shard that serves the traffic
//! (the partition's owner for produce and fetch), one set per principal per
//! shard, so no lock or cross-core traffic is involved: a configured rate
//! holds on every shard separately (see `docs/security.md`).
//!
//! Over the limit, a call is refused RESOURCE_EXHAUSTED with the time after
//! which it would be admitted; nothing is queued on the server's side.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;

/// Burst allowance used when `[quotas] burst_ms` is not set: a bucket holds
/// one second of its rate.
pub const BURST_MS_DEFAULT: u64 = 1000;
/// Most `[[quotas.limit]]` entries.
pub const QUOTA_RULES_MAX: usize = 10_000;
/// Most principals with live buckets on one shard; full (idle) buckets are
/// forgotten first when it is reached.
pub const QUOTA_PRINCIPALS_MAX: usize = 100_000;
/// Longest retry hint given, whatever the debt.
pub const RETRY_AFTER_MS_MAX: u64 = 60_000;

/// The `[quotas]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QuotasConfig {
    /// How much unused rate a bucket saves up, in milliseconds of its rate
    /// (its capacity is `rate * burst_ms / 1000`).
    pub burst_ms: u64,
    /// Limits per principal (`*`: every principal without its own entry).
    pub limit: Vec<QuotaRuleConfig>,
}

impl Default for QuotasConfig {
    fn default() -> Self {
        Self {
            burst_ms: BURST_MS_DEFAULT,
            limit: Vec::new(),
        }
    }
}

/// One `[[quotas.limit]]` entry; 0 (the default) means no limit.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaRuleConfig {
    /// A principal name, or `*` for every principal without its own entry.
    pub principal: String,
    /// Record bytes (key + value + headers) produced per second.
    #[serde(default)]
    pub produce_bytes_per_sec: u64,
    /// Record bytes fetched (Fetch and Subscribe) per second.
    #[serde(default)]
    pub fetch_bytes_per_sec: u64,
    /// Calls (and produce messages of a stream) per second.
    #[serde(default)]
    pub requests_per_sec: u64,
}

/// The rates of one principal; 0 is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QuotaLimits {
    /// Produce bytes per second.
    pub produce_bytes_per_sec: u64,
    /// Fetch bytes per second.
    pub fetch_bytes_per_sec: u64,
    /// Requests per second.
    pub requests_per_sec: u64,
}

/// Which limit a call ran into (a metric label and part of the message).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaKind {
    /// Produce bytes per second.
    ProduceBytes,
    /// Fetch bytes per second.
    FetchBytes,
    /// Requests per second.
    Requests,
}

impl QuotaKind {
    /// Every kind, in metric order.
    pub const ALL: [QuotaKind; 3] = [
        QuotaKind::ProduceBytes,
        QuotaKind::FetchBytes,
        QuotaKind::Requests,
    ];

    /// The metric label value.
    pub fn label(self) -> &'static str {
        match self {
            QuotaKind::ProduceBytes => "produce_bytes",
            QuotaKind::FetchBytes => "fetch_bytes",
            QuotaKind::Requests => "requests",
        }
    }

    fn unit(self) -> &'static str {
        match self {
            QuotaKind::ProduceBytes => "produce bytes/s",
            QuotaKind::FetchBytes => "fetch bytes/s",
            QuotaKind::Requests => "requests/s",
        }
    }
}

/// A refused call: which limit, its rate, and when to retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Throttled {
    /// The limit hit.
    pub kind: QuotaKind,
    /// Its configured rate.
    pub rate_per_sec: u64,
    /// Time until the call would be admitted.
    pub retry_after_ms: u64,
}

impl Throttled {
    /// A message naming the principal, the limit and the wait.
    pub fn message(&self, principal: &str, shard: usize) -> String {
        format!(
            "principal {principal:?} is over its quota of {} {} (on shard {shard}); retry after {} ms",
            self.rate_per_sec,
            self.kind.unit(),
            self.retry_after_ms
        )
    }
}

/// Who a produce or fetch sent to a partition's owner is charged to
/// (`Send`: it crosses the mesh). Absent when no limit applies.
#[derive(Debug, Clone)]
pub struct QuotaTicket {
    /// The principal.
    pub principal: Arc<str>,
    /// Whether the call counts against requests/s (a Subscribe's polls do
    /// not: the subscription is one request).
    pub counts_as_request: bool,
}

/// Why the `[quotas]` section was refused.
#[derive(Debug, thiserror::Error)]
#[error("quotas: {0}")]
pub struct QuotaError(pub String);

/// The configured limits, identical on every shard.
#[derive(Debug, Clone, Default)]
pub struct QuotaPolicy {
    burst_ms: u64,
    by_principal: HashMap<String, QuotaLimits>,
    any_principal: Option<QuotaLimits>,
}

impl QuotaPolicy {
    /// Checks and indexes the `[quotas]` section.
    pub fn compile(config: &QuotasConfig) -> Result<Self, QuotaError> {
        if config.limit.len() > QUOTA_RULES_MAX {
            return Err(QuotaError(format!(
                "more than {QUOTA_RULES_MAX} limit entries"
            )));
        }
        if config.burst_ms == 0 || config.burst_ms > 3_600_000 {
            return Err(QuotaError(
                "burst_ms must be between 1 and 3600000".to_owned(),
            ));
        }
        let mut policy = QuotaPolicy {
            burst_ms: config.burst_ms,
            ..QuotaPolicy::default()
        };
        for rule in &config.limit {
            let limits = QuotaLimits {
                produce_bytes_per_sec: rule.produce_bytes_per_sec,
                fetch_bytes_per_sec: rule.fetch_bytes_per_sec,
                requests_per_sec: rule.requests_per_sec,
            };
            let duplicate = if rule.principal == "*" {
                policy.any_principal.replace(limits).is_some()
            } else {
                super::tokens::validate_principal(&rule.principal)
                    .map_err(|reason| QuotaError(format!("limit principal: {reason}")))?;
                policy
                    .by_principal
                    .insert(rule.principal.clone(), limits)
                    .is_some()
            };
            if duplicate {
                return Err(QuotaError(format!(
                    "principal {:?} has two limit entries",
                    rule.principal
                )));
            }
        }
        Ok(policy)
    }

    /// The limits that apply to `principal`, if any.
    pub fn limits_for(&self, principal: &str) -> Option<&QuotaLimits> {
        self.by_principal
            .get(principal)
            .or(self.any_principal.as_ref())
    }

    /// Whether no limit is configured at all.
    pub fn is_empty(&self) -> bool {
        self.by_principal.is_empty() && self.any_principal.is_none()
    }
}

/// One token bucket. Tokens are bytes or requests; the level may go below
/// zero when a fetch reads more than was left (the debt delays the next
/// call instead of cutting the answer short).
#[derive(Debug, Clone)]
struct TokenBucket {
    rate_per_sec: u64,
    capacity: f64,
    level: f64,
    refilled_at: Instant,
}

impl TokenBucket {
    fn new(rate_per_sec: u64, burst_ms: u64, now: Instant) -> Self {
        assert!(rate_per_sec > 0);
        let capacity = (rate_per_sec as f64 * burst_ms as f64 / 1000.0).max(1.0);
        Self {
            rate_per_sec,
            capacity,
            level: capacity,
            refilled_at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.refilled_at);
        self.refilled_at = now;
        let earned = elapsed.as_secs_f64() * self.rate_per_sec as f64;
        self.level = (self.level + earned).min(self.capacity);
    }

    /// Time until `cost` tokens (at most one bucketful: a batch larger than
    /// the burst is admitted from a full bucket) are there; zero if now.
    fn wait_for(&mut self, cost: u64, now: Instant) -> Duration {
        self.refill(now);
        let needed = (cost as f64).min(self.capacity);
        if self.level >= needed {
            return Duration::ZERO;
        }
        Duration::from_secs_f64((needed - self.level) / self.rate_per_sec as f64)
    }

    fn take(&mut self, cost: u64) {
        self.level -= cost as f64;
    }

    fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.level >= self.capacity
    }
}

/// The buckets of one principal on one shard (`None`: that rate is
/// unlimited).
#[derive(Debug, Clone)]
struct PrincipalBuckets {
    produce_bytes: Option<TokenBucket>,
    fetch_bytes: Option<TokenBucket>,
    requests: Option<TokenBucket>,
}

impl PrincipalBuckets {
    fn new(limits: &QuotaLimits, burst_ms: u64, now: Instant) -> Self {
        let bucket = |rate: u64| (rate > 0).then(|| TokenBucket::new(rate, burst_ms, now));
        Self {
            produce_bytes: bucket(limits.produce_bytes_per_sec),
            fetch_bytes: bucket(limits.fetch_bytes_per_sec),
            requests: bucket(limits.requests_per_sec),
        }
    }

    fn bucket(&mut self, kind: QuotaKind) -> Option<&mut TokenBucket> {
        match kind {
            QuotaKind::ProduceBytes => self.produce_bytes.as_mut(),
            QuotaKind::FetchBytes => self.fetch_bytes.as_mut(),
            QuotaKind::Requests => self.requests.as_mut(),
        }
    }

    fn is_full(&mut self, now: Instant) -> bool {
        QuotaKind::ALL
            .iter()
            .all(|&kind| self.bucket(kind).is_none_or(|bucket| bucket.is_full(now)))
    }
}

/// What one call costs: `(kind, tokens)` pairs, all or nothing.
pub type QuotaCost<'a> = &'a [(QuotaKind, u64)];

/// One shard's buckets. Lives on exactly one core.
#[derive(Debug)]
pub struct QuotaBook {
    policy: Arc<QuotaPolicy>,
    buckets: RefCell<HashMap<Box<str>, PrincipalBuckets>>,
}

impl QuotaBook {
    /// An empty book for `policy`.
    pub fn new(policy: Arc<QuotaPolicy>) -> Self {
        Self {
            policy,
            buckets: RefCell::new(HashMap::new()),
        }
    }

    /// The policy this book enforces.
    pub fn policy(&self) -> &QuotaPolicy {
        &self.policy
    }

    /// Admits a call costing `cost` for `principal` (taking the tokens), or
    /// says which limit refuses it and for how long (taking nothing).
    pub fn admit(
        &self,
        principal: &str,
        cost: QuotaCost<'_>,
        now: Instant,
    ) -> Result<(), Throttled> {
        let Some(limits) = self.policy.limits_for(principal) else {
            return Ok(());
        };
        let mut buckets = self.buckets.borrow_mut();
        if !buckets.contains_key(principal) {
            if buckets.len() >= QUOTA_PRINCIPALS_MAX {
                // A full bucket is the same as no bucket: forget those.
                buckets.retain(|_, state| !state.is_full(now));
            }
            if buckets.len() >= QUOTA_PRINCIPALS_MAX {
                return Err(Throttled {
                    kind: QuotaKind::Requests,
                    rate_per_sec: limits.requests_per_sec,
                    retry_after_ms: BURST_MS_DEFAULT,
                });
            }
            let fresh = PrincipalBuckets::new(limits, self.policy.burst_ms, now);
            buckets.insert(principal.into(), fresh);
        }
        let state = buckets.get_mut(principal).expect("inserted above");
        for &(kind, tokens) in cost {
            if let Some(bucket) = state.bucket(kind) {
                let wait = bucket.wait_for(tokens, now);
                if !wait.is_zero() {
                    return Err(Throttled {
                        kind,
                        rate_per_sec: bucket.rate_per_sec,
                        retry_after_ms: (wait.as_millis() as u64 + 1).min(RETRY_AFTER_MS_MAX),
                    });
                }
            }
        }
        for &(kind, tokens) in cost {
            if let Some(bucket) = state.bucket(kind) {
                bucket.take(tokens);
            }
        }
        Ok(())
    }

    /// Takes `tokens` after the fact (bytes a fetch returned), possibly
    /// leaving the bucket in debt.
    pub fn charge(&self, principal: &str, kind: QuotaKind, tokens: u64) {
        if let Some(bucket) = self
            .buckets
            .borrow_mut()
            .get_mut(principal)
            .and_then(|state| state.bucket(kind))
        {
            bucket.take(tokens);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn book(rule: QuotaRuleConfig) -> QuotaBook {
        let config = QuotasConfig {
            burst_ms: 1000,
            limit: vec![rule],
        };
        QuotaBook::new(Arc::new(QuotaPolicy::compile(&config).expect("valid")))
    }

    #[test]
    fn requests_bucket_admits_its_burst_then_refuses_with_a_hint() {
        let book = book(QuotaRuleConfig {
            principal: "alice".to_owned(),
            requests_per_sec: 10,
            ..Default::default()
        });
        let start = Instant::now();
        let one = [(QuotaKind::Requests, 1)];
        for _ in 0..10 {
            book.admit("alice", &one, start).expect("within the burst");
        }
        let refused = book.admit("alice", &one, start).expect_err("over");
        assert_eq!(refused.kind, QuotaKind::Requests);
        assert!((90..=101).contains(&refused.retry_after_ms), "{refused:?}");
        // Refilled after the hinted wait.
        let later = start + Duration::from_millis(refused.retry_after_ms);
        book.admit("alice", &one, later).expect("refilled");
        // Others have no limit.
        for _ in 0..100 {
            book.admit("bob", &one, start).expect("unlimited");
        }
    }

    #[test]
    fn refusal_takes_nothing_and_big_batches_pass_from_a_full_bucket() {
        let book = book(QuotaRuleConfig {
            principal: "*".to_owned(),
            produce_bytes_per_sec: 1000,
            requests_per_sec: 100,
            ..Default::default()
        });
        let now = Instant::now();
        let big = [(QuotaKind::Requests, 1), (QuotaKind::ProduceBytes, 5000)];
        book.admit("x", &big, now)
            .expect("a full bucket admits one oversized batch");
        let refused = book.admit("x", &big, now).expect_err("now in debt");
        assert_eq!(refused.kind, QuotaKind::ProduceBytes);
        assert!(refused.retry_after_ms >= 5000, "debt of 4000 + 1000 needed");
        // The refused call took no request token: 99 more requests pass.
        for _ in 0..99 {
            book.admit("x", &[(QuotaKind::Requests, 1)], now)
                .expect("tokens left");
        }
    }

    #[test]
    fn fetch_debt_delays_the_next_fetch() {
        let book = book(QuotaRuleConfig {
            principal: "r".to_owned(),
            fetch_bytes_per_sec: 100,
            ..Default::default()
        });
        let now = Instant::now();
        let probe = [(QuotaKind::FetchBytes, 0)];
        book.admit("r", &probe, now).expect("not in debt");
        book.charge("r", QuotaKind::FetchBytes, 300);
        let refused = book.admit("r", &probe, now).expect_err("in debt");
        assert!(
            (2000..=2001).contains(&refused.retry_after_ms),
            "{refused:?}"
        );
    }

    #[test]
    fn duplicate_and_bad_entries_are_refused() {
        let rule = QuotaRuleConfig {
            principal: "a".to_owned(),
            ..Default::default()
        };
        let twice = QuotasConfig {
            burst_ms: 1000,
            limit: vec![rule.clone(), rule],
        };
        assert!(QuotaPolicy::compile(&twice).is_err());
        let zero_burst = QuotasConfig {
            burst_ms: 0,
            limit: Vec::new(),
        };
        assert!(QuotaPolicy::compile(&zero_burst).is_err());
    }
}
