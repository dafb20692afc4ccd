//! Scenario tests of the state machine, command by command.

use std::collections::{BTreeMap, BTreeSet};

use super::harness::*;
use super::*;

fn leader_counts(image: &ClusterMetadata) -> BTreeMap<u32, usize> {
    image.brokers().map(|b| (b.id, image.partitions_led_by(b.id).count())).collect()
}

// ----- the failover story -----

#[test]
fn leader_fenced_fails_over_within_the_isr_then_preferred_election_restores_it() {
    // Phase 1: three brokers, a topic of three partitions, each fully replicated.
    let mut c = Cluster::with_brokers(&[1, 2, 3], None);
    c.ok(create("orders", 3, 3));
    let before = c.partition("orders", 0);
    let old_leader = before.leader.unwrap();
    assert_eq!(old_leader, before.replicas[0], "a new partition is led by its preferred replica");
    assert_eq!(before.isr.len(), 3);

    // Phase 2: the leader of partition 0 misses its heartbeats and is fenced.
    let fenced = c.fence(old_leader);
    let after = c.partition("orders", 0);
    let new_leader = after.leader.expect("another ISR member takes over");
    assert_ne!(new_leader, old_leader);
    assert!(before.isr.contains(&new_leader));
    assert_eq!(new_leader, before.replicas[1], "the next replica in preference order takes over");
    assert!(after.leader_epoch > before.leader_epoch);
    assert!(after.partition_epoch > before.partition_epoch);
    assert!(!after.isr.contains(&old_leader), "the fenced broker left the ISR");
    assert_eq!(c.image.partitions_led_by(old_leader).count(), 0);
    assert!(fenced.deltas.contains(&MetadataDelta::PartitionChanged {
        topic: "orders".into(),
        topic_id: c.image.topic("orders").unwrap().id,
        partition: 0,
        state: after.clone(),
    }));

    // Phase 3: it comes back (same incarnation), catches up, is unfenced, and the new leader
    // lets it back into the ISR.
    c.unfence(old_leader);
    assert_eq!(c.partition("orders", 0).leader, Some(new_leader), "unfencing alone moves no leadership");
    let full: Vec<u32> = before.isr.clone();
    c.ok(c.alter_isr("orders", 0, &full));
    assert_eq!(c.partition("orders", 0).isr, before.isr);

    // Phase 4: preferred election hands leadership back.
    let epoch_before_election = c.partition("orders", 0).leader_epoch;
    let applied = c.ok(Command::ElectLeaders { partitions: None, preferred: true });
    let restored = c.partition("orders", 0);
    assert_eq!(restored.leader, Some(old_leader));
    assert!(restored.leader_epoch > epoch_before_election);
    let Outcome::LeadersElected(results) = applied.outcome else { panic!() };
    assert!(results.iter().any(|r| r.topic == "orders" && r.partition == 0 && r.result.is_ok()));
    assert!(
        results.iter().all(|r| r.result.is_ok()),
        "partitions already led by their preferred replica are omitted"
    );
    assert_eq!(leader_counts(&c.image), BTreeMap::from([(1, 1), (2, 1), (3, 1)]));
}

// ----- brokers -----

#[test]
fn registration_assigns_the_index_as_epoch_and_starts_fenced() {
    let mut c = Cluster::new();
    let epoch = c.register(7, Some("eu-1a"));
    let b = c.image.broker(7).unwrap();
    assert_eq!(b.epoch, epoch);
    assert_eq!(epoch, c.image.version());
    assert!(b.fenced);
    assert_eq!(c.image.live_brokers().count(), 0);
    c.unfence(7);
    assert_eq!(c.image.live_brokers().map(|b| b.id).collect::<Vec<_>>(), vec![7]);

    let again = c.register(7, Some("eu-1a"));
    assert!(again > epoch, "every registration gets a higher epoch");
    assert!(c.image.broker(7).unwrap().fenced, "a re-registered broker waits to be unfenced");
}

#[test]
fn a_retried_registration_of_the_same_incarnation_changes_nothing() {
    let mut c = Cluster::new();
    let cmd =
        Command::RegisterBroker { id: 1, endpoints: endpoints(1), rack: None, incarnation_id: Some(42) };
    let first = c.ok(cmd.clone());
    c.unfence(1);
    let version = c.image.version();
    let retry = c.ok(cmd);
    assert_eq!(retry.outcome, first.outcome, "same epoch");
    assert!(retry.deltas.is_empty());
    assert_eq!(c.image.version(), version);
    assert!(!c.image.broker(1).unwrap().fenced);

    // A new process (new incarnation) is a restart.
    let restart =
        Command::RegisterBroker { id: 1, endpoints: endpoints(1), rack: None, incarnation_id: Some(43) };
    let Outcome::BrokerRegistered { epoch, .. } = c.ok(restart).outcome else { panic!() };
    assert_eq!(epoch, c.image.version());
    assert!(c.image.broker(1).unwrap().fenced);
}

#[test]
fn reregistration_of_a_live_leader_fences_the_old_incarnation_but_keeps_assignments() {
    let mut c = Cluster::with_brokers(&[1, 2, 3], None);
    c.ok(create("t", 3, 3));
    let before: Vec<PartitionState> = (0..3).map(|p| c.partition("t", p)).collect();
    let led: Vec<u32> = (0..3).filter(|&p| before[p as usize].leader == Some(2)).collect();
    assert!(!led.is_empty());

    c.register(2, None); // broker 2 restarted faster than its session timeout
    for p in 0..3 {
        let now = c.partition("t", p);
        assert_eq!(now.replicas, before[p as usize].replicas, "assignment untouched");
        assert!(!now.isr.contains(&2), "a restarted broker must catch up before rejoining the ISR");
        assert_ne!(now.leader, Some(2));
        assert!(now.leader.is_some());
    }
}

#[test]
fn fence_and_unfence_check_the_broker_epoch() {
    let mut c = Cluster::with_brokers(&[1], None);
    let epoch = c.epoch(1);
    assert_eq!(c.refused(Command::FenceBroker { id: 1, epoch: epoch - 1 }), ErrorCode::StaleBrokerEpoch);
    assert_eq!(c.refused(Command::UnfenceBroker { id: 1, epoch: epoch + 1 }), ErrorCode::StaleBrokerEpoch);
    assert_eq!(c.refused(Command::FenceBroker { id: 9, epoch }), ErrorCode::BrokerIdNotRegistered);
    assert_eq!(c.refused(Command::UnfenceBroker { id: 9, epoch }), ErrorCode::BrokerIdNotRegistered);

    let version = c.image.version();
    let unfenced_again = c.unfence(1);
    assert_eq!(unfenced_again.outcome, Outcome::BrokerUnfenced { id: 1, already: true });
    assert_eq!(c.image.version(), version);

    c.fence(1);
    let version = c.image.version();
    let again = c.fence(1);
    assert_eq!(again.outcome, Outcome::BrokerFenced { id: 1, already: true });
    assert!(again.deltas.is_empty());
    assert_eq!(c.image.version(), version, "a no-op does not move the version");
}

#[test]
fn registration_validates_endpoints_and_rack() {
    let mut c = Cluster::new();
    let mut bad = endpoints(1);
    bad.kafka = "no-port".into();
    for endpoints in [
        bad.clone(),
        Endpoints { grpc: ":50051".into(), ..endpoints(1) },
        Endpoints { http: "host:0".into(), ..endpoints(1) },
        Endpoints { http: "host:65536".into(), ..endpoints(1) },
        Endpoints { grpc: format!("{}:1", "h".repeat(ENDPOINT_LEN_MAX)), ..endpoints(1) },
        Endpoints { internal: "no-port".into(), ..endpoints(1) },
    ] {
        let cmd = Command::RegisterBroker { id: 1, endpoints, rack: None, incarnation_id: None };
        assert_eq!(c.refused(cmd), ErrorCode::InvalidRequest);
    }
    let ipv6 = Endpoints { grpc: "[::1]:50051".into(), internal: "[::1]:50061".into(), ..endpoints(1) };
    c.ok(Command::RegisterBroker { id: 1, endpoints: ipv6, rack: None, incarnation_id: None });
    let long_rack = Some("r".repeat(RACK_LEN_MAX + 1));
    let cmd =
        Command::RegisterBroker { id: 2, endpoints: endpoints(2), rack: long_rack, incarnation_id: None };
    assert_eq!(c.refused(cmd), ErrorCode::InvalidRequest);
    let cmd = Command::RegisterBroker {
        id: 2,
        endpoints: endpoints(2),
        rack: Some(String::new()),
        incarnation_id: None,
    };
    assert_eq!(c.refused(cmd), ErrorCode::InvalidRequest);
}

#[test]
fn fencing_the_last_isr_member_takes_the_partition_offline_and_unfencing_brings_it_back() {
    let mut c = Cluster::with_brokers(&[1, 2], None);
    c.ok(create("t", 1, 2));
    c.fence(2);
    assert_eq!(c.partition("t", 0).isr, vec![1]);
    let before = c.partition("t", 0);

    c.fence(1);
    let offline = c.partition("t", 0);
    assert_eq!(offline.leader, None, "no unclean election: broker 2 is out of sync");
    assert_eq!(offline.isr, vec![1], "the ISR keeps its last member; the data is not declared lost");
    assert!(offline.leader_epoch > before.leader_epoch);
    assert!(offline.partition_epoch > before.partition_epoch);

    // Broker 2 returning does not help: it is not in the ISR.
    c.unfence(2);
    assert_eq!(c.partition("t", 0).leader, None);
    let clean = c.ok(Command::ElectLeaders { partitions: None, preferred: false });
    let Outcome::LeadersElected(results) = clean.outcome else { panic!() };
    assert_eq!(results.len(), 1);
    assert_eq!(results[0].result.as_ref().unwrap_err().code, ErrorCode::EligibleLeadersNotAvailable);

    // Broker 1, the last in-sync replica, returns and leads again.
    c.unfence(1);
    let online = c.partition("t", 0);
    assert_eq!(online.leader, Some(1));
    assert!(online.leader_epoch > offline.leader_epoch);
}

#[test]
fn a_restart_of_the_last_isr_member_keeps_the_partition_offline_until_it_is_unfenced() {
    let mut c = Cluster::with_brokers(&[1], None);
    c.ok(create("t", 2, 1));
    c.register(1, None);
    for p in 0..2 {
        let state = c.partition("t", p);
        assert_eq!(state.leader, None);
        assert_eq!(state.isr, vec![1]);
    }
    let Applied { deltas, .. } = c.unfence(1);
    assert_eq!(deltas.len(), 3, "the broker and both partitions");
    assert_eq!(c.image.partitions_led_by(1).count(), 2);
}

// ----- topics -----

#[test]
fn create_topic_places_balanced_leaders_and_starts_at_epoch_zero() {
    let mut c = Cluster::with_brokers(&[1, 2, 3], None);
    let applied = c.ok(create("t", 6, 3));
    let Outcome::TopicCreated(topic) = &applied.outcome else { panic!() };
    assert_eq!(topic.partition_count(), 6);
    assert_eq!(topic.replication_factor(), 3);
    assert_eq!(topic.id, TopicId::derive(c.image.version(), "t"));
    for p in &topic.partitions {
        assert_eq!(p.isr, p.replicas);
        assert_eq!(p.leader, Some(p.replicas[0]));
        assert_eq!((p.leader_epoch, p.partition_epoch), (0, 0));
    }
    assert_eq!(leader_counts(&c.image), BTreeMap::from([(1, 2), (2, 2), (3, 2)]));

    // More topics keep the cluster balanced.
    for (i, partitions) in [1, 2, 4, 5].into_iter().enumerate() {
        c.ok(create(&format!("more-{i}"), partitions, 2));
        let counts = leader_counts(&c.image);
        let (min, max) = (counts.values().min().unwrap(), counts.values().max().unwrap());
        assert!(max - min <= 1, "{counts:?}");
    }
}

#[test]
fn create_topic_spans_racks() {
    let racks = ["a", "a", "b", "b", "c", "c"];
    let mut c = Cluster::with_brokers(&[1, 2, 3, 4, 5, 6], Some(&racks));
    c.ok(create("t", 12, 3));
    for p in &c.image.topic("t").unwrap().partitions {
        let used: BTreeSet<&str> = p.replicas.iter().map(|id| racks[*id as usize - 1]).collect();
        assert_eq!(used.len(), 3);
    }
}

#[test]
fn create_topic_places_only_on_unfenced_brokers() {
    let mut c = Cluster::with_brokers(&[1, 2, 3], None);
    c.fence(3);
    assert_eq!(c.refused(create("t", 1, 3)), ErrorCode::InvalidReplicationFactor);
    c.ok(create("t", 4, 2));
    assert!(c.image.topic("t").unwrap().partitions.iter().all(|p| !p.is_replica(3)));
}

#[test]
fn create_topic_validation_uses_kafkas_errors() {
    let mut c = Cluster::with_brokers(&[1, 2, 3], None);
    c.ok(create("exists", 1, 1));
    c.ok(create("with.dot", 1, 1));
    let long = "x".repeat(TOPIC_NAME_LEN_MAX + 1);
    for name in ["", ".", "..", "has space", "slash/", "ünï", long.as_str()] {
        assert_eq!(c.refused(create(name, 1, 1)), ErrorCode::InvalidTopicException, "{name:?}");
    }
    c.ok(create(&"x".repeat(TOPIC_NAME_LEN_MAX), 1, 1));
    c.ok(create("...", 1, 1));
    assert_eq!(c.refused(create("exists", 1, 1)), ErrorCode::TopicAlreadyExists);
    assert_eq!(
        c.refused(create("with_dot", 1, 1)),
        ErrorCode::InvalidTopicException,
        "collides with with.dot"
    );
    assert_eq!(c.refused(create("t", 0, 1)), ErrorCode::InvalidPartitions);
    assert_eq!(c.refused(create("t", PARTITIONS_MAX + 1, 1)), ErrorCode::InvalidPartitions);
    assert_eq!(c.refused(create("t", 1, 0)), ErrorCode::InvalidReplicationFactor);
    assert_eq!(c.refused(create("t", 1, 4)), ErrorCode::InvalidReplicationFactor);

    let with_config = |key: &str, value: &str, rf: u16| Command::CreateTopic {
        name: "t".into(),
        partitions: 1,
        replication_factor: rf,
        config: BTreeMap::from([(key.to_owned(), value.to_owned())]),
        assignments: None,
    };
    assert_eq!(c.refused(with_config("compression.type", "zstd", 3)), ErrorCode::InvalidConfig);
    assert_eq!(c.refused(with_config("min.insync.replicas", "3", 2)), ErrorCode::InvalidConfig);
    assert_eq!(c.refused(with_config("fsync", "interval:0", 2)), ErrorCode::InvalidConfig);
    assert_eq!(c.refused(with_config("cleanup.policy", "compact", 2)), ErrorCode::InvalidConfig);
    c.ok(with_config("fsync", "interval:010", 2));
    assert_eq!(c.image.topic("t").unwrap().config["fsync"], "interval:10", "stored in canonical form");
    c.ok(create(&"p".repeat(10), PARTITIONS_MAX, 1));
}

#[test]
fn explicit_assignments_are_validated_and_fenced_replicas_start_outside_the_isr() {
    let mut c = Cluster::with_brokers(&[1, 2, 3], None);
    c.fence(3);
    let with = |assignments: Vec<Vec<u32>>, partitions: u32, rf: u16| Command::CreateTopic {
        name: "t".into(),
        partitions,
        replication_factor: rf,
        config: BTreeMap::new(),
        assignments: Some(assignments),
    };
    let bad = [
        with(vec![vec![1, 2]], 2, 2),          // one list for two partitions
        with(vec![vec![1, 2], vec![1]], 2, 2), // uneven
        with(vec![vec![1, 1]], 1, 2),          // duplicate
        with(vec![vec![1, 9]], 1, 2),          // unknown broker
        with(vec![vec![3]], 1, 1),             // nobody unfenced to lead
    ];
    for cmd in bad {
        assert_eq!(c.refused(cmd), ErrorCode::InvalidReplicaAssignment);
    }
    c.ok(with(vec![vec![3, 1, 2], vec![2, 3, 1]], 2, 3));
    let p0 = c.partition("t", 0);
    assert_eq!(
        (p0.isr.clone(), p0.leader),
        (vec![1, 2], Some(1)),
        "broker 3 is fenced: not in the ISR, not leading"
    );
    assert_eq!(c.partition("t", 1).leader, Some(2));
    // Broker 3 joins once unfenced and caught up; then it can be the preferred leader again.
    c.unfence(3);
    c.ok(c.alter_isr("t", 0, &[1, 2, 3]));
    c.ok(Command::ElectLeaders {
        partitions: Some(vec![PartitionRef { topic: "t".into(), partition: 0 }]),
        preferred: true,
    });
    assert_eq!(c.partition("t", 0).leader, Some(3));
}

#[test]
fn delete_topic_and_recreate_gets_a_new_id() {
    let mut c = Cluster::with_brokers(&[1, 2], None);
    c.ok(create("t", 2, 2));
    let old = c.image.topic("t").unwrap().clone();
    let stale_request = c.alter_isr("t", 0, &[old.partitions[0].leader.unwrap()]);
    let applied = c.ok(Command::DeleteTopic { name: "t".into() });
    assert_eq!(applied.deltas, vec![MetadataDelta::TopicDeleted { name: "t".into(), id: old.id }]);
    assert!(c.image.topic("t").is_none());
    assert_eq!(c.refused(Command::DeleteTopic { name: "t".into() }), ErrorCode::UnknownTopicOrPartition);

    c.ok(create("t", 2, 2));
    assert_ne!(c.image.topic("t").unwrap().id, old.id);
    // A request about the old topic must not land on the new one, even with matching epochs.
    assert_eq!(c.refused(stale_request), ErrorCode::UnknownTopicId);
}

#[test]
fn alter_topic_config_sets_deletes_and_validates_the_result() {
    let mut c = Cluster::with_brokers(&[1, 2, 3], None);
    c.ok(create("t", 1, 2));
    let alter = |set: &[(&str, &str)], delete: &[&str]| Command::AlterTopicConfig {
        name: "t".into(),
        set: set.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        delete: delete.iter().map(|k| k.to_string()).collect(),
    };
    c.ok(alter(&[("retention.ms", "60000"), ("min.insync.replicas", "2")], &[]));
    assert_eq!(c.image.topic("t").unwrap().config.len(), 2);
    c.ok(alter(&[("retention.bytes", "-1")], &["retention.ms"]));
    let config = &c.image.topic("t").unwrap().config;
    assert_eq!(config.keys().collect::<Vec<_>>(), vec!["min.insync.replicas", "retention.bytes"]);

    let version = c.image.version();
    let same = c.ok(alter(&[("retention.bytes", "-1")], &["segment.ms"]));
    assert!(same.deltas.is_empty(), "no change, no delta");
    assert_eq!(c.image.version(), version);

    assert_eq!(c.refused(alter(&[("min.insync.replicas", "3")], &[])), ErrorCode::InvalidConfig);
    assert_eq!(c.refused(alter(&[("bogus", "1")], &[])), ErrorCode::InvalidConfig);
    assert_eq!(c.refused(alter(&[], &["bogus"])), ErrorCode::InvalidConfig);
    assert_eq!(c.refused(alter(&[("retention.ms", "1")], &["retention.ms"])), ErrorCode::InvalidConfig);
    let missing = Command::AlterTopicConfig { name: "nope".into(), set: BTreeMap::new(), delete: vec![] };
    assert_eq!(c.refused(missing), ErrorCode::UnknownTopicOrPartition);
}

fn grow(name: &str, count: u32) -> Command {
    Command::CreatePartitions { name: name.into(), count }
}

#[test]
fn create_partitions_appends_placed_and_led_partitions_and_leaves_the_others_alone() {
    let mut c = Cluster::with_brokers(&[1, 2, 3], None);
    c.ok(create("t", 1, 2));
    c.ok(create("other", 2, 3));
    let before = c.image.topic("t").unwrap().clone();

    let applied = c.ok(grow("t", 4));
    let Outcome::PartitionsCreated(grown) = &applied.outcome else { panic!("{:?}", applied.outcome) };
    assert_eq!(grown, c.image.topic("t").unwrap(), "the outcome is the topic after the change");
    assert_eq!(grown.partition_count(), 4);
    assert_eq!(grown.id, before.id, "the same topic");
    assert_eq!(grown.partitions[0], before.partitions[0], "existing partitions are untouched");
    for p in &grown.partitions[1..] {
        assert_eq!(p.replicas.len(), 2, "the topic's replication factor");
        assert_eq!(p.isr, p.replicas);
        assert_eq!(p.leader, Some(p.replicas[0]));
        assert_eq!((p.leader_epoch, p.partition_epoch), (0, 0));
    }
    assert_eq!(
        applied.deltas,
        vec![MetadataDelta::PartitionsCreated {
            topic: "t".into(),
            topic_id: before.id,
            first: 1,
            partitions: grown.partitions[1..].to_vec(),
        }]
    );
    // Placement counts the load already there: leaders stay balanced over the cluster.
    let counts = leader_counts(&c.image);
    let (min, max) = (counts.values().min().unwrap(), counts.values().max().unwrap());
    assert!(max - min <= 1, "{counts:?}");
}

#[test]
fn create_partitions_uses_kafkas_errors() {
    let mut c = Cluster::with_brokers(&[1, 2, 3], None);
    c.ok(create("t", 3, 3));
    assert_eq!(c.refused(grow("t", 3)), ErrorCode::InvalidPartitions, "the same count");
    assert_eq!(c.refused(grow("t", 2)), ErrorCode::InvalidPartitions, "partitions are never removed");
    assert_eq!(c.refused(grow("t", 0)), ErrorCode::InvalidPartitions);
    assert_eq!(c.refused(grow("t", PARTITIONS_MAX + 1)), ErrorCode::InvalidPartitions);
    assert_eq!(c.refused(grow("nope", 5)), ErrorCode::UnknownTopicOrPartition);
    // The replication factor needs that many unfenced brokers for the new partitions.
    c.fence(3);
    assert_eq!(c.refused(grow("t", 4)), ErrorCode::InvalidReplicationFactor);
    c.unfence(3);
    c.ok(grow("t", PARTITIONS_MAX));
    assert_eq!(c.image.topic("t").unwrap().partition_count(), PARTITIONS_MAX);
}

#[test]
fn new_partitions_go_to_unfenced_brokers_only() {
    let mut c = Cluster::with_brokers(&[1, 2, 3], None);
    c.ok(create("t", 1, 2));
    c.fence(3);
    c.ok(grow("t", 7));
    let t = c.image.topic("t").unwrap();
    assert!(t.partitions[1..].iter().all(|p| !p.is_replica(3) && p.leader.is_some()));
}

#[test]
fn dry_run_answers_like_apply_and_changes_nothing() {
    let mut c = Cluster::with_brokers(&[1, 2, 3], None);
    c.ok(create("t", 1, 3));
    let before = c.image.clone();
    let alter = Command::AlterTopicConfig {
        name: "t".into(),
        set: BTreeMap::from([("retention.ms".into(), "+60000".into())]),
        delete: vec![],
    };
    let checked = c.image.dry_run(&alter).unwrap();
    assert_eq!(c.image, before, "a dry run changes nothing");
    assert_eq!(
        checked.outcome,
        Outcome::TopicConfigAltered {
            name: "t".into(),
            config: BTreeMap::from([("retention.ms".into(), "60000".into())])
        }
    );
    assert_eq!(c.ok(alter).outcome, checked.outcome);

    let checked = c.image.dry_run(&grow("t", 3)).unwrap();
    let applied = c.ok(grow("t", 3));
    assert_eq!(applied, checked, "the same placement when nothing changed in between");
    assert_eq!(c.image.dry_run(&grow("t", 2)).unwrap_err().code, ErrorCode::InvalidPartitions);
}

// ----- AlterPartition -----

#[test]
fn alter_partition_shrinks_and_expands_the_isr_with_a_partition_epoch_bump() {
    let mut c = Cluster::with_brokers(&[1, 2, 3], None);
    c.ok(create("t", 1, 3));
    let start = c.partition("t", 0);
    let leader = start.leader.unwrap();
    let follower = *start.isr.iter().find(|&&b| b != leader).unwrap();

    let shrunk: Vec<u32> = start.isr.iter().copied().filter(|&b| b != follower).collect();
    let applied = c.ok(c.alter_isr("t", 0, &shrunk));
    let state = c.partition("t", 0);
    assert_eq!(
        applied.outcome,
        Outcome::PartitionAltered { topic: "t".into(), partition: 0, state: state.clone() }
    );
    assert_eq!(state.isr, shrunk);
    assert_eq!(state.partition_epoch, start.partition_epoch + 1);
    assert_eq!(state.leader_epoch, start.leader_epoch, "an ISR change is no leadership change");

    // Expansion, listed in any order; the ISR is kept in replica order.
    let mut all = start.isr.clone();
    all.reverse();
    c.ok(c.alter_isr("t", 0, &all));
    let state = c.partition("t", 0);
    assert_eq!(state.isr, start.isr);
    assert_eq!(state.partition_epoch, start.partition_epoch + 2);

    // The same request again (its answer was lost) is accepted without a change... unless
    // its partition epoch is now stale, which it is: the leader must refresh first.
    let retry = c.alter_isr("t", 0, &all);
    let version = c.image.version();
    let same = c.ok(retry);
    assert!(same.deltas.is_empty());
    assert_eq!(c.image.version(), version);
}

#[test]
fn alter_partition_refuses_with_kafkas_errors() {
    let mut c = Cluster::with_brokers(&[1, 2, 3, 4], None);
    c.ok(Command::CreateTopic {
        name: "t".into(),
        partitions: 1,
        replication_factor: 3,
        config: BTreeMap::new(),
        assignments: Some(vec![vec![1, 2, 3]]),
    });
    let good = c.alter_isr("t", 0, &[1, 2]);
    let with = |f: &dyn Fn(&mut Command)| {
        let mut cmd = good.clone();
        f(&mut cmd);
        cmd
    };
    macro_rules! field {
        ($cmd:expr, $name:ident = $value:expr) => {
            if let Command::AlterPartition { $name, .. } = $cmd {
                *$name = $value;
            }
        };
    }
    let cases: Vec<(Command, ErrorCode)> = vec![
        (with(&|c| field!(c, broker_epoch = 999)), ErrorCode::StaleBrokerEpoch),
        (with(&|c| field!(c, leader_id = 99)), ErrorCode::StaleBrokerEpoch),
        (with(&|c| field!(c, topic = "nope".into())), ErrorCode::UnknownTopicId),
        (with(&|c| field!(c, topic_id = TopicId([7; 16]))), ErrorCode::UnknownTopicId),
        (with(&|c| field!(c, partition = 1)), ErrorCode::UnknownTopicOrPartition),
        (with(&|c| field!(c, leader_epoch = 1)), ErrorCode::NotController),
        (with(&|c| field!(c, partition_epoch = 1)), ErrorCode::NotController),
        (with(&|c| field!(c, new_isr = isr(&[1, 1, 2]))), ErrorCode::InvalidRequest),
        (with(&|c| field!(c, new_isr = isr(&[1, 4]))), ErrorCode::InvalidRequest),
        (with(&|c| field!(c, new_isr = isr(&[2, 3]))), ErrorCode::InvalidRequest),
        (with(&|c| field!(c, new_isr = isr(&[]))), ErrorCode::InvalidRequest),
        (
            with(&|c| {
                field!(c, new_isr = vec![IsrMember { id: 2, broker_epoch: Some(1) }, isr(&[1])[0].clone()])
            }),
            ErrorCode::IneligibleReplica,
        ),
    ];
    for (cmd, code) in cases {
        let shown = format!("{cmd:?}");
        assert_eq!(c.refused(cmd), code, "{shown}");
    }
    // A follower (broker 2, current epoch) asking: not the leader.
    let mut from_follower = good.clone();
    let epoch2 = c.epoch(2);
    field!(&mut from_follower, leader_id = 2);
    field!(&mut from_follower, broker_epoch = epoch2);
    assert_eq!(c.refused(from_follower), ErrorCode::NotLeaderOrFollower);

    // Current epochs for the members are fine (broker 3 drops out).
    let epoch1 = c.epoch(1);
    let mut with_epochs = good.clone();
    let members = vec![
        IsrMember { id: 1, broker_epoch: Some(epoch1) },
        IsrMember { id: 2, broker_epoch: Some(epoch2) },
    ];
    field!(&mut with_epochs, new_isr = members);
    c.ok(with_epochs);
    assert_eq!(c.partition("t", 0).isr, vec![1, 2]);

    // Now `good` is stale: its partition epoch is behind.
    assert_eq!(c.refused(good.clone()), ErrorCode::InvalidUpdateVersion);

    // Fence broker 3: a request to bring it back is ineligible.
    c.fence(3);
    let expand = c.alter_isr("t", 0, &[1, 2, 3]);
    assert_eq!(c.refused(expand), ErrorCode::IneligibleReplica);

    // Leadership moves: the old leader's request carries an old leader epoch.
    let from_old_leader = c.alter_isr("t", 0, &[1]);
    c.fence(1);
    assert_eq!(c.partition("t", 0).leader, Some(2));
    assert_eq!(c.refused(from_old_leader), ErrorCode::FencedLeaderEpoch);
}

// ----- ElectLeaders -----

#[test]
fn preferred_election_reports_per_partition() {
    let mut c = Cluster::with_brokers(&[1, 2, 3], None);
    c.ok(Command::CreateTopic {
        name: "t".into(),
        partitions: 3,
        replication_factor: 2,
        config: BTreeMap::new(),
        assignments: Some(vec![vec![1, 2], vec![2, 3], vec![3, 1]]),
    });
    c.fence(1); // t-0 moves to 2; t-2 loses follower 1
    c.unfence(1); // 1 is back but not in sync for t-0
    let refs = |ps: &[(&str, u32)]| {
        Some(ps.iter().map(|&(t, p)| PartitionRef { topic: t.into(), partition: p }).collect::<Vec<_>>())
    };
    let applied = c.ok(Command::ElectLeaders {
        partitions: refs(&[("t", 0), ("t", 1), ("t", 0), ("u", 0), ("t", 9)]),
        preferred: true,
    });
    let Outcome::LeadersElected(results) = applied.outcome else { panic!() };
    let codes: Vec<(String, u32, Option<ErrorCode>)> = results
        .iter()
        .map(|r| (r.topic.clone(), r.partition, r.result.as_ref().err().map(|e| e.code)))
        .collect();
    assert_eq!(
        codes,
        vec![
            ("t".into(), 0, Some(ErrorCode::PreferredLeaderNotAvailable)),
            ("t".into(), 1, Some(ErrorCode::ElectionNotNeeded)),
            ("t".into(), 9, Some(ErrorCode::UnknownTopicOrPartition)),
            ("u".into(), 0, Some(ErrorCode::UnknownTopicOrPartition)),
        ],
        "sorted, deduplicated, one result each"
    );
    assert!(applied.deltas.is_empty());

    c.ok(c.alter_isr("t", 0, &[1, 2]));
    let applied = c.ok(Command::ElectLeaders { partitions: None, preferred: true });
    let Outcome::LeadersElected(results) = applied.outcome else { panic!() };
    assert_eq!(results.len(), 1, "only t-0 needed an election");
    assert_eq!(results[0].result.as_ref().unwrap().leader, Some(1));

    let too_many = vec![PartitionRef { topic: "t".into(), partition: 0 }; ELECTION_PARTITIONS_MAX + 1];
    assert_eq!(
        c.refused(Command::ElectLeaders { partitions: Some(too_many), preferred: true }),
        ErrorCode::InvalidRequest
    );
}

// ----- versions, watchers, snapshots -----

#[test]
fn indexes_must_move_forward() {
    let mut image = ClusterMetadata::new();
    image.apply(5, &register(1, None)).unwrap();
    let err = image.apply(5, &register(2, None)).unwrap_err();
    assert_eq!(err.code, ErrorCode::UnknownServerError);
    assert!(image.apply(4, &register(2, None)).is_err());
    assert_eq!(image.brokers().count(), 1);
}

#[test]
fn a_watcher_following_deltas_from_an_old_image_reaches_the_new_one() {
    let mut c = Cluster::with_brokers(&[1, 2, 3], None);
    c.ok(create("a", 3, 3));
    let mut watcher = c.image.clone(); // the full image the watch stream starts with
    let mut updates = Vec::new();
    let mut run = |c: &mut Cluster, cmd: Command| {
        if let Ok(applied) = c.apply(cmd) {
            updates.push((c.image.version(), applied.deltas));
        }
    };
    run(&mut c, create("b", 2, 2));
    let epoch = c.epoch(2);
    run(&mut c, Command::FenceBroker { id: 2, epoch });
    run(&mut c, create("b", 2, 2)); // refused: no update
    run(
        &mut c,
        Command::AlterTopicConfig {
            name: "a".into(),
            set: BTreeMap::from([("retention.ms".into(), "1000".into())]),
            delete: vec![],
        },
    );
    let epoch = c.epoch(2);
    run(&mut c, Command::UnfenceBroker { id: 2, epoch });
    let expand = c.alter_isr("a", 0, &[1, 2, 3]);
    run(&mut c, expand);
    run(&mut c, Command::CreatePartitions { name: "a".into(), count: 5 });
    run(&mut c, Command::ElectLeaders { partitions: None, preferred: true });
    run(&mut c, Command::DeleteTopic { name: "b".into() });

    for (version, deltas) in updates.iter().filter(|(_, d)| !d.is_empty()) {
        watcher.apply_deltas(*version, deltas).unwrap();
    }
    assert_eq!(watcher, c.image);

    // Replaying an update is detected.
    let (version, deltas) = updates.iter().rev().find(|(_, d)| !d.is_empty()).unwrap();
    assert_eq!(
        watcher.apply_deltas(*version, deltas),
        Err(DeltaError::OutOfOrder { version: *version, current: *version })
    );
    // A delta for a topic the watcher does not have means it diverged.
    let mut fresh = ClusterMetadata::new();
    assert!(matches!(fresh.apply_deltas(1, deltas), Err(DeltaError::UnknownTopic { .. })));
}

#[test]
fn snapshot_round_trips_and_refuses_foreign_or_broken_images() {
    let mut c = Cluster::with_brokers(&[1, 2, 3], Some(&["a", "b", "c"]));
    c.ok(Command::RegisterBroker {
        id: 4,
        endpoints: endpoints(4),
        rack: Some("a".into()),
        incarnation_id: Some(u128::MAX),
    });
    c.ok(create("t", 4, 3));
    c.fence(1);
    let bytes = encode_snapshot(&c.image);
    let back = decode_snapshot(&bytes).unwrap();
    assert_eq!(back, c.image);
    assert_eq!(encode_snapshot(&back), bytes, "encoding is deterministic");

    let text = String::from_utf8(bytes).unwrap();
    let future = text.replacen("\"format\":1", "\"format\":2", 1);
    assert!(matches!(
        decode_snapshot(future.as_bytes()),
        Err(SnapshotError::UnsupportedFormat { found: 2, supported: 1 })
    ));
    assert!(matches!(decode_snapshot(b"{\"format\":1"), Err(SnapshotError::Malformed(_))));
    // Brokers 2 and 3 fenced while leading: an image this state machine never makes.
    let text = String::from_utf8(encode_snapshot(&c.image)).unwrap();
    let tampered = text.replace("\"fenced\":false", "\"fenced\":true");
    assert!(matches!(decode_snapshot(tampered.as_bytes()), Err(SnapshotError::Inconsistent(_))));
}

#[test]
fn the_same_log_gives_the_same_image() {
    let mut c = Cluster::with_brokers(&[1, 2, 3, 4], Some(&["x", "y", "x", "y"]));
    c.ok(create("a", 5, 2));
    c.ok(create("b", 3, 3));
    c.fence(2);
    c.register(3, Some("x"));
    c.unfence(2);
    assert_eq!(c.replay(), c.image);
}

// ----- producer ids -----

fn allocate(c: &mut Cluster, broker_id: u32) -> (i64, u32) {
    let broker_epoch = c.epoch(broker_id);
    match c.ok(Command::AllocateProducerIds { broker_id, broker_epoch }).outcome {
        Outcome::ProducerIdsAllocated { broker_id: to, first_id, count } => {
            assert_eq!(to, broker_id);
            (first_id, count)
        }
        other => panic!("unexpected outcome {other:?}"),
    }
}

#[test]
fn producer_id_blocks_are_consecutive_and_never_overlap() {
    let mut c = Cluster::with_brokers(&[1, 2, 3], None);
    assert_eq!(c.image.next_producer_id(), 0);
    let mut blocks = Vec::new();
    for broker in [1, 2, 1, 3, 2] {
        let version = c.image.version();
        let block = allocate(&mut c, broker);
        assert!(c.image.version() > version, "an allocation changes the image, so the version moves");
        blocks.push(block);
    }
    assert_eq!(
        blocks,
        (0..5).map(|i| (i * i64::from(PRODUCER_ID_BLOCK_SIZE), PRODUCER_ID_BLOCK_SIZE)).collect::<Vec<_>>()
    );
    assert_eq!(c.image.next_producer_id(), 5 * i64::from(PRODUCER_ID_BLOCK_SIZE));
    assert_eq!(c.replay(), c.image, "replaying the log allocates the same blocks");
}

#[test]
fn producer_ids_go_only_to_a_registered_broker_at_its_current_epoch() {
    let mut c = Cluster::with_brokers(&[1, 2], None);
    let old_epoch = c.epoch(1);
    c.register(1, None); // a restart: a new epoch
    assert_eq!(
        c.refused(Command::AllocateProducerIds { broker_id: 1, broker_epoch: old_epoch }),
        ErrorCode::StaleBrokerEpoch
    );
    assert_eq!(
        c.refused(Command::AllocateProducerIds { broker_id: 9, broker_epoch: 1 }),
        ErrorCode::BrokerIdNotRegistered
    );
    assert_eq!(c.image.next_producer_id(), 0, "refusals allocate nothing");
    assert_eq!(allocate(&mut c, 1).0, 0, "the new epoch is accepted");
    // A fenced broker is still registered; its ids stay unique whatever its standing.
    c.fence(2);
    assert_eq!(allocate(&mut c, 2).0, i64::from(PRODUCER_ID_BLOCK_SIZE));
}

#[test]
fn the_next_producer_id_survives_snapshots_and_old_snapshots_start_at_zero() {
    let mut c = Cluster::with_brokers(&[1], None);
    allocate(&mut c, 1);
    allocate(&mut c, 1);
    let back = decode_snapshot(&encode_snapshot(&c.image)).unwrap();
    assert_eq!(back.next_producer_id(), 2 * i64::from(PRODUCER_ID_BLOCK_SIZE));
    assert_eq!(back, c.image);

    // A snapshot written before producer ids existed has no such field.
    let mut old = Cluster::with_brokers(&[1], None);
    old.ok(create("t", 1, 1));
    let text = String::from_utf8(encode_snapshot(&old.image)).unwrap();
    let without = text.replace(",\"next_producer_id\":0", "");
    assert_ne!(without, text, "the field is in the new encoding");
    let loaded = decode_snapshot(without.as_bytes()).expect("an old snapshot loads");
    assert_eq!(loaded.next_producer_id(), 0);
    assert_eq!(loaded, old.image);

    let negative = text.replace("\"next_producer_id\":0", "\"next_producer_id\":-5");
    assert!(matches!(decode_snapshot(negative.as_bytes()), Err(SnapshotError::Inconsistent(_))));
}

/// Endpoints written before `internal` existed still read, and ones without it are written
/// as before, so images and log entries of either version read in the other.
#[test]
fn endpoints_without_internal_read_and_write_as_before() {
    let old = r#"{"grpc":"h:1","kafka":"h:2","http":"h:3"}"#;
    let read: Endpoints = serde_json::from_str(old).unwrap();
    assert_eq!(
        read,
        Endpoints { grpc: "h:1".into(), kafka: "h:2".into(), http: "h:3".into(), internal: String::new() }
    );
    assert_eq!(serde_json::to_string(&read).unwrap(), old);
    let split = Endpoints { internal: "h:4".into(), ..read };
    let json = serde_json::to_string(&split).unwrap();
    assert_eq!(serde_json::from_str::<Endpoints>(&json).unwrap(), split);
}

#[test]
fn no_broker_is_assigned_more_than_the_replica_cap() {
    let mut c = Cluster::with_brokers(&[1, 2], None);
    // Two brokers at RF 2: each new partition puts a replica on both.
    c.ok(create("a", PARTITIONS_MAX, 2));
    c.ok(create("b", PARTITIONS_MAX, 2));
    assert_eq!(2 * PARTITIONS_MAX as usize, REPLICAS_PER_BROKER_MAX, "the cap is exactly full");
    let before = c.image.clone();
    assert_eq!(c.refused(create("c", 1, 1)), ErrorCode::PolicyViolation);
    assert_eq!(c.refused(grow("a", PARTITIONS_MAX)), ErrorCode::InvalidPartitions, "already that many");
    c.ok(Command::DeleteTopic { name: "b".into() });
    c.ok(create("c", 1, 1));
    c.ok(grow("c", 2));
    // Growing past the cap is refused too, and a refusal changes nothing.
    // 10,000 of a, one of c and 9,999 of d on each broker: full again.
    c.ok(create("d", PARTITIONS_MAX - 1, 2));
    let full = c.image.clone();
    assert_eq!(c.refused(grow("c", 3)), ErrorCode::PolicyViolation);
    assert_eq!(c.image, full);
    assert_ne!(before, full);
}

// ----- users and ACLs -----

#[test]
fn users_are_created_replaced_and_deleted_by_mechanism_and_survive_a_snapshot() {
    use runnel_auth::scram::{Mechanism, ScramCredential};
    let mut c = Cluster::new();
    let sha256 = ScramCredential::from_salt(Mechanism::ScramSha256, "pw", b"salt-1", 4096);
    let sha512 = ScramCredential::from_salt(Mechanism::ScramSha512, "pw", b"salt-2", 4096);
    let upsert = |credential: &ScramCredential| Command::UpsertUser {
        name: "alice".into(),
        credentials: vec![credential.clone()],
        only_if_no_users: false,
    };
    let first = Command::UpsertUser {
        name: "alice".into(),
        credentials: vec![sha256.clone()],
        only_if_no_users: true,
    };
    let applied = c.ok(first);
    assert!(
        matches!(applied.deltas.as_slice(), [MetadataDelta::SecurityChanged(s)] if s.users["alice"].len() == 1)
    );
    assert!(c.ok(upsert(&sha256)).deltas.is_empty(), "the same credential again changes nothing");
    c.ok(upsert(&sha512));
    assert_eq!(c.image.security().users["alice"].len(), 2);
    let twice = Command::UpsertUser {
        name: "carol".into(),
        credentials: vec![sha256.clone(), sha256.clone()],
        only_if_no_users: false,
    };
    assert_eq!(c.refused(twice), ErrorCode::InvalidRequest, "two credentials of one mechanism");
    // The first administrator's creation is refused once any user exists.
    let first = Command::UpsertUser {
        name: "root".into(),
        credentials: vec![sha256.clone()],
        only_if_no_users: true,
    };
    assert_eq!(c.refused(first), ErrorCode::ClusterAuthorizationFailed);
    let none = Command::UpsertUser { name: "carol".into(), credentials: vec![], only_if_no_users: false };
    assert_eq!(c.refused(none), ErrorCode::InvalidRequest);
    // A new password replaces the credential of its mechanism only.
    let changed = ScramCredential::from_salt(Mechanism::ScramSha256, "new", b"salt-3", 4096);
    c.ok(upsert(&changed));
    assert!(c.image.security().users["alice"][&Mechanism::ScramSha256].verify_password("new"));
    assert!(c.image.security().users["alice"][&Mechanism::ScramSha512].verify_password("pw"));

    // Bad names and credentials are refused, and never reach the image.
    let mut short = sha256.clone();
    short.stored_key.truncate(5);
    assert_eq!(
        c.refused(Command::UpsertUser {
            name: "bob".into(),
            credentials: vec![short],
            only_if_no_users: false
        }),
        ErrorCode::UnsupportedSaslMechanism
    );
    let mut weak = sha256.clone();
    weak.iterations = 1;
    assert_eq!(
        c.refused(Command::UpsertUser {
            name: "bob".into(),
            credentials: vec![weak],
            only_if_no_users: false
        }),
        ErrorCode::UnsupportedSaslMechanism
    );
    for bad in ["", "*", "a\nb"] {
        assert_eq!(
            c.refused(Command::UpsertUser {
                name: bad.into(),
                credentials: vec![sha256.clone()],
                only_if_no_users: false
            }),
            ErrorCode::InvalidRequest,
            "{bad:?}"
        );
    }

    // The snapshot carries them.
    let restored = decode_snapshot(&encode_snapshot(&c.image)).expect("decodes");
    assert_eq!(restored, c.image);

    c.ok(Command::DeleteUser { name: "alice".into(), mechanism: Some(Mechanism::ScramSha256) });
    assert_eq!(c.image.security().users["alice"].len(), 1);
    assert_eq!(
        c.refused(Command::DeleteUser { name: "alice".into(), mechanism: Some(Mechanism::ScramSha256) }),
        ErrorCode::ResourceNotFound
    );
    c.ok(Command::DeleteUser { name: "alice".into(), mechanism: Some(Mechanism::ScramSha512) });
    assert!(c.image.security().users.is_empty(), "a user without credentials is gone");
    assert_eq!(
        c.refused(Command::DeleteUser { name: "alice".into(), mechanism: None }),
        ErrorCode::ResourceNotFound
    );
    assert_eq!(c.replay(), c.image);
}

#[test]
fn acls_are_added_once_deleted_by_filter_and_checked() {
    use runnel_auth::acl::{
        AclBinding, AclFilter, Operation, PatternFilter, PatternType, Permission, ResourceType,
    };
    let mut c = Cluster::new();
    let binding = |principal: &str, topic: &str, operation: Operation| {
        AclBinding::any_host(
            principal,
            ResourceType::Topic,
            topic,
            PatternType::Literal,
            operation,
            Permission::Allow,
        )
    };
    let read = binding("User:alice", "orders", Operation::Read);
    let write = binding("User:bob", "orders", Operation::Write);
    let other = binding("User:alice", "payments", Operation::Read);
    let created = c.ok(Command::CreateAcls { acls: vec![read.clone(), write.clone(), other.clone()] });
    assert_eq!(created.outcome, Outcome::AclsCreated { created: 3 });
    assert_eq!(
        c.ok(Command::CreateAcls { acls: vec![read.clone()] }).outcome,
        Outcome::AclsCreated { created: 0 }
    );
    let mut bad = read.clone();
    bad.principal = "alice".into();
    assert_eq!(c.refused(Command::CreateAcls { acls: vec![write.clone(), bad] }), ErrorCode::InvalidRequest);

    // Every binding on topic "orders", whoever it names.
    let filter = AclFilter {
        resource_type: Some(ResourceType::Topic),
        resource_name: Some("orders".into()),
        pattern: PatternFilter::Any,
        ..AclFilter::default()
    };
    let deleted = c.ok(Command::DeleteAcls { filters: vec![filter.clone()] });
    match deleted.outcome {
        Outcome::AclsDeleted { deleted } => assert_eq!(deleted, vec![vec![read.clone(), write.clone()]]),
        other => panic!("unexpected outcome {other:?}"),
    }
    assert_eq!(c.image.security().acls.iter().cloned().collect::<Vec<_>>(), vec![other]);
    assert!(c.ok(Command::DeleteAcls { filters: vec![filter] }).deltas.is_empty(), "nothing left to delete");
    assert_eq!(c.replay(), c.image);
}
