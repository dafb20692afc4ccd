//! When a follower starts an election: after a fixed silence, staggered by rank, instead of
//! openraft's randomized timer.
//!
//! openraft 0.9 draws each node's election timeout once, at startup, from
//! `[election_timeout_min, election_timeout_max)`, checks it on a tick of 1.5 heartbeats,
//! and has every voter refuse votes while its leader lease runs (`election_timeout_max` since
//! it last heard from the leader). A follower whose timeout is shorter than the lease asks
//! too early, is refused, and waits a whole timeout again; the other follower then often
//! starts its own election in the same term, and the votes split. Measured: a leader killed
//! with kill -9 was replaced after 0.9 to 1.2 s with 300-600 ms timeouts.
//!
//! So the node turns openraft's timer off (`enable_elect = false`) and runs this one:
//! - a follower tracks the last time it heard from a leader (an AppendEntries or
//!   InstallSnapshot that did not carry a stale vote) or granted a vote ([`Contact`]);
//! - its **rank** is its position among the voters other than the leader it last knew, in id
//!   order (among all voters when it knows none);
//! - it elects once the silence reaches `lease + margin + rank × stagger` (the lease is
//!   `election_timeout_max`, so every voter's lease has run out by then; the stagger is
//!   `election_timeout_max - election_timeout_min`), and while no leader shows up it tries
//!   again every [`RETRY_AFTER`] plus a random jitter of up to one stagger, so two
//!   candidates that collided once do not collide forever.
//!
//! Rank 0 therefore asks exactly when its vote can first be granted, and rank 1 only a
//! stagger later, if rank 0 did not win: after a leader dies, the next one is in place one
//! lease after the last heartbeat, not two. Safety is Raft's: this decides only *when* to
//! ask, and openraft still grants votes by term, log and lease.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::ServerState;
use rand::Rng;
use tokio_util::sync::CancellationToken;

use super::machine::Machine;
use super::types::{NodeId, Raft};

/// How often the elector looks at the clock and the Raft state.
pub const ELECTOR_POLL: Duration = Duration::from_millis(10);
/// Added to the lease before the first attempt: this node stamps a heartbeat when it
/// arrives, the other voters when they have processed it, a little later; asking before
/// their lease ends too would only be refused.
pub const LEASE_MARGIN: Duration = Duration::from_millis(50);
/// After an attempt that did not produce a leader, the next one comes this long later plus a
/// random jitter of up to one stagger (every lease has run out by then; the jitter keeps two
/// candidates from colliding again and again).
pub const RETRY_AFTER: Duration = Duration::from_millis(100);

/// The last moment this node heard from a leader or granted a vote, shared by the Raft
/// service (which records it) and the [`elector_task`] (which reads it).
#[derive(Debug)]
pub struct Contact(Mutex<Instant>);

impl Default for Contact {
    fn default() -> Self {
        Contact(Mutex::new(Instant::now()))
    }
}

impl Contact {
    /// Records contact now.
    pub fn touch(&self) {
        *self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Instant::now();
    }

    /// The last contact.
    pub fn last(&self) -> Instant {
        *self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The election timing of one node.
#[derive(Debug, Clone, Copy)]
pub struct ElectorTiming {
    /// How long voters refuse votes after hearing from a leader (openraft's leader lease:
    /// `election_timeout_max`).
    pub lease: Duration,
    /// The extra wait per rank, and the largest retry jitter.
    pub stagger: Duration,
}

/// This node's rank among the voters that could succeed `leader`: its position, in id order,
/// among the voters other than `leader` (or among all voters when no leader is known).
/// `None` when the node is not a voter.
pub fn rank(me: NodeId, voters: impl IntoIterator<Item = NodeId>, leader: Option<NodeId>) -> Option<usize> {
    let mut candidates: Vec<NodeId> = voters.into_iter().filter(|v| Some(*v) != leader).collect();
    candidates.sort_unstable();
    candidates.dedup();
    candidates.iter().position(|v| *v == me)
}

/// How long after the last contact a node of `rank` first elects.
pub fn election_delay(timing: ElectorTiming, rank: usize) -> Duration {
    let rank = u32::try_from(rank).unwrap_or(u32::MAX);
    timing.lease.saturating_add(LEASE_MARGIN).saturating_add(timing.stagger.saturating_mul(rank))
}

/// Runs until `cancel`: starts an election whenever this follower's silence has lasted its
/// [`election_delay`].
pub async fn elector_task<M: Machine>(
    id: NodeId,
    raft: Raft<M>,
    contact: Arc<Contact>,
    timing: ElectorTiming,
    cancel: CancellationToken,
) {
    let mut metrics = raft.metrics();
    // The leader this node last knew, kept after it is lost: the rank is about succeeding it.
    let mut last_leader: Option<NodeId> = None;
    // After an attempt of this node's: when it was made, and the earliest next one.
    let mut retry: Option<(Instant, Instant)> = None;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(ELECTOR_POLL) => {}
        }
        let (state, leader, voters) = {
            let m = metrics.borrow_and_update();
            let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
            (m.state, m.current_leader, voters)
        };
        if leader.is_some() {
            last_leader = leader;
        }
        match state {
            ServerState::Leader => {
                // A leader that steps down starts counting from then.
                contact.touch();
                continue;
            }
            ServerState::Follower | ServerState::Candidate => {}
            ServerState::Learner | ServerState::Shutdown => continue,
        }
        // A node that led itself and stepped down succeeds nobody: it ranks among all voters.
        let Some(rank) = rank(id, voters, last_leader.filter(|l| *l != id)) else { continue };
        let first = contact.last() + election_delay(timing, rank);
        // Retry on the retry clock only while nothing was heard since the attempt.
        let due = match retry {
            Some((attempted, next)) if contact.last() <= attempted => next,
            _ => first,
        };
        if Instant::now() < due {
            continue;
        }
        tracing::info!(
            "controller {id}: no leader heard from for {:?}; starting an election (rank {rank})",
            contact.last().elapsed()
        );
        if raft.trigger().elect().await.is_err() {
            return; // Raft has stopped.
        }
        let stagger_ms = u64::try_from(timing.stagger.as_millis()).unwrap_or(u64::MAX);
        let jitter = Duration::from_millis(rand::thread_rng().gen_range(0..=stagger_ms));
        let now = Instant::now();
        retry = Some((now, now + RETRY_AFTER + jitter));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lowest_surviving_voter_ranks_first() {
        assert_eq!(rank(2, [1, 2, 3], Some(1)), Some(0));
        assert_eq!(rank(3, [1, 2, 3], Some(1)), Some(1));
        assert_eq!(rank(1, [3, 2, 1], Some(2)), Some(0));
        assert_eq!(rank(3, [1, 2, 3], Some(2)), Some(1));
        // The old leader itself ranks among the rest when no leader is known.
        assert_eq!(rank(1, [1, 2, 3], None), Some(0));
        assert_eq!(rank(3, [1, 2, 3], None), Some(2));
        assert_eq!(rank(4, [1, 2, 3], None), None);
        assert_eq!(rank(1, [1, 2, 3], Some(1)), None);
    }

    #[test]
    fn rank_zero_elects_when_the_lease_ends_and_each_next_rank_a_stagger_later() {
        let timing = ElectorTiming { lease: Duration::from_millis(600), stagger: Duration::from_millis(300) };
        assert_eq!(election_delay(timing, 0), Duration::from_millis(600) + LEASE_MARGIN);
        assert_eq!(election_delay(timing, 1), Duration::from_millis(900) + LEASE_MARGIN);
        assert_eq!(election_delay(timing, 2), Duration::from_millis(1200) + LEASE_MARGIN);
        assert!(election_delay(timing, usize::MAX) > Duration::from_secs(3600));
    }
}
