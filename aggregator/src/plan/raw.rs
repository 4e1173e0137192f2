//! The plan file as written: serde types that mirror the TOML, with spans kept for messages.
//! Unknown keys are refused everywhere (`deny_unknown_fields`).

use serde::Deserialize;
use toml::Spanned;

use super::model::{Comparator, UnitKind};
use duban_proto::period::PeriodType;

pub(super) type Text = Spanned<String>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPlanFile {
    pub(super) plan: Spanned<RawPlanMeta>,
    #[serde(default)]
    pub(super) phase: Vec<Spanned<RawPhase>>,
    #[serde(default)]
    pub(super) unit: Vec<Spanned<RawUnit>>,
    #[serde(default)]
    pub(super) group: Vec<Spanned<RawGroup>>,
    #[serde(default)]
    pub(super) indicator: Vec<Spanned<RawIndicator>>,
    #[serde(default)]
    pub(super) task: Vec<Spanned<RawTask>>,
    #[serde(default)]
    pub(super) track: Vec<Spanned<RawTrack>>,
    pub(super) supervision: Option<Spanned<RawSupervision>>,
}

/// `[supervision]`: who decides, how long an acknowledgement quiets an alert, and the ladder.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSupervision {
    pub(super) office: Option<Text>,
    pub(super) quiet_days: Option<Spanned<i64>>,
    #[serde(default)]
    pub(super) escalation: Vec<Spanned<RawEscalation>>,
}

/// `[[supervision.escalation]]`: one rung of the ladder.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEscalation {
    pub(super) level: Spanned<i64>,
    pub(super) after_days: Spanned<i64>,
    pub(super) to: Vec<Text>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPlanMeta {
    pub(super) id: Text,
    pub(super) name: String,
    pub(super) document: Option<String>,
    pub(super) issued: Option<Text>,
    pub(super) time_zone: Option<Text>,
    pub(super) start: Text,
    pub(super) end: Text,
    pub(super) default_tolerance: Option<Spanned<f64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPhase {
    pub(super) id: Text,
    pub(super) section: String,
    pub(super) name: String,
    pub(super) start: Text,
    pub(super) end: Text,
    #[serde(default)]
    pub(super) concurrent: bool,
    pub(super) text: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUnit {
    pub(super) id: Text,
    pub(super) name: String,
    pub(super) kind: UnitKind,
    pub(super) parent: Option<Text>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGroup {
    pub(super) id: Text,
    pub(super) name: String,
    /// May be empty while members are unknown; an empty group cannot be a reporter.
    pub(super) members: Spanned<Vec<Text>>,
    pub(super) text: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIndicator {
    pub(super) id: Text,
    pub(super) section: Option<String>,
    pub(super) name: String,
    pub(super) measure: String,
    pub(super) comparator: Option<Comparator>,
    pub(super) target: Option<Spanned<f64>>,
    pub(super) target_max: Option<Spanned<f64>>,
    pub(super) baseline: Option<Spanned<f64>>,
    pub(super) target_date: Option<Text>,
    pub(super) period: PeriodType,
    pub(super) timely_days: Spanned<i64>,
    #[serde(default)]
    pub(super) reporters: Vec<Text>,
    pub(super) authoritative: Option<Text>,
    #[serde(default)]
    pub(super) lead_units: Vec<Text>,
    pub(super) tolerance: Option<Spanned<f64>>,
    pub(super) aggregation: Spanned<AggregationKind>,
    pub(super) numerator: Option<Text>,
    pub(super) denominator: Option<Text>,
    pub(super) scale: Option<Spanned<f64>>,
    pub(super) min: Option<Spanned<f64>>,
    pub(super) max: Option<Spanned<f64>>,
    pub(super) text: Option<String>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(super) enum AggregationKind {
    Sum,
    Latest,
    Ratio,
    Cumulative,
    AnnualAverage,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTask {
    pub(super) id: Text,
    pub(super) section: String,
    pub(super) title: String,
    #[serde(default)]
    pub(super) lead_units: Vec<Text>,
    #[serde(default)]
    pub(super) responsible_units: Vec<Text>,
    #[serde(default)]
    pub(super) by_division_of_duties: bool,
    pub(super) track: Option<Text>,
    pub(super) text: Option<String>,
    #[serde(default)]
    pub(super) milestone: Vec<Spanned<RawMilestone>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMilestone {
    pub(super) id: Text,
    pub(super) name: String,
    pub(super) start: Text,
    pub(super) end: Text,
    pub(super) tolerance: Option<Spanned<f64>>,
    /// The phase of the task's track this milestone was taken from: its leads then apply.
    pub(super) from_phase: Option<Text>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTrack {
    pub(super) id: Text,
    pub(super) section: String,
    pub(super) title: String,
    #[serde(default)]
    pub(super) lead_units: Vec<Text>,
    #[serde(default)]
    pub(super) partner_units: Vec<Text>,
    #[serde(default)]
    pub(super) phase: Vec<Spanned<RawTrackPhase>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTrackPhase {
    pub(super) id: Text,
    pub(super) name: String,
    pub(super) start: Option<Text>,
    pub(super) end: Text,
    pub(super) text: Option<String>,
    #[serde(default)]
    pub(super) lead_units: Vec<Text>,
    #[serde(default)]
    pub(super) partner_units: Vec<Text>,
    #[serde(default)]
    pub(super) goals: Vec<Spanned<RawGoal>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGoal {
    pub(super) indicator: Option<Text>,
    pub(super) comparator: Comparator,
    pub(super) target: Spanned<f64>,
    pub(super) target_max: Option<Spanned<f64>>,
    pub(super) text: Option<String>,
}
