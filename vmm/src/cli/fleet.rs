//! `vsplice fleet --journal PATH …`: roll a live patch out across many
//! guests through their API sockets (see [`crate::fleet`]). `plan` is a dry
//! run; `start` makes the rollout and runs it; `status` shows it (a table,
//! `--json`, or `--metrics` for Prometheus text); `pause`, `abort` and
//! `rollback` reach a running controller through the journal's control file
//! (or act at once when none runs); `resume` reconciles the journal with
//! every target's registry and goes on. Exit codes: 0 done (or paused, or
//! rolled back), 3 halted or aborted, 1 bad input or a journal that cannot
//! be used.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::patch::EXIT_REFUSED;
use super::run::EXIT_BAD_INPUT;
use crate::fleet::engine::{self, Controller, Finish};
use crate::fleet::inventory::Inventory;
use crate::fleet::journal::Journal;
use crate::fleet::metrics;
use crate::fleet::plan::{Plan, Rollout};
use crate::fleet::FleetError;

/// `vsplice fleet`.
#[derive(Debug, Args)]
pub struct FleetArgs {
    /// The rollout's journal: one redb file (created by `start`; beside it
    /// `PATH.control` for operator requests, `PATH.status.json` and
    /// `PATH.prom` written by the running controller), or etcd:
    /// `etcd://HOST:PORT[,HOST:PORT…]/PREFIX` (one controller at a time, by
    /// a lease; operator requests in `PREFIX/control`).
    #[arg(long, value_name = "PATH", global = true)]
    pub journal: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// With an etcd journal: the TTL in seconds of this controller's lease
    /// on the rollout's lock (kept alive every third of it). A killed
    /// controller blocks a standby this long; a controller cut off from
    /// etcd this long loses the lock and stops.
    #[arg(long, global = true, value_name = "SECONDS", default_value_t = crate::fleet::etcd::LEASE_TTL_S, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub lease_ttl: u64,
    /// What to do.
    #[command(subcommand)]
    pub command: FleetCommand,
}

/// The inventory and plan files.
#[derive(Debug, Args)]
pub struct PlanFiles {
    /// The inventory: a file `{"targets": [{"name", "api_sock", "labels":
    /// {"host": …}}]}`, or the store the VMMs registered themselves in
    /// (`vsplice run|attach --register`): `etcd://HOST:PORT[,HOST:PORT…][/PREFIX]`
    /// (default prefix `vsplice`) or `dir:/PATH`. A store is read once, when
    /// the rollout is made; entries left out (stale, malformed) are reported
    /// on stderr; a target whose registration goes before it is patched is
    /// reported `unreachable`.
    #[arg(long, value_name = "FILE|STORE")]
    pub inventory: PathBuf,
    /// The plan (JSON, or TOML when the name ends in `.toml`): patches, selector, canary, waves, parallelism, gates, failure budget.
    #[arg(long, value_name = "FILE")]
    pub plan: PathBuf,
}

/// `vsplice fleet` subcommands.
#[derive(Debug, Subcommand)]
pub enum FleetCommand {
    /// Dry run: ask every selected target what it runs; show which patch
    /// each gets, which wave it is in, and which are not touched (no
    /// journal needed, nothing patched).
    Plan(PlanFiles),
    /// Make the rollout (recorded in a new journal) and run it to its end,
    /// a halt, or an operator's pause/abort/rollback.
    Start(PlanFiles),
    /// The rollout's status: a table, `--json`, or `--metrics` (Prometheus text).
    Status {
        /// Prometheus text instead of the table.
        #[arg(long)]
        metrics: bool,
    },
    /// Pause after the targets in flight (`resume` goes on).
    Pause,
    /// Go on with a paused or interrupted rollout: every step a killed
    /// controller left open is closed with what the target's registry says,
    /// then the rollout runs on (no target is applied twice).
    Resume {
        /// Wait up to this many seconds for the controller holding the
        /// journal to end, or (etcd) for its lease to expire: a standby
        /// controller that takes over.
        #[arg(long, value_name = "SECONDS", default_value_t = 0)]
        wait: u64,
    },
    /// Stop after the targets in flight; nothing is reverted.
    Abort,
    /// Revert every target of the rollout whose registry has the patch.
    Rollback,
}

fn journal_arg(args: &FleetArgs) -> Result<&Path, FleetError> {
    args.journal.as_deref().ok_or_else(|| FleetError::invalid("--journal", "this command needs --journal PATH"))
}

/// Reads the inventory (a file or a store); the store's notes on stderr.
fn inventory(files: &PlanFiles) -> Result<Inventory, FleetError> {
    let (inv, notes) = Inventory::load_any(&files.inventory)?;
    for n in &notes {
        eprintln!("vsplice: fleet: inventory: {n}");
    }
    Ok(inv)
}

fn print_rollout(r: &Rollout, json: bool) {
    if json {
        println!("{}", serde_json::to_string_pretty(r).unwrap_or_default());
        return;
    }
    println!("patches:");
    for p in &r.patches {
        println!("  {}  build-id {}  {}{}", p.name, p.build_id, p.file.display(), if p.unsigned { "  (UNSIGNED)" } else { "" });
    }
    println!("waves: {} (wave c is the canary)", r.waves);
    for p in &r.targets {
        let wave = p.wave.map_or("-".into(), |w| if w == 0 { "c".into() } else { w.to_string() });
        let what = p.skip.clone().unwrap_or_else(|| p.patch.clone().unwrap_or_default());
        let from = p.target.origin.as_ref().map_or_else(|| "inventory file".to_owned(), ToString::to_string);
        println!("  {:<16} {:<10} wave {:>2}  {:<24} build-id {}  from {from}", p.target.name, p.target.labels.get(&r.plan.host_label).map_or("-", String::as_str), wave, what, p.build_id.as_deref().unwrap_or("-"));
    }
}

fn finished(f: Finish, json: bool, c: &Controller) -> ExitCode {
    if let Ok(steps) = c.journal().steps() {
        let st = metrics::status(c.rollout(), &steps);
        if json {
            println!("{}", serde_json::to_string_pretty(&st).unwrap_or_default());
        } else {
            print!("{}", metrics::table(&st));
        }
    }
    let (n, ns) = c.journal().write_stats();
    eprintln!("vsplice: fleet: rollout {}; journal: {n} records written, {:.3} ms each", f.name(), if n == 0 { 0.0 } else { ns as f64 / n as f64 / 1e6 });
    match f {
        Finish::Done | Finish::Paused | Finish::RolledBack => ExitCode::SUCCESS,
        Finish::Halted | Finish::Aborted => ExitCode::from(EXIT_REFUSED),
    }
}

fn status(journal: &Path, json: bool, prom: bool) -> Result<ExitCode, FleetError> {
    // Never creates a journal; waits out another reader, not a controller
    // (an etcd journal is read without its lock).
    let st = match Journal::open_reader(journal, std::time::Duration::from_millis(200)) {
        Ok(j) => {
            let rollout = j.rollout()?.ok_or_else(|| FleetError::NoRollout(journal.to_owned()))?;
            metrics::status(&rollout, &j.steps()?)
        }
        // A controller holds the journal: its last snapshot.
        Err(FleetError::Busy(_)) => {
            let mut p = journal.as_os_str().to_owned();
            p.push(if prom { ".prom" } else { ".status.json" });
            let p = PathBuf::from(p);
            let text = std::fs::read_to_string(&p).map_err(|source| FleetError::Read { path: p, source })?;
            if prom || json {
                print!("{text}");
                return Ok(ExitCode::SUCCESS);
            }
            let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| FleetError::invalid("status snapshot", e.to_string()))?;
            println!("rollout (controller running): {}", v["state"].as_str().unwrap_or("-"));
            for t in v["targets"].as_array().into_iter().flatten() {
                println!("  {:<16} {}", t["name"].as_str().unwrap_or("-"), t["status"].as_str().unwrap_or("-"));
            }
            return Ok(ExitCode::SUCCESS);
        }
        Err(e) => return Err(e),
    };
    if prom {
        print!("{}", metrics::prometheus(&st, None));
    } else if json {
        println!("{}", serde_json::to_string_pretty(&st).unwrap_or_default());
    } else {
        print!("{}", metrics::table(&st));
    }
    Ok(ExitCode::SUCCESS)
}

/// `pause` / `abort`: the running controller is told; with none, the journal records it.
fn control(journal: &Path, what: &str, f: Finish) -> Result<ExitCode, FleetError> {
    match Controller::open(journal) {
        Ok(c) => {
            c.set_state(f)?;
            eprintln!("vsplice: fleet: rollout {}", f.name());
            Ok(ExitCode::SUCCESS)
        }
        Err(FleetError::Busy(_)) => {
            engine::request(journal, what)?;
            eprintln!("vsplice: fleet: the running controller is asked to {what}");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Err(e),
    }
}

fn run_inner(args: &FleetArgs) -> Result<ExitCode, FleetError> {
    let json = args.json;
    crate::fleet::etcd::set_lease_ttl(args.lease_ttl);
    match &args.command {
        FleetCommand::Plan(files) => {
            let r = Controller::plan(&inventory(files)?, &Plan::load(&files.plan)?)?;
            print_rollout(&r, json);
            Ok(ExitCode::SUCCESS)
        }
        FleetCommand::Start(files) => {
            let (inv, plan) = (inventory(files)?, Plan::load(&files.plan)?);
            let c = Controller::start(journal_arg(args)?, &inv, &plan)?;
            let f = c.run()?;
            Ok(finished(f, json, &c))
        }
        FleetCommand::Resume { wait } => {
            let wait = std::time::Duration::from_secs(*wait).max(engine::HOLD_WAIT);
            let c = Controller::open_waiting(journal_arg(args)?, wait)?;
            let n = c.reconcile()?;
            if n > 0 {
                eprintln!("vsplice: fleet: {n} step(s) left open by the last controller reconciled with the targets' registries");
            }
            let f = c.run()?;
            Ok(finished(f, json, &c))
        }
        FleetCommand::Status { metrics } => status(journal_arg(args)?, json, *metrics),
        FleetCommand::Pause => control(journal_arg(args)?, "pause", Finish::Paused),
        FleetCommand::Abort => control(journal_arg(args)?, "abort", Finish::Aborted),
        FleetCommand::Rollback => match Controller::open(journal_arg(args)?) {
            Ok(c) => {
                c.reconcile()?;
                let f = c.rollback()?;
                Ok(finished(f, json, &c))
            }
            Err(FleetError::Busy(p)) => {
                engine::request(&p, "rollback")?;
                eprintln!("vsplice: fleet: the running controller is asked to roll back");
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => Err(e),
        },
    }
}

/// Runs `vsplice fleet`.
pub fn run(args: FleetArgs) -> ExitCode {
    match run_inner(&args) {
        Ok(code) => code,
        Err(e) => {
            super::report(&e, e.cause());
            ExitCode::from(EXIT_BAD_INPUT)
        }
    }
}
