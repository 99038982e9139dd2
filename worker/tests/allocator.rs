//! The allocator setting `htc` makes at start (`backend::keep_freed_memory`) names the option it
//! means: in a fresh process (this test binary run again), mimalloc's own `MIMALLOC_PURGE_DELAY`
//! variable shows up at [`MI_OPTION_PURGE_DELAY`], and without it the setting is "never purge".

use std::process::Command;

use htc_worker::backend::{keep_freed_memory, MI_OPTION_PURGE_DELAY};

const CHILD: &str = "HTC_ALLOCATOR_TEST_CHILD";

/// Runs this test alone in a fresh process with `MIMALLOC_PURGE_DELAY` set to `env` (or unset)
/// and returns the purge delay the child read after `keep_freed_memory`.
fn child(env: Option<&str>) -> i64 {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "purge_delay_is_the_option_mimalloc_reads", "--nocapture", "--test-threads", "1"])
        .env(CHILD, "1")
        .env_remove("MIMALLOC_PURGE_DELAY");
    if let Some(v) = env {
        cmd.env("MIMALLOC_PURGE_DELAY", v);
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "child failed: {stdout}{}", String::from_utf8_lossy(&out.stderr));
    // The harness prints the test's name on the same line, before the value.
    let value = stdout.split("purge_delay=").nth(1).unwrap_or_else(|| panic!("no value in {stdout}"));
    value.split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn purge_delay_is_the_option_mimalloc_reads() {
    if std::env::var_os(CHILD).is_some() {
        keep_freed_memory();
        // SAFETY: reads mimalloc's option table; the child runs this one test on one thread.
        let v = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        println!("purge_delay={v}");
        return;
    }
    assert_eq!(child(Some("4321")), 4321, "MIMALLOC_PURGE_DELAY is read at this index and wins");
    assert_eq!(child(None), -1, "without the variable, freed memory is never handed back");
}
