//! Writes every parity case's synthetic official state_dict and input as
//! `<dir>/<case>.safetensors` (tensor `input` is the `[1, C, H, W]` image; counters are I64).
//! Run by `tests/fixtures/parity/gen_parity.py`; nothing it writes is committed.

use std::io::Write;

use tinyvit_core::params::TensorKind;
use tinyvit_tests::parity::cases;

fn main() -> std::io::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "/tmp/tinyvit-parity".into());
    std::fs::create_dir_all(&dir)?;
    for case in cases() {
        let mut tensors: Vec<(String, &'static str, Vec<usize>, Vec<u8>)> = Vec::new();
        for t in case.state_dict() {
            let (dtype, bytes) = if t.kind == TensorKind::Counter {
                ("I64", 0i64.to_le_bytes().to_vec())
            } else {
                (
                    "F32",
                    t.values.iter().flat_map(|v| v.to_le_bytes()).collect(),
                )
            };
            tensors.push((t.name, dtype, t.shape, bytes));
        }
        let img = case.cfg.img_size as usize;
        let input = case.input();
        tensors.push((
            "input".into(),
            "F32",
            vec![1, case.cfg.in_chans as usize, img, img],
            input.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ));
        // safetensors: u64 header length, JSON header, then the data.
        // The config travels as string metadata: scalars as numbers, arrays comma-separated.
        let c = &case.cfg;
        let join = |a: [u32; 4]| a.map(|v| v.to_string()).join(",");
        let mut header = format!(
            "{{\"__metadata__\":{{\"in_chans\":\"{}\",\"img_size\":\"{}\",\"num_classes\":\"{}\",\
             \"embed_dims\":\"{}\",\"depths\":\"{}\",\"num_heads\":\"{}\",\"window_sizes\":\"{}\",\
             \"mlp_ratio\":\"{}\",\"mbconv_expand_ratio\":\"{}\",\"local_conv_size\":\"{}\"}}",
            c.in_chans,
            c.img_size,
            c.num_classes,
            join(c.embed_dims),
            join(c.depths),
            join(c.num_heads),
            join(c.window_sizes),
            c.mlp_ratio,
            c.mbconv_expand_ratio,
            c.local_conv_size
        );
        let mut offset = 0usize;
        for (name, dtype, shape, bytes) in tensors.iter() {
            let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
            header.push(',');
            header.push_str(&format!(
                "\"{name}\":{{\"dtype\":\"{dtype}\",\"shape\":[{}],\"data_offsets\":[{offset},{}]}}",
                dims.join(","),
                offset + bytes.len()
            ));
            offset += bytes.len();
        }
        header.push('}');
        while header.len() % 8 != 0 {
            header.push(' ');
        }
        let path = format!("{dir}/{}.safetensors", case.name);
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path)?);
        f.write_all(&(header.len() as u64).to_le_bytes())?;
        f.write_all(header.as_bytes())?;
        for (_, _, _, bytes) in &tensors {
            f.write_all(bytes)?;
        }
        f.flush()?;
        println!("{path}");
    }
    Ok(())
}
