//! The group's caching proxy for content (software packages, images): agents fetch
//! `GET /content/{sha256}` here instead of from the cluster master. A file is fetched
//! upstream once, verified against its hash while it is written to the cache, and
//! served from the cache after; concurrent requests for the same file wait for that one
//! fetch. Only files the cluster master named in a message passing through this group
//! master (`GroupToAgent::Software`) are fetched: the proxy is not an open relay.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use glory_content::{fetch_into, CacheError, ContentCache, ContentStore, Source};
use glory_protocol::setup::PackageSpec;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub struct ContentProxy {
    cache: ContentCache,
    /// `http://ip:port`, as agents reach it.
    base: String,
    client: reqwest::Client,
    /// A cache directory this proxy made for itself, removed when it stops.
    own_dir: Option<PathBuf>,
}

impl ContentProxy {
    /// Bind the proxy's listener. `cache`: its directory; None: a temporary one.
    pub async fn bind(
        listen: SocketAddr,
        advertise_ip: std::net::IpAddr,
        cache: Option<PathBuf>,
        ca_pem: Option<&str>,
    ) -> anyhow::Result<(Arc<ContentProxy>, tokio::net::TcpListener)> {
        use anyhow::Context;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("content proxy: listen on {listen}"))?;
        let port = listener.local_addr()?.port();
        let (dir, own_dir) = match cache {
            Some(d) => (d, None),
            None => {
                let d = std::env::temp_dir().join(format!(
                    "glory-gm-content-{}-{:016x}",
                    std::process::id(),
                    rand::random::<u64>()
                ));
                (d.clone(), Some(d))
            }
        };
        let store =
            ContentStore::open(&dir).with_context(|| format!("content cache {}", dir.display()))?;
        let proxy = ContentProxy {
            cache: ContentCache::new(store),
            base: format!("http://{}", SocketAddr::new(advertise_ip, port)),
            // The cluster master's content is HTTPS when its API is.
            client: glory_content::http_client(ca_pem)?,
            own_dir,
        };
        Ok((Arc::new(proxy), listener))
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Serve until `shutdown`.
    pub async fn serve(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        shutdown: CancellationToken,
    ) {
        info!(base = %self.base, "content proxy serving");
        let app = Router::new()
            .route("/content/{sha256}", get(fetch))
            .with_state(self.clone());
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
        {
            warn!(error = %e, "content proxy failed");
        }
    }

    /// Point packages at this proxy, remembering where each comes from.
    pub fn rewrite(&self, specs: &mut [PackageSpec]) {
        for s in specs {
            if !glory_content::is_sha256(&s.sha256) {
                continue;
            }
            let source = Source {
                url: s.url.clone(),
                size: s.size,
            };
            self.cache.learn(&s.sha256, source);
            s.url = format!("{}/content/{}", self.base, s.sha256);
        }
    }

    /// Have `sha256` in the cache: fetched once however many ask at the same time.
    async fn ensure(&self, sha256: &str) -> Result<(), (StatusCode, String)> {
        let client = self.client.clone();
        let fetched = self
            .cache
            .ensure(sha256, |source, writer| fetch_into(client, source, writer))
            .await;
        match fetched {
            Ok(()) => Ok(()),
            Err(e @ CacheError::Unknown(_)) => Err((StatusCode::NOT_FOUND, e.to_string())),
            Err(e) => Err((StatusCode::BAD_GATEWAY, e.to_string())),
        }
    }
}

impl Drop for ContentProxy {
    fn drop(&mut self) {
        if let Some(d) = &self.own_dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

async fn fetch(State(proxy): State<Arc<ContentProxy>>, Path(sha256): Path<String>) -> Response {
    let Some(path) = proxy.cache.store().path(&sha256) else {
        return (StatusCode::BAD_REQUEST, "not a SHA-256\n").into_response();
    };
    if let Err((status, why)) = proxy.ensure(&sha256).await {
        return (status, format!("{why}\n")).into_response();
    }
    let file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    };
    let len = file.metadata().await.map(|m| m.len()).unwrap_or(0);
    let stream = tokio_util::io::ReaderStream::with_capacity(file, 64 * 1024);
    let mut response = Response::new(Body::from_stream(stream));
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let Ok(v) = HeaderValue::from_str(&sha256) {
        h.insert("x-checksum-sha256", v);
    }
    response
}
