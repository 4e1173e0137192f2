//! Loading a plan file: parse (serde, unknown keys refused), then validate every reference and
//! window, collecting every error with the file, line and key it concerns.
//!
//! Errors make a plan unusable; warnings (overlapping phases) are reported and the plan loads.
//! The document's own data is never corrected here: a defect becomes a warning, not a fix.

use std::fmt;

use super::check::Checker;
pub use super::diagnostic::Diagnostic;
use super::diagnostic::LineIndex;
use super::model::Plan;
use super::raw::RawPlanFile;

/// The plan embedded in the binary: Qingdao, 2017–2020.
pub const EMBEDDED_PLAN: &str = include_str!("../../../deploy/plans/qingdao-2017.toml");
/// How the embedded plan is named in messages.
pub const EMBEDDED_PLAN_NAME: &str = "<embedded deploy/plans/qingdao-2017.toml>";

/// Why a plan did not load: every error found, in file order.
#[derive(Debug, Clone, thiserror::Error)]
pub struct PlanErrors {
    pub errors: Vec<Diagnostic>,
}

impl fmt::Display for PlanErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.errors.len();
        writeln!(
            f,
            "plan has {count} error{}:",
            if count == 1 { "" } else { "s" }
        )?;
        for error in &self.errors {
            writeln!(f, "  {error}")?;
        }
        Ok(())
    }
}

/// A loaded plan and the warnings found while loading it.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub plan: Plan,
    pub warnings: Vec<Diagnostic>,
}

/// Loads the embedded Qingdao plan. It is checked by the test suite, so failure is a build bug.
pub fn embedded() -> Loaded {
    load_str(EMBEDDED_PLAN, EMBEDDED_PLAN_NAME).expect("the embedded plan is valid")
}

/// Reads and loads a plan file from disk.
pub fn load_file(path: &std::path::Path) -> Result<Loaded, PlanErrors> {
    let name = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => load_str(&text, &name),
        Err(e) => Err(PlanErrors {
            errors: vec![Diagnostic {
                file: name,
                line: None,
                key: "(file)".into(),
                message: format!("cannot read the plan file: {e}"),
            }],
        }),
    }
}

/// Parses and validates plan text. `file` names it in diagnostics.
pub fn load_str(text: &str, file: &str) -> Result<Loaded, PlanErrors> {
    let lines = LineIndex::new(text);
    let raw: RawPlanFile = toml::from_str(text).map_err(|e| PlanErrors {
        errors: vec![parse_diagnostic(&e, text, &lines, file)],
    })?;
    let mut checker = Checker {
        file,
        lines: &lines,
        errors: Vec::new(),
        warnings: Vec::new(),
    };
    let plan = checker.build(raw);
    match plan {
        Some(plan) if checker.errors.is_empty() => Ok(Loaded {
            plan,
            warnings: checker.warnings,
        }),
        _ => Err(PlanErrors {
            errors: checker.errors,
        }),
    }
}

fn parse_diagnostic(
    error: &toml::de::Error,
    text: &str,
    lines: &LineIndex,
    file: &str,
) -> Diagnostic {
    let span = error.span();
    let line = span.as_ref().map(|s| lines.line_of(s.start));
    // The key is the left-hand side of the offending line, where there is one.
    let key = line
        .and_then(|n| text.lines().nth(n - 1))
        .and_then(|l| l.split_once('='))
        .map(|(k, _)| k.trim().to_owned())
        .filter(|k| !k.is_empty() && !k.starts_with('['))
        .unwrap_or_else(|| "(syntax)".into());
    Diagnostic {
        file: file.to_owned(),
        line,
        key,
        message: error.message().trim().to_owned(),
    }
}
