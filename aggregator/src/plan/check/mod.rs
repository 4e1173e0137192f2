//! Validation of a parsed plan file: every reference, window, target and id, collecting every
//! error with its line and key. Warnings (overlapping phases) do not stop loading.

use std::collections::{HashMap, HashSet};
use std::ops::Range;

use jiff::civil::Date;
use toml::Spanned;

use super::diagnostic::{Diagnostic, LineIndex};
use super::model::*;
use super::raw::*;

mod indicators;
mod supervision;
mod tasks;

pub(super) struct Checker<'a> {
    pub(super) file: &'a str,
    pub(super) lines: &'a LineIndex,
    pub(super) errors: Vec<Diagnostic>,
    pub(super) warnings: Vec<Diagnostic>,
}

/// Which end of a month a "YYYY-MM" date means.
#[derive(Clone, Copy)]
enum MonthEnd {
    First,
    Last,
}

impl Checker<'_> {
    fn diagnostic(&self, span: Range<usize>, key: String, message: String) -> Diagnostic {
        Diagnostic {
            file: self.file.to_owned(),
            line: Some(self.lines.line_of(span.start)),
            key,
            message,
        }
    }

    fn error(&mut self, span: Range<usize>, key: impl Into<String>, message: impl Into<String>) {
        let d = self.diagnostic(span, key.into(), message.into());
        self.errors.push(d);
    }

    fn warn(&mut self, span: Range<usize>, key: impl Into<String>, message: impl Into<String>) {
        let d = self.diagnostic(span, key.into(), message.into());
        self.warnings.push(d);
    }

    fn check_id(&mut self, id: &Text, key: &str) {
        let ok = id
            .get_ref()
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && id
                .get_ref()
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && id.get_ref().len() <= 64;
        if !ok {
            self.error(
                id.span(),
                key,
                format!(
                    "id {:?} must be 1 to 64 of a-z, 0-9 and '-', starting with a letter or digit",
                    id.get_ref()
                ),
            );
        }
    }

    fn unique(&mut self, seen: &mut HashSet<String>, id: &Text, key: &str, what: &str) {
        if !seen.insert(id.get_ref().clone()) {
            self.error(
                id.span(),
                key,
                format!("duplicate {what} id {:?}", id.get_ref()),
            );
        }
    }

    fn date(&mut self, text: &Text, key: &str, end: MonthEnd) -> Option<Date> {
        let value = text.get_ref().as_str();
        let parsed = if value.len() == 7 {
            Date::strptime("%Y-%m-%d", format!("{value}-01"))
                .ok()
                .map(|d| match end {
                    MonthEnd::First => d,
                    MonthEnd::Last => d.last_of_month(),
                })
        } else {
            Date::strptime("%Y-%m-%d", value).ok()
        };
        if parsed.is_none() {
            self.error(
                text.span(),
                key,
                format!("{value:?} is not a date: expected \"YYYY-MM\" or \"YYYY-MM-DD\""),
            );
        }
        parsed
    }

    fn window(&mut self, start: &Text, end: &Text, key: &str) -> Option<Window> {
        let s = self.date(start, &format!("{key}.start"), MonthEnd::First);
        let e = self.date(end, &format!("{key}.end"), MonthEnd::Last);
        let (s, e) = (s?, e?);
        if e < s {
            self.error(
                end.span(),
                format!("{key}.end"),
                format!(
                    "ends ({}) before it starts ({})",
                    end.get_ref(),
                    start.get_ref()
                ),
            );
            return None;
        }
        Some(Window { start: s, end: e })
    }

    fn fraction(&mut self, value: &Option<Spanned<f64>>, key: &str, default: f64) -> f64 {
        match value {
            None => default,
            Some(v) if *v.get_ref() > 0.0 && *v.get_ref() <= 1.0 => *v.get_ref(),
            Some(v) => {
                self.error(
                    v.span(),
                    key,
                    format!(
                        "{} must be a fraction greater than 0 and at most 1",
                        v.get_ref()
                    ),
                );
                default
            }
        }
    }

    fn finite(&mut self, value: &Option<Spanned<f64>>, key: &str) -> Option<f64> {
        let v = value.as_ref()?;
        if v.get_ref().is_finite() {
            Some(*v.get_ref())
        } else {
            self.error(v.span(), key, "must be a finite number");
            None
        }
    }

    pub(super) fn build(&mut self, raw: RawPlanFile) -> Option<Plan> {
        let meta = raw.plan.get_ref();
        self.check_id(&meta.id, "plan.id");
        let window = self.window(&meta.start, &meta.end, "plan");
        let issued = meta
            .issued
            .as_ref()
            .and_then(|d| self.date(d, "plan.issued", MonthEnd::First));
        let time_zone = meta
            .time_zone
            .as_ref()
            .map(|t| t.get_ref().clone())
            .unwrap_or_else(|| "Asia/Shanghai".into());
        let tz = match jiff::tz::TimeZone::get(&time_zone) {
            Ok(tz) => Some(tz),
            Err(_) => {
                let span = meta
                    .time_zone
                    .as_ref()
                    .map(|t| t.span())
                    .unwrap_or(raw.plan.span());
                self.error(
                    span,
                    "plan.time_zone",
                    format!(
                        "{time_zone:?} is not an IANA time zone name such as \"Asia/Shanghai\""
                    ),
                );
                None
            }
        };
        let default_tolerance =
            self.fraction(&meta.default_tolerance, "plan.default_tolerance", 0.1);

        let phases = self.phases(&raw.phase);
        let (units, groups) = self.parties(&raw.unit, &raw.group);
        let party_ids: HashSet<&str> = units
            .iter()
            .map(|u| u.id.as_str())
            .chain(groups.iter().map(|g| g.id.as_str()))
            .collect();
        let party_ids: HashSet<String> = party_ids.into_iter().map(str::to_owned).collect();
        let group_members: HashMap<String, Vec<String>> = groups
            .iter()
            .map(|g| (g.id.clone(), g.members.clone()))
            .collect();

        let indicator_ids: HashSet<String> = raw
            .indicator
            .iter()
            .map(|i| i.get_ref().id.get_ref().clone())
            .collect();
        let indicators = self.indicators(
            &raw.indicator,
            &party_ids,
            &group_members,
            &indicator_ids,
            default_tolerance,
        );
        let track_ids: HashSet<String> = raw
            .track
            .iter()
            .map(|t| t.get_ref().id.get_ref().clone())
            .collect();
        let mut tasks = self.tasks(&raw.task, &party_ids, &track_ids, default_tolerance);
        let tracks = self.tracks(&raw.track, &indicator_ids, &party_ids);
        self.milestone_leads(&mut tasks, &tracks, &raw.task);
        let supervision = self.supervision(raw.supervision.as_ref(), &party_ids);

        let plan = Plan {
            id: meta.id.get_ref().clone(),
            name: meta.name.clone(),
            document: meta.document.clone(),
            issued,
            time_zone,
            tz: tz?,
            window: window?,
            default_tolerance,
            unit_index: index(&units, |u| &u.id),
            group_index: index(&groups, |g| &g.id),
            indicator_index: index(&indicators, |i| &i.id),
            task_index: index(&tasks, |t| &t.id),
            phases,
            units,
            groups,
            indicators,
            tasks,
            tracks,
            supervision,
        };
        Some(plan)
    }

    fn phases(&mut self, raw: &[Spanned<RawPhase>]) -> Vec<Phase> {
        let mut seen = HashSet::new();
        let mut out: Vec<(Phase, Range<usize>)> = Vec::new();
        for (n, entry) in raw.iter().enumerate() {
            let p = entry.get_ref();
            let key = format!("phase[{n}]");
            self.check_id(&p.id, &format!("{key}.id"));
            self.unique(&mut seen, &p.id, &format!("{key}.id"), "phase");
            let Some(window) =
                self.window(&p.start, &p.end, &format!("phase {:?}", p.id.get_ref()))
            else {
                continue;
            };
            let phase = Phase {
                id: p.id.get_ref().clone(),
                section: p.section.clone(),
                name: p.name.clone(),
                window,
                concurrent: p.concurrent,
                text: p.text.clone(),
            };
            out.push((phase, entry.span()));
        }
        for i in 0..out.len() {
            for j in i + 1..out.len() {
                let (a, b) = (&out[i].0, &out[j].0);
                if !a.concurrent && !b.concurrent && a.window.overlaps(&b.window) {
                    let span = out[j].1.clone();
                    let message = format!(
                        "overlaps phase {:?} ({} {}..{}); mark one `concurrent = true` if that is intended",
                        a.id, a.name, a.window.start, a.window.end
                    );
                    self.warn(span, format!("phase {:?} ({})", b.id, b.name), message);
                }
            }
        }
        out.into_iter().map(|(p, _)| p).collect()
    }

    fn parties(
        &mut self,
        raw_units: &[Spanned<RawUnit>],
        raw_groups: &[Spanned<RawGroup>],
    ) -> (Vec<Unit>, Vec<Group>) {
        let mut seen = HashSet::new();
        let unit_ids: HashSet<String> = raw_units
            .iter()
            .map(|u| u.get_ref().id.get_ref().clone())
            .collect();
        let mut units = Vec::new();
        for entry in raw_units {
            let u = entry.get_ref();
            let key = format!("unit {:?}", u.id.get_ref());
            self.check_id(&u.id, &format!("{key}.id"));
            self.unique(&mut seen, &u.id, &format!("{key}.id"), "unit or group");
            if let Some(parent) = &u.parent {
                if !unit_ids.contains(parent.get_ref()) {
                    self.error(
                        parent.span(),
                        format!("{key}.parent"),
                        format!("unit {:?} is not defined", parent.get_ref()),
                    );
                } else if parent.get_ref() == u.id.get_ref() {
                    self.error(
                        parent.span(),
                        format!("{key}.parent"),
                        "a unit cannot be its own parent",
                    );
                }
            }
            units.push(Unit {
                id: u.id.get_ref().clone(),
                name: u.name.clone(),
                kind: u.kind,
                parent: u.parent.as_ref().map(|p| p.get_ref().clone()),
            });
        }
        let mut groups = Vec::new();
        for entry in raw_groups {
            let g = entry.get_ref();
            let key = format!("group {:?}", g.id.get_ref());
            self.check_id(&g.id, &format!("{key}.id"));
            self.unique(&mut seen, &g.id, &format!("{key}.id"), "unit or group");
            for (n, member) in g.members.get_ref().iter().enumerate() {
                if !unit_ids.contains(member.get_ref()) {
                    self.error(
                        member.span(),
                        format!("{key}.members[{n}]"),
                        format!(
                            "unit {:?} is not defined (members must be units, not groups)",
                            member.get_ref()
                        ),
                    );
                }
            }
            groups.push(Group {
                id: g.id.get_ref().clone(),
                name: g.name.clone(),
                members: g
                    .members
                    .get_ref()
                    .iter()
                    .map(|m| m.get_ref().clone())
                    .collect(),
                text: g.text.clone(),
            });
        }
        (units, groups)
    }

    fn references(&mut self, list: &[Text], key: &str, parties: &HashSet<String>) -> Vec<String> {
        let mut seen = HashSet::new();
        for (n, id) in list.iter().enumerate() {
            if !parties.contains(id.get_ref()) {
                self.error(
                    id.span(),
                    format!("{key}[{n}]"),
                    format!("unit or group {:?} is not defined", id.get_ref()),
                );
            } else if !seen.insert(id.get_ref().as_str()) {
                self.error(
                    id.span(),
                    format!("{key}[{n}]"),
                    format!("{:?} is listed twice", id.get_ref()),
                );
            }
        }
        list.iter().map(|t| t.get_ref().clone()).collect()
    }
}

fn index<T>(items: &[T], id: impl Fn(&T) -> &String) -> HashMap<String, usize> {
    items
        .iter()
        .enumerate()
        .map(|(i, item)| (id(item).clone(), i))
        .collect()
}
