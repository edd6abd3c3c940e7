//! The data pattern the write workload puts on disk and the verify workload
//! checks. Every block is self-describing, so a block read from the wrong
//! LBA, a stale block, or a torn transfer is caught:
//!
//! | bytes  | content                                                     |
//! |--------|-------------------------------------------------------------|
//! | 0..8   | the LBA, little endian                                      |
//! | 8..16  | the seed given to the writer, little endian                 |
//! | 16..   | byte `i` = low byte of `(lba * 0x9E37_79B9 + seed + i)`      |

/// Fills `block` (one logical block) for `lba` and `seed`.
pub fn fill_block(block: &mut [u8], lba: u64, seed: u64) {
    let n = block.len().min(16);
    let mut head = [0u8; 16];
    head[..8].copy_from_slice(&lba.to_le_bytes());
    head[8..].copy_from_slice(&seed.to_le_bytes());
    block[..n].copy_from_slice(&head[..n]);
    let base = lba.wrapping_mul(0x9E37_79B9).wrapping_add(seed);
    for (i, b) in block.iter_mut().enumerate().skip(16) {
        *b = base.wrapping_add(i as u64) as u8;
    }
}

/// Checks `block` against the pattern; returns the first differing offset.
pub fn check_block(block: &[u8], lba: u64, seed: u64) -> Result<(), usize> {
    let mut want = vec![0u8; block.len()];
    fill_block(&mut want, lba, seed);
    match block.iter().zip(&want).position(|(a, b)| a != b) {
        None => Ok(()),
        Some(i) => Err(i),
    }
}

/// Fills `data` (consecutive blocks of `block_size` from `lba`).
pub fn fill(data: &mut [u8], block_size: usize, lba: u64, seed: u64) {
    for (i, b) in data.chunks_mut(block_size).enumerate() {
        fill_block(b, lba + i as u64, seed);
    }
}

/// Checks consecutive blocks; returns `(lba, offset)` of the first mismatch.
pub fn check(data: &[u8], block_size: usize, lba: u64, seed: u64) -> Result<(), (u64, usize)> {
    for (i, b) in data.chunks(block_size).enumerate() {
        check_block(b, lba + i as u64, seed).map_err(|off| (lba + i as u64, off))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_detects_wrong_lba_seed_and_corruption() {
        let mut d = vec![0u8; 4 * 512];
        fill(&mut d, 512, 100, 7);
        assert_eq!(check(&d, 512, 100, 7), Ok(()));
        assert_eq!(check(&d, 512, 101, 7), Err((101, 0)));
        assert_eq!(check(&d, 512, 100, 8), Err((100, 8)));
        d[3 * 512 + 300] ^= 1;
        assert_eq!(check(&d, 512, 100, 7), Err((103, 300)));
    }
}
