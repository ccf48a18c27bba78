//! Picks the compute device and makes CUDA available when the host has it.
//!
//! The `tinyvit` binary is linked against libtorch's CPU libraries only (the linker drops
//! `libtorch_cuda.so` because no symbol of it is referenced). On a CUDA host, loading that
//! library at start-up registers the CUDA backend with libtorch, so one binary serves CPU and
//! GPU machines.

use std::ffi::CString;
use std::sync::OnceLock;

/// What happened when we tried to load libtorch's CUDA backend.
#[derive(Clone, Debug)]
pub enum CudaLoad {
    /// `libtorch_cuda.so` was loaded and libtorch sees this many CUDA devices.
    Loaded { devices: usize },
    /// The library loaded but no device is visible.
    NoDevice,
    /// The library could not be loaded (the dynamic loader's message).
    Unavailable(String),
}

static CUDA: OnceLock<CudaLoad> = OnceLock::new();

/// Loads `libtorch_cuda.so` once (idempotent) and reports the outcome.
pub fn load_cuda() -> &'static CudaLoad {
    CUDA.get_or_init(|| {
        let name = CString::new("libtorch_cuda.so").expect("static name has no NUL");
        // SAFETY: `name` is a valid NUL-terminated string that outlives the call; dlopen and
        // dlerror have no other preconditions. The handle is deliberately never closed: the
        // CUDA backend must stay registered for the life of the process.
        let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
        if handle.is_null() {
            // SAFETY: dlerror returns NULL or a pointer to a NUL-terminated string that stays
            // valid until the next dl* call on this thread; we copy it out at once.
            let msg = unsafe {
                let e = libc::dlerror();
                if e.is_null() {
                    "unknown dlopen error".to_string()
                } else {
                    std::ffi::CStr::from_ptr(e).to_string_lossy().into_owned()
                }
            };
            return CudaLoad::Unavailable(msg);
        }
        let devices = tch::Cuda::device_count().max(0) as usize;
        if devices == 0 {
            CudaLoad::NoDevice
        } else {
            CudaLoad::Loaded { devices }
        }
    })
}

/// One line for `--version` and logs: which backends this process can use.
pub fn describe() -> String {
    match load_cuda() {
        CudaLoad::Loaded { devices } => format!("CUDA available ({devices} device(s))"),
        CudaLoad::NoDevice => "CUDA backend loaded, but no CUDA device is visible".to_string(),
        CudaLoad::Unavailable(why) => {
            // dlerror reads "libX.so: cannot open shared object file: No such file or directory";
            // the library that is missing is what a user needs to know.
            let missing = why.split(':').next().unwrap_or(why).trim();
            format!("CUDA not available (cannot load {missing}); using CPU")
        }
    }
}

/// Device choice on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceArg {
    /// CUDA when available, else CPU.
    Auto,
    Cpu,
    Cuda,
}

/// Resolves a device choice; `cuda` on a host without CUDA is an error, not a silent fallback.
pub fn resolve(arg: DeviceArg) -> anyhow::Result<tch::Device> {
    let cuda = matches!(load_cuda(), CudaLoad::Loaded { .. });
    match arg {
        DeviceArg::Cpu => Ok(tch::Device::Cpu),
        DeviceArg::Auto if cuda => Ok(tch::Device::Cuda(0)),
        DeviceArg::Auto => Ok(tch::Device::Cpu),
        DeviceArg::Cuda if cuda => Ok(tch::Device::Cuda(0)),
        DeviceArg::Cuda => anyhow::bail!("--device cuda: {}", describe()),
    }
}
