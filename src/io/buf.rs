//! Page-aligned I/O buffers. The kernel copies between the page cache and
//! user memory with `rep movsb`, which is markedly slower into or out of a
//! destination that is not cache-line aligned; malloc's large blocks start
//! 16 bytes into a page. qemu-img aligns its buffers to the page too.

use std::alloc::{self, Layout};
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

const ALIGN: usize = 4096;

/// A zero-initialised byte buffer whose start is page-aligned.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
    cap: usize,
}

// SAFETY: AlignedBuf owns its allocation exclusively, like Vec<u8>.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access only hands out &[u8], like Vec<u8>.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// An empty buffer (no allocation).
    pub const fn new() -> Self {
        AlignedBuf {
            ptr: NonNull::dangling(),
            len: 0,
            cap: 0,
        }
    }

    /// Set the length to `len`; bytes beyond the old length are zero.
    /// Reallocates (losing the contents) only when `len` exceeds the
    /// capacity.
    pub fn resize(&mut self, len: usize) {
        if len > self.cap {
            *self = Self::with_len(len);
            return;
        }
        if len > self.len {
            // SAFETY: [self.len, len) lies within the allocation (len <= cap).
            unsafe { std::ptr::write_bytes(self.ptr.as_ptr().add(self.len), 0, len - self.len) };
        }
        self.len = len;
    }

    /// A buffer of `len` zero bytes.
    pub fn with_len(len: usize) -> Self {
        if len == 0 {
            return Self::new();
        }
        let Ok(layout) = Layout::from_size_align(len, ALIGN) else {
            // Larger than isize::MAX: no allocation can succeed.
            alloc::handle_alloc_error(Layout::new::<u8>());
        };
        // SAFETY: layout has a non-zero size.
        let p = unsafe { alloc::alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(p) else {
            alloc::handle_alloc_error(layout);
        };
        AlignedBuf { ptr, len, cap: len }
    }
}

impl Default for AlignedBuf {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if self.cap != 0 {
            // SAFETY: allocated in `with_len` with exactly this layout (the
            // size and alignment were valid then).
            unsafe {
                alloc::dealloc(
                    self.ptr.as_ptr(),
                    Layout::from_size_align_unchecked(self.cap, ALIGN),
                )
            };
        }
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr is valid for len initialised bytes (or dangling with
        // len 0, which from_raw_parts allows).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in deref, and &mut self gives exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_zeroed_and_resizable() {
        let mut b = AlignedBuf::new();
        assert!(b.is_empty());
        b.resize(10000);
        assert_eq!(b.as_ptr() as usize % ALIGN, 0);
        assert!(b.iter().all(|&x| x == 0));
        b[9999] = 7;
        b.resize(100);
        assert_eq!(b.len(), 100);
        b[50] = 1;
        b.resize(9000);
        // Regrown within capacity: the bytes past the old length are zero.
        assert_eq!(b[50], 1);
        assert!(b[100..].iter().all(|&x| x == 0));
        b.resize(20000);
        assert_eq!(b.len(), 20000);
        assert_eq!(b.as_ptr() as usize % ALIGN, 0);
    }
}
