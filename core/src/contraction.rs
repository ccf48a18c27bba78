//! Progressive model contraction's neighbourhood: the smaller configs one or two factor moves
//! away from a config (TinyViT's contraction factors: stage widths D1-D4, depths N1-N4, window
//! sizes W2-W4, MBConv expansion R, MLP ratio M, head dim E).
//!
//! Every move keeps a valid TinyViT that the kernels suit:
//! - `D`: stage 0 narrows by 8 channels (at least 8; the stem's first conv has half as many);
//!   stages 1-3 by the least common multiple of 16 and the stage's head dim, the head dim kept
//!   (heads = width / head dim), so widths stay multiples of 16 and heads divide them.
//! - `N`: one block fewer (at least 1).
//! - `W`: the largest smaller window that still changes how the map is split: a stage of side
//!   `r` with window `w` is cut into `ceil(r/w)^2` zero-padded windows (as the reference
//!   pads); the move takes the smallest window that cuts it into `(ceil(r/w) + 1)^2`; a window
//!   larger than the map first shrinks to the map.
//! - `R`, `M`: the ratio minus one (at least 1).
//! - `E`: every attention stage's head dim doubled where it divides the width (fewer heads: fewer
//!   scores and bias entries).
//!
//! [`for_each_candidate`] is `no_std` and allocation-free; the host's search orders, filters
//! and trains what it yields.

use crate::config::{ModelConfig, STAGES};

/// One contraction factor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Factor {
    /// Width of stage `0..4` (the paper's D1-D4).
    Width(usize),
    /// Depth of stage `0..4` (N1-N4).
    Depth(usize),
    /// Window of stage `1..4` (W2-W4).
    Window(usize),
    /// MBConv expansion ratio (R).
    Expand,
    /// MLP ratio (M).
    Mlp,
    /// Head dim (E).
    HeadDim,
}

/// Every factor, in a fixed order.
pub const FACTORS: [Factor; 14] = [
    Factor::Width(0),
    Factor::Width(1),
    Factor::Width(2),
    Factor::Width(3),
    Factor::Depth(0),
    Factor::Depth(1),
    Factor::Depth(2),
    Factor::Depth(3),
    Factor::Window(1),
    Factor::Window(2),
    Factor::Window(3),
    Factor::Expand,
    Factor::Mlp,
    Factor::HeadDim,
];

impl Factor {
    /// The paper's name of the factor (`D1`..`D4`, `N1`..`N4`, `W2`..`W4`, `R`, `M`, `E`).
    pub fn label(self) -> &'static str {
        const D: [&str; STAGES] = ["D1", "D2", "D3", "D4"];
        const N: [&str; STAGES] = ["N1", "N2", "N3", "N4"];
        const W: [&str; STAGES] = ["W1", "W2", "W3", "W4"];
        match self {
            Factor::Width(s) => D[s],
            Factor::Depth(s) => N[s],
            Factor::Window(s) => W[s],
            Factor::Expand => "R",
            Factor::Mlp => "M",
            Factor::HeadDim => "E",
        }
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// `cfg` with `factor` shrunk one step, or `None` when it cannot shrink (or the result does
/// not validate).
pub fn shrink(cfg: &ModelConfig, factor: Factor) -> Option<ModelConfig> {
    let mut c = *cfg;
    match factor {
        Factor::Width(0) => {
            if c.embed_dims[0] < 16 {
                return None;
            }
            c.embed_dims[0] -= 8;
        }
        Factor::Width(s) if s < STAGES => {
            let (w, heads) = (c.embed_dims[s], c.num_heads[s]);
            if heads == 0 || !w.is_multiple_of(heads) {
                return None;
            }
            let hd = w / heads;
            let step = 16 / gcd(16, hd) * hd;
            if w <= step {
                return None;
            }
            c.embed_dims[s] = (w - 1) / step * step;
            c.num_heads[s] = c.embed_dims[s] / hd;
        }
        Factor::Depth(s) if s < STAGES => {
            if c.depths[s] <= 1 {
                return None;
            }
            c.depths[s] -= 1;
        }
        Factor::Window(s) if (1..STAGES).contains(&s) => {
            let r = c.stage_resolutions()[s];
            let w = c.window_sizes[s];
            let next = if w > r {
                r
            } else {
                r.div_ceil(r.div_ceil(w.max(1)) + 1)
            };
            if next == 0 || next >= w {
                return None;
            }
            c.window_sizes[s] = next;
        }
        Factor::Expand => {
            if c.mbconv_expand_ratio <= 1 {
                return None;
            }
            c.mbconv_expand_ratio -= 1;
        }
        Factor::Mlp => {
            if c.mlp_ratio <= 1 {
                return None;
            }
            c.mlp_ratio -= 1;
        }
        Factor::HeadDim => {
            let mut changed = false;
            for s in 1..STAGES {
                let (w, heads) = (c.embed_dims[s], c.num_heads[s]);
                if heads >= 2 && heads.is_multiple_of(2) && w.is_multiple_of(heads) {
                    c.num_heads[s] = heads / 2;
                    changed = true;
                }
            }
            if !changed {
                return None;
            }
        }
        _ => return None,
    }
    (c != *cfg && c.validate().is_ok()).then_some(c)
}

/// One neighbour: the factors moved (one or two) and the config.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Candidate {
    pub moves: [Option<Factor>; 2],
    pub config: ModelConfig,
}

impl Candidate {
    /// The moves as text, e.g. `D3-` or `N2- W3-`.
    pub fn label(&self, out: &mut impl core::fmt::Write) -> core::fmt::Result {
        let mut first = true;
        for f in self.moves.iter().flatten() {
            if !first {
                out.write_char(' ')?;
            }
            write!(out, "{}-", f.label())?;
            first = false;
        }
        Ok(())
    }
}

/// Calls `f` with every config one factor move away from `cfg`, then every config two moves
/// (of two different factors) away, in [`FACTORS`] order. Each yielded config validates and
/// differs from `cfg`; two pairs that reach the same config are both yielded.
pub fn for_each_candidate(cfg: &ModelConfig, mut f: impl FnMut(Candidate)) {
    for &a in &FACTORS {
        if let Some(c) = shrink(cfg, a) {
            f(Candidate {
                moves: [Some(a), None],
                config: c,
            });
        }
    }
    for (i, &a) in FACTORS.iter().enumerate() {
        let Some(one) = shrink(cfg, a) else { continue };
        for &b in &FACTORS[i + 1..] {
            if let Some(c) = shrink(&one, b) {
                if c != one {
                    f(Candidate {
                        moves: [Some(a), Some(b)],
                        config: c,
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PRESET_NAMES;
    use crate::cost;
    use proptest::prelude::*;

    /// A TinyViT that validates: widths multiples of 8 (stage 0) and of the head dim (stages
    /// 1-3, head dims 8, 16 or 32), every depth, ratio and window in a useful range.
    fn config() -> impl Strategy<Value = ModelConfig> {
        (
            (1u32..=3).prop_filter("1 or 3 channels", |c| *c != 2),
            16u32..=96,
            2u32..=20,
            (1u32..=6, [1u32..=6, 1u32..=8, 1u32..=8]),
            [1u32..=3, 1u32..=3, 1u32..=4, 1u32..=2],
            [1u32..=8, 1u32..=8, 1u32..=8],
            (1u32..=5, 1u32..=5),
            prop::sample::select(vec![8u32, 16, 32]),
            prop::sample::select(vec![1u32, 3, 5]),
        )
            .prop_map(
                |(cin, img, classes, (w0, hs), depths, ws, (mlp, mb), hd, lc)| ModelConfig {
                    in_chans: cin,
                    img_size: img,
                    num_classes: classes,
                    embed_dims: [8 * w0, hd * hs[0], hd * hs[1], hd * hs[2]],
                    depths,
                    num_heads: [1, hs[0], hs[1], hs[2]],
                    window_sizes: [1, ws[0], ws[1], ws[2]],
                    mlp_ratio: mlp,
                    mbconv_expand_ratio: mb,
                    local_conv_size: lc,
                    drop_path_rate: 0.0,
                },
            )
    }

    /// The costs a candidate must undercut at least one of.
    fn costs(c: &ModelConfig) -> [u64; 9] {
        let k = cost::cost(c).unwrap();
        [
            k.params,
            k.macs,
            k.f32_bytes,
            k.int8_bytes,
            k.f32_arena_bytes,
            k.int8_arena_bytes,
            k.f32_instructions[0],
            k.int8_instructions[0],
            k.int8_instructions[1],
        ]
    }

    fn check_all(cfg: &ModelConfig) -> Result<usize, TestCaseError> {
        let base = costs(cfg);
        let mut n = 0;
        let mut err = None;
        for_each_candidate(cfg, |cand| {
            n += 1;
            if err.is_some() {
                return;
            }
            let c = cand.config;
            let mut label = heapless::String::<16>::new();
            let _ = cand.label(&mut label);
            if let Err(e) = c.validate() {
                err = Some(format!("{label}: {e} for {c:?}"));
                return;
            }
            for s in 1..STAGES {
                if !c.embed_dims[s].is_multiple_of(c.num_heads[s]) {
                    err = Some(format!("{label}: heads do not divide stage {s}: {c:?}"));
                    return;
                }
                if cfg.embed_dims[s].is_multiple_of(16) && !c.embed_dims[s].is_multiple_of(16) {
                    err = Some(format!(
                        "{label}: stage {s} width not a multiple of 16: {c:?}"
                    ));
                    return;
                }
            }
            if !c.embed_dims[0].is_multiple_of(8) {
                err = Some(format!("{label}: stage 0 width {}", c.embed_dims[0]));
                return;
            }
            let mine = costs(&c);
            if !mine.iter().zip(base.iter()).any(|(a, b)| a < b) {
                err = Some(format!(
                    "{label}: no cost is lower ({mine:?} against {base:?}) for {c:?}"
                ));
            }
            if c.in_chans != cfg.in_chans
                || c.img_size != cfg.img_size
                || c.num_classes != cfg.num_classes
            {
                err = Some(format!("{label}: the task changed: {c:?}"));
            }
        });
        match err {
            Some(e) => Err(TestCaseError::fail(e)),
            None => Ok(n),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]
        #[test]
        fn every_candidate_is_valid_and_cheaper(cfg in config()) {
            prop_assume!(cfg.validate().is_ok());
            check_all(&cfg)?;
        }
    }

    #[test]
    fn presets_have_neighbours_and_all_are_valid() {
        for name in PRESET_NAMES {
            let cfg = ModelConfig::preset(name).unwrap();
            let n = check_all(&cfg).unwrap();
            assert!(n >= 10, "{name}: {n} candidates");
        }
    }

    #[test]
    fn moves_on_the_m4_preset() {
        let m4 = ModelConfig::tiny_vit_mcu_m4();
        let c = shrink(&m4, Factor::Width(2)).unwrap();
        assert_eq!((c.embed_dims[2], c.num_heads[2]), (32, 2));
        let c = shrink(&m4, Factor::Width(0)).unwrap();
        assert_eq!(c.embed_dims[0], 8);
        assert_eq!(shrink(&c, Factor::Width(0)), None);
        // Stage 1 is 7x7 with 4x4 windows (2x2 of them, padded to 8x8): next 3x3 windows.
        let c = shrink(&m4, Factor::Window(1)).unwrap();
        assert_eq!(c.window_sizes[1], 3);
        // Stage 3 is 2x2 under one 2x2 window: next 1x1.
        assert_eq!(shrink(&m4, Factor::Window(3)).unwrap().window_sizes[3], 1);
        assert_eq!(shrink(&m4, Factor::Depth(3)), None);
        let c = shrink(&m4, Factor::HeadDim).unwrap();
        assert_eq!(c.num_heads, [1, 1, 3, 2]);
        assert_eq!(shrink(&m4, Factor::Mlp).unwrap().mlp_ratio, 3);
    }
}
