//! qcow (v1) through the library, differentially against qemu-img 10.0.2:
//! qemu-made images read identically to `qemu-img convert -O raw` (and map
//! like `qemu-img map`), images we create equal qemu-img's and pass its
//! check, random and concurrent writes match a raw shadow, conversions
//! round-trip, and damaged files fail cleanly (see tests/fmt1/).

mod common;
mod fmt1;
#[path = "fmt1/lib.rs"]
mod fmt1_lib;

use fmt1_lib::*;

const FORMAT: &str = "qcow";

macro_rules! read_variants {
    ($($v:ident),* $(,)?) => {
        mod read {
            use super::*;
            $( #[test] fn $v() { read_variant(FORMAT, stringify!($v)); } )*
            #[test]
            fn list_is_complete() {
                let mine: &[&str] = &[$(stringify!($v)),*];
                assert_eq!(mine, crate::fmt1::variants(FORMAT));
            }
        }
    };
}

macro_rules! create_cases {
    ($($c:ident),* $(,)?) => {
        mod create {
            use super::*;
            fn case(label: &str) {
                let (l, o, s) = crate::fmt1::create_cases(FORMAT)
                    .into_iter()
                    .find(|c| c.0 == label)
                    .expect("case");
                create_case(FORMAT, l, o, s);
            }
            $( #[test] fn $c() { case(stringify!($c)); } )*
            #[test]
            fn list_is_complete() {
                let mine: Vec<&str> = vec![$(stringify!($c)),*];
                let all: Vec<&str> = crate::fmt1::create_cases(FORMAT).iter().map(|c| c.0).collect();
                assert_eq!(mine, all);
            }
        }
    };
}

macro_rules! refused_cases {
    ($($c:ident),* $(,)?) => {
        mod refused {
            use super::*;
            fn case(label: &str) {
                let (l, o, s) = crate::fmt1::refused_create_cases(FORMAT)
                    .into_iter()
                    .find(|c| c.0 == label)
                    .expect("case");
                refused_create_case(FORMAT, l, o, s);
            }
            $( #[test] fn $c() { case(stringify!($c)); } )*
            #[test]
            fn list_is_complete() {
                let mine: Vec<&str> = vec![$(stringify!($c)),*];
                let all: Vec<&str> = crate::fmt1::refused_create_cases(FORMAT).iter().map(|c| c.0).collect();
                assert_eq!(mine, all);
            }
        }
    };
}

read_variants!(
    plain,
    odd_size,
    backing_qcow2,
    backing_raw,
    compressed,
    sparse_64m
);
create_cases!(
    default,
    odd_size,
    big,
    prealloc_full,
    encryption_off,
    backing,
    backing_raw
);
refused_cases!(
    encryption_on,
    encrypt_aes,
    encrypt_aes_secret,
    encrypt_luks,
    encrypt_foo,
    encrypt_both,
    secret_only,
    zero_size,
    zero_size_encrypted,
    prealloc_metadata,
    prealloc_bad
);

#[test]
fn damaged_files_fail_cleanly() {
    damaged_images(FORMAT);
}

#[test]
fn convert_round_trip_default() {
    convert_round_trip(FORMAT, "");
}

#[test]
fn random_writes_no_backing() {
    random_writes(FORMAT, "", 8 * common::MIB + 3 * 512, 1, false);
}

#[test]
fn random_writes_over_backing() {
    random_writes(FORMAT, "", 8 * common::MIB, 2, true);
}

#[test]
fn concurrent_writers() {
    concurrent_writes(FORMAT, "");
}
