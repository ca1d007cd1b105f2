//! Kafka's ACL model and the decision it makes, as pure functions: a
//! binding names a resource (literal or prefixed), a principal, a host, an
//! operation and allow or deny; a request is allowed when some binding
//! allows it (directly or by implication) and none denies it, unless the
//! principal is a super user. The codes are Kafka's wire codes.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

/// Kafka's name for the one cluster resource.
pub const CLUSTER_NAME: &str = "kafka-cluster";
/// A literal resource name that matches every name of its type.
pub const WILDCARD: &str = "*";

macro_rules! coded {
    ($(#[$m:meta])* $name:ident { $($variant:ident = $code:expr),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub enum $name { $($variant),+ }
        impl $name {
            pub fn code(self) -> i8 { match self { $($name::$variant => $code),+ } }
            pub fn from_code(code: i8) -> Option<$name> {
                match code { $($code => Some($name::$variant),)+ _ => None }
            }
        }
    };
}

coded!(
    /// What a binding is about. `Any` only in filters.
    ResourceType {
    Any = 1,
    Topic = 2,
    Group = 3,
    Cluster = 4,
    TransactionalId = 5,
    DelegationToken = 6,
    User = 7,
});

coded!(
    /// How a binding's name matches. `Any` and `Match` only in filters.
    PatternType {
    Any = 1,
    Match = 2,
    Literal = 3,
    Prefixed = 4,
});

coded!(Operation {
    Any = 1,
    All = 2,
    Read = 3,
    Write = 4,
    Create = 5,
    Delete = 6,
    Alter = 7,
    Describe = 8,
    ClusterAction = 9,
    DescribeConfigs = 10,
    AlterConfigs = 11,
    IdempotentWrite = 12,
    CreateTokens = 13,
    DescribeTokens = 14,
});

coded!(Permission {
    Any = 1,
    Deny = 2,
    Allow = 3,
});

/// One stored ACL.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AclBinding {
    pub resource_type: ResourceType,
    pub name: String,
    pub pattern: PatternType,
    /// `User:alice`, or `User:*` for every principal.
    pub principal: String,
    /// A client address, or `*` for every host.
    pub host: String,
    pub operation: Operation,
    pub permission: Permission,
}

/// Why CreateAcls refuses a binding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidAcl {
    #[error(
        "resource type {0:?} cannot carry ACLs here (topic, group, cluster, transactional id)"
    )]
    ResourceType(ResourceType),
    #[error("pattern type {0:?} is for filters; a binding is LITERAL or PREFIXED")]
    Pattern(PatternType),
    #[error("the resource name must not be empty")]
    EmptyName,
    #[error("the cluster resource is named {CLUSTER_NAME}, not {0}")]
    ClusterName(String),
    #[error("a PREFIXED pattern cannot be the wildcard")]
    PrefixedWildcard,
    #[error("operation {0:?} is for filters")]
    Operation(Operation),
    #[error("permission {0:?} is for filters; a binding allows or denies")]
    Permission(Permission),
    #[error("principal {0:?} is not of the form Type:name")]
    Principal(String),
    #[error("the host must not be empty (use * for every host)")]
    Host,
}

impl AclBinding {
    /// Checks a binding as CreateAcls must before storing it.
    pub fn validate(&self) -> Result<(), InvalidAcl> {
        use ResourceType as R;
        if !matches!(
            self.resource_type,
            R::Topic | R::Group | R::Cluster | R::TransactionalId
        ) {
            return Err(InvalidAcl::ResourceType(self.resource_type));
        }
        if !matches!(self.pattern, PatternType::Literal | PatternType::Prefixed) {
            return Err(InvalidAcl::Pattern(self.pattern));
        }
        if self.name.is_empty() {
            return Err(InvalidAcl::EmptyName);
        }
        if self.resource_type == R::Cluster && self.name != CLUSTER_NAME {
            return Err(InvalidAcl::ClusterName(self.name.clone()));
        }
        if self.pattern == PatternType::Prefixed && self.name == WILDCARD {
            return Err(InvalidAcl::PrefixedWildcard);
        }
        if self.operation == Operation::Any {
            return Err(InvalidAcl::Operation(self.operation));
        }
        if self.permission == Permission::Any {
            return Err(InvalidAcl::Permission(self.permission));
        }
        match self.principal.split_once(':') {
            Some((kind, name)) if !kind.is_empty() && !name.is_empty() => {}
            _ => return Err(InvalidAcl::Principal(self.principal.clone())),
        }
        if self.host.is_empty() {
            return Err(InvalidAcl::Host);
        }
        Ok(())
    }

    /// Whether this binding is about the resource `name` of type `rtype`.
    fn covers(&self, rtype: ResourceType, name: &str) -> bool {
        self.resource_type == rtype
            && match self.pattern {
                PatternType::Literal => self.name == name || self.name == WILDCARD,
                PatternType::Prefixed => name.starts_with(&self.name),
                _ => false,
            }
    }

    fn applies_to(&self, principal: &str, host: &str) -> bool {
        (self.principal == principal || self.principal == "User:*")
            && (self.host == host || self.host == WILDCARD)
    }
}

/// What DescribeAcls and DeleteAcls select.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclFilter {
    pub resource_type: ResourceType,
    pub name: Option<String>,
    pub pattern: PatternType,
    pub principal: Option<String>,
    pub host: Option<String>,
    pub operation: Operation,
    pub permission: Permission,
}

impl AclFilter {
    pub fn matches(&self, b: &AclBinding) -> bool {
        let resource =
            self.resource_type == ResourceType::Any || self.resource_type == b.resource_type;
        let name = match (self.pattern, &self.name) {
            (PatternType::Any, None) | (PatternType::Match, None) => true,
            (PatternType::Any, Some(n)) => &b.name == n,
            (PatternType::Match, Some(n)) => match b.pattern {
                PatternType::Literal => &b.name == n || b.name == WILDCARD,
                PatternType::Prefixed => n.starts_with(&b.name),
                _ => false,
            },
            (p, n) => b.pattern == p && n.as_ref().is_none_or(|n| &b.name == n),
        };
        resource
            && name
            && self.principal.as_ref().is_none_or(|p| &b.principal == p)
            && self.host.as_ref().is_none_or(|h| &b.host == h)
            && (self.operation == Operation::Any || self.operation == b.operation)
            && (self.permission == Permission::Any || self.permission == b.permission)
    }
}

/// Decides requests from the stored bindings.
#[derive(Debug, Clone, Default)]
pub struct Authorizer {
    pub super_users: BTreeSet<String>,
    /// `allow.everyone.if.no.acl.found`: a resource no binding mentions is
    /// open to everyone (off by default: what no ACL allows is denied).
    pub allow_if_no_acl: bool,
}

/// Operations that `op` being allowed also allows, as Kafka implies them.
fn implied_by(op: Operation) -> &'static [Operation] {
    use Operation::*;
    match op {
        Describe => &[Describe, Read, Write, Delete, Alter],
        DescribeConfigs => &[DescribeConfigs, AlterConfigs],
        Read => &[Read],
        Write => &[Write],
        Create => &[Create],
        Delete => &[Delete],
        Alter => &[Alter],
        ClusterAction => &[ClusterAction],
        AlterConfigs => &[AlterConfigs],
        IdempotentWrite => &[IdempotentWrite],
        CreateTokens => &[CreateTokens],
        DescribeTokens => &[DescribeTokens],
        Any | All => &[],
    }
}

impl Authorizer {
    pub fn is_super_user(&self, principal: &str) -> bool {
        self.super_users.contains(principal)
    }

    /// Whether `principal` connected from `host` may do `op` on the
    /// resource `name` of type `rtype`.
    pub fn allows(
        &self,
        acls: &[AclBinding],
        principal: &str,
        host: &str,
        op: Operation,
        rtype: ResourceType,
        name: &str,
    ) -> bool {
        if self.is_super_user(principal) {
            return true;
        }
        let mut any_for_resource = false;
        let mut allowed = false;
        for b in acls.iter().filter(|b| b.covers(rtype, name)) {
            any_for_resource = true;
            if !b.applies_to(principal, host) {
                continue;
            }
            match b.permission {
                Permission::Deny if b.operation == op || b.operation == Operation::All => {
                    return false
                }
                Permission::Allow
                    if b.operation == Operation::All || implied_by(op).contains(&b.operation) =>
                {
                    allowed = true
                }
                _ => {}
            }
        }
        allowed || (!any_for_resource && self.allow_if_no_acl)
    }

    /// Whether `principal` may do `op` on at least one resource of type
    /// `rtype` (Kafka's `authorizeByResourceType`: a producer with WRITE on
    /// some topic may be idempotent): some allow binding that no deny
    /// covers (a deny of the wildcard, of the same literal name, or of a
    /// prefix of its name); with `allow.everyone.if.no.acl.found`, also
    /// when no binding of that type exists at all.
    pub fn allows_some(
        &self,
        acls: &[AclBinding],
        principal: &str,
        host: &str,
        op: Operation,
        rtype: ResourceType,
    ) -> bool {
        if self.is_super_user(principal) {
            return true;
        }
        let relevant = |b: &&AclBinding| {
            b.resource_type == rtype
                && b.applies_to(principal, host)
                && (b.operation == op || b.operation == Operation::All)
        };
        let denies: Vec<&AclBinding> = acls
            .iter()
            .filter(relevant)
            .filter(|b| b.permission == Permission::Deny)
            .collect();
        let covered = |allow: &AclBinding| {
            denies.iter().any(|d| match d.pattern {
                PatternType::Literal => {
                    d.name == WILDCARD
                        || (allow.pattern == PatternType::Literal && d.name == allow.name)
                }
                PatternType::Prefixed => allow.name.starts_with(&d.name),
                _ => false,
            })
        };
        if denies
            .iter()
            .any(|d| d.pattern == PatternType::Literal && d.name == WILDCARD)
        {
            return false;
        }
        let allowed = acls
            .iter()
            .filter(relevant)
            .any(|b| b.permission == Permission::Allow && !covered(b));
        allowed || (self.allow_if_no_acl && !acls.iter().any(|b| b.resource_type == rtype))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn acl(
        rt: ResourceType,
        name: &str,
        p: PatternType,
        who: &str,
        op: Operation,
        perm: Permission,
    ) -> AclBinding {
        AclBinding {
            resource_type: rt,
            name: name.into(),
            pattern: p,
            principal: who.into(),
            host: "*".into(),
            operation: op,
            permission: perm,
        }
    }

    use Operation::*;
    use PatternType::*;
    use Permission::*;
    use ResourceType::*;

    #[test]
    fn nothing_is_allowed_without_an_acl_and_super_users_pass() {
        let mut a = Authorizer::default();
        assert!(!a.allows(&[], "User:alice", "1.2.3.4", Read, Topic, "t"));
        a.super_users.insert("User:admin".into());
        assert!(a.allows(&[], "User:admin", "1.2.3.4", Alter, Cluster, CLUSTER_NAME));
        a.allow_if_no_acl = true;
        assert!(a.allows(&[], "User:alice", "h", Read, Topic, "t"));
        let other = [acl(Topic, "t", Literal, "User:bob", Read, Allow)];
        assert!(
            !a.allows(&other, "User:alice", "h", Read, Topic, "t"),
            "an ACL exists for t"
        );
    }

    #[test]
    fn literal_prefixed_wildcard_and_implied_describe() {
        let a = Authorizer::default();
        let acls = [
            acl(Topic, "orders", Literal, "User:alice", Read, Allow),
            acl(Topic, "logs-", Prefixed, "User:alice", Write, Allow),
            acl(Group, "*", Literal, "User:alice", Read, Allow),
        ];
        let ok = |op, rt, n: &str| a.allows(&acls, "User:alice", "h", op, rt, n);
        assert!(ok(Read, Topic, "orders"));
        assert!(ok(Describe, Topic, "orders"), "READ implies DESCRIBE");
        assert!(!ok(Write, Topic, "orders"));
        assert!(!ok(Read, Topic, "orders2"));
        assert!(ok(Write, Topic, "logs-a"));
        assert!(!ok(Write, Topic, "log"));
        assert!(ok(Read, Group, "anything"));
        assert!(!a.allows(&acls, "User:bob", "h", Read, Topic, "orders"));
    }

    #[test]
    fn deny_wins_and_hosts_and_wildcard_principals_match() {
        let a = Authorizer::default();
        let mut acls = vec![
            acl(Topic, "t", Literal, "User:*", All, Allow),
            acl(Topic, "t", Literal, "User:mallory", Write, Deny),
        ];
        assert!(a.allows(&acls, "User:bob", "h", Write, Topic, "t"));
        assert!(!a.allows(&acls, "User:mallory", "h", Write, Topic, "t"));
        assert!(a.allows(&acls, "User:mallory", "h", Read, Topic, "t"));
        acls[1].host = "10.0.0.9".into();
        assert!(a.allows(&acls, "User:mallory", "10.0.0.8", Write, Topic, "t"));
        assert!(!a.allows(&acls, "User:mallory", "10.0.0.9", Write, Topic, "t"));
        assert!(a.allows_some(&acls, "User:bob", "h", Write, Topic));
        assert!(!a.allows_some(&acls, "User:carol", "h", Create, Group));
        // An allow a deny covers does not count.
        let covered = [
            acl(Topic, "logs-a", Literal, "User:x", Write, Allow),
            acl(Topic, "logs-", Prefixed, "User:x", Write, Deny),
        ];
        assert!(!a.allows_some(&covered, "User:x", "h", Write, Topic));
        let open = Authorizer {
            allow_if_no_acl: true,
            ..Default::default()
        };
        assert!(open.allows_some(&[], "User:x", "h", Write, Topic));
        assert!(!open.allows_some(&covered, "User:y", "h", Write, Topic));
    }

    #[test]
    fn validation_names_the_problem() {
        let good = acl(Topic, "t", Literal, "User:a", Read, Allow);
        assert_eq!(good.validate(), Ok(()));
        let bad = |f: &dyn Fn(&mut AclBinding)| {
            let mut b = good.clone();
            f(&mut b);
            b.validate().unwrap_err()
        };
        assert_eq!(
            bad(&|b| b.resource_type = User),
            InvalidAcl::ResourceType(User)
        );
        assert_eq!(bad(&|b| b.pattern = Match), InvalidAcl::Pattern(Match));
        assert_eq!(bad(&|b| b.name.clear()), InvalidAcl::EmptyName);
        assert!(matches!(
            bad(&|b| b.resource_type = Cluster),
            InvalidAcl::ClusterName(_)
        ));
        assert_eq!(
            bad(&|b| {
                b.pattern = Prefixed;
                b.name = "*".into()
            }),
            InvalidAcl::PrefixedWildcard
        );
        assert_eq!(
            bad(&|b| b.operation = Operation::Any),
            InvalidAcl::Operation(Operation::Any)
        );
        assert_eq!(
            bad(&|b| b.permission = Permission::Any),
            InvalidAcl::Permission(Permission::Any)
        );
        assert!(matches!(
            bad(&|b| b.principal = "alice".into()),
            InvalidAcl::Principal(_)
        ));
        assert_eq!(bad(&|b| b.host.clear()), InvalidAcl::Host);
    }

    #[test]
    fn filters_select_as_kafka_does() {
        let lit = acl(Topic, "orders", Literal, "User:a", Read, Allow);
        let wild = acl(Topic, "*", Literal, "User:a", Read, Allow);
        let pre = acl(Topic, "ord", Prefixed, "User:a", Read, Allow);
        let f = |p, n: Option<&str>| AclFilter {
            resource_type: ResourceType::Any,
            name: n.map(String::from),
            pattern: p,
            principal: None,
            host: None,
            operation: Operation::Any,
            permission: Permission::Any,
        };
        let sel = |fl: &AclFilter| [&lit, &wild, &pre].iter().filter(|b| fl.matches(b)).count();
        assert_eq!(sel(&f(PatternType::Any, None)), 3);
        assert_eq!(sel(&f(PatternType::Any, Some("orders"))), 1);
        assert_eq!(sel(&f(Match, Some("orders"))), 3);
        assert_eq!(sel(&f(Literal, Some("orders"))), 1);
        assert_eq!(sel(&f(Prefixed, None)), 1);
        let mut g = f(PatternType::Any, None);
        g.principal = Some("User:b".into());
        assert_eq!(sel(&g), 0);
    }

    #[test]
    fn codes_round_trip() {
        for c in 0..20 {
            if let Some(o) = Operation::from_code(c) {
                assert_eq!(o.code(), c);
            }
            if let Some(r) = ResourceType::from_code(c) {
                assert_eq!(r.code(), c);
            }
        }
        assert_eq!(Operation::from_code(0), None);
    }

    proptest! {
        /// A deny for an operation always wins over any allow, for anyone
        /// but a super user.
        #[test]
        fn deny_always_wins(ops in proptest::collection::vec(2i8..=14, 1..6), asked in 3i8..=14) {
            let asked = Operation::from_code(asked).unwrap();
            let mut acls: Vec<_> = ops.iter().map(|&o| acl(Topic, "t", Literal, "User:a", Operation::from_code(o).unwrap(), Allow)).collect();
            acls.push(acl(Topic, "t", Prefixed, "User:a", asked, Deny));
            let a = Authorizer::default();
            prop_assert!(!a.allows(&acls, "User:a", "h", asked, Topic, "t"));
            let mut s = Authorizer::default();
            s.super_users.insert("User:a".into());
            prop_assert!(s.allows(&acls, "User:a", "h", asked, Topic, "t"));
        }
    }
}
