//! What the loaded fake library says about itself: how often each NVML symbol
//! was called ([`call_counts`]), and the layout of the header's structs as the
//! C compiler laid them out ([`layout`]). Both read the library at
//! [`crate::LIB_PATH`] through `dlopen`, which hands back the instance a
//! process already loaded (the one `nvml-wrapper` uses), so the counts are
//! those of the agent's calls.

use std::collections::BTreeMap;
use std::ffi::{c_char, c_uint, c_ulonglong, c_void, CStr, CString};

use crate::LIB_PATH;

/// Why the library could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum IntrospectError {
    /// `dlopen` failed.
    #[error("cannot load the fake library {path}: {reason}")]
    Load {
        /// The library's path.
        path: String,
        /// What `dlerror` said.
        reason: String,
    },
    /// The library lacks the symbol (an older build).
    #[error("the fake library has no symbol {0}")]
    Symbol(&'static str),
}

/// A handle on the loaded library; closed on drop (the library stays loaded
/// while anything else holds it).
struct Lib(*mut c_void);

impl Lib {
    fn open() -> Result<Self, IntrospectError> {
        let path = CString::new(LIB_PATH).map_err(|_| IntrospectError::Load {
            path: LIB_PATH.to_owned(),
            reason: "the path holds a NUL byte".to_owned(),
        })?;
        // SAFETY: a valid C string; dlopen has no other preconditions.
        let h = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if h.is_null() {
            // SAFETY: dlerror returns NULL or a C string valid until the next dl* call.
            let e = unsafe { libc::dlerror() };
            let reason = if e.is_null() {
                "unknown".to_owned()
            } else {
                // SAFETY: non-null, NUL-terminated (see above).
                unsafe { CStr::from_ptr(e) }.to_string_lossy().into_owned()
            };
            return Err(IntrospectError::Load {
                path: LIB_PATH.to_owned(),
                reason,
            });
        }
        Ok(Self(h))
    }

    fn sym(&self, name: &'static CStr) -> Result<*mut c_void, IntrospectError> {
        // SAFETY: a live handle and a C string.
        let p = unsafe { libc::dlsym(self.0, name.as_ptr()) };
        if p.is_null() {
            Err(IntrospectError::Symbol(
                name.to_str().unwrap_or("(non-UTF-8 symbol)"),
            ))
        } else {
            Ok(p)
        }
    }
}

impl Drop for Lib {
    fn drop(&mut self) {
        // SAFETY: the handle came from dlopen and is closed once.
        unsafe {
            libc::dlclose(self.0);
        }
    }
}

/// Calls per NVML symbol since the library was loaded or the counts were
/// last reset (a symbol never called is absent).
pub fn call_counts() -> Result<BTreeMap<String, u64>, IntrospectError> {
    let lib = Lib::open()?;
    let f = lib.sym(c"dcwattFakeCallCounts")?;
    // SAFETY: the symbol is `unsigned int dcwattFakeCallCounts(char *, unsigned int)`.
    let f: unsafe extern "C" fn(*mut c_char, c_uint) -> c_uint = unsafe { std::mem::transmute(f) };
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let len = c_uint::try_from(buf.len()).unwrap_or(c_uint::MAX);
        // SAFETY: buf has `len` writable bytes (or is empty with len 0).
        let need = unsafe { f(buf.as_mut_ptr().cast(), len) } as usize;
        if need <= buf.len() {
            break;
        }
        // Room for symbols first called meanwhile.
        buf = vec![0; need + 256];
    }
    let text = CStr::from_bytes_until_nul(&buf)
        .map(|c| c.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(text
        .lines()
        .filter_map(|l| {
            let (name, n) = l.rsplit_once(' ')?;
            Some((name.to_owned(), n.parse().ok()?))
        })
        .collect())
}

/// Sets every call count to 0.
pub fn reset_call_counts() -> Result<(), IntrospectError> {
    let lib = Lib::open()?;
    let f = lib.sym(c"dcwattFakeCallCountsReset")?;
    // SAFETY: the symbol is `void dcwattFakeCallCountsReset(void)`.
    let f: unsafe extern "C" fn() = unsafe { std::mem::transmute(f) };
    // SAFETY: no arguments; the library locks its own table.
    unsafe { f() };
    Ok(())
}

/// One row of the header's struct layout as compiled into the library.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayoutRow {
    /// The C type (`nvmlFieldValue_t`).
    pub ty: String,
    /// The field; `""` for the struct itself, `"(version)"` for its version constant.
    pub field: String,
    /// Field offset; the struct's alignment for a struct row; 0 for a version row.
    pub offset: u64,
    /// Field size; `sizeof` for a struct row; the constant for a version row.
    pub size: u64,
}

#[repr(C)]
struct RawRow {
    ty: *const c_char,
    field: *const c_char,
    offset: c_ulonglong,
    size: c_ulonglong,
}

/// The layout table the library was compiled with (`dcwattFakeLayout`).
pub fn layout() -> Result<Vec<LayoutRow>, IntrospectError> {
    let lib = Lib::open()?;
    let f = lib.sym(c"dcwattFakeLayout")?;
    // SAFETY: the symbol is `const struct dcwatt_layout_row *dcwattFakeLayout(unsigned int *)`.
    let f: unsafe extern "C" fn(*mut c_uint) -> *const RawRow = unsafe { std::mem::transmute(f) };
    let mut n: c_uint = 0;
    // SAFETY: n is a valid out-pointer; the table is static in the library.
    let rows = unsafe { f(&mut n) };
    if rows.is_null() {
        return Ok(Vec::new());
    }
    // SAFETY: the library returns `n` rows of static data, with static C strings.
    let raw = unsafe { std::slice::from_raw_parts(rows, n as usize) };
    Ok(raw
        .iter()
        .map(|r| {
            // SAFETY: static NUL-terminated strings in the library.
            let s = |p: *const c_char| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned();
            LayoutRow {
                ty: s(r.ty),
                field: s(r.field),
                offset: r.offset,
                size: r.size,
            }
        })
        .collect())
}
