//! The `manifold` binary: parse, run, print the error chain once, exit.
//! Exit status: 0 published, 1 failed, 2 usage or input refused.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    one_malloc_arena();
    let cli = manifold::cli::args::Cli::parse();
    manifold::cli::init_logging(&cli);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(manifold::cli::run(cli));
    // Stream processes and uploads still running are abandoned here: their
    // Drop impls kill children and unlink spools.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if manifold::cli::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", manifold::cli::render_error(&e));
            ExitCode::from(manifold::cli::exit_code(&e))
        }
    }
}

/// glibc gives each thread that allocates under contention an arena of its
/// own (up to eight per core) and keeps what each arena once held. Every
/// input is read on its own thread, so a 12-image batch kept a dozen arenas
/// of freed layer buffers: over 100 MB against 45 MB with one arena, and the
/// cold push took the same time (bench/README.md, "Memory").
fn one_malloc_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called before any
    // other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}
