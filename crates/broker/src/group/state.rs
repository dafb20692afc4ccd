//! The groups of one `__consumer_offsets` partition, as a pure, deterministic state machine:
//! heartbeats, expiries and commits go in with the time (`now_ms`, a monotonic clock the
//! caller owns) and the topics' partition counts; answers and errors come out. No I/O, no
//! clock, no randomness (a joining member's id is handed in), only ordered maps.
//!
//! Membership follows KIP-848:
//! - the **group epoch** moves on every change of members, subscriptions, the chosen
//!   assignor, or the partition counts of subscribed topics;
//! - a heartbeat that finds the group epoch ahead of the **assignment epoch** computes a new
//!   target assignment (the group is "assigning" until then);
//! - a member is answered the partitions of its target that it owns, plus those of its target
//!   that no other member holds: a partition another member owns (by its last heartbeat) or
//!   was last told to own is withheld until that member has released it. Partitions it owns
//!   outside its target are revoked by leaving them out of the answer;
//! - a member's epoch moves to the assignment epoch once it owns nothing outside its target.
//!   A heartbeat must carry the member's epoch, or its previous one while it owns no more
//!   than it was last given (its answer may have been lost); anything else is fenced;
//! - a member silent for its session timeout, or still holding revoked partitions a
//!   rebalance timeout after they were revoked, is removed.

use std::collections::{BTreeMap, BTreeSet};

use super::assign::{Assignor, MemberSpec, TopicCounts, Tp, TpSet, assign};
use super::classic::{ClassicGroup, ClassicReply, INITIAL_REBALANCE_DELAY_DEFAULT_MS};
use super::error::{GroupError, GroupErrorCode};
use super::record::{OffsetKey, OffsetValue};

/// Session timeout when the member gives none (Kafka's default).
pub const SESSION_TIMEOUT_DEFAULT_MS: u64 = 45_000;
/// Shortest session timeout a member may ask for.
pub const SESSION_TIMEOUT_MIN_MS: u64 = 1_000;
/// Longest session timeout a member may ask for.
pub const SESSION_TIMEOUT_MAX_MS: u64 = 1_800_000;
/// Rebalance timeout when the member gives none (Kafka's `max.poll.interval.ms` default).
pub const REBALANCE_TIMEOUT_DEFAULT_MS: u64 = 300_000;
/// Shortest rebalance timeout.
pub const REBALANCE_TIMEOUT_MIN_MS: u64 = 1_000;
/// Longest rebalance timeout.
pub const REBALANCE_TIMEOUT_MAX_MS: u64 = 1_800_000;
/// Longest heartbeat interval given to a member. Short, so that a partition freed by a
/// member that left or died reaches its new owner well within a second: a heartbeat is an
/// in-memory call on the coordinator.
pub const HEARTBEAT_INTERVAL_MAX_MS: u64 = 500;
/// Most members one group may have.
pub const GROUP_MEMBERS_MAX: usize = 1_000;
/// Longest member id a joining member may bring.
pub const MEMBER_ID_BYTES_MAX: usize = 255;

/// The interval a member with `session_timeout_ms` is told to heartbeat at: a third of its
/// session (so two heartbeats may be lost), at most [`HEARTBEAT_INTERVAL_MAX_MS`].
pub fn heartbeat_interval_ms(session_timeout_ms: u64) -> u64 {
    (session_timeout_ms / 3).clamp(1, HEARTBEAT_INTERVAL_MAX_MS)
}

/// A session timeout as asked (0: the default), clamped to the allowed range.
pub fn session_timeout_ms(asked: u32) -> u64 {
    match u64::from(asked) {
        0 => SESSION_TIMEOUT_DEFAULT_MS,
        ms => ms.clamp(SESSION_TIMEOUT_MIN_MS, SESSION_TIMEOUT_MAX_MS),
    }
}

/// A rebalance timeout as asked (0: the default), clamped to the allowed range.
pub fn rebalance_timeout_ms(asked: u32) -> u64 {
    match u64::from(asked) {
        0 => REBALANCE_TIMEOUT_DEFAULT_MS,
        ms => ms.clamp(REBALANCE_TIMEOUT_MIN_MS, REBALANCE_TIMEOUT_MAX_MS),
    }
}

/// A committed offset in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// The next offset to consume.
    pub offset: i64,
    /// Stored with it.
    pub metadata: String,
    /// When it was committed, ms since the Unix epoch.
    pub commit_timestamp_ms: i64,
}

/// One member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its id.
    pub id: String,
    /// Its epoch.
    pub epoch: i32,
    /// The epoch before, accepted while its answer may have been lost.
    pub previous_epoch: i32,
    /// For people.
    pub client_id: String,
    /// The peer address of its last heartbeat.
    pub host: String,
    /// Its topics.
    pub subscribed: BTreeSet<String>,
    /// The assignor it asks for.
    pub assignor: Assignor,
    /// Removed after this long without a heartbeat.
    pub session_timeout_ms: u64,
    /// Removed when it keeps revoked partitions this long.
    pub rebalance_timeout_ms: u64,
    /// When its last heartbeat came.
    pub last_heartbeat_ms: u64,
    /// What it said it owns in its last heartbeat.
    pub owned: TpSet,
    /// What its last answer told it to own.
    pub assigned: TpSet,
    /// Since when it has owned partitions outside its target.
    pub revoking_since_ms: Option<u64>,
}

/// A group's state, as ListGroups and DescribeGroup name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    /// No members.
    Empty,
    /// Membership changed; the next heartbeat computes the target.
    Assigning,
    /// Some member does not own its target yet.
    Reconciling,
    /// Every member owns its target at the assignment epoch.
    Stable,
    /// Neither members nor offsets (only for DescribeGroup of an unknown group).
    Dead,
}

impl GroupState {
    /// Its name on the wire.
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "empty",
            GroupState::Assigning => "assigning",
            GroupState::Reconciling => "reconciling",
            GroupState::Stable => "stable",
            GroupState::Dead => "dead",
        }
    }

    /// Kafka's name (ListGroups, DescribeGroups of the Kafka protocol).
    pub fn kafka_name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::Assigning => "Assigning",
            GroupState::Reconciling => "Reconciling",
            GroupState::Stable => "Stable",
            GroupState::Dead => "Dead",
        }
    }
}

/// One group.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Group {
    /// Moves on every membership or subscription change.
    pub epoch: i32,
    /// The group epoch the target was computed at.
    pub assignment_epoch: i32,
    /// The assignor the target was computed with.
    pub assignor: Assignor,
    /// Members by id.
    pub members: BTreeMap<String, Member>,
    /// Each member's target.
    pub target: BTreeMap<String, TpSet>,
    /// Partition counts of the subscribed topics when the target was computed.
    pub topics_seen: TopicCounts,
    /// Committed offsets.
    pub offsets: BTreeMap<Tp, Committed>,
    /// Members of the classic protocol (JoinGroup/SyncGroup). A group has members of one
    /// protocol at a time; both share the offsets.
    pub classic: ClassicGroup,
}

impl Group {
    /// Whether it has members of either protocol (or classic member ids handed out).
    pub fn has_members(&self) -> bool {
        !self.members.is_empty() || !self.classic.is_empty()
    }

    /// How many members it has, of either protocol.
    pub fn member_count(&self) -> usize {
        self.members.len() + self.classic.members.len()
    }

    /// The state now.
    pub fn state(&self) -> GroupState {
        if self.members.is_empty() {
            GroupState::Empty
        } else if self.epoch > self.assignment_epoch {
            GroupState::Assigning
        } else if self.members.values().all(|m| {
            let target = self.target.get(&m.id);
            m.epoch == self.assignment_epoch
                && target.is_none_or(|t| *t == m.owned && *t == m.assigned)
                && (target.is_some() || (m.owned.is_empty() && m.assigned.is_empty()))
        }) {
            GroupState::Stable
        } else {
            GroupState::Reconciling
        }
    }

    fn bump(&mut self) {
        self.epoch = self.epoch.saturating_add(1);
    }

    /// The assignor most members ask for; ties go to uniform.
    fn preferred_assignor(&self) -> Assignor {
        let range = self.members.values().filter(|m| m.assignor == Assignor::Range).count();
        if range * 2 > self.members.len() { Assignor::Range } else { Assignor::Uniform }
    }

    fn subscribed_counts(&self, topics: &TopicCounts) -> TopicCounts {
        let mut out = TopicCounts::new();
        for m in self.members.values() {
            for t in &m.subscribed {
                if let Some(&c) = topics.get(t) {
                    out.insert(t.clone(), c);
                }
            }
        }
        out
    }

    fn remove_member(&mut self, id: &str) -> Option<Member> {
        let removed = self.members.remove(id)?;
        self.target.remove(id);
        self.bump();
        Some(removed)
    }

    /// Recomputes the target if membership or the topics moved since it was computed.
    fn refresh_target(&mut self, topics: &TopicCounts) {
        let seen = self.subscribed_counts(topics);
        let assignor = self.preferred_assignor();
        if seen != self.topics_seen || assignor != self.assignor {
            self.bump();
        }
        if self.epoch <= self.assignment_epoch {
            return;
        }
        // Stickiness starts from what each member owns, then the rest of its target that no
        // other member owns: after a takeover (no targets yet) members keep what they report.
        let mut owner: BTreeMap<&Tp, &str> = BTreeMap::new();
        for m in self.members.values() {
            for tp in &m.owned {
                owner.entry(tp).or_insert(m.id.as_str());
            }
        }
        let current: Vec<TpSet> = self
            .members
            .values()
            .map(|m| {
                let mut keep = m.owned.clone();
                if let Some(target) = self.target.get(&m.id) {
                    keep.extend(target.iter().filter(|tp| owner.get(tp).is_none_or(|o| *o == m.id)).cloned());
                }
                keep
            })
            .collect();
        let specs: Vec<MemberSpec<'_>> = self
            .members
            .values()
            .zip(&current)
            .map(|(m, current)| MemberSpec { id: &m.id, subscribed: &m.subscribed, current })
            .collect();
        self.target = assign(assignor, &specs, &seen);
        self.assignor = assignor;
        self.topics_seen = seen;
        self.assignment_epoch = self.epoch;
    }

    /// Reconciles member `id` against its target and answers what it should own.
    fn reconcile(&mut self, id: &str, now_ms: u64, taken_over_ms: Option<u64>) -> TpSet {
        let empty = TpSet::new();
        let target = self.target.get(id).unwrap_or(&empty);
        let Some(member) = self.members.get(id) else { return TpSet::new() };
        let longest_session = self.members.values().map(|m| m.session_timeout_ms).max().unwrap_or(0);
        let in_grace = taken_over_ms.is_some_and(|t| now_ms < t.saturating_add(longest_session));
        // Partitions of its target it does not own yet are given only if no other member
        // holds them. Checked per missing partition, so a stable member costs nothing here.
        let answer: TpSet = target
            .iter()
            .filter(|tp| {
                member.owned.contains(*tp)
                    || !in_grace
                        && !self
                            .members
                            .values()
                            .any(|m| m.id != id && (m.owned.contains(*tp) || m.assigned.contains(*tp)))
            })
            .cloned()
            .collect();
        let revoking = member.owned.iter().any(|tp| !target.contains(tp));
        let assignment_epoch = self.assignment_epoch;
        let Some(member) = self.members.get_mut(id) else { return TpSet::new() };
        if revoking {
            member.revoking_since_ms.get_or_insert(now_ms);
        } else {
            member.revoking_since_ms = None;
            if member.epoch != assignment_epoch {
                member.previous_epoch = member.epoch;
                member.epoch = assignment_epoch;
            }
        }
        member.assigned = answer.clone();
        answer
    }
}

/// A validated heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    /// Empty when joining without an id.
    pub member_id: String,
    /// 0 join, -1 leave, else the member's epoch.
    pub member_epoch: i32,
    /// The member's topics.
    pub subscribed: BTreeSet<String>,
    /// The assignor it asks for.
    pub assignor: Assignor,
    /// Clamped (see [`session_timeout_ms`]).
    pub session_timeout_ms: u64,
    /// Clamped (see [`rebalance_timeout_ms`]).
    pub rebalance_timeout_ms: u64,
    /// What it owns now.
    pub owned: TpSet,
    /// For people.
    pub client_id: String,
    /// The peer address.
    pub host: String,
}

/// The answer to a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeartbeatAnswer {
    /// The member id.
    pub member_id: String,
    /// Its epoch; -1 after a leave.
    pub member_epoch: i32,
    /// How often to heartbeat.
    pub heartbeat_interval_ms: u64,
    /// What it should own now.
    pub assignment: TpSet,
}

/// Why a member was removed by [`Groups::expire`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// No heartbeat within its session timeout.
    Session,
    /// Kept revoked partitions past its rebalance timeout.
    Rebalance,
}

/// The groups of one offsets partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Groups {
    pub(super) groups: BTreeMap<String, Group>,
    /// When this coordinator took the groups over (see [`Groups::taken_over_at`]).
    taken_over_ms: Option<u64>,
    /// Classic answers not yet taken (see [`Groups::take_replies`]).
    pub(super) replies: Vec<ClassicReply>,
    /// How long a classic group leaving Empty waits for more members, in ms.
    pub(super) initial_rebalance_delay_ms: u64,
}

impl Default for Groups {
    fn default() -> Self {
        Groups {
            groups: BTreeMap::new(),
            taken_over_ms: None,
            replies: Vec::new(),
            initial_rebalance_delay_ms: INITIAL_REBALANCE_DELAY_DEFAULT_MS,
        }
    }
}

fn unknown_member(group: &str, member: &str) -> GroupError {
    GroupError::new(
        GroupErrorCode::UnknownMemberId,
        format!("member {member:?} is not in group {group:?}; join again with epoch 0"),
    )
}

impl Groups {
    /// No groups.
    pub fn new() -> Self {
        Self::default()
    }

    /// Marks the groups as taken over from another coordinator at `now_ms`. Membership is
    /// not persisted, so this coordinator does not know who owned what before: a member of
    /// the previous coordinator may still own any partition until it rejoins (reporting what
    /// it owns) or its own session runs out. Until `now_ms` plus the longest session timeout
    /// among a group's members, that group's members are given back only partitions they say
    /// they own; anything else is withheld until then.
    pub fn taken_over_at(&mut self, now_ms: u64) {
        self.taken_over_ms = Some(now_ms);
    }

    /// Sets how long a classic group leaving Empty waits for more members before its first
    /// generation (Kafka's `group.initial.rebalance.delay.ms`).
    pub fn set_initial_rebalance_delay_ms(&mut self, ms: u64) {
        self.initial_rebalance_delay_ms = ms;
    }

    /// The group `id`, if it has members or offsets.
    pub fn group(&self, id: &str) -> Option<&Group> {
        self.groups.get(id)
    }

    /// Every group, by id.
    pub fn groups(&self) -> &BTreeMap<String, Group> {
        &self.groups
    }

    /// One heartbeat of group `group_id`. `new_member_id` names a member joining without an
    /// id; `topics` are the partition counts of every topic.
    pub fn heartbeat(
        &mut self,
        group_id: &str,
        hb: Heartbeat,
        now_ms: u64,
        topics: &TopicCounts,
        new_member_id: &mut dyn FnMut() -> String,
    ) -> Result<HeartbeatAnswer, GroupError> {
        let interval = heartbeat_interval_ms(hb.session_timeout_ms);
        match hb.member_epoch {
            -1 => {
                let group =
                    self.groups.get_mut(group_id).ok_or_else(|| unknown_member(group_id, &hb.member_id))?;
                group.remove_member(&hb.member_id).ok_or_else(|| unknown_member(group_id, &hb.member_id))?;
                self.forget_if_dead(group_id);
                Ok(HeartbeatAnswer {
                    member_id: hb.member_id,
                    member_epoch: -1,
                    heartbeat_interval_ms: interval,
                    assignment: TpSet::new(),
                })
            }
            0 => {
                if hb.member_id.len() > MEMBER_ID_BYTES_MAX {
                    return Err(GroupError::invalid(format!(
                        "member_id is {} bytes, over the limit of {MEMBER_ID_BYTES_MAX}",
                        hb.member_id.len()
                    )));
                }
                if let Some(g) = self.groups.get(group_id)
                    && !g.classic.members.is_empty()
                {
                    return Err(GroupError::new(
                        GroupErrorCode::InconsistentGroupProtocol,
                        format!(
                            "group {group_id:?} has {} members using the classic protocol (JoinGroup); a \
                             consumer (KIP-848) member cannot join it",
                            g.classic.members.len()
                        ),
                    ));
                }
                let group = self.groups.entry(group_id.to_owned()).or_default();
                let id = if hb.member_id.is_empty() {
                    let mut id = new_member_id();
                    let mut tries = 1;
                    while group.members.contains_key(&id) {
                        if tries == 16 {
                            return Err(GroupError::new(
                                GroupErrorCode::UnknownServerError,
                                "could not pick a member id not in use",
                            ));
                        }
                        id = new_member_id();
                        tries += 1;
                    }
                    id
                } else {
                    hb.member_id.clone()
                };
                if !group.members.contains_key(&id) {
                    if group.members.len() >= GROUP_MEMBERS_MAX {
                        let error = GroupError::new(
                            GroupErrorCode::GroupMaxSizeReached,
                            format!("group {group_id:?} has {GROUP_MEMBERS_MAX} members, its maximum"),
                        );
                        self.forget_if_dead(group_id);
                        return Err(error);
                    }
                    group.bump();
                }
                // A member rejoining under its id starts over (its previous answers are void).
                let member = Member {
                    id: id.clone(),
                    epoch: 0,
                    previous_epoch: -1,
                    client_id: hb.client_id,
                    host: hb.host,
                    subscribed: hb.subscribed,
                    assignor: hb.assignor,
                    session_timeout_ms: hb.session_timeout_ms,
                    rebalance_timeout_ms: hb.rebalance_timeout_ms,
                    last_heartbeat_ms: now_ms,
                    owned: hb.owned,
                    assigned: TpSet::new(),
                    revoking_since_ms: None,
                };
                if let Some(old) = group.members.insert(id.clone(), member)
                    && old.subscribed != group.members[&id].subscribed
                {
                    group.bump();
                }
                group.refresh_target(topics);
                let assignment = group.reconcile(&id, now_ms, self.taken_over_ms);
                let member = group.members.get_mut(&id).ok_or_else(|| unknown_member(group_id, &id))?;
                // A joining member always leaves with an epoch of the group, never 0.
                if member.epoch == 0 {
                    member.epoch = group.assignment_epoch.max(1);
                }
                Ok(HeartbeatAnswer {
                    member_id: id,
                    member_epoch: member.epoch,
                    heartbeat_interval_ms: interval,
                    assignment,
                })
            }
            epoch if epoch > 0 => {
                let group =
                    self.groups.get_mut(group_id).ok_or_else(|| unknown_member(group_id, &hb.member_id))?;
                let member = group
                    .members
                    .get_mut(&hb.member_id)
                    .ok_or_else(|| unknown_member(group_id, &hb.member_id))?;
                let current = epoch == member.epoch;
                let previous = epoch == member.previous_epoch && hb.owned.is_subset(&member.assigned);
                if !current && !previous {
                    return Err(GroupError::new(
                        GroupErrorCode::FencedMemberEpoch,
                        format!(
                            "member {:?} of group {group_id:?} sent epoch {epoch}; its epoch is {}: drop every \
                             partition and join again with epoch 0",
                            hb.member_id, member.epoch
                        ),
                    ));
                }
                let resubscribed = member.subscribed != hb.subscribed;
                member.subscribed = hb.subscribed;
                member.assignor = hb.assignor;
                member.client_id = hb.client_id;
                member.host = hb.host;
                member.session_timeout_ms = hb.session_timeout_ms;
                member.rebalance_timeout_ms = hb.rebalance_timeout_ms;
                member.last_heartbeat_ms = now_ms;
                member.owned = hb.owned;
                if resubscribed {
                    group.bump();
                }
                group.refresh_target(topics);
                let assignment = group.reconcile(&hb.member_id, now_ms, self.taken_over_ms);
                let epoch = group.members.get(&hb.member_id).map_or(-1, |m| m.epoch);
                Ok(HeartbeatAnswer {
                    member_id: hb.member_id,
                    member_epoch: epoch,
                    heartbeat_interval_ms: interval,
                    assignment,
                })
            }
            other => Err(GroupError::invalid(format!(
                "member_epoch {other} is not 0 (join), -1 (leave) or a member's epoch"
            ))),
        }
    }

    /// Removes members silent past their session timeout, or holding revoked partitions past
    /// their rebalance timeout. Answers who was removed, and why.
    pub fn expire(&mut self, now_ms: u64) -> Vec<(String, String, Expiry)> {
        let mut removed = Vec::new();
        for (group_id, group) in &mut self.groups {
            let expired: Vec<(String, Expiry)> = group
                .members
                .values()
                .filter_map(|m| {
                    if now_ms.saturating_sub(m.last_heartbeat_ms) > m.session_timeout_ms {
                        Some((m.id.clone(), Expiry::Session))
                    } else if m
                        .revoking_since_ms
                        .is_some_and(|t| now_ms.saturating_sub(t) > m.rebalance_timeout_ms)
                    {
                        Some((m.id.clone(), Expiry::Rebalance))
                    } else {
                        None
                    }
                })
                .collect();
            for (member, why) in expired {
                group.remove_member(&member);
                removed.push((group_id.clone(), member, why));
            }
        }
        removed.extend(self.expire_classic(now_ms));
        self.groups.retain(|_, g| g.has_members() || !g.offsets.is_empty());
        removed
    }

    /// Whether `member_id` at `member_epoch` may commit offsets for `group_id` now. A member
    /// commits with its id and current epoch; a committer that is not a member (empty id,
    /// epoch -1) only while the group has no members.
    pub fn check_commit(&self, group_id: &str, member_id: &str, member_epoch: i32) -> Result<(), GroupError> {
        let group = self.groups.get(group_id);
        let members = group.map_or(0, Group::member_count);
        if member_id.is_empty() && member_epoch == -1 {
            if members == 0 {
                return Ok(());
            }
            return Err(GroupError::new(
                GroupErrorCode::UnknownMemberId,
                format!(
                    "group {group_id:?} has {members} members; only a member (with its id and epoch) may commit"
                ),
            ));
        }
        let member = group
            .and_then(|g| g.members.get(member_id))
            .ok_or_else(|| unknown_member(group_id, member_id))?;
        if member_epoch > member.epoch {
            return Err(GroupError::new(
                GroupErrorCode::FencedMemberEpoch,
                format!(
                    "member {member_id:?} committed at epoch {member_epoch}, ahead of its epoch {}",
                    member.epoch
                ),
            ));
        }
        if member_epoch < member.epoch {
            return Err(GroupError::new(
                GroupErrorCode::StaleMemberEpoch,
                format!(
                    "member {member_id:?} committed at epoch {member_epoch}; it is at epoch {} (heartbeat, then retry)",
                    member.epoch
                ),
            ));
        }
        Ok(())
    }

    /// Whether an operator may reset `group_id`'s offsets now: only with no members.
    pub fn check_reset(&self, group_id: &str) -> Result<(), GroupError> {
        match self.groups.get(group_id) {
            Some(g) if g.has_members() => Err(GroupError::new(
                GroupErrorCode::NonEmptyGroup,
                format!(
                    "group {group_id:?} has {} members; stop them before resetting offsets",
                    g.member_count()
                ),
            )),
            _ => Ok(()),
        }
    }

    /// Applies one committed (or deleted) offset, as read from the log or just committed.
    pub fn apply_offset(&mut self, key: OffsetKey, value: Option<OffsetValue>) {
        let tp = (key.topic, key.partition);
        match value {
            Some(v) => {
                let committed = Committed {
                    offset: v.offset,
                    metadata: v.metadata,
                    commit_timestamp_ms: v.commit_timestamp_ms,
                };
                self.groups.entry(key.group).or_default().offsets.insert(tp, committed);
            }
            None => {
                if let Some(g) = self.groups.get_mut(&key.group) {
                    g.offsets.remove(&tp);
                }
                self.forget_if_dead(&key.group);
            }
        }
    }

    pub(super) fn forget_if_dead(&mut self, group_id: &str) {
        if self.groups.get(group_id).is_some_and(|g| !g.has_members() && g.offsets.is_empty()) {
            self.groups.remove(group_id);
        }
    }
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
