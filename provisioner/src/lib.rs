//! GLORY-CL's provisioner: a bare server powers on, PXE-boots from us and enrolls
//! itself; remote power control (docs/PROVISIONING.md).
//!
//! - [`leases`]: leases of the boot network, pure (time passed in), persisted as JSON.
//! - [`dhcp`]: a packet in, the answer out: full and proxy modes, the boot program by
//!   firmware (BIOS `undionly.kpxe`, UEFI `ipxe.efi`, iPXE its script's URL).
//! - [`server`]: that on a UDP socket, leases saved on every bind and release.
//! - [`initramfs`]: the enrollment environment (Debian's kernel, busybox, the agent and
//!   its libraries, network modules), built reproducibly.
//! - [`http`]: HTTP boot: a script per MAC, kernel and initramfs with Range and SHA-256,
//!   the enrollment environment's call-back.
//! - [`uplink`]: enrollment (role `provisioner`) and the link to the cluster master:
//!   boot plans (a token minted per boot) and boot progress.
//! - [`ra`]: bare IPv6 router advertisements, so iPXE does not wait for one.
//! - [`run`]: all of that started together; [`config`]: its TOML.
//! - [`power`]: remote power control drivers (ipmi, redfish, qemu), used by the
//!   cluster master.
//!
//! Architecture invariant: depends on `protocol` only (never on a master crate); the
//! decisions (leases, DHCP answers, scripts, ranges) are pure, the servers thin.
#![forbid(unsafe_code)]

pub mod config;
pub mod dhcp;
pub mod firstboot;
pub mod http;
pub mod initramfs;
pub mod leases;
pub mod p2p;
pub mod power;
pub mod ra;
pub mod run;
pub mod server;
pub mod uplink;
