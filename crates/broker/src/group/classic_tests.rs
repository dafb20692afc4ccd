//! The classic group state machine, rule by rule: joins (one, two, MEMBER_ID_REQUIRED, the
//! initial delay), the protocol vote, leader election and the relay of assignments, SyncGroup
//! waiting for the leader, heartbeats during a rebalance, session and rebalance timeouts,
//! LeaveGroup, static members, commit checks, and the refusal to mix with KIP-848 members.

use super::*;
use crate::group::assign::{Assignor, TopicCounts, TpSet};
use crate::group::state::{Heartbeat, SESSION_TIMEOUT_MIN_MS};

const G: &str = "g";
const SESSION: i32 = 10_000;
const REBALANCE: i32 = 30_000;
const DELAY: u64 = 3_000;

fn protocols(list: &[(&str, &str)]) -> Vec<JoinProtocol> {
    list.iter()
        .map(|(n, m)| JoinProtocol { name: (*n).to_owned(), metadata: Bytes::from(m.to_string()) })
        .collect()
}

fn request(member_id: &str) -> JoinGroupRequest {
    JoinGroupRequest {
        member_id: member_id.to_owned(),
        group_instance_id: None,
        require_known_member_id: false,
        protocol_type: "consumer".into(),
        protocols: protocols(&[("range", "meta")]),
        session_timeout_ms: SESSION,
        rebalance_timeout_ms: REBALANCE,
        client_id: "client".into(),
        client_host: "/127.0.0.1".into(),
    }
}

/// The state machine, a member-id counter, the time, and the replies delivered so far.
struct Harness {
    groups: Groups,
    now: u64,
    next_id: u64,
    joins: BTreeMap<String, Result<JoinGroupOutcome, GroupError>>,
    syncs: BTreeMap<String, Result<SyncGroupOutcome, GroupError>>,
}

impl Harness {
    fn new() -> Self {
        Harness {
            groups: Groups::new(),
            now: 1_000,
            next_id: 0,
            joins: BTreeMap::new(),
            syncs: BTreeMap::new(),
        }
    }

    fn collect(&mut self) {
        for reply in self.groups.take_replies() {
            match reply {
                ClassicReply::Join { group_id, member_id, result } => {
                    assert_eq!(group_id, G);
                    assert!(self.joins.insert(member_id, result).is_none(), "one join answer per join");
                }
                ClassicReply::Sync { group_id, member_id, result } => {
                    assert_eq!(group_id, G);
                    assert!(self.syncs.insert(member_id, result).is_none(), "one sync answer per sync");
                }
            }
        }
    }

    fn join(&mut self, req: JoinGroupRequest) -> Result<String, GroupError> {
        let next = &mut self.next_id;
        let mut ids = || {
            *next += 1;
            format!("{next}")
        };
        let r = self.groups.join_group(G, req, self.now, &mut ids).map(|w| w.member_id);
        self.collect();
        r
    }

    fn sync(
        &mut self,
        member_id: &str,
        generation: i32,
        assignments: &[(&str, &str)],
    ) -> Result<(), GroupError> {
        let req = SyncGroupRequest {
            member_id: member_id.to_owned(),
            generation_id: generation,
            group_instance_id: None,
            protocol_type: Some("consumer".into()),
            protocol_name: None,
            assignments: assignments
                .iter()
                .map(|(m, a)| SyncAssignment {
                    member_id: (*m).to_owned(),
                    assignment: Bytes::from(a.to_string()),
                })
                .collect(),
        };
        let r = self.groups.sync_group(G, req, self.now).map(|_| ());
        self.collect();
        r
    }

    fn heartbeat(&mut self, member_id: &str, generation: i32) -> Result<(), GroupError> {
        let hb = ClassicHeartbeat {
            member_id: member_id.to_owned(),
            generation_id: generation,
            group_instance_id: None,
        };
        self.groups.classic_heartbeat(G, &hb, self.now)
    }

    fn advance(&mut self, ms: u64) -> Vec<(String, String, Expiry)> {
        self.now += ms;
        let removed = self.groups.expire(self.now);
        self.collect();
        removed
    }

    fn joined(&mut self, member_id: &str) -> JoinGroupOutcome {
        self.joins.remove(member_id).expect("answered").expect("joined")
    }

    fn synced(&mut self, member_id: &str) -> Bytes {
        self.syncs.remove(member_id).expect("answered").expect("synced").assignment
    }

    /// Runs the initial delay out when members other than the first joined during it: the
    /// first delay sees them arrive and is extended once.
    fn through_extended_delay(&mut self) {
        self.advance(DELAY);
        assert!(self.joins.is_empty(), "members arrived during the delay: it is extended");
        self.advance(DELAY);
    }

    fn group(&self) -> &ClassicGroup {
        self.groups.classic(G).expect("group exists")
    }
}

fn code<T: std::fmt::Debug>(r: Result<T, GroupError>) -> GroupErrorCode {
    r.unwrap_err().code
}

/// Two members "client-1" (the leader) and "client-2" in a stable generation 1.
fn stable_pair(h: &mut Harness) -> (String, String) {
    let a = h.join(request("")).unwrap();
    let b = h.join(request("")).unwrap();
    h.through_extended_delay();
    assert_eq!(h.joined(&a).generation_id, 1);
    assert_eq!(h.joined(&b).generation_id, 1);
    h.sync(&b, 1, &[]).unwrap();
    h.sync(&a, 1, &[(&a, "A"), (&b, "B")]).unwrap();
    assert_eq!(h.synced(&a), "A");
    assert_eq!(h.synced(&b), "B");
    assert_eq!(h.group().state, ClassicState::Stable);
    (a, b)
}

#[test]
fn one_member_joins_after_the_initial_delay_and_leads() {
    let mut h = Harness::new();
    let a = h.join(request("")).unwrap();
    assert_eq!(a, "client-1", "Kafka's shape: client id, then a unique part");
    assert_eq!(h.group().state, ClassicState::PreparingRebalance);
    assert!(h.joins.is_empty(), "the join phase waits for the initial delay");
    h.advance(DELAY - 1);
    assert!(h.joins.is_empty());
    h.advance(1);
    let out = h.joined(&a);
    assert_eq!((out.generation_id, out.leader.as_str(), out.member_id.as_str()), (1, a.as_str(), a.as_str()));
    assert_eq!(
        (out.protocol_type.as_deref(), out.protocol_name.as_deref()),
        (Some("consumer"), Some("range"))
    );
    assert_eq!(out.members.len(), 1);
    assert_eq!(out.members[0].metadata, "meta");
    assert_eq!(h.group().state, ClassicState::CompletingRebalance);
    h.sync(&a, 1, &[(&a, "everything")]).unwrap();
    assert_eq!(h.synced(&a), "everything");
    assert_eq!(h.group().state, ClassicState::Stable);
}

#[test]
fn two_members_join_one_generation_and_the_leader_sees_both() {
    let mut h = Harness::new();
    let a = h.join(request("")).unwrap();
    let mut second = request("");
    second.protocols = protocols(&[("range", "meta-b")]);
    let b = h.join(second).unwrap();
    h.through_extended_delay();
    let leader = h.joined(&a);
    let follower = h.joined(&b);
    assert_eq!(leader.leader, a);
    assert_eq!(follower.leader, a);
    assert_eq!(follower.members, Vec::new(), "only the leader gets the members");
    let seen: Vec<(&str, &[u8])> =
        leader.members.iter().map(|m| (m.member_id.as_str(), &m.metadata[..])).collect();
    assert_eq!(seen, vec![(a.as_str(), &b"meta"[..]), (b.as_str(), &b"meta-b"[..])]);
}

#[test]
fn the_initial_delay_is_extended_while_members_arrive_but_not_past_the_rebalance_timeout() {
    let mut h = Harness::new();
    let mut req = request("");
    req.rebalance_timeout_ms = 7_000;
    let a = h.join(req.clone()).unwrap();
    h.advance(2_000);
    h.join(req.clone()).unwrap();
    h.advance(1_000);
    assert!(h.joins.is_empty(), "a member arrived during the delay: extended");
    h.advance(2_000);
    h.join(req.clone()).unwrap();
    h.advance(1_000);
    assert!(h.joins.is_empty(), "extended again, by the 1 s left of the rebalance timeout");
    h.join(req).unwrap();
    h.advance(1_000);
    assert_eq!(h.joins.len(), 4, "7 s after the first join at the latest");
    assert_eq!(h.joined(&a).members.len(), 4);
}

#[test]
fn a_v4_member_is_told_its_id_first() {
    let mut h = Harness::new();
    let mut req = request("");
    req.require_known_member_id = true;
    let e = h.join(req.clone()).unwrap_err();
    assert_eq!(e.code, GroupErrorCode::MemberIdRequired);
    assert_eq!(e.code.code(), 79);
    let id = e.member_id.expect("the id comes with the error");
    assert!(h.group().members.is_empty() && h.group().pending.contains_key(&id));
    req.member_id = id.clone();
    assert_eq!(h.join(req).unwrap(), id);
    h.advance(DELAY);
    assert_eq!(h.joined(&id).generation_id, 1);
}

#[test]
fn a_pending_member_id_lapses_after_its_session_timeout() {
    let mut h = Harness::new();
    let mut req = request("");
    req.require_known_member_id = true;
    h.join(req).unwrap_err();
    h.advance(SESSION as u64);
    assert!(h.groups.classic(G).is_none(), "nothing left: the group is forgotten");
}

#[test]
fn the_protocol_is_voted_among_those_every_member_supports() {
    let mut h = Harness::new();
    let mut a = request("");
    a.protocols = protocols(&[("cooperative-sticky", ""), ("range", "")]);
    let mut b = request("");
    b.protocols = protocols(&[("roundrobin", ""), ("cooperative-sticky", ""), ("range", "")]);
    let mut c = request("");
    c.protocols = protocols(&[("range", ""), ("cooperative-sticky", "")]);
    let a = h.join(a).unwrap();
    h.join(b).unwrap();
    h.join(c).unwrap();
    h.through_extended_delay();
    // Candidates: cooperative-sticky, range. Votes: a and b for cooperative-sticky, c range.
    assert_eq!(h.joined(&a).protocol_name.as_deref(), Some("cooperative-sticky"));
    assert_eq!(h.group().select_protocol().as_deref(), Some("cooperative-sticky"));
}

#[test]
fn a_tie_goes_to_the_smallest_name() {
    let mut g = ClassicGroup::default();
    for (id, list) in [("a", [("x", ""), ("b", "")]), ("b", [("b", ""), ("x", "")])] {
        let mut m = member(id);
        m.protocols = protocols(&list);
        g.members.insert(id.to_owned(), m);
    }
    assert_eq!(g.select_protocol().as_deref(), Some("b"));
}

fn member(id: &str) -> ClassicMember {
    ClassicMember {
        id: id.to_owned(),
        instance_id: None,
        client_id: String::new(),
        client_host: String::new(),
        session_timeout_ms: 10_000,
        rebalance_timeout_ms: 10_000,
        protocols: Vec::new(),
        assignment: Bytes::new(),
        last_heartbeat_ms: 0,
        awaiting_join: false,
        awaiting_sync: false,
        synced: false,
        seq: 0,
    }
}

#[test]
fn incompatible_members_are_refused() {
    let mut h = Harness::new();
    h.join(request("")).unwrap();
    let mut other_type = request("");
    other_type.protocol_type = "connect".into();
    assert_eq!(code(h.join(other_type)), GroupErrorCode::InconsistentGroupProtocol);
    let mut no_common = request("");
    no_common.protocols = protocols(&[("roundrobin", "")]);
    assert_eq!(code(h.join(no_common)), GroupErrorCode::InconsistentGroupProtocol);
    let mut none = request("");
    none.protocols.clear();
    assert_eq!(code(h.join(none)), GroupErrorCode::InconsistentGroupProtocol);
    assert_eq!(h.group().members.len(), 1);
}

#[test]
fn requests_are_bounded() {
    let mut h = Harness::new();
    let mut short = request("");
    short.session_timeout_ms = (SESSION_TIMEOUT_MIN_MS - 1) as i32;
    assert_eq!(code(h.join(short)), GroupErrorCode::InvalidSessionTimeout);
    let mut long = request("");
    long.session_timeout_ms = i32::MAX;
    assert_eq!(code(h.join(long)), GroupErrorCode::InvalidSessionTimeout);
    let mut client = request("");
    client.client_id = "c".repeat(256);
    assert_eq!(code(h.join(client)), GroupErrorCode::InvalidRequest);
    let mut meta = request("");
    meta.protocols[0].metadata = Bytes::from(vec![0; PROTOCOL_METADATA_BYTES_MAX + 1]);
    assert_eq!(code(h.join(meta)), GroupErrorCode::InvalidRequest);
    // v0 has no rebalance timeout: the session timeout stands in.
    let mut v0 = request("");
    v0.rebalance_timeout_ms = -1;
    assert_eq!(v0.validate().unwrap(), (SESSION as u64, SESSION as u64));
    assert!(h.groups.classic(G).is_none());
}

#[test]
fn followers_that_sync_first_wait_for_the_leader_and_get_empty_bytes_if_left_out() {
    let mut h = Harness::new();
    let a = h.join(request("")).unwrap();
    let b = h.join(request("")).unwrap();
    let c = h.join(request("")).unwrap();
    h.through_extended_delay();
    for id in [&a, &b, &c] {
        h.joined(id);
    }
    h.sync(&b, 1, &[]).unwrap();
    h.sync(&c, 1, &[]).unwrap();
    assert!(h.syncs.is_empty(), "followers wait for the leader");
    assert_eq!(h.heartbeat(&b, 1), Ok(()), "heartbeats are fine while completing");
    h.sync(&a, 1, &[(&a, "A"), (&b, "B"), ("stranger", "S")]).unwrap();
    assert_eq!(h.synced(&a), "A");
    assert_eq!(h.synced(&b), "B");
    assert_eq!(h.synced(&c), "", "the leader gave c nothing");
    // A SyncGroup in Stable answers the stored assignment at once.
    h.sync(&b, 1, &[]).unwrap();
    assert_eq!(h.synced(&b), "B");
    assert_eq!(h.group().members[&b].assignment, "B");
}

#[test]
fn sync_and_heartbeat_check_the_member_and_generation() {
    let mut h = Harness::new();
    let (a, b) = stable_pair(&mut h);
    assert_eq!(code(h.sync(&a, 2, &[])), GroupErrorCode::IllegalGeneration);
    assert_eq!(code(h.sync("nobody", 1, &[])), GroupErrorCode::UnknownMemberId);
    assert_eq!(code(h.heartbeat(&b, 0)), GroupErrorCode::IllegalGeneration);
    assert_eq!(code(h.heartbeat("nobody", 1)), GroupErrorCode::UnknownMemberId);
    assert_eq!(h.heartbeat(&b, 1), Ok(()));
    let mut wrong = SyncGroupRequest {
        member_id: b.clone(),
        generation_id: 1,
        group_instance_id: None,
        protocol_type: None,
        protocol_name: Some("roundrobin".into()),
        assignments: Vec::new(),
    };
    assert_eq!(code(h.groups.sync_group(G, wrong.clone(), h.now)), GroupErrorCode::InconsistentGroupProtocol);
    wrong.protocol_name = Some("range".into());
    assert!(h.groups.sync_group(G, wrong, h.now).is_ok());
    let mut other = Harness::new();
    assert_eq!(code(other.heartbeat("x", 1)), GroupErrorCode::UnknownMemberId, "unknown group");
}

#[test]
fn a_new_member_rebalances_a_stable_group_and_heartbeats_say_so() {
    let mut h = Harness::new();
    let (a, b) = stable_pair(&mut h);
    let c = h.join(request("")).unwrap();
    assert_eq!(h.group().state, ClassicState::PreparingRebalance);
    assert!(h.joins.is_empty(), "waits for a and b to join again");
    assert_eq!(code(h.heartbeat(&a, 1)), GroupErrorCode::RebalanceInProgress);
    assert_eq!(code(h.heartbeat(&a, 1)).code(), 27);
    assert_eq!(code(h.sync(&b, 1, &[])), GroupErrorCode::RebalanceInProgress);
    h.join(request(&b)).unwrap();
    assert!(h.joins.is_empty());
    h.join(request(&a)).unwrap();
    let out = h.joined(&a);
    assert_eq!((out.generation_id, out.leader.as_str(), out.members.len()), (2, a.as_str(), 3));
    assert_eq!(h.joined(&b).generation_id, 2);
    assert_eq!(h.joined(&c).leader, a, "the leader stays the leader");
}

#[test]
fn a_member_that_does_not_rejoin_is_removed_at_the_rebalance_timeout() {
    let mut h = Harness::new();
    let (a, b) = stable_pair(&mut h);
    h.join(request(&a)).unwrap();
    assert_eq!(h.group().state, ClassicState::PreparingRebalance, "the leader joining again rebalances");
    // b keeps heartbeating (it is alive, just slow to rejoin), so only the rebalance timeout removes it.
    for _ in 0..(REBALANCE / 5_000) - 1 {
        h.advance(5_000);
        assert_eq!(code(h.heartbeat(&b, 1)), GroupErrorCode::RebalanceInProgress);
    }
    assert!(h.joins.is_empty());
    let removed = h.advance(5_000);
    assert_eq!(removed, vec![(G.to_owned(), b.clone(), Expiry::Rebalance)]);
    let out = h.joined(&a);
    assert_eq!((out.generation_id, out.members.len()), (2, 1));
    assert_eq!(code(h.heartbeat(&b, 1)), GroupErrorCode::UnknownMemberId);
}

#[test]
fn a_silent_member_is_removed_after_its_session_and_the_rest_rebalance() {
    let mut h = Harness::new();
    let (a, b) = stable_pair(&mut h);
    for _ in 0..3 {
        assert_eq!(h.advance(3_000), Vec::new());
        h.heartbeat(&a, 1).unwrap();
    }
    let removed = h.advance(3_000);
    assert_eq!(removed, vec![(G.to_owned(), b.clone(), Expiry::Session)]);
    assert_eq!(h.group().state, ClassicState::PreparingRebalance);
    assert_eq!(code(h.heartbeat(&a, 1)), GroupErrorCode::RebalanceInProgress);
    h.join(request(&a)).unwrap();
    assert_eq!(h.joined(&a).generation_id, 2, "the only member joined: no waiting");
}

#[test]
fn the_last_member_going_leaves_the_group_empty() {
    let mut h = Harness::new();
    let a = h.join(request("")).unwrap();
    h.advance(DELAY);
    h.joined(&a);
    h.sync(&a, 1, &[]).unwrap();
    h.advance(SESSION as u64 + 1);
    assert!(h.groups.classic(G).is_none(), "no members and no offsets: forgotten");
}

#[test]
fn a_leader_that_never_syncs_is_removed_and_the_followers_told_to_rejoin() {
    let mut h = Harness::new();
    let a = h.join(request("")).unwrap();
    let b = h.join(request("")).unwrap();
    h.through_extended_delay();
    h.joined(&a);
    h.joined(&b);
    h.sync(&b, 1, &[]).unwrap();
    // a heartbeats (alive) but never syncs; b waits in SyncGroup.
    for _ in 0..(REBALANCE / 5_000) - 1 {
        assert_eq!(h.advance(5_000), Vec::new());
        h.heartbeat(&a, 1).unwrap();
    }
    let removed = h.advance(5_000);
    assert_eq!(removed, vec![(G.to_owned(), a.clone(), Expiry::Rebalance)]);
    assert_eq!(code(h.syncs.remove(&b).unwrap()), GroupErrorCode::RebalanceInProgress);
    h.join(request(&b)).unwrap();
    let out = h.joined(&b);
    assert_eq!((out.generation_id, out.leader.as_str()), (2, b.as_str()), "a new leader");
}

#[test]
fn leave_group_removes_members_and_rebalances() {
    let mut h = Harness::new();
    let (a, b) = stable_pair(&mut h);
    let out = h.groups.leave_group(
        G,
        vec![
            LeaveMember { member_id: a.clone(), group_instance_id: None },
            LeaveMember { member_id: "nobody".into(), group_instance_id: None },
        ],
        h.now,
    );
    h.collect();
    assert_eq!(out[0].result, Ok(()));
    assert_eq!(code(out[1].result.clone()), GroupErrorCode::UnknownMemberId);
    assert_eq!(h.group().state, ClassicState::PreparingRebalance);
    assert_eq!(h.group().leader.as_deref(), Some(b.as_str()), "the leader left: b leads");
    h.join(request(&b)).unwrap();
    assert_eq!(h.joined(&b).members.len(), 1);
    let out = h.groups.leave_group(G, vec![LeaveMember { member_id: b, group_instance_id: None }], h.now);
    assert_eq!(out[0].result, Ok(()));
    assert!(h.groups.classic(G).is_none());
}

#[test]
fn a_member_leaving_during_the_join_phase_completes_it() {
    let mut h = Harness::new();
    let (a, b) = stable_pair(&mut h);
    h.join(request(&a)).unwrap();
    h.groups.leave_group(G, vec![LeaveMember { member_id: b, group_instance_id: None }], h.now);
    h.collect();
    assert_eq!(h.joined(&a).generation_id, 2, "everyone left has joined");
}

#[test]
fn a_static_member_takes_over_its_place_and_fences_the_old_id() {
    let mut h = Harness::new();
    let mut s = request("");
    s.group_instance_id = Some("pod-1".into());
    s.require_known_member_id = true;
    let leader = h.join(request("")).unwrap();
    let old = h.join(s.clone()).unwrap();
    assert!(old.starts_with("pod-1-"), "static members skip MEMBER_ID_REQUIRED: {old}");
    h.through_extended_delay();
    h.joined(&leader);
    h.joined(&old);
    h.sync(&leader, 1, &[(&leader, "L"), (&old, "S")]).unwrap();
    h.sync(&old, 1, &[]).unwrap();
    assert_eq!(h.synced(&old), "S");

    // The pod restarts: same instance id, no member id, same protocols.
    let new = h.join(s.clone()).unwrap();
    assert_ne!(new, old);
    let out = h.joined(&new);
    assert_eq!(out.generation_id, 1, "no rebalance");
    assert_eq!(h.group().state, ClassicState::Stable);
    h.sync(&new, 1, &[]).unwrap();
    assert_eq!(h.synced(&new), "S", "its predecessor's assignment");
    let stale = ClassicHeartbeat {
        member_id: old.clone(),
        generation_id: 1,
        group_instance_id: Some("pod-1".into()),
    };
    assert_eq!(code(h.groups.classic_heartbeat(G, &stale, h.now)), GroupErrorCode::FencedInstanceId);
    s.member_id = old.clone();
    assert_eq!(code(h.join(s)), GroupErrorCode::FencedInstanceId);
    assert_eq!(
        code(h.groups.check_classic_commit(G, &old, 1, Some("pod-1"), h.now)),
        GroupErrorCode::FencedInstanceId
    );

    // LeaveGroup by instance id (KIP-345's admin removal) removes it.
    let out = h.groups.leave_group(
        G,
        vec![LeaveMember { member_id: String::new(), group_instance_id: Some("pod-1".into()) }],
        h.now,
    );
    assert_eq!(out[0].result, Ok(()));
    assert!(!h.group().members.contains_key(&new));
}

#[test]
fn commits_are_checked_as_kafka_checks_them() {
    let mut h = Harness::new();
    assert_eq!(h.groups.check_classic_commit(G, "", -1, None, h.now), Ok(()), "no group: a simple consumer");
    assert_eq!(
        code(h.groups.check_classic_commit(G, "m", 3, None, h.now)),
        GroupErrorCode::IllegalGeneration
    );
    let (a, b) = stable_pair(&mut h);
    let check = |h: &mut Harness, m: &str, g: i32| h.groups.check_classic_commit(G, m, g, None, h.now);
    assert_eq!(check(&mut h, &a, 1), Ok(()));
    assert_eq!(code(check(&mut h, "", -1)), GroupErrorCode::UnknownMemberId, "the group has members");
    assert_eq!(code(check(&mut h, &a, 0)), GroupErrorCode::IllegalGeneration);
    assert_eq!(code(check(&mut h, "nobody", 1)), GroupErrorCode::UnknownMemberId);
    // A rebalance starts: commits of the current generation still go through (members commit
    // before they join again), until the join phase ends.
    h.join(request(&a)).unwrap();
    assert_eq!(check(&mut h, &b, 1), Ok(()));
    h.join(request(&b)).unwrap();
    assert_eq!(h.group().state, ClassicState::CompletingRebalance);
    assert_eq!(code(check(&mut h, &b, 2)), GroupErrorCode::RebalanceInProgress);
    // Everyone leaves: a simple consumer may commit again.
    h.groups.leave_group(
        G,
        vec![
            LeaveMember { member_id: a, group_instance_id: None },
            LeaveMember { member_id: b, group_instance_id: None },
        ],
        h.now,
    );
    assert_eq!(check(&mut h, "", -1), Ok(()));
    // And a non-member of the KIP-848 kind is refused while classic members are in.
    h.join(request("")).unwrap();
    assert_eq!(code(h.groups.check_commit(G, "", -1)), GroupErrorCode::UnknownMemberId);
    assert_eq!(code(h.groups.check_reset(G)), GroupErrorCode::NonEmptyGroup);
}

fn kip848_join() -> Heartbeat {
    Heartbeat {
        member_id: String::new(),
        member_epoch: 0,
        subscribed: ["t".to_owned()].into(),
        assignor: Assignor::Uniform,
        session_timeout_ms: 10_000,
        rebalance_timeout_ms: 10_000,
        owned: TpSet::new(),
        client_id: "c".into(),
        host: String::new(),
    }
}

#[test]
fn the_two_protocols_do_not_share_a_group_id_at_once() {
    let topics: TopicCounts = [("t".to_owned(), 2)].into();
    let mut h = Harness::new();
    let mut ids = || "k".to_owned();
    let member = h.groups.heartbeat(G, kip848_join(), h.now, &topics, &mut ids).unwrap();
    let e = h.join(request("")).unwrap_err();
    assert_eq!((e.code, e.code.code()), (GroupErrorCode::InconsistentGroupProtocol, 23));
    // A classic commit on a KIP-848 group is checked as KIP-848 (generation = member epoch).
    assert_eq!(h.groups.check_classic_commit(G, &member.member_id, member.member_epoch, None, h.now), Ok(()));

    let mut leave = kip848_join();
    leave.member_id = member.member_id;
    leave.member_epoch = -1;
    h.groups.heartbeat(G, leave, h.now, &topics, &mut ids).unwrap();
    let a = h.join(request("")).unwrap();
    let e = h.groups.heartbeat(G, kip848_join(), h.now, &topics, &mut ids).unwrap_err();
    assert_eq!(e.code, GroupErrorCode::InconsistentGroupProtocol);
    h.advance(DELAY);
    assert_eq!(h.joined(&a).generation_id, 1);
}

#[test]
fn a_follower_whose_join_answer_was_lost_gets_the_generation_again() {
    let mut h = Harness::new();
    let (a, b) = stable_pair(&mut h);
    h.join(request(&b)).unwrap();
    let out = h.joined(&b);
    assert_eq!((out.generation_id, out.leader.as_str()), (1, a.as_str()));
    assert_eq!(h.group().state, ClassicState::Stable, "no rebalance for an unchanged follower");
    let mut changed = request(&b);
    changed.protocols = protocols(&[("range", "new topics")]);
    h.join(changed).unwrap();
    assert_eq!(h.group().state, ClassicState::PreparingRebalance, "changed metadata rebalances");
}

#[test]
fn the_group_is_capped() {
    let mut h = Harness::new();
    for _ in 0..GROUP_MEMBERS_MAX {
        h.join(request("")).unwrap();
    }
    assert_eq!(code(h.join(request(""))), GroupErrorCode::GroupMaxSizeReached);
}
