//! The `manifold` binary: parse, run, print the error chain once, exit.
//! Exit status: 0 published, 1 failed, 2 usage or input refused.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
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
