//! Partition choice for a writer: a home partition, left when it keeps conflicting.
//!
//! Owns only the choice; the log commits wherever it is told.

/// Consecutive lost races on one partition before a writer moves on.
pub const MOVE_AFTER_CONFLICTS: u32 = 3;

/// Picks the partition for each flush of one stream.
#[derive(Debug, Clone)]
pub struct PartitionChooser {
    partitions: u32,
    current: u32,
    streak: u32,
}

impl PartitionChooser {
    /// Home partition: a stable hash of the writer id over the partition count.
    pub fn new(writer: &str, partitions: u32) -> Self {
        let partitions = partitions.max(1);
        // FNV-1a: stable across builds and platforms, unlike DefaultHasher.
        let hash = writer.bytes().fold(0xcbf29ce484222325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
        });
        PartitionChooser {
            partitions,
            current: (hash % u64::from(partitions)) as u32,
            streak: 0,
        }
    }

    pub fn current(&self) -> u32 {
        self.current
    }

    /// Move to the next partition now (the current one cannot be used).
    pub fn skip(&mut self) {
        self.current = (self.current + 1) % self.partitions;
        self.streak = 0;
    }

    /// Record how many races the last commit lost; move away after a streak.
    pub fn observe(&mut self, conflicts: u32) {
        if conflicts == 0 {
            self.streak = 0;
            return;
        }
        self.streak += conflicts;
        if self.streak >= MOVE_AFTER_CONFLICTS {
            self.skip();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_home_without_conflicts_and_moves_after_a_streak() {
        let mut c = PartitionChooser::new("writer-a", 4);
        let home = c.current();
        assert_eq!(PartitionChooser::new("writer-a", 4).current(), home);
        c.observe(0);
        c.observe(1);
        assert_eq!(c.current(), home);
        c.observe(2);
        assert_eq!(c.current(), (home + 1) % 4);
    }

    #[test]
    fn single_partition_never_moves() {
        let mut c = PartitionChooser::new("w", 1);
        c.observe(10);
        assert_eq!(c.current(), 0);
    }
}
