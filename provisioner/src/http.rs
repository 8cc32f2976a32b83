//! HTTP boot: one iPXE script per MAC (a boot plan from the cluster master: a token
//! minted for this boot), the enrollment environment's kernel and initramfs (with
//! Range support and their SHA-256), the boot programs, and the call-back the
//! enrollment environment makes (`POST /boot/{mac}/progress`).

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Form, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use glory_protocol::{BootPlan, BootProgress, BootState};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tracing::{debug, info};

use crate::uplink::Uplink;

/// A file served over HTTP, with its digest computed once. Files up to
/// [`IN_MEMORY_LIMIT`] are held in memory: a boot storm's thousands of kernel fetches
/// are then slices of one buffer, not thousands of reads.
#[derive(Clone, Debug)]
pub struct ServedFile {
    pub path: PathBuf,
    pub sha256: String,
    pub data: Option<bytes::Bytes>,
}

/// Largest file kept in memory.
pub const IN_MEMORY_LIMIT: u64 = 256 << 20;

impl ServedFile {
    /// Read `path`: its digest, and its bytes when small enough.
    pub fn load(path: PathBuf) -> anyhow::Result<ServedFile> {
        use anyhow::Context;
        use sha2::{Digest, Sha256};
        let len = std::fs::metadata(&path)
            .with_context(|| format!("stat {}", path.display()))?
            .len();
        if len <= IN_MEMORY_LIMIT {
            let data = std::fs::read(&path).with_context(|| format!("read {}", path.display()))?;
            let sha256 = hex::encode(Sha256::digest(&data));
            return Ok(ServedFile {
                path,
                sha256,
                data: Some(data.into()),
            });
        }
        let mut file =
            std::fs::File::open(&path).with_context(|| format!("open {}", path.display()))?;
        let mut hasher = Sha256::new();
        std::io::copy(&mut file, &mut hasher)?;
        Ok(ServedFile {
            path,
            sha256: hex::encode(hasher.finalize()),
            data: None,
        })
    }
}

pub struct BootHttp {
    /// `http://ip:port`, as booted machines reach us.
    pub base: String,
    pub kernel: ServedFile,
    pub initrd: ServedFile,
    /// Other files by name (undionly.kpxe, ipxe.efi).
    pub files: Vec<(String, ServedFile)>,
    pub kernel_args: String,
    pub uplink: Uplink,
    /// OS image parts, fetched from the cluster master's content store when a boot
    /// plan names them and kept here for the next machines.
    pub content: glory_content::ContentCache,
    pub client: reqwest::Client,
    /// Torrents of the images' root filesystems, their seeders and tracker (None:
    /// peer-to-peer boot is off).
    pub swarms: Option<glory_content::swarm::Swarms>,
}

pub fn router(state: Arc<BootHttp>) -> Router {
    Router::new()
        .route("/boot/{script}", get(script))
        .route("/boot/{mac}/progress", post(progress))
        .route("/boot/{mac}/{file}", get(boot_file))
        .route("/files/{name}", get(named_file))
        .route("/content/{sha256}", get(content_file))
        .merge(crate::p2p::routes())
        .with_state(state)
}

fn mac_of(text: &str) -> Option<String> {
    crate::leases::parse_mac(text).map(|m| crate::leases::mac_text(&m))
}

/// The iPXE script for one boot. Pure. With `p2p`, a diskless image boot is told
/// where its root filesystem's torrent is (`glory.torrent=`).
pub fn render_script(base: &str, mac: &str, plan: &BootPlan, extra: &str, p2p: bool) -> String {
    let masters: Vec<String> = plan.cluster_masters.iter().map(|a| a.to_string()).collect();
    let bootif = format!("01-{}", mac.replace(':', "-"));
    let node = plan.node.as_deref().unwrap_or("a new node");
    if let Some(image) = &plan.image {
        // The image's kernel and initramfs; the initramfs fetches the root filesystem,
        // checks its hash and boots it (in RAM, or written to the first disk).
        let torrent = match p2p && image.mode == "diskless" {
            true => format!(" glory.torrent={base}/torrent/{}", image.rootfs.sha256),
            false => String::new(),
        };
        return format!(
            "#!ipxe\n\
             echo GLORY-CL: {mac} boots image {name}:{version} ({mode}, profile {profile}, {node})\n\
             kernel {base}/content/{kernel} initrd=initrd.img console=tty0 console=ttyS0,115200 \
             BOOTIF={bootif} glory.boot={base}/boot/{mac} glory.cm={cms} glory.ca={ca} \
             glory.token={token} glory.image={name}:{version} glory.mode={mode} \
             glory.rootfs={base}/content/{rootfs} glory.rootfs_sha256={rootfs} \
             glory.rootfs_size={size}{torrent} {extra}\n\
             initrd --name initrd.img {base}/content/{initrd}\n\
             boot\n",
            name = image.name,
            version = image.version,
            mode = image.mode,
            profile = plan.profile,
            kernel = image.kernel.sha256,
            initrd = image.initrd.sha256,
            rootfs = image.rootfs.sha256,
            size = image.rootfs.size,
            cms = masters.join(","),
            ca = plan.ca_sha256,
            token = plan.token,
        );
    }
    format!(
        "#!ipxe\n\
         echo GLORY-CL: {mac} boots the enrollment environment ({node})\n\
         kernel {base}/boot/{mac}/vmlinuz initrd=initrd.img console=tty0 console=ttyS0,115200 \
         BOOTIF={bootif} glory.boot={base}/boot/{mac} glory.cm={cms} glory.ca={ca} \
         glory.token={token} {extra}\n\
         initrd {base}/boot/{mac}/initrd.img\n\
         boot\n",
        cms = masters.join(","),
        ca = plan.ca_sha256,
        token = plan.token,
    )
}

/// A script that says why the machine may not boot, and tries again later.
fn refusal_script(base: &str, mac: &str, why: &str) -> String {
    let why: String = why.chars().filter(|c| !c.is_control()).collect();
    format!(
        "#!ipxe\necho GLORY-CL: {mac} cannot boot now: {why}\necho retrying in 30 s\nsleep 30\nchain {base}/boot/{mac}.ipxe\n"
    )
}

async fn script(State(s): State<Arc<BootHttp>>, Path(script): Path<String>) -> Response {
    let Some(mac) = script.strip_suffix(".ipxe").and_then(mac_of) else {
        return (StatusCode::NOT_FOUND, "expected /boot/<mac>.ipxe\n").into_response();
    };
    let body = match s.uplink.plan(&mac, None).await {
        Ok(plan) => {
            info!(%mac, node = ?plan.node, image = ?plan.image.as_ref().map(|i| &i.name), "boot planned");
            if let Some(image) = &plan.image {
                for part in [&image.kernel, &image.initrd, &image.rootfs] {
                    let source = glory_content::Source {
                        url: format!("{}/content/{}", image.content_url, part.sha256),
                        size: part.size,
                    };
                    s.content.learn(&part.sha256, source);
                }
            }
            render_script(&s.base, &mac, &plan, &s.kernel_args, s.swarms.is_some())
        }
        Err(why) => {
            s.uplink.report(BootProgress {
                mac: mac.clone(),
                state: BootState::Failed,
                ip: None,
                detail: format!("no boot plan: {why}"),
                at_ms: glory_protocol::now_ms(),
            });
            refusal_script(&s.base, &mac, &why)
        }
    };
    ([(header::CONTENT_TYPE, "text/plain")], body).into_response()
}

#[derive(Deserialize)]
struct ProgressForm {
    state: String,
    #[serde(default)]
    detail: String,
    #[serde(default)]
    ip: Option<String>,
}

async fn progress(
    State(s): State<Arc<BootHttp>>,
    Path(mac): Path<String>,
    Form(form): Form<ProgressForm>,
) -> Response {
    let Some(mac) = mac_of(&mac) else {
        return (StatusCode::BAD_REQUEST, "not a MAC address\n").into_response();
    };
    let state = match form.state.as_str() {
        "enrolling" => BootState::Enrolling,
        "failed" => BootState::Failed,
        other => {
            return (
                StatusCode::BAD_REQUEST,
                format!("state {other:?}: enrolling or failed\n"),
            )
                .into_response()
        }
    };
    debug!(%mac, state = form.state, detail = form.detail, "call-back");
    s.uplink.report(BootProgress {
        mac,
        state,
        ip: form.ip.filter(|ip| ip.parse::<std::net::IpAddr>().is_ok()),
        detail: form.detail.chars().take(1024).collect(),
        at_ms: glory_protocol::now_ms(),
    });
    (StatusCode::NO_CONTENT, "").into_response()
}

async fn boot_file(
    State(s): State<Arc<BootHttp>>,
    Path((mac, file)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let Some(mac) = mac_of(&mac) else {
        return (StatusCode::NOT_FOUND, "not a MAC address\n").into_response();
    };
    let served = match file.as_str() {
        "vmlinuz" => &s.kernel,
        "initrd.img" => &s.initrd,
        _ => return (StatusCode::NOT_FOUND, "vmlinuz or initrd.img\n").into_response(),
    };
    let response = serve_file(served, &headers).await;
    // A whole-file fetch (not a resumed range) moves the boot on.
    if response.status() == StatusCode::OK {
        s.uplink.report(BootProgress {
            mac,
            state: BootState::Booting,
            ip: None,
            detail: format!("fetching {file}"),
            at_ms: glory_protocol::now_ms(),
        });
    }
    response
}

async fn named_file(
    State(s): State<Arc<BootHttp>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    let (name, digest_only) = match name.strip_suffix(".sha256") {
        Some(n) => (n.to_string(), true),
        None => (name, false),
    };
    let served = match name.as_str() {
        "vmlinuz" => Some(&s.kernel),
        "initrd.img" => Some(&s.initrd),
        _ => s.files.iter().find(|(n, _)| *n == name).map(|(_, f)| f),
    };
    let Some(served) = served else {
        return (StatusCode::NOT_FOUND, format!("no file {name}\n")).into_response();
    };
    if digest_only {
        return format!("{}  {name}\n", served.sha256).into_response();
    }
    serve_file(served, &headers).await
}

/// An image part, from the cache (fetched from the cluster master once, verified).
async fn content_file(
    State(s): State<Arc<BootHttp>>,
    Path(sha256): Path<String>,
    headers: HeaderMap,
) -> Response {
    let path = match cached(&s, &sha256).await {
        Ok(path) => path,
        Err(refused) => return refused,
    };
    let file = ServedFile {
        path,
        sha256,
        data: None,
    };
    serve_file(&file, &headers).await
}

/// Where content `sha256` a boot plan named is in the cache, fetched (once, verified)
/// if it is not there yet; the answer to give when it cannot be.
pub(crate) async fn cached(s: &BootHttp, sha256: &str) -> Result<PathBuf, Response> {
    use glory_content::CacheError;
    let Some(path) = s.content.store().path(sha256) else {
        return Err((StatusCode::BAD_REQUEST, "not a SHA-256\n").into_response());
    };
    let client = s.client.clone();
    match s
        .content
        .ensure(sha256, |source, writer| {
            glory_content::fetch_into(client, source, writer)
        })
        .await
    {
        Ok(()) => Ok(path),
        Err(e @ CacheError::Unknown(_)) => {
            Err((StatusCode::NOT_FOUND, format!("{e}\n")).into_response())
        }
        Err(e) => Err((StatusCode::BAD_GATEWAY, format!("{e}\n")).into_response()),
    }
}

/// What a `Range` header asks of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ByteRange {
    Whole,
    /// First and last byte, inclusive.
    Part(u64, u64),
    Unsatisfiable,
}

/// The byte range a `Range` header asks of a file of `len` bytes. One range only (what
/// boot loaders send); anything else is unsatisfiable.
pub fn parse_range(value: Option<&str>, len: u64) -> ByteRange {
    match range_of(value, len) {
        Ok(None) => ByteRange::Whole,
        Ok(Some((a, b))) => ByteRange::Part(a, b),
        Err(()) => ByteRange::Unsatisfiable,
    }
}

fn range_of(value: Option<&str>, len: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(value) = value else { return Ok(None) };
    let spec = value.trim().strip_prefix("bytes=").ok_or(())?;
    if spec.contains(',') {
        return Err(());
    }
    let (a, b) = spec.split_once('-').ok_or(())?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", n) => {
            let n: u64 = n.parse().map_err(|_| ())?;
            if n == 0 || len == 0 {
                return Err(());
            }
            (len.saturating_sub(n), len - 1)
        }
        (a, "") => (a.parse().map_err(|_| ())?, len.saturating_sub(1)),
        (a, b) => {
            let (a, b): (u64, u64) = (a.parse().map_err(|_| ())?, b.parse().map_err(|_| ())?);
            (a, b.min(len.saturating_sub(1)))
        }
    };
    if start >= len || start > end {
        return Err(());
    }
    Ok(Some((start, end)))
}

fn partial_headers(
    mut response: Response,
    f: &ServedFile,
    status: StatusCode,
    start: u64,
    count: u64,
    len: u64,
) -> Response {
    *response.status_mut() = status;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
    if let Ok(v) = HeaderValue::from_str(&f.sha256) {
        h.insert("x-checksum-sha256", v);
    }
    if status == StatusCode::PARTIAL_CONTENT {
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{len}", start + count - 1))
        {
            h.insert(header::CONTENT_RANGE, v);
        }
    }
    response
}

fn unsatisfiable(len: u64) -> Response {
    let mut r = StatusCode::RANGE_NOT_SATISFIABLE.into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
        r.headers_mut().insert(header::CONTENT_RANGE, v);
    }
    r
}

/// `f` as an answer to a GET with `headers`: whole or the one range asked for, with its
/// SHA-256 in `x-checksum-sha256`.
pub async fn serve_file(f: &ServedFile, headers: &HeaderMap) -> Response {
    let range_header = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    if let Some(data) = &f.data {
        let len = data.len() as u64;
        let (status, start, count) = match parse_range(range_header, len) {
            ByteRange::Whole => (StatusCode::OK, 0, len),
            ByteRange::Part(a, b) => (StatusCode::PARTIAL_CONTENT, a, b - a + 1),
            ByteRange::Unsatisfiable => return unsatisfiable(len),
        };
        let body = Body::from(data.slice(start as usize..(start + count) as usize));
        return partial_headers(Response::new(body), f, status, start, count, len);
    }
    let mut file = match tokio::fs::File::open(&f.path).await {
        Ok(file) => file,
        Err(e) => {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot open {}: {e}\n", f.path.display()),
            )
                .into_response()
        }
    };
    let len = match file.metadata().await {
        Ok(m) => m.len(),
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    };
    let (status, start, count) = match parse_range(range_header, len) {
        ByteRange::Whole => (StatusCode::OK, 0, len),
        ByteRange::Part(a, b) => (StatusCode::PARTIAL_CONTENT, a, b - a + 1),
        ByteRange::Unsatisfiable => return unsatisfiable(len),
    };
    if start > 0 && file.seek(std::io::SeekFrom::Start(start)).await.is_err() {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    let stream = tokio_util::io::ReaderStream::with_capacity(file.take(count), 64 * 1024);
    partial_headers(
        Response::new(Body::from_stream(stream)),
        f,
        status,
        start,
        count,
        len,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        use ByteRange::*;
        assert_eq!(parse_range(None, 100), Whole);
        assert_eq!(parse_range(Some("bytes=0-9"), 100), Part(0, 9));
        assert_eq!(parse_range(Some("bytes=90-"), 100), Part(90, 99));
        assert_eq!(parse_range(Some("bytes=-10"), 100), Part(90, 99));
        assert_eq!(parse_range(Some("bytes=50-500"), 100), Part(50, 99));
        for bad in [
            "bytes=100-",
            "bytes=9-3",
            "bytes=0-1,5-6",
            "items=0-1",
            "bytes=x-1",
            "bytes=-0",
        ] {
            assert_eq!(parse_range(Some(bad), 100), Unsatisfiable, "{bad}");
        }
    }

    #[test]
    fn the_script_carries_the_plan() {
        let plan = BootPlan {
            token: "gb-1.secret".into(),
            expires_ms: 0,
            cluster_masters: vec![
                "10.0.0.1:7401".parse().unwrap(),
                "10.0.0.2:7401".parse().unwrap(),
            ],
            ca_sha256: "ab".repeat(32),
            node: None,
            profile: "enroll".into(),
            image: None,
        };
        let s = render_script(
            "http://10.0.0.1:7480",
            "52:54:00:00:00:01",
            &plan,
            "quiet",
            true,
        );
        assert!(s.starts_with("#!ipxe\n"));
        assert!(s.contains("kernel http://10.0.0.1:7480/boot/52:54:00:00:00:01/vmlinuz "));
        assert!(s.contains(" BOOTIF=01-52-54-00-00-00-01 "));
        assert!(s.contains(" glory.cm=10.0.0.1:7401,10.0.0.2:7401 "));
        assert!(s.contains(" glory.token=gb-1.secret quiet\n"));
        assert!(s.contains("initrd http://10.0.0.1:7480/boot/52:54:00:00:00:01/initrd.img\n"));
        assert!(!s.contains("glory.torrent="));

        // An image: its parts from the content cache; a diskless boot with peer-to-peer
        // on is told where the root filesystem's torrent is, a disk boot is not.
        let part = |c: &str, size| glory_protocol::ImagePart {
            sha256: c.repeat(64),
            size,
        };
        let mut plan = BootPlan {
            image: Some(glory_protocol::BootImage {
                name: "web".into(),
                version: 3,
                mode: "diskless".into(),
                kernel: part("1", 10),
                initrd: part("2", 20),
                rootfs: part("3", 30),
                content_url: "http://10.0.0.9:7400".into(),
            }),
            ..plan
        };
        let base = "http://10.0.0.1:7480";
        let s = render_script(base, "52:54:00:00:00:01", &plan, "", true);
        assert!(
            s.contains(&format!("kernel {base}/content/{} ", "1".repeat(64))),
            "{s}"
        );
        assert!(s.contains(&format!(" glory.rootfs={base}/content/{} ", "3".repeat(64))));
        assert!(s.contains(" glory.rootfs_size=30 "), "{s}");
        assert!(s.contains(&format!(
            " glory.torrent={base}/torrent/{} ",
            "3".repeat(64)
        )));
        assert!(s.contains(&format!(
            "initrd --name initrd.img {base}/content/{}\n",
            "2".repeat(64)
        )));
        assert!(
            !render_script(base, "52:54:00:00:00:01", &plan, "", false).contains("glory.torrent=")
        );
        plan.image.as_mut().unwrap().mode = "disk".into();
        assert!(
            !render_script(base, "52:54:00:00:00:01", &plan, "", true).contains("glory.torrent=")
        );

        let r = refusal_script("http://h", "52:54:00:00:00:01", "removed\nby x");
        assert!(r.contains("cannot boot now: removedby x"));
    }
}
