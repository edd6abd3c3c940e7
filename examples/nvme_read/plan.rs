//! What `nvme_read` does, as pure functions a host test drives without a
//! device: the LBA range and its tail, the exact sequence of I/Os behind
//! `--count` / `--passes` (in order or a seeded permutation per pass), the
//! read/write mix of `--read-percent`, the `--device` list, and the
//! classification of a block `--workload verify` read.

use fastlane::framework::PciAddress;
use fastlane::nvme::pattern;

/// Bytes of a pattern block's header that hold its LBA and its seed (little
/// endian u64 each), as `fastlane_nvme::pattern` writes them; a host test
/// checks these against `pattern::fill_block`.
pub const HEADER_LBA: std::ops::Range<usize> = 0..8;
/// See [`HEADER_LBA`].
pub const HEADER_SEED: std::ops::Range<usize> = 8..16;

/// How many mismatching LBAs of each class a report lists (the lowest ones).
pub const FIRST_FEW: usize = 8;

/// `--device A,B,...`: one or more controllers, compared as addresses (so
/// `0000:01:00.0` and `01:00.0` are the same one and refused together).
#[derive(Clone, Debug, PartialEq)]
pub struct Devices(pub Vec<PciAddress>);

/// Parses `--device`: PCI addresses separated by commas, each at most once.
pub fn devices(s: &str) -> Result<Devices, String> {
    let mut list: Vec<PciAddress> = Vec::new();
    for part in s.split(',') {
        let a: PciAddress = part
            .trim()
            .parse()
            .map_err(|e: fastlane::framework::Error| format!("{part:?}: {e}"))?;
        if list.contains(&a) {
            return Err(format!(
                "{a} is named twice: a controller is driven by one thread per queue pair of one run \
                 (use --queues for more queue pairs)"
            ));
        }
        list.push(a);
    }
    Ok(Devices(list))
}

/// The LBAs one device's run covers: whole I/Os of `io_blocks` blocks from
/// `start`. The blocks after the last whole I/O (the tail) are not covered,
/// so every I/O has the same size.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Range {
    /// First LBA (`--start-lba`).
    pub start: u64,
    /// Blocks in the range (`--blocks`, or up to the namespace's end).
    pub blocks: u64,
    /// Blocks per I/O (`--io-size` / block size).
    pub io_blocks: u64,
}

impl Range {
    /// The range of `blocks` blocks (0: up to the end of the namespace)
    /// from `start` in a namespace of `ns_blocks`; an error says what does
    /// not fit.
    pub fn new(ns_blocks: u64, start: u64, blocks: u64, io_blocks: u64) -> Result<Range, String> {
        if io_blocks == 0 {
            return Err("an I/O of zero blocks".into());
        }
        if start >= ns_blocks {
            return Err(format!(
                "--start-lba {start}: the namespace has {ns_blocks} blocks (LBAs 0 to {})",
                ns_blocks.saturating_sub(1)
            ));
        }
        let room = ns_blocks - start;
        let blocks = if blocks == 0 { room } else { blocks };
        if blocks > room {
            return Err(format!(
                "--blocks {blocks} from LBA {start} ends past the namespace's {ns_blocks} blocks (at most {room} from there)"
            ));
        }
        if blocks < io_blocks {
            return Err(format!(
                "--blocks {blocks}: shorter than one I/O of {io_blocks} blocks"
            ));
        }
        Ok(Range {
            start,
            blocks,
            io_blocks,
        })
    }

    /// Whole I/Os in the range: one pass.
    pub fn slots(&self) -> u64 {
        self.blocks / self.io_blocks
    }

    /// Blocks after the last whole I/O, which no I/O touches.
    pub fn tail(&self) -> u64 {
        self.blocks % self.io_blocks
    }

    /// First LBA of the tail (meaningful when [`Range::tail`] is not 0).
    pub fn tail_start(&self) -> u64 {
        self.start + self.slots() * self.io_blocks
    }

    /// First LBA of I/O slot `slot` (below [`Range::slots`]).
    pub fn lba(&self, slot: u64) -> u64 {
        self.start + slot * self.io_blocks
    }

    /// One line for the text report.
    pub fn describe(&self) -> String {
        let last = self.start + self.blocks - 1;
        let tail = match self.tail() {
            0 => "no tail".to_string(),
            t => format!(
                "tail of {t} block(s), LBAs {} to {last}, not covered (every I/O is whole)",
                self.tail_start()
            ),
        };
        format!(
            "range: LBAs {} to {last} ({} blocks), {} I/O(s) of {} block(s) per pass; {tail}",
            self.start,
            self.blocks,
            self.slots(),
            self.io_blocks
        )
    }
}

/// `[lo, hi)`: part `i` of `parts` of `0..total`, the parts differing by at
/// most one.
pub fn share(total: u64, parts: u64, i: u64) -> (u64, u64) {
    let at = |k: u64| (u128::from(total) * u128::from(k) / u128::from(parts.max(1))) as u64;
    (at(i), at(i + 1))
}

/// I/O number `i` (from 0) of a mix with `read_percent` reads is a read:
/// spread evenly, so the first `n` I/Os hold exactly `n * read_percent / 100`
/// reads (rounded down).
pub fn is_read(i: u64, read_percent: u8) -> bool {
    match read_percent {
        // The common cases cost nothing per I/O.
        100.. => true,
        0 => false,
        p => {
            let (p, i) = (u128::from(p), u128::from(i));
            (i + 1) * p / 100 > i * p / 100
        }
    }
}

/// splitmix64: one 64-bit step of a seeded sequence.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A seeded permutation of `0..n` that needs no table (a namespace may hold
/// billions of slots): rounds of bijections on the smallest power of two
/// holding `n` (multiply by an odd number, xor-shift, add), and values at
/// or above `n` walked on until they fall inside (cycle walking: the walk
/// stays on the permutation's cycle, which returns to the start at worst).
#[derive(Clone, Copy, Debug)]
pub struct Shuffle {
    n: u64,
    bits: u32,
    mask: u64,
    keys: [u64; 3],
}

impl Shuffle {
    /// The permutation of `0..n` for `key`.
    pub fn new(n: u64, key: u64) -> Shuffle {
        let bits = if n <= 1 {
            1
        } else {
            64 - (n - 1).leading_zeros()
        };
        let mask = if bits == 64 {
            u64::MAX
        } else {
            (1u64 << bits) - 1
        };
        let k0 = mix(key);
        let k1 = mix(k0);
        Shuffle {
            n,
            bits,
            mask,
            keys: [k0, k1, mix(k1)],
        }
    }

    fn round(&self, mut x: u64) -> u64 {
        let shift = self.bits / 2 + 1;
        for k in self.keys {
            x = x.wrapping_mul(k | 1) & self.mask;
            x ^= x >> shift;
            x = x.wrapping_add(k >> 17) & self.mask;
        }
        x
    }

    /// Where `i` (below `n`) goes.
    pub fn apply(&self, i: u64) -> u64 {
        if self.n <= 1 {
            return 0;
        }
        let mut x = self.round(i);
        while x >= self.n {
            x = self.round(x);
        }
        x
    }
}

/// Order of the slots within a pass.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Order {
    /// Slot 0, 1, 2, ...
    Sequential,
    /// A permutation per pass, seeded by `--seed` and the pass number.
    Shuffled,
}

/// The exact I/O sequence of `--count` / `--passes` on one device: I/O `i`
/// goes to slot `i % slots` of pass `i / slots` (so a pass touches every
/// slot exactly once), and is a read or a write by [`is_read`].
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// The range.
    pub range: Range,
    /// In-pass order.
    pub order: Order,
    /// Seed of the shuffle (and of the data pattern).
    pub seed: u64,
    /// I/Os in all.
    pub total: u64,
    /// Percent of the I/Os that are reads.
    pub read_percent: u8,
}

/// One planned I/O.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PlannedIo {
    /// First LBA.
    pub lba: u64,
    /// A read (else a write of the pattern).
    pub read: bool,
}

impl Plan {
    /// I/O number `i` (below `total`).
    pub fn io(&self, i: u64) -> PlannedIo {
        let slots = self.range.slots();
        let (pass, pos) = (i / slots, i % slots);
        let slot = match self.order {
            Order::Sequential => pos,
            Order::Shuffled => Shuffle::new(
                slots,
                mix(self.seed ^ pass.wrapping_mul(0xD6E8_FEB8_6659_FD93)),
            )
            .apply(pos),
        };
        PlannedIo {
            lba: self.range.lba(slot),
            read: is_read(i, self.read_percent),
        }
    }
}

/// The I/Os `--count N` or `--passes N` asks of a range of `slots` slots;
/// an error when `--passes` times the range does not fit in a u64.
pub fn total_ios(
    count: Option<u64>,
    passes: Option<u64>,
    slots: u64,
) -> Result<Option<u64>, String> {
    match (count, passes) {
        (Some(c), _) => Ok(Some(c)),
        (None, Some(p)) => p
            .checked_mul(slots)
            .map(Some)
            .ok_or_else(|| format!("--passes {p} over {slots} I/Os per pass: more than 2^64 I/Os")),
        (None, None) => Ok(None),
    }
}

/// What a block read by the verify workload holds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum BlockCheck {
    /// The pattern of this LBA and seed.
    Good,
    /// No header of this seed: never written with it (zeroes, another
    /// seed, or the header itself damaged).
    Absent,
    /// A header of this seed naming another LBA: a block of the right run
    /// in the wrong place.
    Misplaced {
        /// The LBA its header names.
        names: u64,
    },
    /// The right header, wrong bytes after it.
    Corrupt {
        /// First differing byte within the block.
        offset: usize,
    },
}

fn le_u64(b: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(b.try_into().ok()?))
}

/// Classifies one block read at `lba` against the pattern of `seed`.
pub fn classify(block: &[u8], lba: u64, seed: u64) -> BlockCheck {
    let (Some(named), Some(had)) = (
        block.get(HEADER_LBA).and_then(le_u64),
        block.get(HEADER_SEED).and_then(le_u64),
    ) else {
        return BlockCheck::Absent;
    };
    if had != seed {
        return BlockCheck::Absent;
    }
    if named != lba {
        return BlockCheck::Misplaced { names: named };
    }
    match pattern::check_block(block, lba, seed) {
        Ok(()) => BlockCheck::Good,
        Err(offset) => BlockCheck::Corrupt { offset },
    }
}

/// One class of mismatch: how many blocks, and the lowest LBAs with a
/// detail (the LBA a misplaced block names, a corrupt block's offset).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Class {
    /// Blocks of this class (a block read twice counts twice).
    pub count: u64,
    /// The lowest [`FIRST_FEW`] `(lba, detail)`, sorted, each LBA once.
    pub first: Vec<(u64, u64)>,
}

impl Class {
    /// Counts a block at `lba`.
    pub fn add(&mut self, lba: u64, detail: u64) {
        self.count += 1;
        if let Err(at) = self.first.binary_search_by_key(&lba, |e| e.0) {
            if at < FIRST_FEW {
                self.first.insert(at, (lba, detail));
                self.first.truncate(FIRST_FEW);
            }
        }
    }

    /// Adds another tally of the same class.
    pub fn merge(&mut self, other: &Class) {
        let count = self.count + other.count;
        for &(lba, detail) in &other.first {
            self.add(lba, detail);
        }
        self.count = count;
    }
}

/// The verify tally of a run, per class.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Mismatches {
    /// Blocks without a header of this seed.
    pub absent: Class,
    /// Blocks whose header names another LBA (detail: that LBA).
    pub misplaced: Class,
    /// Blocks with the right header and wrong data (detail: the offset).
    pub corrupt: Class,
}

impl Mismatches {
    /// Checks the consecutive blocks of `data` (from `lba`, `block_size`
    /// bytes each); returns how many mismatched.
    pub fn check(&mut self, data: &[u8], block_size: usize, lba: u64, seed: u64) -> u64 {
        let mut bad = 0;
        for (b, at) in data.chunks(block_size.max(1)).zip(lba..) {
            match classify(b, at, seed) {
                BlockCheck::Good => continue,
                BlockCheck::Absent => self.absent.add(at, 0),
                BlockCheck::Misplaced { names } => self.misplaced.add(at, names),
                BlockCheck::Corrupt { offset } => self.corrupt.add(at, offset as u64),
            }
            bad += 1;
        }
        bad
    }

    /// All mismatched blocks.
    pub fn total(&self) -> u64 {
        self.absent.count + self.misplaced.count + self.corrupt.count
    }

    /// Adds another tally.
    pub fn merge(&mut self, other: &Mismatches) {
        self.absent.merge(&other.absent);
        self.misplaced.merge(&other.misplaced);
        self.corrupt.merge(&other.corrupt);
    }

    /// The text report's lines, one per class with mismatches.
    pub fn describe(&self) -> Vec<String> {
        let list = |c: &Class, f: &dyn Fn(u64, u64) -> String| {
            let items: Vec<String> = c.first.iter().map(|&(l, d)| f(l, d)).collect();
            let more = if c.count > c.first.len() as u64 {
                ", ..."
            } else {
                ""
            };
            format!("{}{more}", items.join(", "))
        };
        let mut out = Vec::new();
        if self.absent.count > 0 {
            out.push(format!(
                "  absent (no header of this seed: never written with it): {} block(s), LBAs {}",
                self.absent.count,
                list(&self.absent, &|l, _| l.to_string())
            ));
        }
        if self.misplaced.count > 0 {
            out.push(format!(
                "  misplaced (header names another LBA): {} block(s), {}",
                self.misplaced.count,
                list(&self.misplaced, &|l, d| format!("LBA {l} holds LBA {d}"))
            ));
        }
        if self.corrupt.count > 0 {
            out.push(format!(
                "  corrupt (header right, data wrong): {} block(s), {}",
                self.corrupt.count,
                list(&self.corrupt, &|l, d| format!("LBA {l} at byte {d}"))
            ));
        }
        out
    }
}
