//! `glory bootstrap-tokens`: create, list and delete the tokens machines enroll with.

use reqwest::Method;
use serde_json::{json, Value};

use anyhow::bail;

use crate::cli::{delete, print_json, s};
use crate::client::{urlencode, ApiClient};
use crate::table::{render, when_value};

pub async fn token_create(
    client: &ApiClient,
    ttl: Option<u64>,
    single_use: bool,
    scope: &str,
    description: &str,
    as_json: bool,
) -> anyhow::Result<()> {
    if !["node", "group_master", "any", "provisioner"].contains(&scope) {
        bail!("--scope must be node, group_master, provisioner or any");
    }
    let mut body = json!({"single_use": single_use, "scope": scope, "description": description});
    if let Some(ttl) = ttl {
        body["ttl_seconds"] = json!(ttl);
    }
    let t = client
        .call(Method::POST, "/api/v1/bootstrap-tokens", Some(body))
        .await?;
    if as_json {
        print_json(&t);
    } else {
        println!("{}", s(&t["token"]));
        eprintln!("{}", bootstrap_token_created_line(&t));
    }
    Ok(())
}

/// What `glory bootstrap-tokens create` says beside the token (on stderr).
pub fn bootstrap_token_created_line(t: &Value) -> String {
    format!(
        "id {}  expires {}  single_use {}  ca_cert_hash {}",
        s(&t["id"]),
        when_value(&t["expires_ms"], "never"),
        s(&t["single_use"]),
        s(&t["ca_cert_hash"])
    )
}

pub async fn token_list(client: &ApiClient, as_json: bool) -> anyhow::Result<()> {
    let t = client.get("/api/v1/bootstrap-tokens").await?;
    if as_json {
        print_json(&t["items"]);
        return Ok(());
    }
    print!("{}", bootstrap_tokens_table(&t["items"]));
    Ok(())
}

/// The table of `glory bootstrap-tokens list`.
pub fn bootstrap_tokens_table(items: &Value) -> String {
    let rows: Vec<Vec<String>> = items
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|t| {
                    vec![
                        s(&t["id"]),
                        s(&t["scope"]),
                        s(&t["single_use"]),
                        s(&t["used"]),
                        when_value(&t["created_ms"], "-"),
                        when_value(&t["expires_ms"], "never"),
                        s(&t["description"]),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    render(
        &[
            "ID",
            "SCOPE",
            "SINGLE_USE",
            "USED",
            "CREATED",
            "EXPIRES",
            "DESCRIPTION",
        ],
        &rows,
    )
}

pub async fn token_delete(client: &ApiClient, id: &str, as_json: bool) -> anyhow::Result<()> {
    let path = format!("/api/v1/bootstrap-tokens/{}", urlencode(id));
    delete(
        client,
        &path,
        as_json,
        &format!("bootstrap token {id} deleted"),
    )
    .await?;
    Ok(())
}
