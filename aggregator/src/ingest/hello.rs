//! An agent's `Hello`: the checks a report would meet, answered in one go, and the state the
//! centre holds for the agent's key, so that an agent never reuses a seq or a revision.
//!
//! Order, as for reports: size caps and payload type, the key known, `verify_strict`, then
//! decode; then every identity check (key usable, unit of the key, unit of the certificate,
//! unit in the plan, plan id, clock). Every problem found is reported, not just the first, so
//! that `duban-agent check` can say everything that is wrong at once. Only a Hello with no
//! problem is `known`: then the centre gives the key's highest stored seq and the unit's
//! highest revision per period, and records the heartbeat.

use duban_proto::envelope::{self, HELLO_PAYLOAD_TYPE};
use duban_proto::pb;

use super::{Inner, MAX_FUTURE_MS, Reason, verify_reason};
use crate::store::{Heartbeat, Store, StoreError};

/// The centre's answer to a Hello, before it becomes a wire message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HelloAnswer {
    pub problems: Vec<(Reason, String)>,
    pub plan_id: String,
    pub certificate_unit: String,
    pub key_unit: String,
    pub max_seq: u64,
    pub max_statement_seq: u64,
    pub revisions: Vec<(String, u32)>,
    pub server_time_ms: i64,
    pub known: bool,
}

impl Inner {
    pub(super) async fn hello(
        &self,
        signed: &pb::SignedReport,
        tls_unit: Option<&str>,
    ) -> Result<HelloAnswer, StoreError> {
        let now = self.clock.now_ms();
        let mut answer = HelloAnswer {
            plan_id: self.plan.id.clone(),
            certificate_unit: tls_unit.unwrap_or_default().to_owned(),
            server_time_ms: now,
            ..Default::default()
        };
        let key_id = match envelope::precheck_as(signed, HELLO_PAYLOAD_TYPE) {
            Ok(key_id) => key_id,
            Err(error) => {
                answer
                    .problems
                    .push((verify_reason(&error), error.to_string()));
                return Ok(answer);
            }
        };
        let Some(key) = self.keys.lookup_fresh(&key_id, &self.store).await else {
            let unit = tls_unit.unwrap_or("<unit>");
            answer.problems.push((
                Reason::UnknownKey,
                format!(
                    "key {key_id} is not registered at the centre; the operators register it with `duban-aggregator keys add --unit {unit} --public-key signing.pub`"
                ),
            ));
            return Ok(answer);
        };
        answer.key_unit = key.unit_id.clone();
        if let Err(reason) = key.check_usable(now) {
            answer.problems.push((
                reason,
                format!(
                    "key {key_id} of unit {:?} is {}: register a new key (`duban-agent keygen`, then `duban-aggregator keys add`)",
                    key.unit_id,
                    match reason {
                        Reason::KeyRevoked => "revoked",
                        Reason::KeyNotYetValid => "not valid yet (see --not-before of `keys list`)",
                        _ => "expired",
                    }
                ),
            ));
        }
        if let Err(error) = envelope::verify_signature(signed, &key.public_key) {
            self.metrics.signature_failures.inc();
            answer
                .problems
                .push((verify_reason(&error), error.to_string()));
            return Ok(answer);
        }
        self.metrics.payloads_decoded.inc();
        let hello = match envelope::decode_hello(signed) {
            Ok(hello) => hello,
            Err(error) => {
                answer
                    .problems
                    .push((verify_reason(&error), error.to_string()));
                return Ok(answer);
            }
        };
        if hello.key_id != key_id.as_bytes() {
            answer.problems.push((
                Reason::KeyMismatch,
                "the signed Hello names another key than the envelope".into(),
            ));
        }
        if hello.unit_id != key.unit_id {
            answer.problems.push((
                Reason::UnitMismatch,
                format!(
                    "the agent is configured for unit {:?} but key {key_id} is registered to unit {:?}: fix `unit` in agent.toml, or register this agent's key for {:?}",
                    hello.unit_id, key.unit_id, hello.unit_id
                ),
            ));
        }
        if let Some(tls_unit) = tls_unit.filter(|u| *u != hello.unit_id) {
            answer.problems.push((
                Reason::UnitMismatch,
                format!(
                    "the client certificate is unit {tls_unit:?}'s but the agent is configured for unit {:?}: give this agent a certificate with SAN URI spiffe://duban/unit/{}",
                    hello.unit_id, hello.unit_id
                ),
            ));
        }
        if self.plan.unit(&hello.unit_id).is_none() {
            answer.problems.push((
                Reason::UnknownUnit,
                format!(
                    "unit {:?} is not in plan {}; `duban-aggregator plan show` lists the unit ids",
                    hello.unit_id, self.plan.id
                ),
            ));
        }
        if hello.audience != self.plan.id {
            answer.problems.push((
                Reason::WrongAudience,
                format!(
                    "the agent is configured for plan {:?} but the centre serves plan {:?}: set plan = {:?} in agent.toml",
                    hello.audience, self.plan.id, self.plan.id
                ),
            ));
        }
        // The clock is not part of the identity: a Hello from a fast clock is still known (its
        // reports are refused with the retryable ISSUED_IN_FUTURE until the clock is fixed).
        let identity_ok = answer.problems.is_empty();
        if hello.issued_at_ms > now.saturating_add(MAX_FUTURE_MS) {
            answer.problems.push((
                Reason::IssuedInFuture,
                format!(
                    "the agent's clock is {} s ahead of the centre's; reports more than 5 minutes ahead are refused until it is fixed (NTP)",
                    (hello.issued_at_ms - now) / 1000
                ),
            ));
        }
        if !identity_ok {
            return Ok(answer);
        }
        answer.known = true;
        answer.max_seq =
            u64::try_from(self.store.key_max_seq(key_id.as_bytes()).await?).unwrap_or_default();
        answer.max_statement_seq =
            u64::try_from(self.store.statement_max_seq(key_id.as_bytes()).await?)
                .unwrap_or_default();
        answer.revisions = self
            .store
            .unit_revisions(&self.plan.id, &hello.unit_id)
            .await?
            .into_iter()
            .map(|(period, revision)| (period, u32::try_from(revision).unwrap_or(u32::MAX)))
            .collect();
        self.store
            .record_heartbeat(&Heartbeat {
                key_id: key_id.as_bytes().to_vec(),
                unit_id: hello.unit_id,
                at_ms: now,
                agent_version: hello.agent_version.chars().take(64).collect(),
                outbox_reports: i64::try_from(hello.outbox_reports).unwrap_or(i64::MAX),
                dead_letters: i64::try_from(hello.dead_letters).unwrap_or(i64::MAX),
            })
            .await?;
        Ok(answer)
    }
}
