//! The validated plan: what every report is checked against and every deadline comes from.
//!
//! Invariants established by the loader (see `load.rs`) and relied on everywhere else:
//! every id is unique within its kind (units and groups share one namespace); every reference
//! names something that exists; every window ends on or after its start; an indicator with a
//! target has a comparator and a target date; a ratio names two other indicators and has no
//! reporters; every other indicator has at least one reporter.

use std::collections::{BTreeSet, HashMap};

use jiff::civil::Date;
use serde::Serialize;

use duban_proto::period::{Period, PeriodType};

#[derive(Debug, Clone)]
pub struct Plan {
    pub id: String,
    pub name: String,
    pub document: Option<String>,
    pub issued: Option<Date>,
    pub time_zone: String,
    pub tz: jiff::tz::TimeZone,
    pub window: Window,
    pub default_tolerance: f64,
    pub phases: Vec<Phase>,
    pub units: Vec<Unit>,
    pub groups: Vec<Group>,
    pub indicators: Vec<Indicator>,
    pub tasks: Vec<Task>,
    pub tracks: Vec<Track>,
    pub supervision: Supervision,
    pub(super) unit_index: HashMap<String, usize>,
    pub(super) group_index: HashMap<String, usize>,
    pub(super) indicator_index: HashMap<String, usize>,
    pub(super) task_index: HashMap<String, usize>,
}

/// Who supervises the plan (`[supervision]`, docs/PLAN.md): the office that decides extensions
/// and confirms completion, how long an acknowledgement quiets an alert, and the escalation
/// ladder above the lead units (level 1).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Supervision {
    /// The supervising office; `None`: nobody may decide, and no alert is routed to an office.
    pub office: Option<String>,
    /// Days an acknowledged alert is not re-notified.
    pub quiet_days: i64,
    /// Levels 2, 3, … in order: after how many days past the deadline without a resolution,
    /// and to whom (units or groups) an alert escalates.
    pub ladder: Vec<EscalationLevel>,
}

/// One rung of the escalation ladder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EscalationLevel {
    pub level: u32,
    pub after_days: i64,
    pub to: Vec<String>,
}

/// Days an acknowledged alert stays quiet where the plan says nothing.
pub const DEFAULT_QUIET_DAYS: i64 = 3;

impl Supervision {
    /// The escalation level of something `days_late` past its deadline: 1 (the lead units)
    /// until the first rung's `after_days`, then the highest rung reached.
    pub fn level_after(&self, days_late: i64) -> u32 {
        self.ladder
            .iter()
            .filter(|l| days_late >= l.after_days)
            .map(|l| l.level)
            .max()
            .unwrap_or(1)
    }
}

/// A closed range of civil dates in the plan's time zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Window {
    pub start: Date,
    pub end: Date,
}

impl Window {
    pub fn contains(&self, date: Date) -> bool {
        self.start <= date && date <= self.end
    }

    pub fn overlaps(&self, other: &Window) -> bool {
        self.start <= other.end && other.start <= self.end
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    pub id: String,
    pub section: String,
    pub name: String,
    pub window: Window,
    pub concurrent: bool,
    pub text: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnitKind {
    District,
    Department,
    Other,
}

#[derive(Debug, Clone, Serialize)]
pub struct Unit {
    pub id: String,
    pub name: String,
    pub kind: UnitKind,
    pub parent: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Group {
    pub id: String,
    pub name: String,
    pub members: Vec<String>,
    pub text: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub enum Comparator {
    #[serde(rename = ">=")]
    AtLeast,
    #[serde(rename = ">")]
    MoreThan,
    #[serde(rename = "<=")]
    AtMost,
    #[serde(rename = "<")]
    LessThan,
    /// 左右: within the tolerance either side of the target.
    #[serde(rename = "about")]
    About,
    /// From `target` to `target_max` inclusive (e.g. 1至2个).
    #[serde(rename = "between")]
    Between,
}

impl Comparator {
    pub fn symbol(self) -> &'static str {
        match self {
            Comparator::AtLeast => ">=",
            Comparator::MoreThan => ">",
            Comparator::AtMost => "<=",
            Comparator::LessThan => "<",
            Comparator::About => "about",
            Comparator::Between => "between",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub comparator: Comparator,
    pub value: f64,
    pub value_max: Option<f64>,
    pub date: Date,
}

impl Target {
    /// Whether `value` meets the target; `tolerance` is the fraction used by `about`. Above
    /// an `about` or `between` range is met too: building 170 service agencies where the plan
    /// says "about 150" is not a failure ([`Target::above_range`] says so).
    pub fn is_met_by(&self, value: f64, tolerance: f64) -> bool {
        match self.comparator {
            Comparator::AtLeast => value >= self.value,
            Comparator::MoreThan => value > self.value,
            Comparator::AtMost => value <= self.value,
            Comparator::LessThan => value < self.value,
            Comparator::About => value >= self.value - self.value.abs() * tolerance,
            Comparator::Between => value >= self.value,
        }
    }

    /// Whether `value` lies above an `about` or `between` range (met, with a note).
    pub fn above_range(&self, value: f64, tolerance: f64) -> bool {
        match self.comparator {
            Comparator::About => value > self.value + self.value.abs() * tolerance,
            Comparator::Between => value > self.value_max.unwrap_or(self.value),
            _ => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Aggregation {
    Sum,
    Latest,
    Ratio {
        numerator: String,
        denominator: String,
        scale: f64,
    },
    Cumulative,
    AnnualAverage,
}

#[derive(Debug, Clone, Serialize)]
pub struct Indicator {
    pub id: String,
    pub section: Option<String>,
    pub name: String,
    pub measure: String,
    pub target: Option<Target>,
    pub baseline: Option<f64>,
    pub period: PeriodType,
    pub timely_days: u32,
    /// As written in the plan: unit and group ids.
    pub reporters: Vec<String>,
    /// `reporters` with groups expanded to their member units, without repeats, in order.
    pub reporter_units: Vec<String>,
    pub authoritative: Option<String>,
    pub lead_units: Vec<String>,
    pub tolerance: f64,
    pub aggregation: Aggregation,
    pub min: f64,
    pub max: Option<f64>,
    pub text: Option<String>,
}

impl Indicator {
    pub fn accepts_value(&self, value: f64) -> bool {
        value.is_finite() && value >= self.min && self.max.is_none_or(|max| value <= max)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Task {
    pub id: String,
    pub section: String,
    pub title: String,
    /// 牵头单位 as written; empty where the document names none.
    pub lead_units: Vec<String>,
    /// 责任单位 as written; groups stay groups.
    pub responsible_units: Vec<String>,
    /// The document says 按职责分工负责 (each by its own duties) instead of naming a lead.
    pub by_division_of_duties: bool,
    pub track: Option<String>,
    pub text: Option<String>,
    pub milestones: Vec<Milestone>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Milestone {
    pub id: String,
    pub name: String,
    pub window: Window,
    pub tolerance: f64,
    /// The phase of the task's track this milestone was taken from, if any.
    pub from_phase: Option<String>,
    /// Who leads this milestone where it is not the task's lead units: the lead units of the
    /// track phase (or track) it was taken from. Empty: the task's.
    pub lead_units: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Track {
    pub id: String,
    pub section: String,
    pub title: String,
    /// 牵头 as the track's text names it; empty where it names none.
    pub lead_units: Vec<String>,
    /// 会同: the units the lead works with.
    pub partner_units: Vec<String>,
    pub phases: Vec<TrackPhase>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TrackPhase {
    pub id: String,
    pub name: String,
    /// `None` where the document gives no start (e.g. "2017年8月以前").
    pub start: Option<Date>,
    pub end: Date,
    pub text: Option<String>,
    /// A phase's own lead and partner units, where it names them (else the track's).
    pub lead_units: Vec<String>,
    pub partner_units: Vec<String>,
    pub goals: Vec<Goal>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Goal {
    pub indicator: Option<String>,
    pub comparator: Comparator,
    pub target: f64,
    pub target_max: Option<f64>,
    pub text: Option<String>,
}

impl Plan {
    pub fn unit(&self, id: &str) -> Option<&Unit> {
        self.unit_index.get(id).map(|&i| &self.units[i])
    }

    pub fn group(&self, id: &str) -> Option<&Group> {
        self.group_index.get(id).map(|&i| &self.groups[i])
    }

    pub fn indicator(&self, id: &str) -> Option<&Indicator> {
        self.indicator_index.get(id).map(|&i| &self.indicators[i])
    }

    pub fn task(&self, id: &str) -> Option<&Task> {
        self.task_index.get(id).map(|&i| &self.tasks[i])
    }

    /// The display name of a unit or group id.
    pub fn party_name<'a>(&'a self, id: &'a str) -> &'a str {
        self.unit(id)
            .map(|u| u.name.as_str())
            .or_else(|| self.group(id).map(|g| g.name.as_str()))
            .unwrap_or(id)
    }

    /// Unit and group ids expanded to unit ids, without repeats, in order.
    pub fn expand_parties(&self, ids: &[String]) -> Vec<String> {
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for id in ids {
            let members: Vec<&String> = match self.group(id) {
                Some(group) => group.members.iter().collect(),
                None => vec![id],
            };
            for member in members {
                if seen.insert(member.clone()) {
                    out.push(member.clone());
                }
            }
        }
        out
    }

    pub fn is_reporter(&self, unit_id: &str, indicator: &Indicator) -> bool {
        indicator.reporter_units.iter().any(|u| u == unit_id)
    }

    /// Whether the unit is a lead or responsible unit of the task, directly or through a group.
    pub fn is_task_party(&self, unit_id: &str, task: &Task) -> bool {
        task.lead_units
            .iter()
            .chain(&task.responsible_units)
            .any(|party| {
                party == unit_id
                    || self
                        .group(party)
                        .is_some_and(|g| g.members.iter().any(|m| m == unit_id))
            })
    }

    /// Whether a period overlaps the plan's window.
    pub fn period_in_plan(&self, period: &Period) -> bool {
        self.window.overlaps(&Window {
            start: period.first_day(),
            end: period.last_day(),
        })
    }

    /// Units that report at least one indicator, in plan order.
    pub fn reporting_units(&self) -> Vec<&Unit> {
        let reporters: std::collections::HashSet<&str> = self
            .indicators
            .iter()
            .flat_map(|i| i.reporter_units.iter().map(String::as_str))
            .collect();
        self.units
            .iter()
            .filter(|u| reporters.contains(u.id.as_str()))
            .collect()
    }
}
