//! Kafka's *classic* consumer group protocol (JoinGroup, SyncGroup, Heartbeat, LeaveGroup)
//! as a pure, deterministic state machine over [`Groups`]: requests go in with the time
//! (`now_ms`, the caller's monotonic clock), answers come out. No I/O, no clock, no
//! randomness (new member ids are handed in).
//!
//! A classic group moves through Kafka's states:
//! - **Empty**: no members (it may still have committed offsets);
//! - **PreparingRebalance**: the *join phase*. It ends when every known member has joined
//!   again (and no member id handed out with MEMBER_ID_REQUIRED is still outstanding), or at
//!   the rebalance timeout (the largest of the members'), when members that did not join
//!   again are removed. A group leaving Empty waits the initial rebalance delay first
//!   (Kafka's `group.initial.rebalance.delay.ms`), extended while new members keep
//!   arriving, never past the rebalance timeout, so a starting fleet joins one generation;
//! - **CompletingRebalance**: the generation moved on and every joiner was answered; the
//!   leader computes the assignment with its own assignor and sends it in SyncGroup;
//! - **Stable**: the leader's assignment was stored and relayed to every member.
//!
//! The coordinator never parses protocol metadata or assignments: it only relays bytes, so
//! any client assignor (range, roundrobin, cooperative-sticky) works.
//!
//! JoinGroup and SyncGroup often cannot be answered at once. Every answer, immediate or
//! later, is queued as a [`ClassicReply`] keyed by group and member id, which the caller
//! takes with [`Groups::take_replies`] after each call (and after [`Groups::expire`]) and
//! hands to whoever waits for it.
//!
//! Membership lives only in memory, as for KIP-848 groups: after a coordinator failover the
//! members get UNKNOWN_MEMBER_ID and join again. Static members (KIP-345,
//! `group.instance.id`) are supported: a member joining with a known instance id and no
//! member id takes over its predecessor's place and fences the old member id.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;

use super::coordinator::CLIENT_ID_BYTES_MAX;
use super::error::{GroupError, GroupErrorCode};
use super::state::{
    Expiry, GROUP_MEMBERS_MAX, Groups, MEMBER_ID_BYTES_MAX, REBALANCE_TIMEOUT_MAX_MS,
    REBALANCE_TIMEOUT_MIN_MS, SESSION_TIMEOUT_MAX_MS, SESSION_TIMEOUT_MIN_MS,
};

/// How long a group leaving Empty waits for more members before the first generation
/// (Kafka's `group.initial.rebalance.delay.ms` default), in milliseconds.
pub const INITIAL_REBALANCE_DELAY_DEFAULT_MS: u64 = 3_000;
/// Longest client host a member may bring, in bytes.
pub const CLIENT_HOST_BYTES_MAX: usize = 255;
/// Longest group instance id (KIP-345), in bytes.
pub const INSTANCE_ID_BYTES_MAX: usize = 255;
/// Longest protocol type or protocol name, in bytes.
pub const PROTOCOL_NAME_BYTES_MAX: usize = 255;
/// Most protocols (assignors) one member may offer. Clients offer one to three.
pub const PROTOCOLS_PER_MEMBER_MAX: usize = 32;
/// Largest metadata of one protocol, in bytes. A consumer's subscription with its owned
/// partitions (cooperative-sticky) stays far below this for any realistic group.
pub const PROTOCOL_METADATA_BYTES_MAX: usize = 1 << 20;
/// Largest assignment the leader may give one member, in bytes.
pub const ASSIGNMENT_BYTES_MAX: usize = 1 << 20;

/// A classic group's state, with Kafka's names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ClassicState {
    /// No members.
    #[default]
    Empty,
    /// The join phase: waiting for members to join (again).
    PreparingRebalance,
    /// Joiners were answered; waiting for the leader's SyncGroup.
    CompletingRebalance,
    /// The leader's assignment was relayed.
    Stable,
    /// Deleted, or unknown (only in answers: a dead group is forgotten).
    Dead,
}

impl ClassicState {
    /// Kafka's name (ListGroups, DescribeGroups).
    pub fn name(self) -> &'static str {
        match self {
            ClassicState::Empty => "Empty",
            ClassicState::PreparingRebalance => "PreparingRebalance",
            ClassicState::CompletingRebalance => "CompletingRebalance",
            ClassicState::Stable => "Stable",
            ClassicState::Dead => "Dead",
        }
    }
}

/// One protocol (assignor) a member offers, with its opaque metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinProtocol {
    /// The protocol's name, e.g. "range" or "cooperative-sticky".
    pub name: String,
    /// Opaque to the coordinator; relayed to the leader.
    pub metadata: Bytes,
}

/// A JoinGroup request, without the group id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinGroupRequest {
    /// Empty on a member's first join.
    pub member_id: String,
    /// The static member's `group.instance.id` (KIP-345), if any.
    pub group_instance_id: Option<String>,
    /// JoinGroup v4+: a new member is handed an id with MEMBER_ID_REQUIRED and joins again
    /// with it, so a lost answer does not leave a ghost member behind. v0-3: false.
    pub require_known_member_id: bool,
    /// E.g. "consumer"; every member of a group has the same. Not empty.
    pub protocol_type: String,
    /// The protocols offered, most preferred first. Not empty.
    pub protocols: Vec<JoinProtocol>,
    /// Removed after this long without a heartbeat, in ms; must be within
    /// [`SESSION_TIMEOUT_MIN_MS`]..=[`SESSION_TIMEOUT_MAX_MS`] (INVALID_SESSION_TIMEOUT).
    pub session_timeout_ms: i32,
    /// How long a rebalance waits for this member, in ms. ≤ 0 (JoinGroup v0 has none):
    /// the session timeout. Clamped to the allowed range.
    pub rebalance_timeout_ms: i32,
    /// For people.
    pub client_id: String,
    /// The client's address, for people.
    pub client_host: String,
}

/// One member as the leader sees it in its JoinGroup answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinGroupMember {
    /// The member id.
    pub member_id: String,
    /// Its group instance id, if static.
    pub group_instance_id: Option<String>,
    /// Its metadata for the chosen protocol.
    pub metadata: Bytes,
}

/// The answer to a JoinGroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinGroupOutcome {
    /// The generation the member joined.
    pub generation_id: i32,
    /// The group's protocol type.
    pub protocol_type: Option<String>,
    /// The chosen protocol.
    pub protocol_name: Option<String>,
    /// The leader's member id.
    pub leader: String,
    /// This member's id.
    pub member_id: String,
    /// For the leader: every member, with its metadata. Empty for the others.
    pub members: Vec<JoinGroupMember>,
}

/// One member's assignment in the leader's SyncGroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncAssignment {
    /// The member.
    pub member_id: String,
    /// Opaque; relayed to that member.
    pub assignment: Bytes,
}

/// A SyncGroup request, without the group id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncGroupRequest {
    /// The member id.
    pub member_id: String,
    /// The generation it joined.
    pub generation_id: i32,
    /// Its group instance id, if static.
    pub group_instance_id: Option<String>,
    /// SyncGroup v5+: must match the group's, when given.
    pub protocol_type: Option<String>,
    /// SyncGroup v5+: must match the chosen protocol, when given.
    pub protocol_name: Option<String>,
    /// From the leader: every member's assignment. Ignored from the others.
    pub assignments: Vec<SyncAssignment>,
}

/// The answer to a SyncGroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncGroupOutcome {
    /// The group's protocol type.
    pub protocol_type: Option<String>,
    /// The chosen protocol.
    pub protocol_name: Option<String>,
    /// This member's assignment (empty if the leader gave it none).
    pub assignment: Bytes,
}

/// A classic Heartbeat request, without the group id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassicHeartbeat {
    /// The member id.
    pub member_id: String,
    /// The generation it is in.
    pub generation_id: i32,
    /// Its group instance id, if static.
    pub group_instance_id: Option<String>,
}

/// One member leaving (LeaveGroup v0-2 names one by id; v3+ a list, each with an id or,
/// for a static member, an instance id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaveMember {
    /// The member id; may be empty when `group_instance_id` is given.
    pub member_id: String,
    /// The static member's instance id, if any.
    pub group_instance_id: Option<String>,
}

/// What became of one [`LeaveMember`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaveOutcome {
    /// As asked.
    pub member_id: String,
    /// As asked.
    pub group_instance_id: Option<String>,
    /// Removed, or why not.
    pub result: Result<(), GroupError>,
}

/// An answer to a JoinGroup or SyncGroup that waits, for the caller to deliver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClassicReply {
    /// The answer to member `member_id`'s JoinGroup.
    Join {
        /// The group.
        group_id: String,
        /// The member waiting.
        member_id: String,
        /// Its answer.
        result: Result<JoinGroupOutcome, GroupError>,
    },
    /// The answer to member `member_id`'s SyncGroup.
    Sync {
        /// The group.
        group_id: String,
        /// The member waiting.
        member_id: String,
        /// Its answer.
        result: Result<SyncGroupOutcome, GroupError>,
    },
}

/// A JoinGroup or SyncGroup accepted: its answer comes as a [`ClassicReply`] for
/// `member_id` (perhaps already queued).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassicWait {
    /// The member whose reply to wait for (for a new member: its new id).
    pub member_id: String,
    /// The state machine answers within this long (its own timeouts, checked by
    /// [`Groups::expire`]); a caller may give up a little after.
    pub within_ms: u64,
}

/// One classic member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassicMember {
    /// Its id.
    pub id: String,
    /// Its group instance id, if static.
    pub instance_id: Option<String>,
    /// For people.
    pub client_id: String,
    /// For people.
    pub client_host: String,
    /// Removed after this long without a heartbeat (while not waiting in a join or sync).
    pub session_timeout_ms: u64,
    /// How long a rebalance waits for it.
    pub rebalance_timeout_ms: u64,
    /// Its protocols, most preferred first.
    pub protocols: Vec<JoinProtocol>,
    /// What the leader gave it in the last SyncGroup.
    pub assignment: Bytes,
    /// Its last heartbeat (or join, sync, commit).
    pub last_heartbeat_ms: u64,
    /// A JoinGroup of it waits for the join phase to end.
    pub awaiting_join: bool,
    /// A SyncGroup of it waits for the leader's.
    pub awaiting_sync: bool,
    /// It sent SyncGroup in this generation.
    pub synced: bool,
    /// When it joined the group, in join order (the leader is the longest-standing joiner).
    pub seq: u64,
}

impl ClassicMember {
    fn metadata(&self, protocol: Option<&str>) -> Bytes {
        protocol
            .and_then(|p| self.protocols.iter().find(|q| q.name == p))
            .map(|q| q.metadata.clone())
            .unwrap_or_default()
    }
}

/// The initial rebalance delay of a group that left Empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitialDelay {
    /// Each extension's length.
    pub delay_ms: u64,
    /// How much of the rebalance timeout is left to extend by.
    pub remaining_ms: u64,
    /// A new member joined during the current delay.
    pub new_member_added: bool,
}

/// One classic group's membership (its offsets live in [`super::state::Group`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClassicGroup {
    /// The state.
    pub state: ClassicState,
    /// Moves on every completed join phase.
    pub generation: i32,
    /// Every member's protocol type (kept while Empty, as Kafka does).
    pub protocol_type: Option<String>,
    /// The protocol chosen for the generation.
    pub protocol: Option<String>,
    /// The leader's member id.
    pub leader: Option<String>,
    /// Members by id.
    pub members: BTreeMap<String, ClassicMember>,
    /// Ids handed out with MEMBER_ID_REQUIRED and not joined yet, with when they lapse.
    pub pending: BTreeMap<String, u64>,
    /// Static members: instance id to member id.
    pub instances: BTreeMap<String, String>,
    /// In PreparingRebalance: when the join phase ends at the latest (or the initial delay
    /// is next looked at).
    pub join_deadline_ms: Option<u64>,
    /// In PreparingRebalance after Empty: the initial delay.
    pub initial_delay: Option<InitialDelay>,
    /// In CompletingRebalance: members that have not sent SyncGroup by then are removed.
    pub sync_deadline_ms: Option<u64>,
    next_seq: u64,
}

fn error(code: GroupErrorCode, message: String) -> GroupError {
    GroupError::new(code, message)
}

fn unknown_member(group_id: &str, member_id: &str) -> GroupError {
    error(
        GroupErrorCode::UnknownMemberId,
        format!("member {member_id:?} is not in group {group_id:?}; join again without a member id"),
    )
}

fn rebalancing(group_id: &str) -> GroupError {
    error(GroupErrorCode::RebalanceInProgress, format!("group {group_id:?} is rebalancing; join again"))
}

fn fenced(group_id: &str, instance: &str, member_id: &str) -> GroupError {
    error(
        GroupErrorCode::FencedInstanceId,
        format!(
            "member {member_id:?} of group {group_id:?} was replaced by a newer member with instance id {instance:?}"
        ),
    )
}

fn check_len(what: &str, value: &str, max: usize) -> Result<(), GroupError> {
    if value.len() > max {
        return Err(GroupError::invalid(format!("{what} is {} bytes, over the limit of {max}", value.len())));
    }
    Ok(())
}

impl JoinGroupRequest {
    /// Checks the sizes and timeouts; answers the clamped (session, rebalance) timeouts.
    pub fn validate(&self) -> Result<(u64, u64), GroupError> {
        check_len("member_id", &self.member_id, MEMBER_ID_BYTES_MAX)?;
        if let Some(instance) = &self.group_instance_id {
            if instance.is_empty() {
                return Err(GroupError::invalid("group_instance_id is empty; leave it out instead"));
            }
            check_len("group_instance_id", instance, INSTANCE_ID_BYTES_MAX)?;
        }
        check_len("client_id", &self.client_id, CLIENT_ID_BYTES_MAX)?;
        check_len("client_host", &self.client_host, CLIENT_HOST_BYTES_MAX)?;
        check_len("protocol_type", &self.protocol_type, PROTOCOL_NAME_BYTES_MAX)?;
        if self.protocols.len() > PROTOCOLS_PER_MEMBER_MAX {
            return Err(GroupError::invalid(format!(
                "{} protocols, over the limit of {PROTOCOLS_PER_MEMBER_MAX}",
                self.protocols.len()
            )));
        }
        for p in &self.protocols {
            check_len("a protocol name", &p.name, PROTOCOL_NAME_BYTES_MAX)?;
            if p.metadata.len() > PROTOCOL_METADATA_BYTES_MAX {
                return Err(GroupError::invalid(format!(
                    "the metadata of protocol {:?} is {} bytes, over the limit of {PROTOCOL_METADATA_BYTES_MAX}",
                    p.name,
                    p.metadata.len()
                )));
            }
        }
        let session = u64::try_from(self.session_timeout_ms).unwrap_or(0);
        if !(SESSION_TIMEOUT_MIN_MS..=SESSION_TIMEOUT_MAX_MS).contains(&session) {
            return Err(error(
                GroupErrorCode::InvalidSessionTimeout,
                format!(
                    "session timeout {} ms is outside {SESSION_TIMEOUT_MIN_MS}..={SESSION_TIMEOUT_MAX_MS} ms",
                    self.session_timeout_ms
                ),
            ));
        }
        let rebalance = match u64::try_from(self.rebalance_timeout_ms) {
            Ok(ms) if ms > 0 => ms,
            _ => session,
        };
        Ok((session, rebalance.clamp(REBALANCE_TIMEOUT_MIN_MS, REBALANCE_TIMEOUT_MAX_MS)))
    }

    fn same_protocols(&self, member: &ClassicMember) -> bool {
        self.protocols == member.protocols
    }
}

impl ClassicGroup {
    /// Whether it has members, or member ids handed out and not yet joined.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty() && self.pending.is_empty()
    }

    /// The largest rebalance timeout among the members.
    pub fn rebalance_timeout_ms(&self) -> u64 {
        self.members.values().map(|m| m.rebalance_timeout_ms).max().unwrap_or(0)
    }

    /// The protocols every member supports.
    fn candidates(&self, except: Option<&str>) -> Option<BTreeSet<&str>> {
        let mut out: Option<BTreeSet<&str>> = None;
        for m in self.members.values().filter(|m| Some(m.id.as_str()) != except) {
            let names: BTreeSet<&str> = m.protocols.iter().map(|p| p.name.as_str()).collect();
            out = Some(match out {
                None => names,
                Some(have) => have.intersection(&names).copied().collect(),
            });
        }
        out
    }

    /// Whether a member (`except`: itself, when it is already a member) with these protocols
    /// may join: the same protocol type as the group and a protocol every other member has.
    fn check_protocols(
        &self,
        group_id: &str,
        req: &JoinGroupRequest,
        except: Option<&str>,
    ) -> Result<(), GroupError> {
        if req.protocol_type.is_empty() || req.protocols.is_empty() {
            return Err(error(
                GroupErrorCode::InconsistentGroupProtocol,
                "a member needs a protocol type and at least one protocol".to_owned(),
            ));
        }
        let Some(candidates) = self.candidates(except) else { return Ok(()) };
        if self.protocol_type.as_deref().is_some_and(|t| t != req.protocol_type) {
            return Err(error(
                GroupErrorCode::InconsistentGroupProtocol,
                format!(
                    "group {group_id:?} has protocol type {:?}; this member has {:?}",
                    self.protocol_type.as_deref().unwrap_or_default(),
                    req.protocol_type
                ),
            ));
        }
        if !req.protocols.iter().any(|p| candidates.contains(p.name.as_str())) {
            return Err(error(
                GroupErrorCode::InconsistentGroupProtocol,
                format!(
                    "no protocol of this member is supported by every member of group {group_id:?} ({candidates:?})"
                ),
            ));
        }
        Ok(())
    }

    /// Kafka's vote: among the protocols every member supports, each member votes for the
    /// first of its own list; most votes wins, ties go to the smallest name.
    pub fn select_protocol(&self) -> Option<String> {
        let candidates = self.candidates(None)?;
        let mut votes: BTreeMap<&str, usize> = candidates.iter().map(|c| (*c, 0)).collect();
        for m in self.members.values() {
            if let Some(p) = m.protocols.iter().find(|p| candidates.contains(p.name.as_str())) {
                *votes.entry(p.name.as_str()).or_default() += 1;
            }
        }
        // max_by_key keeps the last maximum; iterate names in reverse so that is the smallest.
        votes.into_iter().rev().max_by_key(|(_, v)| *v).map(|(name, _)| name.to_owned())
    }

    fn is_leader(&self, id: &str) -> bool {
        self.leader.as_deref() == Some(id)
    }

    fn outcome(&self, member_id: &str) -> JoinGroupOutcome {
        let members = if self.is_leader(member_id) {
            self.members
                .values()
                .map(|m| JoinGroupMember {
                    member_id: m.id.clone(),
                    group_instance_id: m.instance_id.clone(),
                    metadata: m.metadata(self.protocol.as_deref()),
                })
                .collect()
        } else {
            Vec::new()
        };
        JoinGroupOutcome {
            generation_id: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol.clone(),
            leader: self.leader.clone().unwrap_or_default(),
            member_id: member_id.to_owned(),
            members,
        }
    }

    /// Starts a join phase.
    fn prepare_rebalance(
        &mut self,
        group_id: &str,
        now_ms: u64,
        initial_delay_ms: u64,
        out: &mut Vec<ClassicReply>,
    ) {
        if self.state == ClassicState::CompletingRebalance {
            // The leader's assignment for this generation will never come: members waiting
            // in SyncGroup must join again.
            for m in self.members.values_mut() {
                m.assignment = Bytes::new();
                if std::mem::take(&mut m.awaiting_sync) {
                    out.push(ClassicReply::Sync {
                        group_id: group_id.to_owned(),
                        member_id: m.id.clone(),
                        result: Err(rebalancing(group_id)),
                    });
                }
            }
        }
        let timeout = self.rebalance_timeout_ms();
        if self.state == ClassicState::Empty {
            let delay = initial_delay_ms.min(timeout);
            self.initial_delay = Some(InitialDelay {
                delay_ms: initial_delay_ms,
                remaining_ms: timeout.saturating_sub(delay),
                new_member_added: false,
            });
            self.join_deadline_ms = Some(now_ms.saturating_add(delay));
        } else {
            self.initial_delay = None;
            self.join_deadline_ms = Some(now_ms.saturating_add(timeout));
        }
        self.sync_deadline_ms = None;
        self.state = ClassicState::PreparingRebalance;
    }

    /// Ends the join phase early when every member has joined (never during the initial
    /// delay, which only its deadline ends).
    fn try_complete_join(&mut self, group_id: &str, now_ms: u64, out: &mut Vec<ClassicReply>) {
        if self.state == ClassicState::PreparingRebalance
            && self.initial_delay.is_none()
            && self.pending.is_empty()
            && self.members.values().all(|m| m.awaiting_join)
        {
            self.complete_join(group_id, now_ms, out);
        }
    }

    /// The join deadline passed: extend the initial delay, or end the join phase.
    fn on_join_deadline(&mut self, group_id: &str, now_ms: u64, out: &mut Vec<ClassicReply>) {
        if let Some(d) = &mut self.initial_delay
            && d.new_member_added
            && d.remaining_ms > 0
        {
            let delay = d.delay_ms.min(d.remaining_ms);
            d.remaining_ms -= delay;
            d.new_member_added = false;
            self.join_deadline_ms = Some(now_ms.saturating_add(delay));
            return;
        }
        self.complete_join(group_id, now_ms, out);
    }

    /// Ends the join phase: removes dynamic members that did not join again, moves the
    /// generation on, and answers every joiner.
    fn complete_join(&mut self, group_id: &str, now_ms: u64, out: &mut Vec<ClassicReply>) {
        self.join_deadline_ms = None;
        self.initial_delay = None;
        // Static members that did not join again keep their place (KIP-345: they are
        // expected back, and their session timeout removes them if not).
        let gone: Vec<String> = self
            .members
            .values()
            .filter(|m| !m.awaiting_join && m.instance_id.is_none())
            .map(|m| m.id.clone())
            .collect();
        for id in gone {
            self.remove_raw(group_id, &id, out);
        }
        if self.members.is_empty() {
            self.generation = self.generation.saturating_add(1);
            self.protocol = None;
            self.leader = None;
            self.state = ClassicState::Empty;
            return;
        }
        if !self.leader.as_deref().is_some_and(|l| self.members.get(l).is_some_and(|m| m.awaiting_join)) {
            let Some(first) = self.members.values().filter(|m| m.awaiting_join).min_by_key(|m| m.seq) else {
                // Only static members that did not join again: wait another rebalance
                // timeout for them (or for their sessions to run out), as Kafka does.
                self.join_deadline_ms = Some(now_ms.saturating_add(self.rebalance_timeout_ms()));
                return;
            };
            self.leader = Some(first.id.clone());
        }
        self.generation = self.generation.saturating_add(1);
        self.protocol = self.select_protocol();
        self.state = ClassicState::CompletingRebalance;
        self.sync_deadline_ms = Some(now_ms.saturating_add(self.rebalance_timeout_ms()));
        let joiners: Vec<String> =
            self.members.values().filter(|m| m.awaiting_join).map(|m| m.id.clone()).collect();
        for m in self.members.values_mut() {
            m.synced = false;
        }
        for id in joiners {
            let outcome = self.outcome(&id);
            if let Some(m) = self.members.get_mut(&id) {
                m.awaiting_join = false;
                m.last_heartbeat_ms = now_ms;
            }
            out.push(ClassicReply::Join {
                group_id: group_id.to_owned(),
                member_id: id,
                result: Ok(outcome),
            });
        }
    }

    /// Removes a member, answering its waiting calls, without moving the state.
    fn remove_raw(&mut self, group_id: &str, id: &str, out: &mut Vec<ClassicReply>) -> Option<ClassicMember> {
        let m = self.members.remove(id)?;
        if let Some(instance) = &m.instance_id
            && self.instances.get(instance).is_some_and(|mid| mid == id)
        {
            self.instances.remove(instance);
        }
        if m.awaiting_join {
            out.push(ClassicReply::Join {
                group_id: group_id.to_owned(),
                member_id: id.to_owned(),
                result: Err(unknown_member(group_id, id)),
            });
        }
        if m.awaiting_sync {
            out.push(ClassicReply::Sync {
                group_id: group_id.to_owned(),
                member_id: id.to_owned(),
                result: Err(unknown_member(group_id, id)),
            });
        }
        if self.is_leader(id) {
            let next = self.members.values().min_by_key(|m| (!m.awaiting_join, m.seq)).map(|m| m.id.clone());
            self.leader = next;
        }
        Some(m)
    }

    /// Removes a member and rebalances (Kafka's `removeMemberAndUpdateGroup`).
    fn remove_member(&mut self, group_id: &str, id: &str, now_ms: u64, out: &mut Vec<ClassicReply>) -> bool {
        if self.remove_raw(group_id, id, out).is_none() {
            return false;
        }
        if matches!(self.state, ClassicState::Stable | ClassicState::CompletingRebalance) {
            // Not from Empty, so no initial delay.
            self.prepare_rebalance(group_id, now_ms, 0, out);
        }
        self.try_complete_join(group_id, now_ms, out);
        true
    }

    /// Adds a member that waits in the join phase.
    #[allow(clippy::too_many_arguments)]
    fn add_member(
        &mut self,
        group_id: &str,
        id: String,
        req: JoinGroupRequest,
        timeouts: (u64, u64),
        now_ms: u64,
        initial_delay_ms: u64,
        out: &mut Vec<ClassicReply>,
    ) {
        if self.members.is_empty() {
            self.protocol_type = Some(req.protocol_type.clone());
        }
        if self.leader.is_none() {
            self.leader = Some(id.clone());
        }
        if let Some(instance) = &req.group_instance_id {
            self.instances.insert(instance.clone(), id.clone());
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.members.insert(
            id.clone(),
            ClassicMember {
                id,
                instance_id: req.group_instance_id,
                client_id: req.client_id,
                client_host: req.client_host,
                session_timeout_ms: timeouts.0,
                rebalance_timeout_ms: timeouts.1,
                protocols: req.protocols,
                assignment: Bytes::new(),
                last_heartbeat_ms: now_ms,
                awaiting_join: true,
                awaiting_sync: false,
                synced: false,
                seq,
            },
        );
        match self.state {
            ClassicState::PreparingRebalance => {
                if let Some(d) = &mut self.initial_delay {
                    d.new_member_added = true;
                }
            }
            _ => self.prepare_rebalance(group_id, now_ms, initial_delay_ms, out),
        }
        self.try_complete_join(group_id, now_ms, out);
    }

    /// Updates a member from its JoinGroup and makes it wait in the join phase.
    fn rejoin(
        &mut self,
        group_id: &str,
        id: &str,
        req: JoinGroupRequest,
        timeouts: (u64, u64),
        now_ms: u64,
        out: &mut Vec<ClassicReply>,
    ) {
        if let Some(m) = self.members.get_mut(id) {
            m.protocols = req.protocols;
            m.client_id = req.client_id;
            m.client_host = req.client_host;
            m.session_timeout_ms = timeouts.0;
            m.rebalance_timeout_ms = timeouts.1;
            m.last_heartbeat_ms = now_ms;
            m.awaiting_join = true;
        }
        if matches!(self.state, ClassicState::Stable | ClassicState::CompletingRebalance) {
            self.prepare_rebalance(group_id, now_ms, 0, out);
        }
        self.try_complete_join(group_id, now_ms, out);
    }

    /// Answers a JoinGroup at once with the current generation.
    fn answer_now(&mut self, group_id: &str, id: &str, now_ms: u64, out: &mut Vec<ClassicReply>) {
        if let Some(m) = self.members.get_mut(id) {
            m.last_heartbeat_ms = now_ms;
        }
        let outcome = self.outcome(id);
        out.push(ClassicReply::Join {
            group_id: group_id.to_owned(),
            member_id: id.to_owned(),
            result: Ok(outcome),
        });
    }

    /// Checks that `member_id` is a member and not fenced by a newer static member.
    fn check_member(
        &self,
        group_id: &str,
        member_id: &str,
        instance: Option<&str>,
    ) -> Result<(), GroupError> {
        if let Some(instance) = instance
            && self.instances.get(instance).is_some_and(|mid| mid != member_id)
        {
            return Err(fenced(group_id, instance, member_id));
        }
        if !self.members.contains_key(member_id) {
            return Err(unknown_member(group_id, member_id));
        }
        Ok(())
    }

    fn check_generation(&self, group_id: &str, generation_id: i32) -> Result<(), GroupError> {
        if generation_id != self.generation {
            return Err(error(
                GroupErrorCode::IllegalGeneration,
                format!(
                    "generation {generation_id} is not group {group_id:?}'s generation {}; join again",
                    self.generation
                ),
            ));
        }
        Ok(())
    }
}

/// A member id `prefix-suffix` as Kafka makes them (`client.id` or instance id, then a
/// unique part), within [`MEMBER_ID_BYTES_MAX`].
fn member_id(prefix: &str, suffix: &str) -> String {
    let room = MEMBER_ID_BYTES_MAX.saturating_sub(suffix.len() + 1);
    let mut cut = prefix.len().min(room);
    while !prefix.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}-{suffix}", &prefix[..cut])
}

impl Groups {
    /// The classic membership of `group_id`, if the group is known.
    pub fn classic(&self, group_id: &str) -> Option<&ClassicGroup> {
        self.group(group_id).map(|g| &g.classic)
    }

    /// Takes the replies queued by the calls so far, for the caller to deliver.
    pub fn take_replies(&mut self) -> Vec<ClassicReply> {
        std::mem::take(&mut self.replies)
    }

    /// One JoinGroup of `group_id`. `new_member_id` gives the unique part of a new member's
    /// id. The answer is queued (see [`Groups::take_replies`]); MEMBER_ID_REQUIRED and
    /// other refusals are answered here.
    pub fn join_group(
        &mut self,
        group_id: &str,
        req: JoinGroupRequest,
        now_ms: u64,
        new_member_id: &mut dyn FnMut() -> String,
    ) -> Result<ClassicWait, GroupError> {
        let timeouts = req.validate()?;
        if let Some(g) = self.groups.get(group_id)
            && !g.members.is_empty()
        {
            return Err(error(
                GroupErrorCode::InconsistentGroupProtocol,
                format!(
                    "group {group_id:?} has {} members using the consumer (KIP-848) protocol; a classic member \
                     cannot join it",
                    g.members.len()
                ),
            ));
        }
        let initial_delay_ms = self.initial_rebalance_delay_ms;
        let group = self.groups.entry(group_id.to_owned()).or_default();
        let result = join(
            &mut group.classic,
            group_id,
            req,
            timeouts,
            now_ms,
            initial_delay_ms,
            new_member_id,
            &mut self.replies,
        );
        let within_ms = group.classic.rebalance_timeout_ms().saturating_add(initial_delay_ms);
        self.forget_if_dead(group_id);
        result.map(|member_id| ClassicWait { member_id, within_ms })
    }

    /// One SyncGroup of `group_id`; the answer is queued (see [`Groups::take_replies`]).
    pub fn sync_group(
        &mut self,
        group_id: &str,
        req: SyncGroupRequest,
        now_ms: u64,
    ) -> Result<ClassicWait, GroupError> {
        if req.assignments.len() > GROUP_MEMBERS_MAX {
            return Err(GroupError::invalid(format!(
                "{} assignments, over the limit of {GROUP_MEMBERS_MAX} members",
                req.assignments.len()
            )));
        }
        if let Some(a) = req.assignments.iter().find(|a| a.assignment.len() > ASSIGNMENT_BYTES_MAX) {
            return Err(GroupError::invalid(format!(
                "the assignment of {:?} is {} bytes, over the limit of {ASSIGNMENT_BYTES_MAX}",
                a.member_id,
                a.assignment.len()
            )));
        }
        let g = self
            .groups
            .get_mut(group_id)
            .map(|g| &mut g.classic)
            .ok_or_else(|| unknown_member(group_id, &req.member_id))?;
        g.check_member(group_id, &req.member_id, req.group_instance_id.as_deref())?;
        g.check_generation(group_id, req.generation_id)?;
        let mismatch = |asked: &Option<String>, have: &Option<String>| asked.is_some() && asked != have;
        if mismatch(&req.protocol_type, &g.protocol_type) || mismatch(&req.protocol_name, &g.protocol) {
            return Err(error(
                GroupErrorCode::InconsistentGroupProtocol,
                format!(
                    "group {group_id:?} uses protocol type {:?} and protocol {:?}; the SyncGroup names {:?} and {:?}",
                    g.protocol_type, g.protocol, req.protocol_type, req.protocol_name
                ),
            ));
        }
        let within_ms = g.rebalance_timeout_ms();
        let wait = ClassicWait { member_id: req.member_id.clone(), within_ms };
        let answer = |g: &ClassicGroup, id: &str| ClassicReply::Sync {
            group_id: group_id.to_owned(),
            member_id: id.to_owned(),
            result: Ok(SyncGroupOutcome {
                protocol_type: g.protocol_type.clone(),
                protocol_name: g.protocol.clone(),
                assignment: g.members.get(id).map(|m| m.assignment.clone()).unwrap_or_default(),
            }),
        };
        match g.state {
            ClassicState::Empty | ClassicState::Dead => Err(unknown_member(group_id, &req.member_id)),
            ClassicState::PreparingRebalance => Err(rebalancing(group_id)),
            ClassicState::Stable => {
                if let Some(m) = g.members.get_mut(&req.member_id) {
                    m.last_heartbeat_ms = now_ms;
                }
                self.replies.push(answer(g, &req.member_id));
                Ok(wait)
            }
            ClassicState::CompletingRebalance => {
                if let Some(m) = g.members.get_mut(&req.member_id) {
                    m.awaiting_sync = true;
                    m.synced = true;
                    m.last_heartbeat_ms = now_ms;
                }
                if g.is_leader(&req.member_id) {
                    let mut given: BTreeMap<String, Bytes> =
                        req.assignments.into_iter().map(|a| (a.member_id, a.assignment)).collect();
                    for m in g.members.values_mut() {
                        m.assignment = given.remove(&m.id).unwrap_or_default();
                    }
                    g.state = ClassicState::Stable;
                    g.sync_deadline_ms = None;
                    let waiting: Vec<String> =
                        g.members.values().filter(|m| m.awaiting_sync).map(|m| m.id.clone()).collect();
                    for id in waiting {
                        self.replies.push(answer(g, &id));
                        if let Some(m) = g.members.get_mut(&id) {
                            m.awaiting_sync = false;
                        }
                    }
                }
                Ok(wait)
            }
        }
    }

    /// One classic Heartbeat of `group_id`.
    pub fn classic_heartbeat(
        &mut self,
        group_id: &str,
        hb: &ClassicHeartbeat,
        now_ms: u64,
    ) -> Result<(), GroupError> {
        let g = self
            .groups
            .get_mut(group_id)
            .map(|g| &mut g.classic)
            .ok_or_else(|| unknown_member(group_id, &hb.member_id))?;
        g.check_member(group_id, &hb.member_id, hb.group_instance_id.as_deref())?;
        g.check_generation(group_id, hb.generation_id)?;
        if let Some(m) = g.members.get_mut(&hb.member_id) {
            m.last_heartbeat_ms = now_ms;
        }
        match g.state {
            ClassicState::Empty | ClassicState::Dead => Err(unknown_member(group_id, &hb.member_id)),
            ClassicState::PreparingRebalance => Err(rebalancing(group_id)),
            ClassicState::CompletingRebalance | ClassicState::Stable => Ok(()),
        }
    }

    /// One LeaveGroup of `group_id`: each member is removed (then the group rebalances), or
    /// answered why not.
    pub fn leave_group(
        &mut self,
        group_id: &str,
        members: Vec<LeaveMember>,
        now_ms: u64,
    ) -> Vec<LeaveOutcome> {
        let mut outcomes = Vec::with_capacity(members.len());
        for leave in members {
            let result = match self.groups.get_mut(group_id) {
                None => Err(unknown_member(group_id, &leave.member_id)),
                Some(group) => leave_one(&mut group.classic, group_id, &leave, now_ms, &mut self.replies),
            };
            outcomes.push(LeaveOutcome {
                member_id: leave.member_id,
                group_instance_id: leave.group_instance_id,
                result,
            });
        }
        self.forget_if_dead(group_id);
        outcomes
    }

    /// Whether a classic member may commit offsets for `group_id` now (Kafka's OffsetCommit
    /// checks); a member's commit counts as a heartbeat. A group with KIP-848 members is
    /// checked as KIP-848 (Kafka's OffsetCommit v9+ carries the member epoch in the
    /// generation field).
    pub fn check_classic_commit(
        &mut self,
        group_id: &str,
        member_id: &str,
        generation_id: i32,
        group_instance_id: Option<&str>,
        now_ms: u64,
    ) -> Result<(), GroupError> {
        if self.groups.get(group_id).is_some_and(|g| !g.members.is_empty()) {
            return self.check_commit(group_id, member_id, generation_id);
        }
        let Some(g) = self.groups.get_mut(group_id).map(|g| &mut g.classic) else {
            if generation_id < 0 {
                return Ok(());
            }
            // Kafka's answer: a commit from a generation of a group that no longer exists.
            return Err(error(
                GroupErrorCode::IllegalGeneration,
                format!("group {group_id:?} does not exist, so it has no generation {generation_id}"),
            ));
        };
        if let Some(instance) = group_instance_id
            && g.instances.get(instance).is_some_and(|mid| mid != member_id)
        {
            return Err(fenced(group_id, instance, member_id));
        }
        if generation_id < 0 && g.state == ClassicState::Empty {
            // A consumer that only stores its offsets in the group.
            return Ok(());
        }
        if g.state == ClassicState::CompletingRebalance {
            return Err(rebalancing(group_id));
        }
        let Some(m) = g.members.get_mut(member_id) else { return Err(unknown_member(group_id, member_id)) };
        if generation_id != g.generation {
            return Err(error(
                GroupErrorCode::IllegalGeneration,
                format!(
                    "generation {generation_id} is not group {group_id:?}'s generation {}; join again",
                    g.generation
                ),
            ));
        }
        m.last_heartbeat_ms = now_ms;
        Ok(())
    }

    /// The classic part of [`Groups::expire`]: lapsed pending member ids, silent members,
    /// members that did not sync in time, and join phases whose deadline passed.
    pub(super) fn expire_classic(&mut self, now_ms: u64) -> Vec<(String, String, Expiry)> {
        let mut removed = Vec::new();
        for (group_id, group) in &mut self.groups {
            let g = &mut group.classic;
            let before = g.pending.len();
            g.pending.retain(|_, lapse| *lapse > now_ms);
            if g.pending.len() != before {
                g.try_complete_join(group_id, now_ms, &mut self.replies);
            }
            let silent: Vec<String> = g
                .members
                .values()
                .filter(|m| {
                    !m.awaiting_join
                        && !m.awaiting_sync
                        && now_ms.saturating_sub(m.last_heartbeat_ms) > m.session_timeout_ms
                })
                .map(|m| m.id.clone())
                .collect();
            for id in silent {
                g.remove_member(group_id, &id, now_ms, &mut self.replies);
                removed.push((group_id.clone(), id, Expiry::Session));
            }
            if g.state == ClassicState::CompletingRebalance && g.sync_deadline_ms.is_some_and(|d| d <= now_ms)
            {
                let unsynced: Vec<String> =
                    g.members.values().filter(|m| !m.synced).map(|m| m.id.clone()).collect();
                for id in unsynced {
                    g.remove_member(group_id, &id, now_ms, &mut self.replies);
                    removed.push((group_id.clone(), id, Expiry::Rebalance));
                }
            }
            if g.state == ClassicState::PreparingRebalance && g.join_deadline_ms.is_some_and(|d| d <= now_ms)
            {
                let before: BTreeSet<String> = g.members.keys().cloned().collect();
                g.on_join_deadline(group_id, now_ms, &mut self.replies);
                removed.extend(
                    before
                        .into_iter()
                        .filter(|id| !g.members.contains_key(id))
                        .map(|id| (group_id.clone(), id, Expiry::Rebalance)),
                );
            }
        }
        removed
    }
}

/// A JoinGroup (Kafka's `handleJoinGroup`): answers the member id whose reply to wait for.
#[allow(clippy::too_many_arguments)]
fn join(
    g: &mut ClassicGroup,
    group_id: &str,
    req: JoinGroupRequest,
    timeouts: (u64, u64),
    now_ms: u64,
    initial_delay_ms: u64,
    new_member_id: &mut dyn FnMut() -> String,
    out: &mut Vec<ClassicReply>,
) -> Result<String, GroupError> {
    if req.member_id.is_empty() {
        let known = req.group_instance_id.as_ref().and_then(|i| g.instances.get(i)).cloned();
        if known.is_none() && g.members.len() + g.pending.len() >= GROUP_MEMBERS_MAX {
            return Err(error(
                GroupErrorCode::GroupMaxSizeReached,
                format!("group {group_id:?} has {GROUP_MEMBERS_MAX} members, its maximum"),
            ));
        }
        g.check_protocols(group_id, &req, known.as_deref())?;
        let prefix = req.group_instance_id.as_deref().unwrap_or(&req.client_id).to_owned();
        let mut id = member_id(&prefix, &new_member_id());
        let mut tries = 1;
        while g.members.contains_key(&id) || g.pending.contains_key(&id) {
            if tries == 16 {
                return Err(error(
                    GroupErrorCode::UnknownServerError,
                    "could not pick a member id not in use".into(),
                ));
            }
            id = member_id(&prefix, &new_member_id());
            tries += 1;
        }
        if let Some(old) = known {
            replace_static(g, group_id, &old, id.clone(), req, timeouts, now_ms, out);
            return Ok(id);
        }
        if req.group_instance_id.is_none() && req.require_known_member_id {
            g.pending.insert(id.clone(), now_ms.saturating_add(timeouts.0));
            return Err(GroupError {
                member_id: Some(id),
                ..error(
                    GroupErrorCode::MemberIdRequired,
                    "join again with the member id given in this answer".to_owned(),
                )
            });
        }
        g.add_member(group_id, id.clone(), req, timeouts, now_ms, initial_delay_ms, out);
        return Ok(id);
    }
    let id = req.member_id.clone();
    if g.pending.contains_key(&id) {
        g.check_protocols(group_id, &req, None)?;
        g.pending.remove(&id);
        g.add_member(group_id, id.clone(), req, timeouts, now_ms, initial_delay_ms, out);
        return Ok(id);
    }
    if let Some(instance) = &req.group_instance_id {
        match g.instances.get(instance) {
            Some(mid) if *mid != id => return Err(fenced(group_id, instance, &id)),
            Some(_) => {}
            None => return Err(unknown_member(group_id, &id)),
        }
    }
    let Some(member) = g.members.get(&id) else { return Err(unknown_member(group_id, &id)) };
    g.check_protocols(group_id, &req, Some(&id))?;
    let same = req.same_protocols(member);
    match g.state {
        ClassicState::CompletingRebalance if same => g.answer_now(group_id, &id, now_ms, out),
        // A follower joining again with what it had (its answer was lost) gets the
        // generation again; the leader or a changed member starts a rebalance.
        ClassicState::Stable if same && !g.is_leader(&id) => g.answer_now(group_id, &id, now_ms, out),
        _ => g.rejoin(group_id, &id, req, timeouts, now_ms, out),
    }
    Ok(id)
}

/// A static member joining without a member id while its instance id is known: it takes
/// the old member's place under a new id, and the old id is fenced.
#[allow(clippy::too_many_arguments)]
fn replace_static(
    g: &mut ClassicGroup,
    group_id: &str,
    old: &str,
    id: String,
    req: JoinGroupRequest,
    timeouts: (u64, u64),
    now_ms: u64,
    out: &mut Vec<ClassicReply>,
) {
    let Some(mut member) = g.members.remove(old) else { return };
    let instance = req.group_instance_id.clone().unwrap_or_default();
    if member.awaiting_join {
        out.push(ClassicReply::Join {
            group_id: group_id.to_owned(),
            member_id: old.to_owned(),
            result: Err(fenced(group_id, &instance, old)),
        });
    }
    if member.awaiting_sync {
        out.push(ClassicReply::Sync {
            group_id: group_id.to_owned(),
            member_id: old.to_owned(),
            result: Err(fenced(group_id, &instance, old)),
        });
    }
    let same = req.same_protocols(&member);
    let was_leader = g.is_leader(old);
    member.id = id.clone();
    member.protocols = req.protocols;
    member.client_id = req.client_id;
    member.client_host = req.client_host;
    member.session_timeout_ms = timeouts.0;
    member.rebalance_timeout_ms = timeouts.1;
    member.last_heartbeat_ms = now_ms;
    member.awaiting_join = false;
    member.awaiting_sync = false;
    g.members.insert(id.clone(), member);
    g.instances.insert(instance, id.clone());
    if was_leader {
        g.leader = Some(id.clone());
    }
    if g.state == ClassicState::Stable && same && !was_leader {
        // KIP-345's point: a restarted static member gets its old place (and, by SyncGroup,
        // its old assignment) without a rebalance.
        g.answer_now(group_id, &id, now_ms, out);
        return;
    }
    // The leader must see the members' metadata again, and any other state is mid-rebalance.
    if let Some(m) = g.members.get_mut(&id) {
        m.awaiting_join = true;
    }
    if matches!(g.state, ClassicState::Stable | ClassicState::CompletingRebalance) {
        g.prepare_rebalance(group_id, now_ms, 0, out);
    }
    g.try_complete_join(group_id, now_ms, out);
}

/// One member of a LeaveGroup.
fn leave_one(
    g: &mut ClassicGroup,
    group_id: &str,
    leave: &LeaveMember,
    now_ms: u64,
    out: &mut Vec<ClassicReply>,
) -> Result<(), GroupError> {
    let id = match &leave.group_instance_id {
        Some(instance) => {
            let Some(mid) = g.instances.get(instance) else {
                return Err(unknown_member(group_id, &leave.member_id));
            };
            if !leave.member_id.is_empty() && *mid != leave.member_id {
                return Err(fenced(group_id, instance, &leave.member_id));
            }
            mid.clone()
        }
        None => leave.member_id.clone(),
    };
    if g.pending.remove(&id).is_some() {
        g.try_complete_join(group_id, now_ms, out);
        return Ok(());
    }
    if g.remove_member(group_id, &id, now_ms, out) { Ok(()) } else { Err(unknown_member(group_id, &id)) }
}

#[cfg(test)]
#[path = "classic_tests.rs"]
mod tests;
