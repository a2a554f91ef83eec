//! Who a call acts for and what it may do: bearer-token authentication
//! ([`tokens`]), topic ACLs ([`acl`]) and per-principal rate limits
//! ([`quota`]). `docs/security.md` is the user's view.
//!
//! Split of work: the router's interceptor ([`authenticate`]) establishes
//! the principal before any handler runs; Log handlers authorise each topic
//! they touch ([`ShardSecurity::authorize`]) on the shard that received the
//! call (every shard holds the same compiled policy), before looking the
//! topic up, so a refusal never reveals whether the topic exists; quotas are
//! charged on the shard that owns the partition ([`quota::QuotaBook`]).

pub mod acl;
pub mod quota;
pub mod tokens;

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use serde::Deserialize;
use shardlog_wire::{CallContext, Code, Metadata, Status};

use acl::Acl;
use quota::{QuotaBook, QuotaPolicy};
use tokens::{TokenHash, TokenTable};

use crate::config::Config;

/// Methods reachable without credentials while auth is on (load balancers).
pub const OPEN_METHOD_PREFIX: &str = "/grpc.health.v1.Health/";
/// The principal quotas apply to when auth is off.
pub const ANONYMOUS_PRINCIPAL: &str = "anonymous";

/// An operation ACL rules grant or deny; every `shardlog.v1.Log` method maps
/// to one (see `docs/security.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    /// Produce, ProduceStream, Append.
    Produce,
    /// Fetch, Subscribe.
    Fetch,
    /// DescribeTopic, ListTopics (which lists only describable topics).
    Describe,
    /// CreateTopic.
    Create,
    /// DeleteTopic.
    Delete,
    /// CommitOffset, GetCommittedOffset.
    Commit,
    /// Every operation (in rules only).
    All,
}

impl Operation {
    /// The operation's bit in a rule's operation set.
    pub fn bit(self) -> u8 {
        match self {
            Operation::Produce => 1,
            Operation::Fetch => 1 << 1,
            Operation::Describe => 1 << 2,
            Operation::Create => 1 << 3,
            Operation::Delete => 1 << 4,
            Operation::Commit => 1 << 5,
            Operation::All => u8::MAX,
        }
    }

    /// The verb used in messages and the metric label.
    pub fn name(self) -> &'static str {
        match self {
            Operation::Produce => "produce",
            Operation::Fetch => "fetch",
            Operation::Describe => "describe",
            Operation::Create => "create",
            Operation::Delete => "delete",
            Operation::Commit => "commit",
            Operation::All => "all",
        }
    }
}

/// The `[auth]` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Require a principal (token or client certificate) on every call but
    /// health checks, and enforce ACLs. Off by default (loopback dev).
    pub enabled: bool,
    /// Token file: `<sha256 hex> <principal>` per line.
    pub token_file: Option<std::path::PathBuf>,
}

/// Why the security settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    /// The token file.
    #[error(transparent)]
    Tokens(#[from] tokens::TokenError),
    /// An ACL rule.
    #[error(transparent)]
    Acl(#[from] acl::AclError),
    /// The quotas section.
    #[error(transparent)]
    Quotas(#[from] quota::QuotaError),
    /// Settings that contradict each other.
    #[error("auth: {0}")]
    Inconsistent(&'static str),
}

/// Tokens, ACLs and quota limits as loaded at startup; shared read-only by
/// every shard.
#[derive(Debug, Default)]
pub struct SecurityPolicy {
    auth_enabled: bool,
    tokens: TokenTable,
    acl: Acl,
    quotas: Arc<QuotaPolicy>,
}

impl SecurityPolicy {
    /// Loads the token file and compiles ACLs and quotas from `config`.
    pub fn from_config(config: &Config) -> Result<Self, SecurityError> {
        let auth = &config.auth;
        if !auth.enabled && (auth.token_file.is_some() || !config.acl.is_empty()) {
            return Err(SecurityError::Inconsistent(
                "token_file and [[acl]] rules need [auth] enabled = true (they would not be enforced)",
            ));
        }
        let tokens = match &auth.token_file {
            Some(path) => TokenTable::load(path)?,
            None => TokenTable::default(),
        };
        Ok(Self {
            auth_enabled: auth.enabled,
            tokens,
            acl: Acl::compile(&config.acl)?,
            quotas: Arc::new(QuotaPolicy::compile(&config.quotas)?),
        })
    }

    /// Whether calls must carry a principal and pass ACLs.
    pub fn auth_enabled(&self) -> bool {
        self.auth_enabled
    }

    /// Number of tokens loaded.
    pub fn token_count(&self) -> usize {
        self.tokens.len()
    }
}

/// Why a call was refused as unauthenticated (a metric label; the token is
/// never part of it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No token and no client certificate.
    Missing,
    /// An `authorization` value that is not `Bearer <token>`.
    Malformed,
    /// A well-formed token the token file does not list.
    Unknown,
}

impl AuthFailure {
    /// Every reason, in metric order.
    pub const ALL: [AuthFailure; 3] = [
        AuthFailure::Missing,
        AuthFailure::Malformed,
        AuthFailure::Unknown,
    ];

    /// The metric label value.
    pub fn label(self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing",
            AuthFailure::Malformed => "malformed",
            AuthFailure::Unknown => "unknown_token",
        }
    }

    fn status(self) -> Status {
        let message = match self {
            AuthFailure::Missing => {
                "missing credentials: send `authorization: Bearer <token>` metadata or a client certificate"
            }
            AuthFailure::Malformed => {
                "malformed authorization metadata: expected one `authorization: Bearer <token>` value with an RFC 6750 token"
            }
            AuthFailure::Unknown => "invalid token: not known to this server",
        };
        Status::new(Code::UNAUTHENTICATED, message)
    }
}

/// One shard's view of the policy: principals as `Rc<str>` (handed to calls
/// without allocating) and this shard's quota buckets.
pub struct ShardSecurity {
    policy: Arc<SecurityPolicy>,
    principals: HashMap<TokenHash, Rc<str>>,
    /// This shard's quota buckets.
    pub quotas: QuotaBook,
}

impl ShardSecurity {
    /// A shard's security state for `policy`.
    pub fn new(policy: Arc<SecurityPolicy>) -> Self {
        let principals = policy
            .tokens
            .entries()
            .map(|(hash, principal)| (*hash, Rc::from(principal)))
            .collect();
        let quotas = QuotaBook::new(policy.quotas.clone());
        Self {
            policy,
            principals,
            quotas,
        }
    }

    /// Whether auth is on.
    pub fn auth_enabled(&self) -> bool {
        self.policy.auth_enabled
    }

    /// Establishes who a call acts for: the bearer token if the call sent
    /// `authorization` (a bad token is refused even on an mTLS connection),
    /// else the TLS client certificate's principal. Health checks pass
    /// without credentials.
    pub fn authenticate(
        &self,
        context: &CallContext,
        metadata: &Metadata,
    ) -> Result<(), AuthFailure> {
        if context.method().starts_with(OPEN_METHOD_PREFIX) {
            return Ok(());
        }
        let principal = match self.principal_from_token(metadata)? {
            Some(principal) => principal,
            None => context
                .connection()
                .tls_principal
                .clone()
                .ok_or(AuthFailure::Missing)?,
        };
        context.set_principal(principal);
        Ok(())
    }

    fn principal_from_token(&self, metadata: &Metadata) -> Result<Option<Rc<str>>, AuthFailure> {
        let headers = metadata.as_headers();
        let mut values = headers.get_all("authorization").iter();
        let Some(value) = values.next() else {
            return Ok(None);
        };
        if values.next().is_some() {
            return Err(AuthFailure::Malformed);
        }
        let value = value.to_str().map_err(|_| AuthFailure::Malformed)?;
        let token = tokens::parse_bearer(value).map_err(|_| AuthFailure::Malformed)?;
        self.principals
            .get(&tokens::hash_token(token))
            .cloned()
            .map(Some)
            .ok_or(AuthFailure::Unknown)
    }

    /// Whether the call's principal may perform `operation` on `topic`
    /// (always, when auth is off).
    pub fn may(&self, context: &CallContext, operation: Operation, topic: &str) -> bool {
        if !self.policy.auth_enabled {
            return true;
        }
        context
            .principal()
            .is_some_and(|principal| self.policy.acl.allows(principal, operation, topic))
    }

    /// Authorises `operation` on `topic` for the call's principal. Runs
    /// before the topic is looked up: the refusal is the same whether or
    /// not the topic exists.
    pub fn authorize(
        &self,
        context: &CallContext,
        operation: Operation,
        topic: &str,
    ) -> Result<(), Status> {
        if self.may(context, operation, topic) {
            return Ok(());
        }
        let Some(principal) = context.principal() else {
            return Err(AuthFailure::Missing.status());
        };
        Err(Status::new(
            Code::PERMISSION_DENIED,
            format!(
                "permission denied: principal {principal:?} may not {} topic {topic:?}",
                operation.name()
            ),
        ))
    }

    /// The principal quotas are charged to, when a limit applies to it.
    pub fn quota_principal(&self, context: &CallContext) -> Option<Arc<str>> {
        if self.quotas.policy().is_empty() {
            return None;
        }
        let principal = context.principal().unwrap_or(ANONYMOUS_PRINCIPAL);
        self.quotas
            .policy()
            .limits_for(principal)
            .map(|_| Arc::from(principal))
    }
}

/// The status for an authentication failure (never echoes the token).
pub fn unauthenticated(failure: AuthFailure) -> Status {
    failure.status()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard_security(token_line: &str) -> ShardSecurity {
        let tokens = TokenTable::parse(token_line, std::path::Path::new("t")).expect("valid");
        ShardSecurity::new(Arc::new(SecurityPolicy {
            auth_enabled: true,
            tokens,
            ..SecurityPolicy::default()
        }))
    }

    fn call(method: &'static str, tls_principal: Option<&str>) -> CallContext {
        let connection = shardlog_wire::ConnectionInfo {
            tls_principal: tls_principal.map(Rc::from),
            ..Default::default()
        };
        CallContext::on_connection(method, None, Rc::new(connection))
    }

    fn bearer(value: &str) -> Metadata {
        let mut metadata = Metadata::new();
        metadata.insert("authorization", value).expect("ascii");
        metadata
    }

    #[test]
    fn token_wins_over_certificate_and_bad_tokens_never_fall_back() {
        let line = tokens::token_file_line("tok", Some("alice")).expect("valid");
        let security = shard_security(&line);
        let method = "/shardlog.v1.Log/Produce";

        let context = call(method, Some("cert-bob"));
        security
            .authenticate(&context, &bearer("Bearer tok"))
            .expect("token");
        assert_eq!(context.principal(), Some("alice"));

        let context = call(method, Some("cert-bob"));
        security
            .authenticate(&context, &Metadata::new())
            .expect("certificate");
        assert_eq!(context.principal(), Some("cert-bob"));

        let context = call(method, Some("cert-bob"));
        let refused = security.authenticate(&context, &bearer("Bearer nope"));
        assert_eq!(refused, Err(AuthFailure::Unknown));
        assert_eq!(
            security.authenticate(&call(method, None), &bearer("Basic x")),
            Err(AuthFailure::Malformed)
        );
        assert_eq!(
            security.authenticate(&call(method, None), &Metadata::new()),
            Err(AuthFailure::Missing)
        );
        security
            .authenticate(
                &call("/grpc.health.v1.Health/Check", None),
                &Metadata::new(),
            )
            .expect("health is open");
    }
}
