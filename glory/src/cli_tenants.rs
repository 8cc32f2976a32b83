//! `glory tenants`: create, list, delete, and quotas (guarantee and limits, with what
//! the tenant holds); `glory sharing`; `glory frameworks`.

use clap::Subcommand;
use reqwest::Method;
use serde_json::{json, Value};

use crate::cli::{print_json, s};
use crate::client::{urlencode, ApiClient};
use crate::table::{render, when_value};

#[derive(Subcommand)]
pub enum TenantsAction {
    /// Create a tenant.
    Create {
        name: String,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List tenants.
    List,
    /// Delete a tenant without pools (its API tokens are revoked).
    Delete { name: String },
    /// Show a tenant's quota and use, or set it (operators): `glory tenants quota a
    /// --guaranteed 100 --max-nodes 400 --max-cpus 6400`.
    Quota {
        name: String,
        /// Nodes the tenant is sure to get.
        #[arg(long)]
        guaranteed: Option<u64>,
        #[arg(long)]
        max_nodes: Option<u64>,
        #[arg(long)]
        max_cpus: Option<u64>,
        #[arg(long)]
        max_memory_gib: Option<u64>,
    },
}

pub async fn tenants(
    client: &ApiClient,
    action: TenantsAction,
    as_json: bool,
) -> anyhow::Result<()> {
    let r = match action {
        TenantsAction::Create { name, description } => {
            client
                .call(
                    Method::POST,
                    "/api/v1/tenants",
                    Some(json!({"name": name, "description": description})),
                )
                .await?
        }
        TenantsAction::Delete { name } => {
            client
                .call(
                    Method::DELETE,
                    &format!("/api/v1/tenants/{}", urlencode(&name)),
                    None,
                )
                .await?
        }
        TenantsAction::Quota {
            name,
            guaranteed,
            max_nodes,
            max_cpus,
            max_memory_gib,
        } => {
            let path = format!("/api/v1/tenants/{}/quota", urlencode(&name));
            let setting = guaranteed.is_some()
                || max_nodes.is_some()
                || max_cpus.is_some()
                || max_memory_gib.is_some();
            let r = if setting {
                let body = json!({
                    "guaranteed_nodes": guaranteed.unwrap_or(0),
                    "max_nodes": max_nodes,
                    "max_cpus": max_cpus,
                    "max_memory_gib": max_memory_gib,
                });
                client.call(Method::PUT, &path, Some(body)).await?
            } else {
                client.get(&path).await?
            };
            if as_json {
                print_json(&r);
            } else {
                print!("{}", quota_text(&r));
            }
            return Ok(());
        }
        TenantsAction::List => {
            let r = client.get("/api/v1/tenants").await?;
            if as_json {
                print_json(&r["items"]);
            } else {
                print!("{}", tenants_table(&r));
            }
            return Ok(());
        }
    };
    if as_json {
        print_json(&r);
    } else if let Some(d) = r["deleted"].as_str() {
        println!("tenant {d} deleted");
    } else {
        println!("tenant {} created", s(&r["name"]));
    }
    Ok(())
}

/// The table of `glory tenants list`.
pub fn tenants_table(r: &Value) -> String {
    let rows: Vec<Vec<String>> = items(r)
        .iter()
        .map(|t| {
            vec![
                s(&t["name"]),
                when_value(&t["created_ms"], "-"),
                s(&t["description"]),
            ]
        })
        .collect();
    render(&["TENANT", "CREATED", "DESCRIPTION"], &rows)
}

/// `glory tenants quota NAME`: each limit beside what the tenant holds.
pub fn quota_text(r: &Value) -> String {
    let limit = |v: &Value| v.as_u64().map_or("none".to_string(), |n| n.to_string());
    let rows = vec![
        vec![
            "guaranteed nodes".into(),
            s(&r["guaranteed_nodes"]),
            String::new(),
        ],
        vec![
            "nodes".into(),
            limit(&r["max_nodes"]),
            s(&r["used"]["nodes"]),
        ],
        vec!["cpus".into(), limit(&r["max_cpus"]), s(&r["used"]["cpus"])],
        vec![
            "memory GiB".into(),
            limit(&r["max_memory_gib"]),
            s(&r["used"]["memory_gib"]),
        ],
    ];
    format!(
        "tenant {}\n{}",
        s(&r["tenant"]),
        render(&["", "LIMIT", "USED"], &rows)
    )
}

/// `glory sharing`: how the tenants share the cluster.
pub async fn sharing(client: &ApiClient, as_json: bool) -> anyhow::Result<()> {
    let r = client.get("/api/v1/sharing").await?;
    if as_json {
        print_json(&r);
    } else {
        print!("{}", sharing_text(&r));
    }
    Ok(())
}

/// The table of `glory sharing`.
pub fn sharing_text(r: &Value) -> String {
    let pct = |v: &Value| {
        v.as_f64()
            .map_or("-".to_string(), |f| format!("{:.1}%", f * 100.0))
    };
    let rows: Vec<Vec<String>> = items(r)
        .iter()
        .map(|t| {
            vec![
                s(&t["tenant"]),
                s(&t["guaranteed_nodes"]),
                s(&t["used"]["nodes"]),
                s(&t["borrowed_nodes"]),
                format!(
                    "+{}/-{}",
                    s(&t["reclaims"]["incoming"]),
                    s(&t["reclaims"]["outgoing"])
                ),
                s(&t["used"]["cpus"]),
                s(&t["used"]["memory_gib"]),
                pct(&t["dominant_share"]),
                s(&t["drf_rank"]),
            ]
        })
        .collect();
    let c = &r["capacity"];
    format!(
        "cluster: {} nodes, {} CPUs, {} GiB; fairness (Jain, weighted shares): {}\n{}",
        s(&c["nodes"]),
        s(&c["cpus"]),
        s(&c["memory_gib"]),
        r["fairness"]
            .as_f64()
            .map_or("-".to_string(), |f| format!("{f:.3}")),
        render(
            &[
                "TENANT",
                "GUARANTEED",
                "NODES",
                "BORROWED",
                "RECLAIMS",
                "CPUS",
                "MEMORY GIB",
                "DOMINANT",
                "DRF"
            ],
            &rows
        )
    )
}

#[derive(Subcommand)]
pub enum FrameworksAction {
    /// List frameworks: tenant, pool, whether they listen, outstanding offers.
    List,
    /// Outstanding offers: framework, nodes, when they expire.
    Offers,
    /// Unregister a framework (its offers are rescinded; its pool stays).
    Rm { id: String },
}

pub async fn frameworks(
    client: &ApiClient,
    action: FrameworksAction,
    as_json: bool,
) -> anyhow::Result<()> {
    let r = match action {
        FrameworksAction::List => client.get("/api/v1/frameworks").await?,
        FrameworksAction::Offers => client.get("/api/v1/offers").await?,
        FrameworksAction::Rm { id } => {
            let path = format!("/api/v1/frameworks/{}", urlencode(&id));
            client.call(Method::DELETE, &path, None).await?
        }
    };
    if as_json {
        print_json(&r);
    } else if r.get("unregistered").is_some() {
        println!("unregistered {}", s(&r["unregistered"]));
    } else {
        print!("{}", frameworks_text(&r));
    }
    Ok(())
}

/// The table of `glory frameworks list` or `offers` (told apart by their fields).
pub fn frameworks_text(r: &Value) -> String {
    let offers = items(r)
        .first()
        .is_some_and(|i| i.get("expires_ms").is_some());
    if offers {
        let rows: Vec<Vec<String>> = items(r)
            .iter()
            .map(|o| {
                let nodes = o["nodes"].as_array().map_or(0, Vec::len);
                vec![
                    s(&o["id"]),
                    s(&o["framework"]),
                    nodes.to_string(),
                    when_value(&o["expires_ms"], "-"),
                ]
            })
            .collect();
        return render(&["OFFER", "FRAMEWORK", "NODES", "EXPIRES"], &rows);
    }
    let rows: Vec<Vec<String>> = items(r)
        .iter()
        .map(|f| {
            let offered: usize = f["offers"].as_array().map_or(0, |v| {
                v.iter()
                    .map(|o| o["nodes"].as_array().map_or(0, Vec::len))
                    .sum()
            });
            vec![
                s(&f["id"]),
                s(&f["name"]),
                s(&f["tenant"]),
                s(&f["pool"]),
                if f["listening"] == true { "yes" } else { "no" }.to_string(),
                offered.to_string(),
            ]
        })
        .collect();
    render(
        &["ID", "NAME", "TENANT", "POOL", "LISTENING", "OFFERED NODES"],
        &rows,
    )
}

fn items(v: &Value) -> &[Value] {
    v["items"].as_array().map(Vec::as_slice).unwrap_or(&[])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sharing_is_a_table_with_the_totals() {
        let text = sharing_text(&json!({
            "capacity": {"nodes": 10, "cpus": 160, "memory_gib": 640}, "fairness": 0.9,
            "items": [{"tenant": "a", "guaranteed_nodes": 4, "used": {"nodes": 5, "cpus": 80, "memory_gib": 100},
                       "borrowed_nodes": 1, "reclaims": {"incoming": 2, "outgoing": 0}, "dominant_share": 0.5, "weighted_share": 0.125, "drf_rank": 1}]
        }));
        assert!(
            text.starts_with(
                "cluster: 10 nodes, 160 CPUs, 640 GiB; fairness (Jain, weighted shares): 0.900\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("50.0%") && text.contains("BORROWED") && text.contains("+2/-0"),
            "{text}"
        );
    }

    #[test]
    fn frameworks_and_offers_are_tables() {
        let text = frameworks_text(&json!({"items": [{"id": "fw-1", "name": "spark",
            "tenant": "a", "pool": "p", "listening": true,
            "offers": [{"nodes": ["n1", "n2"]}]}]}));
        assert!(
            text.contains("fw-1") && text.contains("yes") && text.contains("2"),
            "{text}"
        );
        let text = frameworks_text(&json!({"items": [{"id": "o-1", "framework": "fw-1",
            "nodes": ["n1"], "made_ms": 1, "expires_ms": 2}]}));
        assert!(text.starts_with("OFFER"), "{text}");
    }

    #[test]
    fn the_quota_shows_limits_beside_use() {
        let text = quota_text(&json!({
            "tenant": "a", "guaranteed_nodes": 10, "max_nodes": 40, "max_cpus": null,
            "max_memory_gib": null, "used": {"nodes": 12, "cpus": 192, "memory_gib": 768}
        }));
        assert!(text.starts_with("tenant a\n"), "{text}");
        assert!(
            text.contains("nodes") && text.contains("40") && text.contains("12"),
            "{text}"
        );
        assert!(text.contains("none") && text.contains("192"), "{text}");
    }
}
