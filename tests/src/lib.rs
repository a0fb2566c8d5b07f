//! The shared end-to-end harness: a private OpenLDAP `slapd` and the real Passage binaries,
//! each started in a temp dir on 127.0.0.1, stopped when dropped.
//!
//! Nothing is installed here: `slapd` and `ldap-utils` come from the README's test command
//! (`.ci/run` runs it). A missing binary is a clear panic, not a skipped test.

pub mod bins;
pub mod cluster;
pub mod dns;
pub mod forging;
pub mod otlp;
pub mod postgres;
pub mod proxy;
pub mod samba;
pub mod signin_log;
pub mod slapd;
pub mod timing;
pub mod web;

pub use cluster::{AgentProcess, Cluster, ClusterOptions, DispatcherProcess, GatewayProcess};
pub use slapd::{Slapd, TestUser};
