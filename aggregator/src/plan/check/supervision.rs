//! Checking `[supervision]`: the office is a unit, the ladder climbs (levels 2, 3, … with ever
//! later `after_days`) and every rung names units or groups of the plan.

use std::collections::HashSet;

use toml::Spanned;

use super::*;

impl Checker<'_> {
    pub(super) fn supervision(
        &mut self,
        raw: Option<&Spanned<RawSupervision>>,
        parties: &HashSet<String>,
    ) -> Supervision {
        let Some(raw) = raw else {
            return Supervision {
                quiet_days: DEFAULT_QUIET_DAYS,
                ..Default::default()
            };
        };
        let s = raw.get_ref();
        let office = s.office.as_ref().map(|o| {
            if !parties.contains(o.get_ref()) {
                self.error(
                    o.span(),
                    "supervision.office",
                    format!("unit {:?} is not defined", o.get_ref()),
                );
            }
            o.get_ref().clone()
        });
        let quiet_days = match &s.quiet_days {
            Some(q) if !(0..=365).contains(q.get_ref()) => {
                self.error(
                    q.span(),
                    "supervision.quiet_days",
                    format!("expected 0 to 365 days, got {}", q.get_ref()),
                );
                DEFAULT_QUIET_DAYS
            }
            Some(q) => *q.get_ref(),
            None => DEFAULT_QUIET_DAYS,
        };
        let mut ladder: Vec<EscalationLevel> = Vec::new();
        for (n, rung) in s.escalation.iter().enumerate() {
            let r = rung.get_ref();
            let key = format!("supervision.escalation[{n}]");
            let expected_level = ladder.last().map_or(2, |l| l.level + 1);
            if *r.level.get_ref() != i64::from(expected_level) {
                self.error(
                    r.level.span(),
                    format!("{key}.level"),
                    format!(
                        "expected level {expected_level}: the lead units are level 1 and each rung is one above the last, got {}",
                        r.level.get_ref()
                    ),
                );
            }
            let floor = ladder.last().map_or(0, |l| l.after_days);
            if *r.after_days.get_ref() <= floor
                && !(ladder.is_empty() && *r.after_days.get_ref() >= 0)
            {
                self.error(
                    r.after_days.span(),
                    format!("{key}.after_days"),
                    format!(
                        "expected more days than the rung below ({floor}), got {}",
                        r.after_days.get_ref()
                    ),
                );
            }
            if r.to.is_empty() {
                self.error(
                    rung.span(),
                    format!("{key}.to"),
                    "name at least one unit or group the alert escalates to",
                );
            }
            let to = self.references(&r.to, &format!("{key}.to"), parties);
            ladder.push(EscalationLevel {
                level: expected_level,
                after_days: *r.after_days.get_ref(),
                to,
            });
        }
        Supervision {
            office,
            quiet_days,
            ladder,
        }
    }
}
