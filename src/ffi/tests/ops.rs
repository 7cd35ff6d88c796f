//! Tests of the whole-image operations that modify images: commit,
//! rebase, resize, amend, snapshot create/apply/delete.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::ptr::{null, null_mut};

use super::super::*;
use super::{create, last_error, open, pattern, TempDir};

fn read(img: *mut imgtool_image, off: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0xAAu8; len];
    // SAFETY: live handle (callers), buffer valid for len bytes.
    let r = unsafe { imgtool_read(img, b.as_mut_ptr().cast(), len, off) };
    assert_eq!(r, IMGTOOL_OK, "{}", last_error());
    b
}

fn write(img: *mut imgtool_image, off: u64, data: &[u8]) {
    // SAFETY: live handle (callers), buffer valid.
    let r = unsafe { imgtool_write(img, data.as_ptr().cast(), data.len(), off) };
    assert_eq!(r, IMGTOOL_OK, "{}", last_error());
}

fn close(img: *mut imgtool_image) {
    // SAFETY: live handle.
    assert_eq!(
        unsafe { imgtool_close(img) },
        IMGTOOL_OK,
        "{}",
        last_error()
    );
}

/// The whole guest content of `path`.
fn content(path: &CStr) -> Vec<u8> {
    let img = open(path, 0);
    let mut size = 0u64;
    // SAFETY: live handle, valid out pointer.
    assert_eq!(unsafe { imgtool_get_size(img, &mut size) }, IMGTOOL_OK);
    let d = read(img, 0, size as usize);
    close(img);
    d
}

fn info_json(path: &CStr) -> String {
    let img = open(path, 0);
    let mut s: *mut c_char = null_mut();
    // SAFETY: live handle, valid out pointer.
    assert_eq!(unsafe { imgtool_info_json(img, &mut s) }, IMGTOOL_OK);
    // SAFETY: a string from the library, freed once.
    let j = unsafe { CStr::from_ptr(s) }.to_str().unwrap().to_string();
    // SAFETY: as above.
    unsafe { imgtool_free_string(s) };
    close(img);
    j
}

/// A qcow2 overlay `top` on a raw `base` with different data in each.
fn overlay(dir: &TempDir, size: u64) -> (std::ffi::CString, std::ffi::CString) {
    let base = dir.path("base.raw");
    let top = dir.path("top.qcow2");
    assert_eq!(create(c"raw", &base, size, None), IMGTOOL_OK);
    let b = open(&base, IMGTOOL_OPEN_WRITABLE);
    write(b, 0, &pattern(size as usize, 1));
    close(b);
    let mut o = super::create_options();
    o.format = c"qcow2".as_ptr();
    o.filename = top.as_ptr();
    o.backing_file = c"base.raw".as_ptr();
    o.backing_format = c"raw".as_ptr();
    // SAFETY: initialised options with valid strings.
    assert_eq!(
        unsafe { imgtool_create(&o) },
        IMGTOOL_OK,
        "{}",
        last_error()
    );
    let t = open(&top, IMGTOOL_OPEN_WRITABLE);
    write(t, 70_000, &pattern(100_000, 2));
    close(t);
    (base, top)
}

struct Calls {
    n: usize,
    last: f64,
    cancel: bool,
}

unsafe extern "C" fn count(pct: f64, user: *mut c_void) -> c_int {
    // SAFETY: user is the &mut Calls of the calling test.
    let c = unsafe { &mut *user.cast::<Calls>() };
    assert!(pct >= c.last && pct <= 100.0, "{} then {pct}", c.last);
    c.last = pct;
    c.n += 1;
    c_int::from(c.cancel)
}

#[test]
fn commit_into_backing_file() {
    let dir = TempDir::new();
    let size = 1 << 20;
    let (base, top) = overlay(&dir, size);
    let before = content(&top);
    let mut calls = Calls {
        n: 0,
        last: 0.0,
        cancel: true,
    };
    // SAFETY: valid arguments; calls outlives the call.
    let rc = unsafe {
        imgtool_commit(
            top.as_ptr(),
            null(),
            Some(count),
            (&mut calls as *mut Calls).cast(),
        )
    };
    assert_eq!(rc, IMGTOOL_ECANCELED, "{}", last_error());
    assert_eq!(
        content(&top),
        before,
        "a cancelled commit keeps the top's content"
    );

    let mut calls = Calls {
        n: 0,
        last: 0.0,
        cancel: false,
    };
    // SAFETY: valid arguments; calls outlives the call.
    let rc = unsafe {
        imgtool_commit(
            top.as_ptr(),
            null(),
            Some(count),
            (&mut calls as *mut Calls).cast(),
        )
    };
    assert_eq!(rc, IMGTOOL_OK, "{}", last_error());
    assert!(calls.n > 0);
    assert_eq!(content(&base), before, "the base now holds the top's view");
    assert_eq!(content(&top), before);
    // The top was emptied: nothing allocated in it any more.
    let t = open(&top, 0);
    let mut e = imgtool_extent::default();
    // SAFETY: live handle, valid out pointer.
    assert_eq!(
        unsafe { imgtool_block_status(t, 0, size, &mut e) },
        IMGTOOL_OK
    );
    assert_eq!((e.length, e.depth), (size, 1), "{e:?}");
    close(t);

    // Without a backing file there is nothing to commit into.
    let mut o = std::mem::MaybeUninit::<imgtool_commit_options>::uninit();
    // SAFETY: writable; init fills it.
    assert_eq!(
        unsafe { imgtool_commit_options_init(o.as_mut_ptr()) },
        IMGTOOL_OK
    );
    // SAFETY: initialised.
    let mut o = unsafe { o.assume_init() };
    o.format = c"raw".as_ptr();
    // SAFETY: valid arguments.
    let rc = unsafe { imgtool_commit(base.as_ptr(), &o, None, null_mut()) };
    assert_eq!(rc, IMGTOOL_EINVAL);
    assert_eq!(last_error(), "Image does not have a backing file");
    o.format = null();
    o.base = c"nosuch.raw".as_ptr();
    // SAFETY: valid arguments.
    let rc = unsafe { imgtool_commit(top.as_ptr(), &o, None, null_mut()) };
    assert_eq!(rc, IMGTOOL_EINVAL);
    assert!(
        last_error().contains("Did not find 'nosuch.raw'"),
        "{}",
        last_error()
    );
    o.base = null();
    o.flags = 0x10;
    // SAFETY: valid arguments.
    assert_eq!(
        unsafe { imgtool_commit(top.as_ptr(), &o, None, null_mut()) },
        IMGTOOL_EINVAL
    );
}

fn rebase_options() -> imgtool_rebase_options {
    let mut o = std::mem::MaybeUninit::<imgtool_rebase_options>::uninit();
    // SAFETY: writable; init fills it.
    assert_eq!(
        unsafe { imgtool_rebase_options_init(o.as_mut_ptr()) },
        IMGTOOL_OK
    );
    // SAFETY: initialised.
    unsafe { o.assume_init() }
}

#[test]
fn rebase_keeps_content() {
    let dir = TempDir::new();
    let size: u64 = 1 << 20;
    let (_base, top) = overlay(&dir, size);
    let other = dir.path("other.raw");
    assert_eq!(create(c"raw", &other, size, None), IMGTOOL_OK);
    let b = open(&other, IMGTOOL_OPEN_WRITABLE);
    write(b, 0, &pattern(300_000, 9));
    close(b);
    let before = content(&top);

    // Safe mode without a backing file name is refused.
    let mut o = rebase_options();
    // SAFETY: valid arguments.
    let rc = unsafe { imgtool_rebase(top.as_ptr(), &o, None, null_mut()) };
    assert_eq!(rc, IMGTOOL_EINVAL);
    assert_eq!(
        last_error(),
        "Must specify backing file (-b) or use unsafe mode (-u)"
    );

    o.backing_file = c"other.raw".as_ptr();
    o.backing_format = c"raw".as_ptr();
    let mut calls = Calls {
        n: 0,
        last: 0.0,
        cancel: false,
    };
    // SAFETY: valid arguments; calls outlives the call.
    let rc = unsafe {
        imgtool_rebase(
            top.as_ptr(),
            &o,
            Some(count),
            (&mut calls as *mut Calls).cast(),
        )
    };
    assert_eq!(rc, IMGTOOL_OK, "{}", last_error());
    assert_eq!(content(&top), before, "safe rebase keeps the guest content");
    assert!(info_json(&top).contains("\"backing-filename\": \"other.raw\""));

    // "" removes the backing file, still keeping the content.
    o.backing_file = c"".as_ptr();
    o.backing_format = null();
    // SAFETY: valid arguments.
    let rc = unsafe { imgtool_rebase(top.as_ptr(), &o, None, null_mut()) };
    assert_eq!(rc, IMGTOOL_OK, "{}", last_error());
    assert_eq!(content(&top), before);
    assert!(!info_json(&top).contains("backing-filename"));

    // Unsafe: only the header changes.
    o.flags = IMGTOOL_REBASE_UNSAFE;
    o.backing_file = c"base.raw".as_ptr();
    o.backing_format = c"raw".as_ptr();
    // SAFETY: valid arguments.
    let rc = unsafe { imgtool_rebase(top.as_ptr(), &o, None, null_mut()) };
    assert_eq!(rc, IMGTOOL_OK, "{}", last_error());
    assert!(info_json(&top).contains("\"backing-filename\": \"base.raw\""));
}

fn resize_options() -> imgtool_resize_options {
    let mut o = std::mem::MaybeUninit::<imgtool_resize_options>::uninit();
    // SAFETY: writable; init fills it.
    assert_eq!(
        unsafe { imgtool_resize_options_init(o.as_mut_ptr()) },
        IMGTOOL_OK
    );
    // SAFETY: initialised.
    unsafe { o.assume_init() }
}

#[test]
fn resize_grow_and_shrink() {
    for fmt in [c"raw", c"qcow2"] {
        let dir = TempDir::new();
        let path = dir.path("r.img");
        assert_eq!(create(fmt, &path, 1 << 20, None), IMGTOOL_OK);
        let img = open(&path, IMGTOOL_OPEN_WRITABLE);
        write(img, (1 << 20) - 4096, &[7u8; 4096]);
        close(img);
        // SAFETY: valid arguments throughout.
        unsafe {
            assert_eq!(
                imgtool_resize(path.as_ptr(), 3 << 20, null()),
                IMGTOOL_OK,
                "{}",
                last_error()
            );
        }
        let c = content(&path);
        assert_eq!(c.len(), 3 << 20);
        assert!(c[(1 << 20) - 4096..1 << 20].iter().all(|&b| b == 7));
        assert!(c[1 << 20..].iter().all(|&b| b == 0));
        let mut o = resize_options();
        // SAFETY: valid arguments throughout.
        unsafe {
            assert_eq!(imgtool_resize(path.as_ptr(), 1 << 19, &o), IMGTOOL_EINVAL);
            assert_eq!(
                last_error(),
                "Use the --shrink option to perform a shrink operation."
            );
            assert_eq!(imgtool_resize(path.as_ptr(), 0, &o), IMGTOOL_EINVAL);
            assert_eq!(last_error(), "New image size must be positive");
            o.preallocation = c"sometimes".as_ptr();
            assert_eq!(imgtool_resize(path.as_ptr(), 4 << 20, &o), IMGTOOL_EINVAL);
            assert_eq!(last_error(), "Invalid preallocation mode 'sometimes'");
            o.preallocation = null();
            o.flags = IMGTOOL_RESIZE_SHRINK;
            assert_eq!(
                imgtool_resize(path.as_ptr(), 1 << 19, &o),
                IMGTOOL_OK,
                "{}",
                last_error()
            );
        }
        assert_eq!(content(&path).len(), 1 << 19);
    }
}

#[test]
fn amend_qcow2_options() {
    let dir = TempDir::new();
    let path = dir.path("a.qcow2");
    assert_eq!(create(c"qcow2", &path, 1 << 20, None), IMGTOOL_OK);
    let img = open(&path, IMGTOOL_OPEN_WRITABLE);
    write(img, 0, &pattern(100_000, 4));
    close(img);
    let before = content(&path);
    let mut o = std::mem::MaybeUninit::<imgtool_amend_options>::uninit();
    // SAFETY: writable; init fills it.
    assert_eq!(
        unsafe { imgtool_amend_options_init(o.as_mut_ptr()) },
        IMGTOOL_OK
    );
    // SAFETY: initialised.
    let mut o = unsafe { o.assume_init() };
    // SAFETY: valid arguments throughout.
    unsafe {
        assert_eq!(
            imgtool_amend(path.as_ptr(), &o, None, null_mut()),
            IMGTOOL_EINVAL
        );
        assert_eq!(last_error(), "Must specify options (-o)");
        assert_eq!(
            imgtool_amend(path.as_ptr(), null(), None, null_mut()),
            IMGTOOL_EINVAL
        );
        o.options = c"refcount_bits=64,lazy_refcounts=on".as_ptr();
        let mut calls = Calls {
            n: 0,
            last: 0.0,
            cancel: true,
        };
        let rc = imgtool_amend(
            path.as_ptr(),
            &o,
            Some(count),
            (&mut calls as *mut Calls).cast(),
        );
        assert_eq!(rc, IMGTOOL_OK, "{}", last_error());
    }
    let j = info_json(&path);
    assert!(
        j.contains("\"refcount-bits\": 64") && j.contains("\"lazy-refcounts\": true"),
        "{j}"
    );
    assert_eq!(content(&path), before);
    // raw cannot amend.
    let raw = dir.path("r.raw");
    assert_eq!(create(c"raw", &raw, 65536, None), IMGTOOL_OK);
    o.options = c"size=1M".as_ptr();
    // SAFETY: valid arguments.
    let rc = unsafe { imgtool_amend(raw.as_ptr(), &o, None, null_mut()) };
    assert_eq!(rc, IMGTOOL_ENOTSUP);
    assert_eq!(
        last_error(),
        "Format driver 'raw' does not support option amendment"
    );
}

fn snapshot_out() -> imgtool_snapshot {
    imgtool_snapshot {
        struct_size: std::mem::size_of::<imgtool_snapshot>() as u32,
        has_icount: false,
        id: [0; IMGTOOL_SNAPSHOT_ID_SIZE],
        name: [0; IMGTOOL_SNAPSHOT_NAME_SIZE],
        vm_state_size: 0,
        date_sec: 0,
        date_nsec: 0,
        vm_clock_nsec: 0,
        icount: 0,
    }
}

#[test]
fn snapshot_create_apply_delete() {
    let dir = TempDir::new();
    let path = dir.path("s.qcow2");
    assert_eq!(create(c"qcow2", &path, 1 << 20, None), IMGTOOL_OK);
    let img = open(&path, IMGTOOL_OPEN_WRITABLE);
    write(img, 0, &pattern(70_000, 5));
    close(img);
    let at_snapshot = content(&path);
    let mut s = snapshot_out();
    // SAFETY: valid arguments throughout.
    unsafe {
        let rc = imgtool_snapshot_create(path.as_ptr(), c"before".as_ptr(), null(), &mut s);
        assert_eq!(rc, IMGTOOL_OK, "{}", last_error());
        assert_eq!(CStr::from_ptr(s.id.as_ptr()).to_str().unwrap(), "1");
        assert_eq!(CStr::from_ptr(s.name.as_ptr()).to_str().unwrap(), "before");
    }
    let img = open(&path, IMGTOOL_OPEN_WRITABLE);
    write(img, 1000, &[0xEE; 5000]);
    close(img);
    assert_ne!(content(&path), at_snapshot);
    // SAFETY: valid arguments throughout.
    unsafe {
        let rc = imgtool_snapshot_apply(path.as_ptr(), c"before".as_ptr(), null());
        assert_eq!(rc, IMGTOOL_OK, "{}", last_error());
    }
    assert_eq!(content(&path), at_snapshot);
    // SAFETY: valid arguments throughout.
    unsafe {
        let rc = imgtool_snapshot_delete(path.as_ptr(), c"before".as_ptr(), null());
        assert_eq!(rc, IMGTOOL_OK, "{}", last_error());
        let rc = imgtool_snapshot_delete(path.as_ptr(), c"before".as_ptr(), null());
        assert_eq!(rc, IMGTOOL_ENOENT);
        assert_eq!(
            last_error(),
            "Could not delete snapshot 'before': snapshot not found"
        );
        let rc = imgtool_snapshot_apply(path.as_ptr(), c"before".as_ptr(), null());
        assert_ne!(rc, IMGTOOL_OK);
        assert!(
            last_error().starts_with("Could not apply snapshot 'before'"),
            "{}",
            last_error()
        );
        assert_eq!(
            imgtool_snapshot_create(path.as_ptr(), null(), null(), null_mut()),
            IMGTOOL_EINVAL
        );
    }
    let img = open(&path, 0);
    let mut s = snapshot_out();
    // SAFETY: live handle, valid out struct.
    assert_eq!(
        unsafe { imgtool_snapshot_get(img, 0, &mut s) },
        IMGTOOL_ERANGE
    );
    close(img);
    // raw has no internal snapshots.
    let raw = dir.path("r.raw");
    assert_eq!(create(c"raw", &raw, 65536, None), IMGTOOL_OK);
    // SAFETY: valid arguments.
    let rc = unsafe { imgtool_snapshot_create(raw.as_ptr(), c"x".as_ptr(), null(), null_mut()) };
    assert_eq!(rc, IMGTOOL_ENOTSUP, "{}", last_error());
}
