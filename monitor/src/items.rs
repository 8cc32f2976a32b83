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

/// The item of checks: the exit code (0 ok, 1 warning, 2 critical, 3 unknown).
pub const CHECK_ITEM: &str = "check.status";

/// Whether `item` has history: a node metric or an item of process monitors and
/// checks (those carry the label `monitor=<name>`).
pub fn has_history(item: &str) -> bool {
    is_known(item) || crate::procs::PROCESS_ITEMS.contains(&item) || item == CHECK_ITEM
}
