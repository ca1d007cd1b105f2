use super::*;
use proptest::prelude::*;

fn limits(delay: i64) -> Limits {
    Limits {
        min_session_timeout_ms: 10,
        max_session_timeout_ms: 100_000,
        initial_rebalance_delay_ms: delay,
    }
}

fn args(member: &str, new_id: &str) -> JoinArgs {
    JoinArgs {
        member_id: member.to_string(),
        instance_id: None,
        client_id: "c".into(),
        client_host: "/127.0.0.1".into(),
        session_timeout_ms: 1_000,
        rebalance_timeout_ms: 5_000,
        protocol_type: "consumer".into(),
        protocols: vec![
            ("range".into(), Bytes::from_static(b"r")),
            ("roundrobin".into(), Bytes::new()),
        ],
        require_known_member_id: false,
        new_member_id: new_id.to_string(),
    }
}

fn joins(g: &mut Group) -> Vec<(String, JoinResult)> {
    g.take_replies()
        .into_iter()
        .filter_map(|r| match r {
            Reply::Join(m, j) => Some((m, j)),
            _ => None,
        })
        .collect()
}

/// Brings up a stable group of `n` members; returns their ids, leader first.
fn stable(n: usize, now: i64) -> (Group, Vec<String>) {
    let mut g = Group::new("g", limits(0), now);
    let mut ids = vec![];
    for i in 0..n {
        let id = format!("m{i}");
        assert_eq!(g.join(args("", &id), now), Outcome::Wait(id.clone()));
        ids.push(id);
        let r = joins(&mut g);
        if i == 0 {
            assert_eq!(r.len(), 1);
        } else {
            // Existing members must rejoin; the new one waits for them.
            assert!(r.is_empty());
            for id in &ids[..i] {
                let _ = g.join(args(id, ""), now);
            }
            assert_eq!(joins(&mut g).len(), i + 1);
        }
    }
    let leader = g.leader.clone().unwrap();
    let assignments = ids
        .iter()
        .map(|id| (id.clone(), Bytes::from(format!("a-{id}"))))
        .collect();
    for id in ids.iter().filter(|id| **id != leader) {
        assert_eq!(
            g.sync(id, g.generation, &None, None, None, vec![], now),
            Outcome::Wait(id.clone())
        );
    }
    // The leader's assignment is answered once it is stored.
    assert_eq!(
        g.sync(&leader, g.generation, &None, None, None, assignments, now),
        Outcome::Wait(leader.clone())
    );
    assert_eq!(g.state, GroupState::CompletingRebalance);
    assert!(g.take_replies().is_empty());
    let token = g.store_request().expect("the assignment must be stored");
    assert_eq!(g.store_request(), None, "asked once");
    g.stored(token, Ok(()), now);
    let replies = g.take_replies();
    assert_eq!(replies.len(), n);
    for r in replies {
        match r {
            Reply::Sync(m, r) => assert_eq!(r.assignment, Bytes::from(format!("a-{m}"))),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(g.state, GroupState::Stable);
    (g, ids)
}

#[test]
fn a_sync_whose_assignment_fails_to_store_rebalances_and_says_why() {
    let (mut g, ids) = stable(2, 0);
    g.metadata_changed = false; // written by the coordinator
    let _ = g.join(args(&ids[0], ""), 10);
    let _ = g.join(args(&ids[1], ""), 10);
    assert_eq!(joins(&mut g).len(), 2);
    // A new generation with members writes nothing until it has an assignment.
    assert!(!g.metadata_changed);
    let leader = g.leader.clone().unwrap();
    let gen = g.generation;
    let _ = g.sync(&ids[1], gen, &None, None, None, vec![], 11);
    let _ = g.sync(&leader, gen, &None, None, None, vec![], 11);
    let token = g.store_request().unwrap();
    g.stored(token, Err(ResponseError::CoordinatorNotAvailable), 12);
    let errors: Vec<_> = g
        .take_replies()
        .into_iter()
        .map(|r| match r {
            Reply::Sync(_, r) => r.error,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        errors,
        vec![Some(ResponseError::CoordinatorNotAvailable); 2]
    );
    assert_eq!(g.state, GroupState::PreparingRebalance);
    // A late outcome of a store the group moved past changes nothing.
    g.stored(token, Ok(()), 13);
    assert_eq!(g.state, GroupState::PreparingRebalance);
}

#[test]
fn first_member_becomes_leader_and_gets_the_member_list() {
    let mut g = Group::new("g", limits(0), 0);
    assert_eq!(g.join(args("", "a"), 0), Outcome::Wait("a".into()));
    let r = joins(&mut g);
    assert_eq!(r[0].1.generation, 1);
    assert_eq!(r[0].1.leader, "a");
    assert_eq!(r[0].1.protocol.as_deref(), Some("range"));
    assert_eq!(r[0].1.members.len(), 1);
    assert_eq!(g.state, GroupState::CompletingRebalance);
}

#[test]
fn member_id_required_then_join() {
    let mut g = Group::new("g", limits(0), 0);
    let mut a = args("", "new-id");
    a.require_known_member_id = true;
    match g.join(a, 0) {
        Outcome::Now(r) => {
            assert_eq!(r.error, Some(ResponseError::MemberIdRequired));
            assert_eq!(r.member_id, "new-id");
        }
        o => panic!("{o:?}"),
    }
    assert_eq!(
        g.join(args("new-id", ""), 0),
        Outcome::Wait("new-id".into())
    );
    assert_eq!(joins(&mut g).len(), 1);
}

#[test]
fn stable_group_answers_and_fences() {
    let (mut g, ids) = stable(3, 0);
    let gen = g.generation;
    assert_eq!(g.heartbeat(&ids[1], gen, &None, 10), Ok(()));
    assert_eq!(
        g.heartbeat(&ids[1], gen - 1, &None, 10),
        Err(ResponseError::IllegalGeneration)
    );
    assert_eq!(
        g.heartbeat("stranger", gen, &None, 10),
        Err(ResponseError::UnknownMemberId)
    );
    assert_eq!(g.validate_commit(&ids[2], gen, &None), Ok(()));
    assert_eq!(
        g.validate_commit(&ids[2], gen + 1, &None),
        Err(ResponseError::IllegalGeneration)
    );
    assert_eq!(
        g.validate_commit("", -1, &None),
        Err(ResponseError::UnknownMemberId)
    );
    // A follower rejoining with the same protocols gets the current generation back.
    match g.join(args(&ids[1], ""), 10) {
        Outcome::Now(r) => assert_eq!((r.generation, r.error), (gen, None)),
        o => panic!("{o:?}"),
    }
}

#[test]
fn leaving_member_triggers_rebalance_without_it() {
    let (mut g, ids) = stable(3, 0);
    let gen = g.generation;
    assert_eq!(g.leave(&[(ids[2].clone(), None)], 5), vec![Ok(())]);
    assert_eq!(g.state, GroupState::PreparingRebalance);
    assert_eq!(
        g.heartbeat(&ids[0], gen, &None, 6),
        Err(ResponseError::RebalanceInProgress)
    );
    let _ = g.join(args(&ids[0], ""), 7);
    let _ = g.join(args(&ids[1], ""), 7);
    let r = joins(&mut g);
    assert_eq!(r.len(), 2);
    assert!(r.iter().all(|(_, j)| j.generation == gen + 1));
    assert_eq!(
        g.leave(&[("nobody".into(), None)], 8),
        vec![Err(ResponseError::UnknownMemberId)]
    );
}

#[test]
fn expired_session_removes_member_and_rebalance_deadline_completes() {
    let (mut g, ids) = stable(3, 0);
    // m0 and m1 heartbeat, m2 goes silent.
    for t in (100..=1_200).step_by(100) {
        g.heartbeat(&ids[0], g.generation, &None, t).ok();
        g.heartbeat(&ids[1], g.generation, &None, t).ok();
        g.tick(t);
    }
    assert_eq!(g.state, GroupState::PreparingRebalance);
    assert!(g.member(&ids[2]).is_none());
    // m1 rejoins; m0 never does: at the rebalance deadline m0 is dropped.
    let _ = g.join(args(&ids[1], ""), 1_300);
    g.tick(1_300 + 5_001);
    let r = joins(&mut g);
    assert!(r
        .iter()
        .any(|(m, j)| m == &ids[1] && j.error.is_none() && j.leader == ids[1]));
    assert!(g.member(&ids[0]).is_none());
}

#[test]
fn static_member_rejoin_keeps_assignment_without_rebalance() {
    let mut g = Group::new("g", limits(0), 0);
    let mut a = args("", "s1");
    a.instance_id = Some("inst".into());
    let _ = g.join(a.clone(), 0);
    joins(&mut g);
    g.sync(
        "s1",
        1,
        &a.instance_id,
        None,
        None,
        vec![("s1".into(), Bytes::from_static(b"A"))],
        0,
    );
    let token = g.store_request().unwrap();
    g.stored(token, Ok(()), 0);
    g.take_replies();
    assert_eq!(g.state, GroupState::Stable);
    // Restart: same instance id, no member id. Acknowledged once stored; if
    // storing fails, the member as it was comes back.
    a.new_member_id = "s1-lost".into();
    assert_eq!(g.join(a.clone(), 5), Outcome::Wait("s1-lost".into()));
    let token = g.store_request().unwrap();
    g.stored(token, Err(ResponseError::CoordinatorNotAvailable), 6);
    let (m, r) = joins(&mut g).remove(0);
    assert_eq!(
        (m.as_str(), r.error),
        ("s1-lost", Some(ResponseError::CoordinatorNotAvailable))
    );
    assert!(g.member("s1").is_some());
    a.new_member_id = "s1-again".into();
    assert_eq!(g.join(a.clone(), 10), Outcome::Wait("s1-again".into()));
    let token = g.store_request().unwrap();
    g.stored(token, Ok(()), 10);
    let (m, r) = joins(&mut g).remove(0);
    assert_eq!((m.as_str(), r.generation, r.error), ("s1-again", 1, None));
    assert_eq!(g.state, GroupState::Stable);
    // The old id is fenced.
    assert_eq!(
        g.heartbeat("s1", 1, &a.instance_id, 11),
        Err(ResponseError::FencedInstanceId)
    );
    match g.sync("s1-again", 1, &a.instance_id, None, None, vec![], 12) {
        Outcome::Now(r) => assert_eq!(r.assignment, Bytes::from_static(b"A")),
        o => panic!("{o:?}"),
    }
}

#[test]
fn protocol_selection_and_mismatch() {
    let mut g = Group::new("g", limits(0), 0);
    let _ = g.join(args("", "a"), 0);
    joins(&mut g);
    let mut b = args("", "b");
    b.protocols = vec![("cooperative-sticky".into(), Bytes::new())];
    match g.join(b, 0) {
        Outcome::Now(r) => assert_eq!(r.error, Some(ResponseError::InconsistentGroupProtocol)),
        o => panic!("{o:?}"),
    }
    let mut c = args("", "c");
    c.protocols = vec![
        ("roundrobin".into(), Bytes::new()),
        ("range".into(), Bytes::new()),
    ];
    let _ = g.join(c, 0);
    let _ = g.join(args("a", ""), 0);
    let r = joins(&mut g);
    // One vote each: the tie goes to the first member's preference.
    assert_eq!(r[0].1.protocol.as_deref(), Some("range"));
    let mut none = args("", "d");
    none.protocols.clear();
    match g.join(none, 0) {
        Outcome::Now(r) => assert_eq!(r.error, Some(ResponseError::InconsistentGroupProtocol)),
        o => panic!("{o:?}"),
    }
}

#[test]
fn bad_assignments_and_generations_are_refused() {
    let mut g = Group::new("g", limits(0), 0);
    let _ = g.join(args("", "a"), 0);
    joins(&mut g);
    let bad = vec![("ghost".into(), Bytes::new())];
    assert_eq!(
        g.sync("a", 1, &None, None, None, bad, 0),
        Outcome::Now(SyncResult::error(ResponseError::InvalidRequest))
    );
    let twice = vec![("a".into(), Bytes::new()), ("a".into(), Bytes::new())];
    assert_eq!(
        g.sync("a", 1, &None, None, None, twice, 0),
        Outcome::Now(SyncResult::error(ResponseError::InvalidRequest))
    );
    assert_eq!(g.state, GroupState::CompletingRebalance);
    assert_eq!(
        g.sync("a", 7, &None, None, None, vec![], 0),
        Outcome::Now(SyncResult::error(ResponseError::IllegalGeneration))
    );
    assert_eq!(
        g.sync("a", 1, &None, Some("connect"), None, vec![], 0),
        Outcome::Now(SyncResult::error(ResponseError::InconsistentGroupProtocol))
    );
    let mut s = args("", "x");
    s.session_timeout_ms = 1;
    match g.join(s, 0) {
        Outcome::Now(r) => assert_eq!(r.error, Some(ResponseError::InvalidSessionTimeout)),
        o => panic!("{o:?}"),
    }
}

#[test]
fn initial_delay_holds_the_first_rebalance() {
    let mut g = Group::new("g", limits(300), 0);
    let _ = g.join(args("", "a"), 0);
    assert!(joins(&mut g).is_empty());
    let _ = g.join(args("", "b"), 100);
    g.tick(200);
    assert!(joins(&mut g).is_empty());
    g.tick(300);
    let r = joins(&mut g);
    assert_eq!(r.len(), 2);
    assert!(r.iter().all(|(_, j)| j.generation == 1));
}

#[test]
fn offsets_expire_only_when_empty() {
    let (mut g, ids) = stable(1, 0);
    g.offsets.insert(
        ("t".into(), 0),
        Committed {
            offset: 5,
            leader_epoch: -1,
            metadata: None,
            commit_timestamp: 0,
            record_offset: 0,
        },
    );
    assert!(g.expired_offsets(1_000_000, 10).is_empty());
    g.leave(&[(ids[0].clone(), None)], 100);
    assert_eq!(g.state, GroupState::Empty);
    assert!(g.expired_offsets(105, 10).is_empty());
    let due = g.expired_offsets(200, 10);
    assert_eq!(due, vec![(("t".to_string(), 0), 0)]);
    // A commit written after the tombstones keeps its offset.
    g.offsets
        .get_mut(&("t".to_string(), 0))
        .unwrap()
        .record_offset = 7;
    g.forget_offsets(&[("t".to_string(), 0)], 5);
    assert_eq!(g.offsets.len(), 1);
    g.forget_offsets(&[("t".to_string(), 0)], 8);
    assert!(g.offsets.is_empty());
}

#[test]
fn a_group_being_deleted_takes_no_commits() {
    let (mut g, _) = stable(1, 0);
    g.members.clear();
    g.state = GroupState::Dead;
    assert_eq!(
        g.validate_commit("", -1, &None),
        Err(ResponseError::CoordinatorNotAvailable)
    );
}

#[derive(Debug, Clone)]
enum Op {
    Join(usize),
    Sync(usize),
    Heartbeat(usize),
    Leave(usize),
    Tick(i64),
    /// The oldest metadata write in flight completes (true) or fails.
    Stored(bool),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0usize..5).prop_map(Op::Join),
        (0usize..5).prop_map(Op::Sync),
        (0usize..5).prop_map(Op::Heartbeat),
        (0usize..5).prop_map(Op::Leave),
        (1i64..3_000).prop_map(Op::Tick),
        any::<bool>().prop_map(Op::Stored),
    ]
}

proptest! {
    /// Whatever members do, the group stays coherent: the leader is a member,
    /// generations never go back, a Stable group has answered every parked
    /// member, and every parked request gets exactly one answer.
    #[test]
    fn random_membership_keeps_the_group_coherent(ops in proptest::collection::vec(op(), 1..200)) {
        let mut g = Group::new("g", limits(0), 0);
        let mut now = 0i64;
        let mut known: Vec<Option<String>> = vec![None; 5];
        let mut parked: std::collections::HashSet<String> = Default::default();
        let mut stores: Vec<u64> = vec![];
        let mut last_gen = 0;
        for (n, o) in ops.into_iter().enumerate() {
            match o {
                Op::Join(i) => {
                    let id = known[i].clone().unwrap_or_default();
                    match g.join(args(&id, &format!("m{i}-{n}")), now) {
                        Outcome::Wait(m) => { known[i] = Some(m.clone()); parked.insert(format!("j{m}")); }
                        Outcome::Now(r) => if r.error.is_some() && r.error != Some(ResponseError::MemberIdRequired) { known[i] = None; },
                    }
                }
                Op::Sync(i) => if let Some(id) = known[i].clone() {
                    let assignments = if g.leader.as_deref() == Some(id.as_str()) {
                        g.members.values().map(|m| (m.id.clone(), Bytes::new())).collect()
                    } else { vec![] };
                    if let Outcome::Wait(m) = g.sync(&id, g.generation, &None, None, None, assignments, now) {
                        parked.insert(format!("s{m}"));
                    }
                },
                Op::Heartbeat(i) => if let Some(id) = known[i].clone() { let _ = g.heartbeat(&id, g.generation, &None, now); },
                Op::Leave(i) => if let Some(id) = known[i].take() { let _ = g.leave(&[(id, None)], now); },
                Op::Tick(dt) => { now += dt; g.tick(now); }
                Op::Stored(ok) => if !stores.is_empty() {
                    let t = stores.remove(0);
                    g.stored(t, if ok { Ok(()) } else { Err(ResponseError::CoordinatorNotAvailable) }, now);
                },
            }
            if let Some(t) = g.store_request() { stores.push(t); }
            for r in g.take_replies() {
                let key = match &r { Reply::Join(m, _) => format!("j{m}"), Reply::Sync(m, _) => format!("s{m}") };
                prop_assert!(parked.remove(&key), "reply to a member that was not waiting: {key}");
            }
            if let Some(l) = &g.leader { prop_assert!(g.member(l).is_some(), "leader {l} is not a member"); }
            prop_assert!(g.generation >= last_gen);
            last_gen = g.generation;
            if g.state == GroupState::Stable || g.state == GroupState::Empty {
                prop_assert!(parked.is_empty(), "{:?} with parked requests {parked:?}", g.state);
            }
            if g.state == GroupState::Empty { prop_assert!(g.members.is_empty()); }
        }
    }
}
