//! NVMe polling-mode driver for the fastlane userspace driver framework.
//!
//! `spec` declares every NVMe register and structure once, `queue` holds the
//! pure submission/completion ring and command-id logic, and `prp` builds
//! PRP entries and lists from IOVAs.

pub mod prp;
pub mod queue;
pub mod spec;
