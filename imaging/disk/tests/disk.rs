//! End to end on a whole disk image: GPT with a FAT32 "EFI" partition, an ext4
//! root, swap and a partition of unknown content. Copy only `keep` plus each
//! partition's used blocks (unknown: the whole partition) into a zeroed disk of
//! the same size, as a restore would; the copy must have the same partition
//! table, clean filesystems and identical files.

mod common;
use common::*;
use lifeline_disk::{fs, layout, Slice};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Stdio};

fn put(disk: &Path, part_img: &Path, offset: u64) {
    let d = OpenOptions::new().write(true).open(disk).unwrap();
    let data = std::fs::read(part_img).unwrap();
    d.write_all_at(&data, offset).unwrap();
}

fn extract(disk: &Path, offset: u64, len: u64, out: &Path) {
    let d = File::open(disk).unwrap();
    let mut buf = vec![0u8; len as usize];
    d.read_exact_at(&mut buf, offset).unwrap();
    std::fs::write(out, buf).unwrap();
}

#[test]
fn gpt_disk_copy_of_used_blocks_is_a_working_disk() {
    let t = tempfile::tempdir().unwrap();
    let disk = tmp_path(&t, "disk.img");
    garbage_image(&disk, 96 * MIB);
    let mut child = Command::new("sfdisk")
        .args(["-q", disk.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(
            b"label: gpt\nsize=40M, type=U\nsize=32M, type=L\nsize=8M, type=S\nsize=4M, type=L\n",
        )
        .unwrap();
    assert!(child.wait().unwrap().success());
    let f = File::open(&disk).unwrap();
    let lay = layout::read_layout(&f, 96 * MIB, 512).unwrap();
    assert_eq!(lay.partitions.len(), 4);
    let [esp, root, swap, other] = [0, 1, 2, 3].map(|i| lay.partitions[i].clone());

    // Filesystems made on their own (garbage-filled) files, then placed.
    let tree = t.path().join("tree");
    let files = make_tree(&tree);
    let fat = tmp_path(&t, "esp.img");
    garbage_image(&fat, esp.len);
    run("mkfs.vfat", &["-F", "32", "-s", "1", fat.to_str().unwrap()]);
    run(
        "mcopy",
        &[
            "-s",
            "-i",
            fat.to_str().unwrap(),
            tree.join("sub").to_str().unwrap(),
            "::/",
        ],
    );
    put(&disk, &fat, esp.start);
    let ext = tmp_path(&t, "root.img");
    garbage_image(&ext, root.len);
    run(
        "mkfs.ext4",
        &[
            "-F",
            "-q",
            "-E",
            "nodiscard",
            "-d",
            tree.to_str().unwrap(),
            ext.to_str().unwrap(),
        ],
    );
    put(&disk, &ext, root.start);
    let sw = tmp_path(&t, "swap.img");
    garbage_image(&sw, swap.len);
    run("mkswap", &[sw.to_str().unwrap()]);
    put(&disk, &sw, swap.start);
    // `other` keeps its garbage: unknown content.

    let copy = tmp_path(&t, "copy.img");
    let c = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&copy)
        .unwrap();
    c.set_len(96 * MIB).unwrap();
    let copy_range = |start: u64, end: u64| {
        let mut buf = vec![0u8; (end - start) as usize];
        f.read_exact_at(&mut buf, start).unwrap();
        c.write_all_at(&buf, start).unwrap();
    };
    let mut stored = 0u64;
    for r in &lay.keep {
        copy_range(r.start, r.end);
        stored += r.len();
    }
    let mut kinds = Vec::new();
    for p in &lay.partitions {
        let part = Slice::new(&f, p.start, p.len);
        match fs::probe(&part, p.len).unwrap() {
            Some(d) => {
                kinds.push(d.variant.clone());
                for r in d.map.byte_ranges() {
                    copy_range(p.start + r.start, p.start + r.end);
                    stored += r.len();
                }
            }
            None => {
                kinds.push("unknown".into());
                copy_range(p.start, p.start + p.len);
                stored += p.len;
            }
        }
    }
    assert_eq!(kinds, ["fat32", "ext4", "swap", "unknown"]);
    assert!(stored < 40 * MIB, "stored {stored} of {}", 96 * MIB);
    drop(c);

    // Same table, as sfdisk sees it.
    assert_eq!(
        run("sfdisk", &["--json", disk.to_str().unwrap()]).replace(disk.to_str().unwrap(), "D"),
        run("sfdisk", &["--json", copy.to_str().unwrap()]).replace(copy.to_str().unwrap(), "D")
    );
    run("sgdisk", &["-v", copy.to_str().unwrap()]);
    // Clean filesystems with identical files.
    let pe = tmp_path(&t, "p-esp");
    extract(&copy, esp.start, esp.len, &pe);
    run("fsck.vfat", &["-n", pe.to_str().unwrap()]);
    let pr = tmp_path(&t, "p-root");
    extract(&copy, root.start, root.len, &pr);
    run("e2fsck", &["-fn", pr.to_str().unwrap()]);
    let out = t.path().join("out");
    for (name, data) in &files {
        let _ = std::fs::remove_file(&out);
        run(
            "debugfs",
            &[
                "-R",
                &format!("dump /{name} {}", out.display()),
                pr.to_str().unwrap(),
            ],
        );
        assert!(std::fs::read(&out).unwrap() == *data, "ext4: {name}");
        if let Some(rest) = name.strip_prefix("sub/") {
            let _ = std::fs::remove_file(&out);
            run(
                "mcopy",
                &[
                    "-n",
                    "-i",
                    pe.to_str().unwrap(),
                    &format!("::/sub/{rest}"),
                    out.to_str().unwrap(),
                ],
            );
            assert!(std::fs::read(&out).unwrap() == *data, "fat32: {name}");
        }
    }
    let ps = tmp_path(&t, "p-swap");
    extract(&copy, swap.start, swap.len, &ps);
    let probe = run(
        "blkid",
        &["-p", "-o", "value", "-s", "TYPE", ps.to_str().unwrap()],
    );
    assert_eq!(probe.trim(), "swap");
    let mut a = vec![0u8; other.len as usize];
    let mut b = vec![0u8; other.len as usize];
    f.read_exact_at(&mut a, other.start).unwrap();
    File::open(&copy)
        .unwrap()
        .read_exact_at(&mut b, other.start)
        .unwrap();
    assert!(a == b, "unknown partition copied whole");
    eprintln!(
        "stored {} KiB of a {} KiB disk",
        stored >> 10,
        (96 * MIB) >> 10
    );
}
