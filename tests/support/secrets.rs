//! Finding secrets in files (issue 24): every secret a database holds (read through its key when
//! it is sealed, straight from the columns when it is not), and a search of every file under some
//! directories for each of them, raw, in hex or in base64. Shared by e2e_sealing and e2e_upgrade.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use base64::Engine;
use prost::Message;
use serde_json::Value;

/// A secret and where it came from.
pub struct Secret {
    pub what: String,
    pub bytes: Vec<u8>,
}

fn hex_of(v: &Value) -> Option<Vec<u8>> {
    v.get("hex")
        .and_then(Value::as_str)
        .and_then(|h| hex::decode(h).ok())
}

/// The secrets inside a serialized session state: root key, our ratchet private key, the chain
/// keys, the previous receiving chains' keys and the embedded skipped message keys.
fn state_secrets(what: &str, state: &[u8], out: &mut Vec<Secret>) {
    let s = protocol_core::session::SessionSnapshot::decode(state).expect("a session snapshot");
    let mut push = |name: &str, b: &[u8]| {
        if !b.is_empty() {
            out.push(Secret {
                what: format!("{what} {name}"),
                bytes: b.to_vec(),
            });
        }
    };
    push("root key", &s.root_key);
    push("ratchet private key", &s.own_ratchet_private);
    if let Some(k) = &s.sending_chain_key {
        push("sending chain key", k);
    }
    if let Some(k) = &s.receiving_chain_key {
        push("receiving chain key", k);
    }
    for p in &s.previous_receiving {
        push("previous chain key", &p.chain_key);
    }
    for k in &s.skipped {
        push("embedded skipped message key", &k.message_key);
    }
}

/// Every secret the database at `db` holds: read through its key when it is sealed (the export
/// opens every sealed value), straight from the columns when it is not.
pub fn secrets(db: &Path) -> Vec<Secret> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open database");
    let sealed: bool = conn
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE name = 'sealing')",
            [],
            |r| r.get(0),
        )
        .expect("schema");
    let jids: Vec<String> = conn
        .prepare("SELECT jid FROM accounts")
        .expect("accounts")
        .query_map([], |r| r.get(0))
        .expect("accounts")
        .collect::<Result<_, _>>()
        .expect("accounts");
    // (table, column, value) of every secret column of every row.
    let mut values: Vec<(String, String, Vec<u8>)> = Vec::new();
    let columns = [
        ("identity", "private_key"),
        ("prekeys", "private_key"),
        ("signed_prekeys", "private_key"),
        ("sessions", "state"),
        ("previous_sessions", "state"),
        ("skipped_keys", "message_key"),
        ("redelivery", "key_material"),
        ("own_messages", "key_material"),
    ];
    if sealed {
        for jid in &jids {
            let doc = omemod::storage::transfer::export_account(
                db,
                jid,
                &omemod::storage::KeySettings::default(),
            )
            .expect("export with the database's key");
            for t in doc["tables"].as_array().expect("tables") {
                let table = t["table"].as_str().expect("table");
                for (ct, column) in columns {
                    if ct != table {
                        continue;
                    }
                    for row in t["rows"].as_array().expect("rows") {
                        if let Some(b) = hex_of(&row[column]) {
                            values.push((table.into(), column.into(), b));
                        }
                    }
                }
            }
        }
    } else {
        for (table, column) in columns {
            // Older schemas lack the later tables.
            let exists: bool = conn
                .query_row(
                    "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1)",
                    [table],
                    |r| r.get(0),
                )
                .expect("schema");
            if !exists {
                continue;
            }
            let mut st = conn
                .prepare(&format!(
                    "SELECT {column} FROM {table} WHERE {column} IS NOT NULL"
                ))
                .expect("select");
            let rows: Vec<Vec<u8>> = st
                .query_map([], |r| r.get(0))
                .expect("rows")
                .collect::<Result<_, _>>()
                .expect("rows");
            values.extend(rows.into_iter().map(|b| (table.into(), column.into(), b)));
        }
    }
    let mut out = Vec::new();
    for (table, column, bytes) in values {
        if column == "state" {
            state_secrets(&table, &bytes, &mut out);
        } else {
            out.push(Secret {
                what: format!("{table}.{column}"),
                bytes,
            });
        }
    }
    out
}

/// The forms a secret could be written in: raw, hex (both cases), base64 at each alignment in
/// a longer text (standard and URL-safe).
fn forms(secret: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut f = vec![
        ("raw".to_owned(), secret.to_vec()),
        ("hex".to_owned(), hex::encode(secret).into_bytes()),
        ("HEX".to_owned(), hex::encode_upper(secret).into_bytes()),
    ];
    for skip in 0..3 {
        let part = &secret[skip..];
        let whole = part.len() / 3 * 3;
        for (name, engine) in [
            ("base64", &base64::engine::general_purpose::STANDARD_NO_PAD),
            (
                "base64url",
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            ),
        ] {
            f.push((
                format!("{name}+{skip}"),
                engine.encode(&part[..whole]).into_bytes(),
            ));
        }
    }
    f
}

/// Every regular file under `dir`.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("read dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files(&p));
        } else if p.is_file() {
            out.push(p);
        }
    }
    out
}

/// `what (form) in file` for each secret found in a file under `dirs`. One pass per file: each
/// 8-byte window is looked up among the needles' first 8 bytes.
pub fn hits(dirs: &[&Path], secrets: &[Secret]) -> Vec<String> {
    let mut needles: std::collections::HashMap<[u8; 8], Vec<(String, Vec<u8>)>> =
        std::collections::HashMap::new();
    for s in secrets {
        assert!(s.bytes.len() >= 16, "{} is too short to search for", s.what);
        for (form, needle) in forms(&s.bytes) {
            let head: [u8; 8] = needle[..8].try_into().expect("8 bytes");
            needles
                .entry(head)
                .or_default()
                .push((format!("{} ({form})", s.what), needle));
        }
    }
    let mut found = Vec::new();
    for dir in dirs {
        for file in files(dir) {
            let bytes = std::fs::read(&file).expect("read file");
            for (at, w) in bytes.windows(8).enumerate() {
                let Some(candidates) = needles.get(w) else {
                    continue;
                };
                for (what, needle) in candidates {
                    if bytes[at..].starts_with(needle) {
                        found.push(format!("{what} in {}", file.display()));
                    }
                }
            }
        }
    }
    found
}
