//! Stand-alone `inspect` for development, until `vsplice inspect` is wired
//! into the VMM's command line: `cargo run -p vsplice-patcher --features cli
//! --example inspect -- --gdb 127.0.0.1:1234 summary`.
use clap::Parser;
use vsplice_patcher::inspect::{run_inspect, InspectArgs};

#[derive(Debug, Parser)]
struct Cli {
    #[command(flatten)]
    args: InspectArgs,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let mut out = std::io::stdout().lock();
    match run_inspect(&cli.args, &mut out) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let mut line = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                line.push_str(": ");
                line.push_str(&s.to_string());
                src = s.source();
            }
            eprintln!("inspect: error [{}]: {line}", e.cause());
            std::process::ExitCode::FAILURE
        }
    }
}
