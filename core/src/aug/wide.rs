//! Runs an integer kernel compiled for AVX2 when the host CPU has it.
//!
//! The kernels passed here are ordinary Rust written so that the compiler vectorises them
//! (fixed-width lanes, broadcast coefficients); [`run`] only decides which instruction set
//! the compiler may use for them. With the `fast` feature on x86_64 the closure is inlined
//! into a function compiled with AVX2 enabled and called when `is_x86_feature_detected!`
//! says the CPU has it; everywhere else (the device build, other hosts) it runs as compiled.
//!
//! Integer code has one result whatever instructions compute it, so both versions give the
//! same bits (the tests also check it). Float kernels may use vector lanes only when each lane
//! performs the scalar code's IEEE operations in the same order (Rust never fuses a multiply
//! and an add on its own, and these kernels use no FMA): the affine transform's AVX2 path
//! ([`avx2_enabled`]) is written that way, and its test compares it with the portable one.

/// Runs `f`, compiled for AVX2 when the CPU supports it (host builds with `fast`).
#[inline(always)]
pub(crate) fn run<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(all(feature = "fast", target_arch = "x86_64"))]
    {
        if avx2_enabled() {
            #[allow(unsafe_code)]
            // SAFETY: `avx2` only enables the AVX2 instruction set for its body; the CPU has
            // AVX2 (checked just above), so executing it is sound. `f` itself is safe code.
            return unsafe { avx2(f) };
        }
    }
    f()
}

/// Whether [`run`] takes the AVX2 build on this thread (the CPU has AVX2 and no test forced
/// the portable one); kernels written with AVX2 intrinsics ask this too.
#[cfg(all(feature = "fast", target_arch = "x86_64"))]
#[inline]
pub(crate) fn avx2_enabled() -> bool {
    !FORCE_PORTABLE.with(core::cell::Cell::get) && std::is_x86_feature_detected!("avx2")
}

#[cfg(all(feature = "fast", target_arch = "x86_64"))]
#[target_feature(enable = "avx2")]
fn avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(all(feature = "fast", target_arch = "x86_64"))]
std::thread_local! {
    /// Test hook: run kernels as compiled (no AVX2) on this thread.
    static FORCE_PORTABLE: core::cell::Cell<bool> = const { core::cell::Cell::new(false) };
}

/// Runs `f` with [`run`] forced to the portable build on this thread (tests compare the two).
#[cfg(all(test, feature = "fast", target_arch = "x86_64"))]
pub(crate) fn portable<R>(f: impl FnOnce() -> R) -> R {
    FORCE_PORTABLE.with(|c| c.set(true));
    let r = f();
    FORCE_PORTABLE.with(|c| c.set(false));
    r
}
