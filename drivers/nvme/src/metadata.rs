//! Per-block metadata of a namespace (NVM Command Set spec, "Metadata
//! Region"): how many bytes each logical block carries beside its data, and
//! where they travel: interleaved after each block's data in the data buffer
//! (extended LBA, FLBAS bit 4 = 1) or in a separate buffer named by the
//! command's Metadata Pointer (MPTR, FLBAS bit 4 = 0).
//!
//! A format with protection information (DPS) keeps an 8-byte
//! [`crate::protection::PiTuple`] in each block's metadata; with PRACT set
//! and 8 bytes of metadata the controller inserts and strips it, and no
//! metadata crosses the bus at all.

use crate::protection::{PiType, PI_TUPLE_SIZE};
use crate::spec::IdentifyNamespace;

/// Where a namespace's metadata travels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MetadataLayout {
    /// The format has no metadata.
    #[default]
    None,
    /// Extended LBA: each block's metadata follows its data in the data
    /// buffer.
    Extended,
    /// A separate, contiguous metadata buffer (MPTR).
    Separate,
}

/// The metadata format of a namespace (Identify Namespace FLBAS, LBAF.MS,
/// DPS).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MetadataFormat {
    /// Metadata bytes per block (MS); 0 without metadata.
    pub size: u16,
    /// Where the metadata travels.
    pub layout: MetadataLayout,
    /// Protection information type, when enabled (DPS bits 2:0).
    pub pi: Option<PiType>,
    /// The PI tuple is the first 8 bytes of the metadata (DPS bit 3);
    /// otherwise the last 8.
    pub pi_first: bool,
}

impl MetadataFormat {
    /// No metadata, no protection.
    pub const NONE: MetadataFormat = MetadataFormat {
        size: 0,
        layout: MetadataLayout::None,
        pi: None,
        pi_first: false,
    };

    /// The format Identify Namespace describes; an impossible one (PI
    /// without room for its tuple, an unknown PI type) is an error naming
    /// what is wrong.
    pub fn from_identify(id: &IdentifyNamespace) -> Result<Self, &'static str> {
        let size = id.metadata_size().ok_or("LBA format")?;
        let layout = match (size, id.metadata_extended()) {
            (0, _) => MetadataLayout::None,
            (_, true) => MetadataLayout::Extended,
            (_, false) => MetadataLayout::Separate,
        };
        let pi = match id.pi_type() {
            0 => None,
            1 => Some(PiType::Type1),
            2 => Some(PiType::Type2),
            3 => Some(PiType::Type3),
            _ => return Err("protection information type (DPS)"),
        };
        if pi.is_some() && (size as usize) < PI_TUPLE_SIZE {
            return Err("protection information without 8 bytes of metadata");
        }
        Ok(MetadataFormat {
            size,
            layout,
            pi,
            pi_first: id.pi_first(),
        })
    }

    /// Whether a command moves metadata over the bus: not when there is
    /// none, nor when PRACT is set and the metadata is the PI tuple alone
    /// (the controller inserts it on writes and strips it on reads).
    pub const fn transferred(&self, pract: bool) -> bool {
        self.size != 0 && !(pract && self.pi.is_some() && self.size as usize == PI_TUPLE_SIZE)
    }

    /// Bytes per block in the data buffer: the data, plus the metadata
    /// when it is interleaved and transferred.
    pub const fn data_stride(&self, block_size: u32, pract: bool) -> usize {
        match self.layout {
            MetadataLayout::Extended if self.transferred(pract) => {
                block_size as usize + self.size as usize
            }
            _ => block_size as usize,
        }
    }

    /// Bytes per block in the separate metadata buffer (0: none needed).
    pub const fn separate_stride(&self, pract: bool) -> usize {
        match self.layout {
            MetadataLayout::Separate if self.transferred(pract) => self.size as usize,
            _ => 0,
        }
    }

    /// Offset of the PI tuple inside one block's metadata.
    pub const fn pi_offset(&self) -> usize {
        if self.pi_first {
            0
        } else {
            self.size as usize - PI_TUPLE_SIZE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytemuck::Zeroable;

    fn id(ms: u16, flbas: u8, dps: u8) -> IdentifyNamespace {
        let mut id = IdentifyNamespace::zeroed();
        id.flbas = flbas;
        id.dps = dps;
        id.lbaf[0].lbads = 9;
        id.lbaf[0].ms = ms;
        id
    }

    #[test]
    fn formats_from_identify() {
        let f = MetadataFormat::from_identify(&id(0, 0, 0)).unwrap();
        assert_eq!(f, MetadataFormat::NONE);
        assert_eq!(f.data_stride(512, true), 512);
        let f = MetadataFormat::from_identify(&id(8, 1 << 4, 1)).unwrap();
        assert_eq!(f.layout, MetadataLayout::Extended);
        assert_eq!(f.pi, Some(PiType::Type1));
        assert_eq!(
            (f.data_stride(512, false), f.data_stride(512, true)),
            (520, 512)
        );
        assert_eq!(f.separate_stride(false), 0);
        assert_eq!(f.pi_offset(), 0);
        let f = MetadataFormat::from_identify(&id(16, 0, 1 | 1 << 3)).unwrap();
        assert_eq!(f.layout, MetadataLayout::Separate);
        assert!(f.pi_first);
        // 16 bytes: PRACT still moves the metadata (the controller fills
        // the tuple inside it).
        assert_eq!(
            (f.separate_stride(false), f.separate_stride(true)),
            (16, 16)
        );
        assert_eq!(f.data_stride(4096, false), 4096);
        let f = MetadataFormat::from_identify(&id(16, 0, 1)).unwrap();
        assert_eq!(f.pi_offset(), 8);
    }

    #[test]
    fn impossible_formats_are_refused() {
        assert!(MetadataFormat::from_identify(&id(4, 0, 1)).is_err());
        assert!(MetadataFormat::from_identify(&id(0, 0, 1)).is_err());
        assert!(MetadataFormat::from_identify(&id(8, 0, 5)).is_err());
        let mut bad = id(8, 0, 0);
        bad.flbas = 3; // index past NLBAF 0
        assert!(MetadataFormat::from_identify(&bad).is_err());
    }
}
