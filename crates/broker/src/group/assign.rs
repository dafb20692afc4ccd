//! The server-side assignors of KIP-848: given the members (sorted by id), their
//! subscriptions and current targets, and the partition count of every topic, the target
//! assignment. Both are deterministic: the same input gives the same output on any broker
//! and any build (ordered maps only, no hashing).
//!
//! - **uniform** spreads the partitions as evenly as it can and is sticky: a member keeps
//!   its current partitions while that keeps the spread within one partition. Members may
//!   subscribe to different topics; partitions with the fewest eligible members are placed
//!   first, then partitions move from the most to the least loaded eligible members until no
//!   move makes two members' counts closer. With identical subscriptions the counts end
//!   within one of each other; with different ones it is a local optimum, not always the
//!   best possible spread.
//! - **range** assigns each topic on its own: its subscribers, in member-id order, take
//!   contiguous ranges of partitions, the first `count % members` one partition more (as
//!   Kafka's range assignor). It is not sticky.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;

/// A topic and partition.
pub type Tp = (String, u32);
/// A set of topic partitions, in order.
pub type TpSet = BTreeSet<Tp>;
/// Topics and their partition counts.
pub type TopicCounts = BTreeMap<String, u32>;

/// Which assignor a member asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum Assignor {
    /// Even and sticky.
    #[default]
    Uniform,
    /// Contiguous ranges per topic.
    Range,
}

impl Assignor {
    /// Its name on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Assignor::Uniform => "uniform",
            Assignor::Range => "range",
        }
    }
}

impl FromStr for Assignor {
    type Err = String;

    /// "" means uniform.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "" | "uniform" => Ok(Assignor::Uniform),
            "range" => Ok(Assignor::Range),
            other => Err(format!("unknown assignor {other:?}; expected \"uniform\" or \"range\"")),
        }
    }
}

/// One member as the assignors see it.
#[derive(Debug, Clone, Copy)]
pub struct MemberSpec<'a> {
    /// The member id.
    pub id: &'a str,
    /// Its topics.
    pub subscribed: &'a BTreeSet<String>,
    /// Its current target (uniform keeps what it can).
    pub current: &'a TpSet,
}

/// The target assignment of `members` (any order; they are sorted by id here).
pub fn assign(
    assignor: Assignor,
    members: &[MemberSpec<'_>],
    topics: &TopicCounts,
) -> BTreeMap<String, TpSet> {
    let mut sorted: Vec<MemberSpec<'_>> = members.to_vec();
    sorted.sort_by(|a, b| a.id.cmp(b.id));
    sorted.dedup_by(|a, b| a.id == b.id);
    match assignor {
        Assignor::Uniform => uniform(&sorted, topics),
        Assignor::Range => range(&sorted, topics),
    }
}

fn range(members: &[MemberSpec<'_>], topics: &TopicCounts) -> BTreeMap<String, TpSet> {
    let mut out: BTreeMap<String, TpSet> = members.iter().map(|m| (m.id.to_owned(), TpSet::new())).collect();
    for (topic, &count) in topics {
        let subscribers: Vec<&str> =
            members.iter().filter(|m| m.subscribed.contains(topic)).map(|m| m.id).collect();
        if subscribers.is_empty() {
            continue;
        }
        let n = subscribers.len() as u32;
        let (quota, extra) = (count / n, count % n);
        let mut next = 0u32;
        for (i, id) in subscribers.iter().enumerate() {
            let len = quota + u32::from((i as u32) < extra);
            let set = out.entry((*id).to_owned()).or_default();
            set.extend((next..next + len).map(|p| (topic.clone(), p)));
            next += len;
        }
    }
    out
}

fn uniform(members: &[MemberSpec<'_>], topics: &TopicCounts) -> BTreeMap<String, TpSet> {
    let n = members.len();
    // Eligible members of each subscribed, existing topic, by index (in id order).
    let mut eligible: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, m) in members.iter().enumerate() {
        for topic in m.subscribed {
            if topics.contains_key(topic) {
                eligible.entry(topic.as_str()).or_default().push(i);
            }
        }
    }
    let mut sets: Vec<TpSet> = vec![TpSet::new(); n];
    let mut taken = TpSet::new();
    // Stickiness: keep current partitions that still exist and are still subscribed.
    for (i, m) in members.iter().enumerate() {
        for tp in m.current {
            let valid = topics.get(&tp.0).is_some_and(|&c| tp.1 < c) && m.subscribed.contains(&tp.0);
            if valid && taken.insert(tp.clone()) {
                sets[i].insert(tp.clone());
            }
        }
    }
    // The rest: partitions with the fewest candidates first, each to its least loaded one.
    let mut free: Vec<(usize, Tp)> = Vec::new();
    for (topic, candidates) in &eligible {
        let count = topics.get(*topic).copied().unwrap_or(0);
        for p in 0..count {
            let tp = ((*topic).to_owned(), p);
            if !taken.contains(&tp) {
                free.push((candidates.len(), tp));
            }
        }
    }
    free.sort();
    for (_, tp) in free {
        let Some(candidates) = eligible.get(tp.0.as_str()) else { continue };
        if let Some(&best) = candidates.iter().min_by_key(|&&i| (sets[i].len(), i)) {
            sets[best].insert(tp);
        }
    }
    // Balance: move a partition from a member to an eligible one holding at least two fewer,
    // until none can move. Each move lowers the sum of squared counts, so this ends.
    loop {
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&i| (Reverse(sets[i].len()), i));
        let mut chosen = None;
        'find: for &from in &order {
            for tp in sets[from].iter().rev() {
                let Some(candidates) = eligible.get(tp.0.as_str()) else { continue };
                if let Some(&to) = candidates.iter().min_by_key(|&&i| (sets[i].len(), i))
                    && sets[to].len() + 1 < sets[from].len()
                {
                    chosen = Some((from, to, tp.clone()));
                    break 'find;
                }
            }
        }
        let Some((from, to, tp)) = chosen else { break };
        sets[from].remove(&tp);
        sets[to].insert(tp);
    }
    members.iter().zip(sets).map(|(m, set)| (m.id.to_owned(), set)).collect()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn subs(topics: &[&str]) -> BTreeSet<String> {
        topics.iter().map(|t| (*t).to_owned()).collect()
    }

    fn counts(list: &[(&str, u32)]) -> TopicCounts {
        list.iter().map(|(t, c)| ((*t).to_owned(), *c)).collect()
    }

    fn sizes(out: &BTreeMap<String, TpSet>) -> Vec<usize> {
        out.values().map(BTreeSet::len).collect()
    }

    #[test]
    fn uniform_splits_six_partitions_three_three_then_two_two_two_sticky() {
        let t = counts(&[("t", 6)]);
        let s = subs(&["t"]);
        let none = TpSet::new();
        let two = assign(
            Assignor::Uniform,
            &[
                MemberSpec { id: "a", subscribed: &s, current: &none },
                MemberSpec { id: "b", subscribed: &s, current: &none },
            ],
            &t,
        );
        assert_eq!(sizes(&two), vec![3, 3]);
        let three = assign(
            Assignor::Uniform,
            &[
                MemberSpec { id: "a", subscribed: &s, current: &two["a"] },
                MemberSpec { id: "b", subscribed: &s, current: &two["b"] },
                MemberSpec { id: "c", subscribed: &s, current: &none },
            ],
            &t,
        );
        assert_eq!(sizes(&three), vec![2, 2, 2]);
        assert!(three["a"].is_subset(&two["a"]) && three["b"].is_subset(&two["b"]), "a and b only give up");
    }

    #[test]
    fn range_gives_contiguous_ranges_in_member_order() {
        let t = counts(&[("t", 7), ("u", 2)]);
        let s = subs(&["t", "u"]);
        let none = TpSet::new();
        let m = |id| MemberSpec { id, subscribed: &s, current: &none };
        let out = assign(Assignor::Range, &[m("c"), m("a"), m("b")], &t);
        let parts = |id: &str, topic: &str| -> Vec<u32> {
            out[id].iter().filter(|tp| tp.0 == topic).map(|tp| tp.1).collect()
        };
        assert_eq!(parts("a", "t"), vec![0, 1, 2]);
        assert_eq!(parts("b", "t"), vec![3, 4]);
        assert_eq!(parts("c", "t"), vec![5, 6]);
        assert_eq!((parts("a", "u"), parts("b", "u"), parts("c", "u")), (vec![0], vec![1], vec![]));
    }

    #[test]
    fn uniform_respects_subscriptions_and_missing_topics() {
        let t = counts(&[("t", 4), ("u", 4)]);
        let (st, su, sx) = (subs(&["t"]), subs(&["t", "u"]), subs(&["gone"]));
        let none = TpSet::new();
        let out = assign(
            Assignor::Uniform,
            &[
                MemberSpec { id: "a", subscribed: &st, current: &none },
                MemberSpec { id: "b", subscribed: &su, current: &none },
                MemberSpec { id: "x", subscribed: &sx, current: &none },
            ],
            &t,
        );
        assert!(out["a"].iter().all(|tp| tp.0 == "t"));
        assert!(out["x"].is_empty());
        assert_eq!(out["a"].len() + out["b"].len(), 8);
        assert_eq!((out["a"].len(), out["b"].len()), (4, 4), "a takes t, b takes u");
    }

    /// Members (id, subscribed to topic i?, current partitions as numbers) and topic counts.
    type Input = (Vec<(String, Vec<bool>, Vec<u32>)>, Vec<u32>);

    fn arb_input() -> impl Strategy<Value = Input> {
        let topics = proptest::collection::vec(0u32..9, 1..4);
        topics.prop_flat_map(|counts| {
            let k = counts.len();
            let member = (
                "[a-f]{1,2}",
                proptest::collection::vec(any::<bool>(), k),
                proptest::collection::vec(0u32..40, 0..6),
            );
            (proptest::collection::vec(member, 0..7), Just(counts))
        })
    }

    proptest! {
        #[test]
        fn every_subscribed_partition_is_assigned_once_and_deterministically(
            (members, topic_counts) in arb_input(),
            range_assignor in any::<bool>(),
        ) {
            let topics: TopicCounts =
                topic_counts.iter().enumerate().map(|(i, c)| (format!("t{i}"), *c)).collect();
            let mut ids = BTreeSet::new();
            let specs: Vec<(String, BTreeSet<String>, TpSet)> = members
                .iter()
                .filter(|(id, ..)| ids.insert(id.clone()))
                .map(|(id, flags, current)| {
                    let s: BTreeSet<String> =
                        flags.iter().enumerate().filter(|(_, f)| **f).map(|(i, _)| format!("t{i}")).collect();
                    let cur: TpSet = current.iter().map(|c| (format!("t{}", c % 3), c / 3)).collect();
                    (id.clone(), s, cur)
                })
                .collect();
            let view: Vec<MemberSpec<'_>> =
                specs.iter().map(|(id, s, c)| MemberSpec { id, subscribed: s, current: c }).collect();
            let assignor = if range_assignor { Assignor::Range } else { Assignor::Uniform };
            let out = assign(assignor, &view, &topics);
            let mut reversed = view.clone();
            reversed.reverse();
            prop_assert_eq!(&out, &assign(assignor, &reversed, &topics), "member order does not matter");
            let mut seen = TpSet::new();
            for (id, set) in &out {
                let (_, s, _) = specs.iter().find(|(m, ..)| m == id).unwrap();
                for tp in set {
                    prop_assert!(s.contains(&tp.0), "only subscribed topics");
                    prop_assert!(tp.1 < topics[&tp.0], "only existing partitions");
                    prop_assert!(seen.insert(tp.clone()), "no partition twice");
                }
            }
            for (topic, &count) in &topics {
                if specs.iter().any(|(_, s, _)| s.contains(topic)) {
                    for p in 0..count {
                        prop_assert!(seen.contains(&(topic.clone(), p)), "{}-{} unassigned", topic, p);
                    }
                }
            }
            let all_same = specs.windows(2).all(|w| w[0].1 == w[1].1);
            if !range_assignor && all_same {
                let lens = sizes(&out);
                let (min, max) = (lens.iter().min().copied().unwrap_or(0), lens.iter().max().copied().unwrap_or(0));
                prop_assert!(max - min <= 1, "identical subscriptions spread within one: {:?}", lens);
            }
        }
    }
}
