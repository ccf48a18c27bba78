//! Safe handles over the C++ shim `host/csrc/dist.cpp`: c10d's `TCPStore` and
//! `ProcessGroupGloo` from the libtorch that tch links.

use std::ffi::{c_char, CStr, CString};
use std::time::Duration;

use anyhow::{anyhow, Result};
use tch::Tensor;

#[repr(C)]
struct RawStore {
    _private: [u8; 0],
}
#[repr(C)]
struct RawGroup {
    _private: [u8; 0],
}
/// `at::Tensor`, as tch's C tensors are.
type RawTensor = torch_sys::C_tensor;

extern "C" {
    fn tvd_free_str(s: *mut c_char);
    fn tvd_store_new(
        host: *const c_char,
        port: u16,
        world: i32,
        is_server: i32,
        timeout_ms: i64,
        err: *mut *mut c_char,
    ) -> *mut RawStore;
    fn tvd_store_clone(s: *mut RawStore, err: *mut *mut c_char) -> *mut RawStore;
    fn tvd_store_free(s: *mut RawStore);
    fn tvd_store_set(
        s: *mut RawStore,
        key: *const c_char,
        val: *const u8,
        len: usize,
        err: *mut *mut c_char,
    ) -> i32;
    fn tvd_store_get(
        s: *mut RawStore,
        key: *const c_char,
        out: *mut *mut u8,
        len: *mut usize,
        err: *mut *mut c_char,
    ) -> i32;
    fn tvd_store_add(
        s: *mut RawStore,
        key: *const c_char,
        delta: i64,
        value: *mut i64,
        err: *mut *mut c_char,
    ) -> i32;
    fn tvd_store_set_timeout(s: *mut RawStore, timeout_ms: i64);
    fn tvd_group_new(
        s: *mut RawStore,
        prefix: *const c_char,
        iface: *const c_char,
        hostname: *const c_char,
        rank: i32,
        world: i32,
        timeout_ms: i64,
        err: *mut *mut c_char,
    ) -> *mut RawGroup;
    fn tvd_group_free(g: *mut RawGroup);
    fn tvd_allreduce_sum(
        g: *mut RawGroup,
        ts: *const *mut RawTensor,
        n: usize,
        err: *mut *mut c_char,
    ) -> i32;
    fn tvd_broadcast(
        g: *mut RawGroup,
        ts: *const *mut RawTensor,
        n: usize,
        root: i32,
        err: *mut *mut c_char,
    ) -> i32;
    fn tvd_barrier(g: *mut RawGroup, err: *mut *mut c_char) -> i32;
}

/// Takes the shim's error string, or says there was none.
fn take_err(err: *mut c_char) -> anyhow::Error {
    if err.is_null() {
        return anyhow!("the collective engine failed without a message");
    }
    // SAFETY: the shim hands back a NUL-terminated string from malloc, ours to free.
    let msg = unsafe { CStr::from_ptr(err) }
        .to_string_lossy()
        .into_owned();
    // SAFETY: as above; freed once.
    unsafe { tvd_free_str(err) };
    // c10 appends a C++ stack trace after the first line: keep the message.
    let first = msg.lines().next().unwrap_or("").trim().to_string();
    anyhow!(first)
}

fn check(rc: i32, err: *mut c_char) -> Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(take_err(err))
    }
}

fn cstr(s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| anyhow!("`{s}` holds a NUL byte"))
}

fn millis(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

/// A client of the rendezvous key-value store (rank 0 also serves it).
pub struct Store(*mut RawStore);

// SAFETY: c10d's TCPStore serialises its operations on one client with a lock; a handle is
// moved to the thread that uses it.
unsafe impl Send for Store {}

impl Store {
    /// Connects to (or, with `server`, serves) the store at `host:port`, waiting up to
    /// `timeout` until all `world` ranks have connected.
    pub fn connect(
        host: &str,
        port: u16,
        world: usize,
        server: bool,
        timeout: Duration,
    ) -> Result<Store> {
        let host = cstr(host)?;
        let mut err = std::ptr::null_mut();
        // SAFETY: valid C strings and out-pointer; the shim catches every exception.
        let p = unsafe {
            tvd_store_new(
                host.as_ptr(),
                port,
                world as i32,
                server as i32,
                millis(timeout),
                &mut err,
            )
        };
        if p.is_null() {
            return Err(take_err(err));
        }
        Ok(Store(p))
    }

    /// Another connection to the same store, for another thread.
    pub fn try_clone(&self) -> Result<Store> {
        let mut err = std::ptr::null_mut();
        // SAFETY: self.0 is a live store.
        let p = unsafe { tvd_store_clone(self.0, &mut err) };
        if p.is_null() {
            return Err(take_err(err));
        }
        Ok(Store(p))
    }

    /// How long `get` waits for a key that is not there yet.
    pub fn set_timeout(&self, timeout: Duration) {
        // SAFETY: self.0 is a live store.
        unsafe { tvd_store_set_timeout(self.0, millis(timeout)) }
    }

    pub fn set(&self, key: &str, value: &[u8]) -> Result<()> {
        let k = cstr(key)?;
        let mut err = std::ptr::null_mut();
        // SAFETY: live store, valid key, `value` readable for its length.
        let rc =
            unsafe { tvd_store_set(self.0, k.as_ptr(), value.as_ptr(), value.len(), &mut err) };
        check(rc, err)
    }

    /// The value of `key`, waiting for it up to the store's timeout.
    pub fn get(&self, key: &str) -> Result<Vec<u8>> {
        let k = cstr(key)?;
        let mut err = std::ptr::null_mut();
        let mut out = std::ptr::null_mut();
        let mut len = 0usize;
        // SAFETY: live store, valid key and out-pointers.
        let rc = unsafe { tvd_store_get(self.0, k.as_ptr(), &mut out, &mut len, &mut err) };
        check(rc, err)?;
        // SAFETY: on success the shim malloc'ed `len` (+1) bytes at `out`, ours to free.
        let v = unsafe { std::slice::from_raw_parts(out, len) }.to_vec();
        // SAFETY: allocated with malloc by the shim; freed once.
        unsafe { tvd_free_str(out.cast()) };
        Ok(v)
    }

    /// Adds `delta` to the counter `key` (created at 0) and returns the new value.
    pub fn add(&self, key: &str, delta: i64) -> Result<i64> {
        let k = cstr(key)?;
        let mut err = std::ptr::null_mut();
        let mut v = 0i64;
        // SAFETY: live store, valid key and out-pointers.
        let rc = unsafe { tvd_store_add(self.0, k.as_ptr(), delta, &mut v, &mut err) };
        check(rc, err)?;
        Ok(v)
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // SAFETY: allocated by tvd_store_new/clone, dropped once.
        unsafe { tvd_store_free(self.0) }
    }
}

/// A gloo process group: the collectives over TCP.
pub struct Group(*mut RawGroup);

impl Group {
    /// Builds the group over `store` (its keys under `prefix`); every rank calls this. The
    /// group's TCP device binds to interface `iface` when given, else to address `host`.
    pub fn new(
        store: &Store,
        prefix: &str,
        iface: Option<&str>,
        host: &str,
        rank: usize,
        world: usize,
        timeout: Duration,
    ) -> Result<Group> {
        let (prefix, iface, host) = (cstr(prefix)?, cstr(iface.unwrap_or(""))?, cstr(host)?);
        let mut err = std::ptr::null_mut();
        // SAFETY: live store, valid C strings and out-pointer.
        let p = unsafe {
            tvd_group_new(
                store.0,
                prefix.as_ptr(),
                iface.as_ptr(),
                host.as_ptr(),
                rank as i32,
                world as i32,
                millis(timeout),
                &mut err,
            )
        };
        if p.is_null() {
            return Err(take_err(err));
        }
        Ok(Group(p))
    }

    /// Sums each tensor over the ranks, in place (dense, contiguous CPU tensors).
    pub fn all_reduce_sum(&self, ts: &[&Tensor]) -> Result<()> {
        let raw: Vec<*mut RawTensor> = ts.iter().map(|t| t.as_ptr() as *mut RawTensor).collect();
        let mut err = std::ptr::null_mut();
        // SAFETY: live group; the tensors outlive the call.
        let rc = unsafe { tvd_allreduce_sum(self.0, raw.as_ptr(), raw.len(), &mut err) };
        check(rc, err)
    }

    /// Copies rank `root`'s tensors into every other rank's, in place.
    pub fn broadcast(&self, ts: &[&Tensor], root: usize) -> Result<()> {
        let raw: Vec<*mut RawTensor> = ts.iter().map(|t| t.as_ptr() as *mut RawTensor).collect();
        let mut err = std::ptr::null_mut();
        // SAFETY: live group; the tensors outlive the call.
        let rc = unsafe { tvd_broadcast(self.0, raw.as_ptr(), raw.len(), root as i32, &mut err) };
        check(rc, err)
    }

    pub fn barrier(&self) -> Result<()> {
        let mut err = std::ptr::null_mut();
        // SAFETY: live group.
        let rc = unsafe { tvd_barrier(self.0, &mut err) };
        check(rc, err)
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        // SAFETY: allocated by tvd_group_new, dropped once.
        unsafe { tvd_group_free(self.0) }
    }
}
