//! The reason codes of docs/PROTOCOL.md as both sides use them: their names, and which ones a
//! client retries. Part of the wire contract, so defined once, here.

use crate::pb::ReasonCode;

/// The reasons that mean "not yet": the same report may pass later as it is (the key gets
/// registered, becomes valid, or the client's clock is fixed). Clients keep such a report and
/// retry it; every other rejection is final for that report.
pub const RETRYABLE: [ReasonCode; 3] = [
    ReasonCode::ReasonUnknownKey,
    ReasonCode::ReasonKeyNotYetValid,
    ReasonCode::ReasonIssuedInFuture,
];

/// Whether a client should retry a report rejected for `code`.
pub fn is_retryable(code: ReasonCode) -> bool {
    RETRYABLE.contains(&code)
}

/// The name used in docs, logs and metrics: `BAD_SIGNATURE` for `REASON_BAD_SIGNATURE`.
pub fn name(code: ReasonCode) -> &'static str {
    let full = code.as_str_name();
    full.strip_prefix("REASON_").unwrap_or(full)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_drop_the_prefix() {
        assert_eq!(name(ReasonCode::ReasonBadSignature), "BAD_SIGNATURE");
        assert!(is_retryable(ReasonCode::ReasonIssuedInFuture));
        assert!(!is_retryable(ReasonCode::ReasonBadSignature));
    }
}
