//! Group APIs: FindCoordinator, JoinGroup, SyncGroup, Heartbeat, LeaveGroup,
//! OffsetCommit, OffsetFetch, DescribeGroups, ListGroups, DeleteGroups,
//! OffsetDelete. Decoding and encoding only; the rules live in `group/`.

use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::find_coordinator_response::Coordinator as CoordinatorEntry;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::*;
use kafka_protocol::ResponseError;

use super::{str_bytes, Client, Services};
use crate::group::coordinator::CommitPartition;
use crate::group::state::{Committed, JoinArgs};
use sluice_security::Operation;

fn code(r: Result<(), ResponseError>) -> i16 {
    r.err().map(|e| e.code()).unwrap_or(0)
}

fn opt(s: &Option<StrBytes>) -> Option<String> {
    s.as_ref().map(|s| s.to_string())
}

use kafka_protocol::protocol::StrBytes;

pub fn find_coordinator(
    svc: &Services,
    req: FindCoordinatorRequest,
    version: i16,
    client: &Client,
) -> FindCoordinatorResponse {
    let view = svc.broker.view();
    let now = crate::broker::mono_ms();
    let entry = |key: StrBytes| -> CoordinatorEntry {
        let e = CoordinatorEntry::default().with_key(key.clone());
        let denied = match req.key_type {
            0 if !svc.authorize_group(client, Operation::Describe, &key) => {
                Some(ResponseError::GroupAuthorizationFailed)
            }
            1 if !svc.authorize_txn(client, Operation::Describe, &key) => {
                Some(ResponseError::TransactionalIdAuthorizationFailed)
            }
            _ => None,
        };
        if let Some(code) = denied {
            return e
                .with_node_id(BrokerId(-1))
                .with_port(-1)
                .with_error_code(code.code());
        }
        // The leader of the group's offsets partition, or of the
        // transactional id's transaction state partition.
        let (topic, p) = match req.key_type {
            0 => (sluice_api::OFFSETS_TOPIC, svc.groups.partition_for(&key)),
            1 => (
                sluice_api::TRANSACTION_STATE_TOPIC,
                svc.txns.partition_for(&key),
            ),
            other => {
                return e
                    .with_node_id(BrokerId(-1))
                    .with_port(-1)
                    .with_error_code(ResponseError::InvalidRequest.code())
                    .with_error_message(Some(str_bytes(format!(
                        "unknown coordinator key type {other}"
                    ))))
            }
        };
        let leader = view
            .record(topic, p)
            .and_then(|r| r.value.leader)
            .and_then(|l| view.node(l))
            .filter(|n| n.alive(now));
        match leader {
            Some(n) => {
                let (host, port) = n.info.address(&client.listener);
                e.with_node_id(BrokerId(n.info.id))
                    .with_host(str_bytes(host))
                    .with_port(i32::from(port))
            }
            None => e
                .with_node_id(BrokerId(-1))
                .with_port(-1)
                .with_error_code(ResponseError::CoordinatorNotAvailable.code())
                .with_error_message(Some(str_bytes(format!("{topic}-{p} has no leader yet")))),
        }
    };
    if version >= 4 {
        let coordinators = req.coordinator_keys.iter().cloned().map(entry).collect();
        return FindCoordinatorResponse::default().with_coordinators(coordinators);
    }
    let e = entry(req.key.clone());
    let mut r = FindCoordinatorResponse::default()
        .with_error_code(e.error_code)
        .with_node_id(e.node_id)
        .with_host(e.host)
        .with_port(e.port);
    if version >= 1 {
        r.error_message = e.error_message;
    }
    r
}

pub async fn join_group(
    svc: &Services,
    req: JoinGroupRequest,
    version: i16,
    client: &Client,
) -> JoinGroupResponse {
    let mut resp = JoinGroupResponse::default()
        .with_generation_id(-1)
        .with_member_id(req.member_id.clone());
    if version < 7 {
        resp.protocol_name = Some(StrBytes::default());
    }
    if req.group_id.is_empty() {
        return resp.with_error_code(ResponseError::InvalidGroupId.code());
    }
    if !svc.authorize_group(client, Operation::Read, &req.group_id) {
        return resp.with_error_code(ResponseError::GroupAuthorizationFailed.code());
    }
    let instance_id = opt(&req.group_instance_id);
    let prefix = instance_id
        .clone()
        .unwrap_or_else(|| client.client_id.clone());
    let args = JoinArgs {
        member_id: req.member_id.to_string(),
        instance_id,
        client_id: client.client_id.clone(),
        client_host: client.host.clone(),
        session_timeout_ms: i64::from(req.session_timeout_ms),
        rebalance_timeout_ms: if version >= 1 {
            i64::from(req.rebalance_timeout_ms)
        } else {
            i64::from(req.session_timeout_ms)
        },
        protocol_type: req.protocol_type.to_string(),
        protocols: req
            .protocols
            .iter()
            .map(|p| (p.name.to_string(), p.metadata.clone()))
            .collect(),
        require_known_member_id: version >= 4,
        new_member_id: format!("{prefix}-{}", uuid::Uuid::new_v4()),
    };
    let r = svc.groups.join(&req.group_id, args).await;
    resp.error_code = r.error.map(|e| e.code()).unwrap_or(0);
    resp.generation_id = r.generation;
    resp.leader = str_bytes(r.leader);
    resp.member_id = str_bytes(r.member_id);
    if version >= 7 {
        resp.protocol_type = r.protocol_type.map(str_bytes);
        resp.protocol_name = r.protocol.map(str_bytes);
    } else {
        resp.protocol_name = Some(str_bytes(r.protocol.unwrap_or_default()));
    }
    resp.members = r
        .members
        .into_iter()
        .map(|(id, instance, metadata)| {
            let mut m = JoinGroupResponseMember::default()
                .with_member_id(str_bytes(id))
                .with_metadata(metadata);
            if version >= 5 {
                m.group_instance_id = instance.map(str_bytes);
            }
            m
        })
        .collect();
    resp
}

pub async fn sync_group(
    svc: &Services,
    req: SyncGroupRequest,
    version: i16,
    client: &Client,
) -> SyncGroupResponse {
    if req.group_id.is_empty() {
        return SyncGroupResponse::default().with_error_code(ResponseError::InvalidGroupId.code());
    }
    if !svc.authorize_group(client, Operation::Read, &req.group_id) {
        return SyncGroupResponse::default()
            .with_error_code(ResponseError::GroupAuthorizationFailed.code());
    }
    let assignments = req
        .assignments
        .iter()
        .map(|a| (a.member_id.to_string(), a.assignment.clone()))
        .collect();
    let r = svc
        .groups
        .sync(
            &req.group_id,
            &req.member_id,
            req.generation_id,
            &opt(&req.group_instance_id),
            req.protocol_type.as_deref(),
            req.protocol_name.as_deref(),
            assignments,
        )
        .await;
    match r {
        Err(e) => SyncGroupResponse::default().with_error_code(e.code()),
        Ok(r) => {
            let mut resp = SyncGroupResponse::default()
                .with_error_code(r.error.map(|e| e.code()).unwrap_or(0))
                .with_assignment(r.assignment);
            if version >= 5 {
                resp.protocol_type = r.protocol_type.map(str_bytes);
                resp.protocol_name = r.protocol.map(str_bytes);
            }
            resp
        }
    }
}

pub fn heartbeat(
    svc: &Services,
    req: HeartbeatRequest,
    _version: i16,
    client: &Client,
) -> HeartbeatResponse {
    if req.group_id.is_empty() {
        return HeartbeatResponse::default().with_error_code(ResponseError::InvalidGroupId.code());
    }
    if !svc.authorize_group(client, Operation::Read, &req.group_id) {
        return HeartbeatResponse::default()
            .with_error_code(ResponseError::GroupAuthorizationFailed.code());
    }
    let r = svc.groups.heartbeat(
        &req.group_id,
        &req.member_id,
        req.generation_id,
        &opt(&req.group_instance_id),
    );
    HeartbeatResponse::default().with_error_code(code(r))
}

pub fn leave_group(
    svc: &Services,
    req: LeaveGroupRequest,
    version: i16,
    client: &Client,
) -> LeaveGroupResponse {
    if req.group_id.is_empty() {
        return LeaveGroupResponse::default().with_error_code(ResponseError::InvalidGroupId.code());
    }
    if !svc.authorize_group(client, Operation::Read, &req.group_id) {
        return LeaveGroupResponse::default()
            .with_error_code(ResponseError::GroupAuthorizationFailed.code());
    }
    let who: Vec<(String, Option<String>)> = if version >= 3 {
        req.members
            .iter()
            .map(|m| (m.member_id.to_string(), opt(&m.group_instance_id)))
            .collect()
    } else {
        vec![(req.member_id.to_string(), None)]
    };
    match svc.groups.leave(&req.group_id, &who) {
        Err(e) => LeaveGroupResponse::default().with_error_code(e.code()),
        Ok(results) if version >= 3 => LeaveGroupResponse::default().with_members(
            who.into_iter()
                .zip(results)
                .map(|((id, instance), r)| {
                    MemberResponse::default()
                        .with_member_id(str_bytes(id))
                        .with_group_instance_id(instance.map(str_bytes))
                        .with_error_code(code(r))
                })
                .collect(),
        ),
        Ok(results) => LeaveGroupResponse::default().with_error_code(code(results[0])),
    }
}

pub async fn offset_commit(
    svc: &Services,
    req: OffsetCommitRequest,
    _version: i16,
    client: &Client,
) -> OffsetCommitResponse {
    let group_error = if req.group_id.is_empty() {
        Some(ResponseError::InvalidGroupId)
    } else if !svc.authorize_group(client, Operation::Read, &req.group_id) {
        Some(ResponseError::GroupAuthorizationFailed)
    } else {
        None
    };
    // Offsets of topics the principal may not read are refused one by one.
    let readable: Vec<bool> = req
        .topics
        .iter()
        .map(|t| svc.authorize_topic(client, Operation::Read, &t.name))
        .collect();
    let parts: Vec<CommitPartition> = req
        .topics
        .iter()
        .zip(&readable)
        .filter(|(_, ok)| **ok)
        .flat_map(|(t, _)| {
            t.partitions.iter().map(|p| CommitPartition {
                topic: t.name.to_string(),
                partition: p.partition_index,
                offset: p.committed_offset,
                leader_epoch: p.committed_leader_epoch,
                metadata: opt(&p.committed_metadata),
            })
        })
        .collect();
    let results: Vec<i16> = match group_error {
        Some(e) => vec![e.code(); parts.len()],
        None => match svc
            .groups
            .commit(
                &req.group_id,
                &req.member_id,
                req.generation_id_or_member_epoch,
                &opt(&req.group_instance_id),
                parts,
            )
            .await
        {
            Ok(r) => r.into_iter().map(code).collect(),
            Err(e) => vec![e.code(); req.topics.iter().map(|t| t.partitions.len()).sum()],
        },
    };
    let mut it = results.into_iter();
    let topics = req
        .topics
        .iter()
        .zip(&readable)
        .map(|(t, ok)| {
            OffsetCommitResponseTopic::default()
                .with_name(t.name.clone())
                .with_partitions(
                    t.partitions
                        .iter()
                        .map(|p| {
                            let code = match (group_error, ok) {
                                (Some(e), _) => e.code(),
                                (None, true) => it.next().unwrap_or(0),
                                (None, false) => ResponseError::TopicAuthorizationFailed.code(),
                            };
                            OffsetCommitResponsePartition::default()
                                .with_partition_index(p.partition_index)
                                .with_error_code(code)
                        })
                        .collect(),
                )
        })
        .collect();
    OffsetCommitResponse::default().with_topics(topics)
}

type Fetched = Vec<((String, i32), Option<Committed>)>;
/// A partition's committed offset, or `Err` when its topic may not be
/// described.
type Visible = Result<Option<Committed>, ()>;
type TopicOffsets = Vec<(String, Vec<(i32, Visible)>)>;

/// Groups fetched offsets by topic, preserving first-seen topic order.
fn by_topic(fetched: Vec<((String, i32), Visible)>) -> TopicOffsets {
    let mut out: TopicOffsets = vec![];
    for ((t, p), c) in fetched {
        match out.iter_mut().find(|(name, _)| *name == t) {
            Some((_, v)) => v.push((p, c)),
            None => out.push((t, vec![(p, c)])),
        }
    }
    out
}

fn committed_fields(c: Option<Committed>) -> (i64, i32, String) {
    match c {
        Some(c) => (c.offset, c.leader_epoch, c.metadata.unwrap_or_default()),
        None => (-1, -1, String::new()),
    }
}

/// Partitions whose offsets wait for a transaction, when the client asked
/// for stable offsets only (KIP-447's `require_stable`).
fn unstable(svc: &Services, group: &str, require_stable: bool) -> Vec<(String, i32)> {
    if require_stable {
        svc.groups.unstable(group)
    } else {
        vec![]
    }
}

/// UNSTABLE_OFFSET_COMMIT (retriable) for such a partition, else none.
fn stability(unstable: &[(String, i32)], topic: &str, partition: i32) -> i16 {
    if unstable.iter().any(|(t, p)| t == topic && *p == partition) {
        ResponseError::UnstableOffsetCommit.code()
    } else {
        0
    }
}

pub fn offset_fetch(
    svc: &Services,
    req: OffsetFetchRequest,
    version: i16,
    client: &Client,
) -> OffsetFetchResponse {
    // DESCRIBE on the group; offsets of topics the principal may not
    // describe are left out of a fetch of all, refused when named.
    let group_ok = |g: &str| svc.authorize_group(client, Operation::Describe, g);
    let visible = |fetched: Fetched, named: bool| -> Vec<((String, i32), Visible)> {
        fetched
            .into_iter()
            .filter_map(|((t, p), c)| {
                if svc.authorize_topic(client, Operation::Describe, &t) {
                    Some(((t, p), Ok(c)))
                } else if named {
                    Some(((t, p), Err(())))
                } else {
                    None
                }
            })
            .collect()
    };
    if version >= 8 {
        let groups = req
            .groups
            .iter()
            .map(|g| {
                let wanted = g.topics.as_ref().map(|ts| {
                    ts.iter()
                        .flat_map(|t| t.partition_indexes.iter().map(|p| (t.name.to_string(), *p)))
                        .collect()
                });
                if !group_ok(&g.group_id) {
                    return OffsetFetchResponseGroup::default()
                        .with_group_id(g.group_id.clone())
                        .with_error_code(ResponseError::GroupAuthorizationFailed.code());
                }
                let named = wanted.is_some();
                let fetched = match svc.groups.fetch_offsets(&g.group_id, wanted) {
                    Ok(f) => visible(f, named),
                    Err(e) => {
                        return OffsetFetchResponseGroup::default()
                            .with_group_id(g.group_id.clone())
                            .with_error_code(e.code());
                    }
                };
                let unstable = unstable(svc, &g.group_id, req.require_stable);
                let topics = by_topic(fetched)
                    .into_iter()
                    .map(|(t, parts)| {
                        let partitions = parts
                            .into_iter()
                            .map(|(p, c)| {
                                let (code, c) = match c {
                                    Ok(c) => (stability(&unstable, &t, p), c),
                                    Err(()) => {
                                        (ResponseError::TopicAuthorizationFailed.code(), None)
                                    }
                                };
                                let (offset, epoch, metadata) = committed_fields(c);
                                OffsetFetchResponsePartitions::default()
                                    .with_partition_index(p)
                                    .with_committed_offset(offset)
                                    .with_committed_leader_epoch(epoch)
                                    .with_metadata(Some(str_bytes(metadata)))
                                    .with_error_code(code)
                            })
                            .collect();
                        OffsetFetchResponseTopics::default()
                            .with_name(TopicName(str_bytes(t)))
                            .with_partitions(partitions)
                    })
                    .collect();
                OffsetFetchResponseGroup::default()
                    .with_group_id(g.group_id.clone())
                    .with_topics(topics)
            })
            .collect();
        return OffsetFetchResponse::default().with_groups(groups);
    }
    let wanted = req.topics.as_ref().map(|ts| {
        ts.iter()
            .flat_map(|t| t.partition_indexes.iter().map(|p| (t.name.to_string(), *p)))
            .collect()
    });
    let named = wanted.is_some();
    let fetched = if group_ok(&req.group_id) {
        svc.groups.fetch_offsets(&req.group_id, wanted)
    } else {
        Err(ResponseError::GroupAuthorizationFailed)
    };
    let fetched = match fetched {
        Ok(f) => visible(f, named),
        Err(e) => {
            let mut r = OffsetFetchResponse::default();
            if version >= 2 {
                r.error_code = e.code();
            } else {
                // v1 has only per-partition errors.
                r.topics = req
                    .topics
                    .iter()
                    .flatten()
                    .map(|t| {
                        OffsetFetchResponseTopic::default()
                            .with_name(t.name.clone())
                            .with_partitions(
                                t.partition_indexes
                                    .iter()
                                    .map(|p| {
                                        OffsetFetchResponsePartition::default()
                                            .with_partition_index(*p)
                                            .with_committed_offset(-1)
                                            .with_error_code(e.code())
                                    })
                                    .collect(),
                            )
                    })
                    .collect();
            }
            return r;
        }
    };
    let unstable = unstable(svc, &req.group_id, version >= 7 && req.require_stable);
    let topics = by_topic(fetched)
        .into_iter()
        .map(|(t, parts)| {
            let partitions = parts
                .into_iter()
                .map(|(p, c)| {
                    let (code, c) = match c {
                        Ok(c) => (stability(&unstable, &t, p), c),
                        Err(()) => (ResponseError::TopicAuthorizationFailed.code(), None),
                    };
                    let (offset, epoch, metadata) = committed_fields(c);
                    let mut r = OffsetFetchResponsePartition::default()
                        .with_partition_index(p)
                        .with_committed_offset(offset)
                        .with_metadata(Some(str_bytes(metadata)))
                        .with_error_code(code);
                    if version >= 5 {
                        r.committed_leader_epoch = epoch;
                    }
                    r
                })
                .collect();
            OffsetFetchResponseTopic::default()
                .with_name(TopicName(str_bytes(t)))
                .with_partitions(partitions)
        })
        .collect();
    OffsetFetchResponse::default().with_topics(topics)
}

pub fn describe_groups(
    svc: &Services,
    req: DescribeGroupsRequest,
    version: i16,
    client: &Client,
) -> DescribeGroupsResponse {
    let groups = req
        .groups
        .iter()
        .map(|id| {
            let mut out = DescribedGroup::default().with_group_id(id.clone());
            if version >= 3 {
                out.authorized_operations = svc.authorized_ops(
                    client,
                    sluice_security::ResourceType::Group,
                    id,
                    super::ops::when(req.include_authorized_operations, super::ops::GROUP),
                );
            }
            if id.is_empty() {
                return out.with_error_code(ResponseError::InvalidGroupId.code());
            }
            if !svc.authorize_group(client, Operation::Describe, id) {
                return out.with_error_code(ResponseError::GroupAuthorizationFailed.code());
            }
            let d = match svc.groups.describe(id) {
                Ok(d) => d,
                Err(e) => return out.with_error_code(e.code()),
            };
            out.group_state = str_bytes(d.state);
            out.protocol_type = str_bytes(d.protocol_type);
            out.protocol_data = str_bytes(d.protocol);
            out.members = d
                .members
                .into_iter()
                .map(
                    |(member, instance, client_id, host, metadata, assignment)| {
                        let mut m = DescribedGroupMember::default()
                            .with_member_id(str_bytes(member))
                            .with_client_id(str_bytes(client_id))
                            .with_client_host(str_bytes(host))
                            .with_member_metadata(metadata)
                            .with_member_assignment(assignment);
                        if version >= 4 {
                            m.group_instance_id = instance.map(str_bytes);
                        }
                        m
                    },
                )
                .collect();
            out
        })
        .collect();
    DescribeGroupsResponse::default().with_groups(groups)
}

pub fn list_groups(
    svc: &Services,
    req: ListGroupsRequest,
    version: i16,
    client: &Client,
) -> ListGroupsResponse {
    // DESCRIBE on the cluster lists every group; else those the principal
    // may describe.
    let all = svc.authorize_cluster(client, Operation::Describe);
    let filter: Vec<String> = if version >= 4 {
        req.states_filter.iter().map(|s| s.to_lowercase()).collect()
    } else {
        vec![]
    };
    let groups = svc
        .groups
        .list()
        .into_iter()
        .filter(|(_, _, state)| filter.is_empty() || filter.contains(&state.to_lowercase()))
        .filter(|(id, _, _)| all || svc.authorize_group(client, Operation::Describe, id))
        .map(|(id, protocol_type, state)| {
            let mut g = ListedGroup::default()
                .with_group_id(GroupId(str_bytes(id)))
                .with_protocol_type(str_bytes(protocol_type));
            if version >= 4 {
                g.group_state = str_bytes(state);
            }
            g
        })
        .collect();
    ListGroupsResponse::default().with_groups(groups)
}

pub async fn delete_groups(
    svc: &Services,
    req: DeleteGroupsRequest,
    _version: i16,
    client: &Client,
) -> DeleteGroupsResponse {
    use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
    let mut results = Vec::with_capacity(req.groups_names.len());
    for g in &req.groups_names {
        let r = if g.is_empty() {
            Err(ResponseError::InvalidGroupId)
        } else if !svc.authorize_group(client, Operation::Delete, g) {
            Err(ResponseError::GroupAuthorizationFailed)
        } else {
            svc.groups.delete_group(g).await
        };
        results.push(
            DeletableGroupResult::default()
                .with_group_id(g.clone())
                .with_error_code(code(r)),
        );
    }
    DeleteGroupsResponse::default().with_results(results)
}

pub async fn offset_delete(
    svc: &Services,
    req: OffsetDeleteRequest,
    _version: i16,
    client: &Client,
) -> OffsetDeleteResponse {
    if !req.group_id.is_empty() && !svc.authorize_group(client, Operation::Delete, &req.group_id) {
        return OffsetDeleteResponse::default()
            .with_error_code(ResponseError::GroupAuthorizationFailed.code());
    }
    // Offsets of topics the principal may not read stay; those are refused.
    let readable: Vec<bool> = req
        .topics
        .iter()
        .map(|t| svc.authorize_topic(client, Operation::Read, &t.name))
        .collect();
    let parts: Vec<(String, i32)> = req
        .topics
        .iter()
        .zip(&readable)
        .filter(|(_, ok)| **ok)
        .flat_map(|(t, _)| {
            t.partitions
                .iter()
                .map(|p| (t.name.to_string(), p.partition_index))
        })
        .collect();
    let results = if req.group_id.is_empty() {
        Err(ResponseError::InvalidGroupId)
    } else {
        svc.groups.delete_offsets(&req.group_id, parts).await
    };
    match results {
        Err(e) => OffsetDeleteResponse::default().with_error_code(e.code()),
        Ok(results) => {
            let mut it = results.into_iter();
            let topics = req
                .topics
                .iter()
                .zip(&readable)
                .map(|(t, ok)| {
                    OffsetDeleteResponseTopic::default()
                        .with_name(t.name.clone())
                        .with_partitions(
                            t.partitions
                                .iter()
                                .map(|p| {
                                    OffsetDeleteResponsePartition::default()
                                        .with_partition_index(p.partition_index)
                                        .with_error_code(if *ok {
                                            it.next().map(code).unwrap_or(0)
                                        } else {
                                            ResponseError::TopicAuthorizationFailed.code()
                                        })
                                })
                                .collect(),
                        )
                })
                .collect();
            OffsetDeleteResponse::default().with_topics(topics)
        }
    }
}
