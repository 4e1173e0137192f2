//! Registering, listing and revoking agents' public keys. [`register_key`] is what `keys add`
//! and the demo both call.

use super::*;

/// A public key to register for a unit, with its optional validity window.
#[derive(Debug, Clone)]
pub struct KeyRegistration {
    pub unit: String,
    pub public_key: PublicKey,
    pub not_before_ms: Option<i64>,
    pub not_after_ms: Option<i64>,
}

/// The OS user running this process (and, under sudo, who called sudo), and the host: who an
/// administrative change is recorded as.
pub fn actor() -> Actor {
    use std::os::unix::fs::MetadataExt;
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let uid = std::fs::metadata("/proc/self").map(|m| m.uid()).ok();
    let user = var("USER")
        .or_else(|| var("LOGNAME"))
        .or_else(|| uid.map(|u| format!("uid {u}")))
        .unwrap_or_else(|| "unknown".into());
    let os_user = match var("SUDO_USER") {
        Some(caller) if caller != user => format!("{caller} (sudo as {user})"),
        _ => user,
    };
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into());
    Actor { os_user, host }
}

/// Every recorded administrative change (`keys add`, `keys revoke`), oldest first: when, who
/// (OS user and host), what, on which unit.
pub async fn admin_log(store: &AnyStore, json: bool) -> Result<String, AdminError> {
    let actions = store.admin_actions().await?;
    if json {
        return Ok(serde_json::to_string_pretty(&actions)? + "\n");
    }
    if actions.is_empty() {
        return Ok("no administrative changes recorded\n".into());
    }
    let mut rows = vec![
        ["time (UTC)", "who", "action", "subject", "unit", "detail"]
            .map(String::from)
            .to_vec(),
    ];
    for a in &actions {
        rows.push(vec![
            time_text(Some(a.at_ms)),
            format!("{}@{}", a.actor.os_user, a.actor.host),
            a.action.clone(),
            a.subject.clone(),
            a.unit_id.clone(),
            a.detail.clone(),
        ]);
    }
    Ok(table(&rows, 0))
}

/// Registers a key for a unit of `plan`: the unit must be in the plan and the window make
/// sense. Returns the key id.
pub async fn register_key(
    store: &AnyStore,
    plan: &Plan,
    key: KeyRegistration,
    now_ms: i64,
) -> Result<KeyId, AdminError> {
    if plan.unit(&key.unit).is_none() {
        return Err(AdminError::UnknownUnit {
            unit: key.unit,
            plan: plan.id.clone(),
        });
    }
    if let (Some(a), Some(b)) = (key.not_before_ms, key.not_after_ms)
        && b <= a
    {
        return Err(AdminError::Flag {
            flag: "--not-after",
            message: "must be later than --not-before".into(),
        });
    }
    let key_id = key.public_key.key_id();
    let action = AdminAction {
        at_ms: now_ms,
        actor: actor(),
        action: "keys.add".into(),
        subject: key_id.to_string(),
        unit_id: key.unit.clone(),
        detail: format!(
            "valid from {} until {}",
            time_text(key.not_before_ms),
            time_text(key.not_after_ms)
        ),
    };
    store
        .add_key_recorded(
            NewKey {
                key_id,
                unit_id: key.unit,
                public_key: *key.public_key.raw(),
                not_before_ms: key.not_before_ms,
                not_after_ms: key.not_after_ms,
                added_at_ms: now_ms,
            },
            &action,
        )
        .await?;
    Ok(key_id)
}

/// `keys add`: reads the public key file and the window's flags, registers the key, says so.
pub async fn keys_add(
    store: &AnyStore,
    plan: &Plan,
    unit: &str,
    public_key_file: &Path,
    not_before: Option<&str>,
    not_after: Option<&str>,
    now_ms: i64,
) -> Result<String, AdminError> {
    let time = |flag: &'static str, text: Option<&str>| {
        text.map(parse_time_ms)
            .transpose()
            .map_err(|message| AdminError::Flag { flag, message })
    };
    let registration = KeyRegistration {
        unit: unit.to_owned(),
        public_key: PublicKey::read_spki_pem_file(public_key_file)?,
        not_before_ms: time("--not-before", not_before)?,
        not_after_ms: time("--not-after", not_after)?,
    };
    let key_id = register_key(store, plan, registration, now_ms).await?;
    Ok(format!(
        "added key {key_id} for unit {unit} ({})\n",
        plan.party_name(unit)
    ))
}

pub async fn keys_list(
    store: &AnyStore,
    unit: Option<&str>,
    json: bool,
) -> Result<String, AdminError> {
    let keys = store.keys(unit).await?;
    if json {
        return Ok(serde_json::to_string_pretty(&keys)? + "\n");
    }
    let mut rows = vec![
        [
            "key id",
            "unit",
            "added",
            "not before",
            "not after",
            "revoked",
            "max seq",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for k in &keys {
        rows.push(vec![
            k.key_id.to_string(),
            k.unit_id.clone(),
            time_text(Some(k.added_at_ms)),
            time_text(k.not_before_ms),
            time_text(k.not_after_ms),
            time_text(k.revoked_at_ms),
            k.max_seq.to_string(),
        ]);
    }
    let mut out = table(&rows, 0);
    let _ = writeln!(
        out,
        "{} key{}",
        keys.len(),
        if keys.len() == 1 { "" } else { "s" }
    );
    Ok(out)
}

pub async fn keys_revoke(
    store: &AnyStore,
    key_id: &str,
    now_ms: i64,
) -> Result<String, AdminError> {
    let key_id = KeyId::from_hex(key_id)?;
    let unit = store
        .keys(None)
        .await?
        .into_iter()
        .find(|k| k.key_id == key_id)
        .map(|k| k.unit_id)
        .ok_or(AdminError::NoSuchKey(key_id))?;
    let action = AdminAction {
        at_ms: now_ms,
        actor: actor(),
        action: "keys.revoke".into(),
        subject: key_id.to_string(),
        unit_id: unit,
        detail: format!("revoked from {}", time_text(Some(now_ms))),
    };
    if !store.revoke_key_recorded(key_id, now_ms, &action).await? {
        return Err(AdminError::NoSuchKey(key_id));
    }
    Ok(format!(
        "revoked key {key_id}: reports signed with it are refused from now on (running servers within seconds)\n"
    ))
}
