//! Named checks that collect failures instead of stopping at the first, so
//! that one guest boot reports everything that is wrong with it.

/// `Ok` when `cond`, else `Err(msg())`.
pub fn ensure(cond: bool, msg: impl FnOnce() -> String) -> Result<(), String> {
    if cond {
        Ok(())
    } else {
        Err(msg())
    }
}

/// Prints one named check's outcome and records a failure in `failures`.
pub fn check(failures: &mut Vec<String>, name: &str, r: Result<(), String>) {
    match r {
        Ok(()) => eprintln!("  ok      {name}"),
        Err(e) => {
            eprintln!("  FAILED  {name}: {e}");
            failures.push(format!("{name}: {e}"));
        }
    }
}
