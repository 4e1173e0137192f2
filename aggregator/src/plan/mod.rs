//! The plan: format, loading and validation, and the `plan` commands' views. The file format is
//! documented in `docs/PLAN.md`; the default plan is `deploy/plans/qingdao-2017.toml`, embedded
//! in the binary.

mod check;
mod diagnostic;
mod load;
mod model;
mod raw;
pub mod show;

pub use duban_proto::period::{self, Period, PeriodType};
pub use load::{
    Diagnostic, EMBEDDED_PLAN, EMBEDDED_PLAN_NAME, Loaded, PlanErrors, embedded, load_file,
    load_str,
};
pub use model::*;
