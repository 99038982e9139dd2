//! A fork-join for the decoder's few-row products on a CPU backend ([`map`]): the parts of one
//! product run at once on the caller and on helper threads that spin between a decoding step's
//! products instead of sleeping.
//!
//! Written here rather than taken from rayon (used everywhere else) because of how a decoding
//! step is shaped: many products (about 150 for SmolLM2), each a fraction of a millisecond,
//! with a few microseconds of elementwise work between them on the caller alone. rayon's idle
//! workers go to sleep after a few yields and a sleeping one takes tens of microseconds to
//! wake (a futex), so the second half of a product is often picked up late, or run by the
//! caller after its own, and waking and sleeping become a sizeable share of a step. The crates
//! that offer low-latency fork-join (chili's heartbeat scheduling) share work only at a
//! heartbeat, too late for products this short. The helpers here spin for [`SPIN`] after each
//! part, then park.
//!
//! Parts are claimed, not assigned: whoever is free takes the next one, and the caller takes
//! back a job no helper has picked up by the time its own parts are done. On a machine whose
//! cores are shared with other work, a helper may be descheduled; with parts assigned to it,
//! the caller would spin until the helper ran again, a wait several times longer than the
//! step itself, where with parts claimed it runs the part itself.
//!
//! The figures behind both choices are in docs/performance.md#llm-on-the-cpu.

use std::any::Any;
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

/// One call's work offered to a helper: the caller's closure (its lifetime erased; the caller
/// does not return while a helper holds the job), the number of parts, and the caller's
/// counters: the next part to claim, the helpers still holding the job, and whether a part
/// panicked.
struct Job {
    run: *const (dyn Fn(usize) + Sync + 'static),
    parts: usize,
    next: *const AtomicUsize,
    holding: *const AtomicUsize,
    panicked: *const AtomicBool,
}

impl Job {
    /// Claims and runs parts until none is left; returns the first panic among them.
    ///
    /// # Safety
    /// The job's pointers must be alive: the caller's frame, as [`for_each`] guarantees.
    unsafe fn work(&self) -> Option<Box<dyn Any + Send>> {
        let (run, next) = unsafe { (&*self.run, &*self.next) };
        let mut panic = None;
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= self.parts {
                return panic;
            }
            if let Err(p) = catch_unwind(AssertUnwindSafe(|| run(i))) {
                panic.get_or_insert(p);
            }
        }
    }
}

struct Helper {
    /// The job offered; null when none. Only the caller that holds the team's lock offers one;
    /// the helper takes it by swapping in null, or the caller takes it back the same way.
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

/// A helper's life: wait for a job (spinning, then parked), take it, work on it, let go,
/// repeat.
fn serve(h: &'static Helper) {
    loop {
        let mut idle_since: Option<Instant> = None;
        let mut spins = 0u32;
        let job = loop {
            if !h.job.load(Ordering::Relaxed).is_null() {
                let p = h.job.swap(ptr::null_mut(), Ordering::Acquire);
                if !p.is_null() {
                    break p;
                }
                // Taken back by the caller.
                continue;
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
        // SAFETY: the caller counted this helper in `holding` before offering the job, and
        // does not return before `holding` reaches 0, which the `fetch_sub` below is the last
        // access to.
        unsafe {
            let job = &*job;
            if job.work().is_some() {
                (*job.panicked).store(true, Ordering::Relaxed);
            }
            (*job.holding).fetch_sub(1, Ordering::Release);
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
    let next = AtomicUsize::new(0);
    let holding = AtomicUsize::new(helpers);
    let panicked = AtomicBool::new(false);
    // SAFETY (lifetime erasure): this function does not return while a helper holds the job
    // (`holding` above 0), and a job no helper took is taken back before it returns.
    let erased: *const (dyn Fn(usize) + Sync + 'static) = unsafe {
        std::mem::transmute::<*const (dyn Fn(usize) + Sync + '_), *const (dyn Fn(usize) + Sync + 'static)>(
            run,
        )
    };
    let job = Job { run: erased, parts, next: &next, holding: &holding, panicked: &panicked };
    let offered = job_ptr(&job);
    for h in &team.helpers[..helpers] {
        h.job.store(offered, Ordering::SeqCst);
        if h.sleeping.load(Ordering::SeqCst) {
            if let Some(t) = h.thread.get() {
                t.unpark();
            }
        }
    }
    // SAFETY: `job` lives in this frame.
    let own = unsafe { job.work() };
    // Every part is claimed: take back the job from helpers that have not picked it up.
    for h in &team.helpers[..helpers] {
        if h.job.compare_exchange(offered, ptr::null_mut(), Ordering::AcqRel, Ordering::Relaxed).is_ok() {
            holding.fetch_sub(1, Ordering::Relaxed);
        }
    }
    // Wait for the helpers still running a part: spinning (the clock read every 64 rounds),
    // then yielding.
    let start = Instant::now();
    let mut spins = 0u32;
    while holding.load(Ordering::Acquire) != 0 {
        spins = spins.wrapping_add(1);
        if !spins.is_multiple_of(64) || start.elapsed() < SPIN {
            std::hint::spin_loop();
        } else {
            thread::yield_now();
        }
    }
    drop(guard);
    if let Some(p) = own {
        std::panic::resume_unwind(p);
    }
    if panicked.load(Ordering::Relaxed) {
        panic!("a part of a split product panicked on a helper thread");
    }
}

fn job_ptr(job: &Job) -> *mut Job {
    job as *const Job as *mut Job
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

    /// With every core kept busy by other threads, helpers are descheduled at any moment:
    /// before taking a job, while the caller takes it back, or mid-part. Every part still runs
    /// exactly once, the results come back in order, and every helper is let go (the next
    /// call works).
    #[test]
    fn parts_run_once_each_when_other_threads_hold_the_cores() {
        let stop = AtomicBool::new(false);
        let cores = thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        std::thread::scope(|s| {
            for _ in 0..cores {
                s.spawn(|| {
                    while !stop.load(Ordering::Relaxed) {
                        std::hint::spin_loop();
                    }
                });
            }
            let caller = thread::current().id();
            let mut on_caller_alone = 0;
            for round in 0..500 {
                let parts = 2 + round % 3;
                let runs: Vec<AtomicUsize> = (0..parts).map(|_| AtomicUsize::new(0)).collect();
                let out = map(parts, |i| {
                    runs[i].fetch_add(1, Ordering::Relaxed);
                    // A part of a few microseconds, long enough for a helper to be preempted.
                    (0..20_000u64).for_each(|x| {
                        std::hint::black_box(x);
                    });
                    (i * 10, thread::current().id() == caller)
                });
                assert_eq!(
                    out.iter().map(|o| o.0).collect::<Vec<_>>(),
                    (0..parts).map(|i| i * 10).collect::<Vec<_>>()
                );
                assert!(
                    runs.iter().all(|r| r.load(Ordering::Relaxed) == 1),
                    "round {round}: a part ran twice or never"
                );
                on_caller_alone += usize::from(out.iter().all(|o| o.1));
            }
            stop.store(true, Ordering::Relaxed);
            eprintln!("rounds whose parts all ran on the caller: {on_caller_alone} of 500");
        });
        assert_eq!(map(3, |i| i), vec![0, 1, 2]);
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
