//! Tests of the functions added after the first C ABI: write_zeroes,
//! discard, get_info, check.

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

fn status(img: *mut imgtool_image, off: u64) -> imgtool_extent {
    let mut e = imgtool_extent::default();
    // SAFETY: live handle, valid out pointer.
    let r = unsafe { imgtool_block_status(img, off, u64::MAX, &mut e) };
    assert_eq!(r, IMGTOOL_OK, "{}", last_error());
    e
}

#[test]
fn write_zeroes_and_discard() {
    for (fmt, opts) in [(c"raw", None), (c"qcow2", Some(c"cluster_size=4096"))] {
        let dir = TempDir::new();
        let path = dir.path("z.img");
        let size: u64 = 1 << 20;
        assert_eq!(
            create(fmt, &path, size, opts),
            IMGTOOL_OK,
            "{}",
            last_error()
        );
        let img = open(&path, IMGTOOL_OPEN_WRITABLE);
        let data = pattern(200_000, 5);
        write(img, 0, &data);
        // SAFETY: live handle.
        unsafe {
            // Unaligned zeroing, with and without unmap.
            assert_eq!(
                imgtool_write_zeroes(img, 1000, 10_000, 0),
                IMGTOOL_OK,
                "{}",
                last_error()
            );
            assert_eq!(
                imgtool_write_zeroes(img, 50_000, 70_000, IMGTOOL_ZERO_MAY_UNMAP),
                IMGTOOL_OK,
                "{}",
                last_error()
            );
            assert_eq!(imgtool_write_zeroes(img, 0, 0, 0), IMGTOOL_OK);
            assert_eq!(imgtool_write_zeroes(img, size - 1, 2, 0), IMGTOOL_ERANGE);
            assert_eq!(imgtool_write_zeroes(img, 0, 1, 0x80), IMGTOOL_EINVAL);
            assert_eq!(imgtool_write_zeroes(null_mut(), 0, 1, 0), IMGTOOL_EINVAL);
        }
        let mut expect = data.clone();
        expect[1000..11_000].fill(0);
        expect[50_000..120_000].fill(0);
        assert_eq!(read(img, 0, data.len()), expect, "{fmt:?}");

        // Discard whole clusters: afterwards the range is no longer data.
        // SAFETY: live handle.
        unsafe {
            assert_eq!(
                imgtool_discard(img, 131_072, 65_536),
                IMGTOOL_OK,
                "{}",
                last_error()
            );
            assert_eq!(imgtool_discard(img, size, 1), IMGTOOL_ERANGE);
            assert_eq!(imgtool_discard(null_mut(), 0, 1), IMGTOOL_EINVAL);
        }
        let e = status(img, 131_072);
        assert_eq!(e.flags & IMGTOOL_EXTENT_DATA, 0, "{fmt:?} {e:?}");
        assert_eq!(read(img, 131_072, 65_536), vec![0u8; 65_536]);
        // SAFETY: live handle.
        assert_eq!(unsafe { imgtool_close(img) }, IMGTOOL_OK);

        // Read-only handles refuse both.
        let ro = open(&path, 0);
        // SAFETY: live handle.
        unsafe {
            assert_eq!(imgtool_write_zeroes(ro, 0, 512, 0), IMGTOOL_EACCES);
            assert_eq!(imgtool_discard(ro, 0, 512), IMGTOOL_EACCES);
            assert_eq!(imgtool_close(ro), IMGTOOL_OK);
        }
    }
}

fn info_of(img: *mut imgtool_image) -> imgtool_info {
    let mut i = std::mem::MaybeUninit::<imgtool_info>::zeroed();
    // SAFETY: zeroed is a valid imgtool_info (integers, NULL pointers,
    // false); we only set struct_size.
    let mut i = unsafe { i.assume_init_mut() }.to_owned();
    i.struct_size = std::mem::size_of::<imgtool_info>() as u32;
    // SAFETY: live handle, valid out struct.
    let r = unsafe { imgtool_get_info(img, &mut i) };
    assert_eq!(r, IMGTOOL_OK, "{}", last_error());
    i
}

fn c_str(p: *const c_char) -> Option<String> {
    // SAFETY: NULL or a NUL-terminated string from the library.
    (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_str().unwrap().to_string())
}

#[test]
fn get_info_struct() {
    let dir = TempDir::new();
    let base = dir.path("base.raw");
    let top = dir.path("top.qcow2");
    assert_eq!(create(c"raw", &base, 3 << 20, None), IMGTOOL_OK);
    let mut o = super::create_options();
    o.format = c"qcow2".as_ptr();
    o.filename = top.as_ptr();
    o.backing_file = c"base.raw".as_ptr();
    o.backing_format = c"raw".as_ptr();
    o.options = c"cluster_size=16384".as_ptr();
    // SAFETY: initialised options with valid strings.
    assert_eq!(
        unsafe { imgtool_create(&o) },
        IMGTOOL_OK,
        "{}",
        last_error()
    );

    let img = open(&top, 0);
    let mut i = info_of(img);
    assert_eq!(i.struct_size as usize, std::mem::size_of::<imgtool_info>());
    assert_eq!(i.virtual_size, 3 << 20);
    assert_eq!(i.cluster_size, 16384);
    assert_eq!(i.chain_length, 2);
    assert_eq!(c_str(i.format).as_deref(), Some("qcow2"));
    assert_eq!(c_str(i.backing_filename).as_deref(), Some("base.raw"));
    assert_eq!(c_str(i.backing_format).as_deref(), Some("raw"));
    let full = c_str(i.full_backing_filename).unwrap();
    assert!(full.ends_with("/base.raw"), "{full}");
    assert!(i.has_actual_size && i.actual_size > 0);
    assert!(!i.dirty && !i.encrypted && i.format_probed);
    assert_eq!(i.snapshot_count, 0);
    // SAFETY: filled by imgtool_get_info; freeing twice is allowed.
    unsafe {
        imgtool_info_free(&mut i);
        assert!(i.backing_filename.is_null() && i.full_backing_filename.is_null());
        imgtool_info_free(&mut i);
        imgtool_info_free(null_mut());
    }

    // struct_size is required; a larger one (newer header) is fine.
    let mut bad = i;
    bad.struct_size = 8;
    // SAFETY: live handle, valid struct.
    unsafe {
        assert_eq!(imgtool_get_info(img, &mut bad), IMGTOOL_EINVAL);
        assert!(
            last_error().contains("imgtool_info.struct_size is 8"),
            "{}",
            last_error()
        );
        assert_eq!(imgtool_get_info(img, null_mut()), IMGTOOL_EINVAL);
        assert_eq!(imgtool_get_info(null_mut(), &mut i), IMGTOOL_EINVAL);
    }
    #[repr(C)]
    struct Bigger {
        info: imgtool_info,
        extra: [u64; 4],
    }
    let mut b = Bigger {
        info: i,
        extra: [7; 4],
    };
    b.info.struct_size = std::mem::size_of::<Bigger>() as u32;
    // SAFETY: a larger struct that starts with an imgtool_info.
    unsafe {
        assert_eq!(imgtool_get_info(img, &mut b.info), IMGTOOL_OK);
        assert_eq!(
            b.info.struct_size as usize,
            std::mem::size_of::<imgtool_info>()
        );
        assert_eq!(
            b.extra, [7; 4],
            "bytes beyond the known struct are untouched"
        );
        imgtool_info_free(&mut b.info);
        assert_eq!(imgtool_close(img), IMGTOOL_OK);
    }

    // Raw: no cluster size, no backing; format given, not probed.
    let mut oo = super::open_options(0);
    oo.format = c"raw".as_ptr();
    let mut h = null_mut();
    // SAFETY: valid arguments.
    assert_eq!(
        unsafe { imgtool_open(base.as_ptr(), &oo, &mut h) },
        IMGTOOL_OK
    );
    let mut r = info_of(h);
    assert_eq!(r.cluster_size, 0);
    assert_eq!(r.chain_length, 1);
    assert!(r.backing_filename.is_null() && r.backing_format.is_null());
    assert!(!r.format_probed);
    assert_eq!(c_str(r.format).as_deref(), Some("raw"));
    // SAFETY: filled above; live handle.
    unsafe {
        imgtool_info_free(&mut r);
        assert_eq!(imgtool_close(h), IMGTOOL_OK);
    }
}

fn be64(b: &[u8], o: usize) -> u64 {
    u64::from_be_bytes(b[o..o + 8].try_into().unwrap())
}

/// Append a cluster to a small 64 KiB-cluster qcow2 (16-bit refcounts) and
/// give it a refcount of 1 that nothing references: a leak, as qemu-img
/// check sees it. Returns the leaked cluster's index.
pub(super) fn leak_cluster(path: &str) -> usize {
    let mut d = std::fs::read(path).unwrap();
    let reftable = be64(&d, 48) as usize;
    let refblock = be64(&d, reftable) as usize;
    let n = d.len().div_ceil(65536);
    d.resize(n * 65536, 0);
    d[refblock + 2 * n..refblock + 2 * n + 2].copy_from_slice(&1u16.to_be_bytes());
    d.resize((n + 1) * 65536, 0);
    std::fs::write(path, d).unwrap();
    n
}

fn check_options() -> imgtool_check_options {
    let mut o = std::mem::MaybeUninit::<imgtool_check_options>::uninit();
    // SAFETY: writable; _init fills every field.
    assert_eq!(
        unsafe { imgtool_check_options_init(o.as_mut_ptr()) },
        IMGTOOL_OK
    );
    // SAFETY: initialised above.
    unsafe { o.assume_init() }
}

unsafe extern "C" fn collect_log(line: *const c_char, user: *mut c_void) {
    // SAFETY: user is the &mut Vec<String> below; line is valid for the call.
    let v = unsafe { &mut *user.cast::<Vec<String>>() };
    // SAFETY: line is NUL-terminated for the duration of the call.
    v.push(
        unsafe { CStr::from_ptr(line) }
            .to_string_lossy()
            .into_owned(),
    );
}

unsafe extern "C" fn cancel_now(_pct: f64, _user: *mut c_void) -> c_int {
    1
}

fn report() -> imgtool_check_report {
    imgtool_check_report {
        struct_size: std::mem::size_of::<imgtool_check_report>() as u32,
        ..Default::default()
    }
}

#[test]
fn check_and_repair() {
    let dir = TempDir::new();
    let path = dir.path("c.qcow2");
    let p = path.to_str().unwrap().to_string();
    assert_eq!(create(c"qcow2", &path, 4 << 20, None), IMGTOOL_OK);
    let img = open(&path, IMGTOOL_OPEN_WRITABLE);
    write(img, 0, &pattern(300_000, 1));
    // SAFETY: live handle.
    assert_eq!(unsafe { imgtool_close(img) }, IMGTOOL_OK);

    // Clean, with the defaults (NULL options) and no JSON wanted.
    let mut r = report();
    // SAFETY: valid arguments.
    let rc = unsafe { imgtool_check(path.as_ptr(), null(), &mut r, null_mut(), None, null_mut()) };
    assert_eq!(rc, IMGTOOL_OK, "{}", last_error());
    assert_eq!(
        (r.exit_code, r.corruptions, r.leaks, r.check_errors),
        (0, 0, 0, 0)
    );
    assert!(r.total_clusters > 0 && r.allocated_clusters >= 5, "{r:?}");
    assert!(!r.repaired);

    // A leak: found, logged, JSON as the library's report.
    let leaked = leak_cluster(&p);
    let mut log: Vec<String> = Vec::new();
    let mut o = check_options();
    o.log = Some(collect_log);
    o.log_user = (&mut log as *mut Vec<String>).cast();
    let mut json: *mut c_char = null_mut();
    let mut r = report();
    // SAFETY: valid arguments; log outlives the call.
    let rc = unsafe { imgtool_check(path.as_ptr(), &o, &mut r, &mut json, None, null_mut()) };
    assert_eq!(rc, IMGTOOL_OK, "{}", last_error());
    assert_eq!((r.exit_code, r.leaks, r.corruptions), (3, 1, 0), "{r:?}");
    assert!(
        log.iter()
            .any(|l| l.contains(&format!("Leaked cluster {leaked} "))),
        "{log:?}"
    );
    let j = c_str(json).unwrap();
    // SAFETY: from imgtool_check.
    unsafe { imgtool_free_string(json) };
    let lib = crate::ops::check::check(
        &p,
        &crate::ops::check::CheckOptions::default(),
        &mut |_| {},
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(j, lib.to_json().to_pretty());
    assert!(j.contains("\"leaks\": 1"), "{j}");

    // Cancelled before it starts: nothing repaired.
    o.repair = IMGTOOL_REPAIR_LEAKS;
    o.log = None;
    // SAFETY: valid arguments.
    let rc = unsafe {
        imgtool_check(
            path.as_ptr(),
            &o,
            &mut r,
            null_mut(),
            Some(cancel_now),
            null_mut(),
        )
    };
    assert_eq!(rc, IMGTOOL_ECANCELED);

    // Repair the leak.
    let mut r = report();
    // SAFETY: valid arguments.
    let rc = unsafe { imgtool_check(path.as_ptr(), &o, &mut r, null_mut(), None, null_mut()) };
    assert_eq!(rc, IMGTOOL_OK, "{}", last_error());
    assert!(r.repaired, "{r:?}");
    assert_eq!((r.exit_code, r.leaks, r.leaks_fixed), (0, 0, 1), "{r:?}");

    // Argument errors.
    o.repair = 9;
    // SAFETY: valid pointers.
    unsafe {
        assert_eq!(
            imgtool_check(path.as_ptr(), &o, null_mut(), null_mut(), None, null_mut()),
            IMGTOOL_EINVAL
        );
        assert!(last_error().contains("repair mode 9"), "{}", last_error());
        let mut j: *mut c_char = std::ptr::dangling_mut();
        assert_eq!(
            imgtool_check(null(), null(), null_mut(), &mut j, None, null_mut()),
            IMGTOOL_EINVAL
        );
        assert!(j.is_null(), "json is set to NULL before any work");
        let mut small = report();
        small.struct_size = 4;
        assert_eq!(
            imgtool_check(
                path.as_ptr(),
                null(),
                &mut small,
                null_mut(),
                None,
                null_mut()
            ),
            IMGTOOL_EINVAL
        );
    }

    // raw has no check.
    let raw = dir.path("r.raw");
    assert_eq!(create(c"raw", &raw, 65536, None), IMGTOOL_OK);
    // SAFETY: valid arguments.
    let rc = unsafe {
        imgtool_check(
            raw.as_ptr(),
            null(),
            null_mut(),
            null_mut(),
            None,
            null_mut(),
        )
    };
    assert_eq!(rc, IMGTOOL_ENOTSUP);
    assert_eq!(last_error(), "This image format does not support checks");
}

static NOTICES: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

unsafe extern "C" fn record_notice(line: *const c_char, user: *mut c_void) {
    assert_eq!(user as usize, 0x5eed);
    // SAFETY: line is NUL-terminated for the duration of the call.
    let s = unsafe { CStr::from_ptr(line) }
        .to_string_lossy()
        .into_owned();
    NOTICES.lock().unwrap().push(s);
}

#[test]
fn notices_go_to_the_handler() {
    let dir = TempDir::new();
    let path = dir.path("n.qcow2");
    let p = path.to_str().unwrap().to_string();
    assert_eq!(create(c"qcow2", &path, 1 << 20, None), IMGTOOL_OK);
    let img = open(&path, IMGTOOL_OPEN_WRITABLE);
    write(img, 0, &pattern(65536, 3));
    // SAFETY: live handle.
    assert_eq!(unsafe { imgtool_close(img) }, IMGTOOL_OK);
    // Misalign the first L2 entry: reading cluster 0 hits corrupt metadata.
    let mut d = std::fs::read(&p).unwrap();
    let l1 = be64(&d, 40) as usize;
    let l2 = (be64(&d, l1) & 0x00ff_ffff_ffff_fe00) as usize;
    let e = be64(&d, l2) | 0x200;
    d[l2..l2 + 8].copy_from_slice(&e.to_be_bytes());
    std::fs::write(&p, d).unwrap();

    // SAFETY: record_notice is callable from any thread with this user.
    unsafe { imgtool_set_notice_handler(Some(record_notice), 0x5eed as *mut c_void) };
    let img = open(&path, 0);
    let mut b = [0u8; 512];
    // SAFETY: live handle, valid buffer.
    let rc = unsafe { imgtool_read(img, b.as_mut_ptr().cast(), b.len(), 0) };
    // SAFETY: restore stderr; live handle.
    unsafe {
        imgtool_set_notice_handler(None, null_mut());
        imgtool_close(img);
    }
    assert_ne!(rc, IMGTOOL_OK);
    let n = NOTICES.lock().unwrap();
    assert!(
        n.iter().any(|l| l.starts_with("qcow2: Image is corrupt")),
        "{n:?}"
    );
}

fn qemu(args: &[&str]) -> bool {
    std::process::Command::new(args[0])
        .args(&args[1..])
        .stdout(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

#[test]
fn snapshot_list() {
    let dir = TempDir::new_exclusive();
    let path = dir.path("s.qcow2");
    let p = path.to_str().unwrap();
    if !qemu(&["qemu-img", "create", "-q", "-f", "qcow2", p, "1M"]) {
        eprintln!("qemu-img not available; skipping");
        return;
    }
    let long = "n".repeat(300);
    assert!(qemu(&["qemu-img", "snapshot", "-c", "first", p]));
    assert!(qemu(&["qemu-img", "snapshot", "-c", &long, p]));
    let img = open(&path, 0);
    assert_eq!(info_of(img).snapshot_count, 2);
    let mut s = imgtool_snapshot {
        struct_size: std::mem::size_of::<imgtool_snapshot>() as u32,
        has_icount: false,
        id: [0; IMGTOOL_SNAPSHOT_ID_SIZE],
        name: [0; IMGTOOL_SNAPSHOT_NAME_SIZE],
        vm_state_size: 0,
        date_sec: 0,
        date_nsec: 0,
        vm_clock_nsec: 0,
        icount: 0,
    };
    let mut names = Vec::new();
    for i in 0.. {
        // SAFETY: live handle, valid out struct.
        let rc = unsafe { imgtool_snapshot_get(img, i, &mut s) };
        if rc == IMGTOOL_ERANGE {
            break;
        }
        assert_eq!(rc, IMGTOOL_OK, "{}", last_error());
        let id = c_str(s.id.as_ptr()).unwrap();
        let name = c_str(s.name.as_ptr()).unwrap();
        assert_eq!(id, (i + 1).to_string());
        assert!(s.date_sec > 1_600_000_000);
        names.push(name);
    }
    assert_eq!(names, vec!["first".to_string(), "n".repeat(255)]);
    // SAFETY: NULL out pointer is checked; live handle.
    unsafe {
        assert_eq!(imgtool_snapshot_get(img, 0, null_mut()), IMGTOOL_EINVAL);
        assert_eq!(imgtool_close(img), IMGTOOL_OK);
    }
}
