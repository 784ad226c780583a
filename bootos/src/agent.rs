//! The unattended backup agent of the boot OS: a static `lifeline-image`
//! and the hook that runs it.
//!
//! * [`static_binary`] builds `lifeline-image` for
//!   `x86_64-unknown-linux-musl` (statically linked: the boot OS has no
//!   shared libraries) with `cargo build --release`, or takes a prebuilt one
//!   from `LIFELINE_BOOTOS_AGENT`. Needs `rustup target add
//!   x86_64-unknown-linux-musl` and Debian's `musl-tools` (musl-gcc, for the
//!   C code of ring and zstd-sys); `scripts/setup.sh` installs both.
//!   [`static_capture_agent`] builds the capture daemon `lifeline-agent` the
//!   same way (for checking eBPF capture on another kernel in a VM).
//! * [`BACKUP_HOOK`] is the hook `/init` execs when the machine is up. With
//!   `lifeline.style=local` the repository is `lifeline-images/` on the
//!   attached filesystem labelled `LIFELINE` (no network, no token). With
//!   `lifeline.style=receiver` it trades the one-time boot token from
//!   `lifeline.token` (`NAME:64hex`, as `lifeline-receiver bootos make`
//!   writes it) for a boot session (`lifeline-image claim`), then in
//!   `lifeline.mode=backup` creates the machine's repository if the receiver
//!   has none yet and images the first disk (the largest block device that
//!   is not a CD, loop or RAM disk) as `lifeline.image` (default
//!   `<machine>-<UTC date and time>`); in `lifeline.mode=restore` it restores
//!   `lifeline.image` onto that disk. It prints `LIFELINE-BACKUP-OK` /
//!   `LIFELINE-RESTORE-OK` or `...-FAILED: <reason>` and powers the machine
//!   off. In `lifeline.mode=menu` it runs `lifeline-image menu` on the
//!   console (the attended text menu; the password is typed, never stored:
//!   see [`attended_files`]), and a shell when the menu is left.
//! * [`unattended_files`] lists what the initramfs needs for it: the agent
//!   at [`AGENT_PATH`], the hook, the receiver's CA certificate at
//!   [`CA_PATH`] and the repository password at [`PASSWORD_PATH`] (mode
//!   0600).
//!
//! **The password lives in the boot OS.** An unattended backup has nobody
//! to type the repository password, so it is put into the initramfs when it
//! is built: whoever can read the initramfs (the receiver's PXE directory,
//! a USB stick made from it) can read the password. Keep such boot OS files
//! as private as the password itself; the attended menu asks for the
//! password instead and its boot OS holds none ([`attended_files`]).

use crate::error::{Error, Result};
use crate::initramfs::{ExtraFile, DEFAULT_HOOK};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The Rust target of the boot OS's agent.
pub const TARGET: &str = "x86_64-unknown-linux-musl";
/// Where the agent is inside the boot OS.
pub const AGENT_PATH: &str = "/bin/lifeline-image";
/// The receiver's CA certificate inside the boot OS.
pub const CA_PATH: &str = "/etc/lifeline/ca.crt";
/// The repository password inside the boot OS (mode 0600).
pub const PASSWORD_PATH: &str = "/etc/lifeline/password";

/// The static `lifeline-image` for the boot OS.
///
/// If `LIFELINE_BOOTOS_AGENT` names a file, that file is used. Otherwise
/// builds it with [`static_build`] (minutes the first time, about a second
/// when up to date).
pub fn static_binary(workspace_root: &Path) -> Result<PathBuf> {
    static_build(workspace_root, "lifeline-image", "LIFELINE_BOOTOS_AGENT")
}

/// The static `lifeline-agent` (the capture daemon, with the eBPF programs
/// built in), for a VM that checks capture on another kernel than the
/// host's (tests/tests/kernels.rs).
///
/// If `LIFELINE_STATIC_CAPTURE_AGENT` names a file, that file is used.
/// Otherwise builds it with [`static_build`]. Besides the musl target it
/// needs what every agent build needs: the pinned nightly and bpf-linker
/// that `lifeline-capture`'s build script compiles the eBPF programs with.
pub fn static_capture_agent(workspace_root: &Path) -> Result<PathBuf> {
    static_build(workspace_root, "lifeline-agent", "LIFELINE_STATIC_CAPTURE_AGENT")
}

/// A static (musl) build of the workspace package `package`, whose binary
/// has the same name.
///
/// If the environment variable `override_var` names a file, that file is
/// used. Otherwise runs `cargo build --release --target
/// x86_64-unknown-linux-musl -p PACKAGE` in `workspace_root` (cargo from
/// `$CARGO`, else `cargo` on the PATH; a no-op when it is up to date) and
/// returns the binary. `scripts/test.sh` runs the same command first, so
/// that tests find it built.
///
/// The build gets a target directory of its own,
/// `<target dir>/lifeline-bootos-agent` (the target dir being
/// `$CARGO_TARGET_DIR` or `<workspace_root>/target`), so that calling this
/// from a test that `cargo test` runs never waits for the lock cargo holds
/// on the main target directory. It is built without debug information
/// and stripped (the workspace's release profile keeps line tables). The
/// first build takes minutes (a release build of the whole gRPC/TLS
/// stack); later calls take about a second.
pub fn static_build(workspace_root: &Path, package: &str, override_var: &str) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(override_var) {
        let p = PathBuf::from(p);
        if !p.is_file() {
            return Err(Error::Missing(format!("{override_var}={} is not a file", p.display())));
        }
        return Ok(p);
    }
    let base = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|d| if d.is_absolute() { d } else { workspace_root.join(d) })
        .unwrap_or_else(|| workspace_root.join("target"));
    let target_dir = base.join("lifeline-bootos-agent");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(&cargo);
    // Run from a test, the environment carries the CARGO_* variables cargo
    // sets for the test (CARGO_PKG_NAME, CARGO_MANIFEST_DIR, ...); build
    // scripts that watch such variables would then rebuild on every call.
    for (k, _) in std::env::vars_os() {
        if let Some(k) = k.to_str() {
            if k.starts_with("CARGO_") && k != "CARGO_HOME" {
                cmd.env_remove(k);
            }
        }
    }
    let out = cmd
        .args(["build", "--release", "--target", TARGET, "-p", package])
        .env("CARGO_TARGET_DIR", &target_dir)
        // No debug information: it would make the agent 60 MB instead of
        // about 10 and the initramfs three times as large.
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        .env("CARGO_PROFILE_RELEASE_STRIP", "true")
        .current_dir(workspace_root)
        .output()
        .map_err(|e| {
            Error::Missing(format!("cannot run {}: {e}; install Rust with rustup", Path::new(&cargo).display()))
        })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = err.lines().collect();
        let tail = lines[lines.len().saturating_sub(20)..].join("\n");
        return Err(Error::Missing(format!(
            "building the static {package} failed (needs `rustup target add {TARGET}` and musl-tools; scripts/setup.sh installs them):\n{tail}"
        )));
    }
    let bin = target_dir.join(TARGET).join("release").join(package);
    if !bin.is_file() {
        return Err(Error::Missing(format!("cargo built {package} but {} does not exist", bin.display())));
    }
    Ok(bin)
}

/// The files an unattended backup needs in the boot OS: the agent (a
/// static binary on this host), [`BACKUP_HOOK`] as [`DEFAULT_HOOK`], the
/// receiver's CA certificate (PEM) and the repository password (stored
/// mode 0600, see the module documentation).
pub fn unattended_files(agent: &Path, ca_pem: &[u8], password: &str) -> Result<Vec<ExtraFile>> {
    if password.is_empty() || password.contains('\n') {
        return Err(Error::Invalid("the repository password must be one non-empty line".into()));
    }
    Ok(vec![
        ExtraFile::executable(AGENT_PATH, agent),
        ExtraFile::bytes(DEFAULT_HOOK, 0o755, backup_hook()),
        ExtraFile::bytes(CA_PATH, 0o644, ca_pem.to_vec()),
        ExtraFile::bytes(PASSWORD_PATH, 0o600, format!("{password}\n")),
    ])
}

/// The files an attended boot OS (the text menu, `lifeline.mode=menu`)
/// needs: the agent, [`BACKUP_HOOK`] and the receiver's CA certificate.
/// **No password**: the menu asks for it on the console.
pub fn attended_files(agent: &Path, ca_pem: &[u8]) -> Vec<ExtraFile> {
    vec![
        ExtraFile::executable(AGENT_PATH, agent),
        ExtraFile::bytes(DEFAULT_HOOK, 0o755, backup_hook()),
        ExtraFile::bytes(CA_PATH, 0o644, ca_pem.to_vec()),
    ]
}

/// The hook for an unattended backup or restore with a receiver (see the
/// module documentation). It reads the `LIFELINE_*` variables `/init` sets
/// from the kernel command line. Marker lines: `lifeline-backup: ...` /
/// `lifeline-restore: ...` (progress), `LIFELINE-BACKUP-OK image=NAME
/// disk=DEV seconds=N` / `LIFELINE-RESTORE-OK ...` and
/// `LIFELINE-BACKUP-FAILED: REASON` / `LIFELINE-RESTORE-FAILED: REASON`.
pub const BACKUP_HOOK: &str = r#"#!/bin/sh
# Lifeline unattended job hook (backup or restore), generated by lifeline-bootos.
export PATH=/bin:/sbin:/usr/bin
AGENT=@AGENT@
CA=@CA@
PASSWORD=@PASSWORD@

case "$LIFELINE_MODE" in
backup) JOB=BACKUP; tag=lifeline-backup ;;
restore) JOB=RESTORE; tag=lifeline-restore ;;
*) JOB=BACKUP; tag=lifeline-backup ;;
esac

fail() {
	echo "LIFELINE-$JOB-FAILED: $*"
	sync
	case "$LIFELINE_MODE" in
	backup|restore) poweroff -f ;;
	esac
	exec setsid cttyhack sh
}

STYLE=${LIFELINE_STYLE:-receiver}
case "$STYLE" in
receiver|local) ;;
*) fail "lifeline.style=$STYLE: receiver or local" ;;
esac
case "$LIFELINE_MODE" in
backup|restore) ;;
menu|"")
	# Attended: the text menu asks for everything, the password included
	# (attended media hold none). The boot token is traded for a session
	# once; the menu comes back after the shell it offers.
	[ -x "$AGENT" ] || fail "$AGENT is missing from the boot OS"
	mkdir -p /run/lifeline
	if [ -n "$LIFELINE_TOKEN" ] && [ ! -f /run/lifeline/token ]; then
		umask 077
		printf '%s\n' "$LIFELINE_TOKEN" > /run/lifeline/boot-token
		umask 022
	fi
	while :; do
		setsid cttyhack "$AGENT" menu --machine "${LIFELINE_MACHINE:-unknown}" --style "$STYLE" \
			--receiver "$LIFELINE_RECEIVER" --ca "$CA" --boot-token-file /run/lifeline/boot-token \
			--network "$LIFELINE_IFACE"
		echo "lifeline: starting a shell; type exit to return to the menu"
		setsid cttyhack sh
		sleep 1
	done
	;;
*) fail "lifeline.mode=$LIFELINE_MODE: backup, restore or menu" ;;
esac
[ -n "$LIFELINE_MACHINE" ] || fail "no lifeline.machine=NAME on the kernel command line"
[ "$LIFELINE_MODE" = backup ] || [ -n "$LIFELINE_IMAGE" ] || fail "restore needs lifeline.image=NAME"
[ -x "$AGENT" ] || fail "$AGENT is missing from the boot OS"
[ -f "$PASSWORD" ] || fail "$PASSWORD is missing: an unattended job needs the repository password in the boot OS"

destdisk=""
if [ "$STYLE" = receiver ]; then
	[ -n "$LIFELINE_IFACE" ] || fail "no network (no DHCP lease on any interface)"
	[ -n "$LIFELINE_RECEIVER" ] || fail "no lifeline.receiver=https://HOST:PORT on the kernel command line"
	[ -n "$LIFELINE_TOKEN" ] || fail "no lifeline.token=NAME:SECRET on the kernel command line"
	case "$LIFELINE_TOKEN" in
	*:*) ;;
	*) fail "lifeline.token must be NAME:SECRET as lifeline-receiver bootos make writes it" ;;
	esac
	[ -f "$CA" ] || fail "$CA (the receiver's CA certificate) is missing from the boot OS"
	mkdir -p /run/lifeline
	umask 077
	printf '%s\n' "$LIFELINE_TOKEN" > /run/lifeline/boot-token
	umask 022
	# The one-time boot token becomes a boot session (this machine's images
	# only); a used, revoked or foreign token is refused before any disk is
	# touched.
	if out=$("$AGENT" --quiet claim --repo "$LIFELINE_RECEIVER" --token-file /run/lifeline/boot-token --ca "$CA" --out /run/lifeline/token 2>&1); then
		echo "$tag: $out"
	else
		fail "$(echo "$out" | tail -n 2 | tr '\n' ' ')"
	fi
	rm -f /run/lifeline/boot-token
	set -- --repo "$LIFELINE_RECEIVER" --token-file /run/lifeline/token --ca "$CA" --password-file "$PASSWORD"
	where=$LIFELINE_RECEIVER
else
	# Storage attached to this machine: the filesystem labelled LIFELINE.
	dest=$(findfs LABEL=LIFELINE 2>/dev/null) || fail "no filesystem labelled LIFELINE is attached: give the backup disk's filesystem that label (e2label, fatlabel or exfatlabel DEVICE LIFELINE) and boot again"
	mkdir -p /mnt/lifeline
	mount "$dest" /mnt/lifeline || fail "cannot mount $dest (the LIFELINE filesystem)"
	part=${dest##*/}
	if [ -e "/sys/class/block/$part/partition" ]; then
		destdisk=$(basename "$(readlink -f "/sys/class/block/$part/..")")
	else
		destdisk=$part
	fi
	set -- --repo /mnt/lifeline/lifeline-images --password-file "$PASSWORD"
	where="$dest (LIFELINE)"
fi

# The machine's disk: the largest block device that is not a CD, loop or RAM
# disk, nor the disk holding the LIFELINE filesystem.
disk=""
best=-1
for d in /sys/block/*; do
	n=${d##*/}
	case "$n" in sr*|loop*|ram*|zram*|fd*|"*") continue ;; esac
	[ "$n" = "$destdisk" ] && continue
	s=$(cat "$d/size" 2>/dev/null || echo 0)
	if [ "$s" -gt "$best" ]; then
		best=$s
		disk=$n
	fi
done
[ -n "$disk" ] && [ "$best" -gt 0 ] || fail "no disk found"
[ -b "/dev/$disk" ] || fail "/dev/$disk is not a block device"

if [ "$LIFELINE_MODE" = restore ]; then
	name="$LIFELINE_IMAGE"
	echo "$tag: image $name from $where to /dev/$disk ($((best / 2048)) MiB) as machine $LIFELINE_MACHINE"
	t0=$(date +%s)
	# lifeline-image checks everything that can refuse (password, image,
	# every chunk present, disk size) before it writes a byte.
	"$AGENT" --quiet restore "$@" --name "$name" "/dev/$disk" > /tmp/lifeline-job.log 2>&1
else
	echo "$tag: disk /dev/$disk ($((best / 2048)) MiB) to $where as machine $LIFELINE_MACHINE"
	if out=$("$AGENT" --quiet init "$@" 2>&1); then
		echo "$tag: created the repository on $where"
	else
		case "$out" in
		*"already holds"*) echo "$tag: $where already holds the repository" ;;
		*) fail "init: $(echo "$out" | tail -n 3 | tr '\n' ' ')" ;;
		esac
	fi
	name="${LIFELINE_IMAGE:-$LIFELINE_MACHINE-$(date -u +%Y%m%d-%H%M%S)}"
	t0=$(date +%s)
	"$AGENT" --quiet backup "$@" --name "$name" --machine "$LIFELINE_MACHINE" "/dev/$disk" > /tmp/lifeline-job.log 2>&1
fi
rc=$?
t1=$(date +%s)
sed "s/^/$tag: /" /tmp/lifeline-job.log
[ "$rc" = 0 ] || fail "$LIFELINE_MODE of /dev/$disk exited with $rc: $(tail -n 3 /tmp/lifeline-job.log | tr '\n' ' ')"
sync
[ -z "$destdisk" ] || umount /mnt/lifeline || fail "cannot unmount the LIFELINE filesystem"
echo "LIFELINE-$JOB-OK image=$name disk=/dev/$disk seconds=$((t1 - t0))"
poweroff -f
"#;

/// [`BACKUP_HOOK`] with its paths filled in.
pub fn backup_hook() -> String {
    BACKUP_HOOK.replace("@AGENT@", AGENT_PATH).replace("@CA@", CA_PATH).replace("@PASSWORD@", PASSWORD_PATH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hook_is_valid_shell() {
        let h = backup_hook();
        assert!(!h.contains("@AGENT@") && !h.contains("@CA@") && !h.contains("@PASSWORD@"));
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("hook");
        std::fs::write(&p, &h).unwrap();
        let out = Command::new("sh").arg("-n").arg(&p).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }

    #[test]
    fn files() {
        let f = unattended_files(Path::new("/x/lifeline-image"), b"PEM", "pw").unwrap();
        assert_eq!(f.len(), 4);
        let pw = f.iter().find(|f| f.dest == PASSWORD_PATH).unwrap();
        assert_eq!(pw.mode, 0o600);
        let hook = f.iter().find(|f| f.dest == DEFAULT_HOOK).unwrap();
        match &hook.source {
            crate::Source::Bytes(b) => assert_eq!(b, backup_hook().as_bytes()),
            _ => panic!("hook is not literal"),
        }
        assert!(unattended_files(Path::new("/x"), b"", "a\nb").is_err());
        let f = attended_files(Path::new("/x/lifeline-image"), b"PEM");
        assert_eq!(f.len(), 3);
        assert!(f.iter().all(|f| f.dest != PASSWORD_PATH), "attended media hold no password");
    }
}
