//! A machine registered under a removed machine's name starts empty
//! (issue 14, finding 6: it inherited the removed machine's mirror and
//! images). The removed machine's data is kept aside, served to nobody.

use std::fs;
use std::path::Path;
use std::process::Command;

fn receiver(store: &Path, args: &[&str]) -> (bool, String) {
    let out =
        Command::new(env!("CARGO_BIN_EXE_lifeline-receiver")).arg("--store").arg(store).args(args).output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn a_new_machine_never_inherits_a_removed_ones_data() {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("store");
    let out = d.path().join("creds");
    let out = out.to_str().unwrap();
    assert!(receiver(&store, &["machine", "add", "m1", "--out", out]).0);
    let mirror = store.join("mirror/m1/srv");
    fs::create_dir_all(&mirror).unwrap();
    fs::write(mirror.join("secret"), b"m1's data").unwrap();
    fs::create_dir_all(store.join("images/m1")).unwrap();
    fs::write(store.join("images/m1/config"), b"m1's repository").unwrap();

    let (ok, said) = receiver(&store, &["machine", "remove", "m1"]);
    assert!(ok && said.contains("kept in"), "{said}");
    let kept: Vec<_> = fs::read_dir(store.join("removed")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(fs::read(kept[0].join("mirror/srv/secret")).unwrap(), b"m1's data");
    assert_eq!(fs::read(kept[0].join("images/config")).unwrap(), b"m1's repository");

    // The same name again: a new machine, with nothing of the old one.
    let (ok, said) = receiver(&store, &["machine", "add", "m1", "--out", out]);
    assert!(ok, "{said}");
    assert!(!store.join("mirror/m1").exists() && !store.join("images/m1").exists());

    // Data under a name no machine has (left by an older receiver): refused.
    fs::create_dir_all(store.join("mirror/m2/srv")).unwrap();
    let (ok, said) = receiver(&store, &["machine", "add", "m2", "--out", out]);
    assert!(!ok && said.contains("still holds data under the name m2"), "{said}");
}
