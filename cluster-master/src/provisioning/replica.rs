//! Standby cluster masters keep a copy of the content store: every file an image or
//! a package names is fetched from the leader (`GET /content/{sha256}`, verified by
//! its hash), so a standby that takes over serves every image and package it was
//! acknowledged for. Files no record names any more are removed, as on the leader.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use glory_content::{fetch_into, ContentCache, ContentStore, Source};
use glory_keymaster::schema::images::{
    ImageRecord, SoftwareRecord, IMAGES_PREFIX, SOFTWARE_PREFIX,
};
use glory_keymaster::{schema, KeyMaster};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::role::Node;

/// How often a standby compares its copy with the records.
const EVERY: Duration = Duration::from_secs(5);

/// Every file the images and packages in the key master name, with its size.
pub(crate) async fn referenced(km: &dyn KeyMaster) -> anyhow::Result<BTreeMap<String, u64>> {
    let mut out = BTreeMap::new();
    for kv in km.get_prefix(IMAGES_PREFIX).await?.0 {
        let image: ImageRecord = schema::decode(&kv.key, &kv.value)?;
        for b in image.blobs() {
            out.insert(b.sha256.clone(), b.size);
        }
    }
    for kv in km.get_prefix(SOFTWARE_PREFIX).await?.0 {
        let package: SoftwareRecord = schema::decode(&kv.key, &kv.value)?;
        for v in package.versions {
            out.insert(v.blob.sha256, v.blob.size);
        }
    }
    Ok(out)
}

/// While this master stands by, copy the leader's content.
pub(crate) async fn follow_content(
    node: Arc<Node>,
    client: reqwest::Client,
    stop: CancellationToken,
) {
    let store = match ContentStore::open(&node.settings.content_dir) {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "content store unusable; standby keeps no copy");
            return;
        }
    };
    let cache = ContentCache::new(store);
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if node.active().is_some() {
            return;
        }
        let Some(leader) = node.leader().filter(|l| *l != node.me) else {
            continue;
        };
        let wanted = match referenced(node.km.as_ref()).await {
            Ok(w) => w,
            Err(e) => {
                warn!(error = %e, "cannot read image and package records");
                continue;
            }
        };
        for (sha256, size) in &wanted {
            if cache.store().size(sha256).is_some() {
                continue;
            }
            let source = Source {
                url: format!("http://{}/content/{sha256}", leader.api),
                size: *size,
            };
            cache.learn(sha256, source);
            let client = client.clone();
            match cache
                .ensure(sha256, |source, writer| fetch_into(client, source, writer))
                .await
            {
                Ok(()) => info!(%sha256, bytes = size, "content copied from the leader"),
                Err(e) => warn!(%sha256, error = %e, "cannot copy content from the leader"),
            }
            if node.active().is_some() || stop.is_cancelled() {
                return;
            }
        }
        for sha256 in cache.store().hashes().unwrap_or_default() {
            if !wanted.contains_key(&sha256) {
                let _ = cache.store().remove(&sha256);
            }
        }
    }
}
