//! Parallel, deterministic gzip, pigz style: the layer is cut into fixed
//! 1 MiB blocks, a process-wide pool of worker threads compresses them (each
//! primed with the 32 KiB before it), and the reading thread writes them back
//! in order as one gzip member.
//!
//! It sits under `layer::encode`, which hashes and spools; this module knows
//! only bytes in and bytes out. The output depends on the input alone: the
//! cut points are every [`BLOCK_SIZE`] raw bytes whatever `read()` returns,
//! each block is compressed on its own with the same settings, so neither the
//! number of threads nor timing can change a byte. Every block but the last
//! ends with a sync flush (byte-aligned, not final), so the blocks
//! concatenate into one deflate stream; the CRC-32 of each block is computed
//! by its worker and combined in order.
//!
//! Levels 0–3 use Intel ISA-L (the `isal` module); levels 4–9 use flate2's
//! default backend (miniz_oxide) per block, without dictionary (that backend
//! cannot set one), slower but still on every core.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;

use super::isal;

/// Raw bytes per block. Pinned: changing it changes every digest.
pub const BLOCK_SIZE: usize = 1 << 20;

/// History handed to each block: deflate's whole window.
const DICT_SIZE: usize = 32 * 1024;

/// Gzip header: no name, mtime 0, XFL 0, OS 255 (unknown).
const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];

/// Which block encoder a level maps to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Codec {
    Isal(u32),
    Miniz(u32),
}

impl Codec {
    fn for_level(level: u32) -> Codec {
        if level <= isal::MAX_LEVEL {
            Codec::Isal(level)
        } else {
            Codec::Miniz(level.min(9))
        }
    }
}

/// One block to compress.
struct Job {
    codec: Codec,
    dict: Vec<u8>,
    data: Vec<u8>,
    /// An empty buffer for the output, recycled like `data`.
    out: Vec<u8>,
    last: bool,
    reply: SyncSender<Done>,
}

/// A compressed block, with its raw buffer handed back for reuse.
struct Done {
    data: Vec<u8>,
    crc: crc32fast::Hasher,
    out: io::Result<Vec<u8>>,
}

/// Compression worker threads shared by every layer being encoded.
pub struct Pool {
    jobs: Option<mpsc::Sender<Job>>,
    workers: Vec<JoinHandle<()>>,
    /// Layers being compressed right now, which share the block budget.
    active: AtomicUsize,
}

/// One layer's share of the pool while it is being compressed.
struct Active<'a>(&'a Pool);

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Pool {
    /// A pool of `threads` workers (at least one).
    pub fn new(threads: usize) -> io::Result<Pool> {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let mut workers = Vec::new();
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            let handle = std::thread::Builder::new()
                .name(format!("gzip-{i}"))
                .spawn(move || worker(&rx))?;
            workers.push(handle);
        }
        Ok(Pool {
            jobs: Some(tx),
            workers,
            active: AtomicUsize::new(0),
        })
    }

    /// The process-wide pool, one worker per available core.
    pub fn global() -> io::Result<&'static Pool> {
        static POOL: OnceLock<Result<Pool, String>> = OnceLock::new();
        POOL.get_or_init(|| {
            let n = std::thread::available_parallelism().map_or(2, |n| n.get());
            Pool::new(n).map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| io::Error::other(format!("cannot start the compression threads: {e}")))
    }

    /// Number of worker threads.
    pub fn threads(&self) -> usize {
        self.workers.len()
    }

    fn enter(&self) -> Active<'_> {
        self.active.fetch_add(1, Ordering::Relaxed);
        Active(self)
    }

    /// How many blocks one layer may have queued or being compressed. One
    /// layer alone gets enough to keep every worker busy with one queued
    /// behind; layers at once share that budget, down to two blocks each,
    /// so memory stays flat however many platforms are published (each
    /// block is about 2 MiB with its output).
    fn in_flight_limit(&self) -> usize {
        let budget = 2 * self.threads() + 2;
        let active = self.active.load(Ordering::Relaxed).max(1);
        (budget / active).clamp(2, budget)
    }

    fn submit(&self, job: Job) -> io::Result<()> {
        self.jobs
            .as_ref()
            .and_then(|tx| tx.send(job).ok())
            .ok_or_else(gone)
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // Closing the queue ends every worker after its current block.
        self.jobs = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

fn gone() -> io::Error {
    io::Error::other("the compression threads have stopped")
}

fn worker(rx: &Mutex<Receiver<Job>>) {
    // Encoders keep their working memory between blocks.
    let mut isal_enc: Option<isal::Deflater> = None;
    let mut isal_level = u32::MAX;
    loop {
        let job = {
            let guard = rx.lock().unwrap_or_else(|e| e.into_inner());
            match guard.recv() {
                Ok(job) => job,
                Err(_) => return,
            }
        };
        let mut crc = crc32fast::Hasher::new();
        crc.update(&job.data);
        let mut out = job.out;
        out.clear();
        let res = match job.codec {
            Codec::Isal(level) => {
                if isal_level != level {
                    isal_enc = None;
                }
                if isal_enc.is_none() {
                    isal_enc = isal::Deflater::new(level).ok();
                    isal_level = level;
                }
                match &mut isal_enc {
                    Some(enc) => enc
                        .compress_block(&job.dict, &job.data, job.last, &mut out)
                        .map_err(io::Error::other),
                    None => Err(io::Error::other(isal::IsalError::Layout)),
                }
            }
            Codec::Miniz(level) => miniz_block(level, &job.data, job.last, &mut out),
        };
        // The layer may have given up meanwhile: nobody to tell then.
        let _ = job.reply.send(Done {
            data: job.data,
            crc,
            out: res.map(|()| out),
        });
    }
}

/// One block as raw deflate with flate2's default backend.
fn miniz_block(level: u32, input: &[u8], last: bool, out: &mut Vec<u8>) -> io::Result<()> {
    let mut c = flate2::Compress::new(flate2::Compression::new(level), false);
    let flush = if last {
        flate2::FlushCompress::Finish
    } else {
        flate2::FlushCompress::Sync
    };
    out.reserve(input.len() + input.len() / 8 + 1024);
    loop {
        let consumed = c.total_in() as usize;
        let status = c
            .compress_vec(&input[consumed..], out, flush)
            .map_err(io::Error::other)?;
        let all_in = c.total_in() as usize == input.len();
        let finished = if last {
            status == flate2::Status::StreamEnd
        } else {
            all_in && out.len() < out.capacity()
        };
        if finished {
            return Ok(());
        }
        out.reserve(64 * 1024);
    }
}

/// Reads `raw` to its end and writes it to `out` as one gzip member at
/// `level`, using `pool`. `on_raw` sees every raw byte once, in order (for
/// the diff_id and progress). Returns the number of raw bytes.
pub fn compress(
    pool: &Pool,
    raw: &mut dyn Read,
    level: u32,
    out: &mut dyn Write,
    on_raw: &mut dyn FnMut(&[u8]),
) -> io::Result<u64> {
    let codec = Codec::for_level(level);
    let _active = pool.enter();
    let mut in_flight: VecDeque<Receiver<Done>> = VecDeque::new();
    let mut spare: Vec<Vec<u8>> = Vec::new();
    let mut spare_out: Vec<Vec<u8>> = Vec::new();
    let mut crc = crc32fast::Hasher::new();
    let mut total = 0u64;
    let mut dict: Vec<u8> = Vec::new();

    out.write_all(&HEADER)?;
    let mut block = fill(raw, Vec::with_capacity(BLOCK_SIZE), on_raw)?;
    loop {
        total += block.len() as u64;
        // A full block is the last only if nothing follows it: read ahead.
        let (last, next) = if block.len() < BLOCK_SIZE {
            (true, None)
        } else {
            let next = fill(raw, spare.pop().unwrap_or_default(), on_raw)?;
            (next.is_empty(), Some(next).filter(|n| !n.is_empty()))
        };
        let tail = block.len().saturating_sub(DICT_SIZE);
        let next_dict = block[tail..].to_vec();
        let (tx, rx) = mpsc::sync_channel(1);
        pool.submit(Job {
            codec,
            dict: std::mem::replace(&mut dict, next_dict),
            data: block,
            out: spare_out.pop().unwrap_or_default(),
            last,
            reply: tx,
        })?;
        in_flight.push_back(rx);
        // Memory bound: this many blocks queued or being compressed (see
        // `Pool::in_flight_limit`), plus the one being read and the one held
        // back to learn if it is last. Write what is ready, and wait when
        // too much is pending.
        let max_in_flight = pool.in_flight_limit();
        while let Some(rx) = in_flight.front() {
            let done = if in_flight.len() >= max_in_flight || last {
                rx.recv().map_err(|_| gone())?
            } else {
                match rx.try_recv() {
                    Ok(done) => done,
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return Err(gone()),
                }
            };
            in_flight.pop_front();
            let compressed = done.out?;
            out.write_all(&compressed)?;
            crc.combine(&done.crc);
            spare.push(done.data);
            spare_out.push(compressed);
        }
        match next {
            Some(next) if !last => block = next,
            _ => break,
        }
    }
    out.write_all(&crc.finalize().to_le_bytes())?;
    // ISIZE is the length modulo 2^32, as gzip defines it.
    out.write_all(&(total as u32).to_le_bytes())?;
    Ok(total)
}

/// Fills `buf` (emptied) up to [`BLOCK_SIZE`] bytes; short only at the end.
fn fill(
    raw: &mut dyn Read,
    mut buf: Vec<u8>,
    on_raw: &mut dyn FnMut(&[u8]),
) -> io::Result<Vec<u8>> {
    super::refill(raw, &mut buf, BLOCK_SIZE, on_raw)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::test_data::xorshift;

    /// Compressible but not trivial: text-like runs with a drifting pattern.
    fn sample(len: usize) -> Vec<u8> {
        let mut next = xorshift(0x2545_f491);
        (0..len)
            .map(|i| {
                let x = next();
                if i % 7 == 0 {
                    (x % 26) as u8 + b'a'
                } else {
                    b"manifold layers "[i % 16]
                }
            })
            .collect()
    }

    /// Hands out the input in irregular pieces.
    struct Chunky<'a> {
        data: &'a [u8],
        sizes: &'a [usize],
        i: usize,
    }

    impl Read for Chunky<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.sizes[self.i % self.sizes.len()]
                .min(buf.len())
                .min(self.data.len());
            self.i += 1;
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    fn gz(pool: &Pool, r: &mut dyn Read, level: u32) -> (Vec<u8>, Vec<u8>) {
        let mut out = Vec::new();
        let mut seen = Vec::new();
        let n = compress(pool, r, level, &mut out, &mut |b| seen.extend_from_slice(b)).unwrap();
        assert_eq!(n, seen.len() as u64);
        (out, seen)
    }

    fn gunzip(blob: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        let mut d = flate2::read::GzDecoder::new(blob);
        d.read_to_end(&mut v).unwrap();
        // One member only: nothing may follow it.
        assert!(d.into_inner().is_empty());
        v
    }

    #[test]
    fn round_trips_at_every_level_and_size() {
        let pool = Pool::new(2).unwrap();
        let data = sample(2 * BLOCK_SIZE + 12_345);
        for level in [0, 1, 2, 3, 6] {
            for len in [0, 1, BLOCK_SIZE - 1, BLOCK_SIZE, BLOCK_SIZE + 1, data.len()] {
                let (blob, seen) = gz(&pool, &mut &data[..len], level);
                assert_eq!(seen, &data[..len]);
                assert_eq!(gunzip(&blob), &data[..len], "level {level} len {len}");
                assert_eq!(&blob[..10], &HEADER);
                let isize = u32::from_le_bytes(blob[blob.len() - 4..].try_into().unwrap());
                assert_eq!(isize as usize, len);
            }
        }
    }

    #[test]
    fn output_does_not_depend_on_threads_or_chunking() {
        let data = sample(5 * BLOCK_SIZE + 777);
        let reference = gz(&Pool::new(1).unwrap(), &mut &data[..], 1).0;
        for threads in [1, 2, 4] {
            let pool = Pool::new(threads).unwrap();
            for sizes in [&[4096][..], &[1, 65_536, 333_333, 7], &[3 * BLOCK_SIZE]] {
                let mut r = Chunky {
                    data: &data,
                    sizes,
                    i: 0,
                };
                assert_eq!(gz(&pool, &mut r, 1).0, reference, "{threads} {sizes:?}");
            }
        }
    }

    #[test]
    fn the_dictionary_carries_across_blocks() {
        // A random block, then a second one repeating the first one's last
        // 30 000 bytes: cheap only if the second block sees that history.
        let mut next = xorshift(0x2545_f491);
        let mut data: Vec<u8> = (0..BLOCK_SIZE).map(|_| next() as u8).collect();
        data.extend_from_within(BLOCK_SIZE - 30_000..);
        let pool = Pool::new(2).unwrap();
        let (one, _) = gz(&pool, &mut &data[..BLOCK_SIZE], 1);
        let (two, _) = gz(&pool, &mut &data[..], 1);
        assert_eq!(gunzip(&two), data);
        assert!(
            two.len() < one.len() + 2_000,
            "{} then {}",
            one.len(),
            two.len()
        );
    }

    #[test]
    fn layers_at_once_share_the_block_budget() {
        let pool = Pool::new(2).unwrap();
        assert_eq!(pool.in_flight_limit(), 6, "one layer: the full share");
        let guards: Vec<_> = (0..2).map(|_| pool.enter()).collect();
        assert_eq!(pool.in_flight_limit(), 3, "two layers: half each");
        let more: Vec<_> = (0..2).map(|_| pool.enter()).collect();
        assert_eq!(
            pool.in_flight_limit(),
            2,
            "four layers: the floor, eight blocks in all"
        );
        drop((guards, more));
        assert_eq!(pool.in_flight_limit(), 6);

        // Eight layers at once on two workers: all finish, each as it would alone.
        let data = sample(5 * BLOCK_SIZE + 123);
        let (alone, _) = gz(&pool, &mut &data[..], 2);
        let outputs: Vec<Vec<u8>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| scope.spawn(|| gz(&pool, &mut &data[..], 2).0))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(outputs.iter().all(|o| *o == alone));
        assert_eq!(pool.active.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn compresses_compressible_data() {
        let data = sample(3 * BLOCK_SIZE);
        let (blob, _) = gz(&Pool::new(2).unwrap(), &mut &data[..], 1);
        assert!(
            blob.len() * 3 < data.len(),
            "{} of {}",
            blob.len(),
            data.len()
        );
    }

    #[test]
    fn gzip_tool_accepts_the_output() {
        let Ok(status) = std::process::Command::new("gzip").arg("--version").output() else {
            return; // no gzip binary: flate2 checks above stand
        };
        assert!(status.status.success());
        let data = sample(2 * BLOCK_SIZE + 5);
        let (blob, _) = gz(&Pool::new(2).unwrap(), &mut &data[..], 1);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("layer.gz");
        std::fs::write(&path, &blob).unwrap();
        let out = std::process::Command::new("gzip")
            .arg("-dc")
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.stdout, data);
    }

    #[test]
    fn a_reader_error_is_returned() {
        struct Fails(usize);
        impl Read for Fails {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0 == 0 {
                    return Err(io::Error::other("boom"));
                }
                let n = buf.len().min(self.0).min(300_000);
                buf[..n].fill(7);
                self.0 -= n;
                Ok(n)
            }
        }
        let pool = Pool::new(2).unwrap();
        let mut out = Vec::new();
        let err = compress(&pool, &mut Fails(3 * BLOCK_SIZE), 1, &mut out, &mut |_| {});
        assert_eq!(err.unwrap_err().to_string(), "boom");
    }
}
