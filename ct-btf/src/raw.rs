//! Decoding of one BTF blob (base or split) into owned types.
//!
//! Format: include/uapi/linux/btf.h and Documentation/bpf/btf.rst. Every read is
//! bounds-checked so malformed input yields [`BtfError::Malformed`], never a panic.

use std::collections::HashMap;

use crate::BtfError;

const MAGIC: u16 = 0xeb9f;
const HEADER_LEN: usize = 24;

/// A member of a struct/union. `bit_offset` is from the start of the parent.
#[derive(Debug, Clone)]
pub(crate) struct Member {
    pub name_off: u32,
    pub type_id: u32,
    pub bit_offset: u32,
    /// Non-zero for bitfields declared with the kind_flag encoding.
    pub bitfield_size: u32,
}

/// A BTF type, with ids still relative to the owning object (see [`Object::first_id`]).
#[derive(Debug, Clone)]
pub(crate) enum Kind {
    Int {
        size: u32,
        bit_offset: u32,
        bits: u32,
    },
    Ptr(u32),
    Array {
        elem: u32,
        nelems: u32,
    },
    Struct {
        size: u32,
        members: Vec<Member>,
    },
    Union {
        size: u32,
        members: Vec<Member>,
    },
    Enum {
        size: u32,
        values: Vec<(u32, i64)>,
    },
    Fwd,
    /// A named alias of type `.0`.
    Typedef(u32),
    /// A qualifier (or type tag) over the type `.1`.
    Modifier(ModifierKind, u32),
    Func {
        proto: u32,
    },
    FuncProto {
        ret: u32,
        params: Vec<(u32, u32)>,
    },
    Var,
    Datasec,
    Float {
        size: u32,
    },
    DeclTag,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ModifierKind {
    Volatile,
    Const,
    Restrict,
    TypeTag,
}

#[derive(Debug, Clone)]
pub(crate) struct Type {
    pub name_off: u32,
    pub kind: Kind,
}

/// One parsed BTF object: vmlinux, or a module's split BTF on top of it.
#[derive(Debug)]
pub(crate) struct Object {
    /// "vmlinux" or the module name.
    pub name: String,
    /// Where it came from, for error messages.
    pub source: String,
    /// Id of `types[0]`: 1 for base BTF, base count + 1 for split BTF.
    pub first_id: u32,
    pub types: Vec<Type>,
    pub strings: Vec<u8>,
    /// String offsets below this refer to the base object's strings.
    pub str_base: u32,
    /// Non-empty type names to ids (absolute ids).
    pub by_name: HashMap<String, Vec<u32>>,
}

impl Object {
    /// Parses `bytes`; `base` is `Some` for split (module) BTF.
    pub fn parse(
        name: &str,
        source: &str,
        bytes: &[u8],
        base: Option<&Object>,
    ) -> Result<Self, BtfError> {
        let r = Reader::new(bytes, source)?;
        let hdr_len = r.u32(4)? as usize;
        let (type_off, type_len) = (r.u32(8)? as usize, r.u32(12)? as usize);
        let (str_off, str_len) = (r.u32(16)? as usize, r.u32(20)? as usize);
        if hdr_len < HEADER_LEN {
            return Err(BtfError::malformed(
                source,
                format!("header length {hdr_len}"),
            ));
        }
        let types_sec = r.section(hdr_len, type_off, type_len, "type")?;
        let strings = r.section(hdr_len, str_off, str_len, "string")?.to_vec();
        let (first_id, str_base) = match base {
            None => (1, 0),
            Some(b) => (b.next_id(), b.str_base + b.strings.len() as u32),
        };
        let types = decode_types(&r.with(types_sec), first_id)?;
        let mut obj = Object {
            name: name.to_owned(),
            source: source.to_owned(),
            first_id,
            types,
            strings,
            str_base,
            by_name: HashMap::new(),
        };
        obj.index_names(base)?;
        Ok(obj)
    }

    pub fn next_id(&self) -> u32 {
        self.first_id + self.types.len() as u32
    }

    pub fn get(&self, id: u32) -> Option<&Type> {
        let idx = id.checked_sub(self.first_id)?;
        self.types.get(idx as usize)
    }

    /// A string from this object's own table (offset already made local).
    pub fn local_str(&self, off: u32) -> Result<&str, BtfError> {
        let bytes = self
            .strings
            .get(off as usize..)
            .ok_or_else(|| BtfError::malformed(&self.source, format!("string offset {off}")))?;
        let end = bytes.iter().position(|&b| b == 0).ok_or_else(|| {
            BtfError::malformed(&self.source, format!("unterminated string at {off}"))
        })?;
        std::str::from_utf8(&bytes[..end])
            .map_err(|_| BtfError::malformed(&self.source, format!("non-UTF-8 string at {off}")))
    }

    /// Resolves a string offset, which in split BTF may point into the base.
    pub fn str_at<'a>(&'a self, base: Option<&'a Object>, off: u32) -> Result<&'a str, BtfError> {
        match (off.checked_sub(self.str_base), base) {
            (Some(local), _) => self.local_str(local),
            (None, Some(b)) => b.local_str(off),
            (None, None) => Err(BtfError::malformed(
                &self.source,
                "string offset below base",
            )),
        }
    }

    fn index_names(&mut self, base: Option<&Object>) -> Result<(), BtfError> {
        let mut by_name: HashMap<String, Vec<u32>> = HashMap::new();
        for (i, t) in self.types.iter().enumerate() {
            if t.name_off == 0 {
                continue;
            }
            let name = self.str_at(base, t.name_off)?;
            if !name.is_empty() {
                by_name
                    .entry(name.to_owned())
                    .or_default()
                    .push(self.first_id + i as u32);
            }
        }
        self.by_name = by_name;
        Ok(())
    }
}

/// Bounds-checked, endian-aware reads.
struct Reader<'a> {
    bytes: &'a [u8],
    big_endian: bool,
    source: &'a str,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8], source: &'a str) -> Result<Self, BtfError> {
        if bytes.len() < HEADER_LEN {
            return Err(BtfError::malformed(
                source,
                format!("{} bytes, shorter than the header", bytes.len()),
            ));
        }
        let big_endian = match [bytes[0], bytes[1]] {
            m if u16::from_le_bytes(m) == MAGIC => false,
            m if u16::from_be_bytes(m) == MAGIC => true,
            m => {
                return Err(BtfError::malformed(
                    source,
                    format!("bad magic {:#06x}, not BTF", u16::from_le_bytes(m)),
                ));
            }
        };
        if bytes[2] != 1 {
            return Err(BtfError::malformed(
                source,
                format!("unsupported version {}", bytes[2]),
            ));
        }
        Ok(Self {
            bytes,
            big_endian,
            source,
        })
    }

    fn with(&self, bytes: &'a [u8]) -> Self {
        Self {
            bytes,
            big_endian: self.big_endian,
            source: self.source,
        }
    }

    fn u32(&self, off: usize) -> Result<u32, BtfError> {
        let b: [u8; 4] = off
            .checked_add(4)
            .and_then(|end| self.bytes.get(off..end))
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| BtfError::malformed(self.source, format!("truncated at byte {off}")))?;
        Ok(if self.big_endian {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        })
    }

    fn section(
        &self,
        hdr_len: usize,
        off: usize,
        len: usize,
        what: &str,
    ) -> Result<&'a [u8], BtfError> {
        hdr_len
            .checked_add(off)
            .and_then(|start| Some((start, start.checked_add(len)?)))
            .and_then(|(start, end)| self.bytes.get(start..end))
            .ok_or_else(|| {
                BtfError::malformed(
                    self.source,
                    format!(
                        "{what} section {off}+{len} past the end ({} bytes)",
                        self.bytes.len()
                    ),
                )
            })
    }
}

fn decode_types(r: &Reader<'_>, first_id: u32) -> Result<Vec<Type>, BtfError> {
    let mut types = Vec::new();
    let mut off = 0;
    while off < r.bytes.len() {
        let (ty, len) = decode_type(r, off).map_err(|e| match e {
            BtfError::Malformed {
                source_name,
                reason,
            } => BtfError::Malformed {
                source_name,
                reason: format!("type id {}: {reason}", first_id as usize + types.len()),
            },
            e => e,
        })?;
        types.push(ty);
        off += len;
    }
    Ok(types)
}

/// Decodes the type at `off`; returns it and its encoded length.
fn decode_type(r: &Reader<'_>, off: usize) -> Result<(Type, usize), BtfError> {
    let name_off = r.u32(off)?;
    let info = r.u32(off + 4)?;
    let size_or_type = r.u32(off + 8)?;
    let vlen = (info & 0xffff) as usize;
    let kind_flag = info >> 31 == 1;
    let body = off + 12;
    // Vlen-sized records: reject impossible counts before allocating.
    let records = |rec: usize| -> Result<usize, BtfError> {
        let len = vlen * rec;
        if body + len > r.bytes.len() {
            return Err(BtfError::malformed(
                r.source,
                format!("{vlen} records past the end"),
            ));
        }
        Ok(len)
    };
    let (kind, extra) = match (info >> 24) & 0x1f {
        1 => {
            let enc = r.u32(body)?;
            let kind = Kind::Int {
                size: size_or_type,
                bit_offset: (enc >> 16) & 0xff,
                bits: enc & 0xff,
            };
            (kind, 4)
        }
        2 => (Kind::Ptr(size_or_type), 0),
        3 => (
            Kind::Array {
                elem: r.u32(body)?,
                nelems: r.u32(body + 8)?,
            },
            12,
        ),
        k @ (4 | 5) => {
            let len = records(12)?;
            let members = (0..vlen)
                .map(|i| decode_member(r, body + i * 12, kind_flag))
                .collect::<Result<Vec<_>, _>>()?;
            let kind = if k == 4 {
                Kind::Struct {
                    size: size_or_type,
                    members,
                }
            } else {
                Kind::Union {
                    size: size_or_type,
                    members,
                }
            };
            (kind, len)
        }
        6 => {
            let len = records(8)?;
            let values = (0..vlen)
                .map(|i| {
                    Ok((
                        r.u32(body + i * 8)?,
                        enum_val(r.u32(body + i * 8 + 4)?, kind_flag),
                    ))
                })
                .collect::<Result<Vec<_>, BtfError>>()?;
            (
                Kind::Enum {
                    size: size_or_type,
                    values,
                },
                len,
            )
        }
        7 => (Kind::Fwd, 0),
        8 => (Kind::Typedef(size_or_type), 0),
        9 => (Kind::Modifier(ModifierKind::Volatile, size_or_type), 0),
        10 => (Kind::Modifier(ModifierKind::Const, size_or_type), 0),
        11 => (Kind::Modifier(ModifierKind::Restrict, size_or_type), 0),
        12 => (
            Kind::Func {
                proto: size_or_type,
            },
            0,
        ),
        13 => {
            let len = records(8)?;
            let params = (0..vlen)
                .map(|i| Ok((r.u32(body + i * 8)?, r.u32(body + i * 8 + 4)?)))
                .collect::<Result<Vec<_>, BtfError>>()?;
            (
                Kind::FuncProto {
                    ret: size_or_type,
                    params,
                },
                len,
            )
        }
        14 => (Kind::Var, 4),
        15 => (Kind::Datasec, records(12)?),
        16 => (Kind::Float { size: size_or_type }, 0),
        17 => (Kind::DeclTag, 4),
        18 => (Kind::Modifier(ModifierKind::TypeTag, size_or_type), 0),
        19 => {
            let len = records(12)?;
            let values = (0..vlen)
                .map(|i| {
                    let lo = r.u32(body + i * 12 + 4)? as u64;
                    let hi = r.u32(body + i * 12 + 8)? as u64;
                    Ok((r.u32(body + i * 12)?, ((hi << 32) | lo) as i64))
                })
                .collect::<Result<Vec<_>, BtfError>>()?;
            (
                Kind::Enum {
                    size: size_or_type,
                    values,
                },
                len,
            )
        }
        k => return Err(BtfError::malformed(r.source, format!("unknown kind {k}"))),
    };
    if body + extra > r.bytes.len() {
        return Err(BtfError::malformed(r.source, "type record past the end"));
    }
    Ok((Type { name_off, kind }, 12 + extra))
}

/// kind_flag marks a signed enum (as libbpf reads it); otherwise the value is unsigned.
fn enum_val(raw: u32, signed: bool) -> i64 {
    if signed {
        raw as i32 as i64
    } else {
        raw as i64
    }
}

fn decode_member(r: &Reader<'_>, off: usize, kind_flag: bool) -> Result<Member, BtfError> {
    let raw = r.u32(off + 8)?;
    // kind_flag: offset packs bitfield_size (top 8 bits) and bit offset (low 24).
    let (bit_offset, bitfield_size) = if kind_flag {
        (raw & 0xff_ffff, raw >> 24)
    } else {
        (raw, 0)
    };
    Ok(Member {
        name_off: r.u32(off)?,
        type_id: r.u32(off + 4)?,
        bit_offset,
        bitfield_size,
    })
}
