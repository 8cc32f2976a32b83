//! A small client of the cluster master's REST API, used by the CLI and tests.

use anyhow::{anyhow, Context};
use reqwest::Method;
use serde_json::Value;

#[derive(Clone)]
pub struct ApiClient {
    base: String,
    token: String,
    http: reqwest::Client,
    /// The CA an HTTPS API's certificate is checked against (PEM).
    ca_pem: Option<String>,
    timeout: Option<std::time::Duration>,
}

/// The API's base URL for an address as an operator writes it: a URL as it is;
/// `host:port` over plain HTTP on loopback and HTTPS anywhere else, as the cluster
/// master serves it (unless told `insecure_http`: then write `http://`).
pub fn base_url(api: &str) -> String {
    let api = api.trim_end_matches('/');
    if api.starts_with("http://") || api.starts_with("https://") {
        return api.to_string();
    }
    let host = api.rsplit_once(':').map_or(api, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match loopback {
        true => format!("http://{api}"),
        false => format!("https://{api}"),
    }
}

impl ApiClient {
    pub fn new(base: &str, token: &str) -> anyhow::Result<Self> {
        let mut client = ApiClient {
            base: base_url(base),
            token: token.trim().to_string(),
            http: reqwest::Client::new(),
            ca_pem: None,
            timeout: Some(std::time::Duration::from_secs(30)),
        };
        client.http = client.http_client(client.timeout)?;
        Ok(client)
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// An HTTP client trusting our CA, with requests given up after `timeout`.
    fn http_client(&self, timeout: Option<std::time::Duration>) -> anyhow::Result<reqwest::Client> {
        let mut builder =
            reqwest::Client::builder().connect_timeout(std::time::Duration::from_secs(10));
        if let Some(t) = timeout {
            builder = builder.timeout(t);
        }
        if let Some(pem) = &self.ca_pem {
            for cert in reqwest::Certificate::from_pem_bundle(pem.as_bytes())
                .context("the CA certificate (--cacert) is not PEM")?
            {
                builder = builder.add_root_certificate(cert);
            }
        }
        builder.build().context("build HTTP client")
    }

    /// The same client with requests given up after `timeout` (30 s by default).
    pub fn with_timeout(mut self, timeout: std::time::Duration) -> anyhow::Result<Self> {
        self.timeout = Some(timeout);
        self.http = self.http_client(self.timeout)?;
        Ok(self)
    }

    /// The same client checking an HTTPS API's certificate against `ca_pem` (the
    /// cluster CA, `<data-dir>/ca.pem`).
    pub fn with_ca(mut self, ca_pem: &str) -> anyhow::Result<Self> {
        if reqwest::Certificate::from_pem_bundle(ca_pem.as_bytes())
            .map_or(true, |certs| certs.is_empty())
        {
            anyhow::bail!("the CA file holds no PEM certificate");
        }
        self.ca_pem = Some(ca_pem.to_string());
        self.http = self.http_client(self.timeout)?;
        Ok(self)
    }

    /// Send a request; the answer's status and body (JSON, or the text as a string),
    /// whatever the status (for callers that check refusals themselves).
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let (status, text) = self.send(method, path, body).await?;
        Ok((status.as_u16(), parse_body(text)))
    }

    /// Send a request; the answer's status and body.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(reqwest::StatusCode, String)> {
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
            .map_err(|e| self.explain(e, &method, &url))?;
        let status = resp.status();
        let text = resp.text().await.context("read response")?;
        Ok((status, text))
    }

    /// A failed request, with a hint when it was the API's certificate (HTTPS without
    /// the CA) or the scheme (HTTP to HTTPS or the reverse).
    fn explain(&self, e: reqwest::Error, method: &Method, url: &str) -> anyhow::Error {
        let chain = format!("{:#}", anyhow::Error::new(e));
        let hint = if chain.contains("certificate") || chain.contains("UnknownIssuer") {
            match self.ca_pem {
                None => "; the API is HTTPS with a certificate from the cluster CA: pass --cacert <data-dir>/ca.pem or set GLORY_CACERT",
                Some(_) => "; the API's certificate is not from the CA given (--cacert) or does not name this address",
            }
        } else if self.base.starts_with("https://")
            && (chain.contains("InvalidContentType")
                || chain.contains("corrupt message")
                || chain.contains("record overflow"))
        {
            "; the API answered without TLS: use an http:// address"
        } else {
            ""
        };
        anyhow::anyhow!("{method} {url}: {chain}{hint}")
    }

    /// Send a request; a non-2xx answer becomes an error carrying the API's message.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let (status, text) = self.send(method, path, body).await?;
        let value = parse_body(text);
        if status.is_success() {
            Ok(value)
        } else {
            Err(api_error(status, &value))
        }
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.call(Method::GET, path, None).await
    }

    /// GET into a typed answer: only the fields `T` names are kept (a benchmark
    /// listing 10,000 nodes must not hold 10,000 JSON trees in the process it measures).
    pub async fn get_as<T: serde::de::DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let (status, text) = self.send(Method::GET, path, None).await?;
        if !status.is_success() {
            let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
            return Err(api_error(status, &value));
        }
        serde_json::from_str(&text).with_context(|| format!("GET {path}: unexpected answer"))
    }

    /// Every node matching `query` (e.g. `state=down&group=g01`), following cursors.
    pub async fn all_nodes(&self, query: &str) -> anyhow::Result<Vec<Value>> {
        self.all_nodes_as(query).await
    }

    /// [`ApiClient::all_nodes`], each node read as `T`.
    pub async fn all_nodes_as<T: serde::de::DeserializeOwned>(
        &self,
        query: &str,
    ) -> anyhow::Result<Vec<T>> {
        #[derive(serde::Deserialize)]
        struct Page<T> {
            items: Vec<T>,
            next: Option<String>,
        }
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
            let page: Page<T> = self.get_as(&path).await?;
            out.extend(page.items);
            match page.next {
                Some(next) => cursor = Some(next),
                None => return Ok(out),
            }
        }
    }
}

/// A non-2xx answer as an error carrying the API's code and message.
fn api_error(status: reqwest::StatusCode, value: &Value) -> anyhow::Error {
    let message = value["error"]["message"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| value.to_string());
    let code = value["error"]["code"].as_str().unwrap_or("error");
    anyhow!("{status} {code}: {message}")
}

/// Percent-encode a query value.
/// A response body: JSON, nothing (`null`), or the text as a JSON string.
fn parse_body(text: String) -> Value {
    if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    }
}

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

/// One Server-Sent Event.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SseMessage {
    pub event: String,
    pub id: Option<String>,
    pub data: Value,
}

/// A Server-Sent Events stream being read.
pub struct EventStream {
    resp: reqwest::Response,
    buf: String,
}

impl EventStream {
    /// The next event; `None` when the server ended the stream. Comments (keep-alives)
    /// are skipped.
    pub async fn next(&mut self) -> anyhow::Result<Option<SseMessage>> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut msg = SseMessage::default();
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        msg.event = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("id:") {
                        msg.id = Some(v.trim().to_string());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        if !data.is_empty() {
                            data.push('\n');
                        }
                        data.push_str(v.strip_prefix(' ').unwrap_or(v));
                    }
                }
                if msg.event.is_empty() && data.is_empty() {
                    continue; // a comment
                }
                if msg.event.is_empty() {
                    msg.event = "message".into();
                }
                msg.data = serde_json::from_str(&data).unwrap_or(Value::String(data));
                return Ok(Some(msg));
            }
            match self.resp.chunk().await.context("read event stream")? {
                Some(bytes) => self
                    .buf
                    .push_str(&String::from_utf8_lossy(&bytes).replace("\r\n", "\n")),
                None => return Ok(None),
            }
        }
    }
}

impl ApiClient {
    /// Open a Server-Sent Events stream (`/api/v1/.../events`).
    pub async fn events(&self, path: &str) -> anyhow::Result<EventStream> {
        self.events_after(path, None).await
    }

    /// Open a Server-Sent Events stream resuming after event `last` (`Last-Event-ID`).
    pub async fn events_after(&self, path: &str, last: Option<u64>) -> anyhow::Result<EventStream> {
        let url = format!("{}{}", self.base, path);
        // No overall timeout: the stream lasts as long as the caller reads it.
        let http = self.http_client(None)?;
        let mut req = http
            .get(&url)
            .bearer_auth(&self.token)
            .header("accept", "text/event-stream");
        if let Some(id) = last {
            req = req.header("last-event-id", id.to_string());
        }
        let resp = req.send().await.with_context(|| format!("GET {url}"))?;
        if !resp.status().is_success() {
            let status = resp.status();
            let value: Value = resp.json().await.unwrap_or(Value::Null);
            return Err(anyhow!(
                "{status} {}: {}",
                value["error"]["code"].as_str().unwrap_or("error"),
                value["error"]["message"].as_str().unwrap_or("")
            ));
        }
        Ok(EventStream {
            resp,
            buf: String::new(),
        })
    }

    /// GET raw bytes (a `.torrent`); a non-2xx answer is an error with the API's message.
    pub async fn get_bytes(&self, path: &str) -> anyhow::Result<Vec<u8>> {
        let url = format!("{}{}", self.base, path);
        let resp = self
            .http
            .get(&url)
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        let status = resp.status();
        let bytes = resp.bytes().await.context("read response")?;
        if !status.is_success() {
            let value = parse_body(String::from_utf8_lossy(&bytes).into_owned());
            return Err(api_error(status, &value));
        }
        Ok(bytes.to_vec())
    }

    /// Upload a file into the content store (`PUT /api/v1/content/{sha256}`): hashed
    /// first, then streamed, `progress` told of every chunk sent. Its hash and size.
    pub async fn upload(
        &self,
        path: &std::path::Path,
        progress: impl Fn(u64) + Send + Sync + 'static,
    ) -> anyhow::Result<(String, u64)> {
        use futures::StreamExt;
        let (sha256, size) = {
            let path = path.to_path_buf();
            tokio::task::spawn_blocking(move || -> anyhow::Result<(String, u64)> {
                use sha2::Digest;
                let mut f = std::fs::File::open(&path)
                    .with_context(|| format!("open {}", path.display()))?;
                let mut h = sha2::Sha256::new();
                let size = std::io::copy(&mut f, &mut h)
                    .with_context(|| format!("read {}", path.display()))?;
                Ok((hex::encode(h.finalize()), size))
            })
            .await??
        };
        let file = tokio::fs::File::open(path)
            .await
            .with_context(|| format!("open {}", path.display()))?;
        let stream =
            tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024).inspect(move |chunk| {
                if let Ok(c) = chunk {
                    progress(c.len() as u64);
                }
            });
        // No overall timeout: a large image takes what it takes.
        let http = self.http_client(None)?;
        let url = format!("{}/api/v1/content/{sha256}", self.base);
        let resp = http
            .put(&url)
            .bearer_auth(&self.token)
            .header(reqwest::header::CONTENT_LENGTH, size)
            .body(reqwest::Body::wrap_stream(stream))
            .send()
            .await
            .with_context(|| format!("PUT {url}"))?;
        let status = resp.status();
        let value = parse_body(resp.text().await.context("read response")?);
        if !status.is_success() {
            return Err(api_error(status, &value));
        }
        Ok((sha256, size))
    }

    /// The same API with another bearer token.
    pub fn with_token(&self, token: &str) -> ApiClient {
        ApiClient {
            token: token.trim().to_string(),
            ..self.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scheme_follows_the_address_as_the_master_serves_it() {
        assert_eq!(base_url("127.0.0.1:7400"), "http://127.0.0.1:7400");
        assert_eq!(base_url("[::1]:7400/"), "http://[::1]:7400");
        assert_eq!(base_url("localhost:7400"), "http://localhost:7400");
        assert_eq!(base_url("10.0.1.1:7400"), "https://10.0.1.1:7400");
        assert_eq!(base_url("cm.example:7400"), "https://cm.example:7400");
        assert_eq!(base_url("http://10.0.1.1:7400"), "http://10.0.1.1:7400");
        assert_eq!(base_url("https://127.0.0.1:7400"), "https://127.0.0.1:7400");
    }

    #[test]
    fn a_ca_that_is_not_pem_is_refused() {
        let c = ApiClient::new("10.0.0.1:7400", "t").unwrap();
        let e = c.with_ca("not a certificate").err().unwrap().to_string();
        assert!(e.contains("no PEM certificate"), "{e}");
    }
}
