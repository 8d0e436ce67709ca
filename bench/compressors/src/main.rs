//! Measures wall time and ratio of layer compression on a real file, hashing
//! both sides as `layer::encode` does: the old single-threaded flate2 path,
//! then `layer::gzip` with 1 and 2 workers, one layer and two at once.

use std::io::{self, Read, Write};
use std::time::Instant;

use sha2::{Digest, Sha256};

#[allow(dead_code)]
mod layer;

use layer::gzip;

/// The spool's side: hash what comes out, keep nothing.
struct HashSink(Sha256, u64);

impl Write for HashSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        self.1 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn old_flate2(path: &str, level: u32) -> io::Result<(u64, u64)> {
    let mut f = std::fs::File::open(path)?;
    let mut raw = Sha256::new();
    let mut enc = flate2::GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(HashSink(Sha256::new(), 0), flate2::Compression::new(level));
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf)?;
        if k == 0 {
            break;
        }
        raw.update(&buf[..k]);
        enc.write_all(&buf[..k])?;
        n += k as u64;
    }
    let sink = enc.finish()?;
    Ok((n, sink.1))
}

fn new_gzip(pool: &gzip::Pool, path: &str, level: u32) -> io::Result<(u64, u64)> {
    let mut f = std::fs::File::open(path)?;
    let mut raw = Sha256::new();
    let mut sink = HashSink(Sha256::new(), 0);
    let n = gzip::compress(pool, &mut f, level, &mut sink, &mut |b| raw.update(b))?;
    Ok((n, sink.1))
}

/// CPU seconds (user + system) this process has used so far.
fn cpu() -> f64 {
    // SAFETY: getrusage only writes the struct we hand it.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// CPU seconds of each live thread of this process, by name.
fn thread_cpu() -> Vec<(String, f64)> {
    let mut v = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return v;
    };
    for e in dir.flatten() {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // "tid (comm) state ... utime stime": fields 14 and 15.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = stat[open + 1..close].to_string();
        let f: Vec<&str> = stat[close + 2..].split(' ').collect();
        let ticks = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
        v.push((name, (ticks(11) + ticks(12)) / 100.0));
    }
    v
}

/// CPU seconds of the calling thread.
fn own_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
    let f: Vec<&str> = stat
        .rfind(')')
        .map_or(vec![], |c| stat[c + 2..].split(' ').collect());
    let ticks = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn report(name: &str, layers: u64, t: (Instant, f64), sizes: (u64, u64)) {
    let s = t.0.elapsed().as_secs_f64();
    let c = cpu() - t.1;
    let (raw, out) = sizes;
    println!(
        "{name:<34} {layers}x {:>6.1} MB {s:>5.2} s = {:>6.1} MB/s wall, {c:>5.2} cpu-s = {:>6.1} MB/cpu-s, ratio {:.4}",
        (raw * layers) as f64 / 1e6,
        (raw * layers) as f64 / 1e6 / s,
        (raw * layers) as f64 / 1e6 / c,
        out as f64 / raw as f64
    );
}

fn main() -> io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let path = args.get(1).map(String::as_str).unwrap_or("layer.tar");
    let what = args.get(2).map(String::as_str).unwrap_or("all");
    if what == "all" || what == "old" {
        let t = (Instant::now(), cpu());
        let r = old_flate2(path, 1)?;
        report("old flate2 (miniz) level 1, 1 thread", 1, t, r);
    }
    if what == "write" {
        // Writes the gzip blob next to the input, for checking it with other
        // decoders (gzip -t, skopeo, Go).
        let pool = gzip::Pool::new(2)?;
        let mut f = std::fs::File::open(path)?;
        let mut out = io::BufWriter::new(std::fs::File::create(format!("{path}.gz"))?);
        gzip::compress(&pool, &mut f, 2, &mut out, &mut |_| {})?;
        out.flush()?;
        return Ok(());
    }
    if what == "whole" {
        // ISA-L over the whole file in one call: what cutting into blocks costs.
        let data = std::fs::read(path)?;
        for level in [1u32, 2, 3] {
            let t = (Instant::now(), cpu());
            let mut out = Vec::new();
            layer::isal::Deflater::new(level)
                .map_err(io::Error::other)?
                .compress_block(&[], &data, true, &mut out)
                .map_err(io::Error::other)?;
            report(
                &format!("isa-l level {level}, whole buffer"),
                1,
                t,
                (data.len() as u64, out.len() as u64),
            );
        }
        return Ok(());
    }
    let levels: Vec<u32> = match what {
        "all" => vec![1, 2, 3],
        "old" => vec![],
        l => vec![l.parse().map_err(io::Error::other)?],
    };
    for level in levels {
        for threads in [1usize, 2] {
            let pool = gzip::Pool::new(threads)?;
            let t = (Instant::now(), cpu());
            let r = new_gzip(&pool, path, level)?;
            report(&format!("isa-l level {level}, pool {threads}"), 1, t, r);
            if threads == 2 {
                // Two arches at once, sharing the pool.
                let t = (Instant::now(), cpu());
                let before = thread_cpu();
                let (a, b) = std::thread::scope(|s| {
                    let run = || {
                        let r = new_gzip(&pool, path, level);
                        (r, own_cpu())
                    };
                    let a = s.spawn(run);
                    let b = s.spawn(run);
                    (a.join(), b.join())
                });
                let (a, ca) = a.map_err(|_| io::Error::other("panic"))?;
                let (b, cb) = b.map_err(|_| io::Error::other("panic"))?;
                // Per-thread CPU during the run: with idle cores the wall
                // time is bounded by the busiest thread.
                println!("    reader threads: {ca:.2} and {cb:.2} cpu-s");
                for (name, c) in thread_cpu() {
                    let was = before.iter().find(|(n, _)| *n == name).map_or(0.0, |x| x.1);
                    if name.starts_with("gzip") {
                        println!("    worker {name}: {:.2} cpu-s", c - was);
                    }
                }
                let a = a?;
                b?;
                report(
                    &format!("isa-l level {level}, pool {threads}, 2 inputs"),
                    2,
                    t,
                    a,
                );
            }
        }
    }
    Ok(())
}
