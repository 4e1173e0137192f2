//! What the progress engine computes from: the current values and task updates, the 督办
//! statements, and the centre's outages, as the store hands them over. The store produces these; the engine
//! depends on nothing below it but the plan.

use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ValueRow {
    pub plan_id: String,
    pub indicator_id: String,
    pub unit_id: String,
    pub period: String,
    pub value: f64,
    pub note: String,
    pub revision: i64,
    pub issued_at_ms: i64,
    pub seq: i64,
    pub report_pk: i64,
    pub updated_at_ms: i64,
    pub first_received_at_ms: i64,
    /// When the report that first delivered this value was signed (its `issued_at_ms`).
    pub first_issued_at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskRow {
    pub plan_id: String,
    pub task_id: String,
    pub milestone_id: String,
    pub unit_id: String,
    pub period: String,
    pub percent: f64,
    pub status: String,
    pub note: String,
    pub revision: i64,
    pub issued_at_ms: i64,
    pub seq: i64,
    pub report_pk: i64,
    pub updated_at_ms: i64,
    pub first_received_at_ms: i64,
}

/// An interval when the centre was not serving, `[from_ms, to_ms)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Outage {
    pub from_ms: i64,
    pub to_ms: i64,
}

/// A stored statement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatementRow {
    pub unit_id: String,
    pub seq: i64,
    pub issued_at_ms: i64,
    pub received_at_ms: i64,
    pub case_id: String,
    pub kind: String,
    pub date: String,
    pub note: String,
    pub reference: String,
    pub about_unit: String,
}
