//! What makes a server *this* server: the identity a node enrolls under. Two servers
//! cloned from one image share `/etc/machine-id` (and diskless PXE-booted ones often
//! share a generated one), so the identity comes from the hardware first:
//!
//! 1. `name:<node_name>` when the operator set one (several agents on one host, labs);
//! 2. `uuid:<SMBIOS system UUID>` unless the firmware left a known placeholder;
//! 3. `mac:<boot NIC's MAC>` (the one the server PXE-booted from), else the lowest
//!    MAC of the physical NICs;
//! 4. `machine-id:<id>` as a last resort.
//!
//! The choice is a pure function of [`HardwareFacts`], so each rule is unit-tested.

/// What the agent could read about the hardware it runs on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HardwareFacts {
    /// `node_name` from the config or `--node-name`.
    pub node_name: Option<String>,
    /// `/sys/class/dmi/id/product_uuid` (readable by root only).
    pub system_uuid: Option<String>,
    /// The NIC the server booted from (`BOOTIF=` or `glory.bootif=` on the kernel
    /// command line), when it PXE-booted.
    pub boot_mac: Option<String>,
    /// MACs of the physical NICs (those backed by a device, not lo, bridges or veths).
    pub macs: Vec<String>,
    pub machine_id: Option<String>,
}

/// UUIDs that firmware vendors ship unset: every board of a model reports the same one.
const PLACEHOLDER_UUIDS: &[&str] = &[
    "00000000-0000-0000-0000-000000000000",
    "ffffffff-ffff-ffff-ffff-ffffffffffff",
    "03000200-0400-0500-0006-000700080009",
    "00020003-0004-0005-0006-000700080009",
    "12345678-1234-5678-90ab-cddeefaabbcc",
    "4c4c4544-0000-2010-8020-80c04f202020",
];

/// Whether a system UUID is one no server can be told apart by.
pub fn is_placeholder_uuid(uuid: &str) -> bool {
    let uuid = uuid.trim().to_ascii_lowercase();
    let hex: String = uuid.chars().filter(|c| c.is_ascii_hexdigit()).collect();
    hex.len() != 32
        || PLACEHOLDER_UUIDS.contains(&uuid.as_str())
        || hex.chars().all(|c| c == hex.as_bytes()[0] as char)
}

/// A MAC in lower-case colon form, or None for one that names no NIC.
pub fn normalize_mac(mac: &str) -> Option<String> {
    let hex: String = mac
        .trim()
        .chars()
        .filter(|c| c.is_ascii_hexdigit())
        .collect::<String>()
        .to_ascii_lowercase();
    if hex.len() != 12 || hex.chars().all(|c| c == '0') || hex.chars().all(|c| c == 'f') {
        return None;
    }
    let bytes: Vec<&str> = (0..6).map(|i| &hex[i * 2..i * 2 + 2]).collect();
    Some(bytes.join(":"))
}

/// The boot NIC from the kernel command line: pxelinux's `BOOTIF=01-aa-bb-cc-dd-ee-ff`
/// (hardware type 01 first) or our iPXE script's `glory.bootif=aa:bb:cc:dd:ee:ff`.
pub fn boot_mac_from_cmdline(cmdline: &str) -> Option<String> {
    cmdline.split_whitespace().find_map(|word| {
        if let Some(v) = word.strip_prefix("glory.bootif=") {
            normalize_mac(v)
        } else if let Some(v) = word.strip_prefix("BOOTIF=") {
            // `01-` is the ARP hardware type (Ethernet) pxelinux puts first.
            normalize_mac(v.strip_prefix("01-").unwrap_or(v))
        } else {
            None
        }
    })
}

/// The identity this server enrolls under (see the module doc for the order).
pub fn node_identity(facts: &HardwareFacts) -> String {
    if let Some(name) = facts.node_name.as_deref().map(str::trim) {
        if !name.is_empty() {
            return format!("name:{name}");
        }
    }
    if let Some(uuid) = &facts.system_uuid {
        if !is_placeholder_uuid(uuid) {
            return format!("uuid:{}", uuid.trim().to_ascii_lowercase());
        }
    }
    let boot = facts.boot_mac.as_deref().and_then(normalize_mac);
    let lowest = facts.macs.iter().filter_map(|m| normalize_mac(m)).min();
    if let Some(mac) = boot.or(lowest) {
        return format!("mac:{mac}");
    }
    match facts.machine_id.as_deref().map(str::trim) {
        Some(id) if !id.is_empty() => format!("machine-id:{id}"),
        _ => "machine-id:unknown".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> HardwareFacts {
        HardwareFacts {
            node_name: None,
            system_uuid: Some("4C4C4544-0042-3510-8051-B4C04F384E32".into()),
            boot_mac: Some("52:54:00:AA:BB:02".into()),
            macs: vec!["52:54:00:aa:bb:03".into(), "52:54:00:aa:bb:01".into()],
            machine_id: Some("0123456789abcdef0123456789abcdef".into()),
        }
    }

    /// A case: what it shows, how the facts differ from [`facts`], the identity wanted.
    type Case = (&'static str, Box<dyn Fn(&mut HardwareFacts)>, &'static str);

    #[test]
    fn identity_prefers_name_then_uuid_then_mac_then_machine_id() {
        let cases: Vec<Case> = vec![
            (
                "explicit name wins",
                Box::new(|f| f.node_name = Some(" lab-3 ".into())),
                "name:lab-3",
            ),
            (
                "blank name is no name",
                Box::new(|f| f.node_name = Some("  ".into())),
                "uuid:4c4c4544-0042-3510-8051-b4c04f384e32",
            ),
            (
                "real uuid, lower-cased",
                Box::new(|_| {}),
                "uuid:4c4c4544-0042-3510-8051-b4c04f384e32",
            ),
            (
                "placeholder uuid: boot mac",
                Box::new(|f| f.system_uuid = Some("03000200-0400-0500-0006-000700080009".into())),
                "mac:52:54:00:aa:bb:02",
            ),
            (
                "all-zero uuid: boot mac",
                Box::new(|f| f.system_uuid = Some("00000000-0000-0000-0000-000000000000".into())),
                "mac:52:54:00:aa:bb:02",
            ),
            (
                "no uuid, no boot mac: lowest mac",
                Box::new(|f| {
                    f.system_uuid = None;
                    f.boot_mac = None;
                }),
                "mac:52:54:00:aa:bb:01",
            ),
            (
                "nothing but a machine id",
                Box::new(|f| {
                    f.system_uuid = Some("Not Settable".into());
                    f.boot_mac = None;
                    f.macs = vec!["00:00:00:00:00:00".into()];
                }),
                "machine-id:0123456789abcdef0123456789abcdef",
            ),
            (
                "nothing at all",
                Box::new(|f| *f = HardwareFacts::default()),
                "machine-id:unknown",
            ),
        ];
        for (what, change, want) in cases {
            let mut f = facts();
            change(&mut f);
            assert_eq!(node_identity(&f), want, "{what}");
        }
    }

    #[test]
    fn clones_with_one_machine_id_get_different_identities() {
        let mut a = facts();
        let mut b = facts();
        for f in [&mut a, &mut b] {
            f.system_uuid = None;
            f.boot_mac = None;
        }
        b.macs = vec!["52:54:00:aa:cc:01".into()];
        assert_eq!(a.machine_id, b.machine_id);
        assert_ne!(node_identity(&a), node_identity(&b));
    }

    #[test]
    fn placeholder_uuids_are_recognised() {
        for uuid in [
            "00000000-0000-0000-0000-000000000000",
            "FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF",
            "03000200-0400-0500-0006-000700080009",
            "Not Settable",
            "To Be Filled By O.E.M.",
            "",
        ] {
            assert!(is_placeholder_uuid(uuid), "{uuid:?}");
        }
        assert!(!is_placeholder_uuid("4c4c4544-0042-3510-8051-b4c04f384e32"));
    }

    #[test]
    fn boot_nic_is_read_from_the_kernel_command_line() {
        assert_eq!(
            boot_mac_from_cmdline("quiet BOOTIF=01-52-54-00-AA-BB-02 glory.token=x"),
            Some("52:54:00:aa:bb:02".into())
        );
        assert_eq!(
            boot_mac_from_cmdline("glory.bootif=52:54:00:aa:bb:07 quiet"),
            Some("52:54:00:aa:bb:07".into())
        );
        assert_eq!(boot_mac_from_cmdline("quiet BOOTIF=garbage"), None);
        assert_eq!(boot_mac_from_cmdline("quiet"), None);
    }
}
