#![forbid(unsafe_code)]
//! `nvmf-tcp`: the NVMe/TCP target binary (transport in progress).

fn main() {
    eprintln!("nvmf-tcp: transport not built yet");
    std::process::exit(2);
}
