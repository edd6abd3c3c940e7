//! Value parsers for the tools' options, as pure functions (clap calls them
//! through `value_parser`; a returned `Err` becomes a usage error, exit 2).
//!
//! Nothing here converts user input with `as`: numbers are parsed wide,
//! checked against their range, then converted with `try_from`.

use std::time::Duration;

use fastlane::framework::PciAddress;

/// Longest run time the tools accept.
pub const MAX_RUN_TIME: Duration = Duration::from_secs(365 * 24 * 3600);

/// Most commands one NVMe queue pair can keep in flight: the driver takes a
/// queue size in a `u16` (at most 65535 entries) and a queue keeps one
/// entry free.
pub const MAX_QUEUE_DEPTH: u16 = u16::MAX - 1;

/// A run time in seconds (`10`, `0.5`, `1e3`): finite, above zero, at most
/// [`MAX_RUN_TIME`].
pub fn duration(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .trim()
        .parse()
        .map_err(|_| "not a number of seconds".to_string())?;
    if !secs.is_finite() || secs <= 0.0 {
        return Err("the time must be a finite number of seconds above 0".into());
    }
    if secs > MAX_RUN_TIME.as_secs_f64() {
        return Err(format!("at most {} seconds (one year)", MAX_RUN_TIME.as_secs()));
    }
    match Duration::try_from_secs_f64(secs) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err("shorter than a nanosecond".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// A whole number from `min` to `max` (inclusive), as `T`.
pub fn int_in<T>(s: &str, min: u64, max: u64) -> Result<T, String>
where
    T: TryFrom<u64>,
{
    let range = || format!("a whole number from {min} to {max}");
    let v: i128 = s.trim().parse().map_err(|e: std::num::ParseIntError| match e.kind() {
        std::num::IntErrorKind::PosOverflow | std::num::IntErrorKind::NegOverflow => {
            format!("out of range: expected {}", range())
        }
        _ => format!("not {}", range()),
    })?;
    if v < i128::from(min) || v > i128::from(max) {
        return Err(format!("out of range: expected {}", range()));
    }
    u64::try_from(v)
        .ok()
        .and_then(|v| T::try_from(v).ok())
        .ok_or_else(|| format!("does not fit: expected {}", range()))
}

/// `--queue-depth`: commands in flight per queue, 1 to [`MAX_QUEUE_DEPTH`].
/// The controller's own limit is checked once it is open
/// ([`queue_entries`]).
pub fn queue_depth(s: &str) -> Result<u16, String> {
    int_in(s, 1, MAX_QUEUE_DEPTH.into()).map_err(|e| {
        format!("{e} (a queue has at most {} entries and keeps one free)", u16::MAX)
    })
}

/// The queue size (entries) for `depth` commands in flight on a controller
/// whose queues hold at most `max_queue_entries` (CAP.MQES + 1): one entry
/// stays free, so `depth` may be at most `max_queue_entries - 1` (and the
/// driver's `u16` queue size caps entries at 65535). The error names that
/// limit.
pub fn queue_entries(depth: u16, max_queue_entries: u32) -> Result<u16, String> {
    let entries = max_queue_entries.min(u32::from(u16::MAX));
    let limit = entries.saturating_sub(1);
    if depth == 0 || u32::from(depth) > limit {
        return Err(format!(
            "--queue-depth {depth}: this controller allows 1 to {limit} commands in flight per queue \
             (its queues hold at most {max_queue_entries} entries, CAP.MQES+1, and one stays free)"
        ));
    }
    depth
        .checked_add(1)
        .ok_or_else(|| format!("--queue-depth {depth}: too deep"))
}

/// A PCI address (`0000:01:00.0` or `01:00.0`).
pub fn pci_address(s: &str) -> Result<PciAddress, String> {
    s.parse().map_err(|e: fastlane::framework::Error| e.to_string())
}

/// `--ports A,B`: two different PCI addresses, compared as addresses (so
/// `0000:01:00.0` and `01:00.0` are the same port).
pub fn port_pair(s: &str) -> Result<[PciAddress; 2], String> {
    let parts: Vec<&str> = s.split(',').collect();
    let [a, b] = parts[..] else {
        return Err("expected two PCI addresses separated by a comma".into());
    };
    let (a, b) = (pci_address(a)?, pci_address(b)?);
    if a == b {
        return Err(format!("both name {a}; the two ports must differ"));
    }
    Ok([a, b])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_must_be_finite_positive_and_at_most_a_year() {
        assert_eq!(duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(duration("0.25"), Ok(Duration::from_millis(250)));
        assert_eq!(duration("1e3"), Ok(Duration::from_secs(1000)));
        assert_eq!(duration("31536000"), Ok(MAX_RUN_TIME));
        for bad in ["-1", "0", "-0", "nan", "NaN", "inf", "-inf", "infinity", "1e30", "31536001", "1e-300", "", "ten", "5s"] {
            assert!(duration(bad).is_err(), "{bad}");
        }
        assert!(duration("-1").unwrap_err().contains("above 0"));
        assert!(duration("1e30").unwrap_err().contains("one year"));
        assert!(duration("nan").unwrap_err().contains("finite"));
    }

    #[test]
    fn integers_are_range_checked_before_conversion() {
        assert_eq!(int_in::<usize>("32", 1, 512), Ok(32));
        assert_eq!(int_in::<u64>("18446744073709551615", 1, u64::MAX), Ok(u64::MAX));
        for bad in ["0", "513", "-1", "1e30", "nan", "inf", "3.5", "", "99999999999999999999999999999999999999999"] {
            let e = int_in::<usize>(bad, 1, 512).expect_err(bad);
            assert!(e.contains("from 1 to 512"), "{bad}: {e}");
        }
        // In range for the check but not for the type: refused, not truncated.
        assert!(int_in::<u8>("300", 0, 1000).is_err());
    }

    #[test]
    fn queue_depth_refuses_what_a_u16_queue_cannot_hold() {
        assert_eq!(queue_depth("1"), Ok(1));
        assert_eq!(queue_depth("65534"), Ok(65534));
        for bad in ["0", "65535", "65536", "4294967297", "-1", "1e30"] {
            let e = queue_depth(bad).expect_err(bad);
            assert!(e.contains("1 to 65534"), "{bad}: {e}");
        }
    }

    #[test]
    fn queue_entries_names_the_controllers_limit() {
        // QEMU's emulated NVMe: MQES 2047, so 2048 entries, 2047 in flight.
        assert_eq!(queue_entries(32, 2048), Ok(33));
        assert_eq!(queue_entries(2047, 2048), Ok(2048));
        let e = queue_entries(5000, 2048).unwrap_err();
        assert!(e.contains("1 to 2047") && e.contains("2048 entries"), "{e}");
        let e = queue_entries(2048, 2048).unwrap_err();
        assert!(e.contains("1 to 2047"), "{e}");
        // MQES 65535: 65536 entries, but the driver's u16 queue size caps at 65535.
        assert_eq!(queue_entries(65534, 65536), Ok(65535));
        assert!(queue_entries(65535, 65536).unwrap_err().contains("1 to 65534"));
        // The smallest legal controller (MQES 1): one command in flight.
        assert_eq!(queue_entries(1, 2), Ok(2));
        assert!(queue_entries(2, 2).unwrap_err().contains("1 to 1 "));
        assert!(queue_entries(0, 2048).is_err());
    }

    #[test]
    fn ports_are_compared_as_addresses() {
        let [a, b] = port_pair("0000:01:00.0,0000:02:00.0").unwrap();
        assert_eq!((a.to_string().as_str(), b.to_string().as_str()), ("0000:01:00.0", "0000:02:00.0"));
        for same in ["0000:01:00.0,01:00.0", "01:00.0,0000:01:00.0", "0000:0a:00.0,0000:0A:00.0"] {
            assert!(port_pair(same).unwrap_err().contains("must differ"), "{same}");
        }
        for bad in ["0000:01:00.0", "a,b", "01:00.0,02:00.0,03:00.0", "01:00.0,", ""] {
            assert!(port_pair(bad).is_err(), "{bad}");
        }
    }
}
