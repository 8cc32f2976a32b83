//! Software packages (`/software`): versions (tar.zst files in the content store) and
//! where they are installed.

use std::sync::Arc;

use axum::extract::Path;
use axum::http::StatusCode;
use axum::Json;
use glory_keymaster::schema::images::{BlobRef, Installation, PackageVersion, SoftwareRecord};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::super::{Active, ApiError, ApiResult, J};
use crate::role::Node;

pub(super) fn routes() -> OpenApiRouter<Arc<Node>> {
    OpenApiRouter::default()
        .routes(routes!(list_software, add_package))
        .routes(routes!(get_package, delete_package))
        .routes(routes!(put_installations))
        .routes(routes!(delete_package_version))
}

/// A software package: its versions and where they are installed.
#[derive(Serialize, ToSchema)]
#[schema(as = Package)]
struct PackageView {
    name: String,
    versions: Vec<PackageVersion>,
    installations: Vec<Installation>,
    updated_ms: u64,
}

impl From<SoftwareRecord> for PackageView {
    fn from(s: SoftwareRecord) -> Self {
        PackageView {
            name: s.name,
            versions: s.versions,
            installations: s.installations,
            updated_ms: s.updated_ms,
        }
    }
}

/// A new version of a package, a tar.zst uploaded to the content store.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = PackageRequest)]
struct PackageBody {
    #[schema(pattern = "^[a-z0-9][a-z0-9-]{0,62}$")]
    name: String,
    /// 1-64 letters, digits, '.', '-', '_', '+', '~'.
    #[schema(pattern = "^[A-Za-z0-9._+~-]{1,64}$")]
    version: String,
    #[schema(pattern = "^[0-9a-f]{64}$")]
    sha256: String,
    size: u64,
}

#[utoipa::path(post, path = "/software", tag = "images", operation_id = "addPackageVersion",
    summary = "Add a version of a package (a tar.zst uploaded to the content store); versions are immutable.",
    description = "409 when the file is not in the content store (upload it first) or the version exists; 422 when the size is not the stored file's.",
    request_body(content = PackageBody, example = json!({"name": "tool", "version": "1.2.0",
        "sha256": "dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd", "size": 4194304})),
    responses((status = 201, description = "The package.", body = PackageView, links(
        ("GetPackage" = (operation_id = "getPackage", parameters(("name" = "$response.body#/name")))),
        ("DeletePackage" = (operation_id = "deletePackage", parameters(("name" = "$response.body#/name")))),
        ("PutInstallations" = (operation_id = "putInstallations", parameters(("name" = "$response.body#/name")))),
        ("DeletePackageVersion" = (operation_id = "deletePackageVersion", parameters(("name" = "$response.body#/name"), ("version" = "$request.body#/version")))),
    ))))]
async fn add_package(
    Active(cluster): Active,
    J(body): J<PackageBody>,
) -> ApiResult<(StatusCode, Json<PackageView>)> {
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
    Ok((StatusCode::CREATED, Json(record.into())))
}

#[derive(Serialize, ToSchema)]
struct PackageList {
    items: Vec<PackageView>,
    total: usize,
}

#[utoipa::path(get, path = "/software", tag = "images", operation_id = "listSoftware",
    summary = "Software packages, their versions and installations.",
    responses((status = 200, description = "The packages.", body = PackageList)))]
async fn list_software(Active(cluster): Active) -> Json<PackageList> {
    let items: Vec<PackageView> = cluster
        .images
        .software()
        .into_iter()
        .map(PackageView::from)
        .collect();
    Json(PackageList {
        total: items.len(),
        items,
    })
}

#[utoipa::path(get, path = "/software/{name}", tag = "images", operation_id = "getPackage",
    summary = "One package.", params(("name" = String, Path, description = "A package name.")),
    responses((status = 200, description = "The package.", body = PackageView)))]
async fn get_package(
    Active(cluster): Active,
    Path(name): Path<String>,
) -> ApiResult<Json<PackageView>> {
    let s = cluster
        .images
        .package(&name)
        .ok_or_else(|| ApiError::not_found(format!("no package {name}")))?;
    Ok(Json(s.into()))
}

/// Where the package's versions are installed: per node, the most specific match wins.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = InstallationsRequest)]
struct InstallationsBody {
    installations: Vec<Installation>,
}

#[utoipa::path(put, path = "/software/{name}/installations", tag = "images", operation_id = "putInstallations",
    summary = "Replace where the package's versions are installed (per node, the most specific match wins).",
    description = "422 when an installation names a version the package does not have.",
    params(("name" = String, Path, description = "A package name.")), request_body = InstallationsBody,
    responses((status = 200, description = "The package.", body = PackageView)))]
async fn put_installations(
    Active(cluster): Active,
    Path(name): Path<String>,
    J(body): J<InstallationsBody>,
) -> ApiResult<Json<PackageView>> {
    let record = cluster.set_installations(&name, body.installations).await?;
    Ok(Json(record.into()))
}

#[utoipa::path(delete, path = "/software/{name}", tag = "images", operation_id = "deletePackage",
    summary = "Delete a package; 409 while installed.",
    params(("name" = String, Path, description = "A package name.")),
    responses((status = 200, description = "The package as it was.", body = PackageView)))]
async fn delete_package(
    Active(cluster): Active,
    Path(name): Path<String>,
) -> ApiResult<Json<PackageView>> {
    Ok(Json(cluster.delete_package(&name, None).await?.into()))
}

#[utoipa::path(delete, path = "/software/{name}/{version}", tag = "images", operation_id = "deletePackageVersion",
    summary = "Delete one version; 409 while installed.",
    params(("name" = String, Path, description = "A package name."),
        ("version" = String, Path, description = "A package version.")),
    responses((status = 200, description = "The package.", body = PackageView)))]
async fn delete_package_version(
    Active(cluster): Active,
    Path((name, version)): Path<(String, String)>,
) -> ApiResult<Json<PackageView>> {
    Ok(Json(
        cluster.delete_package(&name, Some(&version)).await?.into(),
    ))
}
