//! C ABI (filled in by the ffi work).
