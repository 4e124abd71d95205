//! Swap: only the header page is used (and anything past the swap area); a
//! hibernation image is copied whole.
#![allow(clippy::unwrap_used, clippy::single_range_in_vec_init)]

mod common;

use common::*;

#[test]
fn swap_keeps_only_its_header_page() {
    if !have("swap", "mkswap") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("swap.img");
    blank(&img, 16);
    // Stale data from before, in what becomes swap's free pages.
    poke(&img, 1 << 20, &Rng::new(7).bytes(1 << 20));
    run(
        "mkswap",
        &[
            "-L",
            "sw",
            "-U",
            "6f1f0b7e-3a55-4c1e-9d0e-2b3c4d5e6f70",
            img.to_str().unwrap(),
        ],
    );
    let f = std::fs::File::open(&img).unwrap();
    let u = fsmap::swap::probe(&f).unwrap().unwrap();
    assert_eq!(
        (u.fs, u.label.as_deref(), u.used.clone()),
        ("swap", Some("sw"), vec![0..4096])
    );
    // The header page alone is a swap area with the same identity.
    let copy = dir.path().join("copy.img");
    keep_only(&img, &u.used, &copy);
    let show = |p: &std::path::Path| run("blkid", &["-o", "export", p.to_str().unwrap()]);
    if have("swap", "blkid") {
        let (a, b) = (show(&img), show(&copy));
        assert_eq!(
            a.lines()
                .filter(|l| !l.starts_with("DEVNAME"))
                .collect::<Vec<_>>(),
            b.lines()
                .filter(|l| !l.starts_with("DEVNAME"))
                .collect::<Vec<_>>()
        );
        assert!(a.contains("TYPE=swap"), "{a}");
    }
    // A hibernation image in it: copied whole.
    poke(&img, 4096 - 10, b"S1SUSPEND\0");
    let e = fsmap::swap::probe(&f).unwrap().unwrap_err();
    assert!(e.to_string().contains("hibernation"), "{e}");
}

#[test]
fn a_swap_header_claiming_more_than_the_partition_falls_back() {
    let mut d = vec![0u8; 64 << 10];
    d[4096 - 10..4096].copy_from_slice(b"SWAPSPACE2");
    d[1024] = 1;
    d[1028..1032].copy_from_slice(&1000u32.to_le_bytes());
    let e = fsmap::swap::probe(&&d[..]).unwrap().unwrap_err();
    assert!(e.to_string().contains("swap area of"), "{e}");
    d[1028..1032].copy_from_slice(&15u32.to_le_bytes());
    let u = fsmap::swap::probe(&&d[..]).unwrap().unwrap();
    assert_eq!(u.used, vec![0..4096]);
}
