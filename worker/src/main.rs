//! `htc`: the HTC-VLM worker command line. Parses, dispatches, prints one `error:` line on
//! failure.

use std::process::ExitCode;

use clap::Parser;

/// mimalloc keeps freed memory for reuse, where glibc's malloc returns the large buffers of
/// every intermediate tensor to the kernel and takes page faults to get them back; it keeps
/// it for good once told so (`backend::keep_freed_memory`). Figures in
/// docs/performance.md#llm-on-the-cpu.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    htc_worker::backend::keep_freed_memory();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HTC_LOG").unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match htc_worker::cli::Cli::parse().run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if htc_worker::cli::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
