//! Indicators: the city value aggregated from the reporters' values (complete periods only),
//! the path from baseline to target, and the status judged against it.

use std::cell::RefCell;
use std::ops::Range;
use std::sync::Arc;

use super::*;

/// The stored values, to look up by (indicator, period) and to aggregate per indicator: each
/// aggregation reads only its indicator's rows, so computing a plan is linear in its values,
/// not in indicators × values.
pub struct Values<'a> {
    /// Every row in (indicator, period, unit) order, one per key.
    rows: Vec<&'a ValueRow>,
    /// Each indicator's runs of `rows` of one period text, in order, with the period parsed
    /// (runs whose period does not parse are left out: they belong to no period of the plan).
    by_indicator: FastMap<&'a str, Vec<(Period, Range<usize>)>>,
    /// Each indicator's per-period sums once computed: the value, the series, the baseline,
    /// the data date and the source gap all start from them. Kept from one computation to the
    /// next by [`super::update`], which recomputes only the periods that changed.
    aggregates: RefCell<FastMap<String, Arc<PeriodSums>>>,
    /// Whether every period is written as its canonical text (`2018Q1`, not another spelling
    /// of that quarter): a period's rows are then the rows of one text, which is how
    /// [`super::update`] finds them.
    pub(super) canonical_periods: bool,
}

/// One indicator's values summed per period.
pub(super) type PeriodSums = BTreeMap<Period, PeriodSum>;

/// The values of one indicator and period, summed in unit order.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct PeriodSum {
    /// The authoritative reporter's figure.
    authoritative: Option<f64>,
    /// The other reporters' sum, and how many of them reported.
    reporters: f64,
    reported: usize,
    /// Every unit's but the authoritative's (reporters or not), for the source gap.
    others: Option<f64>,
}

impl PeriodSum {
    /// Sums `rows` (one period's, in unit order); `reporters` is [`reporter_set`]'s.
    pub(super) fn of<'r>(
        indicator: &Indicator,
        reporters: &FastSet<&str>,
        rows: impl Iterator<Item = &'r ValueRow>,
    ) -> Self {
        let mut sum = PeriodSum::default();
        for row in rows {
            let unit = row.unit_id.as_str();
            if indicator.authoritative.as_deref() == Some(unit) {
                sum.authoritative = Some(row.value);
                continue;
            }
            sum.others = Some(sum.others.unwrap_or(0.0) + row.value);
            if reporters.contains(unit) {
                sum.reporters += row.value;
                sum.reported += 1;
            }
        }
        sum
    }

    fn add(&mut self, other: PeriodSum) {
        self.authoritative = other.authoritative.or(self.authoritative);
        self.reporters += other.reporters;
        self.reported += other.reported;
        self.others = match (self.others, other.others) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
    }
}

/// The indicator's reporting units, to look up.
pub(super) fn reporter_set(indicator: &Indicator) -> FastSet<&str> {
    indicator
        .reporter_units
        .iter()
        .map(String::as_str)
        .collect()
}

/// An indicator's city value per period, and whether the period is complete.
pub(super) type CityValues = BTreeMap<Period, (f64, bool)>;

/// A map keyed by names borrowed from the snapshot: hashed with foldhash, several times
/// faster than the standard SipHash on short strings, and nothing here is keyed by an
/// outsider's choosing that the map must resist (the names are the plan's).
pub(super) type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
pub(super) type FastSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

impl<'a> Values<'a> {
    /// Indexes `rows`; of two rows with one key, the later wins. `known_sorted` when they
    /// are in key order already, one row per key (see `Snapshot::order`): neither is then
    /// checked again.
    pub fn new(rows: &'a [ValueRow], known_sorted: bool) -> Self {
        // In (indicator, period, unit) order, one row per key, as the store and
        // `Snapshot::apply_changes` give them, so that every computation sums a period's values
        // in one order.
        let mut sorted: Vec<&ValueRow> = rows.iter().collect();
        if !known_sorted {
            input::in_key_order(&mut sorted, |a, b| value_key(a).cmp(&value_key(b)));
        }
        let mut by_indicator: FastMap<&str, Vec<(Period, Range<usize>)>> = FastMap::default();
        // A plan has few distinct periods: each is parsed once.
        let mut parsed: FastMap<&str, Option<Period>> = FastMap::default();
        let mut canonical_periods = true;
        let mut start = 0;
        while let Some(first) = sorted.get(start) {
            let end = start
                + sorted[start..].partition_point(|row| {
                    row.period == first.period && row.indicator_id == first.indicator_id
                });
            let period = first.period.as_str();
            let period = *parsed.entry(period).or_insert_with(|| {
                let parsed = period.parse::<Period>().ok();
                canonical_periods &= parsed.is_none_or(|p| p.to_string() == period);
                parsed
            });
            if let Some(period) = period {
                by_indicator
                    .entry(first.indicator_id.as_str())
                    .or_default()
                    .push((period, start..end));
            }
            start = end;
        }
        Values {
            rows: sorted,
            by_indicator,
            aggregates: RefCell::default(),
            canonical_periods,
        }
    }

    /// No rows, only each indicator's sums as kept from an earlier computation.
    pub(super) fn summed(sums: FastMap<String, Arc<PeriodSums>>) -> Values<'static> {
        Values {
            rows: Vec::new(),
            by_indicator: FastMap::default(),
            aggregates: RefCell::new(sums),
            canonical_periods: true,
        }
    }

    /// Every row, in key order.
    pub fn rows(&self) -> &[&'a ValueRow] {
        &self.rows
    }

    /// Where the rows of `indicator` and the period written `period` are in
    /// [`Values::rows`] (in unit order).
    pub fn run_of(&self, indicator: &str, period: &str) -> Range<usize> {
        fn key<'r>(row: &&'r ValueRow) -> (&'r str, &'r str) {
            (row.indicator_id.as_str(), row.period.as_str())
        }
        let wanted = (indicator, period);
        let from = self.rows.partition_point(|row| key(row) < wanted);
        let len = self.rows[from..].partition_point(|row| key(row) == wanted);
        from..from + len
    }

    /// The sums of `indicator`'s values per period, computed once per computation.
    pub(super) fn sums(&self, indicator: &Indicator) -> Arc<PeriodSums> {
        if let Some(held) = self.aggregates.borrow().get(indicator.id.as_str()) {
            return held.clone();
        }
        let runs = self.by_indicator.get(indicator.id.as_str());
        let reporters = reporter_set(indicator);
        let mut sums = PeriodSums::new();
        for (period, run) in runs.map_or(&[][..], Vec::as_slice) {
            let rows = self.rows[run.clone()].iter().copied();
            let sum = PeriodSum::of(indicator, &reporters, rows);
            // Two spellings of one period are two runs (see `canonical_periods`).
            sums.entry(*period)
                .and_modify(|held| held.add(sum))
                .or_insert(sum);
        }
        let sums = Arc::new(sums);
        self.aggregates
            .borrow_mut()
            .insert(indicator.id.clone(), sums.clone());
        sums
    }

    /// Every indicator's sums computed so far.
    pub(super) fn into_sums(self) -> FastMap<String, Arc<PeriodSums>> {
        self.aggregates.into_inner()
    }
}

/// City value per period of one indicator: the authoritative figure, else the reporters' sum;
/// and whether the period is complete (the authoritative figure, or every reporter, is in).
pub(super) fn city_values_with_completeness(indicator: &Indicator, values: &Values) -> CityValues {
    let others = indicator
        .reporter_units
        .iter()
        .filter(|u| indicator.authoritative.as_deref() != Some(u.as_str()))
        .count();
    values
        .sums(indicator)
        .iter()
        .filter_map(|(p, sum)| match sum.authoritative {
            Some(v) => Some((*p, (v, true))),
            None if sum.reported > 0 => Some((*p, (sum.reporters, sum.reported >= others))),
            None => None,
        })
        .collect()
}

/// The periods a value is computed from: the complete ones, or, until one is complete, all.
/// A period that only some districts have reported yet would understate a sum.
pub(super) fn settled(all: &BTreeMap<Period, (f64, bool)>) -> BTreeMap<Period, f64> {
    let any_complete = all.values().any(|(_, complete)| *complete);
    all.iter()
        .filter(|(_, (_, complete))| *complete || !any_complete)
        .map(|(p, (v, _))| (*p, *v))
        .collect()
}

/// City value per period of one indicator: the authoritative figure, else the reporters' sum.
pub(super) fn city_values(indicator: &Indicator, values: &Values) -> BTreeMap<Period, f64> {
    city_values_with_completeness(indicator, values)
        .iter()
        .map(|(p, (v, _))| (*p, *v))
        .collect()
}

/// The city value of each period in the terms of the target: a cumulative indicator's running
/// total, an annual average's annualised figure, a ratio of its inputs' values for the same
/// period (see below), else the period's own value.
pub(super) fn series(plan: &Plan, indicator: &Indicator, values: &Values) -> BTreeMap<Period, f64> {
    match &indicator.aggregation {
        Aggregation::Sum | Aggregation::Latest => city_values(indicator, values),
        Aggregation::Cumulative => {
            let mut total = 0.0;
            city_values(indicator, values)
                .into_iter()
                .filter(|(p, _)| plan.period_in_plan(p))
                .map(|(p, v)| {
                    total += v;
                    (p, total)
                })
                .collect()
        }
        Aggregation::AnnualAverage => city_values(indicator, values)
            .into_iter()
            .map(|(p, v)| (p, v * periods_per_year(indicator.period)))
            .collect(),
        Aggregation::Ratio {
            numerator,
            denominator,
            scale,
        } => {
            let part = |id: &str| {
                plan.indicator(id)
                    .map(|i| series(plan, i, values))
                    .unwrap_or_default()
            };
            // Inputs may be reported per different periods (patents per quarter, population
            // per year): each numerator period takes the latest denominator that ended by then,
            // else the earliest there is.
            let denominators: Vec<(jiff::civil::Date, f64)> = part(denominator)
                .into_iter()
                .map(|(p, d)| (p.last_day(), d))
                .collect();
            part(numerator)
                .into_iter()
                .filter_map(|(p, n)| {
                    let d = denominators
                        .iter()
                        .rev()
                        .find(|(end, _)| *end <= p.last_day())
                        .or(denominators.first())?
                        .1;
                    (d != 0.0 && d.is_finite()).then_some((p, n / d * scale))
                })
                .collect()
        }
    }
}

/// How many periods of `kind` make a year.
pub fn periods_per_year(kind: PeriodType) -> f64 {
    match kind {
        PeriodType::Month => 12.0,
        PeriodType::Quarter => 4.0,
        PeriodType::HalfYear => 2.0,
        PeriodType::Year => 1.0,
    }
}

/// The aggregated city value of an indicator from the values received so far.
pub fn aggregate(plan: &Plan, indicator: &Indicator, values: &Values) -> Option<f64> {
    let per_period = city_values_with_completeness(indicator, values);
    let settled = settled(&per_period);
    match &indicator.aggregation {
        Aggregation::Sum | Aggregation::Latest => settled.values().next_back().copied(),
        Aggregation::Cumulative => (!per_period.is_empty()).then(|| {
            per_period
                .iter()
                .filter(|(p, _)| plan.period_in_plan(p))
                .map(|(_, (v, _))| v)
                .sum()
        }),
        Aggregation::AnnualAverage => (!settled.is_empty()).then(|| {
            settled.values().sum::<f64>() / settled.len() as f64
                * periods_per_year(indicator.period)
        }),
        Aggregation::Ratio {
            numerator,
            denominator,
            scale,
        } => {
            let part = |id: &str| plan.indicator(id).and_then(|i| aggregate(plan, i, values));
            match (part(numerator), part(denominator)) {
                (Some(n), Some(d)) if d != 0.0 && d.is_finite() => Some(n / d * scale),
                _ => None,
            }
        }
    }
}

/// The end of the latest period the indicator's value is computed from (for a ratio, the
/// older of its two inputs'), in ms.
pub(super) fn data_as_of_ms(plan: &Plan, indicator: &Indicator, values: &Values) -> Option<i64> {
    match &indicator.aggregation {
        Aggregation::Ratio {
            numerator,
            denominator,
            ..
        } => {
            let part = |id: &str| {
                plan.indicator(id)
                    .and_then(|i| data_as_of_ms(plan, i, values))
            };
            Some(part(numerator)?.min(part(denominator)?))
        }
        _ => settled(&city_values_with_completeness(indicator, values))
            .keys()
            .next_back()
            .map(|p| end_of_day_ms(p.last_day(), &plan.tz)),
    }
}

pub(super) fn baseline(plan: &Plan, indicator: &Indicator, values: &Values) -> Option<f64> {
    if let Some(b) = indicator.baseline {
        return Some(b);
    }
    match &indicator.aggregation {
        Aggregation::Cumulative => Some(0.0),
        // A ratio starts where its inputs start: their baselines, divided.
        Aggregation::Ratio {
            numerator,
            denominator,
            scale,
        } => {
            let part = |id: &str| plan.indicator(id).and_then(|i| baseline(plan, i, values));
            match (part(numerator), part(denominator)) {
                (Some(n), Some(d)) if d != 0.0 && d.is_finite() => Some(n / d * scale),
                _ => None,
            }
        }
        _ => {
            let first = Period::containing(indicator.period, plan.window.start);
            city_values(indicator, values)
                .get(&first)
                .map(|v| match indicator.aggregation {
                    Aggregation::AnnualAverage => v * periods_per_year(indicator.period),
                    _ => *v,
                })
        }
    }
}

pub(super) fn indicator_progress(
    plan: &Plan,
    indicator: &Indicator,
    values: &Values,
    now_ms: i64,
    rates: Rates,
) -> IndicatorProgress {
    let value = aggregate(plan, indicator, values);
    let baseline = baseline(plan, indicator, values);
    let target = indicator.target.as_ref();
    let start_ms = start_of_day_ms(plan.window.start, &plan.tz);
    // The straight line from the baseline at the plan start to the target at its date.
    let path_at = |at_ms: i64| match (target, baseline) {
        (Some(t), Some(b)) => {
            let end_ms = end_of_day_ms(t.date, &plan.tz);
            let fraction =
                ((at_ms - start_ms) as f64 / (end_ms - start_ms).max(1) as f64).clamp(0.0, 1.0);
            Some(b + (t.value - b) * fraction)
        }
        _ => None,
    };
    let expected = path_at(now_ms);
    let progress_ratio = match (target, value) {
        (Some(t), Some(v)) => {
            let b = baseline.unwrap_or(0.0);
            let span = t.value - b;
            Some(if span.abs() < f64::EPSILON {
                if t.is_met_by(v, indicator.tolerance) {
                    1.0
                } else {
                    0.0
                }
            } else {
                ((v - b) / span).clamp(0.0, 1.0)
            })
        }
        _ => None,
    };
    // The value describes the end of its latest reported period, not today: it is held
    // against the path at that date, so that a report not yet due does not look like a lag.
    let value_as_of_ms = data_as_of_ms(plan, indicator, values);
    let judged = match value_as_of_ms {
        Some(as_of) => path_at(as_of.min(now_ms)),
        None => expected,
    };
    // Before the plan was issued nothing can be behind it.
    let before_issue = now_ms < issued_end_ms(plan);
    let status = match (target, value) {
        (None, _) => IndicatorStatus::NoTarget,
        (_, None) => IndicatorStatus::NoData,
        (Some(t), Some(v)) => {
            let deadline_ms = end_of_day_ms(t.date, &plan.tz);
            let lower_is_better = matches!(t.comparator, Comparator::AtMost | Comparator::LessThan);
            if t.is_met_by(v, indicator.tolerance) {
                IndicatorStatus::Met
            } else if before_issue {
                IndicatorStatus::OnTrack
            } else if now_ms >= deadline_ms {
                IndicatorStatus::Late
            } else {
                match judged {
                    Some(e) if !lower_is_better && v < e - e.abs() * indicator.tolerance => {
                        IndicatorStatus::Lagging
                    }
                    Some(e) if lower_is_better && v > e + e.abs() * indicator.tolerance => {
                        IndicatorStatus::Lagging
                    }
                    _ => IndicatorStatus::OnTrack,
                }
            }
        }
    };
    // Authoritative total minus the others' sum, for the latest period where both exist.
    let source_gap = indicator.authoritative.as_ref().and_then(|_| {
        values
            .sums(indicator)
            .values()
            .rev()
            .find_map(|sum| Some(sum.authoritative? - sum.others?))
    });
    let note = match (target, value) {
        (Some(t), Some(v)) if t.above_range(v, indicator.tolerance) => Some(format!(
            "{v} is above the plan's range ({} {}): met",
            t.comparator.symbol(),
            match t.value_max {
                Some(max) => format!("{}..{max}", t.value),
                None => t.value.to_string(),
            }
        )),
        _ => None,
    };
    let series = series(plan, indicator, values)
        .into_iter()
        .map(|(period, value)| {
            let end_ms = end_of_day_ms(period.last_day(), &plan.tz);
            SeriesPoint {
                period: period.to_string(),
                end_ms,
                value,
                expected: path_at(end_ms),
            }
        })
        .collect();
    IndicatorProgress {
        indicator: indicator.id.clone(),
        series,
        note,
        value,
        target: target.map(|t| t.value),
        baseline,
        expected,
        judged_expected: judged,
        value_as_of_ms,
        progress_ratio,
        status,
        source_gap,
        rates,
    }
}
