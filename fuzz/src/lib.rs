//! Shared pieces of the fuzz targets: repairing checksums so that mutated inputs reach the code
//! behind them, and the host's parsers (`.pth`, `.npy`, safetensors, IDX) compiled in from
//! their source files.
//!
//! Every target takes its first byte as flags; bit 0 set means "repair the checksums before
//! parsing", so half of the mutations exercise the checksum checks and half the parsing and
//! the engines behind them.

use tinyvit_core::config::ModelConfig;
use tinyvit_core::tvb;

/// The `.tvb` with its header and data crc32 recomputed (the data crc sits inside the
/// postcard header, so the header is re-encoded around it). Inputs too broken to locate the
/// fields come back unchanged.
pub fn repair_tvb(bytes: &[u8]) -> Vec<u8> {
    let Some(fixed) = try_repair_tvb(bytes) else {
        return bytes.to_vec();
    };
    fixed
}

fn try_repair_tvb(bytes: &[u8]) -> Option<Vec<u8>> {
    let prefix = tvb::PREFIX_LEN;
    let hlen = u32::from_le_bytes(bytes.get(12..16)?.try_into().ok()?) as usize;
    let header = bytes.get(prefix..prefix.checked_add(hlen)?)?;
    let dstart = (prefix + hlen).div_ceil(16) * 16;
    let data = bytes.get(dstart..).unwrap_or(&[]);
    let ((cfg, count, data_len, _), rest): ((ModelConfig, u32, u64, u32), &[u8]) =
        postcard::take_from_bytes(header).ok()?;
    let mut new_header =
        postcard::to_allocvec(&(cfg, count, data_len, crc32fast::hash(data))).ok()?;
    new_header.extend_from_slice(rest);
    let mut out = bytes[..8].to_vec();
    out.extend_from_slice(&bytes[8..12]);
    out.extend_from_slice(&(new_header.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&new_header).to_le_bytes());
    out.extend_from_slice(&new_header);
    out.resize(out.len().div_ceil(16) * 16, 0);
    out.extend_from_slice(data);
    Some(out)
}

/// The int8 model file with its header and data crc32 recomputed, like [`repair_tvb`] (the
/// int8 header is `(config, input scale, logit scale, residual bound, items, data length,
/// data crc32)`).
pub fn repair_int8(bytes: &[u8]) -> Vec<u8> {
    try_repair_int8(bytes).unwrap_or_else(|| bytes.to_vec())
}

type Int8Header = (ModelConfig, f32, f32, u16, u32, u64, u32);

fn try_repair_int8(bytes: &[u8]) -> Option<Vec<u8>> {
    let prefix = tvb::PREFIX_LEN;
    let hlen = u32::from_le_bytes(bytes.get(12..16)?.try_into().ok()?) as usize;
    let header = bytes.get(prefix..prefix.checked_add(hlen)?)?;
    let dstart = (prefix + hlen).div_ceil(16) * 16;
    let data = bytes.get(dstart..).unwrap_or(&[]);
    let (h, rest): (Int8Header, &[u8]) = postcard::take_from_bytes(header).ok()?;
    let h = (h.0, h.1, h.2, h.3, h.4, h.5, crc32fast::hash(data));
    let mut new_header = postcard::to_allocvec(&h).ok()?;
    new_header.extend_from_slice(rest);
    let mut out = bytes[..12].to_vec();
    out.extend_from_slice(&(new_header.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&new_header).to_le_bytes());
    out.extend_from_slice(&new_header);
    out.resize(out.len().div_ceil(16) * 16, 0);
    out.extend_from_slice(data);
    Some(out)
}

/// A store shard with its header and footer crc32 recomputed (block checksums are left as
/// they are: `verify` must still find damaged blocks).
pub fn repair_shard(bytes: &[u8]) -> Vec<u8> {
    use tinyvit_core::store::{FOOTER_LEN, HEADER_LEN};
    let mut b = bytes.to_vec();
    if b.len() >= HEADER_LEN {
        let crc = crc32fast::hash(&b[..HEADER_LEN - 4]);
        b[HEADER_LEN - 4..HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
    }
    if b.len() >= HEADER_LEN + FOOTER_LEN {
        let f = b.len() - FOOTER_LEN;
        let crc = crc32fast::hash(&b[f..f + FOOTER_LEN - 4]);
        b[f + FOOTER_LEN - 4..].copy_from_slice(&crc.to_le_bytes());
    }
    b
}

/// The host's f32 state_dict types (`host/src/import/state_dict.rs`), which `pth.rs` uses as
/// its sibling module; std only.
#[path = "../../host/src/import/state_dict.rs"]
#[allow(dead_code, clippy::all)]
pub mod state_dict;

/// The host's `.pth` reader (`host/src/import/pth.rs`), compiled in from its source: it needs
/// only std, `anyhow` and `zip`, so it is fuzzed without linking libtorch.
#[path = "../../host/src/import/pth.rs"]
#[allow(dead_code, clippy::all)]
pub mod pth;

/// The host's `.npy` parser (`host/src/import/npy.rs`): std, `anyhow`, `ndarray` and
/// `ndarray-npy` only.
#[path = "../../host/src/import/npy.rs"]
#[allow(dead_code, clippy::all)]
pub mod npy;

/// The host's safetensors parser (`host/src/import/safetensors_file.rs`): std, `anyhow`,
/// `half` and `safetensors` only.
#[path = "../../host/src/import/safetensors_file.rs"]
#[allow(dead_code, clippy::all)]
pub mod safetensors_file;

/// The host's IDX parser (`host/src/data/idx.rs`): std and `anyhow` only.
#[path = "../../host/src/data/idx.rs"]
#[allow(dead_code, clippy::all)]
pub mod idx;
