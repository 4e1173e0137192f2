//! Group commit, shared by both backends: ingest calls wait in a queue, a writer takes every
//! call that has queued up (up to [`MAX_GROUP`]) and stores them in one transaction, so that
//! concurrent calls share its statements, its round trips and its commit.
//!
//! Each call is still atomic and answered only after the commit that holds it. If a group
//! fails for something in the data (the database refused a statement, or a row was corrupt),
//! each of its calls is stored again alone, so that one bad call cannot fail its neighbours;
//! if it fails for anything else (the connection, the pool, the disk), every call of the group
//! is answered with that error without being retried one by one.

use tokio::sync::{mpsc, oneshot};

use super::StoreError;
use super::types::{NewReport, StoreOutcome};

/// The most ingest calls committed together.
pub(super) const MAX_GROUP: usize = 128;

/// How many calls may wait for a writer before a caller waits to queue.
pub(super) const QUEUE: usize = 1024;

type Reply = oneshot::Sender<Result<Vec<StoreOutcome>, StoreError>>;

pub(super) struct Job {
    reports: Vec<NewReport>,
    reply: Reply,
}

/// A backend's transaction for a group: the reports of every call, in call order; one outcome
/// per report, in the same order.
pub(super) trait Commit {
    async fn commit(&mut self, reports: &[&NewReport]) -> Result<Vec<StoreOutcome>, StoreError>;
}

/// Queues one call for `writer` and waits for its outcomes.
pub(super) async fn submit(
    writer: &mpsc::Sender<Job>,
    reports: Vec<NewReport>,
) -> Result<Vec<StoreOutcome>, StoreError> {
    let (reply, answer) = oneshot::channel();
    writer
        .send(Job { reports, reply })
        .await
        .map_err(|_| StoreError::WriterGone)?;
    answer.await.map_err(|_| StoreError::WriterGone)?
}

/// A writer: commits the queued calls group by group until every sender is gone.
pub(super) async fn write_loop(mut committer: impl Commit, mut jobs: mpsc::Receiver<Job>) {
    let mut group = Vec::with_capacity(MAX_GROUP);
    while jobs.recv_many(&mut group, MAX_GROUP).await > 0 {
        let reports: Vec<&NewReport> = group.iter().flat_map(|job| &job.reports).collect();
        let result = committer.commit(&reports).await;
        drop(reports);
        match result {
            Ok(outcomes) => {
                let mut outcomes = outcomes.into_iter();
                for job in group.drain(..) {
                    let mine = outcomes.by_ref().take(job.reports.len()).collect();
                    let _ = job.reply.send(Ok(mine));
                }
            }
            Err(error) if group.len() > 1 && in_the_data(&error) => {
                tracing::warn!(%error, calls = group.len(), "group commit failed; storing each call alone");
                for job in group.drain(..) {
                    let reports: Vec<&NewReport> = job.reports.iter().collect();
                    let result = committer.commit(&reports).await;
                    let _ = job.reply.send(result);
                }
            }
            Err(error) => {
                let message = error.to_string();
                let mut jobs = group.drain(..);
                if let Some(first) = jobs.next() {
                    let _ = first.reply.send(Err(error));
                }
                for job in jobs {
                    let _ = job
                        .reply
                        .send(Err(StoreError::GroupFailed(message.clone())));
                }
            }
        }
    }
}

/// Whether a failed group may have failed for one call's rows, so that storing each call alone
/// can save the others.
fn in_the_data(error: &StoreError) -> bool {
    matches!(
        error,
        StoreError::Database(sqlx::Error::Database(_))
            | StoreError::Sqlite(rusqlite::Error::SqliteFailure(..))
            | StoreError::Corrupt { .. }
    )
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use duban_proto::KeyId;

    use super::*;

    /// Stores every report (its pk is its seq) unless the group holds a report with seq 0
    /// (refused as corrupt data) or one of unit "down" (the connection fails); records the
    /// size of each transaction it was given.
    struct Fake(Arc<Mutex<Vec<usize>>>);

    impl Commit for Fake {
        async fn commit(
            &mut self,
            reports: &[&NewReport],
        ) -> Result<Vec<StoreOutcome>, StoreError> {
            self.0.lock().unwrap().push(reports.len());
            if reports.iter().any(|r| r.unit_id == "down") {
                return Err(StoreError::Database(sqlx::Error::PoolTimedOut));
            }
            if reports.iter().any(|r| r.seq == 0) {
                return Err(StoreError::Corrupt {
                    table: "reports",
                    detail: "seq 0".into(),
                });
            }
            Ok(reports
                .iter()
                .map(|r| StoreOutcome::Stored {
                    report_pk: r.seq as i64,
                    seq_gap: 0,
                    changed: 0,
                })
                .collect())
        }
    }

    fn report(unit: &str, seq: u64) -> NewReport {
        NewReport {
            plan_id: "p".into(),
            unit_id: unit.into(),
            report_id: [seq as u8; 16],
            key_id: KeyId([1; 32]),
            seq,
            issued_at_ms: 0,
            received_at_ms: 0,
            period: "2018".into(),
            revision: 0,
            payload: vec![],
            payload_type: "t".into(),
            signature: vec![],
            payload_sha256: [0; 32],
            values: vec![],
            task_updates: vec![],
            refused_count: 0,
        }
    }

    /// Queues the calls before the writer starts, so that they make one group; returns each
    /// call's answer (as stored pks, or the error's text) and the transactions' sizes.
    async fn run(calls: Vec<Vec<NewReport>>) -> (Vec<Result<Vec<i64>, String>>, Vec<usize>) {
        let (writer, jobs) = mpsc::channel(QUEUE);
        let mut answers = Vec::new();
        for reports in calls {
            let (reply, answer) = oneshot::channel();
            writer.send(Job { reports, reply }).await.unwrap();
            answers.push(answer);
        }
        drop(writer);
        let sizes = Arc::new(Mutex::new(Vec::new()));
        write_loop(Fake(sizes.clone()), jobs).await;
        let mut results = Vec::new();
        for answer in answers {
            results.push(match answer.await.unwrap() {
                Ok(outcomes) => Ok(outcomes
                    .into_iter()
                    .map(|o| match o {
                        StoreOutcome::Stored { report_pk, .. } => report_pk,
                        other => panic!("unexpected {other:?}"),
                    })
                    .collect()),
                Err(error) => Err(error.to_string()),
            });
        }
        let sizes = sizes.lock().unwrap().clone();
        (results, sizes)
    }

    /// What SQLite itself refuses for a row (here a unique key) may be one call's fault, and
    /// is retried call by call; a writer that is gone is not.
    #[test]
    fn a_row_sqlite_refuses_is_in_the_data() {
        let db = rusqlite::Connection::open_in_memory().unwrap();
        db.execute_batch("CREATE TABLE t (a INTEGER PRIMARY KEY); INSERT INTO t VALUES (1)")
            .unwrap();
        let refused = db.execute("INSERT INTO t VALUES (1)", []).unwrap_err();
        assert!(in_the_data(&StoreError::from(refused)));
        assert!(!in_the_data(&StoreError::WriterGone));
        assert!(!in_the_data(&StoreError::Database(
            sqlx::Error::PoolTimedOut
        )));
    }

    #[tokio::test]
    async fn queued_calls_share_one_transaction_and_get_their_own_outcomes() {
        let (results, sizes) = run(vec![
            vec![report("a", 1), report("a", 2)],
            vec![report("b", 3)],
            vec![report("c", 4), report("c", 5), report("c", 6)],
        ])
        .await;
        assert_eq!(sizes, vec![6]);
        assert_eq!(
            results,
            vec![Ok(vec![1, 2]), Ok(vec![3]), Ok(vec![4, 5, 6])]
        );
    }

    #[tokio::test]
    async fn a_call_refused_for_its_rows_does_not_fail_its_neighbours() {
        let (results, sizes) = run(vec![
            vec![report("a", 1)],
            vec![report("b", 0), report("b", 2)],
            vec![report("c", 3)],
        ])
        .await;
        // The group, then each call alone.
        assert_eq!(sizes, vec![4, 1, 2, 1]);
        assert_eq!(results[0], Ok(vec![1]));
        assert_eq!(results[2], Ok(vec![3]));
        let refused = results[1].as_ref().unwrap_err();
        assert!(refused.contains("seq 0"), "{refused}");
    }

    #[tokio::test]
    async fn a_failed_connection_answers_every_call_without_retrying_each() {
        let (results, sizes) = run(vec![
            vec![report("down", 1)],
            vec![report("b", 2)],
            vec![report("c", 3)],
        ])
        .await;
        assert_eq!(sizes, vec![3]);
        assert!(results.iter().all(|r| r.is_err()), "{results:?}");
        let first = results[0].as_ref().unwrap_err();
        let other = results[1].as_ref().unwrap_err();
        assert!(first.contains("pool timed out"), "{first}");
        assert!(
            other.starts_with("the transaction this call was stored in failed:")
                && other.contains("pool timed out"),
            "{other}"
        );
    }
}
