//! OS images, profiles and software packages on the cluster master's side: the
//! records (in the key master and in memory) and the content store that holds their
//! bytes (`<data-dir>/content`). Images and package versions are immutable; an image
//! or version something still uses cannot be deleted; a file no record names any more
//! is removed from the store.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use glory_content::ContentStore;
use glory_keymaster::schema::images::{
    self as records, BlobRef, ImageRecord, Installation, PackageVersion, ProfileRecord,
    SoftwareRecord,
};
use glory_keymaster::schema::{self, RECORD_VERSION};
use glory_keymaster::{Compare, KeyMaster, Txn, TxnOp};
use tracing::warn;

use crate::cluster::Cluster;
use crate::events::EventData;
use crate::pools::{check_name, OpError};

type OpResult<T> = Result<T, OpError>;

fn conflict(message: impl Into<String>) -> OpError {
    OpError::Conflict {
        message: message.into(),
        fit: None,
    }
}

/// Images, profiles and packages in memory (the key master has them too), and the
/// content store.
pub(crate) struct ImageState {
    pub(crate) content: ContentStore,
    /// Files served by `GET /content/{sha256}` since start.
    pub(crate) served: std::sync::atomic::AtomicU64,
    images: Mutex<BTreeMap<(String, u32), ImageRecord>>,
    profiles: Mutex<BTreeMap<String, ProfileRecord>>,
    software: Mutex<BTreeMap<String, SoftwareRecord>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ImageState {
    pub(crate) async fn load(km: &dyn KeyMaster, content: ContentStore) -> anyhow::Result<Self> {
        let mut images = BTreeMap::new();
        for kv in km.get_prefix(records::IMAGES_PREFIX).await?.0 {
            let r: ImageRecord = schema::decode(&kv.key, &kv.value)?;
            images.insert((r.name.clone(), r.version), r);
        }
        let mut profiles = BTreeMap::new();
        for kv in km.get_prefix(records::PROFILES_PREFIX).await?.0 {
            let r: ProfileRecord = schema::decode(&kv.key, &kv.value)?;
            profiles.insert(r.name.clone(), r);
        }
        let mut software = BTreeMap::new();
        for kv in km.get_prefix(records::SOFTWARE_PREFIX).await?.0 {
            let r: SoftwareRecord = schema::decode(&kv.key, &kv.value)?;
            software.insert(r.name.clone(), r);
        }
        Ok(ImageState {
            content,
            served: Default::default(),
            images: Mutex::new(images),
            profiles: Mutex::new(profiles),
            software: Mutex::new(software),
        })
    }

    /// Every image version, by name then version.
    pub(crate) fn images(&self) -> Vec<ImageRecord> {
        lock(&self.images).values().cloned().collect()
    }

    /// `version`, or the newest when None.
    pub(crate) fn image(&self, name: &str, version: Option<u32>) -> Option<ImageRecord> {
        let images = lock(&self.images);
        match version {
            Some(v) => images.get(&(name.to_string(), v)).cloned(),
            None => images
                .range((name.to_string(), 0)..=(name.to_string(), u32::MAX))
                .next_back()
                .map(|(_, r)| r.clone()),
        }
    }

    /// Whether any profile or package installation exists (checked per agent
    /// session, so without copying the records).
    pub(crate) fn configured(&self) -> bool {
        !lock(&self.profiles).is_empty()
            || lock(&self.software)
                .values()
                .any(|s| !s.installations.is_empty())
    }

    pub(crate) fn profiles(&self) -> Vec<ProfileRecord> {
        lock(&self.profiles).values().cloned().collect()
    }

    pub(crate) fn profile(&self, name: &str) -> Option<ProfileRecord> {
        lock(&self.profiles).get(name).cloned()
    }

    /// What `sha` is when it spreads peer-to-peer: an image's root filesystem, or a
    /// package version of `min_package` bytes or more (looked up under the locks,
    /// without copying the records: asked per torrent and swarm request).
    pub(crate) fn distributed(&self, sha: &str, min_package: Option<u64>) -> Option<String> {
        if let Some(i) = lock(&self.images).values().find(|i| i.rootfs.sha256 == sha) {
            return Some(format!("image {} version {}", i.name, i.version));
        }
        let min = min_package?;
        lock(&self.software).values().find_map(|p| {
            p.versions
                .iter()
                .find(|v| v.blob.sha256 == sha && v.blob.size >= min)
                .map(|v| format!("package {} version {}", p.name, v.version))
        })
    }

    pub(crate) fn software(&self) -> Vec<SoftwareRecord> {
        lock(&self.software).values().cloned().collect()
    }

    pub(crate) fn package(&self, name: &str) -> Option<SoftwareRecord> {
        lock(&self.software).get(name).cloned()
    }

    /// Every file a record names.
    fn referenced(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for i in lock(&self.images).values() {
            for b in i.blobs() {
                out.insert(b.sha256.clone());
            }
        }
        for s in lock(&self.software).values() {
            for v in &s.versions {
                out.insert(v.blob.sha256.clone());
            }
        }
        out
    }

    /// Remove from the store the files of `candidates` no record names any more.
    fn collect(&self, candidates: impl IntoIterator<Item = String>) {
        let referenced = self.referenced();
        for sha in candidates {
            if !referenced.contains(&sha) {
                if let Err(e) = self.content.remove(&sha) {
                    warn!(%sha, error = %e, "cannot remove unused content");
                }
            }
        }
    }

    /// The stored file `blob` names, with the size it says: or why not.
    fn check_blob(&self, field: &str, blob: &BlobRef) -> OpResult<()> {
        if !glory_content::is_sha256(&blob.sha256) {
            return Err(OpError::Invalid(format!(
                "{field}.sha256: {:?} is not a SHA-256 (64 lower-case hex digits)",
                blob.sha256
            )));
        }
        match self.content.size(&blob.sha256) {
            None => Err(conflict(format!(
                "{field}: no content {} is stored; upload it first (PUT /api/v1/content/{})",
                blob.sha256, blob.sha256
            ))),
            Some(size) if size != blob.size => Err(OpError::Unprocessable(format!(
                "{field}.size: content {} has {size} bytes, not {}",
                blob.sha256, blob.size
            ))),
            Some(_) => Ok(()),
        }
    }
}

/// A new image version as the API takes it.
pub(crate) struct NewImage {
    pub name: String,
    pub kernel: BlobRef,
    pub initrd: BlobRef,
    pub rootfs: BlobRef,
    pub description: String,
    pub suite: Option<String>,
    pub packages: Vec<String>,
}

impl Cluster {
    fn images_state(&self) -> &ImageState {
        &self.images
    }

    /// Store a new version of an image (1 for a new name): immutable from then on.
    pub(crate) async fn create_image(&self, new: NewImage) -> OpResult<ImageRecord> {
        let st = self.images_state();
        check_name("name", &new.name)?;
        st.check_blob("kernel", &new.kernel)?;
        st.check_blob("initrd", &new.initrd)?;
        st.check_blob("rootfs", &new.rootfs)?;
        let version = st.image(&new.name, None).map_or(1, |i| i.version + 1);
        let record = ImageRecord {
            v: RECORD_VERSION,
            name: new.name,
            version,
            kernel: new.kernel,
            initrd: new.initrd,
            rootfs: new.rootfs,
            description: new.description,
            suite: new.suite,
            packages: new.packages,
            created_ms: glory_protocol::now_ms(),
        };
        let key = records::image_key(&record.name, version);
        // Two creations at once both chose this version: one wins, the other retries.
        let resp = self
            .km_txn(Txn {
                compares: vec![Compare::absent(&key)],
                success: vec![TxnOp::put(&key, schema::encode(&record))],
                failure: vec![],
            })
            .await?;
        if !resp.succeeded {
            return Err(conflict(format!(
                "image {} version {version} was created meanwhile; try again",
                record.name
            )));
        }
        lock(&st.images).insert((record.name.clone(), version), record.clone());
        self.events.emit(
            None,
            EventData::ImageCreated {
                image: record.name.clone(),
                version,
            },
        );
        Ok(record)
    }

    /// Delete one version of an image, or every version (`None`). Refused while a
    /// profile uses it (a profile without a pinned version uses the newest).
    pub(crate) async fn delete_image(
        &self,
        name: &str,
        version: Option<u32>,
    ) -> OpResult<Vec<ImageRecord>> {
        let st = self.images_state();
        let victims: Vec<ImageRecord> = st
            .images()
            .into_iter()
            .filter(|i| i.name == name && version.is_none_or(|v| v == i.version))
            .collect();
        if victims.is_empty() {
            return Err(OpError::NotFound(match version {
                Some(v) => format!("no image {name} version {v}"),
                None => format!("no image {name}"),
            }));
        }
        let newest = st.image(name, None).map(|i| i.version);
        for p in st.profiles() {
            if p.image.as_deref() != Some(name) {
                continue;
            }
            let uses = p.image_version.or(newest);
            if victims.iter().any(|i| Some(i.version) == uses) {
                return Err(OpError::Conflict {
                    message: format!(
                        "image {name} version {} is in use by profile {}",
                        uses.unwrap_or_default(),
                        p.name
                    ),
                    fit: None,
                });
            }
        }
        // A node running it (reported by its agent) needs it to boot again.
        let running = {
            let reg = self.read();
            reg.nodes
                .values()
                .find(|n| {
                    let inv = &n.record.inventory;
                    inv.image.as_deref() == Some(name)
                        && victims.iter().any(|i| inv.image_version == Some(i.version))
                })
                .map(|n| (n.record.id.clone(), n.record.inventory.image_version))
        };
        if let Some((node, version)) = running {
            return Err(conflict(format!(
                "image {name} version {} is running on node {node}; deploy another image there first",
                version.unwrap_or_default()
            )));
        }
        let ops = victims
            .iter()
            .map(|i| TxnOp::delete(records::image_key(&i.name, i.version)))
            .collect();
        self.km_txn(Txn {
            compares: vec![],
            success: ops,
            failure: vec![],
        })
        .await?;
        {
            let mut images = lock(&st.images);
            for i in &victims {
                images.remove(&(i.name.clone(), i.version));
            }
        }
        for i in &victims {
            self.events.emit(
                None,
                EventData::ImageDeleted {
                    image: i.name.clone(),
                    version: i.version,
                },
            );
        }
        st.collect(
            victims
                .iter()
                .flat_map(|i| i.blobs().map(|b| b.sha256.clone())),
        );
        let still: BTreeSet<String> = st
            .images()
            .iter()
            .map(|i| i.rootfs.sha256.clone())
            .collect();
        for i in &victims {
            if !still.contains(&i.rootfs.sha256) {
                self.stop_seeding(&i.rootfs.sha256);
            }
        }
        Ok(victims)
    }

    /// Create or replace a profile.
    pub(crate) async fn put_profile(&self, mut profile: ProfileRecord) -> OpResult<ProfileRecord> {
        let st = self.images_state();
        check_name("name", &profile.name)?;
        if let Some(image) = &profile.image {
            if st.image(image, profile.image_version).is_none() {
                return Err(OpError::Unprocessable(match profile.image_version {
                    Some(v) => format!("image: no image {image} version {v}"),
                    None => format!("image: no image {image}"),
                }));
            }
        } else if profile.image_version.is_some() {
            return Err(OpError::Unprocessable(
                "image_version: only with an image".into(),
            ));
        }
        // Paths, templates and addresses checked together: rules the schema cannot
        // state.
        glory_provisioner::firstboot::check(&profile.config)
            .map_err(|e| OpError::Unprocessable(e.to_string()))?;
        profile.v = RECORD_VERSION;
        profile.updated_ms = glory_protocol::now_ms();
        self.km_txn(Txn {
            compares: vec![],
            success: vec![TxnOp::put(
                records::profile_key(&profile.name),
                schema::encode(&profile),
            )],
            failure: vec![],
        })
        .await?;
        lock(&st.profiles).insert(profile.name.clone(), profile.clone());
        self.events.emit(
            None,
            EventData::ProfileChanged {
                profile: profile.name.clone(),
                deleted: false,
            },
        );
        self.setup_changed();
        Ok(profile)
    }

    pub(crate) async fn delete_profile(&self, name: &str) -> OpResult<ProfileRecord> {
        let st = self.images_state();
        let Some(profile) = st.profile(name) else {
            return Err(OpError::NotFound(format!("no profile {name}")));
        };
        self.km_txn(Txn {
            compares: vec![],
            success: vec![TxnOp::delete(records::profile_key(name))],
            failure: vec![],
        })
        .await?;
        lock(&st.profiles).remove(name);
        self.events.emit(
            None,
            EventData::ProfileChanged {
                profile: name.to_string(),
                deleted: true,
            },
        );
        self.setup_changed();
        Ok(profile)
    }

    async fn store_package(&self, record: &SoftwareRecord) -> OpResult<()> {
        self.km_txn(Txn {
            compares: vec![],
            success: vec![TxnOp::put(
                records::software_key(&record.name),
                schema::encode(record),
            )],
            failure: vec![],
        })
        .await?;
        lock(&self.images.software).insert(record.name.clone(), record.clone());
        self.setup_changed();
        Ok(())
    }

    /// Add a version of a package (a new package for a new name).
    pub(crate) async fn add_package_version(
        &self,
        name: &str,
        version: &str,
        blob: BlobRef,
    ) -> OpResult<SoftwareRecord> {
        let st = self.images_state();
        check_name("name", name)?;
        check_version(version)?;
        st.check_blob("blob", &blob)?;
        let mut record = st.package(name).unwrap_or_else(|| SoftwareRecord {
            v: RECORD_VERSION,
            name: name.to_string(),
            versions: Vec::new(),
            installations: Vec::new(),
            updated_ms: 0,
        });
        if let Some(v) = record.versions.iter().find(|v| v.version == version) {
            if v.blob == blob {
                return Ok(record);
            }
            return Err(conflict(format!(
                "{name} version {version} exists with other content; versions are immutable"
            )));
        }
        record.versions.push(PackageVersion {
            version: version.to_string(),
            blob,
            created_ms: glory_protocol::now_ms(),
        });
        record.updated_ms = glory_protocol::now_ms();
        self.store_package(&record).await?;
        Ok(record)
    }

    /// Replace where a package's versions are installed.
    pub(crate) async fn set_installations(
        &self,
        name: &str,
        installations: Vec<Installation>,
    ) -> OpResult<SoftwareRecord> {
        let st = self.images_state();
        let Some(mut record) = st.package(name) else {
            return Err(OpError::NotFound(format!("no package {name}")));
        };
        for (i, inst) in installations.iter().enumerate() {
            if !record.versions.iter().any(|v| v.version == inst.version) {
                return Err(OpError::Unprocessable(format!(
                    "installations[{i}].version: {name} has no version {:?}",
                    inst.version
                )));
            }
        }
        record.installations = installations;
        record.updated_ms = glory_protocol::now_ms();
        self.store_package(&record).await?;
        Ok(record)
    }

    /// Delete a package version (or the whole package): refused while installed.
    pub(crate) async fn delete_package(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> OpResult<SoftwareRecord> {
        let st = self.images_state();
        let Some(mut record) = st.package(name) else {
            return Err(OpError::NotFound(format!("no package {name}")));
        };
        if let Some(inst) = record
            .installations
            .iter()
            .find(|i| version.is_none_or(|v| v == i.version))
        {
            return Err(conflict(format!(
                "{name} version {} is installed; change its installations first",
                inst.version
            )));
        }
        let before = record.versions.len();
        let removed: Vec<String> = record
            .versions
            .iter()
            .filter(|v| version.is_none_or(|x| x == v.version))
            .map(|v| v.blob.sha256.clone())
            .collect();
        record
            .versions
            .retain(|v| version.is_some_and(|x| x != v.version));
        if record.versions.len() == before {
            return Err(OpError::NotFound(format!(
                "no version {} of {name}",
                version.unwrap_or_default()
            )));
        }
        if record.versions.is_empty() {
            self.km_txn(Txn {
                compares: vec![],
                success: vec![TxnOp::delete(records::software_key(name))],
                failure: vec![],
            })
            .await?;
            lock(&st.software).remove(name);
        } else {
            record.updated_ms = glory_protocol::now_ms();
            self.store_package(&record).await?;
        }
        st.collect(removed.clone());
        for sha in &removed {
            if self.distributed(sha).is_none() {
                self.stop_seeding(sha);
            }
        }
        Ok(record)
    }
}

/// A package version: 1-64 letters, digits, `.`, `-`, `_`, `+`, `~`.
fn check_version(version: &str) -> OpResult<()> {
    let ok = !version.is_empty()
        && version.len() <= 64
        && version
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-+~".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(OpError::Invalid(format!(
            "version: {version:?} must be 1-64 letters, digits, '.', '-', '_', '+' or '~'"
        )))
    }
}
