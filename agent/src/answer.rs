//! The 督办 loop at the unit: the open alert cases that concern this unit (`OpenAlerts`), and
//! statements about them (`Respond`), kept in the outbox until the centre has answered.
//!
//! A statement is numbered only after a Hello: the centre says the highest statement seq it
//! holds for this key, so that a new outbox never reuses one. The statement is then signed and
//! stored in one transaction, and sent at once; when the centre cannot be reached it waits in
//! the outbox and the daemon (`duban-agent run`) sends it.

use std::time::Duration;

use duban_proto::pb;
use duban_proto::reasons;

use crate::daemon::Agent;
use crate::deliver::{Failure, call_hello, classify, clients};
use crate::outbox::{Outbox, OutboxError, StatementDraft, StoredStatement};

#[derive(Debug, thiserror::Error)]
pub enum AnswerError {
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    #[error("cannot reach the centre: {0}")]
    Unreachable(String),
    #[error("the centre does not accept this agent: {0}")]
    NotKnown(String),
    #[error("{0}")]
    Setup(String),
}

/// What became of a statement.
#[derive(Debug, Clone, PartialEq)]
pub enum Said {
    /// The centre recorded it (or already had it).
    Recorded(String),
    /// The centre refused it: the reason code's name and the centre's words.
    Refused(String, String),
    /// Not answered yet: it waits in the outbox.
    Waiting(String),
}

/// Asks the centre (Hello) whether it knows this agent, and for the statement counter.
async fn hello(agent: &Agent) -> Result<(pb::HelloResult, usize), AnswerError> {
    let aggregator = &agent.config().aggregator;
    let mut all = clients(aggregator, None).map_err(|e| AnswerError::Setup(e.to_string()))?;
    let mut last = String::new();
    for (i, client) in all.iter_mut().enumerate() {
        let now = agent.outbox().clock().now_ms();
        match call_hello(client, agent.identity(), now, (0, 0), aggregator.timeout).await {
            Ok(answer) if answer.known => return Ok((answer, i)),
            Ok(answer) => {
                return Err(AnswerError::NotKnown(
                    answer
                        .problems
                        .iter()
                        .map(|p| p.message.clone())
                        .collect::<Vec<_>>()
                        .join("; "),
                ));
            }
            Err(Failure { message, .. }) => last = message,
        }
    }
    Err(AnswerError::Unreachable(last))
}

/// The open alert cases of this unit (every case, for the supervising office).
pub async fn open_alerts(agent: &Agent) -> Result<pb::AlertList, AnswerError> {
    let aggregator = &agent.config().aggregator;
    let mut all = clients(aggregator, None).map_err(|e| AnswerError::Setup(e.to_string()))?;
    let mut last = String::new();
    for client in all.iter_mut() {
        let hello = pb::Hello {
            unit_id: agent.identity().unit.clone(),
            key_id: Vec::new(),
            audience: agent.identity().plan.clone(),
            issued_at_ms: agent.outbox().clock().now_ms(),
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            outbox_reports: 0,
            dead_letters: 0,
        };
        let signed = duban_proto::envelope::sign_hello(&agent.identity().key.current(), hello);
        match tokio::time::timeout(
            aggregator.timeout + Duration::from_secs(1),
            client.open_alerts(signed),
        )
        .await
        {
            Ok(Ok(list)) => return Ok(list.into_inner()),
            Ok(Err(status)) if status.code() == tonic::Code::PermissionDenied => {
                return Err(AnswerError::NotKnown(status.message().to_owned()));
            }
            Ok(Err(status)) => last = classify(&status).message,
            Err(_) => last = "no answer within the timeout".into(),
        }
    }
    Err(AnswerError::Unreachable(last))
}

/// Numbers, signs and stores `draft`, then sends it once. When the centre cannot be reached,
/// a synced outbox numbers it on its own and keeps it for the daemon; a new outbox cannot
/// (it would risk a seq the centre holds) and says so.
pub async fn say(
    agent: &Agent,
    draft: StatementDraft,
) -> Result<(StoredStatement, Said), AnswerError> {
    let key = agent.identity().key.current();
    let signer = agent.identity().signer(&key);
    match hello(agent).await {
        Ok((answer, endpoint)) => {
            let stored = agent
                .outbox()
                .add_statement(&draft, Some(answer.max_statement_seq), signer)
                .await?;
            let said = send(agent, &stored, endpoint).await?;
            Ok((stored, said))
        }
        Err(AnswerError::Unreachable(why)) if agent.outbox().statements_synced().await? => {
            let stored = agent.outbox().add_statement(&draft, None, signer).await?;
            Ok((stored, Said::Waiting(why)))
        }
        Err(AnswerError::Unreachable(why)) => Err(AnswerError::Unreachable(format!(
            "{why}; this outbox has not yet learnt its statement counter from the centre, so nothing was stored: try again when the centre can be reached"
        ))),
        Err(other) => Err(other),
    }
}

/// Sends one stored statement and files the answer.
pub async fn send(
    agent: &Agent,
    stored: &StoredStatement,
    endpoint: usize,
) -> Result<Said, AnswerError> {
    let aggregator = &agent.config().aggregator;
    let mut all = clients(aggregator, None).map_err(|e| AnswerError::Setup(e.to_string()))?;
    let n = all.len();
    let client = &mut all[endpoint % n.max(1)];
    let answer = tokio::time::timeout(
        aggregator.timeout + Duration::from_secs(1),
        client.respond(stored.envelope.clone()),
    )
    .await;
    let result = match answer {
        Ok(Ok(result)) => result.into_inner(),
        Ok(Err(status)) => return Ok(Said::Waiting(classify(&status).message)),
        Err(_) => return Ok(Said::Waiting("no answer within the timeout".into())),
    };
    Ok(file(agent.outbox(), stored.seq, &result).await?)
}

/// Files the centre's answer to statement `seq`.
pub async fn file(
    outbox: &Outbox,
    seq: i64,
    result: &pb::SubmitResult,
) -> Result<Said, OutboxError> {
    match result.outcome() {
        pb::Outcome::Accepted | pb::Outcome::Duplicate | pb::Outcome::Partial => {
            outbox
                .settle_statement(seq, "recorded", &result.message)
                .await?;
            Ok(Said::Recorded(result.message.clone()))
        }
        _ if reasons::is_retryable(result.reason()) => Ok(Said::Waiting(format!(
            "{}: {}",
            reasons::name(result.reason()),
            result.message
        ))),
        _ => {
            let reason = reasons::name(result.reason()).to_owned();
            outbox
                .settle_statement(seq, "refused", &format!("{reason}: {}", result.message))
                .await?;
            Ok(Said::Refused(reason, result.message.clone()))
        }
    }
}
