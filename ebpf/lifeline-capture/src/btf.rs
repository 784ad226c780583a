//! Field offsets of kernel structures, read from the running kernel's BTF
//! (`/sys/kernel/btf/vmlinux`).
//!
//! The kernel programs walk task → files → fdtable → file → inode/dentry; the
//! layout of those structures changes between kernel versions, so the agent
//! looks the offsets up here at load time and hands them to the programs (the
//! user-space equivalent of CO-RE relocations, which Rust eBPF lacks).
//!
//! Only what is needed is parsed: type records, to find a struct by name and a
//! member by name, looking inside anonymous unions and structs.

use std::path::Path;

use lifeline_ebpf_common::Offsets;

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("cannot read kernel BTF from {0}: {1} (the kernel needs CONFIG_DEBUG_INFO_BTF)")]
    Read(String, std::io::Error),
    #[error("kernel BTF is malformed: {0}")]
    Malformed(&'static str),
    #[error("kernel BTF has no {0}")]
    Missing(String),
}

const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

struct Member {
    name: u32,
    type_id: u32,
    /// Offset in bits from the start of the enclosing struct.
    bit_offset: u32,
}

struct Type {
    name: u32,
    kind: u32,
    /// Referenced type for modifiers/typedefs/pointers.
    type_id: u32,
    members: Vec<Member>,
}

/// The parsed type section of a BTF blob.
pub struct Btf {
    strings: Vec<u8>,
    /// Indexed by type id (id 0 is void).
    types: Vec<Type>,
}

fn u32_at(b: &[u8], off: usize) -> Result<u32, BtfError> {
    b.get(off..off + 4).map(|s| u32::from_le_bytes(s.try_into().unwrap())).ok_or(BtfError::Malformed("truncated"))
}

impl Btf {
    pub fn from_sys_fs() -> Result<Btf, BtfError> {
        Self::from_file(Path::new("/sys/kernel/btf/vmlinux"))
    }

    pub fn from_file(path: &Path) -> Result<Btf, BtfError> {
        let data = std::fs::read(path).map_err(|e| BtfError::Read(path.display().to_string(), e))?;
        Self::parse(&data)
    }

    pub fn parse(data: &[u8]) -> Result<Btf, BtfError> {
        if data.len() < 24 || data[0..2] != [0x9f, 0xeb] {
            return Err(BtfError::Malformed("bad magic (only little-endian BTF is supported)"));
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let type_off = u32_at(data, 8)? as usize;
        let type_len = u32_at(data, 12)? as usize;
        let str_off = u32_at(data, 16)? as usize;
        let str_len = u32_at(data, 20)? as usize;
        let types_bytes = data
            .get(hdr_len + type_off..hdr_len + type_off + type_len)
            .ok_or(BtfError::Malformed("type section out of range"))?;
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or(BtfError::Malformed("string section out of range"))?
            .to_vec();

        let mut types = vec![Type { name: 0, kind: 0, type_id: 0, members: Vec::new() }];
        let mut p = 0usize;
        while p < types_bytes.len() {
            let name = u32_at(types_bytes, p)?;
            let info = u32_at(types_bytes, p + 4)?;
            let size_or_type = u32_at(types_bytes, p + 8)?;
            p += 12;
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let kind_flag = info >> 31 == 1;
            let mut members = Vec::new();
            match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => p += 4,
                KIND_ARRAY => p += 12,
                KIND_STRUCT | KIND_UNION => {
                    for i in 0..vlen {
                        let m = p + i * 12;
                        let offset = u32_at(types_bytes, m + 8)?;
                        members.push(Member {
                            name: u32_at(types_bytes, m)?,
                            type_id: u32_at(types_bytes, m + 4)?,
                            bit_offset: if kind_flag { offset & 0xff_ffff } else { offset },
                        });
                    }
                    p += vlen * 12;
                }
                KIND_ENUM | KIND_FUNC_PROTO => p += vlen * 8,
                KIND_DATASEC | KIND_ENUM64 => p += vlen * 12,
                _ => {}
            }
            types.push(Type { name, kind, type_id: size_or_type, members });
        }
        Ok(Btf { strings, types })
    }

    fn name(&self, off: u32) -> &[u8] {
        let s = self.strings.get(off as usize..).unwrap_or(&[]);
        &s[..s.iter().position(|b| *b == 0).unwrap_or(s.len())]
    }

    /// Follows typedefs and qualifiers to the underlying type.
    fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..32 {
            match self.types.get(id as usize).map(|t| t.kind) {
                Some(KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG) => {
                    id = self.types[id as usize].type_id
                }
                _ => break,
            }
        }
        id
    }

    fn struct_id(&self, name: &str) -> Result<u32, BtfError> {
        self.types
            .iter()
            .position(|t| t.kind == KIND_STRUCT && self.name(t.name) == name.as_bytes() && !t.members.is_empty())
            .map(|i| i as u32)
            .ok_or_else(|| BtfError::Missing(format!("struct {name}")))
    }

    /// Finds a member by name in a struct/union, descending into anonymous
    /// members. Returns (bit offset, type id).
    fn member(&self, id: u32, name: &str) -> Option<(u32, u32)> {
        let t = self.types.get(id as usize)?;
        for m in &t.members {
            if self.name(m.name) == name.as_bytes() {
                return Some((m.bit_offset, m.type_id));
            }
            if m.name == 0 {
                let inner = self.resolve(m.type_id);
                if let Some((off, ty)) = self.member(inner, name) {
                    return Some((m.bit_offset + off, ty));
                }
            }
        }
        None
    }

    /// Byte offset of a member path like `"f_path.dentry"` in `struct name`.
    pub fn offset_of(&self, strukt: &str, path: &str) -> Result<u32, BtfError> {
        let mut id = self.struct_id(strukt)?;
        let mut bits = 0;
        for field in path.split('.') {
            let (off, ty) = self.member(id, field).ok_or_else(|| BtfError::Missing(format!("{strukt}.{path}")))?;
            bits += off;
            id = self.resolve(ty);
        }
        if bits % 8 != 0 {
            return Err(BtfError::Missing(format!("{strukt}.{path} (a bitfield)")));
        }
        Ok(bits / 8)
    }

    /// Whether a member exists (for fields that moved between versions).
    pub fn has(&self, strukt: &str, path: &str) -> bool {
        self.offset_of(strukt, path).is_ok()
    }

    /// All offsets the kernel programs need.
    pub fn offsets(&self) -> Result<Offsets, BtfError> {
        let o = |s: &str, p: &str| self.offset_of(s, p);
        // `struct file` keeps its path either as f_path or inside a union.
        Ok(Offsets {
            task_files: o("task_struct", "files")?,
            task_fs: o("task_struct", "fs")?,
            files_fdt: o("files_struct", "fdt")?,
            fdt_max_fds: o("fdtable", "max_fds")?,
            fdt_fd: o("fdtable", "fd")?,
            file_inode: o("file", "f_inode")?,
            file_dentry: o("file", "f_path.dentry")?,
            file_pos: o("file", "f_pos")?,
            file_flags: o("file", "f_flags")?,
            file_mode: o("file", "f_mode")?,
            inode_mode: o("inode", "i_mode")?,
            inode_ino: o("inode", "i_ino")?,
            inode_sb: o("inode", "i_sb")?,
            inode_size: o("inode", "i_size")?,
            sb_dev: o("super_block", "s_dev")?,
            dentry_parent: o("dentry", "d_parent")?,
            dentry_name_len: o("dentry", "d_name.len")?,
            dentry_name_ptr: o("dentry", "d_name.name")?,
            dentry_inode: o("dentry", "d_inode")?,
            dentry_sb: o("dentry", "d_sb")?,
            fs_pwd_dentry: o("fs_struct", "pwd.dentry")?,
            fs_root_dentry: o("fs_struct", "root.dentry")?,
            regs_orig_ax: o("pt_regs", "orig_ax")?,
            regs_args: [
                o("pt_regs", "di")?,
                o("pt_regs", "si")?,
                o("pt_regs", "dx")?,
                o("pt_regs", "r10")?,
                o("pt_regs", "r8")?,
                o("pt_regs", "r9")?,
            ],
            _pad: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against the running kernel: the offsets exist and are plausible.
    #[test]
    fn running_kernel_offsets() {
        let btf = Btf::from_sys_fs().expect("kernel BTF at /sys/kernel/btf/vmlinux");
        let o = btf.offsets().unwrap();
        // Members we know the relative order of in every kernel since 5.x.
        assert!(o.dentry_name_ptr > o.dentry_name_len);
        assert!(o.fdt_fd > o.fdt_max_fds);
        assert_eq!(btf.offset_of("qstr", "name").unwrap(), 8);
        assert!(btf.offset_of("file", "no_such_field").is_err());
    }
}
