#![forbid(unsafe_code)]
//! An NVMe-over-TCP target (NVMe over Fabrics with the TCP transport)
//! whose namespaces are served by fastlane's userspace NVMe driver.
//!
//! `pdu` parses and builds the transport's PDUs, `nvme` holds the command
//! and completion structures, `admin` is the controller model (Connect,
//! properties, Identify, logs, features, keep-alive, discovery), `conn`
//! runs one TCP connection (a queue) and `worker` is the per-thread loop
//! that owns a queue pair of the backing controller and polls its
//! connections and the queue pair together. All protocol code is pure and
//! unit-tested; nothing a peer sends becomes a panic.

// This library exists for the `nvmf-tcp` binary, its tests and the fuzz
// target; most of its items are wire and spec layouts named as in the
// NVMe/TCP and NVMe-oF specifications, so per-field docs are not required.
#![allow(missing_docs)]

pub mod admin;
pub mod conn;
pub mod nvme;
pub mod pdu;
pub mod worker;
