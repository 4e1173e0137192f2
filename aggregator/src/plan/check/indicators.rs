//! Checking indicators: reporters and lead units, periods, targets, ranges and aggregation.

use super::*;

impl Checker<'_> {
    pub(super) fn indicators(
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
            // Each unit once, in the order first named (a set beside the list: a plan may
            // name thousands of reporters).
            let mut reporter_units = Vec::new();
            let mut named = HashSet::new();
            for id in &reporters {
                for unit in group_members
                    .get(id)
                    .cloned()
                    .unwrap_or_else(|| vec![id.clone()])
                {
                    if named.insert(unit.clone()) {
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

    pub(super) fn target(&mut self, r: &RawIndicator, key: &str) -> Option<Target> {
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

    pub(super) fn range_bound(
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

    pub(super) fn aggregation(
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
}
