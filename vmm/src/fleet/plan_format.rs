//! How a plan file is written: JSON, or TOML when its name ends in
//! `.toml` (chosen by the name, never guessed from the text); both give
//! the same [`Plan`](super::plan::Plan), checked by the same rules.

use std::path::Path;

use serde::de::DeserializeOwned;

/// How a plan file is written, chosen by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlanFormat {
    /// JSON (any name not ending in `.toml`).
    Json,
    /// TOML (`*.toml`, any case).
    Toml,
}

impl PlanFormat {
    /// TOML for a name ending in `.toml`, JSON otherwise.
    pub fn of(path: &Path) -> Self {
        match path.extension() {
            Some(e) if e.eq_ignore_ascii_case("toml") => Self::Toml,
            _ => Self::Json,
        }
    }

    /// Parses `bytes` in this format (the error is the parser's message).
    pub fn parse<T: DeserializeOwned>(self, bytes: &[u8]) -> Result<T, String> {
        match self {
            Self::Json => serde_json::from_slice(bytes).map_err(|e| e.to_string()),
            Self::Toml => {
                let text = std::str::from_utf8(bytes).map_err(|e| format!("TOML must be UTF-8: {e}"))?;
                toml::from_str(text).map_err(|e| e.to_string())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::path::PathBuf;

    use super::*;
    use crate::fleet::plan::{OnHalt, Plan, WaveSize};

    #[test]
    fn a_toml_plan_is_the_same_plan_as_its_json() {
        let json = r#"{"patches":["a.vsp","b.vsp"],"selector":{"zone":"eu"},"canary":{"count":1,"soak_ms":5000},
            "waves":[2,"50%","100%"],"soak_ms":1000,"parallelism":4,"per_host":2,"pause_ms":10,
            "gates":{"console":false,"probe":["/bin/check","-q"],"probe_timeout_ms":500},
            "failure_budget":1,"on_halt":"revert_all","attempts":3,"allow_unsigned":true}"#;
        let toml = r#"
            patches = ["a.vsp", "b.vsp"]
            waves = [2, "50%", "100%"]
            soak_ms = 1000
            parallelism = 4
            per_host = 2
            pause_ms = 10
            failure_budget = 1
            on_halt = "revert_all"
            attempts = 3
            allow_unsigned = true
            [selector]
            zone = "eu"
            [canary]
            count = 1
            soak_ms = 5000
            [gates]
            console = false
            probe = ["/bin/check", "-q"]
            probe_timeout_ms = 500
        "#;
        let from_json = Plan::parse(json.as_bytes(), PlanFormat::Json).unwrap();
        let from_toml = Plan::parse(toml.as_bytes(), PlanFormat::Toml).unwrap();
        assert_eq!(from_toml, from_json);
        assert_eq!(from_toml.waves, [WaveSize::Count(2), WaveSize::Percent("50%".into()), WaveSize::Percent("100%".into())]);
        assert_eq!((from_toml.on_halt, from_toml.gates.console), (OnHalt::RevertAll, false));
        // The same rules: unknown keys, bad values and bad bytes are refused with a reason.
        assert!(Plan::parse(b"patches = [\"a\"]\nparalelism = 2\n", PlanFormat::Toml).unwrap_err().contains("paralelism"));
        assert!(Plan::parse(b"patches = \"a\"\n", PlanFormat::Toml).is_err());
        assert!(Plan::parse(b"patches = [\"a\"\n", PlanFormat::Toml).is_err());
        assert!(Plan::parse(b"patches = [\"\xff\"]\n", PlanFormat::Toml).unwrap_err().contains("UTF-8"));
        assert!(Plan::parse(toml.as_bytes(), PlanFormat::Json).is_err(), "the format is the name's, not guessed");
        // Chosen by the file's extension.
        assert_eq!(PlanFormat::of(Path::new("dir/plan.toml")), PlanFormat::Toml);
        assert_eq!(PlanFormat::of(Path::new("plan.TOML")), PlanFormat::Toml);
        assert_eq!(PlanFormat::of(Path::new("plan.json")), PlanFormat::Json);
        assert_eq!(PlanFormat::of(Path::new("plan")), PlanFormat::Json);
        assert_eq!(PlanFormat::of(Path::new("toml")), PlanFormat::Json);
    }

    #[test]
    fn a_toml_plan_file_is_loaded_by_its_name_with_paths_relative_to_it() {
        let dir = std::env::temp_dir().join(format!("vsplice-plan-toml-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("plan.toml");
        std::fs::write(&p, "patches = [\"fix.vsp\", \"/abs/other.vsp\"]\nparallelism = 2\n").unwrap();
        let plan = Plan::load(&p).unwrap();
        assert_eq!(plan.patches, [dir.join("fix.vsp"), PathBuf::from("/abs/other.vsp")]);
        assert_eq!(plan.parallelism, 2);
        // The same text named .json is not JSON.
        let j = dir.join("plan.json");
        std::fs::write(&j, std::fs::read(&p).unwrap()).unwrap();
        assert_eq!(Plan::load(&j).unwrap_err().cause(), "fleet_invalid");
        // Checked as a JSON plan is.
        std::fs::write(&p, "patches = []\n").unwrap();
        assert_eq!(Plan::load(&p).unwrap_err().cause(), "fleet_invalid");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
