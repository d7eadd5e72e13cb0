//! `zfs-csi`: parse flags, set up logging, serve until SIGTERM/SIGINT; or, when the first
//! argument names one (`import`, `volumes`, `snapshots`), run an operator command (cli/).

use std::process::ExitCode;

use clap::Parser;
use zfs_csi::config::{self, Config, LogFormat};

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if zfs_csi::cli::is_operator_command(&args) {
        return zfs_csi::cli::main(&args);
    }
    let config = match Config::try_parse_from(&args) {
        Ok(config) => config,
        Err(e) if !e.use_stderr() => {
            // --help and --version
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("zfs-csi: {}", config::error_line(&e, &args, |var| std::env::var_os(var)));
            return ExitCode::from(2);
        }
    };
    if config.print_config {
        match serde_json::to_string_pretty(&config) {
            Ok(json) => {
                println!("{json}");
                return ExitCode::SUCCESS;
            }
            Err(e) => {
                eprintln!("zfs-csi: cannot print the configuration: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    if let Err(e) = init_logging(&config) {
        eprintln!("zfs-csi: --log-level: {e}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("zfs-csi: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let served = runtime.block_on(async {
        let shutdown = zfs_csi::server::shutdown_signal().map_err(|e| format!("cannot install signal handlers: {e}"))?;
        zfs_csi::server::serve(config, shutdown).await
    });
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, in the configured log format.
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(config: &Config) -> Result<(), String> {
    let filter = config.log_level.env_filter()?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match config.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}
