//! Users and ACLs: DescribeUserScramCredentials,
//! AlterUserScramCredentials, CreateAcls, DescribeAcls and DeleteAcls, all
//! stored in the cluster's metadata (one security record, changed by
//! compare-and-swap) so every node enforces the same.

use std::collections::{BTreeMap, BTreeSet};

use kafka_protocol::messages::alter_user_scram_credentials_response::AlterUserScramCredentialsResult;
use kafka_protocol::messages::create_acls_request::AclCreation;
use kafka_protocol::messages::create_acls_response::AclCreationResult;
use kafka_protocol::messages::delete_acls_response::{
    DeleteAclsFilterResult, DeleteAclsMatchingAcl,
};
use kafka_protocol::messages::describe_acls_response::{AclDescription, DescribeAclsResource};
use kafka_protocol::messages::describe_user_scram_credentials_response::{
    CredentialInfo, DescribeUserScramCredentialsResult,
};
use kafka_protocol::messages::{
    AlterUserScramCredentialsRequest, AlterUserScramCredentialsResponse, CreateAclsRequest,
    CreateAclsResponse, DeleteAclsRequest, DeleteAclsResponse, DescribeAclsRequest,
    DescribeAclsResponse, DescribeUserScramCredentialsRequest,
    DescribeUserScramCredentialsResponse,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use sluice_security::{
    AclBinding, AclFilter, Mechanism, Operation, PatternType, Permission, ResourceType,
    ScramCredential,
};

use super::{str_bytes, Client, Services};

fn msg(s: impl Into<String>) -> Option<StrBytes> {
    Some(str_bytes(s))
}

/// Kafka's answer to ACL requests on a node without an authorizer.
const NO_AUTHORIZER: &str = "No Authorizer is configured on the broker";

/// Why an ACL request is refused as a whole: no authorizer, or the
/// principal may not do `op` on the cluster.
fn acl_gate(svc: &Services, client: &Client, op: Operation) -> Result<(), (ResponseError, String)> {
    if svc.security.authorizer.is_none() {
        return Err((ResponseError::SecurityDisabled, NO_AUTHORIZER.into()));
    }
    if !svc.authorize_cluster(client, op) {
        return Err((
            ResponseError::ClusterAuthorizationFailed,
            format!("{op:?} on the cluster is needed"),
        ));
    }
    Ok(())
}

pub async fn describe_user_scram_credentials(
    svc: &Services,
    req: DescribeUserScramCredentialsRequest,
    client: &Client,
) -> DescribeUserScramCredentialsResponse {
    let out = DescribeUserScramCredentialsResponse::default();
    if !svc.authorize_cluster(client, Operation::Describe) {
        return out
            .with_error_code(ResponseError::ClusterAuthorizationFailed.code())
            .with_error_message(msg("DESCRIBE on the cluster is needed"));
    }
    let view = svc.broker.view();
    let empty = BTreeMap::new();
    let users = view.security.as_ref().map_or(&empty, |s| &s.value.users);
    let describe = |name: &str| {
        let r = DescribeUserScramCredentialsResult::default().with_user(str_bytes(name));
        match users.get(name) {
            Some(creds) => r.with_credential_infos(
                creds
                    .iter()
                    .map(|(m, c)| {
                        CredentialInfo::default()
                            .with_mechanism(m.code())
                            .with_iterations(c.iterations as i32)
                    })
                    .collect(),
            ),
            None => r
                .with_error_code(ResponseError::ResourceNotFound.code())
                .with_error_message(msg(format!(
                    "Attempt to describe a user credential that does not exist: {name}"
                ))),
        }
    };
    let results = match req.users {
        // Null or empty: every user, as Kafka answers.
        None => users.keys().map(|u| describe(u)).collect(),
        Some(asked) if asked.is_empty() => users.keys().map(|u| describe(u)).collect(),
        Some(asked) => {
            let mut seen = BTreeSet::new();
            let dups: BTreeSet<String> = asked
                .iter()
                .filter(|u| !seen.insert(u.name.to_string()))
                .map(|u| u.name.to_string())
                .collect();
            seen.iter()
                .map(|u| {
                    if dups.contains(u) {
                        DescribeUserScramCredentialsResult::default()
                            .with_user(str_bytes(u.clone()))
                            .with_error_code(ResponseError::DuplicateResource.code())
                            .with_error_message(msg(format!("Cannot describe SCRAM credentials for the same user twice in a single request: {u}")))
                    } else {
                        describe(u)
                    }
                })
                .collect()
        }
    };
    out.with_results(results)
}

pub async fn alter_user_scram_credentials(
    svc: &Services,
    req: AlterUserScramCredentialsRequest,
    client: &Client,
) -> AlterUserScramCredentialsResponse {
    let names: BTreeSet<String> = req
        .deletions
        .iter()
        .map(|d| d.name.to_string())
        .chain(req.upsertions.iter().map(|u| u.name.to_string()))
        .collect();
    let result = |user: &str, code: ResponseError, m: Option<String>| {
        let r = AlterUserScramCredentialsResult::default().with_user(str_bytes(user));
        match m {
            Some(m) => r.with_error_code(code.code()).with_error_message(msg(m)),
            None => r,
        }
    };
    if !svc.authorize_cluster(client, Operation::Alter) {
        return AlterUserScramCredentialsResponse::default().with_results(
            names
                .iter()
                .map(|u| {
                    result(
                        u,
                        ResponseError::ClusterAuthorizationFailed,
                        Some("ALTER on the cluster is needed".into()),
                    )
                })
                .collect(),
        );
    }
    // Each user's changes are checked as a whole: one bad change refuses
    // every change of that user (as Kafka does), the others go on.
    let mut errors: BTreeMap<String, (ResponseError, String)> = BTreeMap::new();
    let mut seen: BTreeSet<(String, i8)> = BTreeSet::new();
    let mut deletions = vec![];
    let mut upserts = vec![];
    for d in &req.deletions {
        let user = d.name.to_string();
        if !seen.insert((user.clone(), d.mechanism)) {
            errors.entry(user.clone()).or_insert((
                ResponseError::DuplicateResource,
                format!("A user credential cannot be altered twice in the same request: {user}"),
            ));
        }
        match (user.is_empty(), Mechanism::from_code(d.mechanism)) {
            (true, _) => {
                errors.entry(user).or_insert((
                    ResponseError::UnacceptableCredential,
                    "Username must not be empty".into(),
                ));
            }
            (_, None) => {
                errors.entry(user).or_insert((
                    ResponseError::UnsupportedSaslMechanism,
                    format!("Unknown SCRAM mechanism {}", d.mechanism),
                ));
            }
            (_, Some(m)) => deletions.push((user, m)),
        }
    }
    for u in &req.upsertions {
        let user = u.name.to_string();
        if !seen.insert((user.clone(), u.mechanism)) {
            errors.entry(user.clone()).or_insert((
                ResponseError::DuplicateResource,
                format!("A user credential cannot be altered twice in the same request: {user}"),
            ));
        }
        let Some(m) = Mechanism::from_code(u.mechanism) else {
            errors.entry(user).or_insert((
                ResponseError::UnsupportedSaslMechanism,
                format!("Unknown SCRAM mechanism {}", u.mechanism),
            ));
            continue;
        };
        if user.is_empty() {
            errors.entry(user).or_insert((
                ResponseError::UnacceptableCredential,
                "Username must not be empty".into(),
            ));
            continue;
        }
        match ScramCredential::from_salted_password(
            m,
            &u.salted_password,
            &u.salt,
            i64::from(u.iterations),
        ) {
            Ok(c) => upserts.push((user, m, c)),
            Err(e) => {
                errors
                    .entry(user)
                    .or_insert((ResponseError::UnacceptableCredential, e.to_string()));
            }
        }
    }
    // Deleting a credential that does not exist is refused for that user.
    let view = svc.broker.view();
    let stored = view.security.as_ref().map(|s| &s.value);
    for (user, m) in &deletions {
        if stored.and_then(|s| s.credential(user, *m)).is_none() && !errors.contains_key(user) {
            errors.insert(
                user.clone(),
                (
                    ResponseError::ResourceNotFound,
                    format!("Attempt to delete a user credential that does not exist: {user} {m}"),
                ),
            );
        }
    }
    let deletions: Vec<_> = deletions
        .into_iter()
        .filter(|(u, _)| !errors.contains_key(u))
        .collect();
    let upserts: Vec<_> = upserts
        .into_iter()
        .filter(|(u, _, _)| !errors.contains_key(u))
        .collect();
    let written = if deletions.is_empty() && upserts.is_empty() {
        Ok(())
    } else {
        svc.broker
            .update_security(|mut rec| {
                for (user, m) in &deletions {
                    if let Some(creds) = rec.users.get_mut(user) {
                        creds.remove(m);
                        if creds.is_empty() {
                            rec.users.remove(user);
                        }
                    }
                }
                for (user, m, c) in &upserts {
                    rec.users
                        .entry(user.clone())
                        .or_default()
                        .insert(*m, c.clone());
                }
                Some(rec)
            })
            .await
    };
    let results = names
        .iter()
        .map(|u| match (errors.get(u), &written) {
            (Some((code, m)), _) => result(u, *code, Some(m.clone())),
            (None, Err(e)) => result(u, e.code, Some(e.message.clone())),
            (None, Ok(())) => result(u, ResponseError::UnknownServerError, None),
        })
        .collect();
    AlterUserScramCredentialsResponse::default().with_results(results)
}

/// The four codes of a binding or filter, each checked.
fn codes(
    resource_type: i8,
    pattern: i8,
    op: i8,
    perm: i8,
) -> Result<(ResourceType, PatternType, Operation, Permission), String> {
    Ok((
        ResourceType::from_code(resource_type)
            .ok_or_else(|| format!("unknown resource type {resource_type}"))?,
        PatternType::from_code(pattern).ok_or_else(|| format!("unknown pattern type {pattern}"))?,
        Operation::from_code(op).ok_or_else(|| format!("unknown operation {op}"))?,
        Permission::from_code(perm).ok_or_else(|| format!("unknown permission type {perm}"))?,
    ))
}

fn binding_of(c: &AclCreation) -> Result<AclBinding, String> {
    let (resource_type, pattern, operation, permission) = codes(
        c.resource_type,
        c.resource_pattern_type,
        c.operation,
        c.permission_type,
    )?;
    let binding = AclBinding {
        resource_type,
        name: c.resource_name.to_string(),
        pattern,
        principal: c.principal.to_string(),
        host: c.host.to_string(),
        operation,
        permission,
    };
    binding.validate().map_err(|e| e.to_string())?;
    Ok(binding)
}

#[allow(clippy::too_many_arguments)]
fn filter_of(
    resource_type: i8,
    name: Option<&StrBytes>,
    pattern: i8,
    principal: Option<&StrBytes>,
    host: Option<&StrBytes>,
    op: i8,
    perm: i8,
) -> Result<AclFilter, String> {
    let (resource_type, pattern, operation, permission) = codes(resource_type, pattern, op, perm)?;
    Ok(AclFilter {
        resource_type,
        name: name.map(|n| n.to_string()),
        pattern,
        principal: principal.map(|p| p.to_string()),
        host: host.map(|h| h.to_string()),
        operation,
        permission,
    })
}

pub async fn create_acls(
    svc: &Services,
    req: CreateAclsRequest,
    client: &Client,
) -> CreateAclsResponse {
    if let Err((code, m)) = acl_gate(svc, client, Operation::Alter) {
        let refused = |_| {
            AclCreationResult::default()
                .with_error_code(code.code())
                .with_error_message(msg(m.clone()))
        };
        return CreateAclsResponse::default()
            .with_results(req.creations.iter().map(refused).collect());
    }
    let parsed: Vec<Result<AclBinding, String>> = req.creations.iter().map(binding_of).collect();
    let good: Vec<AclBinding> = parsed.iter().filter_map(|p| p.clone().ok()).collect();
    let written = if good.is_empty() {
        Ok(())
    } else {
        svc.broker
            .update_security(|mut rec| {
                let before = rec.acls.len();
                for b in &good {
                    if !rec.acls.contains(b) {
                        rec.acls.push(b.clone());
                    }
                }
                (rec.acls.len() != before).then_some(rec)
            })
            .await
    };
    let results = parsed
        .into_iter()
        .map(|p| match (p, &written) {
            (Err(e), _) => AclCreationResult::default()
                .with_error_code(ResponseError::InvalidRequest.code())
                .with_error_message(msg(e)),
            (Ok(_), Err(e)) => AclCreationResult::default()
                .with_error_code(e.code.code())
                .with_error_message(msg(e.message.clone())),
            (Ok(_), Ok(())) => AclCreationResult::default(),
        })
        .collect();
    CreateAclsResponse::default().with_results(results)
}

/// Bindings grouped by resource, as Describe/DeleteAcls answer them.
fn by_resource(acls: &[&AclBinding]) -> BTreeMap<(i8, String, i8), Vec<AclBinding>> {
    let mut out: BTreeMap<_, Vec<AclBinding>> = BTreeMap::new();
    for b in acls {
        out.entry((b.resource_type.code(), b.name.clone(), b.pattern.code()))
            .or_default()
            .push((*b).clone());
    }
    out
}

pub async fn describe_acls(
    svc: &Services,
    req: DescribeAclsRequest,
    client: &Client,
) -> DescribeAclsResponse {
    let out = DescribeAclsResponse::default();
    if let Err((code, m)) = acl_gate(svc, client, Operation::Describe) {
        return out.with_error_code(code.code()).with_error_message(msg(m));
    }
    let filter = match filter_of(
        req.resource_type_filter,
        req.resource_name_filter.as_ref(),
        req.pattern_type_filter,
        req.principal_filter.as_ref(),
        req.host_filter.as_ref(),
        req.operation,
        req.permission_type,
    ) {
        Ok(f) => f,
        Err(e) => {
            return out
                .with_error_code(ResponseError::InvalidRequest.code())
                .with_error_message(msg(e))
        }
    };
    let view = svc.broker.view();
    let acls: Vec<&AclBinding> = view
        .security
        .iter()
        .flat_map(|s| s.value.acls.iter())
        .filter(|b| filter.matches(b))
        .collect();
    let resources = by_resource(&acls)
        .into_iter()
        .map(|((rt, name, pt), bindings)| {
            DescribeAclsResource::default()
                .with_resource_type(rt)
                .with_resource_name(str_bytes(name))
                .with_pattern_type(pt)
                .with_acls(
                    bindings
                        .into_iter()
                        .map(|b| {
                            AclDescription::default()
                                .with_principal(str_bytes(b.principal))
                                .with_host(str_bytes(b.host))
                                .with_operation(b.operation.code())
                                .with_permission_type(b.permission.code())
                        })
                        .collect(),
                )
        })
        .collect();
    out.with_resources(resources)
}

pub async fn delete_acls(
    svc: &Services,
    req: DeleteAclsRequest,
    client: &Client,
) -> DeleteAclsResponse {
    if let Err((code, m)) = acl_gate(svc, client, Operation::Alter) {
        let refused = |_| {
            DeleteAclsFilterResult::default()
                .with_error_code(code.code())
                .with_error_message(msg(m.clone()))
        };
        return DeleteAclsResponse::default()
            .with_filter_results(req.filters.iter().map(refused).collect());
    }
    let filters: Vec<Result<AclFilter, String>> = req
        .filters
        .iter()
        .map(|f| {
            filter_of(
                f.resource_type_filter,
                f.resource_name_filter.as_ref(),
                f.pattern_type_filter,
                f.principal_filter.as_ref(),
                f.host_filter.as_ref(),
                f.operation,
                f.permission_type,
            )
        })
        .collect();
    let good: Vec<AclFilter> = filters.iter().filter_map(|f| f.clone().ok()).collect();
    // What each filter removes, as the record stood when it was changed.
    let removed = std::sync::Mutex::new(Vec::<Vec<AclBinding>>::new());
    let written = svc
        .broker
        .update_security(|mut rec| {
            // Each removed binding is listed under the first filter that
            // matches it, as Kafka lists it.
            let mut per_filter: Vec<Vec<AclBinding>> = vec![vec![]; good.len()];
            for b in &rec.acls {
                if let Some(i) = good.iter().position(|f| f.matches(b)) {
                    per_filter[i].push(b.clone());
                }
            }
            let before = rec.acls.len();
            rec.acls.retain(|b| !good.iter().any(|f| f.matches(b)));
            let changed = rec.acls.len() != before;
            *removed.lock().expect("removed lock") = per_filter;
            changed.then_some(rec)
        })
        .await;
    let removed = removed.into_inner().expect("removed lock");
    let mut removed = removed.into_iter();
    let results = filters
        .into_iter()
        .map(|f| match (f, &written) {
            (Err(e), _) => DeleteAclsFilterResult::default()
                .with_error_code(ResponseError::InvalidRequest.code())
                .with_error_message(msg(e)),
            (Ok(_), Err(e)) => {
                removed.next();
                DeleteAclsFilterResult::default()
                    .with_error_code(e.code.code())
                    .with_error_message(msg(e.message.clone()))
            }
            (Ok(_), Ok(())) => DeleteAclsFilterResult::default().with_matching_acls(
                removed
                    .next()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|b| {
                        DeleteAclsMatchingAcl::default()
                            .with_resource_type(b.resource_type.code())
                            .with_resource_name(str_bytes(b.name))
                            .with_pattern_type(b.pattern.code())
                            .with_principal(str_bytes(b.principal))
                            .with_host(str_bytes(b.host))
                            .with_operation(b.operation.code())
                            .with_permission_type(b.permission.code())
                    })
                    .collect(),
            ),
        })
        .collect();
    DeleteAclsResponse::default().with_filter_results(results)
}
