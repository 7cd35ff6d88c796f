//! CLI error paths: for each wrong invocation, exit code, stdout and stderr
//! equal qemu-img's with the program name replaced (`qemu-img:` ->
//! `imgtool:`). Also `-o help` listings, and a symlink named `qemu-img`
//! speaking as qemu-img.

mod common;

use common::*;
use std::path::Path;

fn prepare(dir: &Path) {
    qemu_img_ok(dir, &["create", "-q", "-f", "qcow2", "good.qcow2", "1M"]);
    std::fs::write(dir.join("plain.raw"), vec![0u8; 65536]).unwrap();
}

fn check(args: &[&str]) {
    let dir = TempDir::new("errors");
    let qd = dir.sub("q");
    let od = dir.sub("o");
    prepare(&qd);
    prepare(&od);
    let q = qemu_img(&qd, args);
    let o = imgtool(&od, args);
    assert_outcome_matches(&q, &o);
    // Where qemu-img succeeded and wrote an image, ours must hold the same.
    if q.ok() {
        for e in std::fs::read_dir(&qd).unwrap() {
            let name = e.unwrap().file_name().into_string().unwrap();
            if name == "good.qcow2" || name == "plain.raw" {
                continue;
            }
            assert!(
                od.join(&name).exists(),
                "{args:?}: imgtool did not write {name}"
            );
            assert_bytes_eq(
                &format!("{args:?}: contents of {name}"),
                &qemu_raw_bytes(&qd, &name),
                &qemu_raw_bytes(&od, &name),
            );
        }
    }
}

macro_rules! cases {
    ($($name:ident: [$($a:literal),*];)*) => {
        $( #[test] fn $name() { check(&[$($a),*]); } )*
    };
}

cases! {
    no_arguments: [];
    unknown_command: ["bogus"];
    unknown_global_option: ["--bogus"];
    info_missing_file: ["info", "nonexist.qcow2"];
    info_missing_file_in_missing_dir: ["info", "nodir/nonexist.qcow2"];
    info_no_filename: ["info"];
    info_format_but_no_filename: ["info", "-f", "raw"];
    info_two_filenames: ["info", "good.qcow2", "good.qcow2"];
    info_unknown_format: ["info", "-f", "foo", "good.qcow2"];
    info_wrong_format: ["info", "-f", "qcow2", "plain.raw"];
    info_bad_output: ["info", "--output=xml", "good.qcow2"];
    info_unknown_option: ["info", "--bogus", "good.qcow2"];
    info_directory: ["info", "."];
    create_unknown_format: ["create", "-f", "foo", "x.img", "1M"];
    create_bad_size_suffix: ["create", "-f", "qcow2", "x.qcow2", "1Q"];
    create_bad_size_text: ["create", "-f", "qcow2", "x.qcow2", "big"];
    create_size_too_big: ["create", "-f", "raw", "x.raw", "9E"];
    create_negative_size: ["create", "-f", "qcow2", "x.qcow2", "-5"];
    create_bad_option: ["create", "-f", "qcow2", "-o", "foo=bar", "x.qcow2", "1M"];
    create_bad_option_value: ["create", "-f", "qcow2", "-o", "cluster_size=64k,,bad", "x.qcow2", "1M"];
    create_no_filename: ["create", "-f", "qcow2"];
    create_missing_dir: ["create", "-f", "qcow2", "nodir/x.qcow2", "1M"];
    create_too_many_args: ["create", "-f", "qcow2", "x.qcow2", "1M", "extra"];
    create_options_help_qcow2: ["create", "-f", "qcow2", "-o", "help"];
    create_options_help_raw: ["create", "-f", "raw", "-o", "help"];
    convert_missing_source: ["convert", "-O", "raw", "nonexist", "out.raw"];
    convert_unknown_output_format: ["convert", "-O", "foo", "good.qcow2", "out"];
    convert_bad_output_option_value: ["convert", "-O", "qcow2", "-o", "cluster_size=3k", "good.qcow2", "out.qcow2"];
    convert_unknown_output_option: ["convert", "-O", "qcow2", "-o", "foo=bar", "good.qcow2", "out.qcow2"];
    convert_compress_to_raw: ["convert", "-c", "-O", "raw", "good.qcow2", "out.raw"];
    convert_no_target: ["convert", "-O", "raw", "good.qcow2"];
    convert_bad_sparse_size: ["convert", "-S", "foo", "-O", "raw", "good.qcow2", "out.raw"];
    convert_bad_workers: ["convert", "-m", "0", "-O", "raw", "good.qcow2", "out.raw"];
    convert_wrong_source_format: ["convert", "-f", "qcow2", "-O", "raw", "plain.raw", "out.raw"];
    convert_unknown_source_format: ["convert", "-f", "foo", "-O", "raw", "good.qcow2", "out.raw"];
    convert_options_help: ["convert", "-O", "qcow2", "-o", "help"];
    convert_backing_to_raw: ["convert", "-B", "good.qcow2", "-O", "raw", "good.qcow2", "out.raw"];
    convert_backing_without_format: ["convert", "-B", "good.qcow2", "-O", "qcow2", "good.qcow2", "out.qcow2"];
    convert_backing_option_without_format: ["convert", "-O", "qcow2", "-o", "backing_file=x", "good.qcow2", "out.qcow2"];
    convert_existing_target_missing: ["convert", "-n", "-O", "raw", "good.qcow2", "missing.raw"];
    convert_sparse_size_not_sector_multiple: ["convert", "-S", "511", "-O", "raw", "good.qcow2", "out.raw"];
    convert_sparse_size_1k: ["convert", "-S", "1k", "-O", "raw", "good.qcow2", "out.raw"];
    convert_too_many_workers: ["convert", "-m", "17", "-O", "raw", "good.qcow2", "out.raw"];
    convert_bad_cache_mode: ["convert", "-t", "bogus", "-O", "raw", "good.qcow2", "out.raw"];
    convert_missing_snapshot: ["convert", "-l", "snap", "-O", "raw", "good.qcow2", "out.raw"];
    create_backing_format_twice: ["create", "-f", "qcow2", "-b", "good.qcow2", "-F", "raw", "-o", "backing_fmt=qcow2", "x.qcow2"];
    create_unsafe_backing_without_format: ["create", "-f", "qcow2", "-u", "-b", "nonexist", "x.qcow2"];
    info_options_after_filename: ["info", "good.qcow2", "--output", "json", "-U"];
    info_empty_filename: ["info", ""];
    map_empty_filename: ["map", ""];
    dd_empty_input: ["dd", "if=", "of=out.raw"];
    dd_count_with_suffix: ["dd", "if=good.qcow2", "of=out.raw", "bs=4k", "count=1k"];
    dd_skip_with_suffix: ["dd", "if=good.qcow2", "of=out.raw", "skip=1b"];
    dd_count_hex: ["dd", "if=good.qcow2", "of=out.raw", "bs=512", "count=0x1b"];
    snapshot_apply_probed_raw: ["snapshot", "-a", "s1", "plain.raw"];
    create_raw_bad_preallocation: ["create", "-f", "raw", "-o", "preallocation=bogus", "x.raw", "1M"];
    create_raw_size_rounds_past_int64: ["create", "-f", "raw", "x.raw", "9223372036854775807"];
    create_qcow2_size_rounds_past_int64: ["create", "-f", "qcow2", "x.qcow2", "9223372036854775807"];
    create_qcow2_size_past_max_length: ["create", "-f", "qcow2", "x.qcow2", "9223372036854775296"];
    create_qcow2_size_just_past_max_length: ["create", "-f", "qcow2", "x.qcow2", "9223372035781033985"];
    create_qcow2_size_past_max_length_2m: ["create", "-f", "qcow2", "-o", "cluster_size=2M", "x.qcow2", "9223372036854775296"];
    create_qcow2_size_at_max_length: ["create", "-f", "qcow2", "x.qcow2", "9223372035781033984"];
    image_opts_backing_node_info: ["info", "--image-opts", "driver=qcow2,file.filename=good.qcow2,backing=foo"];
    image_opts_backing_node_map: ["map", "--image-opts", "driver=qcow2,file.filename=good.qcow2,backing=foo"];
    image_opts_backing_empty: ["info", "--image-opts", "driver=qcow2,file.filename=good.qcow2,backing="];
    // json: filenames go through QEMU's lexer, streamer and parser: the
    // first error each reports is the one shown.
    json_empty: ["info", "json:"];
    json_blank: ["info", "json:  "];
    json_unclosed_object: ["info", "json:{\"driver\":\"qcow2\""];
    json_bad_keyword: ["info", "json:{\"driver\":\"qcow2\",\"file\":{\"filename\":\"good.qcow2\",\"x\":tru}}"];
    json_bare_word: ["info", "json:x"];
    json_stray_capital: ["info", "json:X"];
    json_bad_unicode_escape: ["info", "json:{\"driver\":\"qcow2\",\"file\":{\"filename\":\"good.qcow2\\u00zz\"}}"];
    json_short_unicode_escape: ["info", "json:{\"file\":{\"filename\":\"good.qcow2\\u12\"}}"];
    json_lone_surrogate: ["info", "json:{\"file\":{\"filename\":\"good.qcow2\\ud800\\u0041\"}}"];
    json_noncharacter_escape: ["info", "json:{\"file\":{\"filename\":\"good.qcow2\\uFFFE\"}}"];
    json_bad_escape: ["info", "json:{\"file\":{\"filename\":\"good.qcow2\\q\"}}"];
    json_exponent_without_digits: ["info", "json:{\"driver\":\"qcow2\",\"x\":1e}"];
    json_lone_minus: ["info", "json:{\"driver\":\"qcow2\",\"x\":-}"];
    json_leading_zero: ["info", "json:{\"driver\":\"qcow2\",\"x\":01}"];
    json_trailing_comma_in_list: ["info", "json:{\"driver\":\"qcow2\",\"x\":[1,]}"];
    json_missing_list_separator: ["info", "json:{\"driver\":\"qcow2\",\"x\":[1 2]}"];
    json_duplicate_key: ["info", "json:{\"driver\":\"qcow2\",\"driver\":\"raw\"}"];
    json_missing_colon: ["info", "json:{\"driver\" \"qcow2\"}"];
    json_key_not_string: ["info", "json:{1:2}"];
    json_missing_dict_separator: ["info", "json:{\"a\":1 \"b\":2}"];
    json_unterminated_string: ["info", "json:{\"driver\":\"qcow2\",\"file\":{\"filename\":\"good.qcow2"];
    json_two_values: ["info", "json:{\"driver\":\"qcow2\"} {\"driver\":\"raw\"}"];
    json_value_then_open: ["info", "json:1 {"];
    json_close_first: ["info", "json:} {\"driver\":\"qcow2\"}"];
    json_too_deep: ["info", "json:[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["];
    // The protocol driver named as the format: the host file as it is.
    file_driver_info: ["info", "-f", "file", "good.qcow2"];
    file_driver_info_json: ["info", "--output=json", "-f", "file", "plain.raw"];
    file_driver_map: ["map", "-f", "file", "good.qcow2"];
    file_driver_map_json: ["map", "--output=json", "-f", "file", "good.qcow2"];
    file_driver_check: ["check", "-f", "file", "good.qcow2"];
    file_driver_measure: ["measure", "-f", "file", "-O", "qcow2", "good.qcow2"];
    file_driver_compare: ["compare", "-f", "file", "-F", "raw", "good.qcow2", "good.qcow2"];
    file_driver_convert: ["convert", "-f", "file", "-O", "raw", "good.qcow2", "out.raw"];
    file_driver_amend: ["amend", "-f", "file", "-o", "size=1M", "plain.raw"];
    file_driver_image_opts: ["info", "--image-opts", "driver=file,filename=good.qcow2"];
    file_driver_image_opts_unknown_key: ["info", "--image-opts", "driver=file,filename=good.qcow2,file.filename=x"];
    file_driver_image_opts_no_name: ["info", "--image-opts", "driver=file"];
    file_driver_json: ["info", "json:{\"driver\":\"file\",\"filename\":\"good.qcow2\"}"];
    // A ':' before any '/' makes a protocol prefix; unknown ones are refused.
    protocol_unknown_create: ["create", "-f", "qcow2", "a:b.qcow2", "1M"];
    protocol_unknown_create_before_options: ["create", "-f", "raw", "-o", "foo=bar", "zz:x", "1M"];
    protocol_unknown_create_no_size: ["create", "-f", "raw", "zz:x"];
    protocol_unknown_create_unknown_format: ["create", "-f", "foo", "zz:x", "1M"];
    protocol_unknown_info: ["info", "a:b.qcow2"];
    protocol_empty_info: ["info", ":x"];
    protocol_unknown_check: ["check", "a:b.qcow2"];
    protocol_unknown_map: ["map", "a:b.qcow2"];
    protocol_unknown_compare: ["compare", "good.qcow2", "a:b.qcow2"];
    protocol_unknown_convert_source: ["convert", "-O", "raw", "a:b.qcow2", "out.raw"];
    protocol_unknown_convert_target: ["convert", "-O", "qcow2", "good.qcow2", "a:b.qcow2"];
    protocol_unknown_convert_existing_target: ["convert", "-n", "-O", "qcow2", "good.qcow2", "a:b.qcow2"];
    protocol_unknown_dd_output: ["dd", "if=good.qcow2", "of=zz:x"];
    protocol_unknown_resize: ["resize", "zz:x", "1M"];
    protocol_format_name_is_no_protocol: ["info", "qcow2:good.qcow2"];
    protocol_file_prefix_still_opens: ["info", "file:good.qcow2"];
    protocol_relative_path_has_none: ["info", "./a:b.qcow2"];
}

/// Converting an image onto itself is refused (the source holds a lock the
/// target needs) and leaves the source byte-identical.
#[test]
fn convert_onto_its_own_source() {
    for fmt in ["raw", "qcow2"] {
        let dir = TempDir::new("onto_self");
        let qd = dir.sub("q");
        let od = dir.sub("o");
        prepare(&qd);
        prepare(&od);
        qemu_io(&od, "qcow2", "good.qcow2", &["write -P 0x5c 0 64k".into()]);
        qemu_io(&qd, "qcow2", "good.qcow2", &["write -P 0x5c 0 64k".into()]);
        let before = read(&od.join("good.qcow2"));
        let args = ["convert", "-O", fmt, "good.qcow2", "good.qcow2"];
        let q = qemu_img(&qd, &args);
        let o = imgtool(&od, &args);
        assert!(
            od.join("good.qcow2").exists(),
            "convert -O {fmt} onto its own source deleted the source:\n{}",
            o.describe()
        );
        assert_bytes_eq(
            &format!("{fmt}: source unchanged"),
            &before,
            &read(&od.join("good.qcow2")),
        );
        assert_outcome_matches(&q, &o);
    }
}

/// A symlink named `qemu-img` to our binary speaks as qemu-img, down to the
/// `Try './qemu-img --help'` hints (argv[0] as given), exactly like the real
/// qemu-img reached through a symlink of the same name.
#[test]
fn symlink_named_qemu_img_prints_qemu_img() {
    let dir = TempDir::new("symlink");
    let real = dir.sub("real");
    let ours = dir.sub("ours");
    let qemu = std::process::Command::new("sh")
        .args(["-c", "command -v qemu-img"])
        .output()
        .expect("find qemu-img");
    let qemu = String::from_utf8(qemu.stdout).unwrap().trim().to_string();
    std::os::unix::fs::symlink(&qemu, real.join("qemu-img")).unwrap();
    std::os::unix::fs::symlink(bin(), ours.join("qemu-img")).unwrap();
    for args in [
        &["info", "nonexist.qcow2"][..],
        &["info"][..],
        &["--bogus"][..],
        &["create", "-f", "qcow2", "x.qcow2", "1Q"][..],
        &["create", "-f", "qcow2", "x.qcow2", "-1"][..],
    ] {
        let run = |d: &Path| {
            let mut c = std::process::Command::new("./qemu-img");
            c.args(args).current_dir(d);
            run_with_timeout(&mut c, DEFAULT_TIMEOUT)
        };
        let q = run(&real);
        let o = run(&ours);
        assert!(!q.ok() && q.stderr.contains("qemu-img"), "{}", q.describe());
        assert_eq!(o.code, q.code, "{}", o.describe());
        assert_text_eq(
            &format!("stderr of ./qemu-img {args:?}"),
            &q.stderr,
            &o.stderr,
        );
    }
}

/// `imgtool CMD --help` prints qemu-img's help for that command with the
/// program name replaced (its usage lines name the program).
fn command_help(cmd: &str) {
    let dir = TempDir::new("help");
    let q = qemu_img(dir.path(), &[cmd, "--help"]);
    let o = imgtool(dir.path(), &[cmd, "--help"]);
    assert_eq!(o.code, q.code, "{}", o.describe());
    assert_text_eq(
        &format!("{cmd} --help"),
        &q.stdout.replace("qemu-img", "imgtool"),
        &o.stdout,
    );
    assert_text_eq(
        &format!("{cmd} --help (stderr)"),
        &q.stderr.replace("qemu-img", "imgtool"),
        &o.stderr,
    );
}

macro_rules! help_cases {
    ($($name:ident: $cmd:literal;)*) => {
        $( #[test] fn $name() { command_help($cmd); } )*
    };
}

help_cases! {
    help_amend: "amend";
    help_bench: "bench";
    help_bitmap: "bitmap";
    help_check: "check";
    help_commit: "commit";
    help_compare: "compare";
    help_convert: "convert";
    help_create: "create";
    help_dd: "dd";
    help_info: "info";
    help_map: "map";
    help_measure: "measure";
    help_rebase: "rebase";
    help_resize: "resize";
    help_snapshot: "snapshot";
}

/// Global `--help`: the same text apart from the version banner (first two
/// lines) and the list of supported formats (ours is shorter by design).
#[test]
fn global_help() {
    let dir = TempDir::new("help");
    let q = qemu_img(dir.path(), &["--help"]).expect_ok();
    let o = imgtool(dir.path(), &["--help"]);
    assert!(o.ok(), "{}", o.describe());
    let body = |s: &str| -> String {
        s.lines()
            .skip(2)
            .take_while(|l| !l.starts_with("Supported image formats:"))
            .map(|l| format!("{l}\n"))
            .collect()
    };
    assert_text_eq(
        "--help",
        &body(&q.stdout.replace("qemu-img", "imgtool")),
        &body(&o.stdout),
    );
}

/// `--version`/`-V`: the first line starts like qemu-img's up to the
/// version number (what scripts parse), for both spellings.
#[test]
fn version_banner() {
    let dir = TempDir::new("version");
    for flag in ["--version", "-V"] {
        let q = qemu_img(dir.path(), &[flag]).expect_ok();
        let o = imgtool(dir.path(), &[flag]);
        assert!(o.ok(), "{}", o.describe());
        let head = |s: &str| -> String {
            let l = s.lines().next().unwrap_or_default();
            l.split(' ').take(3).collect::<Vec<_>>().join(" ")
        };
        assert_eq!(
            head(&q.stdout).replace("qemu-img", "imgtool"),
            head(&o.stdout),
            "{flag}"
        );
        assert_eq!(q.stdout.lines().count(), o.stdout.lines().count(), "{flag}");
    }
}

/// A create that fails in the format layer still leaves what QEMU's driver
/// made first: qcow, qed, vdi, vhdx and vpc an empty file, qcow2 nothing
/// (it deletes its file, even one that existed before).
fn check_leftovers(args: &[&str]) {
    let dir = TempDir::new("errors");
    let qd = dir.sub("q");
    let od = dir.sub("o");
    for d in [&qd, &od] {
        prepare(d);
        std::fs::write(d.join("old.qcow2"), b"old contents").unwrap();
    }
    let q = qemu_img(&qd, args);
    let o = imgtool(&od, args);
    assert_outcome_matches(&q, &o);
    let listing = |d: &Path| {
        let mut v: Vec<(String, u64)> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().into_string().unwrap(),
                    e.metadata().unwrap().len(),
                )
            })
            .collect();
        v.sort();
        v
    };
    assert_eq!(listing(&od), listing(&qd), "{args:?}: files left behind");
}

macro_rules! leftover_cases {
    ($($name:ident: [$($a:literal),*];)*) => {
        $( #[test] fn $name() { check_leftovers(&[$($a),*]); } )*
    };
}

leftover_cases! {
    create_fail_qcow_zero_size: ["create", "-f", "qcow", "x.qcow", "0"];
    create_fail_qed_cluster_size: ["create", "-f", "qed", "-o", "cluster_size=3k", "x.qed", "1M"];
    create_fail_vpc_subformat: ["create", "-f", "vpc", "-o", "subformat=bogus", "x.vpc", "1M"];
    create_fail_vhdx_block_size: ["create", "-f", "vhdx", "-o", "block_size=3M", "x.vhdx", "1M"];
    create_fail_vdi_too_big: ["create", "-f", "vdi", "x.vdi", "100P"];
    create_fail_vdi_preallocation: ["create", "-f", "vdi", "-o", "preallocation=bogus", "x.vdi", "1M"];
    create_fail_qcow2_too_big: ["create", "-f", "qcow2", "x.qcow2", "1E"];
    create_fail_qcow2_over_existing: ["create", "-f", "qcow2", "-o", "cluster_size=3k", "old.qcow2", "1M"];
    create_fail_qcow2_data_file: ["create", "-f", "qcow2", "-o", "data_file=d.raw,cluster_size=3k", "x.qcow2", "1M"];
    create_fail_raw_past_int64: ["create", "-f", "raw", "x.raw", "9223372036854775807"];
    convert_unknown_backing_fmt_qcow2: ["convert", "-O", "qcow2", "-B", "good.qcow2", "-F", "bogus", "good.qcow2", "out.qcow2"];
    convert_unknown_backing_fmt_qed: ["convert", "-O", "qed", "-B", "good.qcow2", "-F", "bogus", "good.qcow2", "out.qed"];
    convert_unknown_backing_fmt_qcow: ["convert", "-O", "qcow", "-B", "good.qcow2", "-F", "bogus", "good.qcow2", "out.qcow"];
    convert_backing_fmt_not_vmdk: ["convert", "-O", "vmdk", "-B", "good.qcow2", "-F", "qcow2", "good.qcow2", "out.vmdk"];
}
