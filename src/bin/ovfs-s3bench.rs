//! `ovfs-s3bench`: the "OpenDAL directly" ceiling of the S3 benchmarks in
//! `bench/s3.sh`. It drives the same [`ovfs::backend::Backend`] the daemon
//! uses (so the same OpenDAL operator, layers and part size), without FUSE,
//! the VFS or the cache in between, and prints one line `SECONDS [COUNT]`.
//!
//! usage: ovfs-s3bench --config FILE COMMAND ARGS
//!   read PATH                 one ranged GET of the whole object
//!   write PATH BYTES          streaming (multipart) upload, visible at close
//!   mkdir DIR                 create a directory marker (set-up)
//!   list DIR                  one listing of DIR (ListObjectsV2 pages)
//!   put-many DIR COUNT BYTES  COUNT sequential PUTs of BYTES each
//!   populate DIR COUNT BYTES  COUNT PUTs, 32 at a time (set-up, not timed)
//!
//! It names no OpenDAL type: only src/backend does.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use bytes::Bytes;
use futures::StreamExt;
use ovfs::backend::{Backend, PosixMeta};
use ovfs::config::Config;

const CHUNK: usize = 8 << 20;

fn usage() -> ExitCode {
    eprintln!(
        "usage: ovfs-s3bench --config FILE (read PATH | write PATH BYTES | mkdir DIR | list DIR | \
         put-many DIR COUNT BYTES | populate DIR COUNT BYTES)"
    );
    ExitCode::from(64)
}

/// Deterministic, incompressible-looking filler (xorshift).
fn filler(len: usize, seed: u64) -> Bytes {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    Bytes::from(v)
}

fn num(s: Option<&String>) -> Option<u64> {
    s.and_then(|s| s.parse().ok())
}

async fn run(be: Backend, cmd: &str, args: &[String]) -> Result<String, String> {
    let e = |e: ovfs::backend::Error| e.message().to_string();
    let t0 = Instant::now();
    match (cmd, args) {
        ("read", [path]) => {
            let meta = be.lookup(path).await.map_err(e)?;
            let t0 = Instant::now();
            let data = be.read(path, 0, meta.size.max(1)).await.map_err(e)?;
            if data.len() as u64 != meta.size {
                return Err(format!("short read: {} of {}", data.len(), meta.size));
            }
            Ok(format!("{:.6} {}", t0.elapsed().as_secs_f64(), data.len()))
        }
        ("write", [path, bytes]) => {
            let total: u64 = bytes.parse().map_err(|_| "BYTES".to_string())?;
            let buf = filler(CHUNK, 7);
            let mut w = be.writer(path, &PosixMeta::default()).await.map_err(e)?;
            let mut done = 0u64;
            while done < total {
                let n = (total - done).min(CHUNK as u64) as usize;
                w.write(buf.slice(..n)).await.map_err(e)?;
                done += n as u64;
            }
            w.close().await.map_err(e)?;
            Ok(format!("{:.6} {total}", t0.elapsed().as_secs_f64()))
        }
        ("mkdir", [dir]) => {
            be.create_dir(dir).await.map_err(e)?;
            Ok(format!("{:.6}", t0.elapsed().as_secs_f64()))
        }
        ("list", [dir]) => {
            let n = be.list(dir).await.map_err(e)?.len();
            Ok(format!("{:.6} {n}", t0.elapsed().as_secs_f64()))
        }
        ("put-many", [dir, count, bytes]) => {
            let (Some(count), Some(size)) = (num(Some(count)), num(Some(bytes))) else {
                return Err("COUNT BYTES".into());
            };
            let data = filler(size as usize, 11);
            for i in 0..count {
                be.write(&format!("{dir}/p{i:05}"), data.clone(), &PosixMeta::default()).await.map_err(e)?;
            }
            Ok(format!("{:.6} {count}", t0.elapsed().as_secs_f64()))
        }
        ("populate", [dir, count, bytes]) => {
            let (Some(count), Some(size)) = (num(Some(count)), num(Some(bytes))) else {
                return Err("COUNT BYTES".into());
            };
            let data = filler(size as usize, 13);
            let results: Vec<_> = futures::stream::iter(0..count)
                .map(|i| {
                    let (be, data) = (be.clone(), data.clone());
                    let path = format!("{dir}/f{i:05}");
                    async move { be.write(&path, data, &PosixMeta::default()).await }
                })
                .buffer_unordered(32)
                .collect()
                .await;
            for r in results {
                r.map_err(e)?;
            }
            Ok(format!("{:.6} {count}", t0.elapsed().as_secs_f64()))
        }
        _ => Err("bad command or arguments".into()),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 || args[0] != "--config" {
        return usage();
    }
    let cfg = match Config::from_file(&PathBuf::from(&args[1])) {
        Ok(c) => c,
        Err(err) => {
            eprintln!("ovfs-s3bench: {}", err.message());
            return ExitCode::from(2);
        }
    };
    let be = match Backend::from_config(&cfg) {
        Ok(b) => b,
        Err(err) => {
            eprintln!("ovfs-s3bench: {}", err.message());
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("ovfs-s3bench: tokio: {err}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(be, &args[2], &args[3..])) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(msg) => {
            eprintln!("ovfs-s3bench {}: {msg}", args[2]);
            ExitCode::from(1)
        }
    }
}
