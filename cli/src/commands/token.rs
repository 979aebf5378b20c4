//! `tessera token add|list|remove`: the tokens file of `tessera serve --tokens`.

use anyhow::Result;
use serde_json::json;

use tessera_engine::sync::http::quota::Usage;
use tessera_engine::sync::http::tokens::{Role, TokenEntry, Tokens};

use crate::args::{parse_size, UsageError};
use crate::output::{bytes, print_json};
use crate::sync_args::TokenCommand;

fn describe(e: &TokenEntry, used: u64) -> serde_json::Value {
    json!({
        "name": e.name,
        "role": e.role.name(),
        "series": e.series,
        "quota": e.quota,
        "used": used,
    })
}

pub fn run(cmd: &TokenCommand, json: bool) -> Result<i32> {
    match cmd {
        TokenCommand::Add {
            file,
            role,
            series,
            name,
            quota,
        } => {
            let role = Role::parse(role)
                .ok_or_else(|| UsageError(format!("--role {role:?}: backup, read or admin")))?;
            let quota = quota.as_deref().map(parse_size).transpose()?;
            let mut tokens = Tokens::load_or_new(file)?;
            let (entry, token) = tokens.add(role, series, name.as_deref(), quota)?;
            tokens.save(file)?;
            if json {
                let mut v = describe(&entry, 0);
                v["ok"] = json!(true);
                v["token"] = json!(token);
                print_json(&v);
            } else {
                // The token alone on stdout (for `> client.token`); what it is on stderr.
                println!("{token}");
                eprintln!(
                    "added token {:?} ({} role, series {:?}{}) to {}; it is shown only now",
                    entry.name,
                    entry.role.name(),
                    entry.series,
                    entry
                        .quota
                        .map_or_else(String::new, |q| format!(", quota {}", bytes(q))),
                    file.display()
                );
            }
        }
        TokenCommand::List { file } => {
            let tokens = Tokens::load(file)?;
            let usage = Usage::load(file)?;
            if json {
                let list: Vec<_> = tokens
                    .entries
                    .iter()
                    .map(|e| describe(e, usage.used(&e.name)))
                    .collect();
                print_json(&json!({ "ok": true, "tokens": list }));
            } else {
                for e in &tokens.entries {
                    let quota = e.quota.map_or_else(|| "no quota".into(), bytes);
                    println!(
                        "{:<24} {:<6} series {:<16} used {} of {quota}",
                        e.name,
                        e.role.name(),
                        e.series,
                        bytes(usage.used(&e.name))
                    );
                }
            }
        }
        TokenCommand::Remove { file, name } => {
            let mut tokens = Tokens::load(file)?;
            let removed = tokens.remove(name)?;
            tokens.save(file)?;
            if json {
                print_json(&json!({ "ok": true, "removed": removed.name }));
            } else {
                println!("removed token {:?} from {}", removed.name, file.display());
            }
        }
    }
    Ok(0)
}
