//! Where the firmware's lines go, and how it ends.
//!
//! Under QEMU (`qemu`, `netduinoplus2`) lines are written to the host's stdout through
//! semihosting and the run ends with a semihosting exit whose status becomes QEMU's exit code. On
//! a real board (`hardware`: `nucleo-h743`, `feather-f405`) lines go out as defmt over RTT and
//! probe-rs turns the semihosting exit into its own exit code. Everything prints through
//! [`line`], so every board prints the same text.

use core::fmt::{self, Write};

/// Writes one line (a newline is appended).
pub fn line(args: fmt::Arguments<'_>) {
    imp::line(args);
}

/// Ends the program with an exit status: 0 for success, anything else for failure.
pub fn exit(code: i32) -> ! {
    imp::exit(code)
}

/// Formats `args` into a fixed buffer, truncating what does not fit (never panics).
pub struct Buf<const N: usize> {
    data: [u8; N],
    len: usize,
}

impl<const N: usize> Buf<N> {
    pub const fn new() -> Self {
        Buf {
            data: [0; N],
            len: 0,
        }
    }

    pub fn as_str(&self) -> &str {
        // Only whole `&str`s are copied in, so the buffer is UTF-8 up to a char boundary.
        match core::str::from_utf8(&self.data[..self.len]) {
            Ok(s) => s,
            Err(e) => core::str::from_utf8(&self.data[..e.valid_up_to()]).unwrap_or(""),
        }
    }
}

impl<const N: usize> Write for Buf<N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = N - self.len;
        let mut take = s.len().min(room);
        while !s.is_char_boundary(take) {
            take -= 1;
        }
        self.data[self.len..self.len + take].copy_from_slice(&s.as_bytes()[..take]);
        self.len += take;
        Ok(())
    }
}

#[cfg(not(feature = "hardware"))]
mod imp {
    use core::fmt::{self, Write};

    use cortex_m_semihosting::{debug, hio};

    pub fn line(args: fmt::Arguments<'_>) {
        // One semihosting write per line: format first, then hand the whole line to the host.
        let mut buf = super::Buf::<256>::new();
        let _ = buf.write_fmt(args);
        let _ = buf.write_str("\n");
        if let Ok(mut out) = hio::hstdout() {
            let _ = out.write_all(buf.as_str().as_bytes());
        }
    }

    pub fn exit(code: i32) -> ! {
        if code == 0 {
            debug::exit(debug::EXIT_SUCCESS);
        } else {
            // ADP_Stopped_RunTimeErrorUnknown: QEMU exits with status 1.
            debug::exit(debug::EXIT_FAILURE);
        }
        // Without a debugger attached the exit call returns; park the core.
        loop {
            cortex_m::asm::wfi();
        }
    }
}

#[cfg(feature = "hardware")]
mod imp {
    use core::fmt::{self, Write};

    use cortex_m_semihosting::debug;
    use defmt_rtt as _;

    pub fn line(args: fmt::Arguments<'_>) {
        let mut buf = super::Buf::<256>::new();
        let _ = buf.write_fmt(args);
        defmt::println!("{=str}", buf.as_str());
    }

    pub fn exit(code: i32) -> ! {
        // probe-rs (`probe-rs run`) turns a semihosting exit into its own exit status.
        if code == 0 {
            debug::exit(debug::EXIT_SUCCESS);
        } else {
            debug::exit(debug::EXIT_FAILURE);
        }
        loop {
            cortex_m::asm::bkpt();
        }
    }
}
