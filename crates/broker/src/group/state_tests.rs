//! The group state machine: each rule of KIP-848 as Runnel implements it, then property
//! tests driving random joins, heartbeats, releases, leaves, deaths, lost answers and time
//! through it with honest clients: no partition is ever owned by two members, and once every
//! live member keeps heartbeating, every subscribed partition is owned by exactly one.

use proptest::prelude::*;

use super::*;

const G: &str = "g";

fn topics(list: &[(&str, u32)]) -> TopicCounts {
    list.iter().map(|(t, c)| ((*t).to_owned(), *c)).collect()
}

fn tps(topic: &str, parts: &[u32]) -> TpSet {
    parts.iter().map(|p| (topic.to_owned(), *p)).collect()
}

fn hb(member_id: &str, epoch: i32, owned: TpSet) -> Heartbeat {
    Heartbeat {
        member_id: member_id.to_owned(),
        member_epoch: epoch,
        subscribed: ["t".to_owned()].into(),
        assignor: Assignor::Uniform,
        session_timeout_ms: 10_000,
        rebalance_timeout_ms: 60_000,
        owned,
        client_id: "test".into(),
        host: String::new(),
    }
}

/// A state machine with a member-id counter, at time `now`.
struct Harness {
    groups: Groups,
    topics: TopicCounts,
    now: u64,
    next_id: u64,
}

impl Harness {
    fn new(topics: TopicCounts) -> Self {
        Harness { groups: Groups::new(), topics, now: 1_000, next_id: 0 }
    }

    fn beat(&mut self, h: Heartbeat) -> Result<HeartbeatAnswer, GroupError> {
        let next = &mut self.next_id;
        let mut ids = || {
            *next += 1;
            format!("m{next}")
        };
        self.groups.heartbeat(G, h, self.now, &self.topics, &mut ids)
    }

    fn join(&mut self) -> HeartbeatAnswer {
        self.beat(hb("", 0, TpSet::new())).expect("join")
    }

    fn group(&self) -> &Group {
        self.groups.group(G).expect("group exists")
    }
}

#[test]
fn a_joining_member_gets_an_id_an_epoch_and_every_partition() {
    let mut h = Harness::new(topics(&[("t", 6)]));
    let a = h.join();
    assert_eq!(a.member_id, "m1");
    assert!(a.member_epoch >= 1);
    assert_eq!(a.assignment, tps("t", &[0, 1, 2, 3, 4, 5]));
    assert_eq!(a.heartbeat_interval_ms, 500);
    assert_eq!(h.group().state(), GroupState::Reconciling, "it has not said it owns them yet");
    let again = h.beat(hb("m1", a.member_epoch, a.assignment.clone())).unwrap();
    assert_eq!(again.assignment, a.assignment);
    assert_eq!(h.group().state(), GroupState::Stable);
}

#[test]
fn a_second_member_waits_for_the_first_to_release_then_three_and_three() {
    let mut h = Harness::new(topics(&[("t", 6)]));
    let a = h.join();
    let a_owned = a.assignment.clone();
    h.beat(hb("m1", a.member_epoch, a_owned.clone())).unwrap();
    let b = h.join();
    assert!(b.assignment.is_empty(), "everything is still owned by m1: {:?}", b.assignment);
    assert!(b.member_epoch > a.member_epoch);
    // m1 learns what to give up, keeps three.
    let a2 = h.beat(hb("m1", a.member_epoch, a_owned.clone())).unwrap();
    assert_eq!(a2.assignment.len(), 3);
    assert_eq!(a2.member_epoch, a.member_epoch, "still revoking: the epoch waits");
    assert_eq!(h.group().state(), GroupState::Reconciling);
    // Until it says so, m2 gets nothing.
    let b2 = h.beat(hb(&b.member_id, b.member_epoch, TpSet::new())).unwrap();
    assert!(b2.assignment.is_empty());
    // m1 released: its epoch moves; m2 gets the other three.
    let a3 = h.beat(hb("m1", a2.member_epoch, a2.assignment.clone())).unwrap();
    assert_eq!(a3.member_epoch, b.member_epoch);
    let b3 = h.beat(hb(&b.member_id, b2.member_epoch, TpSet::new())).unwrap();
    assert_eq!(b3.assignment.len(), 3);
    assert!(b3.assignment.is_disjoint(&a3.assignment));
    h.beat(hb(&b.member_id, b3.member_epoch, b3.assignment.clone())).unwrap();
    assert_eq!(h.group().state(), GroupState::Stable);
}

#[test]
fn a_leaving_member_frees_its_partitions_at_once() {
    let mut h = Harness::new(topics(&[("t", 4)]));
    let a = h.join();
    h.beat(hb("m1", a.member_epoch, a.assignment.clone())).unwrap();
    let b = h.join();
    let a2 = h.beat(hb("m1", a.member_epoch, a.assignment.clone())).unwrap();
    let a3 = h.beat(hb("m1", a2.member_epoch, a2.assignment.clone())).unwrap();
    let b2 = h.beat(hb(&b.member_id, b.member_epoch, TpSet::new())).unwrap();
    assert_eq!((a3.assignment.len(), b2.assignment.len()), (2, 2));
    let left = h.beat(hb(&b.member_id, -1, b2.assignment.clone())).unwrap();
    assert_eq!(left.member_epoch, -1);
    let a4 = h.beat(hb("m1", a3.member_epoch, a3.assignment.clone())).unwrap();
    assert_eq!(a4.assignment, tps("t", &[0, 1, 2, 3]));
    let e = h.beat(hb(&b.member_id, b2.member_epoch, TpSet::new())).unwrap_err();
    assert_eq!(e.code, GroupErrorCode::UnknownMemberId);
}

#[test]
fn a_silent_member_is_removed_after_its_session_and_its_partitions_move() {
    let mut h = Harness::new(topics(&[("t", 4)]));
    let a = h.join();
    h.beat(hb("m1", a.member_epoch, a.assignment.clone())).unwrap();
    let b = h.join();
    let a2 = h.beat(hb("m1", a.member_epoch, a.assignment.clone())).unwrap();
    let a3 = h.beat(hb("m1", a2.member_epoch, a2.assignment.clone())).unwrap();
    let b2 = h.beat(hb(&b.member_id, b.member_epoch, TpSet::new())).unwrap();
    h.beat(hb(&b.member_id, b2.member_epoch, b2.assignment.clone())).unwrap();
    // m1 keeps heartbeating; m2 goes silent.
    for _ in 0..3 {
        h.now += 3_000;
        assert!(h.groups.expire(h.now).is_empty(), "m2 is within its 10 s session");
        h.beat(hb("m1", a3.member_epoch, a3.assignment.clone())).unwrap();
    }
    h.now += 1_001;
    let removed = h.groups.expire(h.now);
    assert_eq!(removed, vec![(G.to_owned(), b.member_id.clone(), Expiry::Session)]);
    assert_eq!(h.group().state(), GroupState::Assigning);
    let a4 = h.beat(hb("m1", a3.member_epoch, a3.assignment.clone())).unwrap();
    assert_eq!(a4.assignment, tps("t", &[0, 1, 2, 3]));
}

#[test]
fn a_member_keeping_revoked_partitions_past_its_rebalance_timeout_is_removed() {
    let mut h = Harness::new(topics(&[("t", 2)]));
    let a = h.join();
    h.beat(hb("m1", a.member_epoch, a.assignment.clone())).unwrap();
    let b = h.join();
    // m1 is told to revoke, heartbeats on, but never releases.
    let mut a_epoch = a.member_epoch;
    for _ in 0..30 {
        let r = h.beat(hb("m1", a_epoch, a.assignment.clone())).unwrap();
        a_epoch = r.member_epoch;
        h.beat(hb(&b.member_id, b.member_epoch, TpSet::new())).unwrap();
        h.now += 2_500;
        let removed = h.groups.expire(h.now);
        if !removed.is_empty() {
            assert_eq!(removed, vec![(G.to_owned(), "m1".to_owned(), Expiry::Rebalance)]);
            let b2 = h.beat(hb(&b.member_id, b.member_epoch, TpSet::new())).unwrap();
            assert_eq!(b2.assignment, tps("t", &[0, 1]));
            return;
        }
    }
    panic!("m1 was never removed");
}

#[test]
fn epochs_fence_stale_heartbeats_but_forgive_a_lost_answer() {
    let mut h = Harness::new(topics(&[("t", 4)]));
    let a = h.join();
    h.beat(hb("m1", a.member_epoch, a.assignment.clone())).unwrap();
    let b = h.join();
    let a2 = h.beat(hb("m1", a.member_epoch, a.assignment.clone())).unwrap();
    // m1 releases and moves to the new epoch; say that answer was lost.
    let a3 = h.beat(hb("m1", a2.member_epoch, a2.assignment.clone())).unwrap();
    assert!(a3.member_epoch > a.member_epoch);
    let retry = h.beat(hb("m1", a.member_epoch, a2.assignment.clone())).unwrap();
    assert_eq!(retry.member_epoch, a3.member_epoch, "the previous epoch, owning no more than it was given");
    // Claiming more than it was given at the previous epoch is fenced; so is a future epoch.
    let e = h.beat(hb("m1", a.member_epoch, tps("t", &[0, 1, 2, 3]))).unwrap_err();
    assert_eq!(e.code, GroupErrorCode::FencedMemberEpoch);
    let e = h.beat(hb("m1", a3.member_epoch + 5, a2.assignment.clone())).unwrap_err();
    assert_eq!(e.code, GroupErrorCode::FencedMemberEpoch);
    let e = h.beat(hb(&b.member_id, -2, TpSet::new())).unwrap_err();
    assert_eq!(e.code, GroupErrorCode::InvalidRequest);
    let e = h.beat(hb("nobody", 3, TpSet::new())).unwrap_err();
    assert_eq!(e.code, GroupErrorCode::UnknownMemberId);
}

#[test]
fn commits_are_fenced_by_member_and_epoch() {
    let mut h = Harness::new(topics(&[("t", 2)]));
    assert!(h.groups.check_commit(G, "", -1).is_ok(), "no members: anyone may commit");
    let a = h.join();
    let e = h.groups.check_commit(G, "", -1).unwrap_err();
    assert_eq!(e.code, GroupErrorCode::UnknownMemberId);
    assert!(h.groups.check_commit(G, "m1", a.member_epoch).is_ok());
    assert_eq!(
        h.groups.check_commit(G, "m1", a.member_epoch - 1).unwrap_err().code,
        GroupErrorCode::StaleMemberEpoch
    );
    assert_eq!(
        h.groups.check_commit(G, "m1", a.member_epoch + 1).unwrap_err().code,
        GroupErrorCode::FencedMemberEpoch
    );
    assert_eq!(h.groups.check_commit(G, "m9", 1).unwrap_err().code, GroupErrorCode::UnknownMemberId);
    assert_eq!(h.groups.check_reset(G).unwrap_err().code, GroupErrorCode::NonEmptyGroup);
    h.beat(hb("m1", -1, TpSet::new())).unwrap();
    assert!(h.groups.check_reset(G).is_ok());
    assert!(h.groups.group(G).is_none(), "no members, no offsets: the group is gone");
}

#[test]
fn offsets_apply_and_tombstones_delete() {
    let mut groups = Groups::new();
    let key = OffsetKey { group: G.into(), topic: "t".into(), partition: 1 };
    groups.apply_offset(
        key.clone(),
        Some(OffsetValue { offset: 5, commit_timestamp_ms: 9, metadata: "m".into() }),
    );
    groups.apply_offset(
        key.clone(),
        Some(OffsetValue { offset: 7, commit_timestamp_ms: 10, metadata: String::new() }),
    );
    let g = groups.group(G).unwrap();
    assert_eq!(g.offsets[&("t".to_owned(), 1)].offset, 7, "the later record wins");
    assert_eq!(g.state(), GroupState::Empty);
    groups.apply_offset(key, None);
    assert!(groups.group(G).is_none());
}

#[test]
fn the_group_uses_the_assignor_most_members_ask_for() {
    let mut h = Harness::new(topics(&[("t", 4)]));
    let mut range = hb("", 0, TpSet::new());
    range.assignor = Assignor::Range;
    h.beat(range.clone()).unwrap();
    assert_eq!(h.group().assignor, Assignor::Range);
    h.join();
    assert_eq!(h.group().assignor, Assignor::Uniform, "a tie goes to uniform");
    h.beat(range).unwrap();
    assert_eq!(h.group().assignor, Assignor::Range);
}

#[test]
fn more_partitions_or_a_new_subscription_move_the_group_epoch() {
    let mut h = Harness::new(topics(&[("t", 2), ("u", 2)]));
    let a = h.join();
    let a2 = h.beat(hb("m1", a.member_epoch, a.assignment.clone())).unwrap();
    assert_eq!(a2.member_epoch, a.member_epoch);
    h.topics.insert("t".into(), 4);
    let a3 = h.beat(hb("m1", a2.member_epoch, a2.assignment.clone())).unwrap();
    assert_eq!(a3.assignment, tps("t", &[0, 1, 2, 3]));
    assert!(a3.member_epoch > a2.member_epoch);
    let mut both = hb("m1", a3.member_epoch, a3.assignment.clone());
    both.subscribed.insert("u".into());
    let a4 = h.beat(both).unwrap();
    assert_eq!(a4.assignment.len(), 6);
}

#[test]
fn timeouts_are_clamped_and_the_interval_follows_the_session() {
    assert_eq!(session_timeout_ms(0), 45_000);
    assert_eq!(session_timeout_ms(10), 1_000);
    assert_eq!(session_timeout_ms(u32::MAX), 1_800_000);
    assert_eq!(rebalance_timeout_ms(0), 300_000);
    assert_eq!(heartbeat_interval_ms(45_000), 500);
    assert_eq!(heartbeat_interval_ms(1_000), 333);
}

#[test]
fn a_rejoin_under_the_same_id_reports_what_it_owns() {
    // After a coordinator failover the members come back with epoch 0 and what they own.
    let mut h = Harness::new(topics(&[("t", 4)]));
    let a = h.beat(hb("a", 0, tps("t", &[0, 1]))).unwrap();
    let b = h.beat(hb("b", 0, tps("t", &[2, 3]))).unwrap();
    assert!(b.assignment.is_subset(&tps("t", &[2, 3])), "nothing a owns: {:?}", b.assignment);
    let a2 = h.beat(hb("a", a.member_epoch, a.assignment.clone())).unwrap();
    assert!(a2.assignment.is_subset(&tps("t", &[0, 1])));
}

// ---------------------------------------------------------------------------------------
// Property tests: honest clients under random events.
// ---------------------------------------------------------------------------------------

/// A client as the model runs it.
#[derive(Debug, Clone)]
struct Client {
    id: String,
    epoch: i32,
    /// Partitions it consumes now.
    owned: TpSet,
    /// Revoked by the last answer, not released yet (it still consumes them).
    revoking: TpSet,
    subscribed: BTreeSet<String>,
    last_ok_ms: u64,
    alive: bool,
}

#[derive(Debug, Clone)]
enum Op {
    Join,
    Beat(usize),
    LostAnswer(usize),
    Release(usize),
    Leave(usize),
    Die(usize),
    Resubscribe(usize, bool),
    Time(u64),
    Grow(u32),
    /// The coordinator fails over: a new one starts with no members.
    Failover,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => Just(Op::Join),
        8 => (0usize..8).prop_map(Op::Beat),
        1 => (0usize..8).prop_map(Op::LostAnswer),
        4 => (0usize..8).prop_map(Op::Release),
        1 => (0usize..8).prop_map(Op::Leave),
        1 => (0usize..8).prop_map(Op::Die),
        1 => ((0usize..8), any::<bool>()).prop_map(|(i, b)| Op::Resubscribe(i, b)),
        2 => (0u64..4_000).prop_map(Op::Time),
        1 => (1u32..4).prop_map(Op::Grow),
        1 => Just(Op::Failover),
    ]
}

const SESSION_MS: u64 = 10_000;

struct Model {
    h: Harness,
    clients: Vec<Client>,
}

impl Model {
    fn heartbeat(&mut self, i: usize, lose_answer: bool) {
        let c = self.clients[i].clone();
        let mut owned = c.owned.clone();
        owned.extend(c.revoking.iter().cloned());
        let mut request = hb(&c.id, c.epoch, owned);
        request.subscribed = c.subscribed.clone();
        request.session_timeout_ms = SESSION_MS;
        request.rebalance_timeout_ms = REBALANCE_TIMEOUT_MAX_MS;
        match self.h.beat(request) {
            Ok(answer) => {
                if lose_answer {
                    return;
                }
                let c = &mut self.clients[i];
                c.id = answer.member_id;
                c.epoch = answer.member_epoch;
                c.last_ok_ms = self.h.now;
                let all: TpSet = c.owned.union(&c.revoking).cloned().collect();
                // Revoked partitions stop being consumed only when released (below).
                c.revoking = all.difference(&answer.assignment).cloned().collect();
                c.owned = answer.assignment.clone();
            }
            Err(e) => {
                let c = &mut self.clients[i];
                match e.code {
                    // Fenced: drop everything, then join again (group.proto).
                    GroupErrorCode::FencedMemberEpoch => {
                        c.owned.clear();
                        c.revoking.clear();
                    }
                    // Unknown (a new coordinator, or removed after its session, when it has
                    // already stopped by itself): join again reporting what it still owns.
                    GroupErrorCode::UnknownMemberId => {}
                    _ => panic!("unexpected error {e}"),
                }
                c.epoch = 0;
            }
        }
    }

    fn live(&self) -> Vec<usize> {
        (0..self.clients.len()).filter(|&i| self.clients[i].alive).collect()
    }

    fn pick(&self, i: usize) -> Option<usize> {
        let live = self.live();
        (!live.is_empty()).then(|| live[i % live.len()])
    }

    /// No partition consumed by two clients.
    fn check_exclusive(&self) {
        let mut seen = TpSet::new();
        for c in self.clients.iter().filter(|c| c.alive) {
            for tp in c.owned.iter().chain(&c.revoking) {
                assert!(seen.insert(tp.clone()), "{tp:?} is owned twice: {:#?}", self.clients);
            }
        }
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::Join => {
                self.clients.push(Client {
                    id: String::new(),
                    epoch: 0,
                    owned: TpSet::new(),
                    revoking: TpSet::new(),
                    subscribed: ["t".to_owned()].into(),
                    last_ok_ms: self.h.now,
                    alive: true,
                });
                let i = self.clients.len() - 1;
                self.heartbeat(i, false);
            }
            Op::Beat(i) => {
                if let Some(i) = self.pick(i) {
                    self.heartbeat(i, false);
                }
            }
            Op::LostAnswer(i) => {
                if let Some(i) = self.pick(i) {
                    self.heartbeat(i, true);
                }
            }
            Op::Release(i) => {
                if let Some(i) = self.pick(i) {
                    self.clients[i].revoking.clear();
                }
            }
            Op::Leave(i) => {
                if let Some(i) = self.pick(i) {
                    let c = self.clients[i].clone();
                    if c.epoch != 0 {
                        let _ = self.h.beat(hb(&c.id, -1, TpSet::new()));
                    }
                    self.clients[i].alive = false;
                }
            }
            Op::Die(i) => {
                if let Some(i) = self.pick(i) {
                    self.clients[i].alive = false;
                }
            }
            Op::Resubscribe(i, both) => {
                if let Some(i) = self.pick(i) {
                    self.clients[i].subscribed =
                        if both { ["t".to_owned(), "u".to_owned()].into() } else { ["u".to_owned()].into() };
                }
            }
            Op::Time(ms) => {
                self.h.now += ms;
                // A client whose last good heartbeat is a session ago stops consuming by
                // itself (as real clients do), at or before the coordinator removes it.
                let now = self.h.now;
                for c in self.clients.iter_mut().filter(|c| c.alive) {
                    if now - c.last_ok_ms >= SESSION_MS {
                        c.owned.clear();
                        c.revoking.clear();
                        c.epoch = 0;
                        c.last_ok_ms = now;
                    }
                }
                self.h.groups.expire(now);
            }
            Op::Failover => {
                let mut fresh = Groups::new();
                fresh.taken_over_at(self.h.now);
                self.h.groups = fresh;
            }
            Op::Grow(n) => {
                for count in self.h.topics.values_mut() {
                    *count = (*count + n).min(24);
                }
            }
        }
        self.check_exclusive();
    }
}

proptest! {
    #[test]
    fn no_partition_is_ever_owned_twice_and_heartbeats_converge(ops in proptest::collection::vec(op(), 1..80)) {
        let mut m = Model { h: Harness::new(topics(&[("t", 6), ("u", 3)])), clients: Vec::new() };
        for op in ops {
            m.apply(op);
        }
        // Every live client now heartbeats every 3 s and releases promptly; the dead ones
        // run out of session.
        for _ in 0..12 {
            m.apply(Op::Time(3_000));
            for i in m.live() {
                m.heartbeat(i, false);
                m.clients[i].revoking.clear();
                m.check_exclusive();
            }
        }
        let live = m.live();
        let mut wanted = TpSet::new();
        for &i in &live {
            for t in &m.clients[i].subscribed {
                for p in 0..m.h.topics[t] {
                    wanted.insert((t.clone(), p));
                }
            }
        }
        let owned: TpSet = live.iter().flat_map(|&i| m.clients[i].owned.iter().cloned()).collect();
        prop_assert_eq!(&owned, &wanted, "every subscribed partition is owned");
        if !live.is_empty() {
            prop_assert_eq!(m.h.group().state(), GroupState::Stable);
            let counts: Vec<usize> = live.iter().map(|&i| m.clients[i].owned.len()).collect();
            if live.iter().all(|&i| m.clients[i].subscribed == m.clients[live[0]].subscribed) {
                let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
                prop_assert!(max - min <= 1, "an even spread: {:?}", counts);
            }
        }
    }
}

#[test]
fn after_a_takeover_members_get_back_only_what_they_own_until_the_sessions_run_out() {
    let mut h = Harness::new(topics(&[("t", 4)]));
    h.groups.taken_over_at(h.now);
    // "a" rejoins first, owning 0 and 1; "b" (owning 2 and 3) has not found us yet.
    let a = h.beat(hb("a", 0, tps("t", &[0, 1]))).unwrap();
    assert_eq!(a.assignment, tps("t", &[0, 1]), "2 and 3 may still be b's");
    h.now += 9_999;
    let a2 = h.beat(hb("a", a.member_epoch, a.assignment.clone())).unwrap();
    assert_eq!(a2.assignment, tps("t", &[0, 1]));
    // A whole session after the takeover, b has rejoined or stopped by itself.
    h.now += 1;
    let a3 = h.beat(hb("a", a2.member_epoch, a2.assignment.clone())).unwrap();
    assert_eq!(a3.assignment, tps("t", &[0, 1, 2, 3]));
}

#[test]
fn members_rejoining_a_new_coordinator_keep_what_they_own() {
    let mut h = Harness::new(topics(&[("t", 6)]));
    h.groups.taken_over_at(h.now);
    let (mine_a, mine_b) = (tps("t", &[1, 3, 5]), tps("t", &[0, 2, 4]));
    let b = h.beat(hb("b", 0, mine_b.clone())).unwrap();
    let a = h.beat(hb("a", 0, mine_a.clone())).unwrap();
    assert_eq!(a.assignment, mine_a);
    let b2 = h.beat(hb("b", b.member_epoch, b.assignment.clone())).unwrap();
    assert_eq!(b2.assignment, mine_b, "no revocation: the targets follow what they own");
    let a2 = h.beat(hb("a", a.member_epoch, a.assignment.clone())).unwrap();
    assert_eq!(a2.assignment, mine_a);
    assert_eq!(h.group().state(), GroupState::Stable);
}

#[test]
fn a_full_group_refuses_another_member() {
    let mut h = Harness::new(topics(&[("t", 2)]));
    for _ in 0..GROUP_MEMBERS_MAX {
        h.join();
    }
    let e = h.beat(hb("", 0, TpSet::new())).unwrap_err();
    assert_eq!(e.code, GroupErrorCode::GroupMaxSizeReached);
    assert_eq!(h.group().members.len(), GROUP_MEMBERS_MAX);
    // A member already in it may still rejoin under its id.
    assert!(h.beat(hb("m1", 0, TpSet::new())).is_ok());
}
