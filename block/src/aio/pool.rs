//! The thread pool behind `aio=threads`, behind io_uring where io_uring
//! cannot help (error injection, bounced O_DIRECT requests, discard), and
//! the fallback when io_uring is unavailable. One pool per process, like
//! QEMU's: workers are started when every one is busy, up to `MAX_WORKERS`,
//! so a queue depth of 32 gets 32 requests in the kernel at once.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, OnceLock};

pub const MAX_WORKERS: usize = 64;

type Job = Box<dyn FnOnce() + Send>;

#[derive(Default)]
struct State {
    jobs: VecDeque<Job>,
    idle: usize,
    workers: usize,
}

pub struct Pool {
    state: Mutex<State>,
    cv: Condvar,
}

pub fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| Pool { state: Mutex::new(State::default()), cv: Condvar::new() })
}

impl Pool {
    pub fn spawn(&'static self, job: Job) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.jobs.push_back(job);
        if s.idle >= s.jobs.len() {
            self.cv.notify_one();
            return;
        }
        if s.workers < MAX_WORKERS {
            let started = std::thread::Builder::new().name("block-worker".into()).spawn(move || self.work());
            if started.is_ok() {
                s.workers += 1;
                return;
            }
        }
        // At the limit (or out of threads): a busy worker will take it.
        self.cv.notify_one();
    }

    fn work(&'static self) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(job) = s.jobs.pop_front() {
                drop(s);
                job();
                s = self.state.lock().unwrap_or_else(|e| e.into_inner());
                continue;
            }
            s.idle += 1;
            s = self.cv.wait(s).unwrap_or_else(|e| e.into_inner());
            s.idle -= 1;
        }
    }
}
