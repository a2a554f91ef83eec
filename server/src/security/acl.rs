//! Topic ACLs: allow/deny rules per principal (or `*`, any authenticated
//! principal) on operations over a literal topic or a topic-name prefix.
//! Default deny; a matching deny wins over any allow.
//!
//! Compiled once at startup into a map from principal to its rules plus the
//! `*` rules, so a check scans only the rules that can apply.

use std::collections::HashMap;

use serde::Deserialize;

use super::Operation;

/// Most `[[acl]]` rules a configuration may hold.
pub const ACL_RULES_MAX: usize = 10_000;

/// Whether a rule grants or refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AclEffect {
    /// Grants the operations.
    #[default]
    Allow,
    /// Refuses the operations, whatever allows them.
    Deny,
}

/// One `[[acl]]` entry as written in TOML.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AclRuleConfig {
    /// A principal name, or `*` for any authenticated principal.
    pub principal: String,
    /// `allow` (default) or `deny`.
    #[serde(default)]
    pub effect: AclEffect,
    /// Operations the rule covers (`all` for every one).
    pub operations: Vec<Operation>,
    /// A literal topic name (exclusive with `topic_prefix`).
    pub topic: Option<String>,
    /// A topic-name prefix; `""` matches every topic.
    pub topic_prefix: Option<String>,
}

/// Why an ACL rule was refused at startup.
#[derive(Debug, thiserror::Error)]
#[error("acl rule {index}: {reason}")]
pub struct AclError {
    /// 1-based position of the rule in the configuration.
    pub index: usize,
    /// What is wrong with it.
    pub reason: String,
}

/// Which topics a rule covers.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Resource {
    Topic(String),
    Prefix(String),
}

impl Resource {
    fn matches(&self, topic: &str) -> bool {
        match self {
            Resource::Topic(name) => name == topic,
            Resource::Prefix(prefix) => topic.starts_with(prefix.as_str()),
        }
    }
}

#[derive(Debug, Clone)]
struct Rule {
    effect: AclEffect,
    operations: u8,
    resource: Resource,
}

impl Rule {
    fn covers(&self, operation: Operation, topic: &str) -> bool {
        self.operations & operation.bit() != 0 && self.resource.matches(topic)
    }
}

/// The compiled rules; identical on every shard.
#[derive(Debug, Clone, Default)]
pub struct Acl {
    by_principal: HashMap<String, Vec<Rule>>,
    any_principal: Vec<Rule>,
}

impl Acl {
    /// Compiles and checks the configured rules.
    pub fn compile(rules: &[AclRuleConfig]) -> Result<Self, AclError> {
        if rules.len() > ACL_RULES_MAX {
            return Err(AclError {
                index: ACL_RULES_MAX + 1,
                reason: format!("more than {ACL_RULES_MAX} rules"),
            });
        }
        let mut acl = Acl::default();
        for (position, config) in rules.iter().enumerate() {
            let rule = compile_rule(config).map_err(|reason| AclError {
                index: position + 1,
                reason,
            })?;
            if config.principal == "*" {
                acl.any_principal.push(rule);
            } else {
                acl.by_principal
                    .entry(config.principal.clone())
                    .or_default()
                    .push(rule);
            }
        }
        Ok(acl)
    }

    /// Whether `principal` may perform `operation` on `topic`: some rule
    /// allows it and no rule denies it.
    pub fn allows(&self, principal: &str, operation: Operation, topic: &str) -> bool {
        let own = self
            .by_principal
            .get(principal)
            .map_or(&[][..], Vec::as_slice);
        let mut allowed = false;
        for rule in own.iter().chain(&self.any_principal) {
            if rule.covers(operation, topic) {
                if rule.effect == AclEffect::Deny {
                    return false;
                }
                allowed = true;
            }
        }
        allowed
    }

    /// Whether there is no rule at all.
    pub fn is_empty(&self) -> bool {
        self.by_principal.is_empty() && self.any_principal.is_empty()
    }
}

fn compile_rule(config: &AclRuleConfig) -> Result<Rule, String> {
    if config.principal != "*" {
        super::tokens::validate_principal(&config.principal)?;
    }
    if config.operations.is_empty() {
        return Err("operations must name at least one operation".to_owned());
    }
    let resource = match (&config.topic, &config.topic_prefix) {
        (Some(topic), None) => {
            shardlog_engine::validate_topic_name(topic)
                .map_err(|_| format!("topic {topic:?} is not a valid topic name"))?;
            Resource::Topic(topic.clone())
        }
        (None, Some(prefix)) => Resource::Prefix(prefix.clone()),
        _ => return Err("give exactly one of topic or topic_prefix".to_owned()),
    };
    Ok(Rule {
        effect: config.effect,
        operations: config
            .operations
            .iter()
            .fold(0, |bits, operation| bits | operation.bit()),
        resource,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(principal: &str, effect: AclEffect, ops: &[Operation], topic: &str) -> AclRuleConfig {
        let (topic, topic_prefix) = match topic.strip_suffix('*') {
            Some(prefix) => (None, Some(prefix.to_owned())),
            None => (Some(topic.to_owned()), None),
        };
        AclRuleConfig {
            principal: principal.to_owned(),
            effect,
            operations: ops.to_vec(),
            topic,
            topic_prefix,
        }
    }

    #[test]
    fn default_deny_allow_and_deny_wins() {
        use AclEffect::*;
        use Operation::*;
        let acl = Acl::compile(&[
            rule("alice", Allow, &[All], "team-a.*"),
            rule("alice", Deny, &[Delete], "team-a.keep"),
            rule("*", Allow, &[Describe], "public"),
            rule("*", Deny, &[Produce], "team-a.frozen"),
        ])
        .expect("valid");
        assert!(acl.allows("alice", Produce, "team-a.orders"));
        assert!(acl.allows("alice", Delete, "team-a.orders"));
        assert!(!acl.allows("alice", Delete, "team-a.keep"));
        assert!(!acl.allows("alice", Produce, "team-a.frozen"));
        assert!(acl.allows("alice", Describe, "public"));
        assert!(acl.allows("bob", Describe, "public"));
        assert!(!acl.allows("bob", Fetch, "public"));
        assert!(!acl.allows("bob", Produce, "team-a.orders"));
        assert!(!acl.allows("alice", Produce, "team-b.orders"));
    }

    #[test]
    fn malformed_rules_are_refused() {
        use Operation::*;
        let both = AclRuleConfig {
            topic_prefix: Some("x".to_owned()),
            ..rule("a", AclEffect::Allow, &[Fetch], "x")
        };
        let neither = AclRuleConfig {
            topic: None,
            ..rule("a", AclEffect::Allow, &[Fetch], "x")
        };
        for bad in [
            both,
            neither,
            rule("a", AclEffect::Allow, &[], "x"),
            rule("", AclEffect::Allow, &[Fetch], "x"),
            rule("a", AclEffect::Allow, &[Fetch], "../x"),
        ] {
            let error = Acl::compile(&[rule("a", AclEffect::Allow, &[Fetch], "ok"), bad])
                .expect_err("refused");
            assert_eq!(error.index, 2);
        }
    }
}
