//! `glory users`: console users (name and password, with a role like API tokens).

use reqwest::Method;

use crate::cli::{delete, print_json, s};
use crate::client::{urlencode, ApiClient};
use crate::table::render;

#[derive(clap::Subcommand)]
pub enum UsersAction {
    /// Add a user; the password is read from GLORY_PASSWORD or asked on the terminal.
    Add {
        name: String,
        /// operator, tenant or component.
        #[arg(long, default_value = "operator")]
        role: String,
        #[arg(long)]
        tenant: Option<String>,
    },
    /// List users (never their passwords).
    List,
    /// Remove a user.
    Rm { name: String },
}

fn read_password() -> anyhow::Result<String> {
    if let Ok(p) = std::env::var("GLORY_PASSWORD") {
        return Ok(p);
    }
    eprint!("password: ");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

pub async fn users(client: &ApiClient, action: UsersAction, as_json: bool) -> anyhow::Result<()> {
    match action {
        UsersAction::Add { name, role, tenant } => {
            let password = read_password()?;
            let r = client
                .call(
                    Method::POST,
                    "/api/v1/users",
                    Some(serde_json::json!({"name": name, "password": password,
                        "role": role, "tenant": tenant})),
                )
                .await?;
            if as_json {
                print_json(&r);
            } else {
                println!("user {} added ({})", s(&r["name"]), s(&r["role"]));
            }
        }
        UsersAction::List => {
            let r = client.get("/api/v1/users").await?;
            if as_json {
                print_json(&r);
            } else {
                let rows: Vec<Vec<String>> = r["items"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|u| vec![s(&u["name"]), s(&u["role"]), s(&u["tenant"])])
                    .collect();
                print!("{}", render(&["NAME", "ROLE", "TENANT"], &rows));
            }
        }
        UsersAction::Rm { name } => {
            let path = format!("/api/v1/users/{}", urlencode(&name));
            delete(client, &path, as_json, &format!("user {name} removed")).await?;
        }
    }
    Ok(())
}
