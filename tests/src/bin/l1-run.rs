//! Runs a shell script where the e2e scenarios run (inside the L1 VM on a
//! host without hardware KVM, directly otherwise) and prints what it
//! printed: for profiling and one-off measurements with the same `$VMM`,
//! `$IMAGES` and `$WORK` as the tests.
//!
//! Usage: cargo run --release -p e2e --bin l1-run -- SCRIPT [HOST-FILE...]
//! (host programs or files the script needs, e.g. /usr/bin/perf, are copied
//! into L1 at their host paths; programs bring their libraries).

use std::path::Path;
use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(script) = args.first() else {
        eprintln!("usage: l1-run SCRIPT [HOST-FILE...]");
        std::process::exit(2);
    };
    let body = match std::fs::read_to_string(script) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("l1-run: reading {script}: {e}");
            std::process::exit(1);
        }
    };
    let extra: Vec<&Path> = args[1..].iter().map(Path::new).collect();
    let (bins, files): (Vec<&Path>, Vec<&Path>) = extra.iter().partition(|p| is_executable(p));
    let run = e2e::run_scenario_with(&body, Duration::from_secs(3600), &bins, &files);
    println!("{}", run.log());
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
