//! The `glory` command as a library: the operator CLI, the REST client, the simulated
//! fleet and the all-in-one cluster, so tests can drive them in-process.
#![forbid(unsafe_code)]

pub mod bench;
pub mod cli;
pub mod cli_bootstrap_tokens;
pub mod cli_images;
pub mod cli_monitoring;
pub mod cli_pools;
pub mod cli_provision;
pub mod cli_services;
pub mod cli_tenants;
pub mod cli_users;
pub mod client;
pub mod image_build;
pub mod lab;
pub mod sim;
pub mod table;
pub mod up;
