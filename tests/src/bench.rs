//! What the benchmark binaries share: statistics over runs, and the way each
//! one hands its section of docs/performance.md to `bench/run`.
//!
//! A benchmark prints its section (markdown) on stdout. When `BENCH_DIR` is
//! set (bench/run sets it), it also writes the section to
//! `$BENCH_DIR/NAME.md` and its targets, one per line, to
//! `$BENCH_DIR/NAME.targets` as `what<TAB>measured<TAB>goal<TAB>met|missed`,
//! which bench/run gathers into the table at the top of the document.

use std::fmt::Write as _;

/// Median, minimum and maximum of the samples of one case.
#[derive(Clone, Copy, Debug)]
pub struct Stats {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

impl Stats {
    /// None when there are no samples. The median of an even count is the
    /// mean of the middle two.
    pub fn of(samples: &[f64]) -> Option<Stats> {
        let mut v: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(|a, b| a.total_cmp(b));
        let n = v.len();
        let median = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
        Some(Stats { median, min: v[0], max: v[n - 1], n })
    }

    /// `median (min - max)` with `prec` decimals.
    pub fn show(&self, prec: usize) -> String {
        format!("{:.prec$} ({:.prec$} - {:.prec$})", self.median, self.min, self.max)
    }
}

/// One target of the issue that asked for the benchmark.
pub struct Target {
    pub what: String,
    pub measured: String,
    pub goal: String,
    pub met: bool,
}

/// A section of docs/performance.md under construction.
#[derive(Default)]
pub struct Section {
    pub text: String,
    pub targets: Vec<Target>,
    incomplete: Vec<String>,
}

impl Section {
    pub fn line(&mut self, s: impl AsRef<str>) -> &mut Self {
        self.text.push_str(s.as_ref());
        self.text.push('\n');
        self
    }

    /// A markdown table: a header row and rows of cells.
    pub fn table(&mut self, header: &[&str], rows: &[Vec<String>]) -> &mut Self {
        let _ = writeln!(self.text, "| {} |", header.join(" | "));
        let _ = writeln!(self.text, "|{}", " --- |".repeat(header.len()));
        for r in rows {
            let _ = writeln!(self.text, "| {} |", r.join(" | "));
        }
        self.text.push('\n');
        self
    }

    /// Records that a case has fewer samples than runs (a run failed or
    /// printed no result): said in the section and on stderr, and
    /// `finish` then exits non-zero, so that no gap passes silently.
    pub fn expect_runs(&mut self, case: &str, got: usize, runs: usize) -> &mut Self {
        if got < runs {
            self.incomplete.push(format!("{case}: {got} of {runs} runs gave a result"));
        }
        self
    }

    pub fn target(&mut self, what: &str, measured: String, goal: &str, met: bool) -> &mut Self {
        self.targets.push(Target { what: what.into(), measured, goal: goal.into(), met });
        self
    }

    /// Prints the section and, under bench/run, writes its files. A failure
    /// to write is fatal: a benchmark whose results are lost has not run.
    pub fn finish(&mut self, name: &str) {
        if !self.incomplete.is_empty() {
            let list = self.incomplete.join("; ");
            self.line(format!("**Incomplete:** {list}.")).line("");
            eprintln!("bench: {name}: incomplete: {list}");
        }
        println!("{}", self.text);
        for t in &self.targets {
            println!("target: {}: {} (goal {}): {}", t.what, t.measured, t.goal, if t.met { "met" } else { "missed" });
        }
        let Some(dir) = std::env::var_os("BENCH_DIR") else { return };
        let dir = std::path::PathBuf::from(dir);
        let targets: String = self
            .targets
            .iter()
            .map(|t| format!("{}\t{}\t{}\t{}\n", t.what, t.measured, t.goal, if t.met { "met" } else { "missed" }))
            .collect();
        let write = |file: String, body: &str| {
            if let Err(e) = std::fs::write(dir.join(&file), body) {
                eprintln!("bench: writing {}: {e}", dir.join(&file).display());
                std::process::exit(1);
            }
        };
        write(format!("{name}.md"), &self.text);
        write(format!("{name}.targets"), &targets);
        if !self.incomplete.is_empty() {
            std::process::exit(1);
        }
    }
}

/// The `key=value` words of a line, e.g. `BENCH name=ours init=1.23`.
pub fn field(line: &str, key: &str) -> Option<String> {
    line.split_whitespace().find_map(|w| w.strip_prefix(key)?.strip_prefix('=').map(str::to_string))
}

/// How guests run on this machine, for the section headers.
pub fn where_guests_run() -> &'static str {
    if crate::hardware_kvm() {
        "directly on this host's hardware KVM"
    } else {
        "nested: in one L1 VM under QEMU TCG with kvm-amd (tests/src/lib.rs), so absolute times are inflated and only same-run ratios mean anything"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_take_the_middle_and_the_extremes() {
        let s = Stats::of(&[3.0, 1.0, 2.0]).expect("samples");
        assert_eq!((s.median, s.min, s.max, s.n), (2.0, 1.0, 3.0, 3));
        let s = Stats::of(&[4.0, 1.0, 2.0, 3.0]).expect("samples");
        assert_eq!(s.median, 2.5);
        assert!(Stats::of(&[]).is_none());
        assert!(Stats::of(&[f64::NAN]).is_none());
    }

    #[test]
    fn fields_match_whole_keys() {
        let l = "BENCH name=ours init_x=9 init=1.5";
        assert_eq!(field(l, "init").as_deref(), Some("1.5"));
        assert_eq!(field(l, "name").as_deref(), Some("ours"));
        assert_eq!(field(l, "exit"), None);
    }
}
