//! `imgtool create` for each option set, against `qemu-img create` with the
//! same arguments: same exit code, same stdout ("Formatting ..." line) and
//! stderr; on success a clean image whose `qemu-img info` (apart from
//! allocation and file length) and `qemu-img map` (apart from host offsets)
//! equal those of the image qemu-img created.

mod common;

use common::*;
use std::path::Path;

/// Both sides get identical backing files to point at.
fn prepare(dir: &Path) {
    qemu_img_ok(dir, &["create", "-q", "-f", "qcow2", "base.qcow2", "8M"]);
    qemu_io(
        dir,
        "qcow2",
        "base.qcow2",
        &["write -P 0x42 1M 64k".to_string()],
    );
    std::fs::write(dir.join("base.raw"), text_bytes(3, 3 * MIB as usize)).unwrap();
}

/// `qemu-img map --output=json` without what depends on where a writer put
/// its clusters in the host file: host offsets, and `zero` of allocated
/// data (qemu-img derives it from holes in the host file, so metadata placed
/// between preallocated clusters turns it off without changing contents).
/// Adjacent extents that become equal are merged.
fn map_without_offsets(dir: &Path, file: &str) -> (Option<i32>, Option<Json>, String) {
    let o = qemu_img(dir, &["map", "--output=json", file]);
    let j = if o.ok() {
        let mut j = parse_json("qemu-img map", &o.stdout);
        j.remove_everywhere("offset");
        let Json::Arr(extents) = j else {
            panic!("map is not an array")
        };
        let num = |e: &Json, k: &str| match e.get(k) {
            Some(Json::Num(n)) => n.parse::<u64>().unwrap(),
            _ => panic!("map extent without {k}"),
        };
        let mut merged: Vec<Json> = Vec::new();
        for mut e in extents {
            if e.get("data") == Some(&Json::Bool(true)) {
                e.remove_everywhere("zero");
            }
            let key = |e: &Json| {
                let mut e = e.clone();
                e.remove_everywhere("start");
                e.remove_everywhere("length");
                e
            };
            if let Some(last) = merged.last_mut() {
                if key(last) == key(&e)
                    && num(last, "start") + num(last, "length") == num(&e, "start")
                {
                    let len = num(last, "length") + num(&e, "length");
                    if let Json::Obj(m) = last {
                        for (k, v) in m.iter_mut() {
                            if k == "length" {
                                *v = Json::Num(len.to_string());
                            }
                        }
                    }
                    continue;
                }
            }
            merged.push(e);
        }
        Some(Json::Arr(merged))
    } else {
        None
    };
    (o.code, j, o.stderr)
}

fn check_create(name: &str, fmt: &str, extra: &[&str], size: Option<&str>) {
    let dir = TempDir::new(&format!("create_{name}"));
    let qd = dir.sub("q");
    let od = dir.sub("o");
    prepare(&qd);
    prepare(&od);
    let file = if fmt == "raw" { "x.raw" } else { "x.qcow2" };
    let mut args = vec!["create", "-f", fmt];
    args.extend_from_slice(extra);
    args.push(file);
    if let Some(s) = size {
        args.push(s);
    }
    let q = qemu_img(&qd, &args);
    let o = imgtool(&od, &args);
    assert_outcome_matches(&q, &o);
    if !q.ok() {
        assert!(
            !od.join(file).exists() || qd.join(file).exists(),
            "imgtool left a file where qemu-img left none"
        );
        return;
    }
    assert!(od.join(file).exists(), "no image created");
    if fmt == "qcow2" {
        let c = qemu_img(&od, &["check", file]);
        let qc = qemu_img(&qd, &["check", file]);
        assert_eq!(
            c.code,
            qc.code,
            "qemu-img check exit code\nours: {}\nqemu: {}",
            c.describe(),
            qc.describe()
        );
        if qc.ok() {
            assert_qemu_check_clean(&od, file);
        }
    }
    let theirs = info_json_normalized(&qd, file);
    let ours = info_json_normalized(&od, file);
    assert_eq!(
        ours, theirs,
        "{name}: qemu-img info of our image differs from qemu-img's image"
    );
    // qemu's file driver writes the first 4 KiB of a preallocated raw file
    // (to probe alignment); how much of the start a writer touches is a host
    // detail, so raw preallocation is judged by length and contents only.
    let raw_prealloc = fmt == "raw" && extra.iter().any(|a| a.contains("preallocation"));
    assert!(
        raw_prealloc || map_without_offsets(&od, file) == map_without_offsets(&qd, file),
        "{name}: qemu-img map (without host offsets) differs\nours: {:?}\nqemu: {:?}",
        map_without_offsets(&od, file),
        map_without_offsets(&qd, file)
    );
    if fmt == "raw" {
        assert_eq!(
            std::fs::metadata(od.join(file)).unwrap().len(),
            std::fs::metadata(qd.join(file)).unwrap().len(),
            "raw file length is the virtual size"
        );
        assert_bytes_eq("raw contents", &read(&qd.join(file)), &read(&od.join(file)));
    }
}

macro_rules! cases {
    ($($name:ident: $fmt:literal, [$($a:literal),*], $size:expr;)*) => {
        $( #[test] fn $name() { check_create(stringify!($name), $fmt, &[$($a),*], $size); } )*
    };
}

cases! {
    qcow2_defaults: "qcow2", [], Some("64M");
    qcow2_quiet: "qcow2", ["-q"], Some("64M");
    compat_010: "qcow2", ["-o", "compat=0.10"], Some("64M");
    compat_11: "qcow2", ["-o", "compat=1.1"], Some("64M");
    compat_v3_alias: "qcow2", ["-o", "compat=v3"], Some("64M");
    cluster_512: "qcow2", ["-o", "cluster_size=512"], Some("16M");
    // L1 tables longer than one refcount block covers (this hung once).
    cluster_512_l1_spans_refblocks: "qcow2", ["-o", "cluster_size=512"], Some("5G");
    cluster_1k_refcount_64_l1_spans_refblocks: "qcow2", ["-o", "cluster_size=1k,refcount_bits=64"], Some("4G");
    cluster_4k: "qcow2", ["-o", "cluster_size=4k"], Some("64M");
    cluster_2m: "qcow2", ["-o", "cluster_size=2M"], Some("1G");
    refcount_1: "qcow2", ["-o", "refcount_bits=1"], Some("64M");
    refcount_2_cluster_512: "qcow2", ["-o", "refcount_bits=2,cluster_size=512"], Some("32M");
    refcount_8: "qcow2", ["-o", "refcount_bits=8"], Some("64M");
    refcount_16: "qcow2", ["-o", "refcount_bits=16"], Some("64M");
    refcount_64: "qcow2", ["-o", "refcount_bits=64"], Some("64M");
    extended_l2: "qcow2", ["-o", "extended_l2=on"], Some("64M");
    extended_l2_16k: "qcow2", ["-o", "extended_l2=on,cluster_size=16k"], Some("64M");
    lazy_refcounts: "qcow2", ["-o", "lazy_refcounts=on"], Some("64M");
    zstd: "qcow2", ["-o", "compression_type=zstd"], Some("64M");
    several_options: "qcow2", ["-o", "cluster_size=8k", "-o", "refcount_bits=4,lazy_refcounts=on"], Some("100M");
    prealloc_off: "qcow2", ["-o", "preallocation=off"], Some("4M");
    prealloc_metadata: "qcow2", ["-o", "preallocation=metadata"], Some("16M");
    prealloc_metadata_extended_l2: "qcow2", ["-o", "preallocation=metadata,extended_l2=on"], Some("8M");
    prealloc_metadata_cluster_512: "qcow2", ["-o", "preallocation=metadata,cluster_size=512"], Some("2M");
    prealloc_falloc: "qcow2", ["-o", "preallocation=falloc"], Some("4M");
    prealloc_full: "qcow2", ["-o", "preallocation=full"], Some("4M");
    size_0: "qcow2", [], Some("0");
    size_1000: "qcow2", [], Some("1000");
    size_1_5m: "qcow2", [], Some("1.5M");
    size_hex: "qcow2", [], Some("0x100000");
    size_2t: "qcow2", [], Some("2T");
    size_in_options: "qcow2", ["-o", "size=2M"], None;
    data_file: "qcow2", ["-o", "data_file=d.raw"], Some("4M");
    backing_qcow2: "qcow2", ["-b", "base.qcow2", "-F", "qcow2"], None;
    backing_raw_bigger: "qcow2", ["-b", "base.raw", "-F", "raw"], Some("16M");
    backing_in_options: "qcow2", ["-o", "backing_file=base.qcow2,backing_fmt=qcow2"], None;
    backing_cluster_512: "qcow2", ["-o", "cluster_size=512", "-b", "base.qcow2", "-F", "qcow2"], Some("2M");
    backing_compat_010: "qcow2", ["-o", "compat=0.10", "-b", "base.qcow2", "-F", "qcow2"], Some("8M");
    backing_unsafe_missing: "qcow2", ["-u", "-b", "nonexist.qcow2", "-F", "qcow2"], Some("1M");
    raw_default: "raw", [], Some("1M");
    raw_1000: "raw", [], Some("1000");
    raw_0: "raw", [], Some("0");
    raw_prealloc_falloc: "raw", ["-o", "preallocation=falloc"], Some("1M");
    raw_prealloc_full: "raw", ["-o", "preallocation=full"], Some("1M");

    // qemu-img refuses these; so must we, with its message and exit code.
    err_cluster_not_power_of_two: "qcow2", ["-o", "cluster_size=1000"], Some("64M");
    err_cluster_too_big: "qcow2", ["-o", "cluster_size=4M"], Some("64M");
    err_cluster_too_small: "qcow2", ["-o", "cluster_size=256"], Some("64M");
    err_refcount_3: "qcow2", ["-o", "refcount_bits=3"], Some("64M");
    err_refcount_128: "qcow2", ["-o", "refcount_bits=128"], Some("64M");
    err_lazy_v2: "qcow2", ["-o", "compat=0.10,lazy_refcounts=on"], Some("64M");
    err_extended_l2_v2: "qcow2", ["-o", "compat=0.10,extended_l2=on"], Some("64M");
    err_refcount_v2: "qcow2", ["-o", "compat=0.10,refcount_bits=1"], Some("64M");
    err_zstd_v2: "qcow2", ["-o", "compression_type=zstd,compat=0.10"], Some("64M");
    err_extended_l2_4k: "qcow2", ["-o", "extended_l2=on,cluster_size=4k"], Some("64M");
    err_prealloc_bogus: "qcow2", ["-o", "preallocation=bogus"], Some("64M");
    err_compat_2: "qcow2", ["-o", "compat=2"], Some("64M");
    err_bool_maybe: "qcow2", ["-o", "lazy_refcounts=maybe"], Some("64M");
    err_compression_lzo: "qcow2", ["-o", "compression_type=lzo"], Some("64M");
    err_backing_without_format: "qcow2", ["-o", "backing_file=base.qcow2"], None;
    err_backing_missing: "qcow2", ["-b", "nonexist.qcow2", "-F", "qcow2"], None;
    err_backing_same_file: "qcow2", ["-b", "x.qcow2", "-F", "qcow2"], Some("1M");
    err_size_twice: "qcow2", ["-o", "size=2M"], Some("3M");
    err_size_8e: "qcow2", [], Some("8E");
    err_size_u64_max: "qcow2", [], Some("18446744073709551615");
    err_size_bad_suffix: "qcow2", [], Some("1Q");
    err_size_float_exp: "qcow2", [], Some("1e6");
    err_size_negative: "qcow2", [], Some("-1");
    err_no_size: "qcow2", [], None;
    err_unknown_option: "qcow2", ["-o", "foo=bar"], Some("1M");
    err_unknown_format: "foo", [], Some("1M");
    err_raw_qcow2_option: "raw", ["-o", "cluster_size=4k"], Some("1M");
    err_encryption_without_secret: "qcow2", ["-o", "encryption=on"], Some("1M");
}

#[test]
fn json_backing_file() {
    // `-b json:{...}` opens the options tree as the backing image; a
    // driver inside it does not replace -F.
    let j = r#"json:{"driver":"qcow2","file":{"filename":"base.qcow2"}}"#;
    let missing = r#"json:{"driver":"qcow2","file":{"filename":"nonexist"}}"#;
    for args in [
        vec!["create", "-f", "qcow2", "-b", j, "-F", "qcow2", "x.qcow2"],
        vec!["create", "-f", "qcow2", "-b", j, "x.qcow2"],
        vec![
            "create", "-f", "qcow2", "-b", missing, "-F", "qcow2", "x.qcow2",
        ],
    ] {
        let dir = TempDir::new("create_json_backing");
        let qd = dir.sub("q");
        let od = dir.sub("o");
        prepare(&qd);
        prepare(&od);
        let q = qemu_img(&qd, &args);
        let o = imgtool(&od, &args);
        assert_outcome_matches(&q, &o);
        if q.ok() {
            assert_eq!(
                info_json_normalized(&od, "x.qcow2"),
                info_json_normalized(&qd, "x.qcow2"),
                "{args:?}: info"
            );
        }
    }
}

/// Preallocated qcow2 images are laid out as qemu-img lays them: the same
/// `qemu-img map` with host offsets (falloc/full put refcount structures
/// first, all data in one run, L2 tables in the freed old refcount table
/// and after the data; metadata preallocation zero-fills the cut last
/// cluster; a refcount block a run needs goes after the run), the same
/// header and file length.
#[test]
fn qcow2_preallocation_layout() {
    for (opts, size) in [
        ("preallocation=falloc", "0"),
        ("preallocation=falloc", "3146240"),
        ("preallocation=falloc", "1G"),
        ("preallocation=full", "700M"),
        ("preallocation=falloc,cluster_size=4096", "700M"),
        ("preallocation=falloc,extended_l2=on", "1G"),
        ("preallocation=full,refcount_bits=1,cluster_size=512", "5M"),
        ("preallocation=metadata", "3146240"),
        ("preallocation=metadata", "2G"),
        (
            "preallocation=metadata,refcount_bits=2,cluster_size=4096",
            "700M",
        ),
    ] {
        let dir = TempDir::new("create_prealloc_layout");
        let (qd, od) = (dir.sub("q"), dir.sub("o"));
        let args = ["create", "-q", "-f", "qcow2", "-o", opts, "x.qcow2", size];
        qemu_img_ok(&qd, &args);
        let o = imgtool(&od, &args);
        assert!(o.ok(), "{opts} {size}: {}", o.describe());
        let look = |d: &Path| {
            let map = qemu_img(d, &["map", "--output=json", "x.qcow2"])
                .expect_ok()
                .stdout;
            let check = qemu_img(d, &["check", "x.qcow2"]).expect_ok().stdout;
            let path = d.join("x.qcow2");
            let mut header = [0u8; 104];
            std::io::Read::read_exact(&mut std::fs::File::open(&path).unwrap(), &mut header)
                .unwrap();
            (map, check, std::fs::metadata(&path).unwrap().len(), header)
        };
        assert_eq!(look(&qd), look(&od), "{opts} {size}");
    }
}
