//! Prints an NVMe controller's identify data and namespaces.
//!
//! `cargo run --release --example nvme_identify -- [--device 0000:00:04.0]`

mod common;

use clap::Parser;
use common::args;
use fastlane::framework::{PciAddress, Vfio};
use fastlane::nvme::{Controller, Options};

/// Prints the controller's Identify data and its active namespaces.
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
}

fn main() {
    let cli = Cli::parse();
    let Some(dev) = common::nvme_device(cli.device) else {
        common::run_in_guest("nvme_identify", &common::raw_args());
    };
    if let Err(e) = run(&dev) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run(dev: &str) -> Result<(), Box<dyn std::error::Error>> {
    let vfio = Vfio::new()?;
    let ctrl = Controller::open(&vfio, dev, Options::default())?;
    let i = ctrl.info();
    println!("controller {dev}");
    println!("  vendor id         {:#06x}", i.vendor_id);
    println!("  serial number     {}", i.serial);
    println!("  model number      {}", i.model);
    println!("  firmware          {}", i.firmware);
    println!("  NVMe version      {}", i.version);
    println!("  max transfer      {} KiB", i.max_transfer / 1024);
    println!("  max queue entries {}", i.max_queue_entries);
    println!("  SGL support       {:?} (SGLS {:#010x})", i.sgl, i.raw.sgls);
    println!("  I/O queues        {}", i.io_queues);
    println!("  write zeroes      {}", i.supports_write_zeroes);
    println!("  dataset mgmt      {}", i.supports_dsm);
    println!("  controller id     {}", { i.raw.cntlid });
    for ns in ctrl.namespaces() {
        println!(
            "namespace {}: {} blocks of {} bytes ({:.1} GiB)",
            ns.id,
            ns.blocks,
            ns.block_size,
            (ns.blocks * ns.block_size as u64) as f64 / (1u64 << 30) as f64
        );
    }
    Ok(())
}
