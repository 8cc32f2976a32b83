//! Machines that boot an image fetch its root filesystem from each other: this
//! provisioner makes the `.torrent` of the file in its verified cache, seeds it and
//! tracks its swarm (`glory_content::swarm`: our BitTorrent peer seeds). The initramfs
//! runs the agent's peer (`glory-node-agent torrent-get`) on `GET /torrent/{sha256}`
//! (every piece checked by SHA-1, the whole file by SHA-256) and falls back to
//! `GET /content/{sha256}`.
//!
//! Routes: `GET /torrent/{sha256}` (the torrent, of content a boot plan named),
//! `GET /torrent/{sha256}/swarm` (what its swarm moved) and `GET /announce` (the
//! tracker, BEP 3 with compact answers).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use crate::http::BootHttp;

/// How often peers re-announce (seconds): short, because a boot lasts minutes.
pub const TRACKER_INTERVAL_S: u64 = 10;

pub fn routes() -> Router<Arc<BootHttp>> {
    Router::new()
        .route("/torrent/{sha256}", get(torrent))
        .route("/torrent/{sha256}/swarm", get(swarm))
        .route("/announce", get(announce))
}

fn off() -> Response {
    (
        StatusCode::NOT_FOUND,
        "peer-to-peer boot is off on this provisioner (boot_p2p)\n",
    )
        .into_response()
}

async fn torrent(State(s): State<Arc<BootHttp>>, Path(sha256): Path<String>) -> Response {
    let Some(swarms) = &s.swarms else {
        return off();
    };
    if let Err(refused) = crate::http::cached(&s, &sha256).await {
        return refused;
    }
    let announce = format!("{}/announce", s.base);
    match swarms.torrent(&sha256, "boot content", &announce).await {
        Ok(t) => (
            [(header::CONTENT_TYPE, "application/x-bittorrent")],
            t.bytes,
        )
            .into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response(),
    }
}

async fn swarm(State(s): State<Arc<BootHttp>>, Path(sha256): Path<String>) -> Response {
    let Some(swarms) = &s.swarms else {
        return off();
    };
    let Some(t) = swarms.known(&sha256) else {
        return (
            StatusCode::NOT_FOUND,
            format!("no torrent of {sha256} was asked for\n"),
        )
            .into_response();
    };
    let st = swarms.stats(&t);
    Json(serde_json::json!({
        "sha256": sha256,
        "info_hash": hex::encode(t.info_hash),
        "pieces": t.pieces,
        "piece_length": t.piece_length,
        "peers": st.peers,
        "complete": st.complete,
        "completed": st.completed,
        "seeder_uploaded": st.seeder_uploaded,
        "peer_uploaded": st.peer_uploaded,
    }))
    .into_response()
}

async fn announce(
    State(s): State<Arc<BootHttp>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    uri: Uri,
) -> Response {
    let Some(swarms) = &s.swarms else {
        return off();
    };
    let ip = peer.ip().to_canonical();
    let mut tracker = swarms.tracker();
    let answer = match glory_content::tracker::parse_announce(uri.query().unwrap_or(""), ip) {
        Err(e) => tracker.answer(Err(e)),
        // One boot network: every machine on it is a neighbour.
        Ok(a) => {
            let peers = tracker.announce(&a, None, glory_protocol::now_ms());
            tracker.answer(peers)
        }
    };
    ([(header::CONTENT_TYPE, "text/plain")], answer).into_response()
}
