//! A consumer's membership in a group, as a pure state machine (no I/O, no clock): heartbeat
//! answers and errors go in, the next heartbeat request and the reconciliation to do come
//! out. The consumer's heartbeat task ([`crate::consumer`]) does the I/O; the application's
//! thread reconciles inside `poll`.
//!
//! The protocol is KIP-848's, as `proto/runnel/v1/group.proto` specifies it:
//! - join with epoch 0, then send the epoch of the last answer in every heartbeat, with the
//!   partitions owned *now* (after every revocation finished);
//! - an answer's assignment is the target: owned partitions not in it are revoked (stop
//!   fetching, commit, tell the listener, then report them gone), partitions in it not owned
//!   are newly assigned;
//! - FENCED_MEMBER_EPOCH or UNKNOWN_MEMBER_ID: every owned partition is lost (no commit: it
//!   may already be someone else's). The member rejoins with epoch 0 (and its member id) only
//!   after the application has dropped them, so two members never fetch one partition
//!   knowingly;
//! - leaving sends epoch -1.

use std::collections::BTreeSet;
use std::time::Duration;

use runnel_proto::pb::runnel::v1 as pb;

use crate::coordinator::{coordinator_moved, group_code};
use crate::error::ClientError;

/// A partition of a topic (the storage crate's type: ordered, hashable, shown as
/// `topic-partition`).
pub use runnel_storage::TopicPartition;

/// Partitions as the proto groups them: one entry per topic.
pub fn to_pb(partitions: &BTreeSet<TopicPartition>) -> Vec<pb::TopicPartitions> {
    let mut out: Vec<pb::TopicPartitions> = Vec::new();
    for tp in partitions {
        match out.last_mut() {
            Some(last) if last.topic == tp.topic => last.partitions.push(tp.partition),
            _ => out.push(pb::TopicPartitions { topic: tp.topic.clone(), partitions: vec![tp.partition] }),
        }
    }
    out
}

/// The proto's per-topic lists as a set.
pub fn from_pb(partitions: &[pb::TopicPartitions]) -> BTreeSet<TopicPartition> {
    partitions
        .iter()
        .flat_map(|t| t.partitions.iter().map(|&p| TopicPartition::new(t.topic.clone(), p)))
        .collect()
}

/// What the member sends in every heartbeat besides its state.
#[derive(Debug, Clone)]
pub struct MemberSettings {
    /// The group to be a member of.
    pub group_id: String,
    /// For people and `runnel group describe`.
    pub client_id: String,
    /// The subscribed topics.
    pub topics: Vec<String>,
    /// "uniform" or "range".
    pub assignor: String,
    /// How long the coordinator waits for a heartbeat before it removes the member.
    pub session_timeout: Duration,
    /// How long the member may take to release revoked partitions.
    pub rebalance_timeout: Duration,
}

/// What the heartbeat task should do after a failed heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterError {
    /// The coordinator moved or cannot be reached: find it again, back off, retry.
    FindCoordinator,
    /// The member was fenced or forgotten: its partitions are lost; wait until the
    /// application has dropped them, then rejoin.
    Rejoin,
    /// Nothing will make this work (an invalid group id, a full group): stop, and report it.
    Fatal,
}

/// What the application thread has to do to catch up with the coordinator.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Partitions lost (fenced): drop without committing, then call [`Membership::lost_done`].
    pub lost: BTreeSet<TopicPartition>,
    /// Partitions to give up: stop fetching, commit, tell the listener, then
    /// [`Membership::released`].
    pub revoke: BTreeSet<TopicPartition>,
    /// Partitions to take: [`Membership::acquired`], then look up where to start.
    pub assign: BTreeSet<TopicPartition>,
}

impl Plan {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.lost.is_empty() && self.revoke.is_empty() && self.assign.is_empty()
    }
}

/// Where the member is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Not a member: the next heartbeat joins (epoch 0).
    Joining,
    /// A member with an epoch.
    Member,
    /// Fenced or forgotten: waiting for the application to drop its partitions.
    Fenced,
    /// Asked to leave: the next heartbeat says so (epoch -1).
    Leaving,
    /// Left, or stopped on a fatal error.
    Done,
}

/// One member's view of its group membership.
#[derive(Debug)]
pub struct Membership {
    settings: MemberSettings,
    member_id: String,
    epoch: i32,
    phase: Phase,
    /// What the application owns: fetching, or done revoking.
    owned: BTreeSet<TopicPartition>,
    /// The last assignment answered, until reconciled.
    target: Option<BTreeSet<TopicPartition>>,
    heartbeat_interval: Duration,
}

/// Heartbeat interval before the coordinator names one.
const HEARTBEAT_INTERVAL_DEFAULT: Duration = Duration::from_millis(500);

impl Membership {
    /// A member about to join, with no id and epoch 0.
    pub fn new(settings: MemberSettings) -> Self {
        Membership {
            settings,
            member_id: String::new(),
            epoch: 0,
            phase: Phase::Joining,
            owned: BTreeSet::new(),
            target: None,
            heartbeat_interval: HEARTBEAT_INTERVAL_DEFAULT,
        }
    }

    /// Where the member is in the protocol.
    pub fn phase(&self) -> Phase {
        self.phase
    }
    /// The id the coordinator gave (empty before the first answer).
    pub fn member_id(&self) -> &str {
        &self.member_id
    }
    /// The member epoch to send next.
    pub fn epoch(&self) -> i32 {
        self.epoch
    }
    /// The partitions the member owns now.
    pub fn owned(&self) -> &BTreeSet<TopicPartition> {
        &self.owned
    }
    /// How often to heartbeat, as the coordinator last said.
    pub fn heartbeat_interval(&self) -> Duration {
        self.heartbeat_interval
    }
    /// What the member sends besides its state.
    pub fn settings(&self) -> &MemberSettings {
        &self.settings
    }

    /// The next heartbeat, or `None` while there is nothing to send (fenced and waiting for
    /// the application, or done).
    pub fn request(&self) -> Option<pb::ConsumerGroupHeartbeatRequest> {
        let epoch = match self.phase {
            Phase::Joining => 0,
            Phase::Member => self.epoch,
            Phase::Leaving if self.member_id.is_empty() => return None,
            Phase::Leaving => -1,
            Phase::Fenced | Phase::Done => return None,
        };
        let s = &self.settings;
        Some(pb::ConsumerGroupHeartbeatRequest {
            group_id: s.group_id.clone(),
            member_id: self.member_id.clone(),
            member_epoch: epoch,
            subscribed_topics: s.topics.clone(),
            assignor: s.assignor.clone(),
            session_timeout_ms: u32::try_from(s.session_timeout.as_millis()).unwrap_or(u32::MAX),
            rebalance_timeout_ms: u32::try_from(s.rebalance_timeout.as_millis()).unwrap_or(u32::MAX),
            owned_partitions: to_pb(&self.owned),
            client_id: s.client_id.clone(),
        })
    }

    /// Takes an answer to the heartbeat `sent`. Answers whether the assignment may have
    /// changed (the application should reconcile).
    pub fn on_answer(
        &mut self,
        sent: &pb::ConsumerGroupHeartbeatRequest,
        answer: pb::ConsumerGroupHeartbeatResponse,
    ) -> bool {
        if answer.heartbeat_interval_ms > 0 {
            self.heartbeat_interval = Duration::from_millis(u64::from(answer.heartbeat_interval_ms));
        }
        if sent.member_epoch == -1 {
            self.phase = Phase::Done;
            return false;
        }
        // An answer to a heartbeat sent before a fence or a leave is stale.
        let expected = match self.phase {
            Phase::Joining => sent.member_epoch == 0,
            Phase::Member => sent.member_epoch == self.epoch,
            _ => false,
        };
        if !expected || answer.member_epoch <= 0 || answer.member_id.is_empty() {
            return false;
        }
        self.member_id = answer.member_id;
        self.epoch = answer.member_epoch;
        self.phase = Phase::Member;
        let target = from_pb(&answer.assignment);
        let changed = target != self.owned;
        self.target = Some(target);
        changed
    }

    /// Takes a failed heartbeat: what to do next. `failed_over` says the coordinator moved
    /// since the last answered heartbeat, which was sent less than a session timeout ago:
    /// then UNKNOWN_MEMBER_ID means the new coordinator never knew the member (membership
    /// lives in the coordinator's memory), not that it was removed, and no other member can
    /// have been given its partitions, so it rejoins reporting them and keeps them (the new
    /// coordinator gives back what a rejoining member reports).
    pub fn on_error(&mut self, e: &ClientError, failed_over: bool) -> AfterError {
        if coordinator_moved(e) {
            return AfterError::FindCoordinator;
        }
        match e.code {
            group_code::UNKNOWN_MEMBER_ID if failed_over && self.phase == Phase::Member => {
                self.phase = Phase::Joining;
                self.epoch = 0;
                self.target = None;
                AfterError::Rejoin
            }
            group_code::FENCED_MEMBER_EPOCH | group_code::UNKNOWN_MEMBER_ID => {
                if self.phase == Phase::Leaving {
                    // Already gone: the leave is done.
                    self.phase = Phase::Done;
                } else {
                    self.fence();
                }
                AfterError::Rejoin
            }
            group_code::STALE_MEMBER_EPOCH => AfterError::FindCoordinator,
            _ => {
                self.phase = Phase::Done;
                AfterError::Fatal
            }
        }
    }

    /// The member can no longer count on its partitions (fenced, or no heartbeat answered
    /// for a session timeout): the application must drop them.
    pub fn fence(&mut self) {
        if matches!(self.phase, Phase::Joining | Phase::Member) {
            self.phase = Phase::Fenced;
            self.epoch = 0;
            self.target = None;
        }
    }

    /// What the application has to do now.
    pub fn plan(&self) -> Plan {
        if self.phase == Phase::Fenced {
            return Plan { lost: self.owned.clone(), ..Plan::default() };
        }
        match &self.target {
            None => Plan::default(),
            Some(target) => Plan {
                lost: BTreeSet::new(),
                revoke: self.owned.difference(target).cloned().collect(),
                assign: target.difference(&self.owned).cloned().collect(),
            },
        }
    }

    /// The application dropped every lost partition: join again.
    pub fn lost_done(&mut self) {
        self.owned.clear();
        if self.phase == Phase::Fenced {
            self.phase = Phase::Joining;
        }
    }

    /// The application finished revoking `partitions`.
    pub fn released(&mut self, partitions: &BTreeSet<TopicPartition>) {
        for tp in partitions {
            self.owned.remove(tp);
        }
    }

    /// The application took `partitions` (they are fetched from now on). Only partitions of
    /// the current target are taken: a fence or a new answer may have come in between.
    pub fn acquired(&mut self, partitions: &BTreeSet<TopicPartition>) -> BTreeSet<TopicPartition> {
        let Some(target) = &self.target else { return BTreeSet::new() };
        if self.phase != Phase::Member {
            return BTreeSet::new();
        }
        let taken: BTreeSet<TopicPartition> = partitions.intersection(target).cloned().collect();
        self.owned.extend(taken.iter().cloned());
        taken
    }

    /// Asks to leave: the next heartbeat says so. Owned partitions are the caller's to
    /// revoke first.
    pub fn leave(&mut self) {
        self.phase = match self.phase {
            Phase::Member => Phase::Leaving,
            _ => Phase::Done,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> MemberSettings {
        MemberSettings {
            group_id: "g".into(),
            client_id: "c".into(),
            topics: vec!["t".into()],
            assignor: String::new(),
            session_timeout: Duration::from_secs(10),
            rebalance_timeout: Duration::from_secs(30),
        }
    }

    fn answer(id: &str, epoch: i32, partitions: &[u32]) -> pb::ConsumerGroupHeartbeatResponse {
        pb::ConsumerGroupHeartbeatResponse {
            member_id: id.into(),
            member_epoch: epoch,
            heartbeat_interval_ms: 200,
            assignment: vec![pb::TopicPartitions { topic: "t".into(), partitions: partitions.to_vec() }],
        }
    }

    fn set(partitions: &[u32]) -> BTreeSet<TopicPartition> {
        partitions.iter().map(|&p| TopicPartition::new("t", p)).collect()
    }

    fn err(code: i32, name: &str) -> ClientError {
        ClientError::new(code, name, "x")
    }

    impl Membership {
        fn on_error_(&mut self, e: &ClientError) -> AfterError {
            self.on_error(e, false)
        }
    }

    #[test]
    fn after_a_coordinator_failover_an_unknown_member_rejoins_keeping_its_partitions() {
        let mut m = Membership::new(settings());
        let join = m.request().unwrap();
        m.on_answer(&join, answer("m1", 4, &[0, 1]));
        m.acquired(&set(&[0, 1]));
        assert_eq!(m.on_error(&err(25, "UNKNOWN_MEMBER_ID"), true), AfterError::Rejoin);
        assert!(m.plan().is_empty(), "nothing lost");
        let rejoin = m.request().unwrap();
        assert_eq!((rejoin.member_epoch, rejoin.member_id.as_str()), (0, "m1"));
        assert_eq!(from_pb(&rejoin.owned_partitions), set(&[0, 1]), "reports what it owns");
        assert!(!m.on_answer(&rejoin, answer("m1", 1, &[0, 1])), "given back: nothing to do");
        assert_eq!(m.request().unwrap().member_epoch, 1);
        // A fence is a fence, failover or not.
        assert_eq!(m.on_error(&err(110, "FENCED_MEMBER_EPOCH"), true), AfterError::Rejoin);
        assert_eq!(m.plan().lost, set(&[0, 1]));
    }

    #[test]
    fn join_then_assign_then_revoke_before_the_release_is_reported() {
        let mut m = Membership::new(settings());
        let join = m.request().unwrap();
        assert_eq!((join.member_epoch, join.member_id.as_str()), (0, ""));
        assert!(m.on_answer(&join, answer("m1", 3, &[0, 1, 2])));
        assert_eq!(m.heartbeat_interval(), Duration::from_millis(200));
        let plan = m.plan();
        assert_eq!(plan.assign, set(&[0, 1, 2]));
        assert_eq!(m.acquired(&plan.assign), set(&[0, 1, 2]));
        assert!(m.plan().is_empty());
        let hb = m.request().unwrap();
        assert_eq!((hb.member_epoch, hb.member_id.as_str()), (3, "m1"));
        assert_eq!(from_pb(&hb.owned_partitions), set(&[0, 1, 2]));
        // A new member arrived: 2 is revoked. Until released, heartbeats still report it.
        assert!(m.on_answer(&hb, answer("m1", 4, &[0, 1])));
        let plan = m.plan();
        assert_eq!((plan.revoke.clone(), plan.assign.clone()), (set(&[2]), set(&[])));
        assert_eq!(from_pb(&m.request().unwrap().owned_partitions), set(&[0, 1, 2]));
        m.released(&plan.revoke);
        let hb = m.request().unwrap();
        assert_eq!((hb.member_epoch, from_pb(&hb.owned_partitions)), (4, set(&[0, 1])));
    }

    #[test]
    fn a_fence_loses_everything_and_rejoins_only_after_the_drop() {
        let mut m = Membership::new(settings());
        let join = m.request().unwrap();
        m.on_answer(&join, answer("m1", 1, &[0, 1]));
        m.acquired(&set(&[0, 1]));
        let hb = m.request().unwrap();
        assert_eq!(m.on_error_(&err(110, "FENCED_MEMBER_EPOCH")), AfterError::Rejoin);
        assert_eq!(m.request(), None, "no heartbeat while the application still holds partitions");
        // A late answer to the heartbeat sent before the fence changes nothing.
        assert!(!m.on_answer(&hb, answer("m1", 2, &[0, 1, 2])));
        let plan = m.plan();
        assert_eq!((plan.lost.clone(), plan.revoke.is_empty()), (set(&[0, 1]), true));
        m.lost_done();
        let rejoin = m.request().unwrap();
        assert_eq!((rejoin.member_epoch, rejoin.member_id.as_str()), (0, "m1"));
        assert!(rejoin.owned_partitions.is_empty());
        // UNKNOWN_MEMBER_ID is a fence too.
        m.on_answer(&rejoin, answer("m1", 5, &[3]));
        m.acquired(&set(&[3]));
        assert_eq!(m.on_error_(&err(25, "UNKNOWN_MEMBER_ID")), AfterError::Rejoin);
        assert_eq!(m.plan().lost, set(&[3]));
    }

    #[test]
    fn errors_are_sorted_into_retry_rejoin_and_fatal() {
        let mut m = Membership::new(settings());
        assert_eq!(m.on_error_(&err(16, "NOT_COORDINATOR")), AfterError::FindCoordinator);
        assert_eq!(m.on_error_(&err(13, "NETWORK_EXCEPTION")), AfterError::FindCoordinator);
        assert_eq!(m.phase(), Phase::Joining);
        assert_eq!(m.on_error_(&err(24, "INVALID_GROUP_ID")), AfterError::Fatal);
        assert_eq!(m.phase(), Phase::Done);
        assert_eq!(m.request(), None);
    }

    #[test]
    fn only_partitions_still_targeted_are_acquired_and_leaving_sends_minus_one() {
        let mut m = Membership::new(settings());
        let join = m.request().unwrap();
        m.on_answer(&join, answer("m1", 1, &[0, 1]));
        let hb = m.request().unwrap();
        m.on_answer(&hb, answer("m1", 2, &[1]));
        assert_eq!(m.acquired(&set(&[0, 1])), set(&[1]));
        m.leave();
        let bye = m.request().unwrap();
        assert_eq!(bye.member_epoch, -1);
        m.on_answer(&bye, pb::ConsumerGroupHeartbeatResponse { member_epoch: -1, ..Default::default() });
        assert_eq!(m.phase(), Phase::Done);
        // A member that never joined has nothing to say when it leaves.
        let mut m = Membership::new(settings());
        m.leave();
        assert_eq!(m.request(), None);
    }
}
