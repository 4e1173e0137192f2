//! The two languages of the pages: Chinese by default, English with `?lang=en`. Names from the
//! plan (units, indicators, tasks) are the plan's own words in both.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Lang {
    #[default]
    Zh,
    En,
}

impl Lang {
    pub fn parse(text: Option<&str>) -> Lang {
        match text {
            Some("en") => Lang::En,
            _ => Lang::Zh,
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            Lang::Zh => "zh",
            Lang::En => "en",
        }
    }

    /// The `lang` attribute of the page.
    pub fn html(self) -> &'static str {
        match self {
            Lang::Zh => "zh-CN",
            Lang::En => "en",
        }
    }

    pub fn other(self) -> Lang {
        match self {
            Lang::Zh => Lang::En,
            Lang::En => Lang::Zh,
        }
    }

    /// The text in this language.
    pub fn t(self, zh: &'static str, en: &'static str) -> &'static str {
        match self {
            Lang::Zh => zh,
            Lang::En => en,
        }
    }

    /// A status, kind or alert name as the engine spells it, in words.
    pub fn word(self, id: &str) -> String {
        let (zh, en) = match id {
            "met" => ("已达标", "met"),
            "on_track" => ("正常推进", "on track"),
            "lagging" => ("滞后", "lagging"),
            "late" => ("到期未达标", "late"),
            "no_data" => ("暂无数据", "no data"),
            "no_target" => ("无目标值", "no target"),
            "not_started" => ("未开始", "not started"),
            "overdue" => ("逾期", "overdue"),
            "done" => ("已完成", "done"),
            "not_due" => ("未到期", "not due"),
            "on_time" => ("按时", "on time"),
            "critical" => ("严重", "critical"),
            "warning" => ("警告", "warning"),
            "info" => ("提示", "info"),
            "fired" => ("触发督办提醒", "alert fired"),
            "notified" => ("通知", "notified"),
            "escalated" => ("升级督办", "escalated"),
            "resolved" => ("解除", "resolved"),
            "acknowledge" => ("已知悉", "acknowledged"),
            "explain" => ("说明情况", "explained"),
            "request_extension" => ("申请延期", "extension requested"),
            "claim_done" => ("报告办结", "done claimed"),
            "grant_extension" => ("准予延期", "extension granted"),
            "refuse_extension" => ("不予延期", "extension refused"),
            "confirm_done" => ("确认办结", "done confirmed"),
            "reject_done" => ("退回办结", "done rejected"),
            "ReportDueSoon" => ("报送即将到期", "report due soon"),
            "ReportOverdue" => ("报送逾期", "report overdue"),
            "IndicatorLagging" => ("指标滞后", "indicator lagging"),
            "TaskLagging" => ("任务滞后", "task lagging"),
            "TaskOverdue" => ("任务逾期", "task overdue"),
            other => return other.to_owned(),
        };
        self.t(zh, en).to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_and_statement_kind_has_words_in_both_languages() {
        let ids = crate::progress::IndicatorStatus::ALL
            .iter()
            .map(|s| s.name())
            .chain(
                crate::progress::MilestoneStatus::ALL
                    .iter()
                    .map(|s| s.name()),
            )
            .chain(crate::progress::cases::KINDS);
        for id in ids {
            assert!(!Lang::Zh.word(id).is_ascii(), "{id} has no Chinese words");
            assert!(
                !Lang::En.word(id).contains('_'),
                "{id} has no English words"
            );
        }
        assert_eq!(Lang::parse(Some("en")), Lang::En);
        assert_eq!(Lang::parse(Some("fr")), Lang::Zh);
        assert_eq!(Lang::parse(None), Lang::Zh);
    }
}
