//! What one durable write costs on the disk under the store: a 4 KiB `pwrite`
//! followed by `fdatasync`, timed many times in a file beside the store, before
//! the load. A group commit cannot be cheaper than one of these; the report puts
//! serve's commit time beside it, so the ratio reads straight off.

use std::fs::File;
use std::os::unix::fs::FileExt as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;

/// Bytes written per probe: one page, the least a commit writes.
const BLOCK: usize = 4096;
/// Distinct blocks the probes cycle through, in a file written and synced first,
/// so that no probe extends the file (which would sync metadata too).
const BLOCKS: u64 = 256;
/// Probes not counted, first: the file's blocks reach the disk's steady state.
const WARM_UP: usize = 20;

/// Percentiles of the probes.
#[derive(Debug, Clone, Copy)]
pub struct SyncCost {
    pub probes: usize,
    pub p50: Duration,
    pub p99: Duration,
}

/// Times `probes` 4 KiB `pwrite` + `fdatasync` pairs in a scratch file in `dir`
/// (removed after).
pub fn fdatasync_cost(dir: &Path, probes: usize) -> anyhow::Result<SyncCost> {
    let path = dir.join(".creditgate-load-fdatasync-probe");
    let result = probe(&path, probes.max(1));
    let _ = std::fs::remove_file(&path);
    result.with_context(|| format!("timing fdatasync in {}", dir.display()))
}

fn probe(path: &Path, probes: usize) -> std::io::Result<SyncCost> {
    let file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    let mut block = vec![0u8; BLOCK];
    for i in 0..BLOCKS {
        file.write_all_at(&block, i * BLOCK as u64)?;
    }
    file.sync_all()?;
    let mut times = Vec::with_capacity(probes);
    for i in 0..WARM_UP + probes {
        // Different bytes each time: nothing below can skip a write it already has.
        block[..8].copy_from_slice(&(i as u64).to_le_bytes());
        let start = Instant::now();
        file.write_all_at(&block, (i as u64 % BLOCKS) * BLOCK as u64)?;
        // `File::sync_data` is `fdatasync` on Linux.
        file.sync_data()?;
        if i >= WARM_UP {
            times.push(start.elapsed());
        }
    }
    times.sort();
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    Ok(SyncCost {
        probes,
        p50: at(0.5),
        p99: at(0.99),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_measures_and_cleans_up() {
        let dir = tempfile::tempdir().expect("temp dir");
        let cost = fdatasync_cost(dir.path(), 5).expect("probes");
        assert_eq!(cost.probes, 5);
        assert!(cost.p50 > Duration::ZERO && cost.p50 <= cost.p99);
        assert_eq!(std::fs::read_dir(dir.path()).expect("lists").count(), 0);
    }
}
