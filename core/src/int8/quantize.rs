//! Post-training quantisation (host side, floats allowed): real scales to integer parameters.

use super::ops::{Multiplier, MAX_SHIFT, MIN_SHIFT};

/// The [`Multiplier`] nearest to the real `x`: `|m|` in `[2^30, 2^31)` when the shift allows,
/// `m = round(x 2^62)` (possibly 0) for reals below `2^-32`. `None` for reals of `2^30` or
/// more and for non-finite ones, which no sensible scale ratio reaches.
pub fn multiplier(x: f64) -> Option<Multiplier> {
    if !x.is_finite() || x.abs() >= (1u64 << 30) as f64 {
        return None;
    }
    if x == 0.0 {
        return Some(Multiplier { m: 0, shift: 1 });
    }
    // |x| = f 2^e with f in [0.5, 1): shift = 31 - e puts |m| in [2^30, 2^31).
    let e = libm::ilogb(x.abs()) + 1;
    let mut shift = (31 - e).clamp(MIN_SHIFT as i32, MAX_SHIFT as i32);
    let mut m = libm::round(libm::ldexp(x, shift));
    if m.abs() >= 2147483648.0 {
        m = libm::round(libm::ldexp(x, shift - 1));
        shift -= 1;
    }
    if shift < MIN_SHIFT as i32 || m.abs() >= 2147483648.0 {
        return None;
    }
    Some(Multiplier {
        m: m as i32,
        shift: shift as u32,
    })
}
