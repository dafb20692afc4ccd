//! Kafka's default partitioning, so that a key lands in the partition a Kafka producer would
//! pick for it: `(murmur2(key) & 0x7fffffff) % partitions`.
//!
//! Records without a key are spread by [`Sticky`]: they all go to one partition until that
//! partition's batch is cut, then to the next one (Kafka's sticky partitioner, with
//! round-robin instead of a load-based choice of the next partition).

/// Kafka's `Utils.murmur2`: 32-bit MurmurHash2 with seed `0x9747b28c`, reading the key
/// little-endian four bytes at a time, as a signed int (Java's result type).
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    // Java computes `seed ^ length` on ints; a key longer than i32::MAX bytes cannot exist
    // there, and truncating the length here matches Java's wrap-around for any length.
    let mut h: u32 = SEED ^ (data.len() as u32);
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        if let Some(&b) = tail.get(2) {
            h ^= u32::from(b) << 16;
        }
        if let Some(&b) = tail.get(1) {
            h ^= u32::from(b) << 8;
        }
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// Kafka's `Utils.toPositive`: clears the sign bit (not `abs`, which overflows on i32::MIN).
pub fn to_positive(n: i32) -> u32 {
    (n & 0x7fff_ffff) as u32
}

/// The partition Kafka's default partitioner picks for `key` among `partitions`.
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    assert!(partitions > 0, "a topic has at least one partition");
    to_positive(murmur2(key)) % partitions
}

/// The partition for records without a key: one partition at a time, moving on (round-robin)
/// whenever the batch being filled for it is cut.
#[derive(Debug, Clone)]
pub struct Sticky {
    partitions: u32,
    current: Option<u32>,
    next: u32,
}

impl Sticky {
    /// Starts at `first % partitions`; callers pick `first` at random so that many short-lived
    /// producers do not all start on partition 0.
    pub fn new(partitions: u32, first: u32) -> Self {
        assert!(partitions > 0, "a topic has at least one partition");
        Sticky { partitions, current: None, next: first % partitions }
    }

    /// The partition count it spreads records over.
    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// The partition for the next keyless record.
    pub fn partition(&mut self) -> u32 {
        *self.current.get_or_insert_with(|| {
            let p = self.next;
            self.next = (self.next + 1) % self.partitions;
            p
        })
    }

    /// Tells the partitioner that the batch of `partition` was cut: keyless records move on
    /// if that was the sticky partition.
    pub fn batch_cut(&mut self, partition: u32) {
        if self.current == Some(partition) {
            self.current = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vectors of Kafka's own `UtilsTest.testMurmur2`
    /// (clients/src/test/java/org/apache/kafka/common/utils/UtilsTest.java).
    #[test]
    fn murmur2_matches_kafka_test_vectors() {
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58_897_971),
            (b"abc", 479_470_107),
        ];
        for (key, expected) in cases {
            assert_eq!(murmur2(key), expected, "murmur2({:?})", String::from_utf8_lossy(key));
        }
    }

    /// More vectors, for the tail lengths Kafka's own set misses (0 and 1 byte): kafka-python's
    /// `test_pure_murmur2` (its port of the Java code; unsigned results) and Akka's
    /// `Murmur2Spec` (values taken from Kafka's implementation).
    #[test]
    fn murmur2_matches_other_ports_of_kafkas_code() {
        let unsigned: [(&[u8], u32); 7] = [
            (b"", 275_646_681),
            (b"testing", 2_291_530_147),
            (b"PEACH!", 2_546_348_827),
            (b"Gorz!", 1_742_407_956),
            (b"987654321", 577_579_727),
            (b"_!!_", 2_335_345_241),
            (b"CRINOID", 3_603_193_626),
        ];
        for (key, expected) in unsigned {
            assert_eq!(murmur2(key) as u32, expected, "murmur2({:?})", String::from_utf8_lossy(key));
        }
        let signed: [(&[u8], i32); 5] = [
            (b"1", -1_993_445_489),
            (b"12", 126_087_238),
            (b"123", -267_702_483),
            (b"1234", -1_614_185_708),
            (b"12345", -1_188_365_604),
        ];
        for (key, expected) in signed {
            assert_eq!(murmur2(key), expected, "murmur2({:?})", String::from_utf8_lossy(key));
        }
    }

    #[test]
    fn partitions_follow_kafkas_formula() {
        // -973932308 & 0x7fffffff = 1173551340.
        assert_eq!(to_positive(-973_932_308), 1_173_551_340);
        assert_eq!(partition_for_key(b"21", 3), 1_173_551_340 % 3);
        // Not abs(): i32::MIN maps to 0, -1 to i32::MAX.
        assert_eq!(to_positive(i32::MIN), 0);
        assert_eq!(to_positive(-1), 0x7fff_ffff);
        for key in [&b"x"[..], b"", b"foobar", b"order-42"] {
            for n in 1..=16 {
                let p = partition_for_key(key, n);
                assert!(p < n);
                assert_eq!(p, to_positive(murmur2(key)) % n);
            }
        }
    }

    #[test]
    fn sticky_moves_on_only_when_its_batch_is_cut() {
        let mut s = Sticky::new(3, 5);
        assert_eq!(s.partition(), 2);
        assert_eq!(s.partition(), 2);
        s.batch_cut(0); // another partition's batch: no move
        assert_eq!(s.partition(), 2);
        s.batch_cut(2);
        assert_eq!(s.partition(), 0);
        s.batch_cut(0);
        assert_eq!(s.partition(), 1);
        s.batch_cut(1);
        assert_eq!(s.partition(), 2);
    }
}
