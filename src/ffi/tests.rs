//! Tests of the C ABI called from Rust, exactly as C would call it.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::PathBuf;
use std::ptr::{null, null_mut};
use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;

fn last_error() -> String {
    // SAFETY: imgtool_last_error never returns NULL and the string lives
    // until the next fallible call on this thread; we copy it at once.
    unsafe { CStr::from_ptr(imgtool_last_error()) }
        .to_string_lossy()
        .into_owned()
}

/// Tests that spawn processes (qemu-img) run alone: between fork and exec
/// a child holds copies of every descriptor of this process, so the OFD
/// image locks of a file another test just closed would live on for a
/// moment, and that test's reopen could fail with IMGTOOL_ELOCKED.
static SPAWN: std::sync::RwLock<()> = std::sync::RwLock::new(());

enum SpawnGuard {
    Shared(#[allow(dead_code)] std::sync::RwLockReadGuard<'static, ()>),
    Exclusive(#[allow(dead_code)] std::sync::RwLockWriteGuard<'static, ()>),
}

/// A scratch directory removed on drop; it also holds the test's share of
/// [`SPAWN`].
struct TempDir(PathBuf, #[allow(dead_code)] SpawnGuard);

impl TempDir {
    fn new() -> TempDir {
        let g = SPAWN.read().unwrap_or_else(|e| e.into_inner());
        Self::with_guard(SpawnGuard::Shared(g))
    }

    /// For tests that spawn processes: no other test runs meanwhile.
    fn new_exclusive() -> TempDir {
        let g = SPAWN.write().unwrap_or_else(|e| e.into_inner());
        Self::with_guard(SpawnGuard::Exclusive(g))
    }

    fn with_guard(g: SpawnGuard) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "imgtool-ffi-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p, g)
    }
    fn path(&self, name: &str) -> CString {
        CString::new(self.0.join(name).to_str().unwrap()).unwrap()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn create_options() -> imgtool_create_options {
    let mut o = std::mem::MaybeUninit::<imgtool_create_options>::uninit();
    // SAFETY: o is writable; _init fills every field.
    assert_eq!(
        unsafe { imgtool_create_options_init(o.as_mut_ptr()) },
        IMGTOOL_OK
    );
    // SAFETY: initialised by the call above.
    unsafe { o.assume_init() }
}

fn open_options(flags: u32) -> imgtool_open_options {
    let mut o = std::mem::MaybeUninit::<imgtool_open_options>::uninit();
    // SAFETY: o is writable; _init fills every field.
    assert_eq!(
        unsafe { imgtool_open_options_init(o.as_mut_ptr()) },
        IMGTOOL_OK
    );
    // SAFETY: initialised by the call above.
    let mut o = unsafe { o.assume_init() };
    o.flags = flags;
    o
}

fn convert_options() -> imgtool_convert_options {
    let mut o = std::mem::MaybeUninit::<imgtool_convert_options>::uninit();
    // SAFETY: o is writable; _init fills every field.
    assert_eq!(
        unsafe { imgtool_convert_options_init(o.as_mut_ptr()) },
        IMGTOOL_OK
    );
    // SAFETY: initialised by the call above.
    unsafe { o.assume_init() }
}

/// Create an image with `format`, returning the C result.
fn create(format: &CStr, path: &CStr, size: u64, options: Option<&CStr>) -> c_int {
    let mut o = create_options();
    o.format = format.as_ptr();
    o.filename = path.as_ptr();
    o.size = size;
    o.options = options.map_or(null(), CStr::as_ptr);
    // SAFETY: o is initialised and its strings outlive the call.
    unsafe { imgtool_create(&o) }
}

fn open(path: &CStr, flags: u32) -> *mut imgtool_image {
    let o = open_options(flags);
    let mut img = null_mut();
    // SAFETY: valid string, options and out pointer.
    let r = unsafe { imgtool_open(path.as_ptr(), &o, &mut img) };
    assert_eq!(r, IMGTOOL_OK, "{}", last_error());
    assert!(!img.is_null());
    img
}

#[test]
fn null_pointers_are_einval_with_a_message() {
    let mut img = null_mut();
    // SAFETY: NULL is allowed for every pointer argument; out is valid.
    assert_eq!(
        unsafe { imgtool_open(null(), null(), &mut img) },
        IMGTOOL_EINVAL
    );
    assert!(img.is_null());
    assert_eq!(last_error(), "imgtool_open: 'path' must not be NULL");
    assert_eq!(imgtool_last_error_code(), IMGTOOL_EINVAL);
    assert_eq!(imgtool_last_errno(), 0);

    // SAFETY: NULL out pointer is checked.
    assert_eq!(
        unsafe { imgtool_open(c"/nonexistent".as_ptr(), null(), null_mut()) },
        IMGTOOL_EINVAL
    );
    assert_eq!(last_error(), "imgtool_open: 'out' must not be NULL");

    let mut buf = [0u8; 4];
    let mut size = 0u64;
    let mut ext = imgtool_extent::default();
    let mut s: *mut c_char = null_mut();
    // SAFETY (all below): each call gets NULL where a handle is expected;
    // the library must reject it before touching anything.
    unsafe {
        assert_eq!(
            imgtool_read(null_mut(), buf.as_mut_ptr().cast(), 4, 0),
            IMGTOOL_EINVAL
        );
        assert_eq!(last_error(), "imgtool_read: 'img' must not be NULL");
        assert_eq!(
            imgtool_write(null_mut(), buf.as_ptr().cast(), 4, 0),
            IMGTOOL_EINVAL
        );
        assert_eq!(imgtool_flush(null_mut()), IMGTOOL_EINVAL);
        assert_eq!(imgtool_get_size(null_mut(), &mut size), IMGTOOL_EINVAL);
        assert_eq!(
            imgtool_block_status(null_mut(), 0, 1, &mut ext),
            IMGTOOL_EINVAL
        );
        assert_eq!(imgtool_info_json(null_mut(), &mut s), IMGTOOL_EINVAL);
        assert!(s.is_null());
        assert_eq!(imgtool_create(null()), IMGTOOL_EINVAL);
        assert_eq!(last_error(), "imgtool_create: 'opts' must not be NULL");
        assert_eq!(imgtool_open_options_init(null_mut()), IMGTOOL_EINVAL);
        assert_eq!(imgtool_create_options_init(null_mut()), IMGTOOL_EINVAL);
        assert_eq!(imgtool_convert_options_init(null_mut()), IMGTOOL_EINVAL);
        assert_eq!(
            imgtool_convert(null(), 1, c"x".as_ptr(), null(), None, null_mut()),
            IMGTOOL_EINVAL
        );
        let srcs = [c"a".as_ptr(), null()];
        assert_eq!(
            imgtool_convert(srcs.as_ptr(), 2, c"x".as_ptr(), null(), None, null_mut()),
            IMGTOOL_EINVAL
        );
        assert_eq!(last_error(), "imgtool_convert: 'srcs[1]' must not be NULL");
        assert_eq!(
            imgtool_convert(srcs.as_ptr(), 0, c"x".as_ptr(), null(), None, null_mut()),
            IMGTOOL_EINVAL
        );
        assert_eq!(
            imgtool_convert(srcs.as_ptr(), 1, null(), null(), None, null_mut()),
            IMGTOOL_EINVAL
        );
        assert_eq!(last_error(), "imgtool_convert: 'dst' must not be NULL");
        // free/close of NULL are no-ops, like free(3).
        imgtool_free_string(null_mut());
        assert_eq!(imgtool_close(null_mut()), IMGTOOL_OK);
    }

    // A create without file name.
    let o = create_options();
    // SAFETY: o is initialised.
    assert_eq!(unsafe { imgtool_create(&o) }, IMGTOOL_EINVAL);
    assert_eq!(
        last_error(),
        "imgtool_create: 'opts->filename' must not be NULL"
    );
}

#[test]
fn struct_size_is_checked() {
    let dir = TempDir::new();
    let path = dir.path("a.raw");
    assert_eq!(create(c"raw", &path, 4096, None), IMGTOOL_OK);

    // Too small: not initialised with _init (or garbage).
    let mut o = open_options(0);
    o.struct_size = 4;
    let mut img = null_mut();
    // SAFETY: valid pointers; the struct is larger than it claims.
    assert_eq!(
        unsafe { imgtool_open(path.as_ptr(), &o, &mut img) },
        IMGTOOL_EINVAL
    );
    assert!(img.is_null());
    assert!(
        last_error().contains("struct_size is 4"),
        "{}",
        last_error()
    );

    let mut c = create_options();
    c.struct_size = 0;
    c.filename = path.as_ptr();
    c.size = 0;
    // SAFETY: valid struct.
    assert_eq!(unsafe { imgtool_create(&c) }, IMGTOOL_EINVAL);
    let mut v = convert_options();
    v.struct_size -= 1;
    let srcs = [path.as_ptr()];
    let dst = dir.path("b.raw");
    // SAFETY: valid pointers.
    let r = unsafe { imgtool_convert(srcs.as_ptr(), 1, dst.as_ptr(), &v, None, null_mut()) };
    assert_eq!(r, IMGTOOL_EINVAL);

    // A caller built against the first header, which ended before
    // key_secret: accepted, and the bytes beyond its struct are not read.
    #[repr(C)]
    struct Older {
        base: imgtool_open_options,
    }
    let mut old = Older {
        base: open_options(0),
    };
    old.base.struct_size = std::mem::offset_of!(imgtool_open_options, key_secret) as u32;
    old.base.key_secret = c"garbage-beyond-the-struct".as_ptr();
    // SAFETY: the struct is larger than it claims.
    assert_eq!(
        unsafe { imgtool_open(path.as_ptr(), &old.base, &mut img) },
        IMGTOOL_OK,
        "{}",
        last_error()
    );
    // SAFETY: img is a live handle.
    assert_eq!(unsafe { imgtool_close(img) }, IMGTOOL_OK);
    let mut v = convert_options();
    v.struct_size = std::mem::offset_of!(imgtool_convert_options, source_key_secret) as u32;
    v.source_key_secret = c"no-such-secret".as_ptr();
    let dst_old = dir.path("old.raw");
    // SAFETY: valid pointers.
    let r = unsafe { imgtool_convert(srcs.as_ptr(), 1, dst_old.as_ptr(), &v, None, null_mut()) };
    assert_eq!(r, IMGTOOL_OK, "{}", last_error());

    // Implausibly large: garbage.
    let mut o = open_options(0);
    o.struct_size = u32::MAX;
    // SAFETY: the size check fails before reading beyond the struct.
    assert_eq!(
        unsafe { imgtool_open(path.as_ptr(), &o, &mut img) },
        IMGTOOL_EINVAL
    );

    // A caller built against a newer, larger struct: fine when the fields
    // this library does not know are zero, refused otherwise.
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Newer {
        base: imgtool_open_options,
        extra: u64,
    }
    let mut n = Newer {
        base: open_options(0),
        extra: 0,
    };
    n.base.struct_size = std::mem::size_of::<Newer>() as u32;
    // SAFETY: n really is struct_size bytes long.
    assert_eq!(
        unsafe { imgtool_open(path.as_ptr(), &n.base, &mut img) },
        IMGTOOL_OK,
        "{}",
        last_error()
    );
    // SAFETY: img is a live handle.
    assert_eq!(unsafe { imgtool_close(img) }, IMGTOOL_OK);
    n.extra = 1;
    // SAFETY: as above.
    assert_eq!(
        unsafe { imgtool_open(path.as_ptr(), &n.base, &mut img) },
        IMGTOOL_ENOTSUP
    );
    assert!(last_error().contains("does not know"), "{}", last_error());

    // Unknown flag bits.
    let o = open_options(1 << 31);
    // SAFETY: valid pointers.
    assert_eq!(
        unsafe { imgtool_open(path.as_ptr(), &o, &mut img) },
        IMGTOOL_EINVAL
    );
    assert!(last_error().contains("unknown flag bits 0x80000000"));
}

#[test]
fn panic_becomes_epanic() {
    let r = super::panic::guard(|| panic!("boom in a test"));
    assert_eq!(r, IMGTOOL_EPANIC);
    assert_eq!(imgtool_last_error_code(), IMGTOOL_EPANIC);
    assert!(last_error().contains("boom in a test"), "{}", last_error());
    let r = super::panic::guard(|| std::panic::panic_any(42u32));
    assert_eq!(r, IMGTOOL_EPANIC);
    assert!(last_error().contains("panic"));
    assert_eq!(super::panic::guard_value(7, || -> i32 { panic!("x") }), 7);
    // The next successful call clears the error.
    let mut o = std::mem::MaybeUninit::<imgtool_open_options>::uninit();
    // SAFETY: writable.
    assert_eq!(
        unsafe { imgtool_open_options_init(o.as_mut_ptr()) },
        IMGTOOL_OK
    );
    assert_eq!(last_error(), "");
    assert_eq!(imgtool_last_error_code(), IMGTOOL_OK);
}

#[test]
fn last_error_is_per_thread() {
    // SAFETY: NULL arguments are checked.
    assert_eq!(unsafe { imgtool_create(null()) }, IMGTOOL_EINVAL);
    let other = std::thread::spawn(|| (last_error(), imgtool_last_error_code()))
        .join()
        .unwrap();
    assert_eq!(other, (String::new(), IMGTOOL_OK));
    assert!(!last_error().is_empty());
}

#[test]
fn non_utf8_strings_are_rejected() {
    let bad = [b'/', b't', 0xff, 0xfe, 0];
    let mut img = null_mut();
    // SAFETY: a NUL-terminated byte string.
    assert_eq!(
        unsafe { imgtool_open(bad.as_ptr().cast(), null(), &mut img) },
        IMGTOOL_EINVAL
    );
    assert_eq!(
        last_error(),
        "imgtool_open: 'path' is not valid UTF-8 (invalid byte at offset 2)"
    );
}

#[test]
fn errors_map_to_codes_and_errno() {
    let mut img = null_mut();
    // SAFETY: valid pointers.
    let r = unsafe { imgtool_open(c"/nonexistent/x.img".as_ptr(), null(), &mut img) };
    assert_eq!(r, IMGTOOL_ENOENT);
    assert_eq!(imgtool_last_errno(), libc::ENOENT);
    // qemu-img's wording, doubled prefix included.
    assert_eq!(
        last_error(),
        "Could not open '/nonexistent/x.img': Could not open '/nonexistent/x.img': \
         No such file or directory"
    );

    let dir = TempDir::new();
    let path = dir.path("a.raw");
    assert_eq!(
        create(c"raw", &path, 1 << 20, Some(c"nonsense=1")),
        IMGTOOL_EINVAL
    );
    assert_eq!(last_error(), "Invalid parameter 'nonsense'");
    assert_eq!(create(c"vmdk9", &path, 1 << 20, None), IMGTOOL_EINVAL);
    assert_eq!(last_error(), "Unknown file format 'vmdk9'");

    for code in [
        IMGTOOL_OK,
        IMGTOOL_EINVAL,
        IMGTOOL_ENOENT,
        IMGTOOL_EACCES,
        IMGTOOL_EIO,
        IMGTOOL_ECORRUPT,
        IMGTOOL_ENOTSUP,
        IMGTOOL_ELOCKED,
        IMGTOOL_ECANCELED,
        IMGTOOL_ENOSPC,
        IMGTOOL_ERANGE,
        IMGTOOL_ENOMEM,
        IMGTOOL_EPANIC,
    ] {
        // SAFETY: static NUL-terminated string.
        let s = unsafe { CStr::from_ptr(imgtool_strerror(code)) };
        assert_ne!(s.to_str().unwrap(), "Unknown error code", "{code}");
    }
    // SAFETY: static NUL-terminated string.
    let s = unsafe { CStr::from_ptr(imgtool_strerror(12345)) };
    assert_eq!(s.to_str().unwrap(), "Unknown error code");

    use crate::error::{Error, ErrorKind};
    let kinds = [
        (ErrorKind::InvalidArgument, IMGTOOL_EINVAL),
        (ErrorKind::NotFound, IMGTOOL_ENOENT),
        (ErrorKind::PermissionDenied, IMGTOOL_EACCES),
        (ErrorKind::Io, IMGTOOL_EIO),
        (ErrorKind::Corrupt, IMGTOOL_ECORRUPT),
        (ErrorKind::Unsupported, IMGTOOL_ENOTSUP),
        (ErrorKind::Locked, IMGTOOL_ELOCKED),
        (ErrorKind::Cancelled, IMGTOOL_ECANCELED),
        (ErrorKind::NoSpace, IMGTOOL_ENOSPC),
        (ErrorKind::OutOfRange, IMGTOOL_ERANGE),
    ];
    for (k, c) in kinds {
        assert_eq!(code_of(&Error::new(k, "x")), c);
    }
    assert_eq!(code_of(&Error::from_errno(libc::ENOMEM)), IMGTOOL_ENOMEM);
    assert_eq!(code_of(&Error::from_errno(libc::ENOSPC)), IMGTOOL_ENOSPC);
}

#[test]
fn version_matches_cargo() {
    // SAFETY: static NUL-terminated string.
    let v = unsafe { CStr::from_ptr(imgtool_version()) };
    assert_eq!(v.to_str().unwrap(), crate::VERSION);
}

/// Deterministic test data.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
        .collect()
}

#[test]
fn raw_read_write_status_info() {
    let dir = TempDir::new();
    let path = dir.path("a.raw");
    let size = 3 * 65536 + 512;
    assert_eq!(create(c"raw", &path, size, None), IMGTOOL_OK);
    let img = open(&path, IMGTOOL_OPEN_WRITABLE);
    // SAFETY (block): img is a live handle, buffers are valid for their
    // lengths, out pointers are valid.
    unsafe {
        let mut got = 0u64;
        assert_eq!(imgtool_get_size(img, &mut got), IMGTOOL_OK);
        assert_eq!(got, size);

        let data = pattern(70000, 7);
        assert_eq!(
            imgtool_write(img, data.as_ptr().cast(), data.len(), 65000),
            IMGTOOL_OK,
            "{}",
            last_error()
        );
        let mut back = vec![0u8; data.len()];
        assert_eq!(
            imgtool_read(img, back.as_mut_ptr().cast(), back.len(), 65000),
            IMGTOOL_OK
        );
        assert_eq!(back, data);
        // Zero-length I/O with NULL buffers is fine.
        assert_eq!(imgtool_read(img, null_mut(), 0, 0), IMGTOOL_OK);
        assert_eq!(imgtool_write(img, null(), 0, 0), IMGTOOL_OK);
        assert_eq!(imgtool_read(img, null_mut(), 1, 0), IMGTOOL_EINVAL);
        // A length no buffer can have is refused before any slice is made.
        let mut one = [0u8; 1];
        assert_eq!(
            imgtool_read(img, one.as_mut_ptr().cast(), usize::MAX, 0),
            IMGTOOL_EINVAL
        );
        assert_eq!(
            imgtool_write(img, one.as_ptr().cast(), usize::MAX, 0),
            IMGTOOL_EINVAL
        );
        // Beyond the end.
        let mut b = [0u8; 2];
        assert_eq!(
            imgtool_read(img, b.as_mut_ptr().cast(), 2, size - 1),
            IMGTOOL_ERANGE
        );
        assert_eq!(
            imgtool_read(img, b.as_mut_ptr().cast(), 2, u64::MAX),
            IMGTOOL_ERANGE
        );
        assert_eq!(imgtool_flush(img), IMGTOOL_OK);

        // Block status covers the image exactly.
        let mut off = 0;
        let mut ext = imgtool_extent::default();
        while off < size {
            assert_eq!(
                imgtool_block_status(img, off, size - off, &mut ext),
                IMGTOOL_OK,
                "{}",
                last_error()
            );
            assert!(ext.length > 0 && ext.length <= size - off);
            assert_eq!(ext.depth, 0);
            assert!(ext.flags & IMGTOOL_EXTENT_PRESENT != 0);
            assert!(ext.has_offset && ext.offset == off);
            off += ext.length;
        }
        assert_eq!(off, size);
        assert_eq!(imgtool_block_status(img, size, 1, &mut ext), IMGTOOL_ERANGE);
        assert_eq!(imgtool_block_status(img, 0, 0, &mut ext), IMGTOOL_ERANGE);

        // info JSON is exactly the library's.
        let mut s: *mut c_char = null_mut();
        assert_eq!(imgtool_info_json(img, &mut s), IMGTOOL_OK);
        let json = CStr::from_ptr(s).to_str().unwrap().to_string();
        imgtool_free_string(s);
        let expect = crate::ImageInfo::of(&(*img).img).to_json().to_pretty();
        assert_eq!(json, expect);
        assert!(json.contains("\"format\": \"raw\""), "{json}");
        assert_eq!(imgtool_close(img), IMGTOOL_OK);
    }
}

#[test]
fn write_to_read_only_handle_fails() {
    let dir = TempDir::new();
    let path = dir.path("a.raw");
    assert_eq!(create(c"raw", &path, 65536, None), IMGTOOL_OK);
    let img = open(&path, 0);
    let b = [1u8; 16];
    // SAFETY: live handle, valid buffer.
    unsafe {
        assert_eq!(imgtool_write(img, b.as_ptr().cast(), 16, 0), IMGTOOL_EACCES);
        assert_eq!(imgtool_close(img), IMGTOOL_OK);
    }
}

#[test]
fn one_handle_many_threads() {
    let dir = TempDir::new();
    let path = dir.path("a.raw");
    let chunk = 100_003usize; // odd size: unaligned offsets
    let threads = 8;
    assert_eq!(
        create(c"raw", &path, (chunk * threads) as u64, None),
        IMGTOOL_OK
    );
    let img = open(&path, IMGTOOL_OPEN_WRITABLE) as usize;
    std::thread::scope(|s| {
        for t in 0..threads {
            s.spawn(move || {
                let img = img as *mut imgtool_image;
                let data = pattern(chunk, t as u8);
                let off = (t * chunk) as u64;
                let mut back = vec![0u8; chunk];
                // SAFETY: the handle is live for the whole scope and
                // documented as usable from several threads.
                unsafe {
                    assert_eq!(
                        imgtool_write(img, data.as_ptr().cast(), chunk, off),
                        IMGTOOL_OK
                    );
                    assert_eq!(
                        imgtool_read(img, back.as_mut_ptr().cast(), chunk, off),
                        IMGTOOL_OK
                    );
                }
                assert_eq!(back, data);
            });
        }
    });
    // SAFETY: all threads joined; we own the handle again.
    assert_eq!(
        unsafe { imgtool_close(img as *mut imgtool_image) },
        IMGTOOL_OK
    );
}

struct Progress {
    calls: usize,
    last: f64,
    cancel_after: usize,
}

unsafe extern "C" fn progress_cb(pct: f64, user: *mut c_void) -> c_int {
    // SAFETY: user is the &mut Progress passed to imgtool_convert below,
    // alive and unaliased for the duration of the call.
    let p = unsafe { &mut *user.cast::<Progress>() };
    assert!(pct >= p.last && pct <= 100.0);
    p.last = pct;
    p.calls += 1;
    c_int::from(p.calls >= p.cancel_after)
}

#[test]
fn convert_with_progress_and_cancel() {
    let dir = TempDir::new();
    let src = dir.path("src.raw");
    let size: u64 = 5 << 20; // several 2 MiB copy chunks
    assert_eq!(create(c"raw", &src, size, None), IMGTOOL_OK);
    let img = open(&src, IMGTOOL_OPEN_WRITABLE);
    let data = pattern(size as usize, 3);
    // SAFETY: live handle, valid buffer.
    unsafe {
        assert_eq!(
            imgtool_write(img, data.as_ptr().cast(), data.len(), 0),
            IMGTOOL_OK
        );
        assert_eq!(imgtool_close(img), IMGTOOL_OK);
    }

    let dst = dir.path("dst.raw");
    let srcs = [src.as_ptr()];
    let mut p = Progress {
        calls: 0,
        last: 0.0,
        cancel_after: usize::MAX,
    };
    // SAFETY: valid arguments; p outlives the call.
    let r = unsafe {
        imgtool_convert(
            srcs.as_ptr(),
            1,
            dst.as_ptr(),
            null(),
            Some(progress_cb),
            (&mut p as *mut Progress).cast(),
        )
    };
    assert_eq!(r, IMGTOOL_OK, "{}", last_error());
    assert!(p.calls >= 1);
    assert_eq!(p.last, 100.0);
    let out = std::fs::read(dst.to_str().unwrap()).unwrap();
    assert!(out == data);

    // Cancel on the first callback: ECANCELED, and the target is gone.
    let dst2 = dir.path("dst2.raw");
    let mut p = Progress {
        calls: 0,
        last: 0.0,
        cancel_after: 1,
    };
    // SAFETY: as above.
    let r = unsafe {
        imgtool_convert(
            srcs.as_ptr(),
            1,
            dst2.as_ptr(),
            null(),
            Some(progress_cb),
            (&mut p as *mut Progress).cast(),
        )
    };
    assert_eq!(r, IMGTOOL_ECANCELED);
    assert_eq!(last_error(), "Operation cancelled");
    assert_eq!(p.calls, 1);
    assert!(!std::path::Path::new(dst2.to_str().unwrap()).exists());

    // Option checks.
    let mut o = convert_options();
    o.flags = IMGTOOL_CONVERT_COMPRESS;
    // SAFETY: valid arguments.
    let r = unsafe { imgtool_convert(srcs.as_ptr(), 1, dst2.as_ptr(), &o, None, null_mut()) };
    assert_eq!(r, IMGTOOL_ENOTSUP);
    assert!(!std::path::Path::new(dst2.to_str().unwrap()).exists());
    let mut o = convert_options();
    o.num_workers = 17;
    // SAFETY: valid arguments.
    let r = unsafe { imgtool_convert(srcs.as_ptr(), 1, dst2.as_ptr(), &o, None, null_mut()) };
    assert_eq!(r, IMGTOOL_EINVAL);
    let mut o = convert_options();
    o.target_cache = c"sometimes".as_ptr();
    // SAFETY: valid arguments.
    let r = unsafe { imgtool_convert(srcs.as_ptr(), 1, dst2.as_ptr(), &o, None, null_mut()) };
    assert_eq!(r, IMGTOOL_EINVAL);
    assert_eq!(last_error(), "Invalid cache option: sometimes");
}

/// qcow2 through the C ABI.
#[test]
fn qcow2_create_write_read() {
    let dir = TempDir::new();
    let path = dir.path("a.qcow2");
    let size: u64 = 4 << 20;
    let r = create(c"qcow2", &path, size, Some(c"cluster_size=4096"));
    assert_eq!(r, IMGTOOL_OK, "{}", last_error());
    let img = open(&path, IMGTOOL_OPEN_WRITABLE);
    let data = pattern(10_000, 9);
    // SAFETY: live handle, valid buffers.
    unsafe {
        assert_eq!(
            imgtool_write(img, data.as_ptr().cast(), data.len(), 8191),
            IMGTOOL_OK,
            "{}",
            last_error()
        );
        let mut back = vec![0u8; data.len() + 2];
        assert_eq!(
            imgtool_read(img, back.as_mut_ptr().cast(), back.len(), 8190),
            IMGTOOL_OK
        );
        assert_eq!(back[0], 0);
        assert_eq!(&back[1..=data.len()], &data[..]);
        assert_eq!(back[data.len() + 1], 0);
        let mut ext = imgtool_extent::default();
        assert_eq!(imgtool_block_status(img, 0, size, &mut ext), IMGTOOL_OK);
        // Cluster 0 untouched, 1..=4 written (the write starts at the last
        // byte of cluster 1).
        assert_eq!(ext.flags & IMGTOOL_EXTENT_PRESENT, 0, "{ext:?}");
        assert_eq!(ext.length, 4096, "{ext:?}");
        assert_eq!(imgtool_block_status(img, 4096, size, &mut ext), IMGTOOL_OK);
        assert!(ext.flags & IMGTOOL_EXTENT_DATA != 0, "{ext:?}");
        assert!(ext.has_offset && ext.depth == 0, "{ext:?}");
        let mut s: *mut c_char = null_mut();
        assert_eq!(imgtool_info_json(img, &mut s), IMGTOOL_OK);
        let json = CStr::from_ptr(s).to_str().unwrap().to_string();
        imgtool_free_string(s);
        assert!(json.contains("\"cluster-size\": 4096"), "{json}");
        assert_eq!(imgtool_close(img), IMGTOOL_OK);
    }
}

#[test]
fn second_writer_is_locked_out() {
    let dir = TempDir::new();
    let path = dir.path("a.qcow2");
    assert_eq!(create(c"qcow2", &path, 1 << 20, None), IMGTOOL_OK);
    let img = open(&path, IMGTOOL_OPEN_WRITABLE);
    let o = open_options(IMGTOOL_OPEN_WRITABLE);
    let mut second = null_mut();
    // SAFETY: valid pointers.
    let r = unsafe { imgtool_open(path.as_ptr(), &o, &mut second) };
    assert_eq!(r, IMGTOOL_ELOCKED, "{}", last_error());
    assert!(second.is_null());
    // Read-only with force-share still works.
    let ro = open(&path, IMGTOOL_OPEN_FORCE_SHARE);
    // SAFETY: live handles.
    unsafe {
        assert_eq!(imgtool_close(ro), IMGTOOL_OK);
        assert_eq!(imgtool_close(img), IMGTOOL_OK);
    }
}

#[test]
fn convert_snapshot_of_raw_is_unsupported() {
    let dir = TempDir::new();
    let src = dir.path("a.raw");
    assert_eq!(create(c"raw", &src, 65536, None), IMGTOOL_OK);
    let srcs = [src.as_ptr()];
    let dst = dir.path("out.raw");
    let mut o = convert_options();
    o.snapshot = c"snap1".as_ptr();
    // SAFETY: valid arguments.
    let r = unsafe { imgtool_convert(srcs.as_ptr(), 1, dst.as_ptr(), &o, None, null_mut()) };
    assert_eq!(r, IMGTOOL_ENOTSUP);
    assert!(!std::path::Path::new(dst.to_str().unwrap()).exists());
}

#[test]
fn convert_from_internal_snapshot() {
    let dir = TempDir::new_exclusive();
    let src = dir.path("s.qcow2");
    let src_s = src.to_str().unwrap();
    let qemu = |args: &[&str]| {
        let ok = std::process::Command::new(args[0])
            .args(&args[1..])
            .stdout(std::process::Stdio::null())
            .status()
            .map(|s| s.success());
        ok.unwrap_or(false)
    };
    if !qemu(&["qemu-img", "create", "-q", "-f", "qcow2", src_s, "1M"]) {
        eprintln!("qemu-img not available; skipping");
        return;
    }
    assert!(qemu(&["qemu-io", "-c", "write -P 0x11 0 64k", src_s]));
    assert!(qemu(&["qemu-img", "snapshot", "-c", "snap1", src_s]));
    assert!(qemu(&["qemu-io", "-c", "write -P 0x22 0 64k", src_s]));

    let dst = dir.path("out.raw");
    let srcs = [src.as_ptr()];
    let mut o = convert_options();
    o.snapshot = c"snap1".as_ptr();
    // SAFETY: valid arguments.
    let r = unsafe { imgtool_convert(srcs.as_ptr(), 1, dst.as_ptr(), &o, None, null_mut()) };
    assert_eq!(r, IMGTOOL_OK, "{}", last_error());
    let out = std::fs::read(dst.to_str().unwrap()).unwrap();
    assert_eq!(out.len(), 1 << 20);
    assert!(
        out[..65536].iter().all(|&b| b == 0x11),
        "snapshot state expected"
    );
    assert!(out[65536..].iter().all(|&b| b == 0));

    o.snapshot = c"nosuch".as_ptr();
    let dst2 = dir.path("out2.raw");
    // SAFETY: valid arguments.
    let r = unsafe { imgtool_convert(srcs.as_ptr(), 1, dst2.as_ptr(), &o, None, null_mut()) };
    assert_ne!(r, IMGTOOL_OK);
    assert!(last_error().contains("snapshot"), "{}", last_error());
}

mod more;

mod ops;

mod read;

#[test]
fn secrets_are_checked_and_removable() {
    // SAFETY: NULL and valid C strings, data readable for its length.
    unsafe {
        assert_eq!(imgtool_secret_set(null(), null(), 0), IMGTOOL_EINVAL);
        assert_eq!(imgtool_secret_set(c"".as_ptr(), null(), 0), IMGTOOL_EINVAL);
        assert_eq!(
            imgtool_secret_set(c"t-sec".as_ptr(), null(), 3),
            IMGTOOL_EINVAL
        );
        let pw = b"pw";
        assert_eq!(
            imgtool_secret_set(c"t-sec".as_ptr(), pw.as_ptr().cast(), pw.len()),
            IMGTOOL_OK
        );
        assert!(crate::crypto::secret::exists("t-sec"));
        assert_eq!(imgtool_secret_remove(c"t-sec".as_ptr()), IMGTOOL_OK);
        assert_eq!(imgtool_secret_remove(c"t-sec".as_ptr()), IMGTOOL_ENOENT);
        assert_eq!(last_error(), "No secret with id 't-sec'");
    }
}
