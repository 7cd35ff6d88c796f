//! Argument checking shared by the exported functions: NULL checks and
//! versioned options structs. Every message names the function and the
//! argument, e.g. `imgtool_open: 'out' must not be NULL`.

use std::ffi::{c_char, c_void};

use crate::error::{Error, Result};

/// `fname: 'arg' must not be NULL`.
pub(crate) fn null_error(what: &str) -> Error {
    match what.split_once(": ") {
        Some((f, a)) => Error::invalid(format!("{f}: '{a}' must not be NULL")),
        None => Error::invalid(format!("'{what}' must not be NULL")),
    }
}

/// Borrow a required `const T *` argument.
///
/// # Safety
/// `p` is NULL or points to a valid, initialised `T` that outlives `'a` and
/// is not mutated meanwhile.
pub(crate) unsafe fn arg_ref<'a, T>(p: *const T, what: &str) -> Result<&'a T> {
    // SAFETY: the caller guarantees p is NULL or valid for 'a; as_ref
    // handles NULL.
    unsafe { p.as_ref() }.ok_or_else(|| null_error(what))
}

/// A checked, non-NULL out-pointer to a plain C value (integer, pointer or
/// repr(C) struct of those).
pub(crate) struct Out<T: Copy>(std::ptr::NonNull<T>);

impl<T: Copy> Out<T> {
    /// Store `v` without reading or dropping the previous contents (which
    /// C may have left uninitialised; `T: Copy` has no drop glue).
    pub(crate) fn write(&self, v: T) {
        // SAFETY: arg_out's caller guaranteed the pointer is valid for a
        // write of T and properly aligned; NonNull rules out NULL.
        unsafe { self.0.as_ptr().write(v) }
    }
}

/// Check a required `T *` out-argument.
///
/// # Safety
/// `p` is NULL or valid for writing one properly aligned `T` until the
/// returned [`Out`] is used.
pub(crate) unsafe fn arg_out<T: Copy>(p: *mut T, what: &str) -> Result<Out<T>> {
    std::ptr::NonNull::new(p)
        .map(Out)
        .ok_or_else(|| null_error(what))
}

/// An options struct whose first field is `uint32_t struct_size`.
///
/// # Safety
/// Implementors are `#[repr(C)]`, start with a `u32` size field, and every
/// bit pattern of their fields is a valid value (integers and raw pointers);
/// fields added after the first release have all-zero bytes as their
/// default, so a struct from an older caller can be extended with zeros.
pub(crate) unsafe trait SizedOptions: Copy {
    /// Type name for messages.
    const NAME: &'static str;
    /// The struct's size in the first release that had it: callers built
    /// against that header pass this `struct_size`.
    const MIN_SIZE: usize = std::mem::size_of::<Self>();
}

/// Larger than any options struct will ever be; a `struct_size` above this
/// is garbage (an uninitialised struct), not a newer caller.
const MAX_STRUCT_SIZE: usize = 4096;

/// Copy a caller's options struct after checking `struct_size`.
///
/// - the size of the struct's first release (`MIN_SIZE`, a caller built
///   against an older header): the fields it knows are used, later ones
///   are zero (their defaults);
/// - any other size below ours: `IMGTOOL_EINVAL` (not initialised with
///   `_init`);
/// - larger (a caller built against a newer header): accepted when every
///   byte beyond the fields this library knows is zero, so an unknown option
///   is never silently ignored (`IMGTOOL_ENOTSUP` otherwise).
///
/// # Safety
/// `p` is NULL or points to `struct_size` readable bytes laid out as `T`.
pub(crate) unsafe fn read_options<T: SizedOptions>(p: *const T, what: &str) -> Result<T> {
    if p.is_null() {
        return Err(null_error(what));
    }
    let ours = std::mem::size_of::<T>();
    // SAFETY: non-null and, per SizedOptions, starts with an aligned u32.
    let given = unsafe { std::ptr::read(p.cast::<u32>()) } as usize;
    let fname = what.split_once(": ").map_or(what, |(f, _)| f);
    // Below our size only the first release's size is a real caller; any
    // other value would cut a field in two.
    if given < ours && given != T::MIN_SIZE {
        return Err(Error::invalid(format!(
            "{fname}: {}.struct_size is {given}, expected at least {ours}; initialise the struct with {}_init()",
            T::NAME,
            T::NAME
        )));
    }
    if given > MAX_STRUCT_SIZE {
        return Err(Error::invalid(format!(
            "{fname}: {}.struct_size {given} is implausible; initialise the struct with {}_init()",
            T::NAME,
            T::NAME
        )));
    }
    if given < ours {
        let mut v = std::mem::MaybeUninit::<T>::zeroed();
        // SAFETY: the caller promises `given` readable bytes at p; the
        // destination has size_of::<T>() > given bytes; they do not overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(p.cast::<u8>(), v.as_mut_ptr().cast::<u8>(), given)
        };
        // SAFETY: every byte is initialised (zeroed, then partly copied) and
        // any bit pattern is a valid T (SizedOptions).
        return Ok(unsafe { v.assume_init() });
    }
    if given > ours {
        // SAFETY: the caller promises struct_size readable bytes at p.
        let tail = unsafe { std::slice::from_raw_parts(p.cast::<u8>().add(ours), given - ours) };
        if tail.iter().any(|&b| b != 0) {
            return Err(Error::unsupported(format!(
                "{fname}: {} sets fields this version of libimgtool ({}) does not know",
                T::NAME,
                crate::VERSION
            )));
        }
    }
    // SAFETY: at least size_of::<T>() readable bytes, aligned for T (it is a
    // T pointer from C), and any bit pattern is a valid T (SizedOptions).
    Ok(unsafe { std::ptr::read(p) })
}

/// Check a `(buf, len)` pair from C: NULL is allowed only with `len` 0, and
/// no object is larger than `isize::MAX` (from_raw_parts would be UB).
/// `what` is "function: buf".
fn check_buffer(buf: *const c_void, len: usize, what: &str) -> Result<bool> {
    if len == 0 {
        return Ok(false);
    }
    if buf.is_null() {
        return Err(null_error(what));
    }
    if len > isize::MAX as usize {
        let fname = what.split_once(": ").map_or(what, |(f, _)| f);
        return Err(Error::invalid(format!(
            "{fname}: 'len' is larger than any buffer can be"
        )));
    }
    Ok(true)
}

/// A caller's input buffer of `len` bytes.
///
/// # Safety
/// `buf` is NULL or readable for `len` bytes during `'a`.
pub(crate) unsafe fn arg_bytes<'a>(buf: *const c_void, len: usize, what: &str) -> Result<&'a [u8]> {
    if !check_buffer(buf, len, what)? {
        return Ok(&[]);
    }
    // SAFETY: non-null, readable for len <= isize::MAX bytes per the
    // contract; u8 has no alignment or validity requirement.
    Ok(unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), len) })
}

/// A caller's output buffer of `len` bytes.
///
/// # Safety
/// `buf` is NULL or writable for `len` bytes during `'a`, and nothing else
/// accesses it meanwhile.
pub(crate) unsafe fn arg_bytes_mut<'a>(
    buf: *mut c_void,
    len: usize,
    what: &str,
) -> Result<&'a mut [u8]> {
    if !check_buffer(buf, len, what)? {
        return Ok(&mut []);
    }
    // SAFETY: non-null, writable and unaliased for len <= isize::MAX bytes
    // per the contract; u8 has no alignment or validity requirement.
    Ok(unsafe { std::slice::from_raw_parts_mut(buf.cast::<u8>(), len) })
}

/// Reject flag bits this version does not define.
pub(crate) fn check_flags(flags: u32, known: u32, what: &str) -> Result<()> {
    let unknown = flags & !known;
    if unknown != 0 {
        return Err(Error::invalid(format!(
            "{what}: unknown flag bits 0x{unknown:x}"
        )));
    }
    Ok(())
}

/// A required C string argument as UTF-8.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string valid for `'a`.
pub(crate) unsafe fn arg_str<'a>(p: *const c_char, what: &str) -> Result<&'a str> {
    // SAFETY: forwarded contract.
    unsafe { opt_str(p, what) }?.ok_or_else(|| null_error(what))
}

/// An optional (nullable) C string argument as UTF-8.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string valid for `'a`.
pub(crate) unsafe fn opt_str<'a>(p: *const c_char, what: &str) -> Result<Option<&'a str>> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: non-null and NUL-terminated per the caller's contract.
    let c = unsafe { std::ffi::CStr::from_ptr(p) };
    match c.to_str() {
        Ok(s) => Ok(Some(s)),
        Err(e) => {
            let (f, a) = what.split_once(": ").unwrap_or(("", what));
            Err(Error::invalid(format!(
                "{f}: '{a}' is not valid UTF-8 (invalid byte at offset {})",
                e.valid_up_to()
            )))
        }
    }
}

/// An optional string where "" means the same as NULL (unset).
///
/// # Safety
/// As [`opt_str`].
pub(crate) unsafe fn opt_nonempty<'a>(p: *const c_char, what: &str) -> Result<Option<&'a str>> {
    // SAFETY: forwarded contract.
    Ok(unsafe { opt_str(p, what) }?.filter(|s| !s.is_empty()))
}

/// A report struct the library fills in, whose first field is
/// `uint32_t struct_size` set by the caller to `sizeof` the struct it has.
///
/// # Safety
/// Implementors are `#[repr(C)]` and start with a `u32` size field.
pub(crate) unsafe trait SizedOut: Copy {
    /// Type name for messages.
    const NAME: &'static str;
}

/// Check a caller's report struct before any work: `struct_size` must be at
/// least what this library fills in (callers built against an older header
/// than the one that introduced the struct cannot exist) and plausible.
///
/// # Safety
/// `p` is NULL or points to a writable struct whose first `u32` the caller
/// initialised.
pub(crate) unsafe fn check_out_struct<T: SizedOut>(p: *mut T, what: &str) -> Result<Out<T>> {
    let nn = std::ptr::NonNull::new(p).ok_or_else(|| null_error(what))?;
    let ours = std::mem::size_of::<T>();
    // SAFETY: non-null, aligned (a T pointer from C) and the caller set the
    // leading u32.
    let given = unsafe { std::ptr::read(p.cast::<u32>()) } as usize;
    let fname = what.split_once(": ").map_or(what, |(f, _)| f);
    if given < ours || given > MAX_STRUCT_SIZE {
        return Err(Error::invalid(format!(
            "{fname}: {}.struct_size is {given}, expected sizeof({}) = {ours}; set it before the call",
            T::NAME,
            T::NAME
        )));
    }
    // Bytes beyond `ours` (a caller built against a newer header) are left
    // as the caller initialised them; `struct_size` tells it how many bytes
    // this library filled in.
    Ok(Out(nn))
}

/// Check that an image handle may be written (writes, zeroes, discards).
pub(crate) fn check_writable(img: &crate::image::Image) -> Result<()> {
    if img.driver().host_file().is_writable() {
        Ok(())
    } else {
        Err(Error::new(
            crate::ErrorKind::PermissionDenied,
            "Image was opened read-only (use IMGTOOL_OPEN_WRITABLE)",
        ))
    }
}
