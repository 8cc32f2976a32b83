//! A small client of the cluster master's REST API, used by the CLI and tests.

use anyhow::{anyhow, Context};
use reqwest::Method;
use serde_json::Value;

#[derive(Clone)]
pub struct ApiClient {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl ApiClient {
    pub fn new(base: &str, token: &str) -> anyhow::Result<Self> {
        let base = if base.starts_with("http://") || base.starts_with("https://") {
            base.trim_end_matches('/').to_string()
        } else {
            format!("http://{}", base.trim_end_matches('/'))
        };
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .context("build HTTP client")?;
        Ok(ApiClient {
            base,
            token: token.trim().to_string(),
            http,
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Send a request; a non-2xx answer becomes an error carrying the API's message.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}{}", self.base, path);
        let mut req = self
            .http
            .request(method.clone(), &url)
            .bearer_auth(&self.token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("{method} {url}"))?;
        let status = resp.status();
        let text = resp.text().await.context("read response")?;
        let value: Value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if status.is_success() {
            Ok(value)
        } else {
            let message = value["error"]["message"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| value.to_string());
            let code = value["error"]["code"]
                .as_str()
                .unwrap_or("error")
                .to_string();
            Err(anyhow!("{status} {code}: {message}"))
        }
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.call(Method::GET, path, None).await
    }

    /// Every node matching `query` (e.g. `state=down&group=g01`), following cursors.
    pub async fn all_nodes(&self, query: &str) -> anyhow::Result<Vec<Value>> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut path = format!(
                "/api/v1/nodes?limit=5000{}{}",
                if query.is_empty() { "" } else { "&" },
                query
            );
            if let Some(c) = &cursor {
                path.push_str(&format!("&cursor={}", urlencode(c)));
            }
            let page = self.get(&path).await?;
            if let Some(items) = page["items"].as_array() {
                out.extend(items.iter().cloned());
            }
            match page["next"].as_str() {
                Some(next) => cursor = Some(next.to_string()),
                None => return Ok(out),
            }
        }
    }
}

/// Percent-encode a query value.
pub fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}
