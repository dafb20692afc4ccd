//! Replica placement for new topics: a pure function of the candidate brokers and the load
//! they already carry.
//!
//! Greedy and load-aware, one partition at a time:
//! - the preferred leader is the broker with the fewest preferred leaderships, then the
//!   fewest replicas; so leadership stays balanced across topics, not just within one;
//! - each further replica goes, in order of preference, to a rack the partition does not use
//!   yet (when every candidate has a rack), to the broker with the fewest replicas, and for
//!   the second replica to the broker that least often follows this leader in that slot
//!   (among brokers within one replica of the least loaded).
//!   The second replica is the one that takes over when the leader is fenced, so spreading
//!   it spreads a failed broker's leadership over the survivors;
//! - remaining ties rotate from a per-topic start offset (the number of partitions in the
//!   cluster), so equal brokers take turns.

use std::collections::BTreeMap;

/// A broker that may receive replicas: unfenced, in practice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The broker id.
    pub id: u32,
    /// The broker's rack, if it declared one.
    pub rack: Option<String>,
}

/// The load the brokers already carry, counted over existing partitions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlacementLoad {
    /// Preferred leaderships (first replicas) per broker.
    pub leaders: BTreeMap<u32, u32>,
    /// Replicas per broker, leaders included.
    pub replicas: BTreeMap<u32, u32>,
    /// How often each (preferred leader, second replica) pair occurs.
    pub successors: BTreeMap<(u32, u32), u32>,
    /// Partitions counted.
    pub partitions: u64,
}

impl PlacementLoad {
    /// Counts one partition with replica list `replicas`.
    pub fn add(&mut self, replicas: &[u32]) {
        self.partitions += 1;
        if let Some(&leader) = replicas.first() {
            *self.leaders.entry(leader).or_default() += 1;
            if let Some(&second) = replicas.get(1) {
                *self.successors.entry((leader, second)).or_default() += 1;
            }
        }
        for &replica in replicas {
            *self.replicas.entry(replica).or_default() += 1;
        }
    }

    fn leaders_of(&self, broker: u32) -> u32 {
        self.leaders.get(&broker).copied().unwrap_or(0)
    }

    fn replicas_of(&self, broker: u32) -> u32 {
        self.replicas.get(&broker).copied().unwrap_or(0)
    }

    fn successions(&self, leader: u32, second: u32) -> u32 {
        self.successors.get(&(leader, second)).copied().unwrap_or(0)
    }
}

/// Placement is impossible.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    /// Fewer candidates than the replication factor (or a factor of zero).
    #[error(
        "replication factor {replication_factor} needs that many unfenced brokers; {available} available"
    )]
    NotEnoughBrokers {
        /// The replication factor asked for.
        replication_factor: u16,
        /// The distinct candidates available.
        available: usize,
    },
}

/// Places `partitions` partitions of `replication_factor` replicas each on `candidates`,
/// given the `load` they already carry. Returns the replica list of each partition, the
/// preferred leader first. Deterministic: the same inputs give the same placement,
/// whatever the order of `candidates`.
pub fn place_replicas(
    candidates: &[Candidate],
    load: &PlacementLoad,
    partitions: u32,
    replication_factor: u16,
) -> Result<Vec<Vec<u32>>, PlacementError> {
    let mut brokers: Vec<&Candidate> = candidates.iter().collect();
    brokers.sort_by_key(|c| c.id);
    brokers.dedup_by_key(|c| c.id);
    let rf = usize::from(replication_factor);
    if rf == 0 || rf > brokers.len() {
        return Err(PlacementError::NotEnoughBrokers { replication_factor, available: brokers.len() });
    }
    // Racks count only if every broker has one: with some unknown, "a different rack" means
    // nothing for those, and Kafka likewise refuses to mix.
    let rack_aware = brokers.iter().all(|c| c.rack.is_some());
    let n = brokers.len();
    let start = usize::try_from(load.partitions % n as u64).expect("below the broker count");
    let mut load = load.clone();
    let mut placement = Vec::with_capacity(usize::try_from(partitions).unwrap_or(0));

    for p in 0..partitions as usize {
        // Ties go to the broker `rotation` places after position (start + p) in id order.
        let turn = (start + p) % n;
        let distance = |from: usize, to: usize| (to + n - from) % n;

        let leader_pos = (0..n)
            .min_by_key(|&i| {
                let id = brokers[i].id;
                (load.leaders_of(id), load.replicas_of(id), distance(turn, i))
            })
            .expect("at least one broker");
        let leader = brokers[leader_pos].id;
        let mut chosen = vec![leader_pos];

        while chosen.len() < rf {
            let rack_uses = |i: usize| -> usize {
                if !rack_aware {
                    return 0;
                }
                chosen.iter().filter(|&&c| brokers[c].rack == brokers[i].rack).count()
            };
            let open: Vec<usize> = (0..n).filter(|i| !chosen.contains(i)).collect();
            let least =
                open.iter().map(|&i| load.replicas_of(brokers[i].id)).min().expect("rf <= broker count");
            let second_slot = chosen.len() == 1;
            let next = open
                .into_iter()
                .min_by_key(|&i| {
                    let id = brokers[i].id;
                    let replicas = load.replicas_of(id);
                    // For the second slot, a broker one replica above the least loaded counts
                    // as equally loaded, so that spreading successors can decide: otherwise
                    // strict replica balance keeps pairing the same brokers.
                    let (band, succession) = if second_slot {
                        ((replicas - least).max(1), load.successions(leader, id))
                    } else {
                        (replicas - least, 0)
                    };
                    (rack_uses(i), band, succession, replicas, distance(leader_pos, i))
                })
                .expect("rf <= broker count leaves a candidate");
            chosen.push(next);
        }

        let replicas: Vec<u32> = chosen.iter().map(|&i| brokers[i].id).collect();
        load.add(&replicas);
        placement.push(replicas);
    }
    Ok(placement)
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;

    fn brokers(ids: &[u32]) -> Vec<Candidate> {
        ids.iter().map(|&id| Candidate { id, rack: None }).collect()
    }

    fn leader_counts(placement: &[Vec<u32>]) -> BTreeMap<u32, usize> {
        let mut counts = BTreeMap::new();
        for replicas in placement {
            *counts.entry(replicas[0]).or_default() += 1;
        }
        counts
    }

    fn assert_well_formed(placement: &[Vec<u32>], rf: usize, candidates: &[Candidate]) {
        let ids: BTreeSet<u32> = candidates.iter().map(|c| c.id).collect();
        for replicas in placement {
            assert_eq!(replicas.len(), rf);
            let distinct: BTreeSet<u32> = replicas.iter().copied().collect();
            assert_eq!(distinct.len(), rf, "duplicate replica in {replicas:?}");
            assert!(distinct.is_subset(&ids));
        }
    }

    #[test]
    fn three_brokers_six_partitions_rf3_lead_two_each() {
        let candidates = brokers(&[1, 2, 3]);
        let placement = place_replicas(&candidates, &PlacementLoad::default(), 6, 3).unwrap();
        assert_well_formed(&placement, 3, &candidates);
        assert_eq!(leader_counts(&placement), BTreeMap::from([(1, 2), (2, 2), (3, 2)]));
    }

    #[test]
    fn leadership_stays_balanced_across_topics() {
        let candidates = brokers(&[1, 2, 3, 4, 5]);
        let mut load = PlacementLoad::default();
        let mut all = Vec::new();
        // Topics of awkward sizes: each alone cannot be balanced over five brokers.
        for partitions in [1, 2, 3, 7, 1, 4, 2] {
            let placement = place_replicas(&candidates, &load, partitions, 3).unwrap();
            assert_well_formed(&placement, 3, &candidates);
            for replicas in &placement {
                load.add(replicas);
            }
            all.extend(placement);
            let leaders = leader_counts(&all);
            let (min, max) = (
                candidates.iter().map(|c| leaders.get(&c.id).copied().unwrap_or(0)).min().unwrap(),
                leaders.values().copied().max().unwrap(),
            );
            assert!(max - min <= 1, "leaders unbalanced after {} partitions: {leaders:?}", all.len());
            let replicas = &load.replicas;
            let (rmin, rmax) = (replicas.values().min().unwrap(), replicas.values().max().unwrap());
            // Within two: second replicas may take one more to spread successors.
            assert!(rmax - rmin <= 2, "replicas unbalanced: {replicas:?}");
        }
    }

    #[test]
    fn a_single_partition_topic_does_not_always_land_on_the_same_leader() {
        let candidates = brokers(&[1, 2, 3]);
        let mut load = PlacementLoad::default();
        let mut leaders = BTreeSet::new();
        for _ in 0..3 {
            let placement = place_replicas(&candidates, &load, 1, 1).unwrap();
            leaders.insert(placement[0][0]);
            load.add(&placement[0]);
        }
        assert_eq!(leaders, BTreeSet::from([1, 2, 3]));
    }

    #[test]
    fn with_racks_each_partition_spans_distinct_racks() {
        let racks = ["a", "a", "b", "b", "c", "c"];
        let candidates: Vec<Candidate> = racks
            .iter()
            .enumerate()
            .map(|(i, rack)| Candidate { id: i as u32 + 1, rack: Some(rack.to_string()) })
            .collect();
        let rack_of: BTreeMap<u32, &str> =
            candidates.iter().map(|c| (c.id, c.rack.as_deref().unwrap())).collect();
        let placement = place_replicas(&candidates, &PlacementLoad::default(), 12, 3).unwrap();
        assert_well_formed(&placement, 3, &candidates);
        for replicas in &placement {
            let used: BTreeSet<&str> = replicas.iter().map(|id| rack_of[id]).collect();
            assert_eq!(used.len(), 3, "{replicas:?} spans {used:?}");
        }
        assert_eq!(leader_counts(&placement).values().copied().collect::<Vec<_>>(), vec![2; 6]);
    }

    #[test]
    fn more_replicas_than_racks_uses_every_rack_then_doubles_up() {
        let candidates: Vec<Candidate> = [("a", 1), ("a", 2), ("b", 3), ("b", 4)]
            .iter()
            .map(|&(rack, id)| Candidate { id, rack: Some(rack.into()) })
            .collect();
        let placement = place_replicas(&candidates, &PlacementLoad::default(), 4, 3).unwrap();
        for replicas in &placement {
            let racks: BTreeSet<bool> = replicas.iter().map(|&id| id <= 2).collect();
            assert_eq!(racks.len(), 2, "{replicas:?} should use both racks");
        }
    }

    #[test]
    fn a_failed_brokers_leadership_spreads_over_the_survivors() {
        // The second replica takes over when the leader fails.
        let candidates = brokers(&[1, 2, 3, 4]);
        let placement = place_replicas(&candidates, &PlacementLoad::default(), 12, 2).unwrap();
        for broker in 1..=4 {
            let successors: BTreeSet<u32> =
                placement.iter().filter(|r| r[0] == broker).map(|r| r[1]).collect();
            assert_eq!(successors.len(), 3, "broker {broker}'s partitions fail over to {successors:?}");
        }
    }

    #[test]
    fn candidate_order_does_not_matter() {
        let a = place_replicas(&brokers(&[3, 1, 2, 2]), &PlacementLoad::default(), 5, 2).unwrap();
        let b = place_replicas(&brokers(&[1, 2, 3]), &PlacementLoad::default(), 5, 2).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn refuses_more_replicas_than_brokers() {
        let err = place_replicas(&brokers(&[1, 2]), &PlacementLoad::default(), 1, 3).unwrap_err();
        assert_eq!(err, PlacementError::NotEnoughBrokers { replication_factor: 3, available: 2 });
        assert!(place_replicas(&brokers(&[1, 2]), &PlacementLoad::default(), 1, 0).is_err());
        assert!(place_replicas(&[], &PlacementLoad::default(), 1, 1).is_err());
    }
}
