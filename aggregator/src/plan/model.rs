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
    pub(super) unit_index: HashMap<String, usize>,
    pub(super) group_index: HashMap<String, usize>,
    pub(super) indicator_index: HashMap<String, usize>,
    pub(super) task_index: HashMap<String, usize>,
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
    /// Whether `value` meets the target; `tolerance` is the fraction used by `about`.
    pub fn is_met_by(&self, value: f64, tolerance: f64) -> bool {
        match self.comparator {
            Comparator::AtLeast => value >= self.value,
            Comparator::MoreThan => value > self.value,
            Comparator::AtMost => value <= self.value,
            Comparator::LessThan => value < self.value,
            Comparator::About => (value - self.value).abs() <= self.value.abs() * tolerance,
            Comparator::Between => {
                value >= self.value && value <= self.value_max.unwrap_or(self.value)
            }
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
}

#[derive(Debug, Clone, Serialize)]
pub struct Track {
    pub id: String,
    pub section: String,
    pub title: String,
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
        self.units
            .iter()
            .filter(|u| self.indicators.iter().any(|i| self.is_reporter(&u.id, i)))
            .collect()
    }
}
