//! The fixed names the aggregator's logs, metrics and alerts carry: result, reason and refusal
//! codes (docs/PROTOCOL.md; the wire enums in `duban_proto::pb` map to these one to one in
//! `grpc::convert`), and alert names and severities (docs/PROGRESS.md).

/// Every alert the rules ([`crate::alerting::rules`]) can raise.
pub const ALERT_NAMES: [&str; 5] = [
    "ReportDueSoon",
    "ReportOverdue",
    "IndicatorLagging",
    "TaskLagging",
    "TaskOverdue",
];
/// Alert severities, mildest first.
pub const SEVERITIES: [&str; 3] = ["info", "warning", "critical"];

/// Why a whole report (or statement) was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    PayloadTooLarge,
    BadPayloadType,
    BadKeyId,
    UnknownKey,
    KeyRevoked,
    KeyNotYetValid,
    KeyExpired,
    BadSignature,
    MalformedPayload,
    KeyMismatch,
    UnitMismatch,
    WrongAudience,
    IssuedInFuture,
    UnknownUnit,
    BadPeriod,
    ReportIdConflict,
    SeqReplay,
    NothingValid,
    BadReportId,
    UnknownAlert,
    NotARecipient,
    NotTheOffice,
    NothingToDecide,
    BadDate,
    BadStatement,
    TooManyItems,
}

impl Reason {
    pub const ALL: [Reason; 26] = [
        Reason::PayloadTooLarge,
        Reason::BadPayloadType,
        Reason::BadKeyId,
        Reason::UnknownKey,
        Reason::KeyRevoked,
        Reason::KeyNotYetValid,
        Reason::KeyExpired,
        Reason::BadSignature,
        Reason::MalformedPayload,
        Reason::KeyMismatch,
        Reason::UnitMismatch,
        Reason::WrongAudience,
        Reason::IssuedInFuture,
        Reason::UnknownUnit,
        Reason::BadPeriod,
        Reason::ReportIdConflict,
        Reason::SeqReplay,
        Reason::NothingValid,
        Reason::BadReportId,
        Reason::UnknownAlert,
        Reason::NotARecipient,
        Reason::NotTheOffice,
        Reason::NothingToDecide,
        Reason::BadDate,
        Reason::BadStatement,
        Reason::TooManyItems,
    ];

    /// The name used in docs, logs and the `reason` metric label.
    pub fn name(self) -> &'static str {
        match self {
            Reason::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            Reason::BadPayloadType => "BAD_PAYLOAD_TYPE",
            Reason::BadKeyId => "BAD_KEY_ID",
            Reason::UnknownKey => "UNKNOWN_KEY",
            Reason::KeyRevoked => "KEY_REVOKED",
            Reason::KeyNotYetValid => "KEY_NOT_YET_VALID",
            Reason::KeyExpired => "KEY_EXPIRED",
            Reason::BadSignature => "BAD_SIGNATURE",
            Reason::MalformedPayload => "MALFORMED_PAYLOAD",
            Reason::KeyMismatch => "KEY_MISMATCH",
            Reason::UnitMismatch => "UNIT_MISMATCH",
            Reason::WrongAudience => "WRONG_AUDIENCE",
            Reason::IssuedInFuture => "ISSUED_IN_FUTURE",
            Reason::UnknownUnit => "UNKNOWN_UNIT",
            Reason::BadPeriod => "BAD_PERIOD",
            Reason::ReportIdConflict => "REPORT_ID_CONFLICT",
            Reason::SeqReplay => "SEQ_REPLAY",
            Reason::NothingValid => "NOTHING_VALID",
            Reason::BadReportId => "BAD_REPORT_ID",
            Reason::UnknownAlert => "UNKNOWN_ALERT",
            Reason::NotARecipient => "NOT_A_RECIPIENT",
            Reason::NotTheOffice => "NOT_THE_OFFICE",
            Reason::NothingToDecide => "NOTHING_TO_DECIDE",
            Reason::BadDate => "BAD_DATE",
            Reason::BadStatement => "BAD_STATEMENT",
            Reason::TooManyItems => "TOO_MANY_ITEMS",
        }
    }
}

/// Why one value or task update was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefusalCode {
    UnknownIndicator,
    NotAReporter,
    PeriodTypeMismatch,
    PeriodOutsidePlan,
    ValueNotFinite,
    ValueOutOfRange,
    UnknownTask,
    UnknownMilestone,
    NotResponsible,
    PercentOutOfRange,
    NoteTooLong,
    DuplicateEntry,
    IdTooLong,
}

impl RefusalCode {
    pub const ALL: [RefusalCode; 13] = [
        RefusalCode::UnknownIndicator,
        RefusalCode::NotAReporter,
        RefusalCode::PeriodTypeMismatch,
        RefusalCode::PeriodOutsidePlan,
        RefusalCode::ValueNotFinite,
        RefusalCode::ValueOutOfRange,
        RefusalCode::UnknownTask,
        RefusalCode::UnknownMilestone,
        RefusalCode::NotResponsible,
        RefusalCode::PercentOutOfRange,
        RefusalCode::NoteTooLong,
        RefusalCode::DuplicateEntry,
        RefusalCode::IdTooLong,
    ];

    pub fn name(self) -> &'static str {
        match self {
            RefusalCode::UnknownIndicator => "UNKNOWN_INDICATOR",
            RefusalCode::NotAReporter => "NOT_A_REPORTER",
            RefusalCode::PeriodTypeMismatch => "PERIOD_TYPE_MISMATCH",
            RefusalCode::PeriodOutsidePlan => "PERIOD_OUTSIDE_PLAN",
            RefusalCode::ValueNotFinite => "VALUE_NOT_FINITE",
            RefusalCode::ValueOutOfRange => "VALUE_OUT_OF_RANGE",
            RefusalCode::UnknownTask => "UNKNOWN_TASK",
            RefusalCode::UnknownMilestone => "UNKNOWN_MILESTONE",
            RefusalCode::NotResponsible => "NOT_RESPONSIBLE",
            RefusalCode::PercentOutOfRange => "PERCENT_OUT_OF_RANGE",
            RefusalCode::NoteTooLong => "NOTE_TOO_LONG",
            RefusalCode::DuplicateEntry => "DUPLICATE_ENTRY",
            RefusalCode::IdTooLong => "ID_TOO_LONG",
        }
    }
}

/// Which list of the report a refusal points into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemKind {
    Value,
    TaskUpdate,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub kind: ItemKind,
    pub index: u32,
    pub code: RefusalCode,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Accepted,
    Duplicate,
    Partial,
    Rejected(Reason),
}

/// The answer for one report, before conversion to the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportResult {
    pub report_id: Vec<u8>,
    pub outcome: Outcome,
    pub message: String,
    pub refusals: Vec<Refusal>,
}

impl ReportResult {
    pub fn rejected(report_id: Vec<u8>, reason: Reason, message: impl Into<String>) -> Self {
        ReportResult {
            report_id,
            outcome: Outcome::Rejected(reason),
            message: message.into(),
            refusals: Vec::new(),
        }
    }
}
