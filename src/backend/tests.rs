//! Tests of the back-end surface against the memory and fs services, plus a
//! real S3 server when `OVFS_TEST_S3_ENDPOINT` is set.

use super::*;
use std::collections::BTreeMap;

fn settings() -> BackendSettings {
    BackendSettings {
        retry_max_times: 1,
        retry_min_delay: Duration::from_millis(10),
        retry_max_delay: Duration::from_millis(50),
        ..BackendSettings::default()
    }
}

fn storage(service: &str, opts: &[(&str, &str)]) -> StorageSettings {
    StorageSettings {
        service: service.to_string(),
        options: opts.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
    }
}

fn memory() -> Backend {
    Backend::build(&storage("memory", &[]), &settings()).expect("memory backend")
}

fn fs(dir: &tempfile::TempDir) -> Backend {
    let root = dir.path().join("root");
    let root = root.to_str().expect("utf-8 temp path");
    Backend::build(&storage("fs", &[("root", root)]), &settings()).expect("fs backend")
}

fn kind<T: fmt::Debug>(r: Result<T>) -> ErrorKind {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => {
            let s = e.to_string();
            assert!(!s.contains('\n'), "one line: {s}");
            e.kind
        }
    }
}

fn names(entries: &[Entry]) -> Vec<(String, EntryKind)> {
    entries.iter().map(|e| (e.name.clone(), e.meta.kind)).collect()
}

#[test]
fn build_errors() {
    let e = Backend::build(&storage("nosuch", &[]), &settings()).expect_err("unknown scheme");
    assert_eq!(e.kind, ErrorKind::InvalidInput);
    assert!(e.message().contains("`nosuch`"), "{e}");

    let opts = [("bucket", "b"), ("region", "us-east-1"), ("bukket", "x"), ("secret_access_key", "adminsecret")];
    let e = Backend::build(&storage("s3", &opts), &settings()).expect_err("unknown key");
    assert_eq!(e.message(), "unknown key `bukket` for s3");

    let e = Backend::build(&storage("s3", &[("region", "r")]), &settings()).expect_err("bucket");
    assert_eq!(e.message(), "s3 requires `bucket`");
    let e = Backend::build(&storage("fs", &[]), &settings()).expect_err("root");
    assert_eq!(e.message(), "fs requires `root`");

    // A value that fails to parse is reported, with secret values scrubbed.
    let opts = [
        ("bucket", "b"),
        ("region", "r"),
        ("secret_access_key", "adminsecret"),
        ("enable_virtual_host_style", "adminsecret"),
    ];
    let e = Backend::build(&storage("s3", &opts), &settings()).expect_err("bad bool");
    assert_eq!(e.kind, ErrorKind::InvalidInput);
    assert!(!e.to_string().contains("adminsecret"), "{e}");
    assert!(!format!("{e:?}").contains("adminsecret"), "{e:?}");

    // Aliases and valid keys are accepted; s3 builds without network.
    let opts = [
        ("aws_bucket", "b"),
        ("region", "us-east-1"),
        ("endpoint", "http://127.0.0.1:1"),
        ("access_key_id", "admin"),
        ("secret_access_key", "adminsecret"),
    ];
    let b = Backend::build(&storage("s3", &opts), &settings()).expect("s3 builds");
    assert_eq!(b.scheme(), "s3");
    let c = b.caps();
    assert!(c.user_metadata && c.copy && !c.native_rename && !c.native_dirs && c.write_multi);
    assert!(!c.listing_has_posix, "S3 listings carry no user metadata");
    assert!(!format!("{b:?}").contains("adminsecret"));
}

#[test]
fn caps_of_memory_and_fs() {
    let m = memory().caps();
    // OpenDAL's memory service has no user metadata, but the back-end keeps
    // POSIX attributes for it in an in-process side table, so it reports
    // them as persisted, and listings carry them.
    assert!(m.user_metadata && !m.copy && !m.native_rename && !m.native_dirs);
    assert!(m.read && m.write && m.list && m.delete && m.write_if_not_exists);
    assert!(m.listing_has_posix, "listings read the side table");
    let dir = tempfile::tempdir().expect("tempdir");
    let f = fs(&dir).caps();
    assert!(f.native_dirs && f.native_rename && f.copy && f.user_metadata);
    assert!(f.listing_has_posix);
}

#[test]
fn error_kind_mapping() {
    use opendal::ErrorKind as K;
    let cases = [
        (K::NotFound, ErrorKind::NotFound),
        (K::PermissionDenied, ErrorKind::PermissionDenied),
        (K::AlreadyExists, ErrorKind::AlreadyExists),
        (K::IsADirectory, ErrorKind::IsDirectory),
        (K::NotADirectory, ErrorKind::NotDirectory),
        (K::Unsupported, ErrorKind::Unsupported),
        (K::ConditionNotMatch, ErrorKind::ConditionNotMatch),
        (K::RateLimited, ErrorKind::RateLimited),
        (K::ConfigInvalid, ErrorKind::InvalidInput),
        (K::IsSameFile, ErrorKind::InvalidInput),
        (K::RangeNotSatisfied, ErrorKind::InvalidInput),
        (K::Conflict, ErrorKind::Unexpected),
        (K::Unexpected, ErrorKind::Unexpected),
    ];
    for (od, want) in cases {
        assert_eq!(map_kind(&opendal::Error::new(od, "x")), want, "{od:?}");
    }
    let t = opendal::Error::new(K::Unexpected, "operation timeout reached");
    assert_eq!(map_kind(&t), ErrorKind::Timeout);
    let io = std::io::Error::from(std::io::ErrorKind::DirectoryNotEmpty);
    let e = opendal::Error::new(K::Unexpected, "x").set_source(io);
    assert_eq!(map_kind(&e), ErrorKind::NotEmpty);
    let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
    let e = opendal::Error::new(K::Unexpected, "x").set_source(io);
    assert_eq!(map_kind(&e), ErrorKind::Unexpected);
}

#[test]
fn posix_meta_encoding() {
    let p = PosixMeta {
        mode: Some(0o100644),
        uid: Some(1000),
        gid: Some(100),
        mtime: Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
    };
    let pairs: BTreeMap<String, String> = p.to_pairs().into_iter().collect();
    assert_eq!(pairs.get("mode").map(String::as_str), Some("33188"));
    assert_eq!(pairs.get("mtime").map(String::as_str), Some("1700000000"));
    assert_eq!(parse_mtime("1700000000.5"), Some(UNIX_EPOCH + Duration::new(1_700_000_000, 500_000_000)));
    assert_eq!(parse_mtime("x"), None);
    assert_eq!(parse_mtime("-1"), None);
}

/// The behaviour every service must share.
async fn suite(b: &Backend) {
    let p = PosixMeta::default();
    // Invalid paths.
    for bad in ["/a", "a/", "a//b", "..", "a/./b", "a\0b"] {
        assert_eq!(kind(b.lookup(bad).await), ErrorKind::InvalidInput, "{bad:?}");
    }
    assert_eq!(kind(b.write("", Bytes::new(), &p).await), ErrorKind::InvalidInput);

    // Root, files, dirs, implied dirs, missing.
    assert_eq!(b.lookup("").await.expect("root").kind, EntryKind::Dir);
    b.write("f", Bytes::from_static(b"hello"), &p).await.expect("write f");
    b.create_dir("d").await.expect("mkdir d");
    b.write("i/x", Bytes::from_static(b"123"), &p).await.expect("write i/x");
    b.write("i/y/z", Bytes::from_static(b"1"), &p).await.expect("write i/y/z");
    b.write("e", Bytes::new(), &p).await.expect("empty file");
    let f = b.lookup("f").await.expect("lookup f");
    assert_eq!((f.kind, f.size), (EntryKind::File, 5));
    assert_eq!(b.lookup("d").await.expect("lookup d").kind, EntryKind::Dir);
    assert_eq!(b.lookup("i").await.expect("lookup i").kind, EntryKind::Dir);
    assert_eq!(b.lookup("i/y").await.expect("i/y").kind, EntryKind::Dir);
    assert_eq!(b.lookup("e").await.expect("lookup e").size, 0);
    assert_eq!(kind(b.lookup("missing").await), ErrorKind::NotFound);
    assert_eq!(kind(b.lookup("i/missing").await), ErrorKind::NotFound);

    // Listing: sorted, sizes, marker excluded, non-recursive.
    let root = b.list("").await.expect("list root");
    assert_eq!(
        names(&root),
        vec![
            ("d".to_string(), EntryKind::Dir),
            ("e".to_string(), EntryKind::File),
            ("f".to_string(), EntryKind::File),
            ("i".to_string(), EntryKind::Dir),
        ]
    );
    let fsize = root.iter().find(|e| e.name == "f").map(|e| e.meta.size);
    assert_eq!(fsize, Some(5));
    assert!(b.list("d").await.expect("list d").is_empty());
    let i = b.list("i").await.expect("list i");
    assert_eq!(names(&i), vec![("x".to_string(), EntryKind::File), ("y".to_string(), EntryKind::Dir)]);
    assert_eq!(i[0].meta.size, 3);

    // Reads, including past EOF.
    let rd = |off, len| b.read("f", off, len);
    assert_eq!(rd(0, 5).await.expect("r"), Bytes::from_static(b"hello"));
    assert_eq!(rd(1, 2).await.expect("r"), Bytes::from_static(b"el"));
    assert_eq!(rd(3, 10).await.expect("r"), Bytes::from_static(b"lo"));
    assert!(rd(5, 1).await.expect("at EOF").is_empty());
    assert!(rd(100, 10).await.expect("past EOF").is_empty());
    assert!(rd(0, 0).await.expect("zero").is_empty());
    assert!(rd(u64::MAX - 1, 10).await.expect("huge offset").is_empty());
    assert!(b.read("e", 0, 10).await.expect("empty").is_empty());
    assert_eq!(kind(b.read("missing", 0, 1).await), ErrorKind::NotFound);

    // Streaming writer round trip and abort.
    let mut w = b.writer("w", &p).await.expect("writer");
    for part in [&b"ab"[..], b"", b"cd", b"e"] {
        w.write(Bytes::copy_from_slice(part)).await.expect("w.write");
    }
    w.close().await.expect("close");
    assert_eq!(b.read("w", 0, 100).await.expect("read w"), Bytes::from_static(b"abcde"));
    let w = b.writer("aborted", &p).await.expect("writer");
    w.abort().await.expect("abort");
    assert_eq!(kind(b.lookup("aborted").await), ErrorKind::NotFound);

    // rmdir.
    assert_eq!(kind(b.remove_dir("i").await), ErrorKind::NotEmpty);
    assert_eq!(kind(b.remove_dir("f").await), ErrorKind::NotDirectory);
    assert_eq!(kind(b.remove_dir("nodir").await), ErrorKind::NotFound);
    b.remove_dir("d").await.expect("rmdir d");
    assert_eq!(kind(b.lookup("d").await), ErrorKind::NotFound);

    // unlink.
    assert_eq!(kind(b.delete_file("nope").await), ErrorKind::NotFound);
    b.delete_file("i/y/z").await.expect("rm i/y/z");
    b.delete_file("i/x").await.expect("rm i/x");
    if b.caps().native_dirs || b.lookup("i/y").await.is_ok() {
        // Real directories stay until removed (so do emptied "implied"
        // directories on SeaweedFS, which keeps them as folders).
        b.remove_dir("i/y").await.expect("rmdir i/y");
        b.remove_dir("i").await.expect("rmdir i");
    } else {
        // Implied directories vanish with their last key.
        assert_eq!(kind(b.remove_dir("i").await), ErrorKind::NotFound);
    }
    assert_eq!(kind(b.lookup("i").await), ErrorKind::NotFound);

    // rename, with and without noreplace.
    b.rename_file("f", "g", false).await.expect("rename f g");
    assert_eq!(kind(b.lookup("f").await), ErrorKind::NotFound);
    assert_eq!(b.lookup("g").await.expect("g").size, 5);
    b.write("h", Bytes::from_static(b"old"), &p).await.expect("write h");
    assert_eq!(kind(b.rename_file("g", "h", true).await), ErrorKind::AlreadyExists);
    assert_eq!(b.lookup("g").await.expect("g still there").size, 5);
    b.rename_file("g", "h", false).await.expect("replace h");
    assert_eq!(b.read("h", 0, 10).await.expect("h"), Bytes::from_static(b"hello"));
    b.rename_file("h", "sub/h2", true).await.expect("rename into subdir");
    assert_eq!(b.lookup("sub/h2").await.expect("h2").size, 5);
    b.rename_file("sub/h2", "sub/h2", false).await.expect("rename onto itself");
    assert_eq!(kind(b.rename_file("sub/h2", "sub/h2", true).await), ErrorKind::AlreadyExists);
    assert_eq!(kind(b.rename_file("missing", "x", false).await), ErrorKind::NotFound);
    b.delete_file("sub/h2").await.expect("rm h2");
    b.delete_file("h").await.err();
    assert_eq!(kind(b.delete_file("h").await), ErrorKind::NotFound);

    b.check().await.expect("check");
}

#[tokio::test]
async fn memory_suite() {
    suite(&memory()).await;
}

#[tokio::test]
async fn fs_suite() {
    let dir = tempfile::tempdir().expect("tempdir");
    suite(&fs(&dir)).await;
}

#[tokio::test]
async fn memory_dir_wins_and_dedup() {
    let b = memory();
    let p = PosixMeta::default();
    b.write("a", Bytes::from_static(b"file"), &p).await.expect("write a");
    b.create_dir("a").await.expect("mkdir a");
    b.write("b", Bytes::from_static(b"file"), &p).await.expect("write b");
    b.write("b/c", Bytes::from_static(b"x"), &p).await.expect("write b/c");
    assert_eq!(b.lookup("a").await.expect("a").kind, EntryKind::Dir);
    assert_eq!(b.lookup("b").await.expect("b").kind, EntryKind::Dir);
    let l = b.list("").await.expect("list");
    assert_eq!(names(&l), vec![("a".to_string(), EntryKind::Dir), ("b".to_string(), EntryKind::Dir)]);
    assert!(b.list("a").await.expect("list a").is_empty());
    // The file `a` and the directory `a` keep separate attributes (the
    // side table is keyed like the objects: `a` and `a/`).
    let fp = PosixMeta { mode: Some(0o100600), ..Default::default() };
    let dp = PosixMeta { mode: Some(0o040711), ..Default::default() };
    b.write("a", Bytes::from_static(b"file"), &fp).await.expect("rewrite a");
    b.set_posix("a", &dp).await.expect("set_posix dir a");
    assert_eq!(b.lookup("a").await.expect("a").posix, dp, "the dir wins");
    b.remove_dir("a").await.expect("rmdir a");
    let a = b.lookup("a").await.expect("file a again");
    assert_eq!((a.kind, a.posix), (EntryKind::File, fp));
}

#[tokio::test]
async fn fs_posix_metadata() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = fs(&dir);
    let posix = PosixMeta {
        mode: Some(0o100640),
        uid: Some(1000),
        gid: Some(1001),
        mtime: Some(UNIX_EPOCH + Duration::from_secs(1_600_000_000)),
    };
    b.write("p", Bytes::from_static(b"data"), &posix).await.expect("write p");
    let m = b.lookup("p").await.expect("lookup p");
    assert_eq!(m.posix, posix);
    let newer = PosixMeta { mode: Some(0o100600), ..Default::default() };
    b.set_posix("p", &newer).await.expect("set_posix");
    let m = b.lookup("p").await.expect("lookup p");
    assert_eq!(m.posix.mode, Some(0o100600));
    assert_eq!(m.posix.uid, Some(1000), "unset fields are kept");
    assert_eq!(b.read("p", 0, 10).await.expect("read"), Bytes::from_static(b"data"));
    let names: Vec<String> = b.list("").await.expect("list").into_iter().map(|e| e.name).collect();
    assert_eq!(names, vec!["p".to_string()], "no temporary file left");
    b.create_dir("dd").await.expect("mkdir");
    b.set_posix("dd", &newer).await.expect("set_posix on a directory");
    let m = b.lookup("dd").await.expect("lookup dd");
    assert_eq!(m.posix.mode, Some(0o100600));
    // Writing a file onto a directory is refused with a precise kind.
    let r = b.write("dd", Bytes::from_static(b"x"), &PosixMeta::default()).await;
    assert_ne!(kind(r), ErrorKind::NotFound);
}

/// Real S3 server, only when `OVFS_TEST_S3_ENDPOINT` is set.
#[tokio::test]
async fn s3_real_server() {
    let Ok(endpoint) = std::env::var("OVFS_TEST_S3_ENDPOINT") else {
        eprintln!("OVFS_TEST_S3_ENDPOINT not set; skipping");
        return;
    };
    let var = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_string());
    let bucket = var("OVFS_TEST_S3_BUCKET", "test");
    let ak = var("OVFS_TEST_S3_ACCESS_KEY_ID", "");
    let sk = var("OVFS_TEST_S3_SECRET_ACCESS_KEY", "");
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let root = format!("/ovfs-test-{nanos}/");
    let opts = [
        ("bucket", bucket.as_str()),
        ("region", "us-east-1"),
        ("endpoint", endpoint.as_str()),
        ("access_key_id", ak.as_str()),
        ("secret_access_key", sk.as_str()),
        ("root", root.as_str()),
    ];
    let opts_vec: Vec<(String, String)> = opts.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let b = Backend::build(&storage("s3", &opts), &settings()).expect("s3 backend");
    b.check().await.expect("reachable");

    suite(&b).await;

    // User metadata round trip and set_posix (small object).
    let posix = PosixMeta {
        mode: Some(0o100644),
        uid: Some(1000),
        gid: Some(1000),
        mtime: Some(UNIX_EPOCH + Duration::from_secs(1_650_000_000)),
    };
    b.write("meta", Bytes::from_static(b"payload"), &posix).await.expect("write meta");
    assert_eq!(b.lookup("meta").await.expect("meta").posix, posix);
    let chmod = PosixMeta { mode: Some(0o100600), ..Default::default() };
    b.set_posix("meta", &chmod).await.expect("set_posix small");
    let m = b.lookup("meta").await.expect("meta");
    assert_eq!(m.posix.mode, Some(0o100600));
    assert_eq!(m.posix.uid, Some(1000));
    assert_eq!(m.size, 7);
    assert_eq!(b.read("meta", 0, 100).await.expect("read meta"), Bytes::from_static(b"payload"));
    // Metadata survives a rename (server-side copy).
    b.rename_file("meta", "meta2", true).await.expect("rename");
    assert_eq!(b.lookup("meta2").await.expect("meta2").posix.mode, Some(0o100600));

    // Markers and implied directories.
    b.create_dir("mk").await.expect("mkdir");
    b.write("imp/deep/x", Bytes::from_static(b"x"), &PosixMeta::default()).await.expect("write");
    assert_eq!(b.lookup("mk").await.expect("mk").kind, EntryKind::Dir);
    assert_eq!(b.lookup("imp").await.expect("imp").kind, EntryKind::Dir);
    assert_eq!(b.lookup("imp/deep").await.expect("deep").kind, EntryKind::Dir);
    let l = b.list("").await.expect("list");
    let l: Vec<_> = names(&l).into_iter().filter(|(n, _)| ["imp", "meta2", "mk"].contains(&n.as_str())).collect();
    assert_eq!(
        l,
        vec![
            ("imp".to_string(), EntryKind::Dir),
            ("meta2".to_string(), EntryKind::File),
            ("mk".to_string(), EntryKind::Dir),
        ]
    );
    assert!(b.list("mk").await.expect("list mk").is_empty());
    assert_eq!(kind(b.remove_dir("imp").await), ErrorKind::NotEmpty);
    b.remove_dir("mk").await.expect("rmdir mk");
    assert_eq!(kind(b.lookup("mk").await), ErrorKind::NotFound);

    // Directory wins over a same-name file, where the server can hold both
    // keys (AWS, MinIO can; SeaweedFS replaces one with the other).
    let both = b.write("dw", Bytes::from_static(b"f"), &PosixMeta::default()).await.is_ok()
        && b.write("dw/x", Bytes::from_static(b"x"), &PosixMeta::default()).await.is_ok()
        && b.op().stat("dw").await.is_ok();
    if both {
        assert_eq!(b.lookup("dw").await.expect("dw").kind, EntryKind::Dir);
        let n = b.list("").await.expect("list");
        assert_eq!(n.iter().filter(|e| e.name == "dw").count(), 1);
    } else {
        eprintln!("server cannot hold both `dw` and `dw/x`; dir-wins not exercised");
    }

    // Multipart streaming upload (> 16 MiB), visible only at close.
    const MIB: usize = 1024 * 1024;
    let total = 17 * MIB + 123;
    let data: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
    let mut w = b.writer("big", &posix).await.expect("writer");
    for chunk in data.chunks(MIB) {
        w.write(Bytes::copy_from_slice(chunk)).await.expect("write chunk");
    }
    assert_eq!(kind(b.lookup("big").await), ErrorKind::NotFound, "invisible before close");
    w.close().await.expect("complete");
    let m = b.lookup("big").await.expect("big");
    assert_eq!(m.size, total as u64);
    assert_eq!(m.posix.uid, Some(1000));
    let tail = b.read("big", (total - 200) as u64, 1000).await.expect("tail");
    assert_eq!(&tail[..], &data[total - 200..]);
    // Server-side metadata rewrite of the big object.
    b.set_posix("big", &chmod).await.expect("set_posix big");
    let m = b.lookup("big").await.expect("big");
    assert_eq!((m.size, m.posix.mode), (total as u64, Some(0o100600)));
    let mid = b.read("big", (9 * MIB) as u64, 64).await.expect("mid");
    assert_eq!(&mid[..], &data[9 * MIB..9 * MIB + 64]);

    // Clean up the test prefix (bottom-up, so that servers which keep
    // emptied folders, like SeaweedFS, are left clean too).
    purge(&b, "").await;
    let opts = opendal::options::DeleteOptions { recursive: true, ..Default::default() };
    let _ = b.op().delete_options("/", opts).await;
    assert!(b.list("").await.expect("list").is_empty(), "prefix purged");
    let top = opts_root_free(&opts_vec);
    let b0 = Backend::build(&top, &settings()).expect("bucket-root backend");
    let _ = b0.remove_dir(root.trim_matches('/')).await;
}

fn opts_root_free(opts: &[(String, String)]) -> StorageSettings {
    StorageSettings { service: "s3".to_string(), options: opts.iter().filter(|(k, _)| k != "root").cloned().collect() }
}

fn purge<'a>(b: &'a Backend, dir: &'a str) -> std::pin::Pin<Box<dyn Future<Output = ()> + 'a>> {
    Box::pin(async move {
        for e in b.list(dir).await.unwrap_or_default() {
            let p = if dir.is_empty() { e.name.clone() } else { format!("{dir}/{}", e.name) };
            match e.meta.kind {
                EntryKind::File => {
                    let _ = b.delete_file(&p).await;
                }
                EntryKind::Dir => {
                    purge(b, &p).await;
                    let _ = b.remove_dir(&p).await;
                    // A same-name file shadowed by the directory.
                    let _ = b.op().delete(&p).await;
                }
            }
        }
    })
}

// ---------------------------------------------------------------------------
// Fault injection (`inject_*` settings).

fn fs_with(dir: &tempfile::TempDir, settings: &BackendSettings) -> Backend {
    let root = dir.path().join("root");
    let root = root.to_str().expect("utf-8 temp path");
    Backend::build(&storage("fs", &[("root", root)]), settings).expect("fs backend")
}

fn memory_with(settings: &BackendSettings) -> Backend {
    Backend::build(&storage("memory", &[]), settings).expect("memory backend")
}

/// Time one call.
async fn timed<T>(f: impl Future<Output = T>) -> (T, Duration) {
    let t = std::time::Instant::now();
    let r = f.await;
    (r, t.elapsed())
}

#[tokio::test]
async fn latency_applies_only_to_matching_paths() {
    let lat = Duration::from_millis(200);
    let fast = Duration::from_millis(100);
    let s = BackendSettings { inject_latency: lat, inject_latency_paths: "slow".to_string(), ..settings() };
    let b = memory_with(&s);
    let p = PosixMeta::default();
    let (r, t) = timed(b.write("slow/a", Bytes::from_static(b"x"), &p)).await;
    r.expect("write slow/a");
    assert!(t >= lat, "write slow/a took {t:?}");
    let (r, t) = timed(b.write("fast", Bytes::from_static(b"x"), &p)).await;
    r.expect("write fast");
    assert!(t < fast, "write fast took {t:?}");
    let (r, t) = timed(b.lookup("slow/a")).await;
    r.expect("lookup slow/a");
    assert!(t >= lat, "lookup slow/a took {t:?}");
    let (r, t) = timed(b.lookup("slow")).await;
    r.expect("lookup slow");
    assert!(t >= lat, "prefix match on the bare name: {t:?}");
    let (r, t) = timed(b.lookup("fast")).await;
    r.expect("lookup fast");
    assert!(t < fast, "lookup fast took {t:?}");
    // Errors are delayed too (the delay is before the real call).
    let (r, t) = timed(b.lookup("slow/missing")).await;
    assert_eq!(kind(r), ErrorKind::NotFound);
    assert!(t >= lat, "{t:?}");
    let (r, t) = timed(b.list("slow")).await;
    assert_eq!(r.expect("list slow").len(), 1);
    assert!(t >= lat, "list slow took {t:?}");
    let (r, t) = timed(b.list("")).await;
    r.expect("list root");
    assert!(t < fast, "the root does not match `slow`: {t:?}");
    let (r, t) = timed(b.read("slow/a", 0, 1)).await;
    r.expect("read slow/a");
    assert!(t >= lat, "read slow/a took {t:?}");
    // A rename is delayed when either side matches.
    let (r, t) = timed(b.rename_file("fast", "slow/b", false)).await;
    r.expect("rename into slow");
    assert!(t >= lat, "rename took {t:?}");
    let (r, t) = timed(b.create_dir("other")).await;
    r.expect("mkdir other");
    assert!(t < fast, "mkdir other took {t:?}");

    // A stalled call does not hold up a concurrent one.
    let slow = tokio::spawn({
        let b = b.clone();
        async move { timed(b.read("slow/a", 0, 1)).await }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (r, t) = timed(b.lookup("other")).await;
    r.expect("lookup other");
    assert!(t < fast, "concurrent lookup took {t:?}");
    assert!(!slow.is_finished(), "the slow read is still stalled");
    let (r, t) = slow.await.expect("join");
    r.expect("slow read");
    assert!(t >= lat, "{t:?}");

    // Empty prefix: every call is delayed; a leading `/` is ignored.
    let all = BackendSettings { inject_latency: Duration::from_millis(100), ..settings() };
    let b = memory_with(&all);
    let (r, t) = timed(b.create_dir("x")).await;
    r.expect("mkdir");
    assert!(t >= Duration::from_millis(100), "{t:?}");
    let lead = BackendSettings {
        inject_latency: Duration::from_millis(100),
        inject_latency_paths: "/x".to_string(),
        ..settings()
    };
    let b = memory_with(&lead);
    let (r, t) = timed(b.create_dir("x")).await;
    r.expect("mkdir");
    assert!(t >= Duration::from_millis(100), "{t:?}");
    let (r, t) = timed(b.create_dir("y")).await;
    r.expect("mkdir");
    assert!(t < fast, "{t:?}");
}

#[tokio::test]
async fn latency_counts_against_the_timeout() {
    let s =
        BackendSettings { inject_latency: Duration::from_secs(10), timeout: Duration::from_millis(100), ..settings() };
    let b = memory_with(&s);
    assert_eq!(kind(b.lookup("a").await), ErrorKind::Timeout);
}

#[tokio::test]
async fn final_error_rate_one_fails_every_call() {
    let s = BackendSettings { inject_error_rate_final: 1.0, ..settings() };
    for b in [memory_with(&s)] {
        let p = PosixMeta::default();
        let check = |r: Result<()>, what: &str| match r {
            Ok(()) => panic!("{what}: expected an injected fault"),
            Err(e) => {
                assert_eq!(e.kind, ErrorKind::Unexpected, "{what}: {e}");
                assert!(e.message().contains("injected fault"), "{what}: {e}");
            }
        };
        check(b.write("f", Bytes::from_static(b"x"), &p).await, "write");
        check(b.lookup("f").await.map(|_| ()), "lookup");
        check(b.list("").await.map(|_| ()), "list");
        check(b.read("f", 0, 1).await.map(|_| ()), "read");
        check(b.create_dir("d").await, "create_dir");
        check(b.delete_file("f").await, "delete_file");
        check(b.remove_dir("d").await, "remove_dir");
        check(b.rename_file("f", "g", false).await, "rename");
        check(b.check().await, "check");
        let (retried, fin) = b.injected_faults();
        assert_eq!(retried, 0);
        assert!(fin >= 9, "{fin}");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let b = fs_with(&dir, &s);
    assert_eq!(kind(b.lookup("x").await), ErrorKind::Unexpected);
    assert_eq!(kind(b.set_posix("x", &PosixMeta::default()).await), ErrorKind::Unexpected);
    // Off by default: nothing is injected.
    assert_eq!(memory().injected_faults(), (0, 0));
}

#[tokio::test]
async fn retried_faults_sit_below_the_retry_layer() {
    // Every attempt fails: the error surfaces after 1 + retry_max_times
    // attempts, all of them injected below the retry layer.
    let s = BackendSettings {
        inject_error_rate: 1.0,
        retry_max_times: 2,
        retry_min_delay: Duration::from_millis(1),
        retry_max_delay: Duration::from_millis(2),
        ..settings()
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let b = fs_with(&dir, &s);
    assert_eq!(kind(b.lookup("x").await), ErrorKind::Unexpected);
    assert_eq!(b.injected_faults(), (3, 0), "one stat, three attempts");
}

#[tokio::test]
async fn retries_absorb_a_high_error_rate() {
    // Half of all OpenDAL calls fail. A retried attempt of a streamed read
    // is more than one call (the retry layer re-opens the stream, then reads
    // a chunk), so it fails with a chance of at least 1 - 0.5^2 = 0.75: with
    // 20 retries a read failed 21 times in a row about once in 400
    // (0.75^21), and the suite's reads made this test fail in about 5% of
    // runs (2 of 40; 0 of 40 with 200 retries). With 150 retries even three
    // calls per attempt fail 151 times in a row with a chance of 2e-9.
    let s = BackendSettings {
        inject_error_rate: 0.5,
        retry_max_times: 150,
        retry_min_delay: Duration::from_millis(1),
        retry_max_delay: Duration::from_millis(2),
        ..settings()
    };
    let b = memory_with(&s);
    suite(&b).await;
    let (retried, fin) = b.injected_faults();
    assert!(retried > 20, "faults were injected and retried: {retried}");
    assert_eq!(fin, 0);

    let dir = tempfile::tempdir().expect("tempdir");
    let b = fs_with(&dir, &s);
    suite(&b).await;
    assert!(b.injected_faults().0 > 20);
}

// ---------------------------------------------------------------------------
// POSIX metadata on fs: listings, directories, in-place updates.

/// A temporary directory on a file system with user xattrs (tmpfs under
/// /dev/shm if the default temp dir lacks them).
fn xattr_tempdir() -> tempfile::TempDir {
    let supports = |d: &tempfile::TempDir| xattr::set(d.path(), "user.ovfs-probe", b"1").is_ok();
    let dir = tempfile::tempdir().expect("tempdir");
    if supports(&dir) {
        return dir;
    }
    let dir = tempfile::tempdir_in("/dev/shm").expect("tempdir in /dev/shm");
    assert!(supports(&dir), "no file system with user xattrs found");
    dir
}

fn inode(dir: &tempfile::TempDir, path: &str) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(dir.path().join("root").join(path)).expect("local metadata").ino()
}

#[tokio::test]
async fn fs_listing_and_dirs_carry_posix() {
    let dir = xattr_tempdir();
    let b = fs(&dir);
    let fp = PosixMeta {
        mode: Some(0o100640),
        uid: Some(1000),
        gid: Some(1001),
        mtime: Some(UNIX_EPOCH + Duration::from_secs(1_600_000_000)),
    };
    let dp = PosixMeta {
        mode: Some(0o040750),
        uid: Some(2000),
        gid: Some(2001),
        mtime: Some(UNIX_EPOCH + Duration::from_secs(1_650_000_000)),
    };
    b.write("d/f", Bytes::from_static(b"data"), &fp).await.expect("write d/f");
    b.write("plain", Bytes::from_static(b"p"), &PosixMeta::default()).await.expect("write plain");
    b.create_dir_with("sub", &dp).await.expect("mkdir sub");
    b.create_dir("bare").await.expect("mkdir bare");

    // lookup of a directory returns its xattrs.
    assert_eq!(b.lookup("sub").await.expect("sub").posix, dp);
    assert_eq!(b.lookup("bare").await.expect("bare").posix, PosixMeta::default());

    // list fills posix exactly as lookup does, files and directories.
    for d in ["", "d"] {
        let entries = b.list(d).await.expect("list");
        assert!(!entries.is_empty());
        for e in &entries {
            let path = if d.is_empty() { e.name.clone() } else { format!("{d}/{}", e.name) };
            let looked = b.lookup(&path).await.expect("lookup");
            assert_eq!(e.meta.posix, looked.posix, "{path}");
            assert_eq!(e.meta.kind, looked.kind, "{path}");
        }
    }
    let root = b.list("").await.expect("list root");
    let sub = root.iter().find(|e| e.name == "sub").expect("sub listed");
    assert_eq!(sub.meta.posix, dp);
    let d = b.list("d").await.expect("list d");
    assert_eq!(d[0].meta.posix, fp);

    // set_posix on a file: in place (same inode), content untouched, unset
    // fields kept.
    let ino = inode(&dir, "d/f");
    let chmod = PosixMeta { mode: Some(0o100600), ..Default::default() };
    b.set_posix("d/f", &chmod).await.expect("set_posix file");
    assert_eq!(inode(&dir, "d/f"), ino, "no rewrite of the file");
    let m = b.lookup("d/f").await.expect("lookup d/f");
    assert_eq!(m.posix.mode, Some(0o100600));
    assert_eq!(m.posix.uid, Some(1000));
    assert_eq!(m.size, 4);
    assert_eq!(b.read("d/f", 0, 10).await.expect("read"), Bytes::from_static(b"data"));
    let d = b.list("d").await.expect("list d");
    assert_eq!(d[0].meta.posix, m.posix, "listing sees the update");

    // set_posix on a directory, including one made without attributes.
    let chown = PosixMeta { uid: Some(7), gid: Some(8), ..Default::default() };
    b.set_posix("bare", &chown).await.expect("set_posix dir");
    let m = b.lookup("bare").await.expect("bare");
    assert_eq!((m.posix.uid, m.posix.gid, m.posix.mode), (Some(7), Some(8), None));
    let root = b.list("").await.expect("list root");
    let bare = root.iter().find(|e| e.name == "bare").expect("bare listed");
    assert_eq!(bare.meta.posix, m.posix);

    // Missing targets and the root.
    assert_eq!(kind(b.set_posix("nope", &chown).await), ErrorKind::NotFound);
    assert_eq!(kind(b.set_posix("", &chown).await), ErrorKind::InvalidInput);
    assert_eq!(kind(b.create_dir_with("", &dp).await), ErrorKind::InvalidInput);
    // No temporary files anywhere.
    let names: Vec<String> = b.list("").await.expect("list").into_iter().map(|e| e.name).collect();
    assert_eq!(names, vec!["bare", "d", "plain", "sub"]);
}

// ---------------------------------------------------------------------------
// POSIX metadata on memory: kept in the in-process side table.

fn fposix(mode: u32, uid: u32) -> PosixMeta {
    PosixMeta {
        mode: Some(0o100000 | mode),
        uid: Some(uid),
        gid: Some(uid + 1),
        mtime: Some(UNIX_EPOCH + Duration::from_secs(1_600_000_000 + u64::from(uid))),
    }
}

/// `posix` of the entry `name` in `list(dir)`.
async fn listed_posix(b: &Backend, dir: &str, name: &str) -> PosixMeta {
    let l = b.list(dir).await.expect("list");
    let e = l.iter().find(|e| e.name == name).expect("listed");
    e.meta.posix.clone()
}

#[tokio::test]
async fn memory_create_dir_with_stores_posix() {
    // Was `memory_create_dir_with_stores_nothing`: memory now keeps
    // directory attributes in the side table, like fs keeps them in xattrs.
    let b = memory();
    let dp = PosixMeta { mode: Some(0o040700), uid: Some(5), ..Default::default() };
    b.create_dir_with("d", &dp).await.expect("mkdir");
    let m = b.lookup("d").await.expect("lookup d");
    assert_eq!((m.kind, &m.posix), (EntryKind::Dir, &dp));
    assert_eq!(listed_posix(&b, "", "d").await, dp);
    // A directory made without attributes has none.
    b.create_dir("bare").await.expect("mkdir bare");
    assert_eq!(b.lookup("bare").await.expect("bare").posix, PosixMeta::default());
    // rmdir drops them: a re-created directory starts clean.
    b.remove_dir("d").await.expect("rmdir");
    assert_eq!(kind(b.lookup("d").await), ErrorKind::NotFound);
    b.create_dir("d").await.expect("mkdir again");
    assert_eq!(b.lookup("d").await.expect("d").posix, PosixMeta::default(), "no stale attributes");
    // Files below a directory do not touch its attributes.
    b.create_dir_with("e", &dp).await.expect("mkdir e");
    b.write("e/f", Bytes::from_static(b"x"), &fposix(0o644, 1)).await.expect("write e/f");
    b.delete_file("e/f").await.expect("rm e/f");
    assert_eq!(b.lookup("e").await.expect("e").posix, dp);
}

#[tokio::test]
async fn memory_write_posix_round_trip() {
    let b = memory();
    let p = fposix(0o640, 1000);
    b.write("f", Bytes::from_static(b"data"), &p).await.expect("write");
    let m = b.lookup("f").await.expect("lookup");
    assert_eq!((m.size, &m.posix), (4, &p));
    assert_eq!(listed_posix(&b, "", "f").await, p);
    // A rewrite replaces the attributes (like an S3 PUT) ...
    let q = fposix(0o600, 7);
    b.write("f", Bytes::from_static(b"new"), &q).await.expect("rewrite");
    assert_eq!(b.lookup("f").await.expect("f").posix, q);
    // ... and a rewrite without any leaves none (the vfs passes the open
    // file's attributes, read by lookup at open, so they survive).
    b.write("f", Bytes::from_static(b"x"), &PosixMeta::default()).await.expect("rewrite bare");
    assert_eq!(b.lookup("f").await.expect("f").posix, PosixMeta::default());

    // Kept in the user-metadata encoding, as on fs and S3: whole seconds.
    let frac = PosixMeta { mtime: Some(UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789)), ..Default::default() };
    b.write("t", Bytes::from_static(b"t"), &frac).await.expect("write t");
    assert_eq!(b.lookup("t").await.expect("t").posix.mtime, Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000)));

    // The streaming writer stores them at close, not before.
    let w_p = fposix(0o755, 3);
    let mut w = b.writer("w", &w_p).await.expect("writer");
    w.write(Bytes::from_static(b"abc")).await.expect("w.write");
    assert_eq!(kind(b.lookup("w").await), ErrorKind::NotFound);
    w.close().await.expect("close");
    let m = b.lookup("w").await.expect("w");
    assert_eq!((m.size, &m.posix), (3, &w_p));
    // An aborted writer stores nothing and keeps the old attributes.
    let w = b.writer("w", &fposix(0o600, 9)).await.expect("writer");
    w.abort().await.expect("abort");
    assert_eq!(b.lookup("w").await.expect("w").posix, w_p);
}

#[tokio::test]
async fn memory_set_posix_files_and_dirs() {
    let b = memory();
    let p = fposix(0o644, 1000);
    b.write("d/f", Bytes::from_static(b"data"), &p).await.expect("write");
    // File: set fields replace, unset fields are kept; content untouched.
    let chmod = PosixMeta { mode: Some(0o100600), ..Default::default() };
    b.set_posix("d/f", &chmod).await.expect("set_posix file");
    let m = b.lookup("d/f").await.expect("lookup");
    assert_eq!(m.posix, PosixMeta { mode: Some(0o100600), ..p.clone() });
    assert_eq!(b.read("d/f", 0, 10).await.expect("read"), Bytes::from_static(b"data"));
    assert_eq!(listed_posix(&b, "d", "f").await, m.posix);
    // A whole PosixMeta (what the vfs passes) replaces every field.
    let all = fposix(0o400, 42);
    b.set_posix("d/f", &all).await.expect("set_posix all");
    assert_eq!(b.lookup("d/f").await.expect("lookup").posix, all);

    // Directory made by mkdir.
    b.create_dir("dir").await.expect("mkdir");
    let dp = PosixMeta { mode: Some(0o040750), uid: Some(7), gid: Some(8), mtime: None };
    b.set_posix("dir", &dp).await.expect("set_posix dir");
    assert_eq!(b.lookup("dir").await.expect("dir").posix, dp);
    assert_eq!(listed_posix(&b, "", "dir").await, dp);

    // Implied directory (`d` exists only through `d/f`): it gets a marker,
    // so it and its attributes outlive its last file.
    b.set_posix("d", &dp).await.expect("set_posix implied dir");
    assert_eq!(b.lookup("d").await.expect("d").posix, dp);
    b.delete_file("d/f").await.expect("rm d/f");
    let m = b.lookup("d").await.expect("d stays");
    assert_eq!((m.kind, m.posix), (EntryKind::Dir, dp.clone()));
    b.remove_dir("d").await.expect("rmdir d");

    // Missing targets and the root.
    assert_eq!(kind(b.set_posix("nope", &dp).await), ErrorKind::NotFound);
    assert_eq!(kind(b.set_posix("x/nope", &dp).await), ErrorKind::NotFound);
    assert_eq!(kind(b.set_posix("", &dp).await), ErrorKind::InvalidInput);
    assert_eq!(kind(b.lookup("nope").await), ErrorKind::NotFound);
    assert_eq!(b.lookup("").await.expect("root").posix, PosixMeta::default());
}

#[tokio::test]
async fn memory_rename_moves_and_delete_drops_posix() {
    let b = memory();
    let p = fposix(0o640, 1000);
    let q = fposix(0o600, 2000);
    b.write("a", Bytes::from_static(b"aaa"), &p).await.expect("write a");
    b.write("b", Bytes::from_static(b"bb"), &q).await.expect("write b");
    // Rename moves the attributes; the source keeps none.
    b.rename_file("a", "sub/a2", false).await.expect("rename");
    assert_eq!(b.lookup("sub/a2").await.expect("a2").posix, p);
    assert_eq!(listed_posix(&b, "sub", "a2").await, p);
    assert_eq!(kind(b.lookup("a").await), ErrorKind::NotFound);
    // Replacing a target: it takes the source's attributes.
    b.rename_file("sub/a2", "b", false).await.expect("replace b");
    let m = b.lookup("b").await.expect("b");
    assert_eq!((m.size, &m.posix), (3, &p));
    // A refused noreplace rename changes nothing.
    b.write("c", Bytes::from_static(b"c"), &q).await.expect("write c");
    assert_eq!(kind(b.rename_file("c", "b", true).await), ErrorKind::AlreadyExists);
    assert_eq!(b.lookup("b").await.expect("b").posix, p);
    assert_eq!(b.lookup("c").await.expect("c").posix, q);
    // A file without attributes renamed onto one with: the target has none.
    b.write("plain", Bytes::from_static(b"p"), &PosixMeta::default()).await.expect("write plain");
    b.rename_file("plain", "c", false).await.expect("rename plain");
    assert_eq!(b.lookup("c").await.expect("c").posix, PosixMeta::default());
    // Rename onto itself keeps them.
    b.rename_file("b", "b", false).await.expect("self rename");
    assert_eq!(b.lookup("b").await.expect("b").posix, p);

    // Delete drops them: a re-created file has no stale attributes.
    b.delete_file("b").await.expect("rm b");
    b.write("b", Bytes::from_static(b"new"), &PosixMeta::default()).await.expect("re-create b");
    assert_eq!(b.lookup("b").await.expect("b").posix, PosixMeta::default());
    assert_eq!(listed_posix(&b, "", "b").await, PosixMeta::default());
    // Failed calls leave the table alone.
    assert_eq!(kind(b.delete_file("nope").await), ErrorKind::NotFound);
    assert_eq!(kind(b.rename_file("nope", "b", false).await), ErrorKind::NotFound);
    assert_eq!(b.lookup("b").await.expect("b").posix, PosixMeta::default());
    let left = b.inner.side.as_ref().expect("side table").map().len();
    assert_eq!(left, 0, "no attributes of deleted objects remain");
}

#[tokio::test]
async fn memory_list_posix_matches_lookup() {
    let b = memory();
    let dp = PosixMeta { mode: Some(0o040755), uid: Some(1), ..Default::default() };
    b.create_dir_with("d", &dp).await.expect("mkdir d");
    b.write("d/x", Bytes::from_static(b"x"), &fposix(0o644, 2)).await.expect("x");
    b.write("d/y/z", Bytes::from_static(b"z"), &fposix(0o600, 3)).await.expect("z");
    b.write("d/plain", Bytes::from_static(b"p"), &PosixMeta::default()).await.expect("plain");
    for dir in ["", "d", "d/y"] {
        for e in b.list(dir).await.expect("list") {
            let path = if dir.is_empty() { e.name.clone() } else { format!("{dir}/{}", e.name) };
            let m = b.lookup(&path).await.expect("lookup");
            assert_eq!((e.meta.kind, &e.meta.posix), (m.kind, &m.posix), "{path}");
        }
    }
    assert_eq!(listed_posix(&b, "d/y", "z").await, fposix(0o600, 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_concurrent_writes_keep_data_and_posix_together() {
    // Many tasks rewrite the same file, each with its own content and
    // attributes; whichever wins, lookup's size and posix belong together.
    let b = memory();
    let mut tasks = Vec::new();
    for i in 0..32u32 {
        let b = b.clone();
        tasks.push(tokio::spawn(async move {
            let data = Bytes::from(vec![b'x'; i as usize + 1]);
            b.write("f", data, &fposix(0o600, i)).await.expect("write");
            let m = b.lookup("f").await.expect("lookup");
            assert_eq!(m.posix.uid, Some(m.size as u32 - 1), "size and posix agree");
        }));
    }
    for t in tasks {
        t.await.expect("join");
    }
    let m = b.lookup("f").await.expect("lookup");
    assert_eq!(m.posix.uid, Some(m.size as u32 - 1));
}

#[tokio::test]
async fn reconfigure_swaps_policy_and_operator_live() {
    // memory: the data stays (its operator is kept); the timeout and the
    // injected latency change at once.
    let b = memory();
    b.write("keep", Bytes::from_static(b"data"), &PosixMeta::default()).await.expect("write");
    let slow =
        BackendSettings { inject_latency: Duration::from_secs(3), timeout: Duration::from_secs(1), ..settings() };
    b.reconfigure(&StorageSettings::default(), &slow).expect("reconfigure");
    assert_eq!(kind(b.lookup("keep").await), ErrorKind::Timeout, "new timeout and latency in force");
    b.reconfigure(&StorageSettings::default(), &settings()).expect("reconfigure back");
    assert_eq!(b.read("keep", 0, 4).await.expect("read").as_ref(), b"data", "memory data kept");

    // fs: another root or service is refused and changes nothing.
    let dir = tempfile::tempdir().unwrap();
    let f = fs(&dir);
    let other = tempfile::tempdir().unwrap();
    let e = f.reconfigure(&storage("fs", &[("root", other.path().to_str().unwrap())]), &settings()).unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidInput, "{e}");
    let e = f.reconfigure(&StorageSettings::default(), &settings()).unwrap_err();
    assert!(e.message().contains("storage type"), "{e}");
    f.write("x", Bytes::from_static(b"1"), &PosixMeta::default()).await.expect("still the old root");
    assert!(dir.path().join("root/x").exists());

    // s3: credentials and endpoint change (no I/O needed to swap; the swap
    // against a real server is tests/guest_reload.rs).
    let s3 = |ak: &str, ep: &str| {
        storage(
            "s3",
            &[("bucket", "b"), ("region", "r"), ("endpoint", ep), ("access_key_id", ak), ("secret_access_key", "s")],
        )
    };
    let b = Backend::build(&s3("a1", "http://127.0.0.1:1"), &settings()).expect("s3");
    b.check_reconfigure(&s3("a2", "http://127.0.0.1:2"), &settings()).expect("check");
    b.reconfigure(&s3("a2", "http://127.0.0.1:2"), &settings()).expect("swap");
    let e = b.reconfigure(&storage("s3", &[("bucket", "other"), ("region", "r")]), &settings());
    assert!(e.is_ok(), "the back-end itself does not judge the bucket (reload.rs refuses it by key)");
}
