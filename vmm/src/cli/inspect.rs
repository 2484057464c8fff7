//! `vsplice inspect`: what vsplice sees of a guest kernel, for humans
//! (tables) and machines (`--json`). The work is done by
//! `vsplice_patcher::inspect`; this file only runs it and reports errors.

use std::process::ExitCode;

use vsplice_patcher::inspect::{run_inspect, InspectArgs};

/// Runs `vsplice inspect`.
pub fn run(args: InspectArgs) -> ExitCode {
    let mut out = std::io::stdout().lock();
    match run_inspect(&args, &mut out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            super::report(&e, e.cause());
            ExitCode::FAILURE
        }
    }
}
