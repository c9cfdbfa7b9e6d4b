//! IV generation: the one place that knows how a data unit's position becomes its XTS tweak.
//!
//! Everything in diskseal counts positions in **512-byte sectors**, whatever the data-unit size:
//! - LUKS (dm-crypt `plain64`): `sector = iv_tweak + byte_offset_in_segment / 512`, even with 4096-byte
//!   sectors (cryptsetup never sets `iv_large_sectors` for LUKS), see [`luks_sector`].
//! - QEMU qcow2 with native LUKS: `sector = host_file_offset / 512`, see [`qcow2_sector`].
//! - `plain` truncates the sector number to 32 bits (old dm-crypt setups).
//! - vhd-util/blktap encrypted VHDs: `plain` of the **virtual** 512-byte sector (guest offset / 512),
//!   whatever block or file offset holds it, see [`vhd_util_sector`] and [`VHD_UTIL_IV`].
//!
//! Sources: Linux `Documentation/admin-guide/device-mapper/dm-crypt.rst` (plain/plain64, iv_large_sectors),
//! cryptsetup `lib/crypto_backend/crypto_storage.c`, QEMU `block/qcow2.c` (`crypt_physical_offset`).

use crate::error::{Error, Result};

/// How a 512-byte sector number becomes the 16-byte XTS tweak input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IvScheme {
    /// 64-bit little-endian sector number, zero-padded (`plain64`).
    Plain64,
    /// 32-bit little-endian sector number (truncated), zero-padded (`plain`).
    Plain,
}

impl IvScheme {
    /// The IV block for `sector` (a count of 512-byte units).
    pub fn iv(self, sector: u64) -> u128 {
        match self {
            IvScheme::Plain64 => u128::from(sector),
            IvScheme::Plain => u128::from(sector as u32),
        }
    }

    /// The dm-crypt name of the scheme.
    pub fn name(self) -> &'static str {
        match self {
            IvScheme::Plain64 => "plain64",
            IvScheme::Plain => "plain",
        }
    }
}

/// A parsed cipher specification, e.g. `aes-xts-plain64` (LUKS2) or `aes` + `xts-plain64` (LUKS1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CipherSpec {
    /// The IV scheme after `xts-`.
    pub iv: IvScheme,
}

impl CipherSpec {
    /// The only cipher diskseal writes: `aes-xts-plain64`.
    pub const AES_XTS_PLAIN64: CipherSpec = CipherSpec {
        iv: IvScheme::Plain64,
    };

    /// Parses a dm-crypt cipher string (`aes-xts-plain64`, `aes-xts-plain`).
    pub fn parse(spec: &str) -> Result<CipherSpec> {
        match spec {
            "aes-xts-plain64" => Ok(CipherSpec {
                iv: IvScheme::Plain64,
            }),
            "aes-xts-plain" => Ok(CipherSpec {
                iv: IvScheme::Plain,
            }),
            other => Err(Error::unsupported(format!("unsupported cipher {other:?}"))
                .hint("diskseal handles aes-xts-plain64 and aes-xts-plain")),
        }
    }

    /// Parses LUKS1's separate cipher name and mode (`aes` + `xts-plain64`).
    pub fn parse_luks1(name: &str, mode: &str) -> Result<CipherSpec> {
        Self::parse(&format!("{name}-{mode}"))
    }

    /// The dm-crypt cipher string.
    pub fn to_dm_string(self) -> String {
        format!("aes-xts-{}", self.iv.name())
    }
}

/// The first 512-byte sector number of a LUKS segment range starting `offset_in_segment` bytes in.
pub fn luks_sector(iv_tweak: u64, offset_in_segment: u64) -> u64 {
    iv_tweak.wrapping_add(offset_in_segment / 512)
}

/// The sector number QEMU uses for qcow2-native LUKS data at `host_offset` in the image file.
pub fn qcow2_sector(host_offset: u64) -> u64 {
    host_offset / 512
}

/// The IV scheme of vhd-util (blktap `block-crypto.c`): 32-bit `plain`.
pub const VHD_UTIL_IV: IvScheme = IvScheme::Plain;

/// The sector number vhd-util uses for the data at `virtual_offset` in the guest disk.
pub fn vhd_util_sector(virtual_offset: u64) -> u64 {
    virtual_offset / 512
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_truncates_to_32_bits() {
        assert_eq!(IvScheme::Plain.iv(0x1_0000_0005), 5);
        assert_eq!(IvScheme::Plain64.iv(0x1_0000_0005), 0x1_0000_0005);
    }

    #[test]
    fn luks_counts_512_byte_units_for_4096_sectors() {
        assert_eq!(luks_sector(0, 4096), 8);
        assert_eq!(luks_sector(16, 8192), 32);
    }

    #[test]
    fn cipher_strings() {
        assert_eq!(
            CipherSpec::parse("aes-xts-plain64").unwrap().to_dm_string(),
            "aes-xts-plain64"
        );
        assert_eq!(
            CipherSpec::parse_luks1("aes", "xts-plain").unwrap().iv,
            IvScheme::Plain
        );
        assert!(CipherSpec::parse("aes-cbc-essiv:sha256").is_err());
        assert!(CipherSpec::parse("serpent-xts-plain64").is_err());
    }
}
