//! Writes the ovfs(1) man page, generated from the daemon's own command-line
//! definition (so it never drifts from `ovfs --help`). Used by
//! `packaging/build.sh`; not installed.
//!
//! usage: ovfs-man [OUTPUT]   (default: standard output)

use std::io::Write;

use clap::CommandFactory;

fn main() {
    let cmd = ovfs::cli::Cli::command();
    let mut page = Vec::new();
    if let Err(e) = clap_mangen::Man::new(cmd).render(&mut page) {
        eprintln!("ovfs-man: cannot render the man page: {e}");
        std::process::exit(1);
    }
    let result = match std::env::args_os().nth(1) {
        Some(path) => std::fs::write(&path, &page),
        None => std::io::stdout().write_all(&page),
    };
    if let Err(e) = result {
        eprintln!("ovfs-man: cannot write the man page: {e}");
        std::process::exit(1);
    }
}
