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
            eprintln!("inspect: error [{}]: {}", e.cause(), vsplice_patcher::model::chain(&e));
            std::process::ExitCode::FAILURE
        }
    }
}
