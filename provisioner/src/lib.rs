//! GLORY-CL's provisioner (issue 17, part 1, in progress): DHCP for the boot network.
//!
//! - [`leases`]: leases of the boot network, pure (time passed in), persisted as JSON.
//! - [`dhcp`]: a packet in, the answer out: full and proxy modes, the boot program by
//!   firmware (BIOS `undionly.kpxe`, UEFI `ipxe.efi`, iPXE its script's URL).
//! - [`server`]: that on a UDP socket, leases saved on every bind and release.
//!
//! Not built yet: TFTP and HTTP boot, the enrollment initramfs, the binary, the link to
//! the cluster master, boot status and power control (docs/PROVISIONING.md).
//!
//! Architecture invariant: depends on `protocol` at most (and on no master crate); the
//! logic here does no I/O, so the servers around it stay thin.
#![forbid(unsafe_code)]

pub mod dhcp;
pub mod leases;
pub mod server;
