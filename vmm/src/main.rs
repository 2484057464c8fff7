//! The `vsplice` binary.

fn main() -> std::process::ExitCode {
    vsplice_vmm::cli::main()
}
