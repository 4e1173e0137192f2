//! Milestones: progress of each task milestone against its window.

use super::*;

/// The status of one milestone at `now_ms`.
pub fn milestone_progress(
    task: String,
    milestone: String,
    start_ms: i64,
    deadline_ms: i64,
    percent: Option<f64>,
    tolerance: f64,
    now_ms: i64,
) -> MilestoneProgress {
    let span = (deadline_ms - start_ms).max(1) as f64;
    let elapsed = ((now_ms - start_ms) as f64 / span).clamp(0.0, 1.0);
    let done = percent.is_some_and(|p| p >= 100.0);
    let status = if done {
        MilestoneStatus::Done
    } else if now_ms >= deadline_ms {
        MilestoneStatus::Overdue
    } else if now_ms < start_ms {
        MilestoneStatus::NotStarted
    } else if percent.unwrap_or(0.0) / 100.0 < elapsed - tolerance {
        MilestoneStatus::Lagging
    } else {
        MilestoneStatus::OnTrack
    };
    let days_overdue = if status == MilestoneStatus::Overdue {
        (now_ms - deadline_ms) / DAY_MS
    } else {
        0
    };
    MilestoneProgress {
        task,
        milestone,
        start_ms,
        deadline_ms,
        percent,
        elapsed,
        status,
        days_overdue,
        original_deadline_ms: None,
        claimed: false,
    }
}
