//! Tests of the read-only whole-image operations: map, compare, measure,
//! and opening an internal snapshot; qemu-img is the oracle.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::process::Command;
use std::ptr::{null, null_mut};

use super::super::*;
use super::{last_error, open_options, TempDir};

/// Run qemu-img/qemu-io; None when it is not installed.
fn run(args: &[&str]) -> Option<String> {
    let out = Command::new(args[0]).args(&args[1..]).output().ok()?;
    assert!(
        out.status.success() || args[1] == "compare",
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn open_ro(path: &str, snapshot: Option<&CStr>) -> *mut imgtool_image {
    let p = CString::new(path).unwrap();
    let mut o = open_options(0);
    o.snapshot = snapshot.map_or(null(), CStr::as_ptr);
    let mut img = null_mut();
    // SAFETY: valid arguments.
    let rc = unsafe { imgtool_open(p.as_ptr(), &o, &mut img) };
    assert_eq!(rc, IMGTOOL_OK, "{}", last_error());
    img
}

fn close(img: *mut imgtool_image) {
    // SAFETY: live handle.
    assert_eq!(unsafe { imgtool_close(img) }, IMGTOOL_OK);
}

/// An image with data, zero clusters, a compressed cluster and a backing
/// file, made by qemu-img/qemu-io. None without qemu.
fn chain(dir: &TempDir) -> Option<(String, String)> {
    let base = dir.0.join("base.qcow2").to_str().unwrap().to_string();
    let top = dir.0.join("top.qcow2").to_str().unwrap().to_string();
    run(&["qemu-img", "create", "-q", "-f", "qcow2", &base, "4M"])?;
    run(&[
        "qemu-io",
        "-f",
        "qcow2",
        "-c",
        "write -P 1 0 1M",
        "-c",
        "write -c -P 2 2M 64k",
        &base,
    ])?;
    run(&[
        "qemu-img",
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "base.qcow2",
        "-F",
        "qcow2",
        &top,
    ])?;
    run(&[
        "qemu-io",
        "-f",
        "qcow2",
        "-c",
        "write -P 3 512k 100k",
        "-c",
        "write -z 3M 128k",
        &top,
    ])?;
    Some((base, top))
}

#[test]
fn map_entries_are_qemu_img_map() {
    let dir = TempDir::new_exclusive();
    let Some((_, top)) = chain(&dir) else {
        eprintln!("qemu-img not available; skipping");
        return;
    };
    let img = open_ro(&top, None);
    let mut size = 0;
    // SAFETY: live handle.
    assert_eq!(unsafe { imgtool_get_size(img, &mut size) }, IMGTOOL_OK);
    let mut e = imgtool_map_entry {
        struct_size: std::mem::size_of::<imgtool_map_entry>() as u32,
        flags: 0,
        start: 0,
        length: 0,
        offset: 0,
        depth: 0,
        has_offset: false,
        filename: null(),
    };
    let mut ours = Vec::new();
    let mut off = 0;
    while off < size {
        // SAFETY: live handle, valid out struct.
        let rc = unsafe { imgtool_map(img, off, size - off, &mut e) };
        assert_eq!(rc, IMGTOOL_OK, "{}", last_error());
        assert_eq!(e.start, off);
        let b = |f: u32| e.flags & f != 0;
        let mut line = format!(
            "{{ \"start\": {}, \"length\": {}, \"depth\": {}, \"present\": {}, \"zero\": {}, \"data\": {}, \"compressed\": {}",
            e.start,
            e.length,
            e.depth,
            b(IMGTOOL_EXTENT_PRESENT),
            b(IMGTOOL_EXTENT_ZERO),
            b(IMGTOOL_EXTENT_DATA),
            b(IMGTOOL_EXTENT_COMPRESSED)
        );
        if e.has_offset {
            line.push_str(&format!(", \"offset\": {}", e.offset));
            // SAFETY: a string owned by the handle, valid until close.
            let f = unsafe { CStr::from_ptr(e.filename) }.to_str().unwrap();
            assert!(f.ends_with(".qcow2"), "{f}");
        } else {
            assert!(e.filename.is_null());
        }
        line.push('}');
        ours.push(line);
        off += e.length;
    }
    let theirs = run(&["qemu-img", "map", "--output=json", &top]).unwrap();
    let theirs: Vec<String> = theirs
        .lines()
        .map(|l| {
            l.trim_start_matches('[')
                .trim_end_matches([',', ']'])
                .to_string()
        })
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(ours, theirs);
    // SAFETY: live handle; argument errors.
    unsafe {
        assert_eq!(imgtool_map(img, size, 1, &mut e), IMGTOOL_ERANGE);
        assert_eq!(imgtool_map(img, 0, 0, &mut e), IMGTOOL_ERANGE);
        assert_eq!(imgtool_map(img, 0, 1, null_mut()), IMGTOOL_EINVAL);
    }
    close(img);
}

unsafe extern "C" fn note_progress(pct: f64, user: *mut c_void) -> c_int {
    // SAFETY: user is the &mut f64 of the test.
    let last = unsafe { &mut *user.cast::<f64>() };
    assert!(pct >= *last && pct <= 100.0);
    *last = pct;
    1 // ignored: a comparison cannot be cancelled
}

fn compare_report() -> imgtool_compare_report {
    imgtool_compare_report {
        struct_size: std::mem::size_of::<imgtool_compare_report>() as u32,
        ..Default::default()
    }
}

#[test]
fn compare_like_qemu_img() {
    let dir = TempDir::new_exclusive();
    let Some((base, top)) = chain(&dir) else {
        eprintln!("qemu-img not available; skipping");
        return;
    };
    let flat = dir.0.join("flat.raw").to_str().unwrap().to_string();
    run(&["qemu-img", "convert", "-O", "raw", &top, &flat]).unwrap();
    let (t, f, b) = (
        open_ro(&top, None),
        open_ro(&flat, None),
        open_ro(&base, None),
    );
    let mut r = compare_report();
    let mut json: *mut c_char = null_mut();
    let mut last = 0.0f64;
    // SAFETY: live handles, valid out pointers; last outlives the call.
    unsafe {
        let rc = imgtool_compare(
            t,
            f,
            null(),
            &mut r,
            &mut json,
            Some(note_progress),
            (&mut last as *mut f64).cast(),
        );
        assert_eq!(rc, IMGTOOL_OK, "{}", last_error());
        assert_eq!((r.result, r.exit_code), (IMGTOOL_COMPARE_IDENTICAL, 0));
        assert_eq!(last, 100.0);
        let j = CStr::from_ptr(json).to_str().unwrap().to_string();
        imgtool_free_string(json);
        assert!(j.contains("\"result\": \"identical\""), "{j}");

        // Different: the offset is the one qemu-img names.
        let rc = imgtool_compare(t, b, null(), &mut r, null_mut(), None, null_mut());
        assert_eq!(rc, IMGTOOL_OK, "{}", last_error());
        assert_eq!(
            (r.result, r.exit_code),
            (IMGTOOL_COMPARE_CONTENT_MISMATCH, 1)
        );
        let q = run(&["qemu-img", "compare", &top, &base]).unwrap();
        assert_eq!(
            q.trim(),
            format!("Content mismatch at offset {}!", r.offset)
        );

        // Strict: allocation differs between the qcow2 and the raw copy.
        let mut o = std::mem::MaybeUninit::<imgtool_compare_options>::uninit();
        assert_eq!(imgtool_compare_options_init(o.as_mut_ptr()), IMGTOOL_OK);
        let mut o = o.assume_init();
        o.flags = IMGTOOL_COMPARE_STRICT;
        let rc = imgtool_compare(t, f, &o, &mut r, null_mut(), None, null_mut());
        assert_eq!(rc, IMGTOOL_OK, "{}", last_error());
        let q = run(&["qemu-img", "compare", "-s", &top, &flat]).unwrap();
        assert_eq!(r.exit_code, i32::from(!q.contains("identical")), "{q}");
        if r.result == IMGTOOL_COMPARE_STATUS_MISMATCH {
            assert_eq!(
                q.trim(),
                format!("Strict mode: Offset {} block status mismatch!", r.offset)
            );
        }
        assert_eq!(
            imgtool_compare(t, null_mut(), null(), &mut r, null_mut(), None, null_mut()),
            IMGTOOL_EINVAL
        );
    }
    close(t);
    close(f);
    close(b);
}

#[test]
fn measure_like_qemu_img() {
    let dir = TempDir::new_exclusive();
    let Some((_, top)) = chain(&dir) else {
        eprintln!("qemu-img not available; skipping");
        return;
    };
    let mut o = std::mem::MaybeUninit::<imgtool_measure_options>::uninit();
    // SAFETY: writable; init fills it.
    assert_eq!(
        unsafe { imgtool_measure_options_init(o.as_mut_ptr()) },
        IMGTOOL_OK
    );
    // SAFETY: initialised.
    let mut o = unsafe { o.assume_init() };
    o.out_format = c"qcow2".as_ptr();
    o.options = c"cluster_size=4096".as_ptr();
    let mut r = imgtool_measure_report {
        struct_size: std::mem::size_of::<imgtool_measure_report>() as u32,
        ..Default::default()
    };
    let mut json: *mut c_char = null_mut();
    // Neither a size nor a source.
    // SAFETY: valid arguments.
    assert_eq!(
        unsafe { imgtool_measure(&o, null_mut(), &mut r, null_mut()) },
        IMGTOOL_EINVAL
    );
    assert_eq!(
        last_error(),
        "Either --size N or one filename must be specified."
    );

    o.size = 1 << 30;
    // SAFETY: valid arguments.
    let rc = unsafe { imgtool_measure(&o, null_mut(), &mut r, &mut json) };
    assert_eq!(rc, IMGTOOL_OK, "{}", last_error());
    // SAFETY: from the library, freed once.
    let j = unsafe { CStr::from_ptr(json) }
        .to_str()
        .unwrap()
        .to_string();
    // SAFETY: as above.
    unsafe { imgtool_free_string(json) };
    let q = run(&[
        "qemu-img",
        "measure",
        "--output=json",
        "-O",
        "qcow2",
        "-o",
        "cluster_size=4096",
        "--size",
        "1G",
    ])
    .unwrap();
    assert_eq!(j.trim(), q.trim());
    assert!(j.contains(&format!("\"required\": {}", r.required)));

    // From an open source image.
    let img = open_ro(&top, None);
    o.size = IMGTOOL_SIZE_DEFAULT;
    // SAFETY: valid arguments, live handle.
    let rc = unsafe { imgtool_measure(&o, img, &mut r, &mut json) };
    assert_eq!(rc, IMGTOOL_OK, "{}", last_error());
    // SAFETY: from the library, freed once.
    let j = unsafe { CStr::from_ptr(json) }
        .to_str()
        .unwrap()
        .to_string();
    // SAFETY: as above.
    unsafe { imgtool_free_string(json) };
    let q = run(&[
        "qemu-img",
        "measure",
        "--output=json",
        "-O",
        "qcow2",
        "-o",
        "cluster_size=4096",
        &top,
    ])
    .unwrap();
    assert_eq!(j.trim(), q.trim());
    o.size = 1 << 20;
    // SAFETY: valid arguments, live handle.
    assert_eq!(
        unsafe { imgtool_measure(&o, img, &mut r, null_mut()) },
        IMGTOOL_EINVAL
    );
    assert_eq!(
        last_error(),
        "--size N cannot be used together with a filename."
    );
    close(img);
}

#[test]
fn open_internal_snapshot() {
    let dir = TempDir::new_exclusive();
    let p = dir.0.join("s.qcow2").to_str().unwrap().to_string();
    if run(&["qemu-img", "create", "-q", "-f", "qcow2", &p, "1M"]).is_none() {
        eprintln!("qemu-img not available; skipping");
        return;
    }
    run(&["qemu-io", "-c", "write -P 0x11 0 64k", &p]).unwrap();
    run(&["qemu-img", "snapshot", "-c", "snap1", &p]).unwrap();
    run(&["qemu-io", "-c", "write -P 0x22 0 64k", &p]).unwrap();
    for (snap, want) in [
        (None, 0x22u8),
        (Some(c"snap1"), 0x11),
        (Some(c"snapshot.id=1"), 0x11),
    ] {
        let img = open_ro(&p, snap);
        let mut b = [0u8; 512];
        // SAFETY: live handle, valid buffer.
        assert_eq!(
            unsafe { imgtool_read(img, b.as_mut_ptr().cast(), 512, 0) },
            IMGTOOL_OK
        );
        assert!(b.iter().all(|&x| x == want), "{snap:?}");
        close(img);
    }
    // Writable snapshot views do not exist.
    let c = CString::new(p).unwrap();
    let mut o = open_options(IMGTOOL_OPEN_WRITABLE);
    o.snapshot = c"snap1".as_ptr();
    let mut img = null_mut();
    // SAFETY: valid arguments.
    assert_ne!(
        unsafe { imgtool_open(c.as_ptr(), &o, &mut img) },
        IMGTOOL_OK
    );
    assert!(img.is_null());
}
