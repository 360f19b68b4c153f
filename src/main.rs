//! The `rollwatch` binary: parse the command line, set up logging, dispatch.

use std::process::ExitCode;

use clap::Parser;
use rollwatch::cmd::{self, Cli, LogFormat};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Commands print their results on stdout; logs go to stderr, warnings and
    // worse unless RUST_LOG says otherwise.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    cmd::run(cli)
}
