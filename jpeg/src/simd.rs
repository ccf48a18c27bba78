//! Which SIMD code may run: a value that can only say "AVX2" after the CPU reported it.

/// The SIMD level the decoder uses. Only [`Simd::detect`] can answer `true` from
/// [`Simd::avx2`], and only after the running CPU reported AVX2; the `unsafe` calls into
/// `#[target_feature(enable = "avx2")]` functions rely on that.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Simd {
    avx2: bool,
}

impl Simd {
    /// What the running CPU supports.
    pub(crate) fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            Self {
                avx2: std::is_x86_feature_detected!("avx2"),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            Self { avx2: false }
        }
    }

    /// Portable code only.
    pub(crate) fn none() -> Self {
        Self { avx2: false }
    }

    /// Whether the AVX2 code may run.
    #[inline(always)]
    pub(crate) fn avx2(self) -> bool {
        self.avx2
    }
}
