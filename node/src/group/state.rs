//! The classic consumer group state machine, as pure logic.
//!
//! Time is passed in (milliseconds), nothing here blocks or does I/O. Calls
//! return either an immediate answer or `Wait`; answers to members parked in
//! JoinGroup or SyncGroup come out of [`Group::take_replies`] whenever an
//! operation or [`Group::tick`] completes a phase. The coordinator glue
//! (`coordinator.rs`) owns the waiting requests and the persistence.
//!
//! States follow Kafka: Empty -> PreparingRebalance -> CompletingRebalance ->
//! Stable, back to PreparingRebalance on any membership or protocol change,
//! and Empty when the last member goes. A deleted group is Dead.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use kafka_protocol::ResponseError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
    Dead,
}

impl GroupState {
    pub fn name(&self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
            GroupState::Dead => "Dead",
        }
    }
}

/// Bounds the coordinator enforces (Kafka's `group.*` broker settings).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub min_session_timeout_ms: i64,
    pub max_session_timeout_ms: i64,
    pub initial_rebalance_delay_ms: i64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            min_session_timeout_ms: 6_000,
            max_session_timeout_ms: 1_800_000,
            initial_rebalance_delay_ms: 3_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i64,
    pub rebalance_timeout_ms: i64,
    /// (protocol name, metadata) in the member's order of preference.
    pub protocols: Vec<(String, Bytes)>,
    pub assignment: Bytes,
    pub last_seen: i64,
    awaiting_join: bool,
    awaiting_sync: bool,
}

impl Member {
    /// A member read back from persisted group metadata.
    pub fn restored(
        id: String,
        instance_id: Option<String>,
        client_id: String,
        client_host: String,
        (session_timeout_ms, rebalance_timeout_ms): (i64, i64),
        protocol: (String, Bytes),
        assignment: Bytes,
    ) -> Member {
        Member {
            id,
            instance_id,
            client_id,
            client_host,
            session_timeout_ms,
            rebalance_timeout_ms,
            protocols: vec![protocol],
            assignment,
            last_seen: 0,
            awaiting_join: false,
            awaiting_sync: false,
        }
    }

    pub fn metadata(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(n, _)| n == protocol)
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    }
}

/// A JoinGroup request, decoded.
#[derive(Debug, Clone)]
pub struct JoinArgs {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i64,
    pub rebalance_timeout_ms: i64,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
    /// JoinGroup v4+: a member without an id is given one and asked to rejoin.
    pub require_known_member_id: bool,
    /// The id to give this member if it is new (made by the caller).
    pub new_member_id: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct JoinResult {
    pub error: Option<ResponseError>,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub leader: String,
    pub member_id: String,
    /// Filled for the leader only: (member id, instance id, metadata).
    pub members: Vec<(String, Option<String>, Bytes)>,
}

impl JoinResult {
    pub fn error(error: ResponseError, member_id: &str) -> JoinResult {
        JoinResult {
            error: Some(error),
            generation: -1,
            protocol_type: None,
            protocol: None,
            leader: String::new(),
            member_id: member_id.to_string(),
            members: vec![],
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SyncResult {
    pub error: Option<ResponseError>,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub assignment: Bytes,
}

impl SyncResult {
    pub fn error(error: ResponseError) -> SyncResult {
        SyncResult {
            error: Some(error),
            protocol_type: None,
            protocol: None,
            assignment: Bytes::new(),
        }
    }
}

/// An answer for a member parked in JoinGroup or SyncGroup.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Join(String, JoinResult),
    Sync(String, SyncResult),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome<T> {
    Now(T),
    /// The member with this id waits; its answer comes as a [`Reply`].
    Wait(String),
}

/// Group metadata on its way to the ISR of the group's offsets partition.
/// As in Kafka, a SyncGroup is answered (and a static member's replacement
/// acknowledged) only once the record holding the result is replicated: a
/// coordinator failover can then never hand out a generation, or an
/// assignment, that the new coordinator does not know.
#[derive(Debug, Clone)]
struct Storing {
    token: u64,
    generation: i32,
    requested: bool,
    kind: StoringKind,
}

#[derive(Debug, Clone)]
enum StoringKind {
    /// The leader's assignment, by member.
    Assignment(HashMap<String, Bytes>),
    /// A static member took a new member id: the member as it was.
    StaticMember { key: u64, previous: Box<Member> },
}

/// A committed offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: Option<String>,
    pub commit_timestamp: i64,
    /// Where in `__consumer_offsets` this commit was written: of two
    /// commits of one partition, the later record wins, whatever order
    /// their replication completes in.
    pub record_offset: i64,
}

#[derive(Debug, Clone)]
pub struct Group {
    pub id: String,
    pub state: GroupState,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub leader: Option<String>,
    /// Members in the order they joined.
    pub members: BTreeMap<u64, Member>,
    pub offsets: BTreeMap<(String, i32), Committed>,
    /// When the group entered its current state.
    pub state_since: i64,
    /// Set when what is persisted about the group changed; the glue clears it.
    pub metadata_changed: bool,
    /// Offset commits written and waiting for replication: the group must
    /// not be forgotten meanwhile.
    pub pending_commits: u32,
    /// A change of group metadata that must be durable before the members
    /// waiting on it are answered (see [`Group::store_request`]).
    storing: Option<Storing>,
    store_tokens: u64,
    join_order: u64,
    pending: HashMap<String, i64>,
    static_members: HashMap<String, String>,
    rebalance_deadline: i64,
    earliest_join_completion: i64,
    sync_deadline: i64,
    replies: Vec<Reply>,
    limits: Limits,
}

impl Group {
    pub fn new(id: &str, limits: Limits, now: i64) -> Group {
        Group {
            id: id.to_string(),
            state: GroupState::Empty,
            generation: 0,
            protocol_type: None,
            protocol: None,
            leader: None,
            members: BTreeMap::new(),
            offsets: BTreeMap::new(),
            state_since: now,
            metadata_changed: false,
            pending_commits: 0,
            storing: None,
            store_tokens: 0,
            join_order: 0,
            pending: HashMap::new(),
            static_members: HashMap::new(),
            rebalance_deadline: 0,
            earliest_join_completion: 0,
            sync_deadline: 0,
            replies: vec![],
            limits,
        }
    }

    /// Restores a group from its persisted metadata: members are taken as
    /// alive now and must heartbeat within their session timeout.
    #[allow(clippy::too_many_arguments)]
    pub fn restore(
        id: &str,
        limits: Limits,
        now: i64,
        generation: i32,
        protocol_type: Option<String>,
        protocol: Option<String>,
        leader: Option<String>,
        members: Vec<Member>,
    ) -> Group {
        let mut g = Group::new(id, limits, now);
        g.generation = generation;
        g.protocol_type = protocol_type;
        g.protocol = protocol;
        g.leader = leader;
        for mut m in members {
            m.last_seen = now;
            m.awaiting_join = false;
            m.awaiting_sync = false;
            if let Some(i) = &m.instance_id {
                g.static_members.insert(i.clone(), m.id.clone());
            }
            g.join_order += 1;
            g.members.insert(g.join_order, m);
        }
        g.state = if g.members.is_empty() {
            GroupState::Empty
        } else {
            GroupState::Stable
        };
        g
    }

    pub fn take_replies(&mut self) -> Vec<Reply> {
        std::mem::take(&mut self.replies)
    }

    fn key_of(&self, member_id: &str) -> Option<u64> {
        self.members
            .iter()
            .find(|(_, m)| m.id == member_id)
            .map(|(k, _)| *k)
    }

    pub fn member(&self, member_id: &str) -> Option<&Member> {
        self.members.values().find(|m| m.id == member_id)
    }

    fn member_mut(&mut self, member_id: &str) -> Option<&mut Member> {
        self.members.values_mut().find(|m| m.id == member_id)
    }

    fn max_rebalance_timeout(&self) -> i64 {
        self.members
            .values()
            .map(|m| m.rebalance_timeout_ms)
            .max()
            .unwrap_or(0)
    }

    /// Protocols every member supports, in the first member's order.
    fn common_protocols(&self) -> Vec<String> {
        let mut it = self.members.values();
        let Some(first) = it.next() else {
            return vec![];
        };
        let mut common: Vec<String> = first.protocols.iter().map(|(n, _)| n.clone()).collect();
        for m in it {
            common.retain(|p| m.protocols.iter().any(|(n, _)| n == p));
        }
        common
    }

    fn check_identity(
        &self,
        member_id: &str,
        instance_id: &Option<String>,
    ) -> Result<(), ResponseError> {
        if let Some(i) = instance_id {
            match self.static_members.get(i) {
                Some(current) if current != member_id => {
                    return Err(ResponseError::FencedInstanceId)
                }
                _ => {}
            }
        }
        let m = self
            .member(member_id)
            .ok_or(ResponseError::UnknownMemberId)?;
        if instance_id.is_some() && &m.instance_id != instance_id {
            return Err(ResponseError::FencedInstanceId);
        }
        Ok(())
    }

    fn current_join_result(&self, member_id: &str) -> JoinResult {
        let is_leader = self.leader.as_deref() == Some(member_id);
        let protocol = self.protocol.clone().unwrap_or_default();
        JoinResult {
            error: None,
            generation: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol: self.protocol.clone(),
            leader: self.leader.clone().unwrap_or_default(),
            member_id: member_id.to_string(),
            members: if is_leader {
                self.members
                    .values()
                    .map(|m| (m.id.clone(), m.instance_id.clone(), m.metadata(&protocol)))
                    .collect()
            } else {
                vec![]
            },
        }
    }

    pub fn join(&mut self, a: JoinArgs, now: i64) -> Outcome<JoinResult> {
        let err = |e| Outcome::Now(JoinResult::error(e, &a.member_id));
        if self.state == GroupState::Dead {
            return err(ResponseError::CoordinatorNotAvailable);
        }
        if a.protocols.is_empty() || a.protocol_type.is_empty() {
            return err(ResponseError::InconsistentGroupProtocol);
        }
        if a.session_timeout_ms < self.limits.min_session_timeout_ms
            || a.session_timeout_ms > self.limits.max_session_timeout_ms
        {
            return err(ResponseError::InvalidSessionTimeout);
        }
        if !self.members.is_empty() {
            let common = self.common_protocols();
            let same_type = self.protocol_type.as_deref() == Some(a.protocol_type.as_str());
            let shares = a.protocols.iter().any(|(n, _)| common.contains(n));
            // A member that is the only one may change its protocols freely.
            let alone = self.members.len() == 1 && self.member(&a.member_id).is_some();
            if !alone && (!same_type || !shares) {
                return err(ResponseError::InconsistentGroupProtocol);
            }
        }

        if a.member_id.is_empty() {
            if let Some(instance) = a.instance_id.clone() {
                if let Some(old) = self.static_members.get(&instance).cloned() {
                    return self.replace_static_member(&old, a, now);
                }
                return self.add_member(a.new_member_id.clone(), a, now);
            }
            if a.require_known_member_id {
                let deadline = now + a.session_timeout_ms;
                self.pending.insert(a.new_member_id.clone(), deadline);
                return Outcome::Now(JoinResult::error(
                    ResponseError::MemberIdRequired,
                    &a.new_member_id,
                ));
            }
            return self.add_member(a.new_member_id.clone(), a, now);
        }

        if self.pending.remove(&a.member_id).is_some() {
            return self.add_member(a.member_id.clone(), a, now);
        }
        if let Err(e) = self.check_identity(&a.member_id, &a.instance_id) {
            return err(e);
        }
        let state = self.state;
        let is_leader = self.leader.as_deref() == Some(a.member_id.as_str());
        let m = self.member_mut(&a.member_id).expect("checked above");
        m.last_seen = now;
        m.session_timeout_ms = a.session_timeout_ms;
        m.rebalance_timeout_ms = a.rebalance_timeout_ms;
        let same_protocols = m.protocols == a.protocols;
        match state {
            GroupState::PreparingRebalance => {
                m.protocols = a.protocols;
                m.awaiting_join = true;
                self.maybe_complete_join(now);
                Outcome::Wait(a.member_id)
            }
            GroupState::CompletingRebalance if same_protocols => {
                Outcome::Now(self.current_join_result(&a.member_id))
            }
            GroupState::Stable if same_protocols && !is_leader => {
                Outcome::Now(self.current_join_result(&a.member_id))
            }
            _ => {
                m.protocols = a.protocols;
                m.awaiting_join = true;
                self.prepare_rebalance(now);
                self.maybe_complete_join(now);
                Outcome::Wait(a.member_id)
            }
        }
    }

    fn add_member(&mut self, id: String, a: JoinArgs, now: i64) -> Outcome<JoinResult> {
        if self.members.is_empty() {
            self.protocol_type = Some(a.protocol_type.clone());
        }
        if let Some(i) = &a.instance_id {
            self.static_members.insert(i.clone(), id.clone());
        }
        self.join_order += 1;
        self.members.insert(
            self.join_order,
            Member {
                id: id.clone(),
                instance_id: a.instance_id,
                client_id: a.client_id,
                client_host: a.client_host,
                session_timeout_ms: a.session_timeout_ms,
                rebalance_timeout_ms: a.rebalance_timeout_ms,
                protocols: a.protocols,
                assignment: Bytes::new(),
                last_seen: now,
                awaiting_join: true,
                awaiting_sync: false,
            },
        );
        if self.state != GroupState::PreparingRebalance {
            self.prepare_rebalance(now);
        }
        self.maybe_complete_join(now);
        Outcome::Wait(id)
    }

    /// A static member came back with a new member id: the old id is fenced.
    /// In a stable group with unchanged protocols it takes over the old
    /// member's assignment without a rebalance.
    fn replace_static_member(&mut self, old: &str, a: JoinArgs, now: i64) -> Outcome<JoinResult> {
        let new_id = a.new_member_id.clone();
        let key = self.key_of(old).expect("static members map to members");
        let m = self.members.get_mut(&key).expect("present");
        let previous = m.clone();
        if m.awaiting_join {
            self.replies.push(Reply::Join(
                old.to_string(),
                JoinResult::error(ResponseError::FencedInstanceId, old),
            ));
        }
        if m.awaiting_sync {
            self.replies.push(Reply::Sync(
                old.to_string(),
                SyncResult::error(ResponseError::FencedInstanceId),
            ));
        }
        let same_protocols = m.protocols == a.protocols;
        m.id = new_id.clone();
        m.client_id = a.client_id;
        m.client_host = a.client_host;
        m.session_timeout_ms = a.session_timeout_ms;
        m.rebalance_timeout_ms = a.rebalance_timeout_ms;
        m.last_seen = now;
        m.awaiting_join = false;
        m.awaiting_sync = false;
        if let Some(i) = &a.instance_id {
            self.static_members.insert(i.clone(), new_id.clone());
        }
        if self.leader.as_deref() == Some(old) {
            self.leader = Some(new_id.clone());
        }
        if self.state == GroupState::Stable && same_protocols && self.storing.is_none() {
            // Acknowledged once the new member id is stored; on failure the
            // member as it was comes back.
            let m = self.members.get_mut(&key).expect("present");
            m.awaiting_join = true;
            self.begin_store(StoringKind::StaticMember {
                key,
                previous: Box::new(previous),
            });
            return Outcome::Wait(new_id);
        }
        let m = self.members.get_mut(&key).expect("present");
        m.protocols = a.protocols;
        m.awaiting_join = true;
        if self.state != GroupState::PreparingRebalance {
            self.prepare_rebalance(now);
        }
        self.maybe_complete_join(now);
        Outcome::Wait(new_id)
    }

    fn prepare_rebalance(&mut self, now: i64) {
        // A store in flight no longer decides anything; its outcome is
        // ignored when it comes.
        self.storing = None;
        if self.state == GroupState::CompletingRebalance {
            for m in self.members.values_mut() {
                if m.awaiting_sync {
                    m.awaiting_sync = false;
                    self.replies.push(Reply::Sync(
                        m.id.clone(),
                        SyncResult::error(ResponseError::RebalanceInProgress),
                    ));
                }
            }
        }
        let was_empty = self.state == GroupState::Empty;
        self.state = GroupState::PreparingRebalance;
        self.state_since = now;
        let timeout = self.max_rebalance_timeout();
        self.rebalance_deadline = now + timeout;
        self.earliest_join_completion = if was_empty {
            now + self.limits.initial_rebalance_delay_ms.min(timeout)
        } else {
            now
        };
    }

    fn maybe_complete_join(&mut self, now: i64) {
        if self.state != GroupState::PreparingRebalance {
            return;
        }
        let all_joined = self.members.values().all(|m| m.awaiting_join) && self.pending.is_empty();
        if (all_joined && now >= self.earliest_join_completion) || now >= self.rebalance_deadline {
            self.complete_join(now);
        }
    }

    fn remove_member_key(&mut self, key: u64, error: ResponseError) {
        if let Some(m) = self.members.remove(&key) {
            if let Some(i) = &m.instance_id {
                if self.static_members.get(i) == Some(&m.id) {
                    self.static_members.remove(i);
                }
            }
            if m.awaiting_join {
                self.replies
                    .push(Reply::Join(m.id.clone(), JoinResult::error(error, &m.id)));
            }
            if m.awaiting_sync {
                self.replies
                    .push(Reply::Sync(m.id.clone(), SyncResult::error(error)));
            }
            if self.leader.as_deref() == Some(m.id.as_str()) {
                self.leader = None;
            }
        }
    }

    fn complete_join(&mut self, now: i64) {
        let absent: Vec<u64> = self
            .members
            .iter()
            .filter(|(_, m)| !m.awaiting_join)
            .map(|(k, _)| *k)
            .collect();
        for k in absent {
            self.remove_member_key(k, ResponseError::UnknownMemberId);
        }
        self.pending.clear();
        self.generation += 1;
        self.state_since = now;
        self.storing = None;
        if self.members.is_empty() {
            // Only an emptied group is written now (as Kafka does): a new
            // generation with members is written with its assignment.
            self.metadata_changed = true;
            self.state = GroupState::Empty;
            self.protocol = None;
            self.leader = None;
            return;
        }
        self.protocol = self.select_protocol();
        if self
            .leader
            .as_ref()
            .is_none_or(|l| self.member(l).is_none())
        {
            self.leader = self.members.values().next().map(|m| m.id.clone());
        }
        self.state = GroupState::CompletingRebalance;
        self.sync_deadline = now + self.max_rebalance_timeout();
        let ids: Vec<String> = self.members.values().map(|m| m.id.clone()).collect();
        for id in ids {
            let result = self.current_join_result(&id);
            let m = self.member_mut(&id).expect("present");
            m.awaiting_join = false;
            m.last_seen = now;
            self.replies.push(Reply::Join(id, result));
        }
    }

    /// Each member votes for its most preferred protocol among those all
    /// members support; the most votes win, ties going to the earlier one.
    fn select_protocol(&self) -> Option<String> {
        let common = self.common_protocols();
        let mut votes: Vec<(String, usize)> = common.iter().map(|p| (p.clone(), 0)).collect();
        for m in self.members.values() {
            if let Some((name, _)) = m.protocols.iter().find(|(n, _)| common.contains(n)) {
                if let Some(v) = votes.iter_mut().find(|(p, _)| p == name) {
                    v.1 += 1;
                }
            }
        }
        let max = votes.iter().map(|(_, n)| *n).max()?;
        votes.into_iter().find(|(_, n)| *n == max).map(|(p, _)| p)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn sync(
        &mut self,
        member_id: &str,
        generation: i32,
        instance_id: &Option<String>,
        protocol_type: Option<&str>,
        protocol: Option<&str>,
        assignments: Vec<(String, Bytes)>,
        now: i64,
    ) -> Outcome<SyncResult> {
        let err = |e| Outcome::Now(SyncResult::error(e));
        if let Err(e) = self.check_identity(member_id, instance_id) {
            return err(e);
        }
        if generation != self.generation {
            return err(ResponseError::IllegalGeneration);
        }
        if protocol_type.is_some_and(|t| Some(t) != self.protocol_type.as_deref())
            || protocol.is_some_and(|p| Some(p) != self.protocol.as_deref())
        {
            return err(ResponseError::InconsistentGroupProtocol);
        }
        match self.state {
            GroupState::Empty | GroupState::Dead => err(ResponseError::UnknownMemberId),
            GroupState::PreparingRebalance => err(ResponseError::RebalanceInProgress),
            GroupState::Stable => {
                let m = self.member_mut(member_id).expect("checked");
                m.last_seen = now;
                let assignment = m.assignment.clone();
                Outcome::Now(self.ok_sync(assignment))
            }
            GroupState::CompletingRebalance => {
                let is_leader = self.leader.as_deref() == Some(member_id);
                if is_leader {
                    // Every assignment must name a current member, once.
                    let mut seen = std::collections::HashSet::new();
                    for (id, _) in &assignments {
                        if self.member(id).is_none() || !seen.insert(id.clone()) {
                            return err(ResponseError::InvalidRequest);
                        }
                    }
                    let m = self.member_mut(member_id).expect("checked");
                    m.last_seen = now;
                    m.awaiting_sync = true;
                    if self.storing.is_none() {
                        // The assignment is answered once it is stored.
                        let by_member: HashMap<String, Bytes> = assignments.into_iter().collect();
                        self.begin_store(StoringKind::Assignment(by_member));
                    }
                    Outcome::Wait(member_id.to_string())
                } else {
                    let m = self.member_mut(member_id).expect("checked");
                    m.last_seen = now;
                    m.awaiting_sync = true;
                    Outcome::Wait(member_id.to_string())
                }
            }
        }
    }

    fn begin_store(&mut self, kind: StoringKind) {
        self.store_tokens += 1;
        self.storing = Some(Storing {
            token: self.store_tokens,
            generation: self.generation,
            requested: false,
            kind,
        });
        self.metadata_changed = true;
    }

    /// A metadata write whose replication the coordinator must wait for
    /// before calling [`stored`](Self::stored) with the returned token; at
    /// most once per change.
    pub fn store_request(&mut self) -> Option<u64> {
        let s = self.storing.as_mut().filter(|s| !s.requested)?;
        s.requested = true;
        Some(s.token)
    }

    /// The assignment the metadata record carries for `member`: the one
    /// being stored, else the current one.
    pub fn assignment_to_store(&self, member: &Member) -> Bytes {
        match &self.storing {
            Some(Storing {
                kind: StoringKind::Assignment(a),
                ..
            }) => a.get(&member.id).cloned().unwrap_or_default(),
            _ => member.assignment.clone(),
        }
    }

    /// The write for `token` is replicated (`Ok`) or failed. On success the
    /// members waiting on it are answered; on failure they get `Err`'s code
    /// and the group rebalances (a SyncGroup), or the static member's
    /// previous identity comes back. A token the group moved past is
    /// ignored.
    pub fn stored(&mut self, token: u64, result: Result<(), ResponseError>, now: i64) {
        let Some(s) = self.storing.take_if(|s| s.token == token) else {
            return;
        };
        if s.generation != self.generation {
            return;
        }
        match (s.kind, result) {
            (StoringKind::Assignment(mut by_member), Ok(())) => {
                for m in self.members.values_mut() {
                    m.assignment = by_member.remove(&m.id).unwrap_or_default();
                }
                self.state = GroupState::Stable;
                self.state_since = now;
                let waiting: Vec<(String, Bytes)> = self
                    .members
                    .values_mut()
                    .filter(|m| m.awaiting_sync)
                    .map(|m| {
                        m.awaiting_sync = false;
                        m.last_seen = now;
                        (m.id.clone(), m.assignment.clone())
                    })
                    .collect();
                for (id, assignment) in waiting {
                    let r = self.ok_sync(assignment);
                    self.replies.push(Reply::Sync(id, r));
                }
            }
            (StoringKind::Assignment(_), Err(e)) => {
                for m in self.members.values_mut() {
                    m.assignment = Bytes::new();
                    if m.awaiting_sync {
                        m.awaiting_sync = false;
                        self.replies
                            .push(Reply::Sync(m.id.clone(), SyncResult::error(e)));
                    }
                }
                self.prepare_rebalance(now);
            }
            (StoringKind::StaticMember { key, .. }, Ok(())) => {
                if let Some(m) = self.members.get_mut(&key) {
                    m.awaiting_join = false;
                    m.last_seen = now;
                    let id = m.id.clone();
                    let r = self.current_join_result(&id);
                    self.replies.push(Reply::Join(id, r));
                }
            }
            (StoringKind::StaticMember { key, previous }, Err(e)) => {
                if let Some(m) = self.members.get_mut(&key) {
                    let new_id = std::mem::replace(m, *previous).id;
                    let old_id = m.id.clone();
                    if let Some(i) = &m.instance_id {
                        self.static_members.insert(i.clone(), old_id.clone());
                    }
                    if self.leader.as_deref() == Some(new_id.as_str()) {
                        self.leader = Some(old_id);
                    }
                    self.replies
                        .push(Reply::Join(new_id.clone(), JoinResult::error(e, &new_id)));
                }
            }
        }
    }

    fn ok_sync(&self, assignment: Bytes) -> SyncResult {
        SyncResult {
            error: None,
            protocol_type: self.protocol_type.clone(),
            protocol: self.protocol.clone(),
            assignment,
        }
    }

    pub fn heartbeat(
        &mut self,
        member_id: &str,
        generation: i32,
        instance_id: &Option<String>,
        now: i64,
    ) -> Result<(), ResponseError> {
        if matches!(self.state, GroupState::Empty | GroupState::Dead) {
            return Err(ResponseError::UnknownMemberId);
        }
        self.check_identity(member_id, instance_id)?;
        if generation != self.generation {
            return Err(ResponseError::IllegalGeneration);
        }
        self.member_mut(member_id).expect("checked").last_seen = now;
        if self.state == GroupState::PreparingRebalance {
            return Err(ResponseError::RebalanceInProgress);
        }
        Ok(())
    }

    /// Removes members (LeaveGroup). Each entry is (member id, instance id);
    /// a static member may be named by its instance id alone.
    pub fn leave(
        &mut self,
        who: &[(String, Option<String>)],
        now: i64,
    ) -> Vec<Result<(), ResponseError>> {
        let mut results = Vec::with_capacity(who.len());
        let mut removed = false;
        for (member_id, instance_id) in who {
            let id = match (member_id.is_empty(), instance_id) {
                (true, Some(i)) => match self.static_members.get(i) {
                    Some(id) => id.clone(),
                    None => {
                        results.push(Err(ResponseError::UnknownMemberId));
                        continue;
                    }
                },
                _ => member_id.clone(),
            };
            if let Err(e) = self.check_identity(&id, instance_id) {
                results.push(Err(e));
                continue;
            }
            let key = self.key_of(&id).expect("checked");
            self.remove_member_key(key, ResponseError::UnknownMemberId);
            removed = true;
            results.push(Ok(()));
        }
        if removed {
            self.membership_changed(now);
        }
        results
    }

    fn membership_changed(&mut self, now: i64) {
        match self.state {
            GroupState::Stable | GroupState::CompletingRebalance => {
                self.prepare_rebalance(now);
                self.maybe_complete_join(now);
            }
            GroupState::PreparingRebalance => self.maybe_complete_join(now),
            GroupState::Empty | GroupState::Dead => {}
        }
    }

    /// Expires sessions and phase deadlines. Call periodically.
    pub fn tick(&mut self, now: i64) {
        self.pending.retain(|_, deadline| *deadline > now);
        let expired: Vec<u64> = self
            .members
            .iter()
            .filter(|(_, m)| !m.awaiting_join && m.last_seen + m.session_timeout_ms < now)
            .map(|(k, _)| *k)
            .collect();
        let any_expired = !expired.is_empty();
        for k in expired {
            self.remove_member_key(k, ResponseError::UnknownMemberId);
        }
        if any_expired {
            self.membership_changed(now);
        }
        match self.state {
            GroupState::PreparingRebalance => self.maybe_complete_join(now),
            GroupState::CompletingRebalance if now >= self.sync_deadline => {
                // The leader never sent its assignment: drop whoever did not
                // sync, and start over.
                let silent: Vec<u64> = self
                    .members
                    .iter()
                    .filter(|(_, m)| !m.awaiting_sync)
                    .map(|(k, _)| *k)
                    .collect();
                for k in silent {
                    self.remove_member_key(k, ResponseError::UnknownMemberId);
                }
                self.prepare_rebalance(now);
                self.maybe_complete_join(now);
            }
            _ => {}
        }
    }

    /// Checks that a member may commit offsets now (OffsetCommit).
    pub fn validate_commit(
        &self,
        member_id: &str,
        generation: i32,
        instance_id: &Option<String>,
    ) -> Result<(), ResponseError> {
        if self.state == GroupState::Dead {
            // Being deleted: the client finds the coordinator again.
            return Err(ResponseError::CoordinatorNotAvailable);
        }
        if generation < 0 && member_id.is_empty() && instance_id.is_none() {
            // A commit from outside any generation (a standalone consumer or an
            // admin tool) is only allowed while no member owns the group.
            return if self.members.is_empty() {
                Ok(())
            } else {
                Err(ResponseError::UnknownMemberId)
            };
        }
        self.check_identity(member_id, instance_id)?;
        if generation != self.generation {
            return Err(ResponseError::IllegalGeneration);
        }
        if self.state == GroupState::CompletingRebalance {
            return Err(ResponseError::RebalanceInProgress);
        }
        Ok(())
    }

    /// Offsets of an empty group older than `retention_ms` (counted from the
    /// later of the commit and the group becoming empty) are removed and
    /// returned.
    /// The offsets due to expire (the group is empty and they are older
    /// than the retention), with the record each was written in; the
    /// caller forgets them once their tombstones are replicated.
    pub fn expired_offsets(&self, now: i64, retention_ms: i64) -> Vec<((String, i32), i64)> {
        if self.state != GroupState::Empty {
            return vec![];
        }
        let since = self.state_since;
        self.offsets
            .iter()
            .filter(|(_, c)| now - c.commit_timestamp.max(since) > retention_ms)
            .map(|(k, c)| (k.clone(), c.record_offset))
            .collect()
    }

    /// Forgets offsets whose deletion is durable, unless a later commit
    /// (a record written after `written_before`) replaced one meanwhile.
    pub fn forget_offsets(&mut self, keys: &[(String, i32)], written_before: i64) {
        for k in keys {
            if self
                .offsets
                .get(k)
                .is_some_and(|c| c.record_offset < written_before)
            {
                self.offsets.remove(k);
            }
        }
    }
}

#[cfg(test)]
mod tests;
