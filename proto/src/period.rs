//! Reporting periods (the `Report.period` grammar of docs/PROTOCOL.md): `2018-03` (month), `2018Q1` (quarter), `2018S1` (half-year), `2018` (year).
//!
//! A period is a closed range of civil dates in the plan's time zone; the wire carries its
//! canonical text, and parsing accepts nothing else (no `2018-3`, no lowercase `q`), so that one
//! period has exactly one spelling in the store.

use std::fmt;
use std::str::FromStr;

use jiff::civil::Date;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeriodType {
    Month,
    Quarter,
    HalfYear,
    Year,
}

impl PeriodType {
    pub fn as_str(self) -> &'static str {
        match self {
            PeriodType::Month => "month",
            PeriodType::Quarter => "quarter",
            PeriodType::HalfYear => "half_year",
            PeriodType::Year => "year",
        }
    }

    fn months(self) -> i8 {
        match self {
            PeriodType::Month => 1,
            PeriodType::Quarter => 3,
            PeriodType::HalfYear => 6,
            PeriodType::Year => 12,
        }
    }
}

impl fmt::Display for PeriodType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One reporting period. `index` is the month (1..=12), quarter (1..=4) or half (1..=2); 1 for
/// a year.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Period {
    pub kind: PeriodType,
    pub year: i16,
    pub index: i8,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("period {text:?} is not YYYY-MM, YYYYQn, YYYYSn or YYYY (years 1900 to 2999)")]
pub struct PeriodParseError {
    pub text: String,
}

impl Period {
    pub fn new(kind: PeriodType, year: i16, index: i8) -> Option<Self> {
        let count = 12 / kind.months();
        ((1900..=2999).contains(&year) && (1..=count).contains(&index)).then_some(Period {
            kind,
            year,
            index,
        })
    }

    /// The period of `kind` that contains `date`.
    pub fn containing(kind: PeriodType, date: Date) -> Self {
        let index = (date.month() - 1) / kind.months() + 1;
        Period {
            kind,
            year: date.year(),
            index,
        }
    }

    pub fn first_day(&self) -> Date {
        let month = (self.index - 1) * self.kind.months() + 1;
        Date::new(self.year, month, 1).expect("validated period")
    }

    pub fn last_day(&self) -> Date {
        let last_month = self.index * self.kind.months();
        let first = Date::new(self.year, last_month, 1).expect("validated period");
        first.last_of_month()
    }

    /// The period after this one, of the same type.
    pub fn next(&self) -> Self {
        let day = self
            .last_day()
            .tomorrow()
            .expect("years are capped at 2999");
        Period::containing(self.kind, day)
    }
}

impl FromStr for Period {
    type Err = PeriodParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = || PeriodParseError {
            text: text.chars().take(40).collect(),
        };
        let bytes = text.as_bytes();
        if bytes.len() < 4 || !bytes[..4].iter().all(u8::is_ascii_digit) {
            return Err(error());
        }
        let year: i16 = text[..4].parse().map_err(|_| error())?;
        let rest = &bytes[4..];
        let (kind, index) = match rest {
            [] => (PeriodType::Year, 1),
            [b'-', a, b] if a.is_ascii_digit() && b.is_ascii_digit() => {
                (PeriodType::Month, ((a - b'0') * 10 + (b - b'0')) as i8)
            }
            [b'Q', q] if q.is_ascii_digit() => (PeriodType::Quarter, (q - b'0') as i8),
            [b'S', s] if s.is_ascii_digit() => (PeriodType::HalfYear, (s - b'0') as i8),
            _ => return Err(error()),
        };
        Period::new(kind, year, index).ok_or_else(error)
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            PeriodType::Month => write!(f, "{:04}-{:02}", self.year, self.index),
            PeriodType::Quarter => write!(f, "{:04}Q{}", self.year, self.index),
            PeriodType::HalfYear => write!(f, "{:04}S{}", self.year, self.index),
            PeriodType::Year => write!(f, "{:04}", self.year),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::civil::date;
    use proptest::prelude::*;

    #[test]
    fn parses_every_kind_and_round_trips() {
        for text in ["2018-03", "2018Q1", "2018S2", "2018", "2020-12", "2019Q4"] {
            let period: Period = text.parse().unwrap();
            assert_eq!(period.to_string(), text);
        }
        assert_eq!(
            "2018Q2".parse::<Period>().unwrap().kind,
            PeriodType::Quarter
        );
    }

    #[test]
    fn refuses_other_spellings() {
        for text in [
            "2018-3",
            "2018q1",
            "2018Q5",
            "2018Q0",
            "2018S3",
            "2018-13",
            "2018-00",
            "18",
            "",
            "2018 ",
            "２０１８",
            "1899",
            "2018-1x",
        ] {
            assert!(text.parse::<Period>().is_err(), "{text:?} parsed");
        }
    }

    #[test]
    fn bounds_include_the_last_day_of_february() {
        let feb: Period = "2020-02".parse().unwrap();
        assert_eq!(feb.first_day(), date(2020, 2, 1));
        assert_eq!(feb.last_day(), date(2020, 2, 29));
        let feb: Period = "2019-02".parse().unwrap();
        assert_eq!(feb.last_day(), date(2019, 2, 28));
        let q1: Period = "2019Q1".parse().unwrap();
        assert_eq!(q1.last_day(), date(2019, 3, 31));
        let s2: Period = "2018S2".parse().unwrap();
        assert_eq!(
            (s2.first_day(), s2.last_day()),
            (date(2018, 7, 1), date(2018, 12, 31))
        );
        assert_eq!(
            "2018Q4".parse::<Period>().unwrap().next().to_string(),
            "2019Q1"
        );
    }

    #[test]
    fn containing_finds_the_period_of_a_date() {
        assert_eq!(
            Period::containing(PeriodType::Quarter, date(2018, 8, 9)).to_string(),
            "2018Q3"
        );
        assert_eq!(
            Period::containing(PeriodType::HalfYear, date(2018, 6, 30)).to_string(),
            "2018S1"
        );
        assert_eq!(
            Period::containing(PeriodType::Month, date(2018, 12, 31)).to_string(),
            "2018-12"
        );
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in ".{0,12}") {
            let _ = text.parse::<Period>();
        }
    }
}
