//! Resolving the kernel modules a boot OS needs, in load order.
//!
//! Debian builds every storage and network driver as a module, so the boot
//! OS carries the ones the hardware needs and its `/init` loads them with
//! busybox `insmod`, which knows nothing about dependencies. This module
//! works the order out at build time from the kernel's own indexes in
//! `<root>/lib/modules/<version>/`:
//!
//! * `modules.dep`: `path.ko: dep.ko dep.ko ...` (hard dependencies);
//! * `modules.softdep`: `softdep NAME pre: A B post: C` (A and B are loaded
//!   before NAME; `post:` is ignored); a softdep name may be a module or an
//!   alias from `modules.alias` (e.g. `crct10dif` → `crct10dif_pclmul`,
//!   `crct10dif_generic`); softdeps that resolve to nothing are skipped;
//! * `modules.builtin`: modules compiled into the kernel, which are skipped;
//! * `modules.alias`: exact (non-wildcard) aliases only.
//!
//! Module names are normalised as the kernel does: `-` and `_` are the same
//! (`nvme-core` is `nvme_core`).
//!
//! Some modules ask the crypto API for an algorithm when they load (via
//! `request_module`), which needs a `modprobe` helper the initramfs doesn't
//! have; [`IMPLICIT_PRE`] lists those (e.g. `crc64_rocksoft` needs
//! `crypto-crc64-rocksoft`, provided by `crc64_rocksoft_generic`) and they
//! are treated as extra softdeps.
//!
//! Compressed modules (`.ko.xz`, `.ko.zst`, `.ko.gz`) are decompressed when
//! read with [`read_module`] and stored as plain `.ko`. Busybox `insmod`
//! reads the file itself and passes the bytes to `init_module`, so the
//! kernel's own decompression (`CONFIG_MODULE_DECOMPRESS`, reached only
//! through `finit_module`) never helps. Tried in qemu with Debian 12's
//! busybox-static 1.35 and kernel 6.1: `insmod` loads `.ko.xz` (made with
//! `xz --check=crc32`, as kmod does) and `.ko.gz`, but fails on `.ko.zst`
//! with "invalid module format". Storing them decompressed works for all
//! three and costs nothing, since the initramfs is compressed as a whole.
//! (Debian 12's 6.1 kernel ships uncompressed modules; later Debian kernels
//! use `.ko.xz`, other distributions `.ko.zst`.)

use crate::error::{Error, IoContext, Result};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

/// Storage and network drivers for the machines Lifeline boots: virtio,
/// AHCI/SATA, NVMe disks; virtio-net, e1000, e1000e NICs; CD (sr_mod,
/// isofs) and USB sticks (xhci, usb-storage). `sd_mod` is listed explicitly:
/// nothing depends on it, but without it no `/dev/sd*` appears.
pub const DEFAULT_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_blk",
    "virtio_net",
    "virtio_scsi",
    "e1000",
    "e1000e",
    "ahci",
    "ata_piix",
    "sd_mod",
    "nvme",
    "sr_mod",
    "isofs",
    "xhci_pci",
    "ehci_pci",
    "usb_storage",
    "uas",
    // The backup disk of the local style (a filesystem labelled LIFELINE).
    "ext4",
    "vfat",
    "exfat",
    "nls_cp437",
    "nls_utf8",
    "nls_iso8859_1",
];

/// Dependencies a module needs at load time that no index records: it
/// requests a crypto algorithm (by alias) from its init function. Pairs of
/// (module, name or alias to load first).
pub const IMPLICIT_PRE: &[(&str, &str)] =
    &[("crc64_rocksoft", "crypto-crc64-rocksoft"), ("crc_t10dif", "crypto-crct10dif"), ("libcrc32c", "crypto-crc32c")];

/// The kernel's module name normalisation: `-` is `_`, and a path or
/// `.ko[.xz|.zst|.gz]` suffix is dropped.
pub fn normalize(name: &str) -> String {
    let base = name.rsplit('/').next().unwrap_or(name);
    let base = strip_compression(base);
    let base = base.strip_suffix(".ko").unwrap_or(base);
    base.replace('-', "_")
}

fn strip_compression(p: &str) -> &str {
    for ext in [".xz", ".zst", ".gz"] {
        if let Some(s) = p.strip_suffix(ext) {
            if s.ends_with(".ko") {
                return s;
            }
        }
    }
    p
}

/// One module to load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    /// Normalised name, e.g. `nvme_core`.
    pub name: String,
    /// Path as in modules.dep, relative to the modules directory, e.g.
    /// `kernel/drivers/nvme/host/nvme-core.ko` (possibly `.ko.xz`).
    pub rel_path: String,
    /// The file on this host.
    pub path: PathBuf,
}

impl Module {
    /// Where the module goes in the boot OS, relative to
    /// `/lib/modules/<version>/`: [`Module::rel_path`] without a
    /// compression suffix (see [`read_module`]).
    pub fn stored_rel_path(&self) -> &str {
        strip_compression(&self.rel_path)
    }
}

/// The outcome of [`ModuleIndex::resolve`].
#[derive(Debug, Clone, Default)]
pub struct Resolved {
    /// Modules in load order: every module after its dependencies and
    /// pre-softdeps, each once.
    pub load_order: Vec<Module>,
    /// Requested (or depended-on) modules that are built into the kernel
    /// and need no loading.
    pub builtin: Vec<String>,
    /// Softdeps that matched no module, alias or built-in (harmless).
    pub unresolved_softdeps: Vec<String>,
}

/// The module indexes of one kernel version.
#[derive(Debug, Clone)]
pub struct ModuleIndex {
    version: String,
    dir: PathBuf,
    /// name -> (rel path, rel paths of hard deps)
    deps: HashMap<String, (String, Vec<String>)>,
    softdeps: HashMap<String, Vec<String>>,
    aliases: HashMap<String, Vec<String>>,
    builtin: HashSet<String>,
}

impl ModuleIndex {
    /// Reads the indexes of kernel `version` under `root` (`/` for the
    /// host): `modules.dep` is required, `modules.softdep`,
    /// `modules.builtin` and `modules.alias` are used when present.
    pub fn load(root: &Path, version: &str) -> Result<Self> {
        let dir = root.join("lib/modules").join(version);
        let dep_path = dir.join("modules.dep");
        let dep_text = std::fs::read_to_string(&dep_path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::Missing(format!(
                    "no modules for kernel {version}: {} is missing; install the kernel's modules (linux-image-{version} on Debian) or run depmod {version}",
                    dep_path.display()
                ))
            } else {
                Error::io("reading the module dependency list", &dep_path, e)
            }
        })?;
        let mut deps = HashMap::new();
        for line in dep_text.lines() {
            let Some((m, rest)) = line.split_once(':') else {
                continue;
            };
            let m = m.trim();
            if m.is_empty() {
                continue;
            }
            let d = rest.split_whitespace().map(str::to_string).collect();
            deps.insert(normalize(m), (m.to_string(), d));
        }
        let read_opt = |name: &str| -> Result<String> {
            let p = dir.join(name);
            match std::fs::read_to_string(&p) {
                Ok(s) => Ok(s),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
                Err(e) => Err(Error::io(format!("reading {name}"), &p, e)),
            }
        };
        let mut softdeps: HashMap<String, Vec<String>> = HashMap::new();
        for line in read_opt("modules.softdep")?.lines() {
            let mut words = line.split_whitespace();
            if words.next() != Some("softdep") {
                continue;
            }
            let Some(m) = words.next() else { continue };
            let mut in_pre = false;
            for w in words {
                match w {
                    "pre:" => in_pre = true,
                    "post:" => in_pre = false,
                    _ if in_pre => softdeps.entry(normalize(m)).or_default().push(w.to_string()),
                    _ => {}
                }
            }
        }
        let builtin = read_opt("modules.builtin")?.lines().filter(|l| !l.trim().is_empty()).map(normalize).collect();
        let mut aliases: HashMap<String, Vec<String>> = HashMap::new();
        for line in read_opt("modules.alias")?.lines() {
            let mut words = line.split_whitespace();
            if words.next() != Some("alias") {
                continue;
            }
            let (Some(a), Some(m)) = (words.next(), words.next()) else {
                continue;
            };
            if a.contains(['*', '?', '[']) {
                continue;
            }
            let list = aliases.entry(a.replace('-', "_")).or_default();
            let m = normalize(m);
            if !list.contains(&m) {
                list.push(m);
            }
        }
        Ok(ModuleIndex { version: version.to_string(), dir, deps, softdeps, aliases, builtin })
    }

    /// The kernel version.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// `<root>/lib/modules/<version>`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether `name` is built into the kernel.
    pub fn is_builtin(&self, name: &str) -> bool {
        self.builtin.contains(&normalize(name))
    }

    /// Whether `name` is a loadable module of this kernel.
    pub fn has_module(&self, name: &str) -> bool {
        self.deps.contains_key(&normalize(name))
    }

    /// The load order for `wanted` (names with `-` or `_`): for each, its
    /// pre-softdeps and hard dependencies (recursively) first, then the
    /// module; no duplicates. A wanted name may also be an exact alias. An
    /// unknown wanted name is an error; a built-in one is reported in
    /// [`Resolved::builtin`].
    pub fn resolve<S: AsRef<str>>(&self, wanted: &[S]) -> Result<Resolved> {
        let mut r = Resolved::default();
        let mut done = HashSet::new();
        for w in wanted {
            let w = w.as_ref();
            let names = self.lookup(w);
            if names.is_empty() {
                if self.is_builtin(w) {
                    push_unique(&mut r.builtin, normalize(w));
                    continue;
                }
                return Err(Error::Missing(format!(
                    "kernel module {w:?} is neither a module nor built into kernel {} ({}): check the name with `modinfo -k {} {w}` or drop it from the list",
                    self.version,
                    self.dir.display(),
                    self.version
                )));
            }
            for n in names {
                self.visit(&n, &mut r, &mut done, &mut Vec::new())?;
            }
        }
        Ok(r)
    }

    /// Module names for `name`: the module itself if it exists, else the
    /// modules an exact alias points to.
    fn lookup(&self, name: &str) -> Vec<String> {
        let n = normalize(name);
        if self.deps.contains_key(&n) {
            return vec![n];
        }
        self.aliases
            .get(&name.replace('-', "_"))
            .map(|v| v.iter().filter(|m| self.deps.contains_key(*m)).cloned().collect())
            .unwrap_or_default()
    }

    fn visit(&self, name: &str, r: &mut Resolved, done: &mut HashSet<String>, stack: &mut Vec<String>) -> Result<()> {
        if done.contains(name) || stack.iter().any(|s| s == name) {
            // Already placed, or a softdep cycle (kmod breaks those too).
            return Ok(());
        }
        let Some((rel, hard)) = self.deps.get(name) else {
            return Ok(());
        };
        stack.push(name.to_string());
        let mut soft: Vec<&str> =
            self.softdeps.get(name).map(|v| v.iter().map(String::as_str).collect()).unwrap_or_default();
        soft.extend(IMPLICIT_PRE.iter().filter(|(m, _)| *m == name).map(|(_, a)| *a));
        for s in soft {
            let targets = self.lookup(s);
            if targets.is_empty() {
                if self.is_builtin(s) || self.aliases.contains_key(&s.replace('-', "_")) {
                    // Built in, or an alias whose provider is built in.
                    continue;
                }
                push_unique(&mut r.unresolved_softdeps, s.to_string());
            }
            for t in targets {
                self.visit(&t, r, done, stack)?;
            }
        }
        // modules.dep lists the deepest dependency last; load it first.
        for d in hard.iter().rev() {
            let dn = normalize(d);
            if !self.deps.contains_key(&dn) {
                return Err(Error::Invalid(format!(
                    "modules.dep in {} says {name} needs {d}, which has no entry of its own: the index is stale, run depmod {}",
                    self.dir.display(),
                    self.version
                )));
            }
            self.visit(&dn, r, done, stack)?;
        }
        stack.pop();
        done.insert(name.to_string());
        let path = if rel.starts_with('/') { PathBuf::from(rel) } else { self.dir.join(rel) };
        r.load_order.push(Module { name: name.to_string(), rel_path: rel.clone(), path });
        Ok(())
    }
}

fn push_unique(v: &mut Vec<String>, s: String) {
    if !v.contains(&s) {
        v.push(s);
    }
}

/// The newest kernel version under `<root>/lib/modules` that also has a
/// kernel image at `<root>/boot/vmlinuz-<version>`.
pub fn newest_kernel(root: &Path) -> Result<(String, PathBuf)> {
    installed_kernels(root).pop().ok_or_else(|| {
        Error::Missing(format!(
            "no kernel with modules found in {} (vmlinuz-VERSION with lib/modules/VERSION/modules.dep): install linux-image-amd64 or pass --kernel",
            root.join("boot").display()
        ))
    })
}

/// Every kernel with both an image `<root>/boot/vmlinuz-<version>` and
/// `<root>/lib/modules/<version>/modules.dep`, as (version, image), oldest
/// first (versions compared by their number runs).
pub fn installed_kernels(root: &Path) -> Vec<(String, PathBuf)> {
    let boot = root.join("boot");
    let mut found = Vec::new();
    if let Ok(rd) = std::fs::read_dir(&boot) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(v) = name.strip_prefix("vmlinuz-") {
                if root.join("lib/modules").join(v).join("modules.dep").is_file() {
                    found.push((v.to_string(), e.path()));
                }
            }
        }
    }
    found.sort_by_key(|a| version_key(&a.0));
    found
}

/// Orders versions like `6.1.0-56-amd64` numerically by their number runs.
fn version_key(v: &str) -> Vec<u64> {
    v.split(|c: char| !c.is_ascii_digit()).filter(|s| !s.is_empty()).map(|s| s.parse().unwrap_or(0)).collect()
}

/// Reads a module file, decompressing `.ko.xz` (with the `xz` tool from
/// xz-utils), `.ko.zst` and `.ko.gz`, so it can be stored as a plain `.ko`.
pub fn read_module(path: &Path) -> Result<Vec<u8>> {
    let data = std::fs::read(path).ctx("reading a kernel module", path)?;
    let name = path.to_string_lossy();
    if name.ends_with(".ko.zst") {
        zstd::decode_all(&data[..]).ctx("decompressing a zstd kernel module", path)
    } else if name.ends_with(".ko.gz") {
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&data[..]), &mut out)
            .ctx("decompressing a gzip kernel module", path)?;
        Ok(out)
    } else if name.ends_with(".ko.xz") {
        let out = std::process::Command::new("xz").args(["-dc", "--"]).arg(path).output().map_err(|e| {
            Error::Missing(format!("cannot run xz to decompress {}: {e}; install xz-utils", path.display()))
        })?;
        if !out.status.success() {
            return Err(Error::Invalid(format!(
                "xz -dc {} failed: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(out.stdout)
    } else {
        Ok(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A synthetic modules tree: every .ko is a small file naming itself.
    fn synthetic() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("lib/modules/9.9.9-test");
        let mods = [
            "kernel/drivers/block/virtio_blk.ko",
            "kernel/drivers/virtio/virtio.ko",
            "kernel/drivers/virtio/virtio_ring.ko",
            "kernel/drivers/nvme/host/nvme.ko.zst",
            "kernel/drivers/nvme/host/nvme-core.ko.zst",
            "kernel/block/t10-pi.ko",
            "kernel/lib/crc-t10dif.ko",
            "kernel/crypto/crct10dif_common.ko",
            "kernel/crypto/crct10dif_generic.ko",
            "kernel/arch/crct10dif-pclmul.ko",
            "kernel/a/loop_a.ko",
            "kernel/a/loop_b.ko",
        ];
        for m in mods {
            let p = dir.join(m);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            let body = format!("module {}", normalize(m));
            let bytes =
                if m.ends_with(".zst") { zstd::encode_all(body.as_bytes(), 3).unwrap() } else { body.into_bytes() };
            std::fs::write(p, bytes).unwrap();
        }
        std::fs::write(
            dir.join("modules.dep"),
            "kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\n\
             kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko\n\
             kernel/drivers/virtio/virtio_ring.ko:\n\
             kernel/drivers/nvme/host/nvme.ko.zst: kernel/drivers/nvme/host/nvme-core.ko.zst kernel/block/t10-pi.ko kernel/lib/crc-t10dif.ko kernel/crypto/crct10dif_common.ko\n\
             kernel/drivers/nvme/host/nvme-core.ko.zst: kernel/block/t10-pi.ko kernel/lib/crc-t10dif.ko kernel/crypto/crct10dif_common.ko\n\
             kernel/block/t10-pi.ko: kernel/lib/crc-t10dif.ko kernel/crypto/crct10dif_common.ko\n\
             kernel/lib/crc-t10dif.ko: kernel/crypto/crct10dif_common.ko\n\
             kernel/crypto/crct10dif_common.ko:\n\
             kernel/crypto/crct10dif_generic.ko: kernel/crypto/crct10dif_common.ko\n\
             kernel/arch/crct10dif-pclmul.ko:\n\
             kernel/a/loop_a.ko:\n\
             kernel/a/loop_b.ko:\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("modules.softdep"),
            "# Soft dependencies extracted from modules themselves.\n\
             softdep crc_t10dif pre: crct10dif post: something_else\n\
             softdep loop_a pre: loop-b\n\
             softdep loop_b pre: loop_a nonexistent_thing\n\
             softdep virtio_blk pre: crc32c\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("modules.alias"),
            "alias crct10dif crct10dif_pclmul\nalias crct10dif crct10dif_generic\nalias crypto-crct10dif crct10dif_generic\nalias pci:v00001AF4d* virtio_pci\nalias blockdrv virtio_blk\n",
        )
        .unwrap();
        std::fs::write(dir.join("modules.builtin"), "kernel/lib/crc32c.ko\nkernel/drivers/ata/ahci.ko\n").unwrap();
        t
    }

    fn names(r: &Resolved) -> Vec<&str> {
        r.load_order.iter().map(|m| m.name.as_str()).collect()
    }

    #[test]
    fn synthetic_order_softdeps_builtin_and_names() {
        let t = synthetic();
        let idx = ModuleIndex::load(t.path(), "9.9.9-test").unwrap();
        let r = idx.resolve(&["nvme", "virtio-blk", "ahci", "t10_pi", "loop_a"]).unwrap();
        assert_eq!(
            names(&r),
            [
                "crct10dif_common",
                "crct10dif_pclmul",
                "crct10dif_generic",
                "crc_t10dif",
                "t10_pi",
                "nvme_core",
                "nvme",
                "virtio_ring",
                "virtio",
                "virtio_blk",
                "loop_b",
                "loop_a",
            ]
        );
        assert_eq!(r.builtin, ["ahci"]);
        assert_eq!(r.unresolved_softdeps, ["nonexistent_thing"]);
        let nvme = &r.load_order[6];
        assert_eq!(nvme.rel_path, "kernel/drivers/nvme/host/nvme.ko.zst");
        assert_eq!(nvme.stored_rel_path(), "kernel/drivers/nvme/host/nvme.ko");
        assert_eq!(read_module(&nvme.path).unwrap(), b"module nvme");
        // An alias works as a wanted name.
        assert_eq!(names(&idx.resolve(&["blockdrv"]).unwrap()), ["virtio_ring", "virtio", "virtio_blk"]);
        // Unknown names fail with advice.
        let e = idx.resolve(&["no_such_driver"]).unwrap_err().to_string();
        assert!(e.contains("modinfo"), "{e}");
    }

    #[test]
    fn missing_kernel_is_explained() {
        let t = tempfile::tempdir().unwrap();
        let e = ModuleIndex::load(t.path(), "1.2.3").unwrap_err().to_string();
        assert!(e.contains("linux-image-1.2.3"), "{e}");
        let e = newest_kernel(t.path()).unwrap_err().to_string();
        assert!(e.contains("install linux-image-amd64 or pass --kernel"), "{e}");
    }

    #[test]
    fn reads_compressed_modules() {
        let t = tempfile::tempdir().unwrap();
        let body = b"\x7fELF pretend module".repeat(100);
        let plain = t.path().join("m.ko");
        std::fs::write(&plain, &body).unwrap();
        for (ext, cmd) in [("xz", "xz --check=crc32 -c"), ("gz", "gzip -9 -c"), ("zst", "zstd -q -c")] {
            let out = t.path().join(format!("m.ko.{ext}"));
            let st = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("{cmd} {} > {}", plain.display(), out.display()))
                .status()
                .unwrap();
            assert!(st.success(), "{cmd}");
            assert_eq!(read_module(&out).unwrap(), body, "{ext}");
        }
        assert_eq!(read_module(&plain).unwrap(), body);
        let e = read_module(&t.path().join("missing.ko")).unwrap_err().to_string();
        assert!(e.contains("missing.ko"), "{e}");
    }

    #[test]
    fn normalisation() {
        assert_eq!(normalize("nvme-core"), "nvme_core");
        assert_eq!(normalize("kernel/lib/crc64-rocksoft.ko.xz"), "crc64_rocksoft");
        assert_eq!(normalize("sd_mod.ko"), "sd_mod");
        assert!(version_key("6.10.0-1-amd64") > version_key("6.9.12-3-amd64"));
    }

    /// Against the kernel installed by linux-image-amd64 (setup installs it).
    #[test]
    fn real_installed_kernel() {
        let (ver, _kernel) = newest_kernel(Path::new("/")).expect("install linux-image-amd64 (scripts/setup.sh)");
        let idx = ModuleIndex::load(Path::new("/"), &ver).unwrap();
        let r = idx.resolve(DEFAULT_MODULES).unwrap();
        let n = names(&r);
        let pos = |m: &str| n.iter().position(|x| *x == m).unwrap_or_else(|| panic!("{m} missing from {n:?}"));
        for (before, after) in [
            ("virtio_ring", "virtio"),
            ("virtio", "virtio_pci"),
            ("virtio", "virtio_blk"),
            ("failover", "net_failover"),
            ("net_failover", "virtio_net"),
            ("scsi_common", "scsi_mod"),
            ("scsi_mod", "libata"),
            ("libata", "libahci"),
            ("libahci", "ahci"),
            ("crct10dif_common", "crc_t10dif"),
            ("crct10dif_generic", "crc_t10dif"),
            ("crc64", "crc64_rocksoft"),
            ("crc64_rocksoft_generic", "crc64_rocksoft"),
            ("crc64_rocksoft", "t10_pi"),
            ("t10_pi", "sd_mod"),
            ("nvme_core", "nvme"),
        ] {
            assert!(pos(before) < pos(after), "{before} must load before {after}: {n:?}");
        }
        let uniq: HashSet<_> = n.iter().collect();
        assert_eq!(uniq.len(), n.len(), "duplicates in {n:?}");
        for m in &r.load_order {
            assert!(m.path.is_file(), "{}", m.path.display());
            assert!(!idx.is_builtin(&m.name));
        }
        eprintln!("{} modules for {ver}: {n:?}; built in: {:?}", n.len(), r.builtin);
    }
}
