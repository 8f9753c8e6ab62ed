//! Worker threads for the requests io_uring cannot take (error injection,
//! bounced O_DIRECT requests, discard, write-zeroes), for `aio=threads`,
//! and as the fallback when io_uring is unavailable.
//!
//! Each `IoQueue` has its own pool, as each QEMU AioContext has its own:
//! a drive whose storage hangs can tie up only its own workers, never
//! another drive's. Workers are started when every one is busy, up to
//! `MAX_WORKERS` (so a queue depth of 32 gets 32 requests in the kernel at
//! once), and end after `IDLE` without work. A job that panics does not
//! take its worker with it.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

pub const MAX_WORKERS: usize = 64;
const IDLE: Duration = Duration::from_secs(10);

pub(crate) type Job = Box<dyn FnOnce() + Send>;

#[derive(Default)]
struct State {
    jobs: VecDeque<Job>,
    idle: usize,
    workers: usize,
    closed: bool,
}

#[derive(Default)]
pub struct Pool {
    state: Mutex<State>,
    cv: Condvar,
}

impl Pool {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn spawn(self: &Arc<Self>, job: Job) {
        let mut s = self.lock();
        s.jobs.push_back(job);
        if s.idle >= s.jobs.len() {
            // Woken after the lock is released, so that the worker does
            // not wake only to wait for it.
            drop(s);
            self.cv.notify_one();
            return;
        }
        if s.workers < MAX_WORKERS {
            let me = self.clone();
            if crate::thread::spawn("block-worker".into(), move || me.work()).is_ok() {
                s.workers += 1;
                return;
            }
            if s.workers == 0 {
                // Out of threads and no worker to take it: drop the job,
                // which delivers its completion as a failure (the job owns
                // a delivery that does so when dropped unrun).
                let job = s.jobs.pop_back();
                drop(s);
                drop(job);
                return;
            }
        }
        // At the limit (or out of threads): a busy worker will take it.
        self.cv.notify_one();
    }

    /// Workers alive, and how many of them wait for work.
    pub fn workers(&self) -> (usize, usize) {
        let s = self.lock();
        (s.workers, s.idle)
    }

    /// Lets idle workers end at once; queued jobs still run.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.cv.notify_all();
    }

    fn work(self: Arc<Self>) {
        let mut s = self.lock();
        loop {
            if let Some(job) = s.jobs.pop_front() {
                drop(s);
                // The job delivers its own completion even when it panics
                // (see `IoQueue`); the worker carries on either way.
                let _ = catch_unwind(AssertUnwindSafe(job));
                s = self.lock();
                continue;
            }
            if s.closed {
                break;
            }
            s.idle += 1;
            let (g, timeout) = self.cv.wait_timeout(s, IDLE).unwrap_or_else(|e| e.into_inner());
            s = g;
            s.idle -= 1;
            if timeout.timed_out() && s.jobs.is_empty() {
                break;
            }
        }
        s.workers -= 1;
    }
}
