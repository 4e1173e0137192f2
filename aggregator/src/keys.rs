//! The key registry as the ingest path sees it: an in-memory snapshot of the `keys` table,
//! reloaded every few seconds so that `keys add` and `keys revoke` reach running servers (and
//! every replica) without a restart. Lookups never touch the database.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use duban_proto::{KeyId, PublicKey};

use crate::codes::Reason;
use crate::store::{AnyStore, Store, StoreError};

/// How often the registry is reloaded from the store.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct RegisteredKey {
    pub unit_id: String,
    pub public_key: PublicKey,
    pub not_before_ms: Option<i64>,
    pub not_after_ms: Option<i64>,
    pub revoked_at_ms: Option<i64>,
}

impl RegisteredKey {
    /// Whether the key may sign a report received at `now_ms`.
    pub fn check_usable(&self, now_ms: i64) -> Result<(), Reason> {
        if self.revoked_at_ms.is_some_and(|at| at <= now_ms) {
            return Err(Reason::KeyRevoked);
        }
        if self.not_before_ms.is_some_and(|at| now_ms < at) {
            return Err(Reason::KeyNotYetValid);
        }
        if self.not_after_ms.is_some_and(|at| now_ms > at) {
            return Err(Reason::KeyExpired);
        }
        Ok(())
    }
}

#[derive(Debug, Default)]
pub struct KeyRegistry {
    keys: RwLock<Arc<HashMap<KeyId, RegisteredKey>>>,
    /// When an unknown key last made the registry reload early (see [`Self::lookup_fresh`]).
    early_reload: tokio::sync::Mutex<Option<std::time::Instant>>,
}

/// An unknown key reloads the registry early at most this often, so that garbage key ids
/// cannot turn into a query each.
pub const EARLY_RELOAD_INTERVAL: Duration = Duration::from_secs(1);

impl KeyRegistry {
    pub fn lookup(&self, key_id: &KeyId) -> Option<RegisteredKey> {
        self.keys
            .read()
            .expect("key registry lock")
            .get(key_id)
            .cloned()
    }

    /// [`Self::lookup`], reloading first when the key is unknown: a key registered a moment
    /// ago is found. Early reloads happen at most once per [`EARLY_RELOAD_INTERVAL`]: a lookup
    /// that comes sooner waits for the next one (and shares it with the lookups waiting with
    /// it), rather than being told "unknown" because another key was looked up just before.
    pub async fn lookup_fresh(&self, key_id: &KeyId, store: &AnyStore) -> Option<RegisteredKey> {
        if let Some(key) = self.lookup(key_id) {
            return Some(key);
        }
        let mut last = self.early_reload.lock().await;
        // Another lookup may have reloaded while this one waited for the lock.
        if let Some(key) = self.lookup(key_id) {
            return Some(key);
        }
        if let Some(since) = last.map(|at| at.elapsed())
            && since < EARLY_RELOAD_INTERVAL
        {
            tokio::time::sleep(EARLY_RELOAD_INTERVAL - since).await;
        }
        *last = Some(std::time::Instant::now());
        if let Err(error) = self.reload(store).await {
            tracing::warn!(%error, "failed to reload the key registry");
        }
        self.lookup(key_id)
    }

    pub fn len(&self) -> usize {
        self.keys.read().expect("key registry lock").len()
    }

    /// Every registered key, as last loaded.
    pub fn snapshot(&self) -> Arc<HashMap<KeyId, RegisteredKey>> {
        self.keys.read().expect("key registry lock").clone()
    }

    /// `duban_key_not_after_timestamp_seconds{unit,key_id}`: when each key not revoked stops
    /// being accepted (`+Inf` for a key without `--not-after`; a time past for an expired one,
    /// so that an alert on it goes on firing after the expiry). `max by (unit)` is when the
    /// unit's last key expires.
    pub fn render_metrics(&self, now_ms: i64) -> String {
        use std::fmt::Write;
        let mut out = String::from(
            "# HELP duban_key_not_after_timestamp_seconds When each signing key not revoked stops being accepted (Unix seconds; +Inf without not_after).\n# TYPE duban_key_not_after_timestamp_seconds gauge\n",
        );
        let keys = self.snapshot();
        let mut usable: Vec<(&KeyId, &RegisteredKey)> = keys
            .iter()
            .filter(|(_, key)| key.revoked_at_ms.is_none_or(|at| at > now_ms))
            .collect();
        usable.sort_by(|a, b| (&a.1.unit_id, a.0).cmp(&(&b.1.unit_id, b.0)));
        for (key_id, key) in usable {
            let value = key
                .not_after_ms
                .map_or("+Inf".to_owned(), |ms| (ms / 1000).to_string());
            let _ = writeln!(
                out,
                "duban_key_not_after_timestamp_seconds{{unit=\"{}\",key_id=\"{key_id}\"}} {value}",
                key.unit_id
            );
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Replaces the snapshot with the store's keys.
    pub async fn reload(&self, store: &AnyStore) -> Result<(), StoreError> {
        let rows = store.keys(None).await?;
        let mut keys = HashMap::with_capacity(rows.len());
        for row in rows {
            match PublicKey::from_raw(&row.public_key) {
                Ok(public_key) => {
                    keys.insert(
                        row.key_id,
                        RegisteredKey {
                            unit_id: row.unit_id,
                            public_key,
                            not_before_ms: row.not_before_ms,
                            not_after_ms: row.not_after_ms,
                            revoked_at_ms: row.revoked_at_ms,
                        },
                    );
                }
                Err(error) => {
                    tracing::error!(key_id = %row.key_id, %error, "registered key is unusable; ignoring it")
                }
            }
        }
        *self.keys.write().expect("key registry lock") = Arc::new(keys);
        Ok(())
    }

    /// Reloads every [`RELOAD_INTERVAL`] until `shutdown` resolves.
    pub async fn refresh_until(
        self: Arc<Self>,
        store: AnyStore,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let mut tick = tokio::time::interval(RELOAD_INTERVAL);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tick.tick() => {
                    if let Err(error) = self.reload(&store).await {
                        tracing::warn!(%error, "failed to reload the key registry; keeping the previous snapshot");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{NewKey, Store};

    fn record(seed: u8, unit: &str) -> (KeyId, NewKey) {
        let key = duban_proto::SigningKey::from_seed(&[seed; 32]);
        (
            key.key_id(),
            NewKey {
                key_id: key.key_id(),
                unit_id: unit.into(),
                public_key: *key.public_key().raw(),
                not_before_ms: None,
                not_after_ms: None,
                added_at_ms: 0,
            },
        )
    }

    #[tokio::test]
    async fn a_key_registered_right_after_another_lookup_is_still_found() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("k.db").display());
        let store = AnyStore::open(&url).await.unwrap();
        let registry = KeyRegistry::default();
        let (first, first_key) = record(1, "laoshan");
        store.add_key(first_key).await.unwrap();
        assert!(registry.lookup_fresh(&first, &store).await.is_some());
        // Registered within the reload interval of the lookup above: the lookup waits for the
        // next reload instead of answering "unknown".
        let (second, second_key) = record(2, "shibei");
        store.add_key(second_key).await.unwrap();
        let started = std::time::Instant::now();
        let found = registry.lookup_fresh(&second, &store).await;
        assert_eq!(found.map(|k| k.unit_id), Some("shibei".to_owned()));
        // And a key nobody registered stays unknown.
        let (stranger, _) = record(3, "laoshan");
        assert!(registry.lookup_fresh(&stranger, &store).await.is_none());
        // Two early reloads in a row: the second waited for the interval (a bound on how often
        // garbage key ids make the registry query the store).
        assert!(started.elapsed() >= EARLY_RELOAD_INTERVAL);
    }
}
