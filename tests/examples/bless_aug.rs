//! Rewrites `tests/fixtures/aug/golden.txt`, the augmentation known-answer vectors.
//! Run only after a deliberate change of the augmentation (and bump `AUG_VERSION`):
//! `cargo run -p tinyvit-tests --example bless_aug`.

use tinyvit_tests::aug_golden::{fixture_dir, golden_lines, HEADER};

fn main() -> std::io::Result<()> {
    let path = fixture_dir().join("golden.txt");
    let lines = golden_lines();
    let mut text = String::from(HEADER);
    for l in &lines {
        text.push_str(l);
        text.push('\n');
    }
    std::fs::write(&path, text)?;
    println!("wrote {} vectors to {}", lines.len(), path.display());
    Ok(())
}
