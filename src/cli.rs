//! Command line: the contract with whoever starts the daemon (a person, a
//! VMM's launcher, Kata's runtimes). Flags accept `--k=v` and `--k v`; when a
//! flag is repeated, the last one wins.
//!
//! `ovfs [--config FILE | --shared-dir DIR] (--socket-path S | --fd N)` serves
//! virtio-fs over vhost-user; `ovfs mount [--config FILE] MOUNTPOINT` mounts
//! the same server on the host through `/dev/fuse`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};

use crate::backend::Backend;
use crate::config::{Config, StorageSettings};
use crate::fuse::{Server, ServerOptions};
use crate::transport::fusedev::{self, FuseMount, MountOptions};
use crate::transport::vhost_user::{self, Listen, VhostUserOptions};
use crate::transport::RequestHandler;
use crate::vfs::passthrough::{PassthroughFs, PassthroughOptions};
use crate::vfs::{ObjectFs, ObjectFsOptions};

/// Exit status for bad configuration or usage.
pub const EXIT_CONFIG: i32 = 2;

#[derive(Parser, Debug)]
#[command(
    name = "ovfs",
    version,
    about = "virtio-fs over vhost-user, backed by Apache OpenDAL",
    args_override_self = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub common: Common,

    /// vhost-user socket to create and listen on (overrides [socket_settings]).
    #[arg(long, value_name = "PATH")]
    pub socket_path: Option<PathBuf>,

    /// An inherited, already listening vhost-user socket.
    #[arg(long, value_name = "N")]
    pub fd: Option<i32>,

    /// Device tag, for VMMs that take the config space from the back-end.
    #[arg(long)]
    pub tag: Option<String>,

    /// Number of request queues offered (besides the high-priority queue).
    #[arg(long, value_name = "N")]
    pub num_request_queues: Option<usize>,

    /// Keep serving the next VMM connection after one disconnects
    /// (by default the daemon exits, like virtiofsd).
    #[arg(long)]
    pub keep_serving: bool,

    /// Accepted for virtiofsd compatibility; ovfs sizes its own task pool.
    #[arg(long, value_name = "N")]
    pub thread_pool_size: Option<usize>,
}

#[derive(Args, Debug, Clone)]
pub struct Common {
    /// TOML configuration file.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Serve this host directory (OpenDAL fs back-end) instead of [storage_settings].
    #[arg(long, global = true, value_name = "DIR")]
    pub shared_dir: Option<PathBuf>,

    /// Log level: error, warn, info, debug, trace.
    #[arg(long, global = true, value_name = "LEVEL")]
    pub log_level: Option<String>,

    /// Debug logging (same as --log-level debug).
    #[arg(short = 'd', long = "debug", global = true)]
    pub debug: bool,

    // --- passthrough (vfs::passthrough) ---
    /// Serve --shared-dir as a host passthrough tree (full POSIX: owners,
    /// modes, symlinks, special files) instead of through the OpenDAL fs back-end.
    #[arg(long, global = true)]
    pub passthrough: bool,

    /// With --passthrough: serve extended attributes (else ENOSYS).
    #[arg(long, global = true)]
    pub xattr: bool,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Mount the file system on the host through /dev/fuse (foreground;
    /// SIGINT/SIGTERM unmount).
    Mount {
        /// Where to mount.
        mountpoint: PathBuf,
    },
}

fn init_logging(c: &Common) {
    let level = if c.debug { Some("debug".to_string()) } else { c.log_level.clone() };
    // OpenDAL logs every retry at WARN (with a backtrace when RUST_BACKTRACE
    // is set); ovfs logs the errors that matter itself, so OpenDAL is held to
    // ERROR unless a verbose level is asked for. A level stricter than WARN
    // applies to every crate.
    let spec = match level.as_deref() {
        Some(l @ ("error" | "off")) => l.to_string(),
        Some(l @ ("debug" | "trace")) => format!("ovfs={l},opendal=warn,warn"),
        Some(l) => format!("ovfs={l},opendal=error,warn"),
        None => std::env::var("RUST_LOG").unwrap_or_else(|_| "ovfs=info,opendal=error,warn".to_string()),
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&spec)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("ovfs=info,opendal=error,warn"));
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

/// Load the configuration named on the command line (or the embedded
/// default), with `--shared-dir` replacing the storage section.
pub fn load_config(c: &Common) -> Result<Config, String> {
    let mut cfg = match &c.config {
        Some(p) => Config::from_file(p).map_err(|e| e.to_string())?,
        None => Config::default_memory(),
    };
    if let Some(dir) = &c.shared_dir {
        let root = dir.to_str().ok_or_else(|| format!("--shared-dir {}: not UTF-8", dir.display()))?;
        if !dir.is_dir() {
            return Err(format!("--shared-dir {}: not a directory", dir.display()));
        }
        let mut options = std::collections::BTreeMap::new();
        options.insert("root".to_string(), root.to_string());
        cfg.storage_settings = StorageSettings { service: "fs".into(), options };
    }
    Ok(cfg)
}

/// The file system and FUSE server for a configuration.
pub fn build_server(cfg: &Config) -> Result<(Arc<Server<ObjectFs>>, Backend), String> {
    let backend = Backend::build(&cfg.storage_settings, &cfg.backend_settings).map_err(|e| e.to_string())?;
    let b = &cfg.backend_settings;
    let c = &cfg.cache_settings;
    let opts = ObjectFsOptions {
        attr_timeout: c.attr_timeout,
        entry_timeout: c.entry_timeout,
        file_mode: b.default_file_mode,
        dir_mode: b.default_dir_mode,
        uid: b.default_uid,
        gid: b.default_gid,
        part_size: b.part_size,
        rename_dir_limit: b.rename_dir_limit,
        ..Default::default()
    };
    let fs = ObjectFs::new(backend.clone(), opts);
    Ok((Arc::new(Server::new(fs, ServerOptions::default())), backend))
}

// --- passthrough (vfs::passthrough) ---
/// `--shared-dir DIR --passthrough`: DIR served by [`PassthroughFs`].
pub fn build_passthrough(c: &Common, cfg: &Config) -> Result<Arc<dyn RequestHandler>, String> {
    let dir = c.shared_dir.as_ref().ok_or("--passthrough needs --shared-dir DIR")?;
    let opts = PassthroughOptions {
        attr_timeout: cfg.cache_settings.attr_timeout,
        entry_timeout: cfg.cache_settings.entry_timeout,
        xattr: c.xattr,
        ..Default::default()
    };
    let fs = PassthroughFs::new(dir, opts).map_err(|e| format!("--shared-dir {}: {e}", dir.display()))?;
    Ok(Arc::new(Server::new(fs, ServerOptions::default())))
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("ovfs-worker").build()
}

/// Entry point; returns the process exit status.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { EXIT_CONFIG } else { 0 };
        }
    };
    init_logging(&cli.common);
    let cfg = match load_config(&cli.common) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ovfs: {e}");
            return EXIT_CONFIG;
        }
    };
    let rt = match runtime() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ovfs: cannot start the async runtime: {e}");
            return 1;
        }
    };
    match &cli.command {
        Some(Command::Mount { mountpoint }) => run_mount(&cfg, &cli.common, mountpoint, &rt),
        None => run_vhost_user(&cli, &cfg, &rt),
    }
}

fn run_mount(cfg: &Config, common: &Common, mountpoint: &Path, rt: &tokio::runtime::Runtime) -> i32 {
    let handler: Arc<dyn RequestHandler> = if common.passthrough {
        match build_passthrough(common, cfg) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("ovfs: {e}");
                return EXIT_CONFIG;
            }
        }
    } else {
        let (server, backend) = match build_server(cfg) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("ovfs: {e}");
                return EXIT_CONFIG;
            }
        };
        // Fail fast on an unusable back-end before mounting.
        if let Err(e) = rt.block_on(backend.check()) {
            eprintln!("ovfs: back-end check failed: {e}");
            return EXIT_CONFIG;
        }
        server
    };
    let mount = match FuseMount::mount(mountpoint, MountOptions::default()) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("ovfs: mount {}: {e}", mountpoint.display());
            return 1;
        }
    };
    tracing::info!(mountpoint = %mountpoint.display(), "mounted");
    let mp = mountpoint.to_path_buf();
    rt.spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        tokio::select! {
            _ = int.recv() => {},
            _ = term.recv() => {},
        }
        tracing::info!("signal received; unmounting");
        if let Err(e) = fusedev::unmount(&mp) {
            tracing::error!(error = %e, "unmount failed");
        }
    });
    match mount.serve(handler, rt.handle().clone()) {
        Ok(()) => {
            tracing::info!("unmounted");
            0
        }
        Err(e) => {
            eprintln!("ovfs: /dev/fuse: {e}");
            let _ = fusedev::unmount(mountpoint);
            1
        }
    }
}

fn run_vhost_user(cli: &Cli, cfg: &Config, rt: &tokio::runtime::Runtime) -> i32 {
    let listen = match (cli.fd, cli.socket_path.clone().or_else(|| cfg.socket_settings.socket_path.clone())) {
        (Some(fd), _) => Listen::Fd(fd),
        (None, Some(p)) => Listen::SocketPath(p),
        (None, None) => {
            eprintln!("ovfs: no vhost-user socket: give --socket-path, --fd or [socket_settings] socket_path (or use `ovfs mount`)");
            return EXIT_CONFIG;
        }
    };
    let handler: Arc<dyn RequestHandler> = if cli.common.passthrough {
        match build_passthrough(&cli.common, cfg) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("ovfs: {e}");
                return EXIT_CONFIG;
            }
        }
    } else {
        let (server, b) = match build_server(cfg) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("ovfs: {e}");
                return EXIT_CONFIG;
            }
        };
        // No back-end round trip before accepting (VMMs and Kata give little
        // time): check reachability in the background and log the outcome.
        rt.spawn(async move {
            match b.check().await {
                Ok(()) => tracing::info!(scheme = b.scheme(), "back-end reachable"),
                Err(e) => tracing::error!(scheme = b.scheme(), error = %e, "back-end check failed; requests will fail until it recovers"),
            }
        });
        server
    };
    let opts = VhostUserOptions {
        tag: cli.tag.clone().or_else(|| cfg.socket_settings.tag.clone()),
        num_request_queues: cli.num_request_queues.or(cfg.socket_settings.num_request_queues).unwrap_or(1),
        keep_serving: cli.keep_serving,
        ..VhostUserOptions::default()
    };
    match vhost_user::serve(listen, handler, opts, rt.handle().clone()) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("ovfs: vhost-user: {e}");
            1
        }
    }
}
