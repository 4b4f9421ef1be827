//! Where an actor lives in a cluster: pure functions, no I/O.
//!
//! - Every actor belongs to one of a fixed number of **partitions**
//!   (`cluster.partitions`, fixed when the cluster is created, as
//!   Temporal's history shards are): the xxh3 of its address, modulo the
//!   count. The hash is pinned by a test, since changing it would move
//!   every actor's data to another partition.
//! - Every partition has one **owner** among the live members: the member
//!   with the highest xxh3 of (partition, member id), rendezvous hashing.
//!   It needs no ring and no coordination, gives each member about the
//!   same share, and a member joining or leaving moves only the partitions
//!   it gains or held.
//! - Ownership moves at most `max_moves` partitions per round
//!   ([`next_round`]), so a rolling restart is not a storm.

use std::collections::BTreeMap;
use std::num::NonZeroU32;

use xxhash_rust::xxh3::xxh3_64;

/// The partition of the actor at `address` (`kind/id`), in `0..count`.
pub fn partition_of(address: &str, count: NonZeroU32) -> u32 {
    let count = u64::from(count.get());
    // The remainder is below `count`, itself a u32.
    u32::try_from(xxh3_64(address.as_bytes()) % count).unwrap_or(0)
}

/// How strongly `member` claims `partition`.
fn weight(partition: u32, member: &str) -> u64 {
    let mut key = Vec::with_capacity(4 + member.len());
    key.extend_from_slice(&partition.to_be_bytes());
    key.extend_from_slice(member.as_bytes());
    xxh3_64(&key)
}

/// The owner of `partition` among `members`: the highest claim, ties (of
/// distinct ids, astronomically rare) to the greater id. `None` without
/// members. The order of `members` does not matter.
pub fn owner(partition: u32, members: &[String]) -> Option<&str> {
    members
        .iter()
        .max_by_key(|m| (weight(partition, m), m.as_str()))
        .map(String::as_str)
}

/// Every partition's owner: index = partition. Empty without members.
pub fn assignment(count: NonZeroU32, members: &[String]) -> Vec<String> {
    if members.is_empty() {
        return Vec::new();
    }
    (0..count.get())
        .filter_map(|p| owner(p, members).map(str::to_owned))
        .collect()
}

/// How many partitions each member owns in `assignment`.
pub fn shares(assignment: &[String]) -> BTreeMap<&str, usize> {
    let mut shares = BTreeMap::new();
    for owner in assignment {
        *shares.entry(owner.as_str()).or_default() += 1;
    }
    shares
}

/// One round of moves from `current` toward `target` (both indexed by
/// partition, of one length): partitions whose owner left (not in
/// `members`) move at once, since nobody serves them; of the others, at
/// most `max_moves`, lowest partition first. Repeated, it reaches
/// `target`.
pub fn next_round(
    current: &[String],
    target: &[String],
    members: &[String],
    max_moves: usize,
) -> Vec<String> {
    let mut moved = 0;
    current
        .iter()
        .zip(target)
        .map(|(now, want)| {
            if now == want {
                now.clone()
            } else if !members.contains(now) {
                want.clone()
            } else if moved < max_moves {
                moved += 1;
                want.clone()
            } else {
                now.clone()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const PARTITIONS: NonZeroU32 = NonZeroU32::new(1024).unwrap();

    fn members(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("node-{i}")).collect()
    }

    /// The hash decides where data lives: pinned, so that changing it is
    /// a visible, deliberate migration.
    #[test]
    fn an_actors_partition_is_pinned() {
        let got: Vec<u32> = ["account/alice", "account/bob", "transfer/t-1", ""]
            .iter()
            .map(|a| partition_of(a, PARTITIONS))
            .collect();
        assert_eq!(got, PINNED);
        let one = NonZeroU32::new(1).unwrap();
        assert_eq!(partition_of("account/alice", one), 0);
    }

    /// Partitions of 1,024 of `account/alice`, `account/bob`,
    /// `transfer/t-1` and the empty address.
    const PINNED: [u32; 4] = [866, 118, 461, 194];

    /// Three members share 1,024 partitions within a tenth of a third each.
    #[test]
    fn members_get_about_the_same_share() {
        for n in [2, 3, 5] {
            let assignment = assignment(PARTITIONS, &members(n));
            assert_eq!(assignment.len(), 1024);
            let fair = 1024 / n;
            for (member, share) in shares(&assignment) {
                assert!(
                    share.abs_diff(fair) <= fair / 5,
                    "{member} owns {share} of 1024 among {n}"
                );
            }
        }
        assert!(assignment(PARTITIONS, &[]).is_empty());
    }

    proptest! {
        #[test]
        fn a_partition_is_in_range_and_the_same_every_time(address in ".{0,40}", count in 1u32..5000) {
            let count = NonZeroU32::new(count).unwrap();
            let p = partition_of(&address, count);
            prop_assert!(p < count.get());
            prop_assert_eq!(p, partition_of(&address, count));
        }

        /// Whatever order the members are listed in, one owner.
        #[test]
        fn the_owner_is_a_member_whatever_their_order(n in 1usize..8, rotate in 0usize..8, partition in 0u32..1024) {
            let mut list = members(n);
            let first = owner(partition, &list).map(str::to_owned);
            list.rotate_left(rotate % n);
            prop_assert_eq!(owner(partition, &list).map(str::to_owned), first.clone());
            prop_assert!(list.contains(&first.unwrap()));
        }

        /// A member joining takes partitions only for itself; one leaving
        /// gives away only its own.
        #[test]
        fn joining_or_leaving_moves_only_that_members_partitions(n in 1usize..7) {
            let before = assignment(PARTITIONS, &members(n));
            let after = assignment(PARTITIONS, &members(n + 1));
            let joined = format!("node-{}", n + 1);
            for (b, a) in before.iter().zip(&after) {
                prop_assert!(b == a || *a == joined, "{b} -> {a}");
            }
            for (a, b) in after.iter().zip(&before) {
                prop_assert!(a == b || *a == joined, "{a} -> {b} on leaving");
            }
        }

        /// Rounds move at most `max_moves` partitions of live owners each
        /// (a departed owner's at once), and reach the target.
        #[test]
        fn rounds_are_bounded_and_reach_the_target(n in 1usize..6, max_moves in 1usize..64) {
            let old = members(n);
            let new = members(n + 1);
            let mut current = assignment(PARTITIONS, &old);
            let target = assignment(PARTITIONS, &new);
            let mut rounds = 0;
            while current != target {
                let next = next_round(&current, &target, &new, max_moves);
                let moves = current.iter().zip(&next).filter(|(c, x)| c != x).count();
                prop_assert!(moves <= max_moves && moves > 0);
                current = next;
                rounds += 1;
                prop_assert!(rounds <= 1024);
            }
            // A member leaving: its partitions move in the first round.
            let left = &new[..n];
            let target = assignment(PARTITIONS, left);
            let next = next_round(&current, &target, left, 0);
            prop_assert!(next.iter().all(|o| left.contains(o)));
        }
    }
}
