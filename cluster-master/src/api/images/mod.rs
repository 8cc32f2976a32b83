//! Content (`/content/{sha256}`: files by their hash), OS images (`/images`) and their
//! torrents and swarms; profiles and what a node is set up with (`setup.rs`); software
//! packages (`software.rs`). docs/PROVISIONING.md.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::Path;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use glory_content::{is_sha256, ContentError};
use glory_keymaster::schema::images::{BlobRef, ImageRecord};
use serde::{Deserialize, Serialize};
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::RefOr;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{Active, ApiError, ApiResult, J, Q};
use crate::provisioning::images::NewImage;
use crate::role::Node;

mod setup;
mod software;

pub(super) fn routes() -> OpenApiRouter<Arc<Node>> {
    OpenApiRouter::default()
        .routes(routes!(list_content))
        .routes(routes!(put_content))
        .routes(routes!(content_swarm))
        .routes(routes!(list_images, create_image))
        .routes(routes!(get_image, delete_image))
        .routes(routes!(image_torrent))
        .routes(routes!(image_swarm))
        .routes(routes!(get_image_version, delete_image_version))
        .merge(setup::routes())
        .merge(software::routes())
}

/// Bytes of any kind (a file, a `.torrent`).
pub(super) struct Binary;

impl utoipa::PartialSchema for Binary {
    fn schema() -> RefOr<Schema> {
        Schema::Object(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                    utoipa::openapi::KnownFormat::Binary,
                )))
                .build(),
        )
        .into()
    }
}

impl ToSchema for Binary {}

/// A SHA-256 in a path.
struct Sha256Path;

impl utoipa::PartialSchema for Sha256Path {
    fn schema() -> RefOr<Schema> {
        Schema::Object(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some("^[0-9a-f]{64}$"))
                .build(),
        )
        .into()
    }
}

impl ToSchema for Sha256Path {}

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

/// A file in the content store.
#[derive(Serialize, ToSchema)]
struct Content {
    sha256: String,
    size: u64,
}

fn store_error(e: ContentError) -> ApiError {
    match e {
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
    }
}

#[utoipa::path(put, path = "/content/{sha256}", tag = "images", operation_id = "putContent",
    summary = "Upload a file; stored only if its bytes hash to the path's SHA-256.",
    description = "Also served without a token at /content/{sha256} beside the API. 422 when the bytes hash to another SHA-256.",
    params(("sha256" = inline(Sha256Path), Path, description = "The content's SHA-256, 64 lower-case hex digits.")),
    request_body(content = inline(Binary), content_type = "application/octet-stream"),
    responses(
        (status = 200, description = "Already stored.", body = Content),
        (status = 201, description = "Stored.", body = Content),
        (status = 413, description = "Larger than the content store takes (`content_max_mb`).",
            body = inline(super::openapi::ErrorBody)),
    ))]
async fn put_content(
    Active(cluster): Active,
    Path(sha256): Path<String>,
    body: Body,
) -> ApiResult<(StatusCode, Json<Content>)> {
    if !is_sha256(&sha256) {
        return Err(ApiError::bad_request(format!(
            "{sha256:?} is not a SHA-256 (64 lower-case hex digits)"
        )));
    }
    let store = &cluster.images.content;
    if let Some(size) = store.size(&sha256) {
        return Ok((StatusCode::OK, Json(Content { sha256, size })));
    }
    let mut writer = store
        .writer(Some(&sha256), cluster.settings.content_max_bytes)
        .await
        .map_err(store_error)?;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request(format!("body: {e}")))?;
        writer.write(&chunk).await.map_err(store_error)?;
    }
    let (sha256, size) = writer.finish().await.map_err(store_error)?;
    Ok((StatusCode::CREATED, Json(Content { sha256, size })))
}

/// A file in the content store, as listed.
#[derive(Serialize, ToSchema)]
struct ContentItem {
    sha256: String,
    /// Null when the file went while the store was listed.
    #[schema(required = true)]
    size: Option<u64>,
}

#[derive(Serialize, ToSchema)]
struct ContentList {
    items: Vec<ContentItem>,
    total: usize,
}

#[utoipa::path(get, path = "/content", tag = "images", operation_id = "listContent",
    summary = "Files in the content store, by SHA-256.",
    responses((status = 200, description = "The files.", body = ContentList)))]
async fn list_content(Active(cluster): Active) -> ApiResult<Json<ContentList>> {
    let store = &cluster.images.content;
    let hashes = store
        .hashes()
        .map_err(|e| store_error(ContentError::Io(e)))?;
    let items: Vec<ContentItem> = hashes
        .into_iter()
        .map(|h| ContentItem {
            size: store.size(&h),
            sha256: h,
        })
        .collect();
    Ok(Json(ContentList {
        total: items.len(),
        items,
    }))
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

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct VersionQuery {
    /// A version (default: the newest).
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

#[utoipa::path(get, path = "/images/{name}/torrent", tag = "images", operation_id = "getImageTorrent",
    summary = "The .torrent of an image's root filesystem; starts its seeder.",
    params(("name" = String, Path, description = "An image name."), VersionQuery),
    responses((status = 200, description = "The .torrent (BitTorrent v1, announced to this cluster master's tracker at /announce); its seeder runs.",
        content_type = "application/x-bittorrent", body = inline(Binary))))]
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

/// What a torrent's swarm has moved.
#[derive(Serialize, ToSchema)]
struct Swarm {
    /// The image (an image's swarm only).
    #[serde(skip_serializing_if = "Option::is_none")]
    image: Option<String>,
    /// The image's version (an image's swarm only).
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<u32>,
    /// The content (a package's swarm only).
    #[serde(skip_serializing_if = "Option::is_none")]
    sha256: Option<String>,
    info_hash: String,
    pieces: usize,
    piece_length: u64,
    peers: usize,
    /// Peers that have every piece.
    complete: usize,
    /// Peers that reported `completed`.
    completed: u64,
    /// Bytes the cluster's seeders uploaded, the most each reported.
    seeder_uploaded: u64,
    /// Bytes the other peers uploaded (to each other), the most each reported.
    peer_uploaded: u64,
}

#[utoipa::path(get, path = "/images/{name}/swarm", tag = "images", operation_id = "getImageSwarm",
    summary = "What the swarm of an image's torrent has moved (seeders' and peers' uploads).",
    params(("name" = String, Path, description = "An image name."), VersionQuery),
    responses((status = 200, description = "The swarm.", body = Swarm)))]
async fn image_swarm(
    Active(cluster): Active,
    Path(name): Path<String>,
    Q(q): Q<VersionQuery>,
) -> ApiResult<Json<Swarm>> {
    let image = image_or_404(&cluster, &name, q.version)?;
    let torrent = cluster.image_torrent(&image).await?;
    let mut view = swarm_view(&cluster, &torrent);
    view.image = Some(image.name);
    view.version = Some(image.version);
    Ok(Json(view))
}

#[utoipa::path(get, path = "/content/{sha256}/swarm", tag = "images", operation_id = "getContentSwarm",
    summary = "What the swarm of content spreading peer-to-peer has moved.",
    description = "Content spreads peer-to-peer when it is an image's root filesystem or a package at least p2p_min_mb large. Its .torrent is served without a token at /torrent/{sha256} beside the API.",
    params(("sha256" = inline(Sha256Path), Path, description = "The content's SHA-256, 64 lower-case hex digits.")),
    responses((status = 200, description = "The swarm.", body = Swarm)))]
async fn content_swarm(
    Active(cluster): Active,
    Path(sha256): Path<String>,
) -> ApiResult<Json<Swarm>> {
    let torrent = distributed_torrent(&cluster, &sha256).await?;
    let mut view = swarm_view(&cluster, &torrent);
    view.sha256 = Some(sha256);
    Ok(Json(view))
}

fn swarm_view(
    cluster: &crate::cluster::Cluster,
    torrent: &glory_content::torrent::Torrent,
) -> Swarm {
    let s = cluster
        .distribution
        .tracker()
        .stats(&torrent.info_hash)
        .unwrap_or_default();
    Swarm {
        image: None,
        version: None,
        sha256: None,
        info_hash: hex::encode(torrent.info_hash),
        pieces: torrent.pieces,
        piece_length: torrent.piece_length,
        peers: s.peers,
        complete: s.complete,
        completed: s.completed,
        seeder_uploaded: s.seeder_uploaded,
        peer_uploaded: s.peer_uploaded,
    }
}

/// One version of an image; immutable.
#[derive(Serialize, ToSchema)]
#[schema(as = Image)]
struct ImageView {
    name: String,
    version: u32,
    kernel: BlobRef,
    initrd: BlobRef,
    /// The root filesystem (a squashfs for `glory image build`).
    rootfs: BlobRef,
    /// Bytes of kernel, initrd and root filesystem together.
    size: u64,
    /// The root filesystem's SHA-256.
    sha256: String,
    description: String,
    /// The Debian suite it was built from, when built by `glory image build`.
    #[schema(required = true)]
    suite: Option<String>,
    packages: Vec<String>,
    created_ms: u64,
}

impl From<&ImageRecord> for ImageView {
    fn from(i: &ImageRecord) -> Self {
        ImageView {
            name: i.name.clone(),
            version: i.version,
            kernel: i.kernel.clone(),
            initrd: i.initrd.clone(),
            rootfs: i.rootfs.clone(),
            size: i.kernel.size + i.initrd.size + i.rootfs.size,
            sha256: i.rootfs.sha256.clone(),
            description: i.description.clone(),
            suite: i.suite.clone(),
            packages: i.packages.clone(),
            created_ms: i.created_ms,
        }
    }
}

/// A new version of an image, from files uploaded to the content store.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = ImageRequest)]
struct ImageBody {
    /// 1-63 lower-case letters, digits or '-'.
    #[schema(pattern = "^[a-z0-9][a-z0-9-]{0,62}$")]
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

#[utoipa::path(post, path = "/images", tag = "images", operation_id = "createImage",
    summary = "Store a new version of an image (1 for a new name) from uploaded content; immutable.",
    description = "409 when a file is not in the content store (upload it first); 422 when its size is not the one given.",
    request_body(content = ImageBody, example = json!({"name": "bookworm-base",
        "description": "Debian bookworm with the agent",
        "kernel": {"sha256": "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "size": 8388608},
        "initrd": {"sha256": "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb", "size": 39845888},
        "rootfs": {"sha256": "cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc", "size": 83886080}})),
    responses((status = 201, description = "The image version.", body = ImageView, links(
        ("GetImage" = (operation_id = "getImage", parameters(("name" = "$response.body#/name")))),
        ("DeleteImage" = (operation_id = "deleteImage", parameters(("name" = "$response.body#/name")))),
        ("GetImageVersion" = (operation_id = "getImageVersion", parameters(("name" = "$response.body#/name"), ("version" = "$response.body#/version")))),
        ("DeleteImageVersion" = (operation_id = "deleteImageVersion", parameters(("name" = "$response.body#/name"), ("version" = "$response.body#/version")))),
        ("GetImageTorrent" = (operation_id = "getImageTorrent", parameters(("name" = "$response.body#/name")))),
        ("GetImageSwarm" = (operation_id = "getImageSwarm", parameters(("name" = "$response.body#/name")))),
    ))))]
async fn create_image(
    Active(cluster): Active,
    J(body): J<ImageBody>,
) -> ApiResult<(StatusCode, Json<ImageView>)> {
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
    Ok((StatusCode::CREATED, Json(ImageView::from(&record))))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ImageQuery {
    /// Only this image's versions.
    name: Option<String>,
}

#[derive(Serialize, ToSchema)]
struct ImageList {
    items: Vec<ImageView>,
    total: usize,
}

#[utoipa::path(get, path = "/images", tag = "images", operation_id = "listImages",
    summary = "Every image version.", params(ImageQuery),
    responses((status = 200, description = "The images.", body = ImageList)))]
async fn list_images(Active(cluster): Active, Q(q): Q<ImageQuery>) -> Json<ImageList> {
    let items: Vec<ImageView> = cluster
        .images
        .images()
        .iter()
        .filter(|i| q.name.as_deref().is_none_or(|n| n == i.name))
        .map(ImageView::from)
        .collect();
    Json(ImageList {
        total: items.len(),
        items,
    })
}

/// An image's versions, oldest first.
#[derive(Serialize, ToSchema)]
struct ImageVersions {
    name: String,
    versions: Vec<ImageView>,
}

#[utoipa::path(get, path = "/images/{name}", tag = "images", operation_id = "getImage",
    summary = "An image's versions.", params(("name" = String, Path, description = "An image name.")),
    responses((status = 200, description = "Its versions.", body = ImageVersions)))]
async fn get_image(
    Active(cluster): Active,
    Path(name): Path<String>,
) -> ApiResult<Json<ImageVersions>> {
    let versions: Vec<ImageView> = cluster
        .images
        .images()
        .iter()
        .filter(|i| i.name == name)
        .map(ImageView::from)
        .collect();
    if versions.is_empty() {
        return Err(ApiError::not_found(format!("no image {name}")));
    }
    Ok(Json(ImageVersions { name, versions }))
}

fn version_param(version: &str) -> ApiResult<u32> {
    version
        .parse()
        .map_err(|_| ApiError::bad_request(format!("version: {version:?} is not a number")))
}

#[utoipa::path(get, path = "/images/{name}/{version}", tag = "images", operation_id = "getImageVersion",
    summary = "One version of an image.",
    params(("name" = String, Path, description = "An image name."),
        ("version" = u32, Path, description = "A version number.")),
    responses((status = 200, description = "The version.", body = ImageView)))]
async fn get_image_version(
    Active(cluster): Active,
    Path((name, version)): Path<(String, String)>,
) -> ApiResult<Json<ImageView>> {
    let version = version_param(&version)?;
    let image = cluster
        .images
        .image(&name, Some(version))
        .ok_or_else(|| ApiError::not_found(format!("no image {name} version {version}")))?;
    Ok(Json(ImageView::from(&image)))
}

/// The image versions deleted.
#[derive(Serialize, ToSchema)]
struct ImagesDeleted {
    deleted: Vec<ImageView>,
}

fn deleted(images: Vec<ImageRecord>) -> Json<ImagesDeleted> {
    Json(ImagesDeleted {
        deleted: images.iter().map(ImageView::from).collect(),
    })
}

#[utoipa::path(delete, path = "/images/{name}", tag = "images", operation_id = "deleteImage",
    summary = "Delete every version of an image; 409 while a profile uses one.",
    params(("name" = String, Path, description = "An image name.")),
    responses((status = 200, description = "What was deleted.", body = ImagesDeleted)))]
async fn delete_image(
    Active(cluster): Active,
    Path(name): Path<String>,
) -> ApiResult<Json<ImagesDeleted>> {
    Ok(deleted(cluster.delete_image(&name, None).await?))
}

#[utoipa::path(delete, path = "/images/{name}/{version}", tag = "images", operation_id = "deleteImageVersion",
    summary = "Delete one version; 409 while a profile uses it.",
    params(("name" = String, Path, description = "An image name."),
        ("version" = u32, Path, description = "A version number.")),
    responses((status = 200, description = "What was deleted.", body = ImagesDeleted)))]
async fn delete_image_version(
    Active(cluster): Active,
    Path((name, version)): Path<(String, String)>,
) -> ApiResult<Json<ImagesDeleted>> {
    let version = version_param(&version)?;
    Ok(deleted(cluster.delete_image(&name, Some(version)).await?))
}
