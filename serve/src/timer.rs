//! A precise timer for batch flushes. Tokio's timer wheel ticks every
//! millisecond and rounds a deadline up to the next tick, so a 1 ms
//! `batch_wait_timeout` fired after 1-2 ms (p50 2.2 ms end to end at
//! concurrency 1, BENCHMARKS "Serving"). One thread sleeping on a condvar
//! until the earliest deadline wakes within the kernel's timer slack (tens
//! of microseconds). Its jobs only send a message; memory is one entry per
//! batch being formed.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::Instant;

/// What runs at a deadline (on the timer's thread: keep it short).
pub(crate) type Job = Box<dyn FnOnce() + Send>;

struct Entry {
    at: Instant,
    seq: u64,
    job: Job,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Entry {}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

#[derive(Default)]
struct State {
    heap: BinaryHeap<Reverse<Entry>>,
    seq: u64,
}

struct Timer {
    state: Mutex<State>,
    wake: Condvar,
}

impl Timer {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Jobs run with the lock released and nothing else panics while
        // holding it: a poisoned lock still holds a whole heap.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn run(&self) {
        let mut st = self.lock();
        loop {
            let now = Instant::now();
            let next = st.heap.peek().map(|Reverse(e)| e.at);
            match next {
                None => st = self.wake.wait(st).unwrap_or_else(|p| p.into_inner()),
                Some(at) if at <= now => {
                    if let Some(Reverse(e)) = st.heap.pop() {
                        drop(st);
                        // A panicking job must not end the timer.
                        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(e.job));
                        st = self.lock();
                    }
                }
                Some(at) => {
                    st = self
                        .wake
                        .wait_timeout(st, at - now)
                        .map(|(g, _)| g)
                        .unwrap_or_else(|p| p.into_inner().0);
                }
            }
        }
    }
}

fn timer() -> Option<&'static Timer> {
    static TIMER: OnceLock<Option<&'static Timer>> = OnceLock::new();
    *TIMER.get_or_init(|| {
        let t: &'static Timer = Box::leak(Box::new(Timer {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
        }));
        std::thread::Builder::new()
            .name("manta-serve-timer".into())
            .spawn(move || t.run())
            .ok()
            .map(|_| t)
    })
}

/// Runs `job` at `at` on the timer's thread; hands it back when the
/// thread could not be started (the caller falls back to tokio's timer).
pub(crate) fn at(at: Instant, job: Job) -> Result<(), Job> {
    let Some(t) = timer() else { return Err(job) };
    let mut st = t.lock();
    st.seq = st.seq.wrapping_add(1);
    let seq = st.seq;
    let earliest = st.heap.peek().is_none_or(|Reverse(e)| at < e.at);
    st.heap.push(Reverse(Entry { at, seq, job }));
    drop(st);
    if earliest {
        t.wake.notify_one();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    #[test]
    fn jobs_run_in_deadline_order_never_before_their_deadline() {
        let (tx, rx) = std::sync::mpsc::channel();
        let start = Instant::now();
        for ms in [30u64, 10, 20, 10] {
            let at = start + Duration::from_millis(ms);
            let tx = tx.clone();
            let queued = super::at(
                at,
                Box::new(move || {
                    let _ = tx.send((ms, Instant::now() >= at));
                }),
            );
            assert!(queued.is_ok(), "the timer thread runs");
        }
        // A panicking job does not stop the timer.
        assert!(super::at(start, Box::new(|| panic!("a job panics"))).is_ok());
        let got: Vec<(u64, bool)> = (0..4)
            .map(|_| {
                rx.recv_timeout(Duration::from_secs(10))
                    .unwrap_or_else(|e| panic!("a job did not run: {e}"))
            })
            .collect();
        assert_eq!(
            got,
            vec![(10, true), (10, true), (20, true), (30, true)],
            "order and deadlines"
        );
    }
}
