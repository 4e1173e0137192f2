//! The aggregator's order for an envelope: size and form checks, the signature, and only then
//! the payload's decoding and the report's checks against the plan. Half the inputs are taken
//! as an envelope off the wire (which the signature stops); the other half as a payload that a
//! registered key signed (which reaches the decoder and the plan checks). Nothing may panic.
#![no_main]

use std::sync::LazyLock;

use duban_aggregator::ingest::validate;
use duban_aggregator::plan::Plan;
use duban_proto::{SigningKey, envelope, pb};
use libfuzzer_sys::fuzz_target;
use prost::Message;

static PLAN: LazyLock<Plan> = LazyLock::new(|| duban_aggregator::plan::embedded().plan);
static KEY: LazyLock<SigningKey> = LazyLock::new(|| SigningKey::from_seed(&[7; 32]));

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let signed = if mode & 1 == 0 {
        match pb::SignedReport::decode(rest) {
            Ok(signed) => signed,
            Err(_) => return,
        }
    } else {
        envelope::sign_payload(&KEY, rest.to_vec())
    };
    if envelope::precheck(&signed).is_err() {
        return;
    }
    let Ok(report) = envelope::verify(&signed, KEY.public_key()) else {
        return;
    };
    if let Ok(period) = validate::check_report_fields(&PLAN, &report) {
        let _ = validate::validate_items(&PLAN, &report.unit_id, &period, &report);
    }
});
