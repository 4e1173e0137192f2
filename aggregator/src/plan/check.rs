//! Validation of a parsed plan file: every reference, window, target and id, collecting every
//! error with its line and key. Warnings (overlapping phases) do not stop loading.

use std::collections::{HashMap, HashSet};
use std::ops::Range;

use jiff::civil::Date;
use toml::Spanned;

use super::load::{Diagnostic, LineIndex};
use super::model::*;
use super::raw::*;

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
        let tasks = self.tasks(&raw.task, &party_ids, &track_ids, default_tolerance);
        let tracks = self.tracks(&raw.track, &indicator_ids);

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

    fn indicators(
        &mut self,
        raw: &[Spanned<RawIndicator>],
        parties: &HashSet<String>,
        group_members: &HashMap<String, Vec<String>>,
        indicator_ids: &HashSet<String>,
        default_tolerance: f64,
    ) -> Vec<Indicator> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for entry in raw {
            let r = entry.get_ref();
            let key = format!("indicator {:?}", r.id.get_ref());
            self.check_id(&r.id, &format!("{key}.id"));
            self.unique(&mut seen, &r.id, &format!("{key}.id"), "indicator");
            let reporters = self.references(&r.reporters, &format!("{key}.reporters"), parties);
            for (n, reporter) in r.reporters.iter().enumerate() {
                if group_members
                    .get(reporter.get_ref())
                    .is_some_and(Vec::is_empty)
                {
                    self.error(
                        reporter.span(),
                        format!("{key}.reporters[{n}]"),
                        format!(
                            "group {:?} is empty, so nobody could report",
                            reporter.get_ref()
                        ),
                    );
                }
            }
            let lead_units = self.references(&r.lead_units, &format!("{key}.lead_units"), parties);
            let mut reporter_units = Vec::new();
            for id in &reporters {
                for unit in group_members
                    .get(id)
                    .cloned()
                    .unwrap_or_else(|| vec![id.clone()])
                {
                    if !reporter_units.contains(&unit) {
                        reporter_units.push(unit);
                    }
                }
            }
            let target = self.target(r, &key);
            let aggregation = self.aggregation(r, &key, indicator_ids);
            let is_ratio = *r.aggregation.get_ref() == AggregationKind::Ratio;
            if is_ratio {
                if let Some(first) = r.reporters.first() {
                    self.error(first.span(), format!("{key}.reporters"), "a ratio is computed from its numerator and denominator; it has no reporters");
                }
            } else if r.reporters.is_empty() {
                self.error(
                    r.id.span(),
                    format!("{key}.reporters"),
                    "at least one reporting unit or group is required",
                );
            }
            if let Some(auth) = &r.authoritative {
                if is_ratio {
                    self.error(
                        auth.span(),
                        format!("{key}.authoritative"),
                        "a ratio has no reporters, so no authoritative reporter",
                    );
                } else if !reporter_units.contains(auth.get_ref()) {
                    self.error(
                        auth.span(),
                        format!("{key}.authoritative"),
                        format!("{:?} is not one of the reporters", auth.get_ref()),
                    );
                }
            }
            let timely_days = *r.timely_days.get_ref();
            if !(0..=366).contains(&timely_days) {
                self.error(
                    r.timely_days.span(),
                    format!("{key}.timely_days"),
                    format!("{timely_days} must be from 0 to 366 days"),
                );
            }
            let min = self.finite(&r.min, &format!("{key}.min")).unwrap_or(0.0);
            let max = self.finite(&r.max, &format!("{key}.max"));
            if let (Some(max), Some(span)) = (max, r.max.as_ref().map(Spanned::span))
                && max < min
            {
                self.error(
                    span,
                    format!("{key}.max"),
                    format!("max {max} is below min {min}"),
                );
            }
            let baseline = self.finite(&r.baseline, &format!("{key}.baseline"));
            let tolerance =
                self.fraction(&r.tolerance, &format!("{key}.tolerance"), default_tolerance);
            let Some(aggregation) = aggregation else {
                continue;
            };
            out.push(Indicator {
                id: r.id.get_ref().clone(),
                section: r.section.clone(),
                name: r.name.clone(),
                measure: r.measure.clone(),
                target,
                baseline,
                period: r.period,
                timely_days: timely_days.clamp(0, 366) as u32,
                reporters,
                reporter_units,
                authoritative: r.authoritative.as_ref().map(|a| a.get_ref().clone()),
                lead_units,
                tolerance,
                aggregation,
                min,
                max,
                text: r.text.clone(),
            });
        }
        out
    }

    fn target(&mut self, r: &RawIndicator, key: &str) -> Option<Target> {
        let value = self.finite(&r.target, &format!("{key}.target"));
        let value_max = self.finite(&r.target_max, &format!("{key}.target_max"));
        match (r.comparator, value) {
            (None, None) => {
                for (present, name) in [
                    (r.target_max.is_some(), "target_max"),
                    (r.target_date.is_some(), "target_date"),
                ] {
                    if present {
                        self.error(
                            r.id.span(),
                            format!("{key}.{name}"),
                            "only allowed together with target and comparator",
                        );
                    }
                }
                None
            }
            (None, Some(_)) => {
                self.error(r.target.as_ref().map(Spanned::span).unwrap_or(r.id.span()), format!("{key}.comparator"), "a target needs a comparator (\">=\", \">\", \"<=\", \"<\", \"about\" or \"between\")");
                None
            }
            (Some(_), None) => {
                if r.target.is_none() {
                    self.error(
                        r.id.span(),
                        format!("{key}.target"),
                        "a comparator needs a numeric target",
                    );
                }
                None
            }
            (Some(comparator), Some(value)) => {
                let date = match &r.target_date {
                    Some(d) => self.date(d, &format!("{key}.target_date"), MonthEnd::Last),
                    None => {
                        self.error(
                            r.id.span(),
                            format!("{key}.target_date"),
                            "a target needs a target_date (\"YYYY-MM\" or \"YYYY-MM-DD\")",
                        );
                        None
                    }
                };
                self.range_bound(
                    comparator,
                    value,
                    value_max,
                    r.target_max.as_ref(),
                    r.id.span(),
                    key,
                );
                Some(Target {
                    comparator,
                    value,
                    value_max,
                    date: date?,
                })
            }
        }
    }

    fn range_bound(
        &mut self,
        comparator: Comparator,
        value: f64,
        value_max: Option<f64>,
        max_span: Option<&Spanned<f64>>,
        fallback: Range<usize>,
        key: &str,
    ) {
        match (comparator, value_max) {
            (Comparator::Between, None) => self.error(
                fallback,
                format!("{key}.target_max"),
                "comparator \"between\" needs target_max",
            ),
            (Comparator::Between, Some(max)) if max < value => self.error(
                max_span.map(Spanned::span).unwrap_or(fallback),
                format!("{key}.target_max"),
                format!("{max} is below target {value}"),
            ),
            (Comparator::Between, Some(_)) => {}
            (_, Some(_)) => self.error(
                max_span.map(Spanned::span).unwrap_or(fallback),
                format!("{key}.target_max"),
                "only allowed with comparator \"between\"",
            ),
            (_, None) => {}
        }
    }

    fn aggregation(
        &mut self,
        r: &RawIndicator,
        key: &str,
        indicator_ids: &HashSet<String>,
    ) -> Option<Aggregation> {
        let kind = *r.aggregation.get_ref();
        if kind != AggregationKind::Ratio {
            for (field, name) in [(&r.numerator, "numerator"), (&r.denominator, "denominator")] {
                if let Some(f) = field {
                    self.error(
                        f.span(),
                        format!("{key}.{name}"),
                        "only allowed with aggregation = \"ratio\"",
                    );
                }
            }
            if let Some(s) = &r.scale {
                self.error(
                    s.span(),
                    format!("{key}.scale"),
                    "only allowed with aggregation = \"ratio\"",
                );
            }
        }
        Some(match kind {
            AggregationKind::Sum => Aggregation::Sum,
            AggregationKind::Latest => Aggregation::Latest,
            AggregationKind::Cumulative => Aggregation::Cumulative,
            AggregationKind::AnnualAverage => Aggregation::AnnualAverage,
            AggregationKind::Ratio => {
                let mut part = |field: &Option<Text>, name: &str| -> Option<String> {
                    match field {
                        None => {
                            self.error(
                                r.aggregation.span(),
                                format!("{key}.{name}"),
                                format!("a ratio needs a {name} indicator"),
                            );
                            None
                        }
                        Some(id) if !indicator_ids.contains(id.get_ref()) => {
                            self.error(
                                id.span(),
                                format!("{key}.{name}"),
                                format!("indicator {:?} is not defined", id.get_ref()),
                            );
                            None
                        }
                        Some(id) if id.get_ref() == r.id.get_ref() => {
                            self.error(
                                id.span(),
                                format!("{key}.{name}"),
                                "a ratio cannot use itself",
                            );
                            None
                        }
                        Some(id) => Some(id.get_ref().clone()),
                    }
                };
                let numerator = part(&r.numerator, "numerator");
                let denominator = part(&r.denominator, "denominator");
                let scale = match &r.scale {
                    None => 1.0,
                    Some(s) if s.get_ref().is_finite() && *s.get_ref() > 0.0 => *s.get_ref(),
                    Some(s) => {
                        self.error(
                            s.span(),
                            format!("{key}.scale"),
                            "must be a finite number greater than 0",
                        );
                        1.0
                    }
                };
                Aggregation::Ratio {
                    numerator: numerator?,
                    denominator: denominator?,
                    scale,
                }
            }
        })
    }

    fn tasks(
        &mut self,
        raw: &[Spanned<RawTask>],
        parties: &HashSet<String>,
        track_ids: &HashSet<String>,
        default_tolerance: f64,
    ) -> Vec<Task> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for entry in raw {
            let t = entry.get_ref();
            let key = format!("task {:?}", t.id.get_ref());
            self.check_id(&t.id, &format!("{key}.id"));
            self.unique(&mut seen, &t.id, &format!("{key}.id"), "task");
            let lead_units = self.references(&t.lead_units, &format!("{key}.lead_units"), parties);
            let responsible_units = self.references(
                &t.responsible_units,
                &format!("{key}.responsible_units"),
                parties,
            );
            if lead_units.is_empty() && responsible_units.is_empty() {
                self.error(
                    t.id.span(),
                    format!("{key}.lead_units"),
                    "a task needs at least one lead or responsible unit",
                );
            }
            if let Some(track) = &t.track
                && !track_ids.contains(track.get_ref())
            {
                self.error(
                    track.span(),
                    format!("{key}.track"),
                    format!("track {:?} is not defined", track.get_ref()),
                );
            }
            if t.milestone.is_empty() {
                self.error(
                    t.id.span(),
                    format!("{key}.milestone"),
                    "a task needs at least one [[task.milestone]] with a window",
                );
            }
            let mut milestone_ids = HashSet::new();
            let mut milestones = Vec::new();
            for m in &t.milestone {
                let m = m.get_ref();
                let mkey = format!("{key}.milestone {:?}", m.id.get_ref());
                self.check_id(&m.id, &format!("{mkey}.id"));
                self.unique(
                    &mut milestone_ids,
                    &m.id,
                    &format!("{mkey}.id"),
                    "milestone",
                );
                let tolerance = self.fraction(
                    &m.tolerance,
                    &format!("{mkey}.tolerance"),
                    default_tolerance,
                );
                if let Some(window) = self.window(&m.start, &m.end, &mkey) {
                    milestones.push(Milestone {
                        id: m.id.get_ref().clone(),
                        name: m.name.clone(),
                        window,
                        tolerance,
                    });
                }
            }
            out.push(Task {
                id: t.id.get_ref().clone(),
                section: t.section.clone(),
                title: t.title.clone(),
                lead_units,
                responsible_units,
                by_division_of_duties: t.by_division_of_duties,
                track: t.track.as_ref().map(|x| x.get_ref().clone()),
                text: t.text.clone(),
                milestones,
            });
        }
        out
    }

    fn tracks(&mut self, raw: &[Spanned<RawTrack>], indicator_ids: &HashSet<String>) -> Vec<Track> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for entry in raw {
            let t = entry.get_ref();
            let key = format!("track {:?}", t.id.get_ref());
            self.check_id(&t.id, &format!("{key}.id"));
            self.unique(&mut seen, &t.id, &format!("{key}.id"), "track");
            let mut phase_ids = HashSet::new();
            let mut phases: Vec<(TrackPhase, Range<usize>)> = Vec::new();
            for p in &t.phase {
                let span = p.span();
                let p = p.get_ref();
                let pkey = format!("{key}.phase {:?}", p.id.get_ref());
                self.check_id(&p.id, &format!("{pkey}.id"));
                self.unique(&mut phase_ids, &p.id, &format!("{pkey}.id"), "track phase");
                let start = p
                    .start
                    .as_ref()
                    .and_then(|s| self.date(s, &format!("{pkey}.start"), MonthEnd::First));
                let Some(end) = self.date(&p.end, &format!("{pkey}.end"), MonthEnd::Last) else {
                    continue;
                };
                if start.is_some_and(|s| end < s) {
                    self.error(
                        p.end.span(),
                        format!("{pkey}.end"),
                        format!("ends ({}) before it starts", p.end.get_ref()),
                    );
                    continue;
                }
                let goals = p
                    .goals
                    .iter()
                    .enumerate()
                    .filter_map(|(n, g)| {
                        self.goal(
                            g.get_ref(),
                            &format!("{pkey}.goals[{n}]"),
                            g.span(),
                            indicator_ids,
                        )
                    })
                    .collect();
                phases.push((
                    TrackPhase {
                        id: p.id.get_ref().clone(),
                        name: p.name.clone(),
                        start,
                        end,
                        text: p.text.clone(),
                        goals,
                    },
                    span,
                ));
            }
            for i in 0..phases.len() {
                for j in i + 1..phases.len() {
                    let (a, b) = (&phases[i].0, &phases[j].0);
                    let overlap =
                        a.start.is_none_or(|s| s <= b.end) && b.start.is_none_or(|s| s <= a.end);
                    if overlap {
                        let window = |p: &TrackPhase| {
                            format!(
                                "{}..{}",
                                p.start
                                    .map(|d| d.to_string())
                                    .unwrap_or_else(|| "(no start)".into()),
                                p.end
                            )
                        };
                        let message = format!(
                            "{} ({}) overlaps phase {:?} {} ({}); kept as the document states it",
                            b.name,
                            window(b),
                            a.id,
                            a.name,
                            window(a)
                        );
                        self.warn(
                            phases[j].1.clone(),
                            format!("{key} ({}) phase {:?}", t.section, b.id),
                            message,
                        );
                    }
                }
            }
            out.push(Track {
                id: t.id.get_ref().clone(),
                section: t.section.clone(),
                title: t.title.clone(),
                phases: phases.into_iter().map(|(p, _)| p).collect(),
            });
        }
        out
    }

    fn goal(
        &mut self,
        g: &RawGoal,
        key: &str,
        span: Range<usize>,
        indicator_ids: &HashSet<String>,
    ) -> Option<Goal> {
        if let Some(id) = &g.indicator
            && !indicator_ids.contains(id.get_ref())
        {
            self.error(
                id.span(),
                format!("{key}.indicator"),
                format!("indicator {:?} is not defined", id.get_ref()),
            );
        }
        let target = self.finite(&Some(g.target.clone()), &format!("{key}.target"))?;
        let target_max = self.finite(&g.target_max, &format!("{key}.target_max"));
        self.range_bound(
            g.comparator,
            target,
            target_max,
            g.target_max.as_ref(),
            span,
            key,
        );
        Some(Goal {
            indicator: g.indicator.as_ref().map(|i| i.get_ref().clone()),
            comparator: g.comparator,
            target,
            target_max,
            text: g.text.clone(),
        })
    }
}

fn index<T>(items: &[T], id: impl Fn(&T) -> &String) -> HashMap<String, usize> {
    items
        .iter()
        .enumerate()
        .map(|(i, item)| (id(item).clone(), i))
        .collect()
}
