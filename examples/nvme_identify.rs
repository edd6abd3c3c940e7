//! Prints an NVMe controller's identify data, its SMART / health log and
//! its namespaces with their LBA formats.
//!
//! `cargo run --release --example nvme_identify -- [--device 0000:00:04.0] [--json]`

mod common;

use clap::Parser;
use common::args;
use fastlane::framework::{PciAddress, Vfio};
use fastlane::nvme::spec::{log_id, IdentifyNamespace, SmartLog, SubmissionEntry, SMART_LOG_SIZE};
use fastlane::nvme::{Controller, Options};
use serde::Serialize;

/// Prints the controller's Identify data, its SMART / health log and its
/// active namespaces with their LBA formats.
#[derive(Parser)]
#[command(
    name = "nvme_identify",
    after_help = "Without --device it uses $FASTLANE_NVME or the first NVMe controller bound to\n\
                  vfio-pci; with none on this machine it runs in the QEMU test guest."
)]
struct Cli {
    /// NVMe controller bound to vfio-pci
    #[arg(long, value_name = "BDF", value_parser = args::pci_address)]
    device: Option<PciAddress>,
    /// Print one JSON object instead of text
    #[arg(long)]
    json: bool,
}

fn main() {
    let cli = Cli::parse();
    let Some(dev) = common::nvme_device(cli.device) else {
        common::run_in_guest("nvme_identify", &common::raw_args());
    };
    match report(&dev) {
        Ok(r) if cli.json => println!("{}", serde_json::to_string_pretty(&r).expect("JSON")),
        Ok(r) => print!("{}", text(&r)),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}

/// Everything the tool prints, text or JSON.
#[derive(Serialize)]
struct Report {
    device: String,
    controller: ControllerReport,
    /// `None` when the controller refused the log page (see `health_error`).
    health: Option<Health>,
    #[serde(skip_serializing_if = "Option::is_none")]
    health_error: Option<String>,
    namespaces: Vec<NamespaceReport>,
}

#[derive(Serialize)]
struct ControllerReport {
    vendor_id: u16,
    serial: String,
    model: String,
    firmware: String,
    version: String,
    max_transfer_bytes: usize,
    max_queue_entries: u32,
    sgl: String,
    sgls: u32,
    io_queues: u16,
    write_zeroes: bool,
    dataset_management: bool,
    controller_id: u16,
}

/// The SMART / Health Information log (LID 02h), decoded.
#[derive(Serialize)]
struct Health {
    critical_warning: u8,
    temperature_kelvin: u16,
    temperature_celsius: i32,
    available_spare_percent: u8,
    available_spare_threshold_percent: u8,
    percentage_used: u8,
    /// Units of 1000 512-byte blocks.
    data_units_read: u128,
    data_units_written: u128,
    host_read_commands: u128,
    host_write_commands: u128,
    controller_busy_minutes: u128,
    power_cycles: u128,
    power_on_hours: u128,
    unsafe_shutdowns: u128,
    media_errors: u128,
    error_log_entries: u128,
}

impl From<&SmartLog> for Health {
    fn from(s: &SmartLog) -> Health {
        Health {
            critical_warning: s.critical_warning,
            temperature_kelvin: s.temperature_kelvin(),
            temperature_celsius: s.temperature_celsius(),
            available_spare_percent: s.available_spare,
            available_spare_threshold_percent: s.available_spare_threshold,
            percentage_used: s.percentage_used,
            data_units_read: s.data_units_read(),
            data_units_written: s.data_units_written(),
            host_read_commands: s.host_read_commands(),
            host_write_commands: s.host_write_commands(),
            controller_busy_minutes: s.controller_busy_time(),
            power_cycles: s.power_cycles(),
            power_on_hours: s.power_on_hours(),
            unsafe_shutdowns: s.unsafe_shutdowns(),
            media_errors: s.media_errors(),
            error_log_entries: s.error_log_entries(),
        }
    }
}

#[derive(Serialize)]
struct NamespaceReport {
    id: u32,
    blocks: u64,
    block_size: u32,
    /// Index of the LBA format in use (FLBAS).
    lba_format_in_use: u8,
    /// Metadata at the end of each block (FLBAS bit 4).
    metadata_extended: bool,
    lba_formats: Vec<LbaFormatReport>,
}

#[derive(Serialize)]
struct LbaFormatReport {
    index: u8,
    /// LBADS: data size is 2^LBADS bytes (0: not supported).
    lbads: u8,
    /// Data size in bytes; `None` for an unsupported LBADS.
    data_size: Option<u32>,
    /// MS: metadata bytes per block.
    metadata_size: u16,
    /// RP: 0 best .. 3 degraded.
    relative_performance: u8,
    in_use: bool,
}

impl NamespaceReport {
    fn new(id: u32, blocks: u64, block_size: u32, ns: &IdentifyNamespace) -> NamespaceReport {
        let in_use = ns.lba_format_index();
        let lba_formats = ns
            .lbaf
            .iter()
            .take(ns.nlbaf as usize + 1)
            .zip(0u8..)
            .map(|(f, index)| LbaFormatReport {
                index,
                lbads: f.lbads,
                data_size: f.data_size(),
                metadata_size: f.ms,
                relative_performance: f.relative_performance(),
                in_use: index == in_use,
            })
            .collect();
        NamespaceReport {
            id,
            blocks,
            block_size,
            lba_format_in_use: in_use,
            metadata_extended: ns.metadata_extended(),
            lba_formats,
        }
    }
}

/// The SMART / Health Information log through the driver's safe admin API.
fn smart_log(ctrl: &Controller) -> Result<SmartLog, Box<dyn std::error::Error>> {
    let mut page = [0u8; SMART_LOG_SIZE];
    let cmd =
        SubmissionEntry::get_log_page(log_id::SMART_HEALTH, u32::MAX, SMART_LOG_SIZE as u32 / 4);
    ctrl.admin_command(cmd, Some(&mut page))?;
    Ok(SmartLog::from_bytes(&page).expect("512 bytes"))
}

fn report(dev: &str) -> Result<Report, Box<dyn std::error::Error>> {
    let vfio = Vfio::new()?;
    let ctrl = Controller::open(&vfio, dev, Options::default())?;
    let i = ctrl.info();
    let controller = ControllerReport {
        vendor_id: i.vendor_id,
        serial: i.serial.clone(),
        model: i.model.clone(),
        firmware: i.firmware.clone(),
        version: i.version.to_string(),
        max_transfer_bytes: i.max_transfer,
        max_queue_entries: i.max_queue_entries,
        sgl: format!("{:?}", i.sgl),
        sgls: i.raw.sgls,
        io_queues: i.io_queues,
        write_zeroes: i.supports_write_zeroes,
        dataset_management: i.supports_dsm,
        controller_id: i.raw.cntlid,
    };
    let (health, health_error) = match smart_log(&ctrl) {
        Ok(s) => (Some(Health::from(&s)), None),
        Err(e) => (None, Some(e.to_string())),
    };
    let mut namespaces = Vec::new();
    for ns in ctrl.namespaces() {
        let mut page = vec![0u8; 4096];
        ctrl.admin_command(
            SubmissionEntry::identify_namespace(ns.id, 0),
            Some(&mut page),
        )?;
        let id = IdentifyNamespace::from_bytes(&page).expect("4096 bytes");
        namespaces.push(NamespaceReport::new(ns.id, ns.blocks, ns.block_size, &id));
    }
    Ok(Report {
        device: dev.to_string(),
        controller,
        health,
        health_error,
        namespaces,
    })
}

/// Data units (1000 × 512 bytes) as a readable size.
fn units_size(units: u128) -> String {
    let bytes = SmartLog::data_units_bytes(units) as f64;
    if bytes >= 1e12 {
        format!("{:.2} TB", bytes / 1e12)
    } else if bytes >= 1e9 {
        format!("{:.2} GB", bytes / 1e9)
    } else {
        format!("{:.2} MB", bytes / 1e6)
    }
}

/// The text output.
fn text(r: &Report) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let c = &r.controller;
    let _ = writeln!(o, "controller {}", r.device);
    let _ = writeln!(o, "  vendor id         {:#06x}", c.vendor_id);
    let _ = writeln!(o, "  serial number     {}", c.serial);
    let _ = writeln!(o, "  model number      {}", c.model);
    let _ = writeln!(o, "  firmware          {}", c.firmware);
    let _ = writeln!(o, "  NVMe version      {}", c.version);
    let _ = writeln!(o, "  max transfer      {} KiB", c.max_transfer_bytes / 1024);
    let _ = writeln!(o, "  max queue entries {}", c.max_queue_entries);
    let _ = writeln!(o, "  SGL support       {} (SGLS {:#010x})", c.sgl, c.sgls);
    let _ = writeln!(o, "  I/O queues        {}", c.io_queues);
    let _ = writeln!(o, "  write zeroes      {}", c.write_zeroes);
    let _ = writeln!(o, "  dataset mgmt      {}", c.dataset_management);
    let _ = writeln!(o, "  controller id     {}", c.controller_id);
    match (&r.health, &r.health_error) {
        (Some(h), _) => {
            let _ = writeln!(o, "SMART / health log");
            let _ = writeln!(o, "  critical warning  {:#04x}", h.critical_warning);
            let _ = writeln!(
                o,
                "  temperature       {} K ({} °C)",
                h.temperature_kelvin, h.temperature_celsius
            );
            let _ = writeln!(
                o,
                "  available spare   {}% (threshold {}%)",
                h.available_spare_percent, h.available_spare_threshold_percent
            );
            let _ = writeln!(o, "  percentage used   {}%", h.percentage_used);
            let _ = writeln!(
                o,
                "  data units read   {} ({})",
                h.data_units_read,
                units_size(h.data_units_read)
            );
            let _ = writeln!(
                o,
                "  data units written {} ({})",
                h.data_units_written,
                units_size(h.data_units_written)
            );
            let _ = writeln!(o, "  host reads        {}", h.host_read_commands);
            let _ = writeln!(o, "  host writes       {}", h.host_write_commands);
            let _ = writeln!(o, "  busy time         {} min", h.controller_busy_minutes);
            let _ = writeln!(o, "  power cycles      {}", h.power_cycles);
            let _ = writeln!(o, "  power-on hours    {}", h.power_on_hours);
            let _ = writeln!(o, "  unsafe shutdowns  {}", h.unsafe_shutdowns);
            let _ = writeln!(o, "  media errors      {}", h.media_errors);
            let _ = writeln!(o, "  error log entries {}", h.error_log_entries);
        }
        (None, e) => {
            let _ = writeln!(
                o,
                "SMART / health log unavailable: {}",
                e.as_deref().unwrap_or("unknown error")
            );
        }
    }
    for ns in &r.namespaces {
        let _ = writeln!(
            o,
            "namespace {}: {} blocks of {} bytes ({:.1} GiB)",
            ns.id,
            ns.blocks,
            ns.block_size,
            (ns.blocks as f64 * ns.block_size as f64) / (1u64 << 30) as f64
        );
        for f in &ns.lba_formats {
            let size = f
                .data_size
                .map_or_else(|| "unsupported".to_string(), |s| format!("{s} B"));
            let _ = writeln!(
                o,
                "  LBA format {:2}: data {size} (LBADS {}), metadata {} B, RP {}{}",
                f.index,
                f.lbads,
                f.metadata_size,
                f.relative_performance,
                if f.in_use {
                    if ns.metadata_extended {
                        "  (in use, extended LBA)"
                    } else {
                        "  (in use)"
                    }
                } else {
                    ""
                }
            );
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Report {
        let mut b = vec![0u8; 512];
        b[0] = 0x02;
        b[1..3].copy_from_slice(&323u16.to_le_bytes());
        b[3] = 100;
        b[4] = 10;
        b[5] = 7;
        b[32..48].copy_from_slice(&(u64::MAX as u128 + 1).to_le_bytes());
        b[48..64].copy_from_slice(&2000u128.to_le_bytes());
        b[160] = 3;
        b[176] = 42;
        let smart = SmartLog::from_bytes(&b).unwrap();
        let mut n = vec![0u8; 4096];
        n[25] = 1; // two formats
        n[26] = 1 | 1 << 4; // format 1, extended
        n[128..132].copy_from_slice(&[0, 0, 9, 0]);
        n[132..136].copy_from_slice(&[8, 0, 12, 2]);
        let ns = IdentifyNamespace::from_bytes(&n).unwrap();
        Report {
            device: "0000:00:04.0".into(),
            controller: ControllerReport {
                vendor_id: 0x1b36,
                serial: "fastlane0001".into(),
                model: "QEMU NVMe Ctrl".into(),
                firmware: "8.2.0".into(),
                version: "1.4.0".into(),
                max_transfer_bytes: 512 * 1024,
                max_queue_entries: 2048,
                sgl: "Supported".into(),
                sgls: 1,
                io_queues: 64,
                write_zeroes: true,
                dataset_management: true,
                controller_id: 0,
            },
            health: Some(Health::from(&smart)),
            health_error: None,
            namespaces: vec![NamespaceReport::new(1, 65536, 4096, &ns)],
        }
    }

    #[test]
    fn text_shows_health_and_lba_formats() {
        let t = text(&sample());
        assert!(t.contains("temperature       323 K (50 °C)"), "{t}");
        assert!(t.contains("available spare   100% (threshold 10%)"), "{t}");
        assert!(t.contains("percentage used   7%"), "{t}");
        assert!(
            t.contains(&format!("data units read   {}", u64::MAX as u128 + 1)),
            "{t}"
        );
        assert!(t.contains("data units written 2000 (1.02 GB)"), "{t}");
        assert!(t.contains("media errors      3"), "{t}");
        assert!(t.contains("error log entries 42"), "{t}");
        assert!(
            t.contains("LBA format  0: data 512 B (LBADS 9), metadata 0 B, RP 0\n"),
            "{t}"
        );
        assert!(
            t.contains(
                "LBA format  1: data 4096 B (LBADS 12), metadata 8 B, RP 2  (in use, extended LBA)"
            ),
            "{t}"
        );
        let mut r = sample();
        r.health = None;
        r.health_error = Some("Invalid Log Page".into());
        assert!(text(&r).contains("SMART / health log unavailable: Invalid Log Page"));
    }

    #[test]
    fn json_carries_the_same_values() {
        let v: serde_json::Value =
            serde_json::from_str(&serde_json::to_string(&sample()).unwrap()).unwrap();
        let h = &v["health"];
        assert_eq!(h["temperature_kelvin"], 323);
        assert_eq!(h["temperature_celsius"], 50);
        assert_eq!(h["critical_warning"], 2);
        assert_eq!(h["available_spare_percent"], 100);
        assert_eq!(h["data_units_written"], 2000);
        assert_eq!(h["error_log_entries"], 42);
        assert_eq!(v["controller"]["serial"], "fastlane0001");
        assert!(v.get("health_error").is_none());
        // A 128-bit counter beyond u64 stays exact in the JSON text.
        let s = serde_json::to_string(&sample()).unwrap();
        assert!(
            s.contains(&format!("\"data_units_read\":{}", u64::MAX as u128 + 1)),
            "{s}"
        );
        let ns = &v["namespaces"][0];
        assert_eq!(ns["lba_format_in_use"], 1);
        assert_eq!(ns["metadata_extended"], true);
        let f = ns["lba_formats"].as_array().unwrap();
        assert_eq!(f.len(), 2);
        assert_eq!(
            (f[1]["data_size"].as_u64(), f[1]["metadata_size"].as_u64()),
            (Some(4096), Some(8))
        );
        assert_eq!(
            (f[0]["in_use"].as_bool(), f[1]["in_use"].as_bool()),
            (Some(false), Some(true))
        );
    }
}
