//! Every creation option of qcow, qed, vdi, vpc, vhdx and vmdk, valid and
//! invalid values, through `imgtool create` and `qemu-img create` with the
//! same arguments (in two directories, so names are equal): same exit
//! code, stdout (the `Formatting` line) and stderr, and `qemu-img info
//! --output=json` of both images equal apart from allocation and random
//! ids. Then the image qemu-img made, with some data written by qemu-io,
//! is read by imgtool as by qemu-img: `info` (human and JSON), `map`
//! (human and JSON) and `convert -O raw`.

mod common;

use common::*;
use std::path::Path;

/// (format, `-o` list, size); an empty list means no `-o`.
const CASES: &[(&str, &str, &str)] = &[
    // qcow: backing_file, backing_fmt, encryption, encrypt.*, protocol.
    ("qcow", "", "3M"),
    ("qcow", "", "1000"),
    ("qcow", "", "0"),
    ("qcow", "backing_file=base.qcow2", ""),
    ("qcow", "backing_file=base.qcow2,backing_fmt=qcow2", ""),
    ("qcow", "backing_file=base.raw,backing_fmt=raw", "5M"),
    ("qcow", "backing_file=base.qcow2,backing_fmt=raw", ""),
    ("qcow", "backing_file=missing.img,backing_fmt=raw", ""),
    ("qcow", "backing_file=missing.img,backing_fmt=raw", "1M"),
    ("qcow", "backing_fmt=qcow2", "1M"),
    ("qcow", "encryption=off", "1M"),
    ("qcow", "encryption=on", "1M"),
    ("qcow", "encryption=maybe", "1M"),
    ("qcow", "encrypt.format=aes", "1M"),
    ("qcow", "encrypt.format=aes,encrypt.key-secret=sec0", "1M"),
    ("qcow", "encrypt.format=luks", "1M"),
    ("qcow", "preallocation=off", "1M"),
    ("qcow", "preallocation=falloc", "1M"),
    ("qcow", "preallocation=full", "1M"),
    ("qcow", "preallocation=metadata", "1M"),
    ("qcow", "nocow=on", "1M"),
    ("qcow", "extent_size_hint=1M", "1M"),
    ("qcow", "bogus=1", "1M"),
    // qed: cluster_size, table_size, backing_file, backing_fmt.
    ("qed", "", "3M"),
    ("qed", "", "1000"),
    ("qed", "", "0"),
    ("qed", "cluster_size=4k", "3M"),
    ("qed", "cluster_size=32k", "3M"),
    ("qed", "cluster_size=1M", "3M"),
    ("qed", "cluster_size=64M", "3M"),
    ("qed", "cluster_size=2k", "3M"),
    ("qed", "cluster_size=48k", "3M"),
    ("qed", "cluster_size=128M", "3M"),
    ("qed", "cluster_size=abc", "3M"),
    ("qed", "table_size=1", "3M"),
    ("qed", "table_size=2", "3M"),
    ("qed", "table_size=16", "3M"),
    ("qed", "table_size=0", "3M"),
    ("qed", "table_size=3", "3M"),
    ("qed", "table_size=32", "3M"),
    ("qed", "cluster_size=4k,table_size=1", "2G"),
    ("qed", "cluster_size=4k,table_size=1", "512M"),
    ("qed", "backing_file=base.qcow2,backing_fmt=qcow2", ""),
    ("qed", "backing_file=base.raw,backing_fmt=raw", "2M"),
    ("qed", "backing_file=base.qcow2", ""),
    ("qed", "backing_fmt=raw", "1M"),
    ("qed", "preallocation=falloc", "1M"),
    ("qed", "preallocation=full", "1M"),
    ("qed", "preallocation=metadata", "1M"),
    ("qed", "nocow=off,extent_size_hint=0", "1M"),
    // vdi: static, protocol.
    ("vdi", "", "3M"),
    ("vdi", "", "1048577"),
    ("vdi", "", "0"),
    ("vdi", "static=on", "3M"),
    ("vdi", "static=on", "1000"),
    ("vdi", "static=off", "3M"),
    ("vdi", "static=yes", "3M"),
    ("vdi", "", "512T"),
    ("vdi", "preallocation=off", "1M"),
    ("vdi", "preallocation=falloc", "1M"),
    ("vdi", "preallocation=full", "1M"),
    ("vdi", "preallocation=metadata", "1M"),
    ("vdi", "static=on,preallocation=full", "1M"),
    ("vdi", "cluster_size=1M", "1M"),
    // vpc: subformat, force_size.
    ("vpc", "", "3M"),
    ("vpc", "", "1000"),
    ("vpc", "", "0"),
    ("vpc", "", "127G"),
    ("vpc", "", "2040G"),
    ("vpc", "", "3000G"),
    ("vpc", "subformat=dynamic", "5000000"),
    ("vpc", "subformat=fixed", "3M"),
    ("vpc", "subformat=fixed", "5000000"),
    ("vpc", "subformat=fixed", "3000G"),
    ("vpc", "subformat=Dynamic", "3M"),
    ("vpc", "subformat=sparse", "3M"),
    ("vpc", "force_size=on", "5000000"),
    ("vpc", "force_size=off", "5000000"),
    ("vpc", "force_size=on,subformat=fixed", "5000000"),
    ("vpc", "force_size=on", "3000G"),
    ("vpc", "force_size=1", "3M"),
    ("vpc", "preallocation=full", "3M"),
    // vhdx: block_size, log_size, block_state_zero, subformat.
    ("vhdx", "", "3M"),
    ("vhdx", "", "5000000"),
    ("vhdx", "", "0"),
    ("vhdx", "", "100G"),
    ("vhdx", "", "65T"),
    ("vhdx", "block_size=0", "3M"),
    ("vhdx", "block_size=1M", "3M"),
    ("vhdx", "block_size=8M", "3M"),
    ("vhdx", "block_size=64M", "3M"),
    ("vhdx", "block_size=256M", "3M"),
    ("vhdx", "block_size=512M", "3M"),
    ("vhdx", "block_size=3M", "3M"),
    ("vhdx", "block_size=512k", "3M"),
    ("vhdx", "block_size=1536k", "3M"),
    ("vhdx", "log_size=1M", "3M"),
    ("vhdx", "log_size=4M", "3M"),
    ("vhdx", "log_size=0", "3M"),
    ("vhdx", "log_size=1536k", "3M"),
    ("vhdx", "log_size=512k", "3M"),
    ("vhdx", "block_state_zero=on", "3M"),
    ("vhdx", "block_state_zero=off", "3M"),
    ("vhdx", "block_state_zero=x", "3M"),
    ("vhdx", "subformat=dynamic", "3M"),
    ("vhdx", "subformat=fixed", "3M"),
    ("vhdx", "subformat=fixed,block_size=1M", "3M"),
    ("vhdx", "subformat=fixed,block_state_zero=off", "3M"),
    ("vhdx", "subformat=Fixed", "3M"),
    ("vhdx", "subformat=diff", "3M"),
    ("vhdx", "preallocation=full", "3M"),
    // vmdk: adapter_type, hwversion, compat6, subformat, zeroed_grain,
    // toolsversion, backing_file, backing_fmt.
    ("vmdk", "", "3M"),
    ("vmdk", "", "1000"),
    ("vmdk", "", "0"),
    ("vmdk", "adapter_type=ide", "3M"),
    ("vmdk", "adapter_type=lsilogic", "3M"),
    ("vmdk", "adapter_type=buslogic", "3M"),
    ("vmdk", "adapter_type=legacyESX", "3M"),
    ("vmdk", "adapter_type=scsi", "3M"),
    ("vmdk", "adapter_type=ide", "200G"),
    ("vmdk", "adapter_type=lsilogic", "200G"),
    ("vmdk", "hwversion=4", "3M"),
    ("vmdk", "hwversion=6", "3M"),
    ("vmdk", "hwversion=7", "3M"),
    ("vmdk", "hwversion=undefined", "3M"),
    ("vmdk", "hwversion=x", "3M"),
    ("vmdk", "compat6=on", "3M"),
    ("vmdk", "compat6=off", "3M"),
    ("vmdk", "compat6=on,hwversion=6", "3M"),
    ("vmdk", "compat6=on,hwversion=7", "3M"),
    ("vmdk", "compat6=2", "3M"),
    ("vmdk", "subformat=monolithicSparse", "3M"),
    ("vmdk", "subformat=monolithicFlat", "3M"),
    ("vmdk", "subformat=twoGbMaxExtentSparse", "3M"),
    ("vmdk", "subformat=twoGbMaxExtentFlat", "3M"),
    ("vmdk", "subformat=twoGbMaxExtentSparse", "5G"),
    ("vmdk", "subformat=streamOptimized", "3M"),
    ("vmdk", "subformat=vmfs", "3M"),
    ("vmdk", "zeroed_grain=on", "3M"),
    ("vmdk", "zeroed_grain=off", "3M"),
    (
        "vmdk",
        "zeroed_grain=on,subformat=twoGbMaxExtentSparse",
        "3M",
    ),
    ("vmdk", "zeroed_grain=on,subformat=streamOptimized", "3M"),
    ("vmdk", "toolsversion=10240", "3M"),
    ("vmdk", "toolsversion=abc", "3M"),
    ("vmdk", "backing_file=base.vmdk", ""),
    ("vmdk", "backing_file=base.vmdk,backing_fmt=vmdk", "3M"),
    ("vmdk", "backing_file=base.qcow2,backing_fmt=qcow2", ""),
    ("vmdk", "backing_file=base.raw", ""),
    ("vmdk", "backing_fmt=vmdk", "3M"),
    ("vmdk", "preallocation=full", "3M"),
    ("vmdk", "subformat=monolithicFlat,preallocation=full", "3M"),
    (
        "vmdk",
        "subformat=monolithicFlat,preallocation=metadata",
        "3M",
    ),
    ("vmdk", "preallocation=metadata", "3M"),
];

/// Bases the backing cases name, in each directory.
fn bases(d: &Path) {
    qemu_img_ok(d, &["create", "-q", "-f", "qcow2", "base.qcow2", "4M"]);
    qemu_img_ok(d, &["create", "-q", "-f", "raw", "base.raw", "4M"]);
    qemu_img_ok(d, &["create", "-q", "-f", "vmdk", "base.vmdk", "4M"]);
}

/// qemu-img's info JSON (normalized), or its error when it cannot open it.
fn info_json(d: &Path, fmt: &str, file: &str) -> Result<Json, String> {
    let o = qemu_img(d, &["info", "-f", fmt, "--output=json", file]);
    if !o.ok() {
        return Err(format!("{:?} {}", o.code, o.stderr));
    }
    let mut j = parse_json("qemu-img info", &o.stdout);
    for k in ["actual-size", "cid", "parent-cid"] {
        j.remove_everywhere(k);
    }
    Ok(j)
}

/// A few writes inside an image of `size` bytes: unaligned data, zeros.
fn writes(size: u64) -> Vec<String> {
    let mut w = vec![format!("write -P 0x5a 0 {}", size.min(64 * KIB))];
    if size >= 2 * MIB {
        w.push(format!("write -P 0x6b {} 5000", MIB - 512));
        w.push(format!("write -z {} 64k", MIB + 256 * KIB));
        w.push(format!("write -P 0x7c {} 512", size - 512));
    }
    w
}

/// One case; returns the problems found.
fn run_case(i: usize, fmt: &str, opts: &str, size: &str) -> Vec<String> {
    let name = format!("{fmt} -o {opts:?} {size}");
    let dir = TempDir::new(&format!("create-opts-{i}"));
    let (qd, od) = (dir.sub("q"), dir.sub("o"));
    let backed = opts.contains("backing");
    if backed {
        bases(&qd);
        bases(&od);
    }
    let file = format!("img.{fmt}");
    let mut args = vec!["create", "-f", fmt];
    if !opts.is_empty() {
        args.extend(["-o", opts]);
    }
    args.push(&file);
    if !size.is_empty() {
        args.push(size);
    }
    let q = qemu_img(&qd, &args);
    let o = imgtool(&od, &args);
    let mut bad = Vec::new();
    if q.code != o.code || as_imgtool(&q.stderr) != o.stderr || q.stdout != o.stdout {
        bad.push(format!(
            "{name}: create outcome\n{}\n{}",
            q.describe(),
            o.describe()
        ));
        return bad;
    }
    if !q.ok() {
        return bad;
    }
    let (qi, oi) = (info_json(&qd, fmt, &file), info_json(&od, fmt, &file));
    if qi != oi {
        bad.push(format!("{name}: info\nqemu-img: {qi:?}\nimgtool:  {oi:?}"));
    }
    // Contents (zeros, or the backing file's) compare equal; huge sparse
    // images are read in full by qemu-img for some formats: skip those.
    let Ok(qi) = qi else { return bad };
    let vsize = match qi.get("virtual-size") {
        Some(Json::Num(n)) => n.parse::<u64>().unwrap_or(0),
        _ => 0,
    };
    if vsize <= 64 * MIB {
        let c = qemu_img(
            dir.path(),
            &[
                "compare",
                "-f",
                fmt,
                "-F",
                fmt,
                &format!("q/{file}"),
                &format!("o/{file}"),
            ],
        );
        if !c.ok() {
            bad.push(format!("{name}: compare\n{}", c.describe()));
        }
    }
    // qemu-img's image, with data where qemu-io can write it, read by us.
    if vsize > 0 && vsize <= 64 * MIB && !opts.contains("streamOptimized") {
        qemu_io(&qd, fmt, &file, &writes(vsize));
    }
    let fixed_vpc = fmt == "vpc" && opts.contains("fixed");
    let f_args: Vec<&str> = if fixed_vpc { vec!["-f", "vpc"] } else { vec![] };
    let mut cmds: Vec<Vec<&str>> = vec![vec!["info"], vec!["info", "--output=json"]];
    if backed {
        cmds.push(vec!["info", "--backing-chain"]);
    }
    if vsize <= 64 * MIB {
        cmds.push(vec!["map", "--output=json"]);
        cmds.push(vec!["map"]);
    }
    for c in cmds {
        let mut a = c.clone();
        a.extend(&f_args);
        a.push(&file);
        let q = qemu_img(&qd, &a);
        let o = imgtool(&qd, &a);
        if q.code != o.code || as_imgtool(&q.stderr) != o.stderr || q.stdout != o.stdout {
            bad.push(format!("{name}: {c:?}\n{}\n{}", q.describe(), o.describe()));
        }
    }
    if vsize <= 64 * MIB {
        let mut a = vec!["convert"];
        a.extend(&f_args);
        a.extend(["-O", "raw", &file]);
        let mut qa = a.clone();
        qa.push("q.raw");
        a.push("o.raw");
        qemu_img_ok(&qd, &qa);
        let o = imgtool(&qd, &a);
        if !o.ok() {
            bad.push(format!("{name}: convert -O raw\n{}", o.describe()));
        } else if read(&qd.join("q.raw")) != read(&qd.join("o.raw")) {
            bad.push(format!("{name}: convert -O raw: contents differ"));
        }
    }
    bad
}

#[test]
fn create_options_like_qemu() {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let bad: Vec<String> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    let mut bad = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let Some(&(fmt, opts, size)) = CASES.get(i) else {
                            break;
                        };
                        bad.extend(run_case(i, fmt, opts, size));
                    }
                    bad
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("worker panicked"))
            .collect()
    });
    assert!(
        bad.is_empty(),
        "{} problem(s):\n\n{}",
        bad.len(),
        bad.join("\n\n")
    );
}
