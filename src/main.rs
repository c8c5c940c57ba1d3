//! The `otelring` binary: parses flags and environment, then runs a subcommand.

use clap::Parser;
use otelring::config::{Cli, Command};
use std::process::ExitCode;

fn main() -> ExitCode {
    match try_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("otelring: {e}");
            ExitCode::from(2)
        }
    }
}

fn try_main() -> Result<(), Box<dyn std::error::Error>> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Some(Command::Config) | None => {
            let cfg = cli.pipeline.pipeline_config(None)?;
            println!("data_dir = {}", cli.pipeline.data_dir.display());
            println!("{cfg:#?}");
            Ok(())
        }
    }
}
