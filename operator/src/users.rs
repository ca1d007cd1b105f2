//! The User controller: each `User`'s credential stored in the cluster's
//! metadata (a SCRAM-SHA-512 credential of a generated password) or a
//! client certificate of the clients' CA, either written to a Secret of
//! the User's name (owned by it), its ACLs stored for its principal, and
//! all three removed when the User is deleted (a finalizer holds it until
//! they are).
//!
//! Shaped like [`crate::groups`]: [`reconcile`] and [`error_policy`] under
//! a `kube::runtime::Controller`; what to store ([`bindings`]) is a pure
//! function of the object.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::chrono::Utc;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, Resource, ResourceExt};
use sluice_api::v1alpha1::{
    user_principal, AclOperation, AclPatternType, AclPermission, AclResourceType,
    AuthenticationType, User, UserStatus,
};
use sluice_coord::Coordination;
use sluice_security::acl::CLUSTER_NAME;
use sluice_security::{AclBinding, Operation, PatternType, Permission, ResourceType};
use time::OffsetDateTime;

use crate::certs::{Leaf, Pem};
use crate::cluster::{Names, OPERATOR_USER};
use crate::config::{Authentication, Settings, TlsSource};
use crate::groups::set_finalizer;
use crate::metrics::Metrics;
use crate::status::{condition, keep_transition_times};
use crate::tls::{self, LeafSecret, TlsError};

/// Held until the User's credential, ACLs and Secret are gone.
pub const FINALIZER: &str = "sluice.dev/user";

/// How often a User is looked at without a change: a credential or ACL
/// removed behind the operator's back comes back, a certificate is renewed.
const RESYNC: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("the cluster's metadata: {0}")]
    Metadata(#[from] sluice_coord::CoordError),
    #[error("{0}")]
    Tls(#[from] TlsError),
    #[error("the users and ACLs would take {0} bytes, more than the {max} the cluster's metadata keeps for them", max = sluice_coord::MAX_SECURITY_RECORD_BYTES)]
    Full(usize),
}

pub struct Context {
    pub client: kube::Client,
    pub coord: Arc<dyn Coordination>,
    pub settings: Settings,
    pub metrics: Arc<Metrics>,
}

fn resource_type(t: AclResourceType) -> ResourceType {
    match t {
        AclResourceType::Topic => ResourceType::Topic,
        AclResourceType::Group => ResourceType::Group,
        AclResourceType::Cluster => ResourceType::Cluster,
        AclResourceType::TransactionalId => ResourceType::TransactionalId,
    }
}

fn operation(o: AclOperation) -> Operation {
    match o {
        AclOperation::All => Operation::All,
        AclOperation::Read => Operation::Read,
        AclOperation::Write => Operation::Write,
        AclOperation::Create => Operation::Create,
        AclOperation::Delete => Operation::Delete,
        AclOperation::Alter => Operation::Alter,
        AclOperation::Describe => Operation::Describe,
        AclOperation::ClusterAction => Operation::ClusterAction,
        AclOperation::DescribeConfigs => Operation::DescribeConfigs,
        AclOperation::AlterConfigs => Operation::AlterConfigs,
        AclOperation::IdempotentWrite => Operation::IdempotentWrite,
    }
}

/// The ACL bindings a User's `spec.acls` stand for, each checked as
/// CreateAcls checks one; the first invalid rule is named.
pub fn bindings(u: &User) -> Result<Vec<AclBinding>, String> {
    let principal = user_principal(u);
    let mut out = vec![];
    for (i, rule) in u.spec.acls.iter().enumerate() {
        let kind = resource_type(rule.resource.kind);
        let name = match (kind, &rule.resource.name) {
            (ResourceType::Cluster, None) => CLUSTER_NAME.to_string(),
            (_, Some(n)) => n.clone(),
            (_, None) => {
                return Err(format!(
                    "acls[{i}]: the resource needs a name (* for every one)"
                ))
            }
        };
        for op in &rule.operations {
            let b = AclBinding {
                resource_type: kind,
                name: name.clone(),
                pattern: match rule.resource.pattern_type {
                    AclPatternType::Literal => PatternType::Literal,
                    AclPatternType::Prefixed => PatternType::Prefixed,
                },
                principal: principal.clone(),
                host: rule.host.clone(),
                operation: operation(*op),
                permission: match rule.permission {
                    AclPermission::Allow => Permission::Allow,
                    AclPermission::Deny => Permission::Deny,
                },
            };
            b.validate().map_err(|e| format!("acls[{i}]: {e}"))?;
            if !out.contains(&b) {
                out.push(b);
            }
        }
    }
    Ok(out)
}

/// Both principals a User's name can have had (it may have switched
/// authentication): its ACLs are kept under the current one only.
fn principals(name: &str) -> [String; 2] {
    [format!("User:{name}"), format!("User:CN={name}")]
}

/// Stores `acls` as the only ACLs of `name`'s principals, and its SCRAM
/// credential only when `password` is given (otherwise removes it).
async fn store(
    coord: &dyn Coordination,
    name: &str,
    acls: &[AclBinding],
    password: Option<&str>,
) -> Result<(), UserError> {
    if let Some(p) = password {
        tls::ensure_credential(coord, name, p).await?;
    }
    let ps = principals(name);
    sluice_coord::update_security::<UserError>(coord, |mut r| {
        let before = r.clone();
        r.acls.retain(|b| !ps.contains(&b.principal));
        r.acls.extend(acls.iter().cloned());
        if password.is_none() {
            r.users.remove(name);
        }
        // Same ACLs in another order is no change.
        let mut a = before.acls.clone();
        let mut b = r.acls.clone();
        a.sort();
        b.sort();
        if a == b && before.users == r.users {
            return Ok(None);
        }
        let size = serde_json::to_vec(&r).map_or(0, |b| b.len());
        if size > sluice_coord::MAX_SECURITY_RECORD_BYTES
            && size > serde_json::to_vec(&before).map_or(0, |b| b.len())
        {
            return Err(UserError::Full(size));
        }
        Ok(Some(r))
    })
    .await?;
    Ok(())
}

async fn write_status(
    api: &Api<User>,
    u: &User,
    ready: bool,
    reason: &str,
    message: String,
) -> Result<(), kube::Error> {
    let generation = u.metadata.generation.unwrap_or(0);
    let previous = u.status.clone().unwrap_or_default();
    let mut conditions = vec![condition("Ready", ready, reason, message, generation)];
    keep_transition_times(&mut conditions, &previous.conditions, Utc::now());
    let status = UserStatus {
        observed_generation: Some(generation),
        principal: Some(user_principal(u)),
        secret: ready.then(|| u.name_any()),
        conditions,
    };
    if u.status.as_ref() == Some(&status) {
        return Ok(());
    }
    api.patch_status(
        &u.name_any(),
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"status": status})),
    )
    .await?;
    Ok(())
}

/// One User: finalizer, deletion, credential and Secret, ACLs, status.
pub async fn reconcile(u: Arc<User>, ctx: Arc<Context>) -> Result<Action, UserError> {
    let started = Instant::now();
    let r = match reconcile_inner(&u, &ctx).await {
        Err(e @ UserError::Full(_)) => {
            let api: Api<User> =
                Api::namespaced(ctx.client.clone(), &u.namespace().unwrap_or_default());
            write_status(&api, &u, false, "MetadataFull", e.to_string()).await?;
            Ok(Action::requeue(RESYNC))
        }
        other => other,
    };
    ctx.metrics.reconciled("user", started.elapsed(), r.is_ok());
    r
}

async fn reconcile_inner(u: &User, ctx: &Context) -> Result<Action, UserError> {
    let ns = u.namespace().unwrap_or_default();
    let name = u.name_any();
    let api: Api<User> = Api::namespaced(ctx.client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    // The User's Secret: owned by it, or (cert-manager) written for the
    // Certificate the User owns, which carries the User's label.
    let ours = |s: &Secret| {
        s.owner_references()
            .iter()
            .any(|o| Some(&o.uid) == u.metadata.uid.as_ref())
            || (s.annotations().get("cert-manager.io/certificate-name") == Some(&name)
                && s.labels().get("sluice.dev/user") == Some(&name))
    };
    if u.metadata.deletion_timestamp.is_some() {
        if !u.finalizers().iter().any(|f| f == FINALIZER) {
            return Ok(Action::await_change());
        }
        store(ctx.coord.as_ref(), &name, &[], None).await?;
        if let Some(s) = secrets.get_opt(&name).await? {
            if ours(&s) {
                secrets.delete(&name, &Default::default()).await?;
            }
        }
        tracing::info!(user = %name, "credential, ACLs and Secret removed");
        set_finalizer(&api, u, FINALIZER, false).await?;
        return Ok(Action::await_change());
    }
    let s = &ctx.settings;
    let names = Names(&s.cluster_name);
    let reserved = [
        OPERATOR_USER.to_string(),
        names.cluster_ca(),
        names.clients_ca(),
        names.node_tls(),
        names.operator_user(),
    ];
    if reserved.contains(&name) {
        write_status(
            &api,
            u,
            false,
            "Reserved",
            format!("{name} is a name the operator keeps for itself (its user or its Secrets); choose another"),
        )
        .await?;
        return Ok(Action::await_change());
    }
    if !u.finalizers().iter().any(|f| f == FINALIZER) {
        set_finalizer(&api, u, FINALIZER, true).await?;
        return Ok(Action::await_change());
    }
    let acls = match bindings(u) {
        Ok(a) => a,
        Err(why) => {
            write_status(&api, u, false, "InvalidAcl", why).await?;
            return Ok(Action::await_change());
        }
    };
    let existing = secrets.get_opt(&name).await?;
    if let Some(s) = &existing {
        if !ours(s) {
            write_status(
                &api,
                u,
                false,
                "SecretConflict",
                format!("Secret {name} exists and does not belong to this User; it is left alone"),
            )
            .await?;
            return Ok(Action::requeue(RESYNC));
        }
    }
    let owner = u
        .controller_owner_ref(&())
        .expect("a stored User has a name and uid");
    let wanted = match s.security.authentication {
        Authentication::ScramSha512 => Some(AuthenticationType::ScramSha512),
        Authentication::Tls => Some(AuthenticationType::Tls),
        Authentication::None => None,
    };
    if wanted.is_some_and(|w| w != u.spec.authentication.kind) {
        write_status(
            &api,
            u,
            false,
            "AuthenticationMismatch",
            format!(
                "the cluster's client listener authenticates with {} (security.authentication); this User's type cannot log in there",
                s.security.protocol()
            ),
        )
        .await?;
        return Ok(Action::await_change());
    }
    if u.spec.authentication.kind == AuthenticationType::Tls && name.len() > 64 {
        write_status(
            &api,
            u,
            false,
            "InvalidName",
            "a certificate's common name holds at most 64 characters: choose a shorter name".into(),
        )
        .await?;
        return Ok(Action::await_change());
    }
    let cluster_ca = match s.security.tls {
        TlsSource::Operator => secrets
            .get_opt(&names.cluster_ca())
            .await?
            .and_then(|sec| tls::text(&sec, "ca.crt")),
        TlsSource::CertManager => secrets
            .get_opt(&names.node_tls())
            .await?
            .and_then(|sec| tls::text(&sec, "ca.crt")),
        TlsSource::None => None,
    };
    let mut labels = tls::labels(s);
    labels.insert("sluice.dev/user".into(), name.clone());
    if s.security.tls() && cluster_ca.is_none() {
        write_status(
            &api,
            u,
            false,
            "Waiting",
            "the cluster's CA is not made yet".into(),
        )
        .await?;
        return Ok(Action::requeue(Duration::from_secs(5)));
    }
    match u.spec.authentication.kind {
        AuthenticationType::ScramSha512 => {
            let password = existing
                .as_ref()
                .and_then(|sec| tls::text(sec, "password"))
                .unwrap_or_else(tls::new_password);
            let mut data = BTreeMap::from([
                ("username".to_string(), name.clone()),
                ("password".to_string(), password.clone()),
                (
                    "sasl.jaas.config".to_string(),
                    format!(
                        "org.apache.kafka.common.security.scram.ScramLoginModule required username=\"{name}\" password=\"{password}\";"
                    ),
                ),
            ]);
            if let Some(ca) = &cluster_ca {
                data.insert("ca.crt".into(), ca.clone());
            }
            let current = existing.as_ref().map(tls::texts);
            // The credential first: a Secret never holds a password the
            // nodes would refuse.
            store(ctx.coord.as_ref(), &name, &acls, Some(&password)).await?;
            if current.as_ref() != Some(&data) {
                tls::put_secret(&secrets, &name, data, labels, &owner, existing.as_ref()).await?;
            }
        }
        AuthenticationType::Tls => {
            let leaf = Leaf::Client {
                common_name: name.clone(),
            };
            // The ACLs first: a certificate is never handed out before
            // what it may do is stored.
            store(ctx.coord.as_ref(), &name, &acls, None).await?;
            match s.security.tls {
                TlsSource::None => {
                    write_status(
                        &api,
                        u,
                        false,
                        "TlsOff",
                        "tls authentication needs the cluster's TLS (security.tls)".into(),
                    )
                    .await?;
                    return Ok(Action::await_change());
                }
                TlsSource::Operator => {
                    let ca = secrets.get_opt(&names.clients_ca()).await?.and_then(|sec| {
                        Some(Pem {
                            cert: tls::text(&sec, "ca.crt")?,
                            key: tls::text(&sec, "ca.key")?,
                        })
                    });
                    let (Some(ca), Some(cluster_ca)) = (ca, cluster_ca) else {
                        write_status(
                            &api,
                            u,
                            false,
                            "Waiting",
                            "the cluster's CAs are not made yet".into(),
                        )
                        .await?;
                        return Ok(Action::requeue(Duration::from_secs(5)));
                    };
                    tls::ensure_leaf(
                        &secrets,
                        &ca,
                        LeafSecret {
                            name: &name,
                            cert_key: "user.crt",
                            key_key: "user.key",
                            leaf,
                            extra: BTreeMap::from([("ca.crt".to_string(), cluster_ca)]),
                            labels,
                            owner: owner.clone(),
                        },
                        s.security.cert_validity_days,
                        OffsetDateTime::now_utc(),
                    )
                    .await?;
                }
                TlsSource::CertManager => {
                    let cert = tls::certificate(s, &ns, &name, &leaf, &owner, &labels);
                    tls::apply_certificate(&ctx.client, &ns, &cert).await?;
                }
            }
        }
    }
    let how = match u.spec.authentication.kind {
        AuthenticationType::ScramSha512 => "SCRAM-SHA-512 credential",
        AuthenticationType::Tls => "client certificate",
    };
    write_status(
        &api,
        u,
        true,
        "Stored",
        format!(
            "{how} in Secret {name}; {} ACLs for {}",
            acls.len(),
            user_principal(u)
        ),
    )
    .await?;
    Ok(Action::requeue(RESYNC))
}

pub fn error_policy(u: Arc<User>, e: &UserError, _ctx: Arc<Context>) -> Action {
    tracing::warn!(user = %u.name_any(), error = %e, "reconciling a User failed");
    Action::requeue(Duration::from_secs(5))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_api::v1alpha1::{AclResource, AclRule, UserAuthentication, UserSpec};
    use sluice_security::Mechanism;

    const MECHANISM: Mechanism = Mechanism::Sha512;

    fn user(kind: AuthenticationType, acls: Vec<AclRule>) -> User {
        let mut u = User::new(
            "alice",
            UserSpec {
                authentication: UserAuthentication { kind },
                acls,
            },
        );
        u.metadata.uid = Some("u-1".into());
        u
    }

    fn rule(kind: AclResourceType, name: Option<&str>, ops: &[AclOperation]) -> AclRule {
        AclRule {
            resource: AclResource {
                kind,
                name: name.map(str::to_string),
                pattern_type: AclPatternType::Literal,
            },
            operations: ops.to_vec(),
            host: "*".into(),
            permission: AclPermission::Allow,
        }
    }

    #[test]
    fn rules_become_one_binding_per_operation_for_the_users_principal() {
        let u = user(
            AuthenticationType::ScramSha512,
            vec![
                rule(
                    AclResourceType::Topic,
                    Some("orders"),
                    &[
                        AclOperation::Read,
                        AclOperation::Describe,
                        AclOperation::Read,
                    ],
                ),
                rule(
                    AclResourceType::Cluster,
                    None,
                    &[AclOperation::IdempotentWrite],
                ),
            ],
        );
        let b = bindings(&u).unwrap();
        assert_eq!(b.len(), 3);
        assert!(b.iter().all(|b| b.principal == "User:alice"));
        assert_eq!(b[2].name, CLUSTER_NAME);
        let t = user(AuthenticationType::Tls, u.spec.acls.clone());
        assert!(bindings(&t)
            .unwrap()
            .iter()
            .all(|b| b.principal == "User:CN=alice"));
    }

    #[test]
    fn invalid_rules_are_named() {
        let u = user(
            AuthenticationType::ScramSha512,
            vec![rule(AclResourceType::Topic, None, &[AclOperation::Read])],
        );
        assert!(bindings(&u).unwrap_err().starts_with("acls[0]:"));
        let u = user(
            AuthenticationType::ScramSha512,
            vec![rule(
                AclResourceType::Cluster,
                Some("other"),
                &[AclOperation::Alter],
            )],
        );
        let e = bindings(&u).unwrap_err();
        assert!(e.contains("kafka-cluster"), "{e}");
    }

    #[tokio::test]
    async fn storing_replaces_the_users_acls_and_deleting_removes_everything() {
        let coord = sluice_coord::InMemory::new();
        let other = AclBinding {
            resource_type: ResourceType::Topic,
            name: "x".into(),
            pattern: PatternType::Literal,
            principal: "User:bob".into(),
            host: "*".into(),
            operation: Operation::Read,
            permission: Permission::Allow,
        };
        store(&coord, "bob", std::slice::from_ref(&other), Some("pw"))
            .await
            .unwrap();
        let u = user(
            AuthenticationType::ScramSha512,
            vec![rule(
                AclResourceType::Topic,
                Some("orders"),
                &[AclOperation::Read],
            )],
        );
        let mine = bindings(&u).unwrap();
        store(&coord, "alice", &mine, Some("secret")).await.unwrap();
        let v = coord.security().await.unwrap().unwrap();
        assert_eq!(v.value.acls.len(), 2);
        assert!(v
            .value
            .credential("alice", MECHANISM)
            .unwrap()
            .verify_password(MECHANISM, "secret"));
        // The same again writes nothing.
        store(&coord, "alice", &mine, Some("secret")).await.unwrap();
        assert_eq!(coord.security().await.unwrap().unwrap().version, v.version);
        // Deleted: alice's credential and ACLs go, bob's stay.
        store(&coord, "alice", &[], None).await.unwrap();
        let v = coord.security().await.unwrap().unwrap().value;
        assert_eq!(v.acls, vec![other]);
        assert!(v.users.contains_key("bob") && !v.users.contains_key("alice"));
    }

    fn ctx(client: kube::Client, coord: Arc<sluice_coord::InMemory>) -> Arc<Context> {
        Arc::new(Context {
            client,
            coord,
            settings: Settings::default(),
            metrics: Arc::new(Metrics::default()),
        })
    }

    fn stored(mut u: User) -> User {
        u.metadata.namespace = Some(crate::fixtures::NAMESPACE.into());
        u.metadata.generation = Some(1);
        u.metadata.resource_version = Some("7".into());
        u.metadata.finalizers = Some(vec![FINALIZER.into()]);
        u
    }

    /// A rule the model refuses is a status naming it, and nothing is
    /// stored or written.
    #[tokio::test]
    async fn an_invalid_acl_is_a_status_and_nothing_is_stored() {
        let (client, mut server) = crate::fixtures::client();
        let coord = Arc::new(sluice_coord::InMemory::new());
        let u = stored(user(
            AuthenticationType::ScramSha512,
            vec![rule(AclResourceType::Group, None, &[AclOperation::Read])],
        ));
        let object = serde_json::to_value(&u).unwrap();
        let run = tokio::spawn(reconcile(Arc::new(u), ctx(client, coord.clone())));
        let seen = server
            .expect(
                "PATCH",
                "/apis/sluice.dev/v1alpha1/namespaces/data/users/alice/status",
                200,
                |seen| {
                    let mut o = object.clone();
                    o["status"] = seen.body["status"].clone();
                    o
                },
            )
            .await;
        let ready = &seen.body["status"]["conditions"][0];
        assert_eq!(ready["reason"], "InvalidAcl");
        assert!(ready["message"].as_str().unwrap().starts_with("acls[0]:"));
        assert!(run.await.unwrap().is_ok());
        server.done().await;
        assert!(coord.security().await.unwrap().is_none());
    }

    /// Deleting a User removes its credential and ACLs, deletes its own
    /// Secret, then lets it go.
    #[tokio::test]
    async fn a_deleted_user_takes_its_credential_acls_and_secret() {
        let coord = Arc::new(sluice_coord::InMemory::new());
        let mut u = stored(user(
            AuthenticationType::ScramSha512,
            vec![rule(
                AclResourceType::Topic,
                Some("orders"),
                &[AclOperation::Read],
            )],
        ));
        store(coord.as_ref(), "alice", &bindings(&u).unwrap(), Some("pw"))
            .await
            .unwrap();
        u.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            Utc::now(),
        ));
        let (client, mut server) = crate::fixtures::client();
        let object = serde_json::to_value(&u).unwrap();
        let run = tokio::spawn(reconcile(Arc::new(u), ctx(client, coord.clone())));
        let secret = "/api/v1/namespaces/data/secrets/alice";
        server
            .expect("GET", secret, 200, |_| {
                serde_json::json!({"apiVersion": "v1", "kind": "Secret",
                    "metadata": {"name": "alice", "namespace": "data",
                                 "ownerReferences": [{"apiVersion": "sluice.dev/v1alpha1", "kind": "User",
                                                      "name": "alice", "uid": "u-1", "controller": true}]}})
            })
            .await;
        server
            .expect(
                "DELETE",
                secret,
                200,
                |_| serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
            )
            .await;
        let patch = server
            .expect(
                "PATCH",
                "/apis/sluice.dev/v1alpha1/namespaces/data/users/alice",
                200,
                |_| object.clone(),
            )
            .await;
        assert_eq!(patch.body["metadata"]["finalizers"], serde_json::json!([]));
        assert!(run.await.unwrap().is_ok());
        server.done().await;
        let left = coord.security().await.unwrap().unwrap().value;
        assert!(left.users.is_empty() && left.acls.is_empty(), "{left:?}");
    }
}
