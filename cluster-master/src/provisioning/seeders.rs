//! Images and large packages spread peer-to-peer: which content does, and its torrent
//! (made, seeded and tracked by `glory_content::swarm::Swarms`; the tracker is
//! `GET /announce` beside the API, peers of the announcing node's group first, the
//! cluster's seeders last).

use std::net::IpAddr;

use glory_content::torrent::Torrent;
use glory_keymaster::schema::images::ImageRecord;

use crate::cluster::Cluster;
use crate::pools::OpError;

impl Cluster {
    /// The torrent of `image`'s root filesystem, with its seeder running.
    pub(crate) async fn image_torrent(&self, image: &ImageRecord) -> Result<Torrent, OpError> {
        let what = format!("image {} version {}", image.name, image.version);
        self.content_torrent(&image.rootfs.sha256, &what).await
    }

    /// What content spreads peer-to-peer: an image's root filesystem, or a package
    /// version at least the size the settings name. Its description, None for other
    /// content.
    pub(crate) fn distributed(&self, sha: &str) -> Option<String> {
        self.images.distributed(sha, self.settings.p2p_min_bytes)
    }

    /// The torrent of stored content `sha` (`what` it is, for the log), with its
    /// seeder running.
    pub(crate) async fn content_torrent(&self, sha: &str, what: &str) -> Result<Torrent, OpError> {
        if !self.images.content.path(sha).is_some_and(|p| p.exists()) {
            return Err(OpError::NotFound(format!("no content {sha} is stored")));
        }
        let announce = format!("{}/announce", self.content_url());
        self.distribution
            .torrent(sha, what, &announce)
            .await
            .map_err(|e| match e {
                glory_content::swarm::SwarmError::Seeder(_) => OpError::Conflict {
                    message: e.to_string(),
                    fit: None,
                },
                _ => OpError::Invalid(e.to_string()),
            })
    }

    /// Content that spread peer-to-peer is gone: stop seeding and tracking it.
    pub(crate) fn stop_seeding(&self, sha: &str) {
        self.distribution.stop(sha);
    }

    /// The group of the node at `ip` (where its agent connects from, or an address on
    /// its interfaces).
    pub(crate) fn group_of_ip(&self, ip: IpAddr) -> Option<String> {
        let text = ip.to_string();
        let reg = self.read();
        reg.nodes
            .values()
            .find(|n| {
                n.record.reached_from.as_deref() == Some(text.as_str())
                    || n.record.inventory.nics.iter().any(|nic| {
                        nic.addresses
                            .iter()
                            .any(|a| a.split('/').next() == Some(text.as_str()))
                    })
            })
            .map(|n| n.record.group.clone())
    }
}
