//! Build script: generates the C header `include/imgtool.h` from `src/ffi`
//! with cbindgen, and gives the shared library its soname.
//!
//! The header is committed. A normal build rewrites it only when its
//! content changed (and warns, so the change gets committed).
//! `IMGTOOL_HEADER_OUT=<path>` writes the header to `<path>` instead and
//! leaves `include/` alone; `scripts/check-header.sh` uses that to compare
//! a fresh generation with the committed file.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    println!("cargo:rerun-if-changed=src/ffi");
    println!("cargo:rerun-if-env-changed=IMGTOOL_HEADER_OUT");

    let major = env::var("CARGO_PKG_VERSION_MAJOR").unwrap_or_else(|_| "0".into());
    let target_os = env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if !matches!(target_os.as_str(), "macos" | "ios" | "windows") {
        // ELF: C programs link against libimgtool.so and record this name,
        // so a 0.x update that keeps the ABI is a drop-in replacement.
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libimgtool.so.{major}");
    }

    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let header = generate_header(&root);

    match env::var_os("IMGTOOL_HEADER_OUT") {
        Some(out) => {
            fs::write(&out, &header)
                .unwrap_or_else(|e| panic!("cannot write {}: {e}", Path::new(&out).display()));
        }
        None => {
            let path = root.join("include").join("imgtool.h");
            if fs::read(&path).ok().as_deref() != Some(header.as_slice()) {
                // Building from a read-only source (e.g. a registry copy) must
                // still work: the committed header is then what users get.
                let res = fs::create_dir_all(root.join("include"))
                    .and_then(|_| fs::write(&path, &header));
                match res {
                    Ok(()) => println!(
                        "cargo:warning=include/imgtool.h regenerated from src/ffi; commit it"
                    ),
                    Err(e) => println!(
                        "cargo:warning=include/imgtool.h is stale and could not be rewritten: {e}"
                    ),
                }
            }
        }
    }
}

fn generate_header(root: &Path) -> Vec<u8> {
    let mut config = cbindgen::Config::from_file(root.join("cbindgen.toml"))
        .unwrap_or_else(|e| panic!("cbindgen.toml: {e}"));
    let v = |k: &str| env::var(k).unwrap_or_else(|_| panic!("{k} not set"));
    config.after_includes = Some(format!(
        "\n/** Version of the header; compare with imgtool_version() at run time. */\n\
         #define IMGTOOL_VERSION_MAJOR {}\n\
         #define IMGTOOL_VERSION_MINOR {}\n\
         #define IMGTOOL_VERSION_PATCH {}\n\
         #define IMGTOOL_VERSION_STRING \"{}\"\n",
        v("CARGO_PKG_VERSION_MAJOR"),
        v("CARGO_PKG_VERSION_MINOR"),
        v("CARGO_PKG_VERSION_PATCH"),
        v("CARGO_PKG_VERSION"),
    ));
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(root.join("src").join("ffi").join("mod.rs"))
        .generate()
        .unwrap_or_else(|e| panic!("cbindgen failed on src/ffi: {e}"));
    let mut out = Vec::new();
    bindings.write(&mut out);
    parenthesize_negative_defines(&String::from_utf8(out).expect("header is UTF-8")).into_bytes()
}

/// cbindgen writes `#define IMGTOOL_EINVAL -1`; `x-IMGTOOL_EINVAL` would
/// then read `x--1`. Emit `(-1)` as careful C headers do.
fn parenthesize_negative_defines(h: &str) -> String {
    let mut out = String::with_capacity(h.len() + 64);
    for line in h.split_inclusive('\n') {
        let body = line.trim_end_matches('\n');
        let mut parts = body.splitn(3, ' ');
        match (parts.next(), parts.next(), parts.next()) {
            (Some("#define"), Some(name), Some(val))
                if val.starts_with('-') && val[1..].chars().all(|c| c.is_ascii_digit()) =>
            {
                out.push_str(&format!("#define {name} ({val})"));
                out.push_str(&line[body.len()..]);
            }
            _ => out.push_str(line),
        }
    }
    out
}
