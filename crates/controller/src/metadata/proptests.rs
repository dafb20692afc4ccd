//! Random command sequences. The harness checks every step (refusals change nothing;
//! invariants hold; deltas reproduce the image; epochs only move forward, the leader epoch
//! with every change of leader); here, in addition, the whole log replays to the same
//! image and the image survives the snapshot format.
//!
//! Commands are generated as intentions ("the leader of some partition proposes toggling
//! some replica, perhaps with a stale epoch") and made concrete against the current image,
//! so most are plausible and get past validation, while the perturbations reach every
//! refusal path.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::harness::{self, Cluster, endpoints};
use super::*;

const TOPICS: [&str; 4] = ["a", "b", "c.d", "c_d"];
const BROKERS: u32 = 5;

#[derive(Debug, Clone)]
enum Op {
    Register {
        id: u32,
        rack: u8,
        incarnation: Option<u8>,
    },
    Fence {
        id: u32,
        stale: bool,
    },
    Unfence {
        id: u32,
        stale: bool,
    },
    Create {
        topic: usize,
        partitions: u32,
        rf: u16,
        min_isr: Option<u16>,
        explicit: Option<Vec<u32>>,
    },
    Delete {
        topic: usize,
    },
    AlterConfig {
        topic: usize,
        retention_ms: Option<i64>,
        min_isr: Option<u16>,
        delete_retention: bool,
    },
    Grow {
        topic: usize,
        /// Added to the current count: 0 or less is refused.
        by: i8,
    },
    AlterIsr {
        topic: usize,
        partition: u32,
        grow: bool,
        toggle: usize,
        sender: Option<u32>,
        skew: Skew,
        member_epochs: bool,
    },
    Elect {
        preferred: bool,
        only: Option<(usize, u32)>,
    },
    AllocateProducerIds {
        id: u32,
        stale: bool,
    },
}

/// How an AlterPartition deviates from what the current leader would send.
#[derive(Debug, Clone, Copy)]
enum Skew {
    None,
    OldLeaderEpoch,
    NewLeaderEpoch,
    OldPartitionEpoch,
    OldBrokerEpoch,
    WrongTopicId,
}

fn skew() -> impl Strategy<Value = Skew> {
    prop_oneof![
        6 => Just(Skew::None),
        1 => Just(Skew::OldLeaderEpoch),
        1 => Just(Skew::NewLeaderEpoch),
        1 => Just(Skew::OldPartitionEpoch),
        1 => Just(Skew::OldBrokerEpoch),
        1 => Just(Skew::WrongTopicId),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    // Mostly registered brokers, sometimes one that never was.
    let broker = prop_oneof![9 => 1..=BROKERS, 1 => Just(BROKERS + 1)];
    let topic = 0..TOPICS.len();
    prop_oneof![
        1 => (broker.clone(), 0u8..3, proptest::option::of(0u8..2))
            .prop_map(|(id, rack, incarnation)| Op::Register { id, rack, incarnation }),
        2 => (broker.clone(), proptest::bool::weighted(0.1)).prop_map(|(id, stale)| Op::Fence { id, stale }),
        4 => (broker.clone(), proptest::bool::weighted(0.1)).prop_map(|(id, stale)| Op::Unfence { id, stale }),
        3 => (
            topic.clone(),
            prop_oneof![9 => 1u32..5, 1 => Just(0)],
            prop_oneof![9 => 1u16..4, 1 => Just(0), 1 => Just(6)],
            proptest::option::weighted(0.3, 0u16..4),
            proptest::option::weighted(0.3, proptest::collection::vec(1u32..=BROKERS + 1, 1..16)),
        )
            .prop_map(|(topic, partitions, rf, min_isr, explicit)| Op::Create {
                topic,
                partitions,
                rf,
                min_isr,
                explicit
            }),
        1 => topic.clone().prop_map(|topic| Op::Delete { topic }),
        1 => (topic.clone(), proptest::option::of(-2i64..5), proptest::option::of(0u16..5), any::<bool>()).prop_map(
            |(topic, retention_ms, min_isr, delete_retention)| Op::AlterConfig {
                topic,
                retention_ms,
                min_isr,
                delete_retention
            }
        ),
        1 => (topic.clone(), -1i8..4).prop_map(|(topic, by)| Op::Grow { topic, by }),
        12 => (
            topic.clone(),
            0u32..5,
            (proptest::bool::weighted(0.7), 0usize..5),
            proptest::option::weighted(0.1, broker.clone()),
            skew(),
            any::<bool>(),
        )
            .prop_map(|(topic, partition, (grow, toggle), sender, skew, member_epochs)| Op::AlterIsr {
                topic,
                partition,
                grow,
                toggle,
                sender,
                skew,
                member_epochs
            }),
        3 => (proptest::bool::weighted(0.8), proptest::option::of((topic, 0u32..5)))
            .prop_map(|(preferred, only)| Op::Elect { preferred, only }),
        1 => (broker.clone(), proptest::bool::weighted(0.2))
            .prop_map(|(id, stale)| Op::AllocateProducerIds { id, stale }),
    ]
}

/// One of the topics that exist, if any do.
fn existing(image: &ClusterMetadata, pick: usize) -> &'static str {
    let names: Vec<&'static str> = TOPICS.into_iter().filter(|t| image.topic(t).is_some()).collect();
    if names.is_empty() { TOPICS[pick] } else { names[pick % names.len()] }
}

/// A partition of the topic if it exists, now and then one past its end.
fn resolve(image: &ClusterMetadata, topic: &str, partition: u32) -> u32 {
    image.topic(topic).map_or(partition, |t| partition % (t.partition_count() + 1))
}

/// Makes `op` concrete against the current image.
fn command(c: &Cluster, op: &Op) -> Command {
    let image = &c.image;
    let epoch_of = |id: u32| image.broker(id).map_or(0, |b| b.epoch);
    match op.clone() {
        Op::Register { id, rack, incarnation } => Command::RegisterBroker {
            id,
            endpoints: endpoints(id),
            rack: Some(["r0", "r1", "r2"][usize::from(rack)].to_owned()),
            incarnation_id: incarnation.map(u128::from),
        },
        Op::Fence { id, stale } => {
            Command::FenceBroker { id, epoch: epoch_of(id).saturating_sub(u64::from(stale)) }
        }
        Op::Unfence { id, stale } => {
            Command::UnfenceBroker { id, epoch: epoch_of(id).saturating_sub(u64::from(stale)) }
        }
        Op::Create { topic, partitions, rf, min_isr, explicit } => {
            let mut config = BTreeMap::new();
            if let Some(m) = min_isr {
                config.insert(config::MIN_INSYNC_REPLICAS.to_owned(), m.to_string());
            }
            // Explicit assignments: chop the generated broker ids into `partitions` lists
            // of `rf`, which is often malformed on purpose.
            let assignments = explicit.map(|ids| {
                let rf = usize::from(rf.max(1));
                ids.chunks(rf).take(partitions as usize).map(<[u32]>::to_vec).collect()
            });
            Command::CreateTopic {
                name: TOPICS[topic].to_owned(),
                partitions,
                replication_factor: rf,
                config,
                assignments,
            }
        }
        Op::Delete { topic } => Command::DeleteTopic { name: TOPICS[topic].to_owned() },
        Op::AlterConfig { topic, retention_ms, min_isr, delete_retention } => {
            let mut set = BTreeMap::new();
            if let Some(r) = retention_ms {
                set.insert(config::RETENTION_MS.to_owned(), r.to_string());
            }
            if let Some(m) = min_isr {
                set.insert(config::MIN_INSYNC_REPLICAS.to_owned(), m.to_string());
            }
            let delete = if delete_retention { vec![config::RETENTION_MS.to_owned()] } else { vec![] };
            Command::AlterTopicConfig { name: TOPICS[topic].to_owned(), set, delete }
        }
        Op::Grow { topic, by } => {
            let name = existing(image, topic);
            let current = image.topic(name).map_or(1, |t| t.partition_count());
            let count = u32::try_from(i64::from(current) + i64::from(by)).unwrap_or(0);
            Command::CreatePartitions { name: name.to_owned(), count }
        }
        Op::AlterIsr { topic, partition, grow, toggle, sender, skew, member_epochs } => {
            let name = existing(image, topic);
            let partition = resolve(image, name, partition);
            let Some((t, state)) = image.topic(name).and_then(|t| Some((t, t.partition(partition)?))) else {
                return Command::AlterPartition {
                    topic: name.to_owned(),
                    topic_id: TopicId([0; 16]),
                    partition,
                    leader_id: sender.unwrap_or(1),
                    broker_epoch: epoch_of(sender.unwrap_or(1)),
                    leader_epoch: 0,
                    partition_epoch: 0,
                    new_isr: harness::isr(&[sender.unwrap_or(1)]),
                };
            };
            let leader_id = sender.or(state.leader).unwrap_or(state.replicas[0]);
            // Grow by a replica outside the ISR (perhaps a fenced one), or shrink by a
            // follower; if neither is possible, propose the ISR as it is.
            let outside: Vec<u32> = state.replicas.iter().copied().filter(|r| !state.in_isr(*r)).collect();
            let followers: Vec<u32> =
                state.isr.iter().copied().filter(|&r| Some(r) != state.leader).collect();
            let mut isr: Vec<u32> = state.isr.clone();
            if grow && !outside.is_empty() {
                isr.push(outside[toggle % outside.len()]);
            } else if !followers.is_empty() {
                let gone = followers[toggle % followers.len()];
                isr.retain(|&b| b != gone);
            }
            let new_isr = isr
                .into_iter()
                .map(|id| IsrMember { id, broker_epoch: member_epochs.then(|| epoch_of(id)) })
                .collect();
            let mut cmd = Command::AlterPartition {
                topic: name.to_owned(),
                topic_id: t.id,
                partition,
                leader_id,
                broker_epoch: epoch_of(leader_id),
                leader_epoch: state.leader_epoch,
                partition_epoch: state.partition_epoch,
                new_isr,
            };
            if let Command::AlterPartition { topic_id, broker_epoch, leader_epoch, partition_epoch, .. } =
                &mut cmd
            {
                match skew {
                    Skew::None => {}
                    Skew::OldLeaderEpoch => *leader_epoch -= 1,
                    Skew::NewLeaderEpoch => *leader_epoch += 1,
                    Skew::OldPartitionEpoch => *partition_epoch -= 1,
                    Skew::OldBrokerEpoch => *broker_epoch = broker_epoch.saturating_sub(1),
                    Skew::WrongTopicId => *topic_id = TopicId::derive(0, name),
                }
            }
            cmd
        }
        Op::Elect { preferred, only } => Command::ElectLeaders {
            partitions: only.map(|(topic, partition)| {
                let name = existing(image, topic);
                vec![PartitionRef { topic: name.to_owned(), partition: resolve(image, name, partition) }]
            }),
            preferred,
        },
        Op::AllocateProducerIds { id, stale } => Command::AllocateProducerIds {
            broker_id: id,
            broker_epoch: epoch_of(id).saturating_sub(u64::from(stale)),
        },
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_command_sequences_keep_every_invariant(
        racks in proptest::collection::vec(0u8..3, BROKERS as usize),
        ops in proptest::collection::vec(op(), 1..150),
    ) {
        // Start from a live cluster with topics, so most commands have something to act on.
        let mut c = Cluster::new();
        for (id, rack) in (1..=BROKERS).zip(&racks) {
            let cmd = command(&c, &Op::Register { id, rack: *rack, incarnation: Some(0) });
            c.ok(cmd);
            c.ok(command(&c, &Op::Unfence { id, stale: false }));
        }
        for (topic, partitions, rf) in [(0, 4, 3), (1, 3, 2)] {
            c.ok(command(&c, &Op::Create { topic, partitions, rf, min_isr: None, explicit: None }));
        }
        for op in &ops {
            let cmd = command(&c, op);
            let _ = c.apply(cmd); // the harness checks each step
        }
        prop_assert_eq!(&c.replay(), &c.image, "the same log must give the same image");
        let back = decode_snapshot(&encode_snapshot(&c.image)).expect("the snapshot loads");
        prop_assert_eq!(&back, &c.image);
        // No partition is left offline while a replica in its ISR could lead.
        c.image.check_invariants().map_err(TestCaseError::fail)?;
    }

    #[test]
    fn placement_keeps_racks_distinct_and_leaders_balanced(
        racks in proptest::collection::vec(0u8..4, 1..9),
        topics in proptest::collection::vec((1u32..20, 1u16..4), 1..6),
    ) {
        use placement::{Candidate, PlacementLoad, place_replicas};
        let candidates: Vec<Candidate> = racks
            .iter()
            .zip(1u32..)
            .map(|(r, id)| Candidate { id, rack: Some(format!("rack{r}")) })
            .collect();
        let rack_count = racks.iter().collect::<std::collections::BTreeSet<_>>().len();
        let mut load = PlacementLoad::default();
        for (partitions, rf) in topics {
            let Ok(placement) = place_replicas(&candidates, &load, partitions, rf) else {
                prop_assert!(usize::from(rf) > candidates.len());
                continue;
            };
            for replicas in &placement {
                let used: std::collections::BTreeSet<&Option<String>> =
                    replicas.iter().map(|&id| &candidates[id as usize - 1].rack).collect();
                prop_assert_eq!(used.len(), replicas.len().min(rack_count), "racks of {:?}", replicas);
                load.add(replicas);
            }
            let counts: Vec<u32> = candidates.iter().map(|c| load.leaders.get(&c.id).copied().unwrap_or(0)).collect();
            let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
            prop_assert!(max - min <= 1, "preferred leaders {:?}", counts);
        }
    }
}
