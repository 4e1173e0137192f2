//! The one place where domain results become wire messages.

use duban_proto::pb;

use crate::ingest::{HelloAnswer, ItemKind, Outcome, Reason, RefusalCode, ReportResult};

pub fn reason(reason: Reason) -> pb::ReasonCode {
    use pb::ReasonCode as R;
    match reason {
        Reason::PayloadTooLarge => R::ReasonPayloadTooLarge,
        Reason::BadPayloadType => R::ReasonBadPayloadType,
        Reason::BadKeyId => R::ReasonBadKeyId,
        Reason::UnknownKey => R::ReasonUnknownKey,
        Reason::KeyRevoked => R::ReasonKeyRevoked,
        Reason::KeyNotYetValid => R::ReasonKeyNotYetValid,
        Reason::KeyExpired => R::ReasonKeyExpired,
        Reason::BadSignature => R::ReasonBadSignature,
        Reason::MalformedPayload => R::ReasonMalformedPayload,
        Reason::KeyMismatch => R::ReasonKeyMismatch,
        Reason::UnitMismatch => R::ReasonUnitMismatch,
        Reason::WrongAudience => R::ReasonWrongAudience,
        Reason::IssuedInFuture => R::ReasonIssuedInFuture,
        Reason::UnknownUnit => R::ReasonUnknownUnit,
        Reason::BadPeriod => R::ReasonBadPeriod,
        Reason::ReportIdConflict => R::ReasonReportIdConflict,
        Reason::SeqReplay => R::ReasonSeqReplay,
        Reason::NothingValid => R::ReasonNothingValid,
        Reason::BadReportId => R::ReasonBadReportId,
        Reason::UnknownAlert => R::ReasonUnknownAlert,
        Reason::NotARecipient => R::ReasonNotARecipient,
        Reason::NotTheOffice => R::ReasonNotTheOffice,
        Reason::NothingToDecide => R::ReasonNothingToDecide,
        Reason::BadDate => R::ReasonBadDate,
        Reason::BadStatement => R::ReasonBadStatement,
        Reason::TooManyItems => R::ReasonTooManyItems,
    }
}

pub fn refusal_code(code: RefusalCode) -> pb::RefusalCode {
    use pb::RefusalCode as C;
    match code {
        RefusalCode::UnknownIndicator => C::RefusalUnknownIndicator,
        RefusalCode::NotAReporter => C::RefusalNotAReporter,
        RefusalCode::PeriodTypeMismatch => C::RefusalPeriodTypeMismatch,
        RefusalCode::PeriodOutsidePlan => C::RefusalPeriodOutsidePlan,
        RefusalCode::ValueNotFinite => C::RefusalValueNotFinite,
        RefusalCode::ValueOutOfRange => C::RefusalValueOutOfRange,
        RefusalCode::UnknownTask => C::RefusalUnknownTask,
        RefusalCode::UnknownMilestone => C::RefusalUnknownMilestone,
        RefusalCode::NotResponsible => C::RefusalNotResponsible,
        RefusalCode::PercentOutOfRange => C::RefusalPercentOutOfRange,
        RefusalCode::NoteTooLong => C::RefusalNoteTooLong,
        RefusalCode::DuplicateEntry => C::RefusalDuplicateEntry,
        RefusalCode::IdTooLong => C::RefusalIdTooLong,
    }
}

pub fn result(result: ReportResult) -> pb::SubmitResult {
    let (outcome, reason_code) = match result.outcome {
        Outcome::Accepted => (pb::Outcome::Accepted, pb::ReasonCode::ReasonUnspecified),
        Outcome::Duplicate => (pb::Outcome::Duplicate, pb::ReasonCode::ReasonUnspecified),
        Outcome::Partial => (pb::Outcome::Partial, pb::ReasonCode::ReasonUnspecified),
        Outcome::Rejected(r) => (pb::Outcome::Rejected, reason(r)),
    };
    pb::SubmitResult {
        report_id: result.report_id,
        outcome: outcome as i32,
        reason: reason_code as i32,
        message: result.message,
        refusals: result
            .refusals
            .into_iter()
            .map(|r| pb::Refusal {
                kind: match r.kind {
                    ItemKind::Value => pb::ItemKind::Value,
                    ItemKind::TaskUpdate => pb::ItemKind::TaskUpdate,
                } as i32,
                index: r.index,
                code: refusal_code(r.code) as i32,
                message: r.message,
            })
            .collect(),
    }
}

pub fn hello(answer: HelloAnswer) -> pb::HelloResult {
    pb::HelloResult {
        problems: answer
            .problems
            .into_iter()
            .map(|(code, message)| pb::HelloProblem {
                code: reason(code) as i32,
                message,
            })
            .collect(),
        plan_id: answer.plan_id,
        certificate_unit: answer.certificate_unit,
        key_unit: answer.key_unit,
        max_seq: answer.max_seq,
        max_statement_seq: answer.max_statement_seq,
        revisions: answer
            .revisions
            .into_iter()
            .map(|(period, revision)| pb::PeriodRevision { period, revision })
            .collect(),
        server_time_ms: answer.server_time_ms,
        known: answer.known,
    }
}

pub fn alert_list(list: crate::ingest::respond::CaseList) -> pb::AlertList {
    pb::AlertList {
        unit_id: list.unit_id,
        office: list.office,
        cases: list
            .cases
            .into_iter()
            .map(|c| pb::AlertCase {
                case_id: c.case_id,
                alertname: c.alertname,
                severity: c.severity,
                summary: c.summary,
                deadline: c.deadline,
                original_deadline: c.original_deadline,
                escalation_level: c.escalation_level,
                recipients: c.recipients,
                record: c.record,
                open: c.open,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_the_wire_name_of_the_same_spelling() {
        for r in Reason::ALL {
            let wire = reason(r).as_str_name();
            assert_eq!(wire, format!("REASON_{}", r.name()), "{r:?}");
        }
        for c in RefusalCode::ALL {
            assert_eq!(
                refusal_code(c).as_str_name(),
                format!("REFUSAL_{}", c.name()),
                "{c:?}"
            );
        }
    }
}
