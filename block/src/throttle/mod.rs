//! QEMU's I/O throttling arithmetic (util/throttle.c), so that limits set
//! with the same keys behave the same: six leaky buckets (bytes and
//! operations; total, read, write), each with an average rate, an optional
//! burst rate (`max`) and burst length in seconds, and `iops-size`, which
//! counts a large request as several operations.
//!
//! This module is only the arithmetic, on a clock the caller passes in
//! (nanoseconds), so that it can be tested against QEMU's own cases; the
//! queue of waiting requests and the timer live with the drive.
//!
//! `group` shares limits between drives and schedules them; `timer` is
//! the timerfd an I/O queue's event loop waits on.

pub(crate) mod drive;
pub mod group;
pub mod timer;

pub use group::{now_ns, Group, Member};

/// QEMU's THROTTLE_VALUE_MAX: the largest rate or burst accepted.
pub const VALUE_MAX: u64 = 1_000_000_000_000_000;
const NS_PER_SEC: f64 = 1_000_000_000.0;

/// The buckets, in QEMU's order (BucketType).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bucket {
    BpsTotal = 0,
    BpsRead = 1,
    BpsWrite = 2,
    OpsTotal = 3,
    OpsRead = 4,
    OpsWrite = 5,
}

pub const BUCKETS: usize = 6;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Read,
    Write,
}

/// One leaky bucket. `level` is what was let through and has not leaked
/// yet; `burst_level` the same against the burst rate, kept only when a
/// burst lasts more than a second.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LeakyBucket {
    /// Average rate, units per second; 0: no limit.
    pub avg: u64,
    /// Burst rate, units per second; 0: bursts of a tenth of `avg`.
    pub max: u64,
    pub level: f64,
    pub burst_level: f64,
    /// Seconds a burst at `max` may last; at least 1.
    pub burst_length: u64,
}

impl Default for LeakyBucket {
    fn default() -> Self {
        LeakyBucket {
            avg: 0,
            max: 0,
            level: 0.0,
            burst_level: 0.0,
            burst_length: 1,
        }
    }
}

impl LeakyBucket {
    /// Lets `delta_ns` of time drain the bucket (throttle_leak_bucket).
    pub fn leak(&mut self, delta_ns: u64) {
        let leak = self.avg as f64 * delta_ns as f64 / NS_PER_SEC;
        self.level = (self.level - leak).max(0.0);
        if self.burst_length > 1 {
            let leak = self.max as f64 * delta_ns as f64 / NS_PER_SEC;
            self.burst_level = (self.burst_level - leak).max(0.0);
        }
    }

    /// Nanoseconds to wait before the next request may go; 0: now
    /// (throttle_compute_wait). Without a burst rate, a tenth of a second's
    /// worth may go at once, or every other request would wait.
    pub fn wait_ns(&self) -> u64 {
        if self.avg == 0 {
            return 0;
        }
        let (bucket_size, burst_bucket_size) = if self.max == 0 {
            (self.avg as f64 / 10.0, 0.0)
        } else {
            (
                self.max as f64 * self.burst_length as f64,
                self.max as f64 / 10.0,
            )
        };
        let extra = self.level - bucket_size;
        if extra > 0.0 {
            return wait_for(self.avg, extra);
        }
        if self.burst_length > 1 && self.max > 0 {
            let extra = self.burst_level - burst_bucket_size;
            if extra > 0.0 {
                return wait_for(self.max, extra);
            }
        }
        0
    }
}

/// Time for `extra` units to leak at `rate` per second, truncated to whole
/// nanoseconds as QEMU's conversion to int64 does.
fn wait_for(rate: u64, extra: f64) -> u64 {
    (extra * NS_PER_SEC / rate as f64) as u64
}

/// A drive's (or a group's) limits (ThrottleConfig).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Config {
    pub buckets: [LeakyBucket; BUCKETS],
    /// `iops-size`: a request larger than this counts as size / op_size
    /// operations; 0: every request is one.
    pub op_size: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            buckets: [LeakyBucket::default(); BUCKETS],
            op_size: 0,
        }
    }
}

impl Config {
    pub fn bucket(&self, b: Bucket) -> &LeakyBucket {
        &self.buckets[b as usize]
    }

    pub fn bucket_mut(&mut self, b: Bucket) -> &mut LeakyBucket {
        &mut self.buckets[b as usize]
    }

    /// Any limit at all (throttle_enabled).
    pub fn enabled(&self) -> bool {
        self.buckets.iter().any(|b| b.avg > 0)
    }

    /// QEMU's throttle_is_valid, with its messages.
    pub fn validate(&self) -> Result<(), String> {
        let conflict = |t: Bucket, r: Bucket, w: Bucket, f: fn(&LeakyBucket) -> u64| {
            f(self.bucket(t)) != 0 && (f(self.bucket(r)) != 0 || f(self.bucket(w)) != 0)
        };
        let avg = |b: &LeakyBucket| b.avg;
        let max = |b: &LeakyBucket| b.max;
        if conflict(Bucket::BpsTotal, Bucket::BpsRead, Bucket::BpsWrite, avg)
            || conflict(Bucket::OpsTotal, Bucket::OpsRead, Bucket::OpsWrite, avg)
            || conflict(Bucket::BpsTotal, Bucket::BpsRead, Bucket::BpsWrite, max)
            || conflict(Bucket::OpsTotal, Bucket::OpsRead, Bucket::OpsWrite, max)
        {
            return Err(
                "bps/iops/max total values and read/write values cannot be used at the same time"
                    .into(),
            );
        }
        if self.op_size != 0
            && [Bucket::OpsTotal, Bucket::OpsRead, Bucket::OpsWrite]
                .iter()
                .all(|&b| self.bucket(b).avg == 0)
        {
            return Err("iops size requires an iops value to be set".into());
        }
        for b in &self.buckets {
            if b.avg > VALUE_MAX || b.max > VALUE_MAX {
                return Err(format!(
                    "bps/iops/max values must be within [0, {VALUE_MAX}]"
                ));
            }
            if b.burst_length == 0 {
                return Err("the burst length cannot be 0".into());
            }
            if b.burst_length > 1 && b.max == 0 {
                return Err("burst length set without burst rate".into());
            }
            if b.max != 0 && b.burst_length > VALUE_MAX / b.max {
                return Err("burst length too high for this burst rate".into());
            }
            if b.max != 0 && b.avg == 0 {
                return Err("bps_max/iops_max require corresponding bps/iops values".into());
            }
            if b.max != 0 && b.max < b.avg {
                return Err("bps_max/iops_max cannot be lower than bps/iops".into());
            }
        }
        Ok(())
    }
}

/// The buckets a request of each direction is checked against and
/// accounted to.
const BPS: [[Bucket; 2]; 2] = [
    [Bucket::BpsTotal, Bucket::BpsRead],
    [Bucket::BpsTotal, Bucket::BpsWrite],
];
const OPS: [[Bucket; 2]; 2] = [
    [Bucket::OpsTotal, Bucket::OpsRead],
    [Bucket::OpsTotal, Bucket::OpsWrite],
];

/// Limits with their levels and the time of the last leak (ThrottleState).
#[derive(Clone, Debug, PartialEq)]
pub struct State {
    cfg: Config,
    previous_leak: u64,
}

impl State {
    /// Empty buckets as of `now_ns` (throttle_config).
    pub fn new(cfg: Config, now_ns: u64) -> Self {
        let mut s = State {
            cfg,
            previous_leak: now_ns,
        };
        for b in &mut s.cfg.buckets {
            b.level = 0.0;
            b.burst_level = 0.0;
        }
        s
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    fn leak(&mut self, now_ns: u64) {
        let delta = now_ns.saturating_sub(self.previous_leak);
        self.previous_leak = now_ns;
        if delta == 0 {
            return;
        }
        for b in &mut self.cfg.buckets {
            b.leak(delta);
        }
    }

    /// When a request in direction `dir` may go: None for now, or the
    /// clock time to wait for (throttle_compute_timer). Leaks first.
    pub fn next_time(&mut self, dir: Direction, now_ns: u64) -> Option<u64> {
        self.leak(now_ns);
        let d = dir as usize;
        let wait = BPS[d]
            .iter()
            .chain(OPS[d].iter())
            .map(|&b| self.cfg.bucket(b).wait_ns())
            .max()
            .unwrap_or(0);
        (wait > 0).then(|| now_ns.saturating_add(wait))
    }

    /// Counts a request of `size` bytes that is let through
    /// (throttle_account).
    pub fn account(&mut self, dir: Direction, size: u64) {
        let units = if self.cfg.op_size != 0 && size > self.cfg.op_size {
            size as f64 / self.cfg.op_size as f64
        } else {
            1.0
        };
        let d = dir as usize;
        for (&bytes, &ops) in BPS[d].iter().zip(OPS[d].iter()) {
            for (b, n) in [(bytes, size as f64), (ops, units)] {
                let bkt = self.cfg.bucket_mut(b);
                bkt.level += n;
                if bkt.burst_length > 1 {
                    bkt.burst_level += n;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn bucket(avg: u64, max: u64, level: f64, burst_length: u64) -> LeakyBucket {
        LeakyBucket {
            avg,
            max,
            level,
            burst_level: 0.0,
            burst_length,
        }
    }

    /// QEMU's double_cmp: its tests compare levels to 1e-6.
    fn near(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-6
    }

    #[test]
    fn buckets_leak_at_their_rate_and_never_below_zero() {
        // test-throttle.c, test_leak_bucket.
        let mut b = bucket(150, 15, 1.5, 1);
        b.leak(SEC / 150);
        assert!(near(b.level, 0.5), "{}", b.level);
        b.leak(SEC / 150);
        assert!(near(b.level, 0.0));
        b.leak(SEC / 150);
        assert_eq!(b.level, 0.0, "never below zero");
        // The burst level leaks at max when bursts last more than 1 s.
        b.burst_level = 6.0;
        b.max = 250;
        b.burst_length = 2;
        for want in [3.5, 1.0, 0.0, 0.0] {
            b.leak(SEC / 100);
            assert!(near(b.burst_level, want), "{} != {want}", b.burst_level);
        }
    }

    #[test]
    fn waits_follow_qemus_formula() {
        // test-throttle.c, test_compute_wait: an empty or unlimited bucket
        // never waits; one level over the burst size waits for it to leak.
        assert_eq!(bucket(0, 0, 1000.0, 1).wait_ns(), 0);
        assert_eq!(bucket(150, 15, 15.0, 1).wait_ns(), 0);
        assert_eq!(bucket(150, 15, 9.0, 1).wait_ns(), 0);
        // Half an operation above max: the time for half an operation.
        assert_eq!(bucket(150, 15, 15.5, 1).wait_ns(), SEC / 150 / 2);
        // No max: a tenth of avg may pass, the rest waits at avg.
        let b = bucket(150, 0, 15.0 + 150.0 / 10.0 - 15.0 + 1.0, 1);
        assert_eq!(b.wait_ns(), SEC / 150);
        // A level of 16 with max 15: 1 extra unit at 150/s.
        assert_eq!(bucket(150, 15, 16.0, 1).wait_ns(), SEC / 150);
        // Bursts of 3 s at max 25: the main bucket holds 75 before avg
        // applies, and the burst bucket 2.5 before max does.
        let mut b = LeakyBucket {
            avg: 10,
            max: 25,
            level: 70.0,
            burst_level: 3.5,
            burst_length: 3,
        };
        assert_eq!(b.wait_ns(), SEC / 25, "burst bucket 1 over: wait at max");
        b.level = 76.0;
        assert_eq!(b.wait_ns(), SEC / 10, "main bucket 1 over: wait at avg");
    }

    #[test]
    fn bursts_last_burst_length_seconds() {
        // test-throttle.c, test_compute_wait's second half: I/O at max for
        // 2.2 s with a 2 s burst length may go on for 2.1 s (the level
        // leaked at avg meanwhile), then waits 1.8 s.
        let mut b = LeakyBucket {
            avg: 10,
            max: 200,
            level: 0.0,
            burst_level: 0.0,
            burst_length: 2,
        };
        for i in 0..22u32 {
            let units = b.max as f64 / 10.0;
            b.level += units;
            b.burst_level += units;
            b.leak(SEC / 10);
            assert!(b.burst_level.abs() < 1e-6);
            assert!((b.level - f64::from(i + 1) * (b.max - b.avg) as f64 / 10.0).abs() < 1e-6);
            assert_eq!(
                b.wait_ns(),
                if i < 21 { 0 } else { 1_800_000_000 },
                "step {i}"
            );
        }
    }

    #[test]
    fn accounting_matches_qemus_cases() {
        // test-throttle.c, test_accounting: a read and a write of `size`,
        // limits on the bps or the ops buckets.
        let case = |ops: bool, size: u64, avg: u64, op_size: u64| {
            let mut c = Config::default();
            let set: [Bucket; 3] = if ops {
                [Bucket::OpsTotal, Bucket::OpsRead, Bucket::OpsWrite]
            } else {
                [Bucket::BpsTotal, Bucket::BpsRead, Bucket::BpsWrite]
            };
            for b in set {
                c.bucket_mut(b).avg = avg;
            }
            c.op_size = op_size;
            let mut s = State::new(c, 0);
            s.account(Direction::Read, size);
            s.account(Direction::Write, size);
            set.map(|b| s.config().bucket(b).level)
        };
        let close = |a: [f64; 3], b: [f64; 3]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6);
        assert!(close(case(false, 512, 150, 0), [1024.0, 512.0, 512.0]));
        assert!(close(case(false, 1024, 150, 0), [2048.0, 1024.0, 1024.0]));
        assert!(close(case(false, 1024, 150, 17), [2048.0, 1024.0, 1024.0]));
        assert!(close(case(true, 512, 150, 0), [2.0, 1.0, 1.0]));
        assert!(close(case(true, 1024, 150, 0), [2.0, 1.0, 1.0]));
        assert!(close(
            case(true, 64 * 512, 150, 13 * 512),
            [128.0 / 13.0, 64.0 / 13.0, 64.0 / 13.0]
        ));
        assert!(close(
            case(true, 64 * 512, 300, 13 * 512),
            [128.0 / 13.0, 64.0 / 13.0, 64.0 / 13.0]
        ));
    }

    #[test]
    fn validity_follows_qemu_with_its_messages() {
        let with = |f: fn(&mut Config)| {
            let mut c = Config::default();
            f(&mut c);
            c.validate()
        };
        assert!(with(|_| ()).is_ok());
        assert!(with(|c| c.bucket_mut(Bucket::BpsRead).avg = 1 << 20).is_ok());
        assert_eq!(
            with(|c| {
                c.bucket_mut(Bucket::BpsTotal).avg = 1;
                c.bucket_mut(Bucket::BpsWrite).avg = 1;
            }),
            Err(
                "bps/iops/max total values and read/write values cannot be used at the same time"
                    .into()
            )
        );
        assert_eq!(
            with(|c| c.op_size = 4096),
            Err("iops size requires an iops value to be set".into())
        );
        assert_eq!(
            with(|c| c.bucket_mut(Bucket::OpsTotal).avg = VALUE_MAX + 1),
            Err(format!(
                "bps/iops/max values must be within [0, {VALUE_MAX}]"
            ))
        );
        assert_eq!(
            with(|c| {
                c.bucket_mut(Bucket::OpsTotal).avg = 10;
                c.bucket_mut(Bucket::OpsTotal).burst_length = 0;
            }),
            Err("the burst length cannot be 0".into())
        );
        assert_eq!(
            with(|c| {
                c.bucket_mut(Bucket::OpsTotal).avg = 10;
                c.bucket_mut(Bucket::OpsTotal).burst_length = 2;
            }),
            Err("burst length set without burst rate".into())
        );
        assert_eq!(
            with(|c| c.bucket_mut(Bucket::OpsTotal).max = 10),
            Err("bps_max/iops_max require corresponding bps/iops values".into())
        );
        assert_eq!(
            with(|c| {
                c.bucket_mut(Bucket::OpsTotal).avg = 10;
                c.bucket_mut(Bucket::OpsTotal).max = 5;
            }),
            Err("bps_max/iops_max cannot be lower than bps/iops".into())
        );
        assert_eq!(
            with(|c| {
                let b = c.bucket_mut(Bucket::BpsTotal);
                (b.avg, b.max, b.burst_length) = (1, VALUE_MAX / 2, 3);
            }),
            Err("burst length too high for this burst rate".into())
        );
    }

    #[test]
    fn a_rate_limit_holds_over_time() {
        // 8 MiB/s, 64 KiB requests sent as soon as allowed: 32 MiB takes
        // 4 s less the initial tenth-of-a-second allowance.
        let mut c = Config::default();
        c.bucket_mut(Bucket::BpsTotal).avg = 8 << 20;
        let mut s = State::new(c, 0);
        let (mut now, mut sent) = (0u64, 0u64);
        while sent < 32 << 20 {
            match s.next_time(Direction::Read, now) {
                Some(t) => now = t,
                None => {
                    s.account(Direction::Read, 64 << 10);
                    sent += 64 << 10;
                }
            }
        }
        let secs = now as f64 / SEC as f64;
        assert!((3.8..=4.0).contains(&secs), "{secs} s");
    }

    #[test]
    fn iops_size_counts_large_requests_as_several() {
        let mut c = Config::default();
        c.bucket_mut(Bucket::OpsTotal).avg = 100;
        c.op_size = 4096;
        let mut s = State::new(c, 0);
        s.account(Direction::Write, 16384);
        assert_eq!(s.config().bucket(Bucket::OpsTotal).level, 4.0);
        assert_eq!(s.config().bucket(Bucket::OpsWrite).level, 4.0);
        assert_eq!(s.config().bucket(Bucket::OpsRead).level, 0.0);
        s.account(Direction::Read, 512);
        assert_eq!(s.config().bucket(Bucket::OpsTotal).level, 5.0);
        assert_eq!(s.config().bucket(Bucket::BpsTotal).level, 16896.0);
    }

    #[test]
    fn a_burst_runs_at_max_then_settles_to_avg() {
        // avg 1 MiB/s, max 4 MiB/s for 2 s. The burst bucket holds the
        // rate to 4 MiB/s while the main bucket (max x 2 s = 8 MiB) fills,
        // net of its 1 MiB/s leak, at 3 MiB/s: full after about 2.5 s and
        // 10.5 MiB; the rest goes at 1 MiB/s.
        let mut c = Config::default();
        let b = c.bucket_mut(Bucket::BpsTotal);
        (b.avg, b.max, b.burst_length) = (1 << 20, 4 << 20, 2);
        assert!(c.validate().is_ok());
        let mut s = State::new(c, 0);
        let (mut now, mut sent, mut at_8m) = (0u64, 0u64, 0u64);
        while sent < 16 << 20 {
            match s.next_time(Direction::Read, now) {
                Some(t) => now = t,
                None => {
                    s.account(Direction::Read, 64 << 10);
                    sent += 64 << 10;
                    if sent == 8 << 20 {
                        at_8m = now;
                    }
                }
            }
        }
        let burst = at_8m as f64 / SEC as f64;
        let total = now as f64 / SEC as f64;
        assert!(
            (1.7..2.1).contains(&burst),
            "8 MiB in {burst} s: not at the burst rate"
        );
        assert!(
            (7.8..8.3).contains(&total),
            "16 MiB in {total} s: not settled to avg"
        );
    }
}
