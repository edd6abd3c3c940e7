#![forbid(unsafe_code)]
//! `nvmf-tcp`: an NVMe/TCP target exporting namespaces of an NVMe
//! controller driven by fastlane's userspace driver.
//!
//! ```text
//! nvmf-tcp --listen 127.0.0.1:4420 --nqn nqn.2026-01.io.fastlane:nvme \
//!          --device 0000:00:04.0 --io-queues 2 --queue-depth 128
//! ```

use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use fastlane_framework::{BufferPool, PageSize, Vfio};
use fastlane_nvme::{Controller, Options};
use fastlane_nvmf_tcp::admin::{Config, NsInfo, Subsystem};
use fastlane_nvmf_tcp::worker::{inbox, Tuning, Worker};
use rustix::event::{PollFd, PollFlags, Timespec};

/// NVMe-over-TCP target served by fastlane's userspace NVMe driver.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Address and port to listen on.
    #[arg(long, default_value = "127.0.0.1:4420")]
    listen: SocketAddr,
    /// Subsystem NQN.
    #[arg(long, default_value = "nqn.2026-01.io.fastlane:nvme")]
    nqn: String,
    /// PCI address of the NVMe controller (bound to vfio-pci).
    #[arg(long, default_value = "0000:00:04.0")]
    device: String,
    /// Namespace ids to export, comma separated (default: all).
    #[arg(long, value_delimiter = ',')]
    namespaces: Vec<u32>,
    /// Host NQN allowed to connect (repeatable); none or "any": any host.
    #[arg(long = "allow-host")]
    allow_host: Vec<String>,
    /// I/O queues per controller; one worker thread and one device queue
    /// pair each.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    io_queues: u16,
    /// Entries of one I/O queue a host may ask for (CAP.MQES + 1).
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u16).range(2..=1024))]
    queue_depth: u16,
    /// Offer header and data digests (CRC32C) to hosts that ask.
    #[arg(long)]
    digests: bool,
    /// Largest transfer of one command in KiB (MDTS; a power of two).
    #[arg(long, default_value_t = 128)]
    max_transfer_kib: usize,
    /// Buffers per worker (default: 2 x queue depth).
    #[arg(long)]
    buffers: Option<u32>,
    /// Microseconds a worker keeps polling after its last progress before
    /// it sleeps in epoll_wait (longer: lower latency between commands,
    /// more CPU).
    #[arg(long, default_value_t = 50)]
    idle_spin_us: u64,
    /// Microseconds a worker naps in epoll_wait between completion-queue
    /// polls while commands are on the device and it spun --idle-spin-us
    /// without progress (0: poll without pause).
    #[arg(long, default_value_t = 50)]
    device_nap_us: u64,
    /// Move each worker to the CPU where its busiest connection's packets
    /// arrive (SO_INCOMING_CPU), within the CPUs the target may use (off:
    /// slower in the 2-vCPU TCG benchmark, where the scheduler spreads
    /// the work better).
    #[arg(long)]
    follow_host_cpu: bool,
    /// Stop (cleanly: device queues deleted, controller shut down) when
    /// standard input reaches end of file.
    #[arg(long)]
    until_stdin_closes: bool,
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let args = Args::parse();
    if let Err(e) = run(args) {
        eprintln!("nvmf-tcp: {e}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let mt = args.max_transfer_kib * 1024;
    if !mt.is_power_of_two() || !(4096..=(1 << 21)).contains(&mt) {
        return Err("--max-transfer-kib: a power of two from 4 to 2048".into());
    }
    let vfio = Vfio::new()?;
    let options = Options {
        io_queues: args.io_queues,
        ..Options::default()
    };
    let ctrl = Controller::open(&vfio, &args.device, options)?;
    let info = ctrl.info();
    let namespaces: Vec<NsInfo> = ctrl
        .namespaces()
        .iter()
        .filter(|n| args.namespaces.is_empty() || args.namespaces.contains(&n.id))
        .map(|n| NsInfo {
            id: n.id,
            blocks: n.blocks,
            block_size: n.block_size,
        })
        .collect();
    if namespaces.is_empty() {
        return Err(format!("no namespace to export (asked {:?})", args.namespaces).into());
    }
    let allowed: Vec<String> = args
        .allow_host
        .iter()
        .filter(|h| h.as_str() != "any")
        .cloned()
        .collect();
    let local = args.listen;
    let cfg = Config {
        nqn: args.nqn.clone(),
        allowed_hosts: allowed,
        namespaces: namespaces.clone(),
        serial: info.serial.trim().to_string(),
        model: "fastlane nvmf-tcp".into(),
        firmware: info.firmware.trim().to_string(),
        max_io_queues: args.io_queues,
        queue_depth: args.queue_depth,
        max_transfer: mt.min(info.max_transfer.next_power_of_two().max(4096) * 64),
        in_capsule: 8192,
        volatile_write_cache: info.raw.has_volatile_write_cache(),
        write_zeroes: info.supports_write_zeroes,
        dsm: info.supports_dsm,
        traddr: local.ip().to_string(),
        trsvcid: local.port().to_string(),
    };
    let sub = Arc::new(Subsystem::new(cfg));
    let stop = Arc::new(AtomicBool::new(false));
    let count = args.buffers.unwrap_or(2 * args.queue_depth as u32);
    let mut senders = Vec::new();
    let mut threads = Vec::new();
    for i in 0..args.io_queues {
        let qp = ctrl.create_qpair((2 * args.queue_depth).min(1024))?;
        let pool = BufferPool::new(&vfio, mt, count, PageSize::Huge2M)?;
        let (tx, rx) = inbox()?;
        senders.push(tx);
        let tuning = Tuning {
            digests: args.digests,
            idle_spin: Duration::from_micros(args.idle_spin_us),
            device_nap: Duration::from_micros(args.device_nap_us),
            follow_host_cpu: args.follow_host_cpu,
        };
        let w = Worker::new(sub.clone(), qp, pool, rx, stop.clone(), tuning);
        let stop = stop.clone();
        threads.push(
            std::thread::Builder::new()
                .name(format!("nvmf-q{i}"))
                .spawn(move || {
                    if let Err(e) = w.run() {
                        eprintln!("nvmf-tcp: worker {i}: {e}");
                        stop.store(true, Ordering::Relaxed);
                    }
                })?,
        );
    }
    let listener = TcpListener::bind(args.listen)?;
    listener.set_nonblocking(true)?;
    eprintln!(
        "nvmf-tcp: listening on {} for {} (namespaces {:?}, {} I/O queues of {}, max transfer {} KiB{})",
        listener.local_addr()?,
        args.nqn,
        namespaces.iter().map(|n| n.id).collect::<Vec<_>>(),
        args.io_queues,
        args.queue_depth,
        mt / 1024,
        if args.digests { ", digests offered" } else { "" }
    );
    if args.until_stdin_closes {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut sink = [0u8; 256];
            while matches!(std::io::stdin().read(&mut sink), Ok(n) if n > 0) {}
            stop.store(true, Ordering::Relaxed);
        });
    }
    // Accept as soon as a connection arrives (sleeping in poll(2)); the
    // timeout only bounds how late `stop` is seen.
    let mut next = 0usize;
    let wait = Timespec {
        tv_sec: 0,
        tv_nsec: 200_000_000,
    };
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((sock, peer)) => {
                log::info!("connection from {peer}");
                if let Err(e) = senders[next % senders.len()].send(sock) {
                    log::warn!("connection from {peer}: worker gone: {e}");
                }
                next += 1;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let mut fds = [PollFd::from_borrowed_fd(listener.as_fd(), PollFlags::IN)];
                let _ = rustix::event::poll(&mut fds, Some(&wait));
            }
            Err(e) => {
                log::warn!("accept: {e}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
    for t in threads {
        let _ = t.join();
    }
    drop(ctrl);
    eprintln!("nvmf-tcp: stopped");
    Ok(())
}
