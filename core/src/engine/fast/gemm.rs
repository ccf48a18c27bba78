//! The fast engine's matrix products: `C (+)= A B + bias` with `B` packed once into column
//! panels, and four kernels: our register tiles for AVX-512 and AVX2 + FMA, the
//! `matrixmultiply` crate everywhere else (NEON on aarch64, its own AVX / FMA kernels on x86),
//! and a plain-Rust scalar tile kept as the baseline the others are measured against.
//!
//! `B` is stored as `ceil(n / NR)` panels of `[k][NR]` values (columns past `n` are zero), so
//! the inner loop reads `B` contiguously and never repacks it: weights are packed when the model
//! is prepared; the attention's keys and values are packed per window, which costs `t * hd`
//! copies against `t * t * hd` multiply-adds. `A` is read in place, row-strided. Each tile of
//! `R <= MR` rows by `NR` columns is accumulated in registers over the whole `k` and written
//! once, with the epilogue (accumulate into `C`, GELU) applied while the tile is in L1.
//!
//! For `matrixmultiply`, which packs its operands itself, the "panel" is the whole `B` (`NR =
//! n`): `B` is then plain row-major `[k][n]`, and the epilogue runs over each call's block.

use std::vec::Vec;

/// Which tile kernel runs the products (and which vector width the rest of the engine is
/// compiled for).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// 12 x 32 tiles in 512-bit registers (x86_64 with AVX-512F).
    Avx512,
    /// 6 x 16 tiles in 256-bit registers (x86_64 with AVX2 and FMA).
    Avx2,
    /// The `matrixmultiply` crate's SGEMM: NEON on aarch64, AVX / FMA on x86 (detected at run
    /// time), its own scalar kernel elsewhere.
    Portable,
    /// 4 x 16 tiles in plain Rust, vectorised by the compiler for the target's baseline: the
    /// reference the other kernels are measured against, never picked by [`Kernel::detect`].
    Scalar,
}

impl Kernel {
    /// Every kernel, in the order [`Kernel::detect`] prefers them.
    pub const ALL: [Kernel; 4] = [
        Kernel::Avx512,
        Kernel::Avx2,
        Kernel::Portable,
        Kernel::Scalar,
    ];

    /// The kernel this CPU runs fastest: ours where AVX2 + FMA exist (faster than
    /// `matrixmultiply`'s on the infer bench), else `matrixmultiply`.
    pub fn detect() -> Kernel {
        [Kernel::Avx512, Kernel::Avx2]
            .into_iter()
            .find(|k| k.supported())
            .unwrap_or(Kernel::Portable)
    }

    /// Whether this CPU has the instructions the kernel needs.
    pub fn supported(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => {
                std::is_x86_feature_detected!("avx512f")
                    && std::is_x86_feature_detected!("avx2")
                    && std::is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => {
                std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
            }
            Kernel::Portable | Kernel::Scalar => true,
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// Every kernel this CPU runs, in the order [`Kernel::detect`] prefers them.
    pub fn available() -> Vec<Kernel> {
        Kernel::ALL.into_iter().filter(|k| k.supported()).collect()
    }

    /// Lower-case name, as the CLI and benchmarks print it.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Avx512 => "avx512",
            Kernel::Avx2 => "avx2",
            Kernel::Portable => "portable",
            Kernel::Scalar => "scalar",
        }
    }

    /// Panel width (columns of a tile) for a `B` of `n` columns: the whole `B` for
    /// `matrixmultiply` (at least 1, so that an empty `B` still has a width).
    pub(super) const fn nr(self, n: usize) -> usize {
        match self {
            Kernel::Avx512 => 32,
            Kernel::Avx2 | Kernel::Scalar => 16,
            Kernel::Portable => {
                if n == 0 {
                    1
                } else {
                    n
                }
            }
        }
    }
}

/// `B: [k, n]` packed into panels for one kernel, with an optional bias per column.
#[derive(Debug)]
pub(super) struct Packed {
    kernel: Kernel,
    k: usize,
    n: usize,
    data: Vec<f32>,
    bias: Vec<f32>,
    has_bias: bool,
}

impl Packed {
    /// An empty packing, to be filled by [`Packed::set_nk`] or [`Packed::set_kn`].
    pub(super) fn empty(kernel: Kernel) -> Self {
        Packed {
            kernel,
            k: 0,
            n: 0,
            data: Vec::new(),
            bias: Vec::new(),
            has_bias: false,
        }
    }

    /// A Linear layer: `W: [n, k]` (PyTorch layout), so `B = W^T`, and its bias `b: [n]`.
    pub(super) fn linear(kernel: Kernel, w: &[f32], b: &[f32]) -> Self {
        let n = b.len();
        let k = w.len().checked_div(n).unwrap_or(0);
        let mut p = Packed::empty(kernel);
        p.set_nk(w, k, n, k, 1.0);
        let nr = kernel.nr(n);
        p.bias = vec![0.0; n.div_ceil(nr) * nr];
        p.bias[..n].copy_from_slice(b);
        p.has_bias = true;
        p
    }

    /// Columns of `B` (outputs of the layer).
    pub(super) fn n(&self) -> usize {
        self.n
    }

    /// Sizes the panels for `B: [k, n]`. Contents are stale: the setters write every value,
    /// padding columns included (no zero-fill first; keys and values are repacked per head).
    fn reset(&mut self, k: usize, n: usize) {
        let nr = self.kernel.nr(n);
        self.k = k;
        self.n = n;
        self.has_bias = false;
        self.data.resize(n.div_ceil(nr) * nr * k, 0.0);
    }

    /// `B[p][j] = scale * w[j * ldw + p]` (`B = W^T` for `W` given as `n` rows of `k`).
    pub(super) fn set_nk(&mut self, w: &[f32], ldw: usize, n: usize, k: usize, scale: f32) {
        self.reset(k, n);
        let nr = self.kernel.nr(n);
        for (jp, panel) in self.data.chunks_exact_mut(nr * k.max(1)).enumerate() {
            let cols = nr.min(n - jp * nr);
            for r in 0..cols {
                let row = &w[(jp * nr + r) * ldw..][..k];
                for (p, v) in row.iter().enumerate() {
                    panel[p * nr + r] = scale * v;
                }
            }
            for p in 0..k {
                panel[p * nr + cols..(p + 1) * nr].fill(0.0);
            }
        }
    }

    /// `B[p][j] = v[p * ldv + j]` (`B` given as `k` rows of `n`).
    pub(super) fn set_kn(&mut self, v: &[f32], ldv: usize, k: usize, n: usize) {
        self.reset(k, n);
        let nr = self.kernel.nr(n);
        for (jp, panel) in self.data.chunks_exact_mut(nr * k.max(1)).enumerate() {
            let cols = nr.min(n - jp * nr);
            for p in 0..k {
                panel[p * nr..p * nr + cols].copy_from_slice(&v[p * ldv + jp * nr..][..cols]);
                panel[p * nr + cols..(p + 1) * nr].fill(0.0);
            }
        }
    }
}

/// What happens to a finished tile.
#[derive(Clone, Copy, Debug)]
pub(super) struct Epilogue {
    /// `C += A B (+ bias)` instead of `C = A B (+ bias)`.
    pub accumulate: bool,
    /// GELU on the result (after the accumulation).
    pub gelu: bool,
}

pub(super) const SET: Epilogue = Epilogue {
    accumulate: false,
    gelu: false,
};
pub(super) const ADD: Epilogue = Epilogue {
    accumulate: true,
    gelu: false,
};
pub(super) const SET_GELU: Epilogue = Epilogue {
    accumulate: false,
    gelu: true,
};
pub(super) const ADD_GELU: Epilogue = Epilogue {
    accumulate: true,
    gelu: true,
};

/// `C[m, n] (+)= A[m, k] B + bias`, `A` with row stride `lda`, `C` with row stride `ldc`.
///
/// Panics if a slice is too short for the shapes (a bug in the engine, never user data: the
/// engine derives every shape from a validated config).
#[allow(unsafe_code)]
pub(super) fn gemm(
    m: usize,
    a: &[f32],
    lda: usize,
    b: &Packed,
    epi: Epilogue,
    c: &mut [f32],
    ldc: usize,
) {
    let (k, n) = (b.k, b.n);
    if m == 0 || n == 0 {
        return;
    }
    let nr = b.kernel.nr(n);
    assert!(k == 0 || a.len() >= (m - 1) * lda + k, "gemm: A too short");
    assert!(c.len() >= (m - 1) * ldc + n, "gemm: C too short");
    assert!(m == 1 || ldc >= n, "gemm: rows of C overlap");
    assert!(b.data.len() == n.div_ceil(nr) * nr * k, "gemm: bad packing");
    assert!(!b.has_bias || b.bias.len() == n.div_ceil(nr) * nr);
    let bias = b.has_bias.then_some(&b.bias[..]);
    // With k = 0 nothing of A is read: no row offset is formed into a slice that may be empty.
    let (a, lda) = if k == 0 { (&[][..], 0) } else { (a, lda) };
    match b.kernel {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 => {
            assert!(Kernel::Avx512.supported());
            // SAFETY: the CPU supports the kernel's features (asserted); the asserts above
            // bound every index the driver forms (see `drive`).
            unsafe { x86::drive_avx512(m, k, n, a, lda, &b.data, bias, epi, c, ldc) }
        }
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => {
            assert!(Kernel::Avx2.supported());
            // SAFETY: as above.
            unsafe { x86::drive_avx2(m, k, n, a, lda, &b.data, bias, epi, c, ldc) }
        }
        Kernel::Portable => {
            // SAFETY: the asserts above bound every element sgemm reads or writes (B is
            // row-major [k][n] when NR = n; see `portable::drive`).
            unsafe { portable::drive(m, k, n, a, lda, &b.data, bias, epi, c, ldc) }
        }
        _ => scalar::drive(m, k, n, a, lda, &b.data, bias, epi, c, ldc),
    }
}

/// GELU on the `rows x cols` block at the start of `c` (row stride `ldc`).
#[inline(always)]
fn gelu_block(c: &mut [f32], ldc: usize, rows: usize, cols: usize) {
    for i in 0..rows {
        super::gelu_all(&mut c[i * ldc..i * ldc + cols]);
    }
}

/// Calls `$tile::<R>($args)` for the runtime row count `$r` in `1..=$max` (6 or 12).
macro_rules! by_rows {
    ($r:expr, 12, $tile:ident($($arg:expr),*)) => {
        match $r {
            12 => $tile::<12>($($arg),*),
            11 => $tile::<11>($($arg),*),
            10 => $tile::<10>($($arg),*),
            9 => $tile::<9>($($arg),*),
            8 => $tile::<8>($($arg),*),
            7 => $tile::<7>($($arg),*),
            _ => by_rows!($r, 6, $tile($($arg),*)),
        }
    };
    ($r:expr, 6, $tile:ident($($arg:expr),*)) => {
        match $r {
            6 => $tile::<6>($($arg),*),
            5 => $tile::<5>($($arg),*),
            _ => by_rows!($r, 4, $tile($($arg),*)),
        }
    };
    ($r:expr, 4, $tile:ident($($arg:expr),*)) => {
        match $r {
            4 => $tile::<4>($($arg),*),
            3 => $tile::<3>($($arg),*),
            2 => $tile::<2>($($arg),*),
            _ => $tile::<1>($($arg),*),
        }
    };
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod x86 {
    use core::arch::x86_64::*;

    use super::{gelu_block, Epilogue};

    /// Defines a driver `$name` for `$tile` kernels of `$mr x $nr` compiled with `$features`:
    /// row blocks of `MR` outside, panels inside, so a block of `A` stays in L1 while the panels
    /// stream from L2. See [`super::gemm`]; a driver requires its features on the CPU and the
    /// bounds `gemm` asserts.
    macro_rules! driver {
        ($name:ident, $features:literal, $mr:tt, $nr:expr, $tile:ident) => {
            #[target_feature(enable = $features)]
            pub(super) unsafe fn $name(
                m: usize,
                k: usize,
                n: usize,
                a: &[f32],
                lda: usize,
                b: &[f32],
                bias: Option<&[f32]>,
                epi: Epilogue,
                c: &mut [f32],
                ldc: usize,
            ) {
                let mut i = 0;
                while i < m {
                    let r = (m - i).min($mr);
                    for jp in 0..n.div_ceil($nr) {
                        let cols = (n - jp * $nr).min($nr);
                        // SAFETY: rows i..i+r < m of A read columns < k (a.len() >=
                        // (m-1)*lda + k); panel jp spans jp*k*NR..(jp+1)*k*NR of b (b.len() ==
                        // panels*k*NR); bias jp*NR..(jp+1)*NR (bias.len() == panels*NR); C rows
                        // i..i+r, columns jp*NR..jp*NR+cols <= n, and the tile masks every
                        // column past `cols`; the caller checked the CPU's features.
                        unsafe {
                            let ap = a.as_ptr().add(i * lda);
                            let bp = b.as_ptr().add(jp * k * $nr);
                            let biasp =
                                bias.map_or(core::ptr::null(), |v| v.as_ptr().add(jp * $nr));
                            let cp = c.as_mut_ptr().add(i * ldc + jp * $nr);
                            by_rows!(
                                r,
                                $mr,
                                $tile(k, ap, lda, bp, biasp, cp, ldc, cols, epi.accumulate)
                            );
                        }
                        if epi.gelu {
                            gelu_block(&mut c[i * ldc + jp * $nr..], ldc, r, cols);
                        }
                    }
                    i += r;
                }
            }
        };
    }

    driver!(drive_avx512, "avx512f,avx2,fma", 12, 32, tile_avx512);
    driver!(drive_avx2, "avx2,fma", 6, 16, tile_avx2);

    /// `R x 32` tile: `C[0..R, 0..cols] (+)= A B_panel + bias`, `A` row-strided.
    #[target_feature(enable = "avx512f,avx2,fma")]
    #[inline]
    unsafe fn tile_avx512<const R: usize>(
        k: usize,
        a: *const f32,
        lda: usize,
        b: *const f32,
        bias: *const f32,
        c: *mut f32,
        ldc: usize,
        cols: usize,
        accumulate: bool,
    ) {
        // SAFETY: the caller guarantees R rows of A with k columns, a [k][32] panel at b, 32
        // bias values when bias is not null, and R rows of C with `cols` writable columns;
        // masked lanes are neither read nor written (AVX-512 masks suppress their faults).
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); 2]; R];
            if !bias.is_null() {
                let b0 = _mm512_loadu_ps(bias);
                let b1 = _mm512_loadu_ps(bias.add(16));
                for row in acc.iter_mut() {
                    *row = [b0, b1];
                }
            }
            for p in 0..k {
                let b0 = _mm512_loadu_ps(b.add(p * 32));
                let b1 = _mm512_loadu_ps(b.add(p * 32 + 16));
                for i in 0..R {
                    let av = _mm512_set1_ps(*a.add(i * lda + p));
                    acc[i][0] = _mm512_fmadd_ps(av, b0, acc[i][0]);
                    acc[i][1] = _mm512_fmadd_ps(av, b1, acc[i][1]);
                }
            }
            let m0: __mmask16 = if cols >= 16 {
                0xffff
            } else {
                (1u16 << cols) - 1
            };
            let m1: __mmask16 = if cols >= 32 {
                0xffff
            } else if cols > 16 {
                (1u16 << (cols - 16)) - 1
            } else {
                0
            };
            for i in 0..R {
                let cp = c.add(i * ldc);
                let [mut v0, mut v1] = acc[i];
                if accumulate {
                    v0 = _mm512_add_ps(_mm512_maskz_loadu_ps(m0, cp), v0);
                    v1 = _mm512_add_ps(_mm512_maskz_loadu_ps(m1, cp.wrapping_add(16)), v1);
                }
                _mm512_mask_storeu_ps(cp, m0, v0);
                _mm512_mask_storeu_ps(cp.wrapping_add(16), m1, v1);
            }
        }
    }

    /// Lane mask of the first `cols` of 8 lanes (all lanes for `cols >= 8`).
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn lanes(cols: usize) -> __m256i {
        let idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        _mm256_cmpgt_epi32(_mm256_set1_epi32(cols.min(8) as i32), idx)
    }

    /// `R x 16` tile, as [`tile_avx512`] with 256-bit registers.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn tile_avx2<const R: usize>(
        k: usize,
        a: *const f32,
        lda: usize,
        b: *const f32,
        bias: *const f32,
        c: *mut f32,
        ldc: usize,
        cols: usize,
        accumulate: bool,
    ) {
        // SAFETY: as `tile_avx512`, with a [k][16] panel and 16 bias values; AVX masked loads
        // and stores do not touch (or fault on) masked lanes.
        unsafe {
            let mut acc = [[_mm256_setzero_ps(); 2]; R];
            if !bias.is_null() {
                let b0 = _mm256_loadu_ps(bias);
                let b1 = _mm256_loadu_ps(bias.add(8));
                for row in acc.iter_mut() {
                    *row = [b0, b1];
                }
            }
            for p in 0..k {
                let b0 = _mm256_loadu_ps(b.add(p * 16));
                let b1 = _mm256_loadu_ps(b.add(p * 16 + 8));
                for i in 0..R {
                    let av = _mm256_set1_ps(*a.add(i * lda + p));
                    acc[i][0] = _mm256_fmadd_ps(av, b0, acc[i][0]);
                    acc[i][1] = _mm256_fmadd_ps(av, b1, acc[i][1]);
                }
            }
            let m0 = lanes(cols);
            let m1 = lanes(cols.saturating_sub(8));
            for i in 0..R {
                let cp = c.add(i * ldc);
                let [mut v0, mut v1] = acc[i];
                if accumulate {
                    v0 = _mm256_add_ps(_mm256_maskload_ps(cp, m0), v0);
                    v1 = _mm256_add_ps(_mm256_maskload_ps(cp.wrapping_add(8), m1), v1);
                }
                _mm256_maskstore_ps(cp, m0, v0);
                _mm256_maskstore_ps(cp.wrapping_add(8), m1, v1);
            }
        }
    }
}

#[allow(unsafe_code)]
mod portable {
    use super::{gelu_block, Epilogue};

    /// See [`super::gemm`], with `B` row-major `[k][n]`: the bias (or nothing) goes into `C`
    /// first, then `matrixmultiply` adds `A B` (`beta = 1`) or writes it (`beta = 0`, `C` not
    /// read), then GELU runs over the block.
    ///
    /// # Safety
    /// `a.len() >= (m - 1) * lda + k` when `k > 0`, `b.len() == k * n`, `c.len() >= (m - 1) *
    /// ldc + n` with `ldc >= n`, `bias` (when given) holds `n` values, `m, n > 0`.
    pub(super) unsafe fn drive(
        m: usize,
        k: usize,
        n: usize,
        a: &[f32],
        lda: usize,
        b: &[f32],
        bias: Option<&[f32]>,
        epi: Epilogue,
        c: &mut [f32],
        ldc: usize,
    ) {
        for i in 0..m {
            let row = &mut c[i * ldc..i * ldc + n];
            match (bias, epi.accumulate) {
                (Some(bias), false) => row.copy_from_slice(&bias[..n]),
                (Some(bias), true) => row.iter_mut().zip(bias).for_each(|(o, b)| *o += b),
                (None, false) if k == 0 => row.fill(0.0),
                _ => {}
            }
        }
        if k > 0 {
            let beta = if bias.is_some() || epi.accumulate {
                1.0
            } else {
                0.0
            };
            // Strides are element counts that index the slices (bounded by their lengths,
            // which never exceed isize::MAX), so the casts are exact.
            // SAFETY: A's rows i < m read columns p < k at i * lda + p < a.len(); B reads
            // p * n + j < k * n = b.len(); C writes (and, with beta = 1, reads) i * ldc + j <
            // c.len() for j < n; no element of C aliases another (ldc >= n, column stride 1).
            unsafe {
                matrixmultiply::sgemm(
                    m,
                    k,
                    n,
                    1.0,
                    a.as_ptr(),
                    lda as isize,
                    1,
                    b.as_ptr(),
                    n as isize,
                    1,
                    beta,
                    c.as_mut_ptr(),
                    ldc as isize,
                    1,
                );
            }
        }
        if epi.gelu {
            gelu_block(c, ldc, m, n);
        }
    }
}

mod scalar {
    use super::{gelu_block, Epilogue};

    const NR: usize = 16;

    /// See [`super::gemm`]: safe indexing, `R x 16` tiles in arrays the compiler keeps in
    /// vector registers.
    pub(super) fn drive(
        m: usize,
        k: usize,
        n: usize,
        a: &[f32],
        lda: usize,
        b: &[f32],
        bias: Option<&[f32]>,
        epi: Epilogue,
        c: &mut [f32],
        ldc: usize,
    ) {
        let mut i = 0;
        while i < m {
            let r = (m - i).min(4);
            for jp in 0..n.div_ceil(NR) {
                let cols = (n - jp * NR).min(NR);
                let panel = &b[jp * k * NR..(jp + 1) * k * NR];
                let bias = bias.map(|v| &v[jp * NR..(jp + 1) * NR]);
                let cc = &mut c[i * ldc + jp * NR..];
                by_rows!(
                    r,
                    4,
                    tile(&a[i * lda..], lda, panel, bias, cc, ldc, cols, epi)
                );
                if epi.gelu {
                    gelu_block(cc, ldc, r, cols);
                }
            }
            i += r;
        }
    }

    #[inline(always)]
    fn tile<const R: usize>(
        a: &[f32],
        lda: usize,
        panel: &[f32],
        bias: Option<&[f32]>,
        c: &mut [f32],
        ldc: usize,
        cols: usize,
        epi: Epilogue,
    ) {
        let mut acc = [[0.0f32; NR]; R];
        if let Some(bias) = bias {
            for row in acc.iter_mut() {
                row.copy_from_slice(bias);
            }
        }
        for (p, bp) in panel.chunks_exact(NR).enumerate() {
            for i in 0..R {
                let av = a[i * lda + p];
                for (acc, bv) in acc[i].iter_mut().zip(bp) {
                    *acc += av * bv;
                }
            }
        }
        for i in 0..R {
            let row = &mut c[i * ldc..i * ldc + cols];
            for (o, v) in row.iter_mut().zip(&acc[i]) {
                *o = if epi.accumulate { *o + v } else { *v };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::splitmix64;

    fn rand(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| (splitmix64(&mut s) >> 40) as f32 / (1u64 << 23) as f32 - 1.0)
            .collect()
    }

    /// Every kernel, every epilogue, shapes with row and column tails and strided A / C,
    /// against a plain f64 triple loop.
    #[test]
    fn kernels_match_a_reference_product() {
        for kernel in Kernel::available() {
            for &(m, k, n) in &[
                (1, 1, 1),
                (13, 7, 33),
                (25, 64, 16),
                (49, 32, 49),
                (6, 0, 5),
                (12, 300, 70),
                (3, 5, 100),
            ] {
                let (lda, ldc) = (k + 3, n + 2);
                let a = rand(m * lda, 1);
                let w = rand(n * k, 2);
                let bias = rand(n, 3);
                let c0 = rand(m * ldc, 4);
                for (pi, packed) in [
                    Packed::linear(kernel, &w, &bias),
                    {
                        // Repacked over a larger, different matrix: no stale value survives.
                        let mut p = Packed::empty(kernel);
                        p.set_nk(&rand(70 * 301, 9), 301, 70, 301, 1.0);
                        p.set_nk(&w, k, n, k, 0.5);
                        p
                    },
                    {
                        // B = W^T given as k rows of n.
                        let mut wt = vec![0.0; k * n];
                        for j in 0..n {
                            for p in 0..k {
                                wt[p * n + j] = w[j * k + p];
                            }
                        }
                        let mut p = Packed::empty(kernel);
                        p.set_kn(&wt, n, k, n);
                        p
                    },
                ]
                .iter()
                .enumerate()
                {
                    for epi in [SET, ADD, SET_GELU, ADD_GELU] {
                        let mut c = c0.clone();
                        gemm(m, &a, lda, packed, epi, &mut c, ldc);
                        for i in 0..m {
                            for j in 0..ldc {
                                let got = c[i * ldc + j];
                                if j >= n {
                                    assert_eq!(got, c0[i * ldc + j], "{kernel:?} wrote past n");
                                    continue;
                                }
                                let mut s = if pi == 0 { bias[j] as f64 } else { 0.0 };
                                for p in 0..k {
                                    let wv = w[j * k + p] as f64 * if pi == 1 { 0.5 } else { 1.0 };
                                    s += a[i * lda + p] as f64 * wv;
                                }
                                if epi.accumulate {
                                    s += c0[i * ldc + j] as f64;
                                }
                                if epi.gelu {
                                    s = 0.5 * s * (1.0 + libm::erf(s / core::f64::consts::SQRT_2));
                                }
                                assert!(
                                    (got as f64 - s).abs() < 1e-5 * (1.0 + s.abs()),
                                    "{kernel:?} {m}x{k}x{n} #{pi} {epi:?} [{i},{j}]: {got} vs {s}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn portable_is_always_available() {
        assert!(Kernel::available().contains(&Kernel::Portable));
        assert!(Kernel::detect().supported());
    }
}
