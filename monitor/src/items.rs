//! The items monitors can watch.

/// Node metrics every agent reports (see [`crate::collect`]).
pub const NODE_ITEMS: &[&str] = &[
    "cpu.percent",
    "load.1",
    "load.5",
    "load.15",
    "mem.used_bytes",
    "mem.available_bytes",
    "swap.used_bytes",
    "uptime.seconds",
    "disk.used_percent",
    "disk.read_bytes",
    "disk.write_bytes",
    "net.rx_bytes",
    "net.tx_bytes",
];

/// Whether `item` is one a monitor may watch.
pub fn is_known(item: &str) -> bool {
    NODE_ITEMS.contains(&item)
}
