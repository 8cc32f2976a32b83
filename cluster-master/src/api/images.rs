//! Content (`/content/{sha256}`: files by their hash), OS images (`/images`),
//! profiles (`/profiles`), what a node is set up with (`/nodes/{id}/config`,
//! `/nodes/{id}/setup`) and software packages (`/software`). docs/PROVISIONING.md.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::Path;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use futures::StreamExt;
use glory_content::{is_sha256, ContentError};
use glory_keymaster::schema::images::{
    BlobRef, DeployMode, FirstBootConfig, ImageRecord, Installation, NodeMatch, ProfileRecord,
    SoftwareRecord,
};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{Active, ApiError, ApiResult, J, Q};
use crate::provisioning::images::NewImage;
use crate::role::Node;

pub(super) fn routes() -> Router<Arc<Node>> {
    Router::new()
        .route("/content", get(list_content))
        .route("/content/{sha256}", put(put_content))
        .route("/content/{sha256}/swarm", get(content_swarm))
        .route("/images", get(list_images).post(create_image))
        .route("/images/{name}", get(get_image).delete(delete_image))
        .route("/images/{name}/torrent", get(image_torrent))
        .route("/images/{name}/swarm", get(image_swarm))
        .route(
            "/images/{name}/{version}",
            get(get_image_version).delete(delete_image_version),
        )
        .route("/profiles", get(list_profiles))
        .route(
            "/profiles/{name}",
            get(get_profile).put(put_profile).delete(delete_profile),
        )
        .route("/nodes/{id}/config", get(node_config))
        .route("/nodes/{id}/setup", get(node_setup))
        .route("/software", get(list_software).post(add_package))
        .route("/software/{name}", get(get_package).delete(delete_package))
        .route("/software/{name}/installations", put(put_installations))
        .route(
            "/software/{name}/{version}",
            axum::routing::delete(delete_package_version),
        )
}

/// `GET /content/{sha256}`, beside the API and without a token: the hash is the
/// capability (only authenticated links and operators hand hashes out). Group masters'
/// caching proxies and agents fetch here.
pub(crate) async fn serve_content(
    Active(cluster): Active,
    Path(sha256): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(path) = cluster.images.content.path(&sha256) else {
        return ApiError::bad_request(format!("{sha256:?} is not a SHA-256")).into_response();
    };
    if !path.exists() {
        return ApiError::not_found(format!("no content {sha256}")).into_response();
    }
    cluster
        .images
        .served
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let file = glory_provisioner::http::ServedFile {
        path,
        sha256,
        data: None,
    };
    glory_provisioner::http::serve_file(&file, &headers).await
}

async fn put_content(
    Active(cluster): Active,
    Path(sha256): Path<String>,
    body: Body,
) -> ApiResult<Response> {
    if !is_sha256(&sha256) {
        return Err(ApiError::bad_request(format!(
            "{sha256:?} is not a SHA-256 (64 lower-case hex digits)"
        )));
    }
    let store = &cluster.images.content;
    if let Some(size) = store.size(&sha256) {
        return Ok((
            StatusCode::OK,
            Json(json!({"sha256": sha256, "size": size})),
        )
            .into_response());
    }
    let bad = |e: ContentError| match e {
        ContentError::Io(e) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("content store: {e}"),
        ),
        ContentError::TooLarge { .. } => {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", e.to_string())
        }
        // The bytes and the hash in the path disagree: a rule between the two.
        e @ ContentError::Mismatch { .. } => ApiError::unprocessable(e.to_string()),
        other => ApiError::bad_request(other.to_string()),
    };
    let mut writer = store
        .writer(Some(&sha256), cluster.settings.content_max_bytes)
        .await
        .map_err(bad)?;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request(format!("body: {e}")))?;
        writer.write(&chunk).await.map_err(bad)?;
    }
    let (sha256, size) = writer.finish().await.map_err(bad)?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"sha256": sha256, "size": size})),
    )
        .into_response())
}

async fn list_content(Active(cluster): Active) -> ApiResult<Json<Value>> {
    let store = &cluster.images.content;
    let hashes = store.hashes().map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("content store: {e}"),
        )
    })?;
    let items: Vec<Value> = hashes
        .into_iter()
        .map(|h| json!({"size": store.size(&h), "sha256": h}))
        .collect();
    Ok(Json(json!({"total": items.len(), "items": items})))
}

/// `GET /announce`, beside the API and without a token: the BitTorrent tracker of the
/// images' torrents (BEP 3, compact answers).
pub(crate) async fn announce(
    Active(cluster): Active,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    uri: axum::http::Uri,
) -> Response {
    let ip = peer.ip().to_canonical();
    let answer = match glory_content::tracker::parse_announce(uri.query().unwrap_or(""), ip) {
        Err(e) => cluster.distribution.tracker().answer(Err(e)),
        Ok(a) => {
            let group = cluster.group_of_ip(ip);
            let mut tracker = cluster.distribution.tracker();
            let peers = tracker.announce(&a, group, glory_protocol::now_ms());
            tracker.answer(peers)
        }
    };
    ([(axum::http::header::CONTENT_TYPE, "text/plain")], answer).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VersionQuery {
    version: Option<u32>,
}

fn image_or_404(
    cluster: &crate::cluster::Cluster,
    name: &str,
    version: Option<u32>,
) -> ApiResult<ImageRecord> {
    cluster.images.image(name, version).ok_or_else(|| {
        ApiError::not_found(match version {
            Some(v) => format!("no image {name} version {v}"),
            None => format!("no image {name}"),
        })
    })
}

/// The `.torrent` of an image's root filesystem (its seeder started).
async fn image_torrent(
    Active(cluster): Active,
    Path(name): Path<String>,
    Q(q): Q<VersionQuery>,
) -> ApiResult<Response> {
    let image = image_or_404(&cluster, &name, q.version)?;
    let torrent = cluster.image_torrent(&image).await?;
    let file = format!("{}-{}.torrent", image.name, image.version);
    Ok(torrent_response(torrent.bytes, &file))
}

/// `GET /torrent/{sha256}`, beside the API and without a token like the content itself:
/// the `.torrent` of content that spreads peer-to-peer (an image's root filesystem, a
/// large package), its seeder started. Agents fetch large packages by it.
pub(crate) async fn serve_torrent(
    Active(cluster): Active,
    Path(sha256): Path<String>,
) -> ApiResult<Response> {
    let torrent = distributed_torrent(&cluster, &sha256).await?;
    Ok(torrent_response(
        torrent.bytes,
        &format!("{sha256}.torrent"),
    ))
}

async fn distributed_torrent(
    cluster: &crate::cluster::Cluster,
    sha256: &str,
) -> ApiResult<glory_content::torrent::Torrent> {
    let what = cluster.distributed(sha256).ok_or_else(|| {
        ApiError::not_found(format!(
            "no image or package of peer-to-peer size has content {sha256}"
        ))
    })?;
    Ok(cluster.content_torrent(sha256, &what).await?)
}

fn torrent_response(bytes: Vec<u8>, file: &str) -> Response {
    let disposition = format!("attachment; filename=\"{file}\"");
    (
        [
            (
                axum::http::header::CONTENT_TYPE,
                "application/x-bittorrent".to_string(),
            ),
            (axum::http::header::CONTENT_DISPOSITION, disposition),
        ],
        bytes,
    )
        .into_response()
}

/// What the swarm of an image's torrent has moved.
async fn image_swarm(
    Active(cluster): Active,
    Path(name): Path<String>,
    Q(q): Q<VersionQuery>,
) -> ApiResult<Json<Value>> {
    let image = image_or_404(&cluster, &name, q.version)?;
    let torrent = cluster.image_torrent(&image).await?;
    let mut view = swarm_view(&cluster, &torrent);
    view["image"] = json!(image.name);
    view["version"] = json!(image.version);
    Ok(Json(view))
}

/// What the swarm of any content spreading peer-to-peer has moved (a large package's).
async fn content_swarm(
    Active(cluster): Active,
    Path(sha256): Path<String>,
) -> ApiResult<Json<Value>> {
    let torrent = distributed_torrent(&cluster, &sha256).await?;
    let mut view = swarm_view(&cluster, &torrent);
    view["sha256"] = json!(sha256);
    Ok(Json(view))
}

fn swarm_view(
    cluster: &crate::cluster::Cluster,
    torrent: &glory_content::torrent::Torrent,
) -> Value {
    let s = cluster
        .distribution
        .tracker()
        .stats(&torrent.info_hash)
        .unwrap_or_default();
    json!({
        "info_hash": hex::encode(torrent.info_hash),
        "pieces": torrent.pieces,
        "piece_length": torrent.piece_length,
        "peers": s.peers,
        "complete": s.complete,
        "completed": s.completed,
        "seeder_uploaded": s.seeder_uploaded,
        "peer_uploaded": s.peer_uploaded,
    })
}

fn image_view(i: &ImageRecord) -> Value {
    json!({
        "name": i.name,
        "version": i.version,
        "kernel": i.kernel,
        "initrd": i.initrd,
        "rootfs": i.rootfs,
        "size": i.kernel.size + i.initrd.size + i.rootfs.size,
        "sha256": i.rootfs.sha256,
        "description": i.description,
        "suite": i.suite,
        "packages": i.packages,
        "created_ms": i.created_ms,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ImageBody {
    name: String,
    kernel: BlobRef,
    initrd: BlobRef,
    rootfs: BlobRef,
    #[serde(default)]
    description: String,
    #[serde(default)]
    suite: Option<String>,
    #[serde(default)]
    packages: Vec<String>,
}

async fn create_image(
    Active(cluster): Active,
    J(body): J<ImageBody>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let record = cluster
        .create_image(NewImage {
            name: body.name,
            kernel: body.kernel,
            initrd: body.initrd,
            rootfs: body.rootfs,
            description: body.description,
            suite: body.suite,
            packages: body.packages,
        })
        .await?;
    Ok((StatusCode::CREATED, Json(image_view(&record))))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ImageQuery {
    name: Option<String>,
}

async fn list_images(Active(cluster): Active, Q(q): Q<ImageQuery>) -> Json<Value> {
    let items: Vec<Value> = cluster
        .images
        .images()
        .iter()
        .filter(|i| q.name.as_deref().is_none_or(|n| n == i.name))
        .map(image_view)
        .collect();
    Json(json!({"total": items.len(), "items": items}))
}

async fn get_image(Active(cluster): Active, Path(name): Path<String>) -> ApiResult<Json<Value>> {
    let versions: Vec<Value> = cluster
        .images
        .images()
        .iter()
        .filter(|i| i.name == name)
        .map(image_view)
        .collect();
    if versions.is_empty() {
        return Err(ApiError::not_found(format!("no image {name}")));
    }
    Ok(Json(json!({"name": name, "versions": versions})))
}

fn version_param(version: &str) -> ApiResult<u32> {
    version
        .parse()
        .map_err(|_| ApiError::bad_request(format!("version: {version:?} is not a number")))
}

async fn get_image_version(
    Active(cluster): Active,
    Path((name, version)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let version = version_param(&version)?;
    let image = cluster
        .images
        .image(&name, Some(version))
        .ok_or_else(|| ApiError::not_found(format!("no image {name} version {version}")))?;
    Ok(Json(image_view(&image)))
}

fn deleted(images: Vec<ImageRecord>) -> Json<Value> {
    let items: Vec<Value> = images.iter().map(image_view).collect();
    Json(json!({"deleted": items}))
}

async fn delete_image(Active(cluster): Active, Path(name): Path<String>) -> ApiResult<Json<Value>> {
    Ok(deleted(cluster.delete_image(&name, None).await?))
}

async fn delete_image_version(
    Active(cluster): Active,
    Path((name, version)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let version = version_param(&version)?;
    Ok(deleted(cluster.delete_image(&name, Some(version)).await?))
}

fn profile_view(p: &ProfileRecord) -> Value {
    json!({
        "name": p.name,
        "image": p.image,
        "image_version": p.image_version,
        "mode": p.mode,
        "match": p.matches,
        "config": p.config,
        "updated_ms": p.updated_ms,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileBody {
    #[serde(default)]
    image: Option<String>,
    #[serde(default)]
    image_version: Option<u32>,
    #[serde(default)]
    mode: DeployMode,
    #[serde(default, rename = "match")]
    matches: NodeMatch,
    #[serde(default)]
    config: FirstBootConfig,
}

async fn list_profiles(Active(cluster): Active) -> Json<Value> {
    let items: Vec<Value> = cluster.images.profiles().iter().map(profile_view).collect();
    Json(json!({"total": items.len(), "items": items}))
}

async fn get_profile(Active(cluster): Active, Path(name): Path<String>) -> ApiResult<Json<Value>> {
    let p = cluster
        .images
        .profile(&name)
        .ok_or_else(|| ApiError::not_found(format!("no profile {name}")))?;
    Ok(Json(profile_view(&p)))
}

async fn put_profile(
    Active(cluster): Active,
    Path(name): Path<String>,
    J(body): J<ProfileBody>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let existed = cluster.images.profile(&name).is_some();
    let record = cluster
        .put_profile(ProfileRecord {
            v: 0,
            name,
            image: body.image,
            image_version: body.image_version,
            mode: body.mode,
            matches: body.matches,
            config: body.config,
            updated_ms: 0,
        })
        .await?;
    let status = if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(profile_view(&record))))
}

async fn delete_profile(
    Active(cluster): Active,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let p = cluster.delete_profile(&name).await?;
    Ok(Json(profile_view(&p)))
}

fn unknown_node(id: &str) -> ApiError {
    ApiError::not_found(format!("no node {id}"))
}

async fn node_config(Active(cluster): Active, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let want = cluster
        .desired_setup(&id)
        .ok_or_else(|| unknown_node(&id))?;
    let profile = want.profile.as_ref().map(|p| p.name.clone());
    let image = want.profile.as_ref().and_then(|p| {
        let name = p.image.as_deref()?;
        let i = cluster.images.image(name, p.image_version)?;
        Some(json!({"name": i.name, "version": i.version, "mode": p.mode}))
    });
    match want.config {
        Ok(config) => Ok(Json(json!({
            "node": id,
            "profile": profile,
            "image": image,
            "hash": config.as_ref().map(|c| c.hash.clone()),
            "hostname": config.as_ref().and_then(|c| c.hostname.clone()),
            "files": config.as_ref().map(|c| c.files.iter().map(|f| json!({
                "path": f.path,
                "mode": format!("{:04o}", f.mode),
                "content": f.content,
            })).collect::<Vec<_>>()).unwrap_or_default(),
        }))),
        Err(e) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "render_failed",
            format!("profile {}: {e}", profile.unwrap_or_default()),
        )),
    }
}

async fn node_setup(Active(cluster): Active, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let want = cluster
        .desired_setup(&id)
        .ok_or_else(|| unknown_node(&id))?;
    let had = cluster.setup.of(&id).unwrap_or_default();
    let report = had.report.unwrap_or_default();
    let (hash, render_error) = match &want.config {
        Ok(c) => (c.as_ref().map(|c| c.hash.clone()), None),
        Err(e) => (None, Some(e.to_string())),
    };
    let in_sync = hash.is_none() || report.config_hash == hash;
    Ok(Json(json!({
        "node": id,
        "profile": want.profile.as_ref().map(|p| p.name.clone()),
        "config": {
            "hash": hash,
            "applied_hash": report.config_hash,
            "in_sync": in_sync,
            "error": render_error.or(report.config_error),
            "drift": report.drift,
        },
        "software": {
            "desired": want.software.iter().map(|p| json!({
                "name": p.name, "version": p.version, "sha256": p.sha256, "size": p.size,
            })).collect::<Vec<_>>(),
            "installed": report.installed,
            "failed": report.failed,
        },
        "reported_ms": (had.reported_ms > 0).then_some(had.reported_ms),
    })))
}

fn package_view(s: &SoftwareRecord) -> Value {
    json!({
        "name": s.name,
        "versions": s.versions,
        "installations": s.installations,
        "updated_ms": s.updated_ms,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PackageBody {
    name: String,
    version: String,
    sha256: String,
    size: u64,
}

async fn add_package(
    Active(cluster): Active,
    J(body): J<PackageBody>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let record = cluster
        .add_package_version(
            &body.name,
            &body.version,
            BlobRef {
                sha256: body.sha256,
                size: body.size,
            },
        )
        .await?;
    Ok((StatusCode::CREATED, Json(package_view(&record))))
}

async fn list_software(Active(cluster): Active) -> Json<Value> {
    let items: Vec<Value> = cluster.images.software().iter().map(package_view).collect();
    Json(json!({"total": items.len(), "items": items}))
}

async fn get_package(Active(cluster): Active, Path(name): Path<String>) -> ApiResult<Json<Value>> {
    let s = cluster
        .images
        .package(&name)
        .ok_or_else(|| ApiError::not_found(format!("no package {name}")))?;
    Ok(Json(package_view(&s)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InstallationsBody {
    installations: Vec<Installation>,
}

async fn put_installations(
    Active(cluster): Active,
    Path(name): Path<String>,
    J(body): J<InstallationsBody>,
) -> ApiResult<Json<Value>> {
    let record = cluster.set_installations(&name, body.installations).await?;
    Ok(Json(package_view(&record)))
}

async fn delete_package(
    Active(cluster): Active,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let s = cluster.delete_package(&name, None).await?;
    Ok(Json(package_view(&s)))
}

async fn delete_package_version(
    Active(cluster): Active,
    Path((name, version)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let s = cluster.delete_package(&name, Some(&version)).await?;
    Ok(Json(package_view(&s)))
}
