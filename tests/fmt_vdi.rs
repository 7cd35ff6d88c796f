//! VDI through the library, differentially against qemu-img 10.0.2:
//! qemu-made images read identically to `qemu-img convert -O raw` (and map
//! like `qemu-img map`), images we create equal qemu-img's and pass its
//! check, random and concurrent writes match a raw shadow, conversions
//! round-trip, and damaged files fail cleanly (see tests/fmt1/).

mod common;
mod fmt1;
#[path = "fmt1/lib.rs"]
mod fmt1_lib;

use fmt1_lib::*;

const FORMAT: &str = "vdi";

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

read_variants!(dynamic, static_alloc, odd_size, sparse_64m);
create_cases!(
    default,
    odd_size,
    zero_size,
    static_alloc,
    static_odd,
    big,
    prealloc_full
);
refused_cases!(too_big, prealloc_metadata, prealloc_bad);

#[test]
fn damaged_files_fail_cleanly() {
    damaged_images(FORMAT);
}

#[test]
fn convert_round_trip_default() {
    convert_round_trip(FORMAT, "");
}

#[test]
fn random_writes_dynamic() {
    random_writes(FORMAT, "", 8 * common::MIB + 3 * 512, 1, false);
}

#[test]
fn random_writes_static() {
    random_writes(FORMAT, "static=on", 8 * common::MIB, 2, false);
}

#[test]
fn concurrent_writers() {
    concurrent_writes(FORMAT, "");
}

#[test]
fn convert_round_trip_static() {
    convert_round_trip(FORMAT, "static=on");
}
