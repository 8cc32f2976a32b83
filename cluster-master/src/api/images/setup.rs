//! Profiles (`/profiles`: which image, deploy mode and first-boot configuration the
//! nodes they match get) and what a node is set up with (`/nodes/{id}/config`,
//! `/nodes/{id}/setup`).

use std::sync::Arc;

use axum::extract::Path;
use axum::http::StatusCode;
use axum::Json;
use glory_keymaster::schema::images::{DeployMode, FirstBootConfig, NodeMatch, ProfileRecord};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::super::{Active, ApiError, ApiResult, J};
use crate::role::Node;

pub(super) fn routes() -> OpenApiRouter<Arc<Node>> {
    OpenApiRouter::default()
        .routes(routes!(list_profiles))
        .routes(routes!(get_profile, put_profile, delete_profile))
        .routes(routes!(node_config))
        .routes(routes!(node_setup))
}

/// Which image, deploy mode and configuration the nodes it matches get.
#[derive(Serialize, ToSchema)]
#[schema(as = Profile)]
struct ProfileView {
    name: String,
    #[schema(required = true)]
    image: Option<String>,
    /// A pinned version; null: the newest.
    #[schema(required = true)]
    image_version: Option<u32>,
    mode: DeployMode,
    #[serde(rename = "match")]
    matches: NodeMatch,
    config: FirstBootConfig,
    updated_ms: u64,
}

impl From<ProfileRecord> for ProfileView {
    fn from(p: ProfileRecord) -> Self {
        ProfileView {
            name: p.name,
            image: p.image,
            image_version: p.image_version,
            mode: p.mode,
            matches: p.matches,
            config: p.config,
            updated_ms: p.updated_ms,
        }
    }
}

/// A profile as given: templates are checked when it is stored.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = ProfileRequest)]
struct ProfileBody {
    /// The image its nodes boot; none: they keep what they have.
    #[serde(default)]
    image: Option<String>,
    /// A pinned version; none: the newest.
    #[serde(default)]
    image_version: Option<u32>,
    #[serde(default)]
    mode: DeployMode,
    #[serde(default, rename = "match")]
    matches: NodeMatch,
    #[serde(default)]
    config: FirstBootConfig,
}

#[derive(Serialize, ToSchema)]
struct ProfileList {
    items: Vec<ProfileView>,
    total: usize,
}

#[utoipa::path(get, path = "/profiles", tag = "images", operation_id = "listProfiles",
    summary = "Profiles: which image, deploy mode and configuration the nodes they match get.",
    responses((status = 200, description = "The profiles.", body = ProfileList)))]
async fn list_profiles(Active(cluster): Active) -> Json<ProfileList> {
    let items: Vec<ProfileView> = cluster
        .images
        .profiles()
        .into_iter()
        .map(ProfileView::from)
        .collect();
    Json(ProfileList {
        total: items.len(),
        items,
    })
}

#[utoipa::path(get, path = "/profiles/{name}", tag = "images", operation_id = "getProfile",
    summary = "One profile.",
    params(("name" = String, Path, description = "A profile name.", pattern = "^[a-z0-9][a-z0-9-]{0,62}$")),
    responses((status = 200, description = "The profile.", body = ProfileView)))]
async fn get_profile(
    Active(cluster): Active,
    Path(name): Path<String>,
) -> ApiResult<Json<ProfileView>> {
    let p = cluster
        .images
        .profile(&name)
        .ok_or_else(|| ApiError::not_found(format!("no profile {name}")))?;
    Ok(Json(p.into()))
}

#[utoipa::path(put, path = "/profiles/{name}", tag = "images", operation_id = "putProfile",
    summary = "Create (201) or replace (200) a profile; templates are checked.",
    description = "422 when a template does not render or the image does not exist.",
    params(("name" = String, Path, description = "A profile name.", pattern = "^[a-z0-9][a-z0-9-]{0,62}$")),
    request_body = ProfileBody,
    responses(
        (status = 200, description = "Replaced.", body = ProfileView),
        (status = 201, description = "Created.", body = ProfileView, links(
            ("GetProfile" = (operation_id = "getProfile", parameters(("name" = "$response.body#/name")))),
            ("DeleteProfile" = (operation_id = "deleteProfile", parameters(("name" = "$response.body#/name")))),
        )),
    ))]
async fn put_profile(
    Active(cluster): Active,
    Path(name): Path<String>,
    J(body): J<ProfileBody>,
) -> ApiResult<(StatusCode, Json<ProfileView>)> {
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
    Ok((status, Json(record.into())))
}

#[utoipa::path(delete, path = "/profiles/{name}", tag = "images", operation_id = "deleteProfile",
    summary = "Delete a profile (nodes keep the files they have).",
    params(("name" = String, Path, description = "A profile name.", pattern = "^[a-z0-9][a-z0-9-]{0,62}$")),
    responses((status = 200, description = "The deleted profile.", body = ProfileView)))]
async fn delete_profile(
    Active(cluster): Active,
    Path(name): Path<String>,
) -> ApiResult<Json<ProfileView>> {
    Ok(Json(cluster.delete_profile(&name).await?.into()))
}

fn unknown_node(id: &str) -> ApiError {
    ApiError::not_found(format!("no node {id}"))
}

/// The image a node's profile gives it.
#[derive(Serialize, ToSchema)]
struct ConfigImage {
    name: String,
    version: u32,
    mode: DeployMode,
}

/// A file of a node's configuration, rendered.
#[derive(Serialize, ToSchema)]
struct RenderedFile {
    path: String,
    /// Octal, e.g. `"0644"`.
    mode: String,
    content: String,
}

/// What a node's configuration renders to.
#[derive(Serialize, ToSchema)]
#[schema(as = NodeConfig)]
struct NodeConfigView {
    node: String,
    /// The profile that matches it; null: none does.
    #[schema(required = true)]
    profile: Option<String>,
    #[schema(required = true)]
    image: Option<ConfigImage>,
    /// The hash of the rendered files and hostname; null: nothing to apply.
    #[schema(required = true)]
    hash: Option<String>,
    #[schema(required = true)]
    hostname: Option<String>,
    files: Vec<RenderedFile>,
}

#[utoipa::path(get, path = "/nodes/{id}/config", tag = "images", operation_id = "getNodeConfig",
    summary = "What the node's configuration renders to; 422 when its profile does not render for it.",
    params(("id" = String, Path, description = "Node id.")),
    responses((status = 200, description = "The rendered configuration.", body = NodeConfigView)))]
async fn node_config(
    Active(cluster): Active,
    Path(id): Path<String>,
) -> ApiResult<Json<NodeConfigView>> {
    let want = cluster
        .desired_setup(&id)
        .ok_or_else(|| unknown_node(&id))?;
    let profile = want.profile.as_ref().map(|p| p.name.clone());
    let image = want.profile.as_ref().and_then(|p| {
        let name = p.image.as_deref()?;
        let i = cluster.images.image(name, p.image_version)?;
        Some(ConfigImage {
            name: i.name,
            version: i.version,
            mode: p.mode,
        })
    });
    match want.config {
        Ok(config) => Ok(Json(NodeConfigView {
            node: id,
            profile,
            image,
            hash: config.as_ref().map(|c| c.hash.clone()),
            hostname: config.as_ref().and_then(|c| c.hostname.clone()),
            files: config
                .iter()
                .flat_map(|c| &c.files)
                .map(|f| RenderedFile {
                    path: f.path.clone(),
                    mode: format!("{:04o}", f.mode),
                    content: f.content.clone(),
                })
                .collect(),
        })),
        Err(e) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "render_failed",
            format!("profile {}: {e}", profile.unwrap_or_default()),
        )),
    }
}

/// A node's configuration: what it should have and what its agent applied.
#[derive(Serialize, ToSchema)]
struct SetupConfig {
    /// The hash of what it should have; null: nothing.
    #[schema(required = true)]
    hash: Option<String>,
    /// The hash its agent applied last; null: none yet.
    #[schema(required = true)]
    applied_hash: Option<String>,
    in_sync: bool,
    /// Why the configuration does not render, or why the agent could not apply it.
    #[schema(required = true)]
    error: Option<String>,
    /// Files whose content is no longer what was applied.
    drift: Vec<String>,
}

/// A package version a node should have.
#[derive(Serialize, ToSchema)]
struct DesiredPackage {
    name: String,
    version: String,
    sha256: String,
    size: u64,
}

/// A package version a node's agent installed.
#[derive(Serialize, ToSchema)]
struct InstalledPackage {
    name: String,
    version: String,
    sha256: String,
}

/// A package version a node's agent could not install, and why.
#[derive(Serialize, ToSchema)]
struct FailedPackage {
    name: String,
    version: String,
    error: String,
}

#[derive(Serialize, ToSchema)]
struct SetupSoftware {
    desired: Vec<DesiredPackage>,
    installed: Vec<InstalledPackage>,
    failed: Vec<FailedPackage>,
}

/// What a node should have, and what its agent applied, drifted, installed and failed.
#[derive(Serialize, ToSchema)]
#[schema(as = NodeSetup)]
struct NodeSetupView {
    node: String,
    #[schema(required = true)]
    profile: Option<String>,
    config: SetupConfig,
    software: SetupSoftware,
    /// When its agent reported last, ms since the epoch; null: never.
    #[schema(required = true)]
    reported_ms: Option<u64>,
}

#[utoipa::path(get, path = "/nodes/{id}/setup", tag = "images", operation_id = "getNodeSetup",
    summary = "What the node should have, and what its agent applied, drifted, installed and failed.",
    params(("id" = String, Path, description = "Node id.")),
    responses((status = 200, description = "The node's setup.", body = NodeSetupView)))]
async fn node_setup(
    Active(cluster): Active,
    Path(id): Path<String>,
) -> ApiResult<Json<NodeSetupView>> {
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
    Ok(Json(NodeSetupView {
        node: id,
        profile: want.profile.as_ref().map(|p| p.name.clone()),
        config: SetupConfig {
            hash,
            applied_hash: report.config_hash,
            in_sync,
            error: render_error.or(report.config_error),
            drift: report.drift,
        },
        software: SetupSoftware {
            desired: want
                .software
                .into_iter()
                .map(|p| DesiredPackage {
                    name: p.name,
                    version: p.version,
                    sha256: p.sha256,
                    size: p.size,
                })
                .collect(),
            installed: report
                .installed
                .into_iter()
                .map(|p| InstalledPackage {
                    name: p.name,
                    version: p.version,
                    sha256: p.sha256,
                })
                .collect(),
            failed: report
                .failed
                .into_iter()
                .map(|p| FailedPackage {
                    name: p.name,
                    version: p.version,
                    error: p.error,
                })
                .collect(),
        },
        reported_ms: (had.reported_ms > 0).then_some(had.reported_ms),
    }))
}
