//! A fork-join for the decoder's few-row products on a CPU backend ([`map`]): the parts of one
//! product run at once on the caller and on helper threads that spin between a decoding step's
//! products instead of sleeping.
//!
//! Written here rather than taken from rayon (used everywhere else) because of how a decoding
//! step is shaped: about 150 products of 50–200 µs each, with a few microseconds of
//! elementwise work between them on the caller alone. rayon's idle workers go to sleep after a
//! few yields and a sleeping one takes tens of microseconds to wake (a futex), so the second
//! half of a product was often picked up late, or run by the caller after its own; waking and
//! sleeping took about 12% of a SmolLM2 decoding profile. The crates that offer low-latency
//! fork-join (chili's heartbeat scheduling) share work only at a heartbeat, too late for a
//! 100 µs product. The helpers here spin for [`SPIN`] after each part, then park.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock, TryLockError};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

/// How long an idle helper spins for the next part before it parks: longer than the
/// elementwise work between a step's products and the sampling between steps, short enough
/// that an idle worker does not hold a core.
const SPIN: Duration = Duration::from_micros(500);

/// One part handed to a helper: the caller's closure (its lifetime erased; the caller waits
/// until every part is done before the closure goes out of scope), the part's index, and the
/// caller's counters.
struct Job {
    run: *const (dyn Fn(usize) + Sync + 'static),
    index: usize,
    left: *const AtomicUsize,
    panicked: *const AtomicBool,
}

struct Helper {
    /// The part to run; null when idle. Only the caller that holds the team's lock posts one,
    /// and only to an idle helper.
    job: AtomicPtr<Job>,
    sleeping: AtomicBool,
    thread: OnceLock<Thread>,
}

struct Team {
    helpers: Vec<&'static Helper>,
    /// Held by the caller whose parts the helpers run; a second caller meanwhile (or a part
    /// that splits again) runs its parts itself.
    busy: Mutex<()>,
}

fn team() -> &'static Team {
    static TEAM: OnceLock<Team> = OnceLock::new();
    TEAM.get_or_init(|| {
        let n = thread::available_parallelism().map(|n| n.get()).unwrap_or(1).saturating_sub(1);
        let helpers = (0..n)
            .filter_map(|i| {
                let h: &'static Helper = Box::leak(Box::new(Helper {
                    job: AtomicPtr::new(ptr::null_mut()),
                    sleeping: AtomicBool::new(false),
                    thread: OnceLock::new(),
                }));
                let spawned =
                    thread::Builder::new().name(format!("htc-team-{i}")).spawn(move || serve(h)).ok()?;
                let _ = h.thread.set(spawned.thread().clone());
                Some(h)
            })
            .collect();
        Team { helpers, busy: Mutex::new(()) }
    })
}

/// A helper's life: wait for a part (spinning, then parked), run it, report, repeat.
fn serve(h: &'static Helper) {
    loop {
        let mut idle_since: Option<Instant> = None;
        let mut spins = 0u32;
        let job = loop {
            let p = h.job.load(Ordering::Acquire);
            if !p.is_null() {
                break p;
            }
            spins = spins.wrapping_add(1);
            if !spins.is_multiple_of(64) || idle_since.get_or_insert_with(Instant::now).elapsed() < SPIN {
                std::hint::spin_loop();
                continue;
            }
            h.sleeping.store(true, Ordering::SeqCst);
            if h.job.load(Ordering::SeqCst).is_null() {
                thread::park();
            }
            h.sleeping.store(false, Ordering::SeqCst);
            idle_since = None;
        };
        h.job.store(ptr::null_mut(), Ordering::Relaxed);
        // SAFETY: the caller keeps the job, its closure and its counters alive until `left`
        // reaches 0, which the `fetch_sub` below is the last access to.
        unsafe {
            let job = &*job;
            let run = &*job.run;
            if catch_unwind(AssertUnwindSafe(|| run(job.index))).is_err() {
                (*job.panicked).store(true, Ordering::Relaxed);
            }
            (*job.left).fetch_sub(1, Ordering::Release);
        }
    }
}

/// `f(0), …, f(parts - 1)`, run at once on the caller and the team's helpers (one thread per
/// further core), results in order. Runs them on the caller alone when there are no helpers
/// or another caller is using them. A panic in a part is raised again here.
pub fn map<T: Send>(parts: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let slots: Vec<Mutex<Option<T>>> = (0..parts).map(|_| Mutex::new(None)).collect();
    let run = |i: usize| {
        let out = f(i);
        *slots[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(out);
    };
    for_each(parts, &run);
    slots
        .into_iter()
        .map(|s| s.into_inner().unwrap_or_else(|e| e.into_inner()).expect("every part ran"))
        .collect()
}

fn for_each(parts: usize, run: &(dyn Fn(usize) + Sync)) {
    let team = team();
    let guard = match team.busy.try_lock() {
        Ok(g) => Some(g),
        Err(TryLockError::Poisoned(e)) => Some(e.into_inner()),
        Err(TryLockError::WouldBlock) => None,
    };
    let helpers = if guard.is_some() { team.helpers.len().min(parts.saturating_sub(1)) } else { 0 };
    let left = AtomicUsize::new(helpers);
    let panicked = AtomicBool::new(false);
    // SAFETY (lifetime erasure): this function does not return before `left` is 0, that is
    // before every helper is done with `run`.
    let erased: *const (dyn Fn(usize) + Sync + 'static) = unsafe {
        std::mem::transmute::<*const (dyn Fn(usize) + Sync + '_), *const (dyn Fn(usize) + Sync + 'static)>(
            run,
        )
    };
    let jobs: Vec<Job> =
        (0..helpers).map(|i| Job { run: erased, index: i + 1, left: &left, panicked: &panicked }).collect();
    for (h, job) in team.helpers.iter().zip(&jobs) {
        h.job.store(job as *const Job as *mut Job, Ordering::SeqCst);
        if h.sleeping.load(Ordering::SeqCst) {
            if let Some(t) = h.thread.get() {
                t.unpark();
            }
        }
    }
    // The caller's own parts: the first and any beyond the helpers.
    let mine = std::iter::once(0).chain(helpers + 1..parts).filter(|&i| i < parts);
    let own = catch_unwind(AssertUnwindSafe(|| mine.for_each(run)));
    // Wait for the helpers: spinning (the clock read every 64 rounds), then yielding.
    let start = Instant::now();
    let mut spins = 0u32;
    while left.load(Ordering::Acquire) != 0 {
        spins = spins.wrapping_add(1);
        if !spins.is_multiple_of(64) || start.elapsed() < SPIN {
            std::hint::spin_loop();
        } else {
            thread::yield_now();
        }
    }
    drop(guard);
    if let Err(p) = own {
        std::panic::resume_unwind(p);
    }
    if panicked.load(Ordering::Relaxed) {
        panic!("a part of a split product panicked on a helper thread");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_run_once_each_and_come_back_in_order() {
        for parts in [0, 1, 2, 3, 7] {
            let calls = AtomicUsize::new(0);
            let out = map(parts, |i| {
                calls.fetch_add(1, Ordering::Relaxed);
                i * 10
            });
            assert_eq!(out, (0..parts).map(|i| i * 10).collect::<Vec<_>>());
            assert_eq!(calls.load(Ordering::Relaxed), parts);
        }
    }

    #[test]
    fn nested_and_concurrent_callers_finish() {
        // A part that splits again, from four threads at once: every caller but the one that
        // holds the helpers runs its parts itself, and all of them finish with the right sums.
        let round =
            || -> usize { map(3, |i| map(2, |j| i + j).into_iter().sum::<usize>()).into_iter().sum() };
        let totals: Vec<usize> = std::thread::scope(|s| {
            let handles: Vec<_> =
                (0..4).map(|_| s.spawn(|| (0..200).map(|_| round()).sum::<usize>())).collect();
            handles.into_iter().map(|h| h.join().expect("no panic")).collect()
        });
        // Each inner map gives 2i + 1; over i in 0..3: 9; 200 rounds: 1800.
        assert_eq!(totals, vec![1800; 4]);
    }

    #[test]
    fn a_panicking_part_is_raised_to_the_caller_and_the_team_still_works() {
        let r = catch_unwind(|| map(2, |i| if i == 1 { panic!("part 1 fails") } else { i }));
        assert!(r.is_err());
        let r = catch_unwind(|| map(2, |i| if i == 0 { panic!("part 0 fails") } else { i }));
        assert!(r.is_err());
        assert_eq!(map(2, |i| i + 1), vec![1, 2]);
    }
}
