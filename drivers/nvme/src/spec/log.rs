//! Log pages (base spec 5.16, Get Log Page): the SMART / Health Information
//! log. Device-written: every accessor is total over arbitrary bytes.
// Field and constant names are the specification's own, documented by the
// section named above; a doc line per field would only repeat them.
#![allow(missing_docs)]

use std::mem::{offset_of, size_of};

use bytemuck::{Pod, Zeroable};

/// Log page identifiers (Get Log Page CDW10 LID).
pub mod log_id {
    /// Error Information (64-byte entries).
    pub const ERROR_INFORMATION: u8 = 0x01;
    /// SMART / Health Information (512 bytes).
    pub const SMART_HEALTH: u8 = 0x02;
    /// Firmware Slot Information (512 bytes).
    pub const FIRMWARE_SLOT: u8 = 0x03;
}

/// Size of the SMART / Health Information log page.
pub const SMART_LOG_SIZE: usize = 512;

/// SMART / Health Information log page, LID 02h (base spec 5.16.1.3).
/// Multi-byte fields at odd offsets and the 128-bit counters are byte
/// arrays (little-endian); the accessors decode them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct SmartLog {
    /// Critical Warning bits (spare, temperature, reliability, read-only,
    /// volatile backup, persistent memory region).
    pub critical_warning: u8,
    /// Composite Temperature in Kelvin.
    pub composite_temperature: [u8; 2],
    /// Available Spare, percent (normally 0..=100).
    pub available_spare: u8,
    /// Available Spare Threshold, percent.
    pub available_spare_threshold: u8,
    /// Percentage Used (may exceed 100).
    pub percentage_used: u8,
    pub endurance_group_critical_warning: u8,
    pub rsvd7: [u8; 25],
    /// Data Units Read, in thousands of 512-byte units.
    pub data_units_read: [u8; 16],
    /// Data Units Written, in thousands of 512-byte units.
    pub data_units_written: [u8; 16],
    pub host_read_commands: [u8; 16],
    pub host_write_commands: [u8; 16],
    /// Controller Busy Time, minutes.
    pub controller_busy_time: [u8; 16],
    pub power_cycles: [u8; 16],
    pub power_on_hours: [u8; 16],
    pub unsafe_shutdowns: [u8; 16],
    /// Media and Data Integrity Errors.
    pub media_errors: [u8; 16],
    /// Number of Error Information Log Entries over the controller's life.
    pub error_log_entries: [u8; 16],
    /// Warning Composite Temperature Time, minutes.
    pub warning_temperature_time: u32,
    /// Critical Composite Temperature Time, minutes.
    pub critical_temperature_time: u32,
    /// Temperature Sensors 1..8, Kelvin (0: not implemented).
    pub temperature_sensors: [u16; 8],
    pub rsvd216: [u8; 256],
    pub rsvd472: [u8; 32],
    pub rsvd504: [u8; 8],
}
const _: () = assert!(size_of::<SmartLog>() == SMART_LOG_SIZE);
const _: () = assert!(offset_of!(SmartLog, percentage_used) == 5);
const _: () = assert!(offset_of!(SmartLog, data_units_read) == 32);
const _: () = assert!(offset_of!(SmartLog, host_read_commands) == 64);
const _: () = assert!(offset_of!(SmartLog, power_cycles) == 112);
const _: () = assert!(offset_of!(SmartLog, media_errors) == 160);
const _: () = assert!(offset_of!(SmartLog, error_log_entries) == 176);
const _: () = assert!(offset_of!(SmartLog, warning_temperature_time) == 192);
const _: () = assert!(offset_of!(SmartLog, temperature_sensors) == 200);

/// Critical Warning bit 0: available spare below threshold.
pub const CRITICAL_WARNING_SPARE: u8 = 1 << 0;
/// Critical Warning bit 1: temperature outside a threshold.
pub const CRITICAL_WARNING_TEMPERATURE: u8 = 1 << 1;
/// Critical Warning bit 2: reliability degraded by media errors.
pub const CRITICAL_WARNING_RELIABILITY: u8 = 1 << 2;
/// Critical Warning bit 3: media placed in read-only mode.
pub const CRITICAL_WARNING_READ_ONLY: u8 = 1 << 3;
/// Critical Warning bit 4: volatile memory backup device failed.
pub const CRITICAL_WARNING_VOLATILE_BACKUP: u8 = 1 << 4;

impl SmartLog {
    /// Copy out of a device-written buffer; `None` if shorter than 512.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        bytes
            .get(..SMART_LOG_SIZE)
            .map(bytemuck::pod_read_unaligned)
    }
    /// Composite Temperature, Kelvin.
    pub const fn temperature_kelvin(&self) -> u16 {
        u16::from_le_bytes(self.composite_temperature)
    }
    /// Composite Temperature, degrees Celsius (Kelvin - 273).
    pub const fn temperature_celsius(&self) -> i32 {
        self.temperature_kelvin() as i32 - 273
    }
    /// Data Units Read (each 1000 × 512 bytes).
    pub const fn data_units_read(&self) -> u128 {
        u128::from_le_bytes(self.data_units_read)
    }
    /// Data Units Written (each 1000 × 512 bytes).
    pub const fn data_units_written(&self) -> u128 {
        u128::from_le_bytes(self.data_units_written)
    }
    /// Host Read Commands completed.
    pub const fn host_read_commands(&self) -> u128 {
        u128::from_le_bytes(self.host_read_commands)
    }
    /// Host Write Commands completed.
    pub const fn host_write_commands(&self) -> u128 {
        u128::from_le_bytes(self.host_write_commands)
    }
    /// Controller Busy Time, minutes.
    pub const fn controller_busy_time(&self) -> u128 {
        u128::from_le_bytes(self.controller_busy_time)
    }
    /// Power Cycles.
    pub const fn power_cycles(&self) -> u128 {
        u128::from_le_bytes(self.power_cycles)
    }
    /// Power On Hours.
    pub const fn power_on_hours(&self) -> u128 {
        u128::from_le_bytes(self.power_on_hours)
    }
    /// Unsafe Shutdowns.
    pub const fn unsafe_shutdowns(&self) -> u128 {
        u128::from_le_bytes(self.unsafe_shutdowns)
    }
    /// Media and Data Integrity Errors.
    pub const fn media_errors(&self) -> u128 {
        u128::from_le_bytes(self.media_errors)
    }
    /// Number of Error Information Log Entries.
    pub const fn error_log_entries(&self) -> u128 {
        u128::from_le_bytes(self.error_log_entries)
    }
    /// Bytes a data-unit count stands for (units of 1000 × 512 bytes),
    /// saturating.
    pub const fn data_units_bytes(units: u128) -> u128 {
        units.saturating_mul(512_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smart_log_decoding() {
        let mut b = vec![0u8; 512];
        b[0] = CRITICAL_WARNING_TEMPERATURE;
        b[1..3].copy_from_slice(&310u16.to_le_bytes());
        b[3] = 100;
        b[4] = 10;
        b[5] = 3;
        b[32..48].copy_from_slice(&(u64::MAX as u128 + 5).to_le_bytes());
        b[48..64].copy_from_slice(&7u128.to_le_bytes());
        b[64] = 11;
        b[80] = 12;
        b[112] = 4;
        b[128] = 9;
        b[144] = 2;
        b[160] = 1;
        b[176] = 6;
        b[200..202].copy_from_slice(&300u16.to_le_bytes());
        let s = SmartLog::from_bytes(&b).unwrap();
        assert_eq!(s.critical_warning, CRITICAL_WARNING_TEMPERATURE);
        assert_eq!((s.temperature_kelvin(), s.temperature_celsius()), (310, 37));
        assert_eq!(
            (
                s.available_spare,
                s.available_spare_threshold,
                s.percentage_used
            ),
            (100, 10, 3)
        );
        assert_eq!(s.data_units_read(), u64::MAX as u128 + 5);
        assert_eq!(s.data_units_written(), 7);
        assert_eq!((s.host_read_commands(), s.host_write_commands()), (11, 12));
        assert_eq!(
            (s.power_cycles(), s.power_on_hours(), s.unsafe_shutdowns()),
            (4, 9, 2)
        );
        assert_eq!((s.media_errors(), s.error_log_entries()), (1, 6));
        assert_eq!(s.temperature_sensors[0], 300);
        assert_eq!(SmartLog::data_units_bytes(7), 3_584_000);
        assert_eq!(SmartLog::data_units_bytes(u128::MAX), u128::MAX);
        assert!(SmartLog::from_bytes(&b[..511]).is_none());
        let z = SmartLog::from_bytes(&[0xFF; 512]).unwrap();
        assert_eq!(z.temperature_celsius(), 65535 - 273);
    }
}
