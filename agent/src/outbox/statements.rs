//! Statements about alert cases in the outbox: signed inside the transaction that allocates
//! their seq (a counter of their own, raised above the centre's), kept until the centre has
//! answered, then marked recorded or refused. A waiting statement is resent byte for byte.

use super::*;

/// What a person says about a case, before it is numbered and signed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatementDraft {
    pub case_id: String,
    pub kind: pb::StatementKind,
    pub date: String,
    pub note: String,
    pub reference: String,
}

/// A stored statement.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredStatement {
    pub seq: i64,
    pub case_id: String,
    pub kind: String,
    pub envelope: pb::SignedReport,
    pub state: String,
    pub answer: String,
}

impl Outbox {
    /// Whether a Hello has given this outbox the centre's statement counter (then statements
    /// can be numbered without the centre).
    pub async fn statements_synced(&self) -> Result<bool, OutboxError> {
        let synced: i64 =
            sqlx::query_scalar("SELECT value FROM meta WHERE key = 'statements_synced'")
                .fetch_one(&self.pool)
                .await?;
        Ok(synced == 1)
    }

    /// Numbers `draft` above both the local counter and `centre_max` (the highest statement
    /// seq the centre holds for this key: `Some` from a Hello, `None` when the centre cannot be
    /// reached and the outbox is synced), signs it and stores it, in one transaction.
    pub async fn add_statement(
        &self,
        draft: &StatementDraft,
        centre_max: Option<u64>,
        signer: Signer<'_>,
    ) -> Result<StoredStatement, OutboxError> {
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        if centre_max.is_some() {
            sqlx::query("UPDATE meta SET value = 1 WHERE key = 'statements_synced'")
                .execute(&mut *tx)
                .await?;
        }
        let centre_max = centre_max.unwrap_or(0);
        let local: i64 =
            sqlx::query_scalar("SELECT value FROM meta WHERE key = 'next_statement_seq'")
                .fetch_one(&mut *tx)
                .await?;
        let seq = local.max(i64::try_from(centre_max).unwrap_or(i64::MAX - 1) + 1);
        let statement = pb::Statement {
            statement_id: rand::random::<[u8; 16]>().to_vec(),
            unit_id: signer.unit.to_owned(),
            key_id: Vec::new(),
            seq: seq as u64,
            issued_at_ms: self.clock.now_ms(),
            audience: signer.audience.to_owned(),
            case_id: draft.case_id.clone(),
            kind: draft.kind as i32,
            date: draft.date.clone(),
            note: draft.note.clone(),
            reference: draft.reference.clone(),
            about_unit: String::new(),
        };
        let signed = envelope::sign_statement(signer.key, statement);
        let kind = draft
            .kind
            .as_str_name()
            .trim_start_matches("STATEMENT_KIND_")
            .to_lowercase();
        sqlx::query("INSERT INTO statements (seq, case_id, kind, envelope, created_at_ms) VALUES ($1, $2, $3, $4, $5)")
            .bind(seq)
            .bind(&draft.case_id)
            .bind(&kind)
            .bind(signed.encode_to_vec())
            .bind(self.clock.now_ms())
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE meta SET value = $1 WHERE key = 'next_statement_seq'")
            .bind(seq + 1)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(StoredStatement {
            seq,
            case_id: draft.case_id.clone(),
            kind,
            envelope: signed,
            state: "waiting".into(),
            answer: String::new(),
        })
    }

    /// Statements in `state` (`waiting`, `recorded`, `refused`), oldest first; all when `None`.
    pub async fn statements(
        &self,
        state: Option<&str>,
    ) -> Result<Vec<StoredStatement>, OutboxError> {
        let rows = sqlx::query("SELECT seq, case_id, kind, envelope, state, answer FROM statements WHERE $1 IS NULL OR state = $1 ORDER BY seq")
            .bind(state)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let bytes: Vec<u8> = r.try_get("envelope")?;
                Ok(StoredStatement {
                    seq: r.try_get("seq")?,
                    case_id: r.try_get("case_id")?,
                    kind: r.try_get("kind")?,
                    envelope: pb::SignedReport::decode(bytes.as_slice()).unwrap_or_default(),
                    state: r.try_get("state")?,
                    answer: r.try_get("answer")?,
                })
            })
            .collect()
    }

    /// Files the centre's answer to a statement: `recorded` or `refused`, with its words.
    pub async fn settle_statement(
        &self,
        seq: i64,
        state: &str,
        answer: &str,
    ) -> Result<(), OutboxError> {
        sqlx::query("UPDATE statements SET state = $2, answer = $3 WHERE seq = $1")
            .bind(seq)
            .bind(state)
            .bind(answer)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
