//! [`KernelBtf`]: vmlinux BTF plus module split BTF, with the lookups ctscope needs.

use std::path::{Path, PathBuf};

use crate::{
    BtfError,
    raw::{Kind, Member, ModifierKind, Object, Type},
};

/// Where the kernel exposes its BTF.
pub const SYSFS_BTF_DIR: &str = "/sys/kernel/btf";

/// Modules whose split BTF [`KernelBtf::load`] adds when present.
pub const DEFAULT_MODULES: &[&str] = &["nf_conntrack"];

/// Name of the base BTF object in [`KernelBtf::type_module`] answers.
pub const VMLINUX: &str = "vmlinux";

/// Typedef/qualifier chains and anonymous-member nesting deeper than this are treated
/// as malformed (they would be cycles in well-formed BTF).
const MAX_DEPTH: usize = 64;

/// The type of `nf_conn.ct_general.use`, which changed from `atomic_t` to `refcount_t`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefcountKind {
    /// `refcount_t` (`struct refcount_struct { atomic_t refs; }`), newer kernels.
    RefcountT,
    /// Bare `atomic_t`, older kernels.
    AtomicT,
    /// Anything else, with its C-like type name.
    Other(String),
}

/// A type id made absolute: which object owns it, and its id there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TypeRef {
    obj: usize,
    id: u32,
}

/// Where a member path ends up: offset from the outer struct, and its type.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MemberLoc {
    pub bit_offset: u64,
    pub bitfield: bool,
    pub ty: TypeRef,
}

/// Kernel BTF: `objects[0]` is vmlinux, the rest are modules' split BTF on top of it.
#[derive(Debug)]
pub struct KernelBtf {
    objects: Vec<Object>,
}

impl KernelBtf {
    /// Loads `/sys/kernel/btf/vmlinux` plus the split BTF of [`DEFAULT_MODULES`] that exist
    /// (a built-in nf_conntrack has no module file; its types are in vmlinux).
    pub fn load() -> Result<Self, BtfError> {
        Self::load_with_modules(DEFAULT_MODULES)
    }

    /// Like [`load`](Self::load), with an explicit list of module names.
    pub fn load_with_modules(modules: &[&str]) -> Result<Self, BtfError> {
        let dir = Path::new(SYSFS_BTF_DIR);
        let vmlinux = dir.join(VMLINUX);
        if !vmlinux.exists() {
            return Err(BtfError::NoKernelBtf { path: vmlinux });
        }
        let present: Vec<PathBuf> = modules
            .iter()
            .map(|m| dir.join(m))
            .filter(|p| p.exists())
            .collect();
        Self::from_files(vmlinux, &present)
    }

    /// Reads a base BTF file and split BTF files built on it. Each module is named after
    /// its file name, as in /sys/kernel/btf.
    pub fn from_files<P: AsRef<Path>>(vmlinux: P, modules: &[P]) -> Result<Self, BtfError> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|source| BtfError::Io {
                path: p.to_owned(),
                source,
            })
        };
        let vmlinux = vmlinux.as_ref();
        let base = Object::parse(
            VMLINUX,
            &vmlinux.display().to_string(),
            &read(vmlinux)?,
            None,
        )?;
        let mut objects = vec![base];
        for m in modules {
            let path = m.as_ref();
            let name = path.file_name().map_or_else(
                || path.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            );
            let source = path.display().to_string();
            objects.push(Object::parse(
                &name,
                &source,
                &read(path)?,
                Some(&objects[0]),
            )?);
        }
        Ok(Self { objects })
    }

    /// Parses in-memory BTF: a base blob and `(name, bytes)` split blobs on top of it.
    pub fn from_bytes(vmlinux: &[u8], modules: &[(&str, &[u8])]) -> Result<Self, BtfError> {
        let base = Object::parse(VMLINUX, "<vmlinux bytes>", vmlinux, None)?;
        let mut objects = vec![base];
        for (name, bytes) in modules {
            let source = format!("<{name} bytes>");
            objects.push(Object::parse(name, &source, bytes, Some(&objects[0]))?);
        }
        Ok(Self { objects })
    }

    /// Names of the loaded BTF objects: "vmlinux" first, then modules.
    pub fn object_names(&self) -> Vec<&str> {
        self.objects.iter().map(|o| o.name.as_str()).collect()
    }

    /// True if a BTF FUNC of that name exists (so fentry/fexit/tp_btf can target it).
    pub fn has_func(&self, name: &str) -> bool {
        self.find(name, |k| matches!(k, Kind::Func { .. }))
            .is_some()
    }

    /// Type id of FUNC `name` in BTF object `object` ("vmlinux" or a loaded module), as
    /// fentry/fexit want it in `attach_btf_id` next to that object's fd (a module's ids
    /// continue after vmlinux's). `None` if that object has no such FUNC, or several.
    pub fn func_id(&self, object: &str, name: &str) -> Option<u32> {
        let obj = self.objects.iter().position(|o| o.name == object)?;
        let mut funcs = self.objects[obj]
            .by_name
            .get(name)
            .into_iter()
            .flatten()
            .filter(|&&id| {
                let r = TypeRef { obj, id };
                self.resolve(r)
                    .is_ok_and(|(owner, t)| owner == obj && matches!(t.kind, Kind::Func { .. }))
            });
        let id = *funcs.next()?;
        funcs.next().is_none().then_some(id)
    }

    /// Parameters of a BTF FUNC as `(name, C-like type name)`, or `None` without BTF.
    pub fn func_params(&self, name: &str) -> Option<Vec<(String, String)>> {
        let params = self.func_proto_params(name).ok()??;
        params
            .into_iter()
            .map(|(pname, ty)| Some((pname, self.type_name(ty))))
            .collect()
    }

    /// True if the struct/union `ty` has the (possibly dotted) member path.
    pub fn struct_has_member(&self, ty: &str, path: &str) -> bool {
        self.member_loc(ty, path).is_ok()
    }

    /// Byte offset of a dotted member path from the start of struct/union `ty`.
    /// Anonymous structs/unions are searched through; `a[2].b` indexes arrays; a bare
    /// array member continues into element 0. Bitfields are rejected.
    pub fn member_offset(&self, ty: &str, path: &str) -> Result<u32, BtfError> {
        let loc = self.member_loc(ty, path)?;
        if loc.bitfield || loc.bit_offset % 8 != 0 {
            return Err(BtfError::Bitfield {
                ty: ty.to_owned(),
                path: path.to_owned(),
            });
        }
        u32::try_from(loc.bit_offset / 8).map_err(|_| unsupported(ty, path, "offset overflows u32"))
    }

    /// `sizeof` a named type (struct, union, enum, typedef, int...).
    pub fn type_size(&self, name: &str) -> Result<u32, BtfError> {
        let r = self
            .find(name, |k| {
                !matches!(k, Kind::Fwd | Kind::Func { .. } | Kind::Var)
            })
            .ok_or_else(|| not_found(name))?;
        self.size_of(r, 0)
    }

    /// Value of enumerator `name` in `enum enum_name` (ENUM or ENUM64).
    pub fn enum_value(&self, enum_name: &str, name: &str) -> Option<i64> {
        self.find_all(enum_name).find_map(|r| {
            let (obj, t) = self.resolve(r).ok()?;
            match &t.kind {
                Kind::Enum { values, .. } => values
                    .iter()
                    .find_map(|&(n, v)| (self.str_in(obj, n).ok()? == name).then_some(v)),
                _ => None,
            }
        })
    }

    /// Type of `nf_conn.ct_general.use`; `None` if the member is missing.
    pub fn refcount_kind(&self) -> Option<RefcountKind> {
        let loc = self.member_loc("nf_conn", "ct_general.use").ok()?;
        let mut cur = loc.ty;
        for _ in 0..MAX_DEPTH {
            let (obj, t) = self.resolve(cur).ok()?;
            let name = self.str_in(obj, t.name_off).unwrap_or("");
            match (name, &t.kind) {
                ("refcount_t" | "refcount_struct", _) => return Some(RefcountKind::RefcountT),
                ("atomic_t", _) => return Some(RefcountKind::AtomicT),
                (_, Kind::Typedef(next) | Kind::Modifier(_, next)) => {
                    cur = TypeRef { obj, id: *next }
                }
                _ => break,
            }
        }
        Some(RefcountKind::Other(self.type_name(loc.ty)))
    }

    /// Which BTF object ("vmlinux" or a module name) defines the named type or function.
    pub fn type_module(&self, name: &str) -> Option<&str> {
        let r = self.find(name, |k| !matches!(k, Kind::Fwd))?;
        Some(self.objects[r.obj].name.as_str())
    }

    // ---- internals shared with the layout code ----

    /// Named FUNC's prototype parameters: `Ok(None)` if no such FUNC.
    pub(crate) fn func_proto_params(
        &self,
        name: &str,
    ) -> Result<Option<Vec<(String, TypeRef)>>, BtfError> {
        let Some(func) = self.find(name, |k| matches!(k, Kind::Func { .. })) else {
            return Ok(None);
        };
        let (obj, t) = self.resolve(func)?;
        let Kind::Func { proto } = t.kind else {
            return Ok(None);
        };
        let (pobj, pt) = self.resolve(TypeRef { obj, id: proto })?;
        let Kind::FuncProto { params, .. } = &pt.kind else {
            return Err(self.malformed(pobj, format!("FUNC {name} has no FUNC_PROTO")));
        };
        params
            .iter()
            .map(|&(n, id)| Ok((self.str_in(pobj, n)?.to_owned(), TypeRef { obj: pobj, id })))
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// Arguments of raw tracepoint `name` (what tp_btf programs see), from the typedef
    /// `btf_trace_<name>`: a pointer to a FUNC_PROTO whose first parameter is the hidden
    /// `void *__data`, dropped here. `Ok(None)` if the kernel has no such tracepoint.
    pub(crate) fn tracepoint_params(
        &self,
        name: &str,
    ) -> Result<Option<Vec<(String, TypeRef)>>, BtfError> {
        let typedef = format!("btf_trace_{name}");
        let Some(r) = self.find(&typedef, |k| matches!(k, Kind::Typedef(_))) else {
            return Ok(None);
        };
        let (ptr, t) = self.strip(r)?;
        let Kind::Ptr(target) = t.kind else {
            return Err(self.malformed(ptr.obj, format!("{typedef} is not a pointer")));
        };
        let (pobj, pt) = self.strip(TypeRef {
            obj: ptr.obj,
            id: target,
        })?;
        let Kind::FuncProto { params, .. } = &pt.kind else {
            return Err(self.malformed(pobj.obj, format!("{typedef} has no FUNC_PROTO")));
        };
        params
            .iter()
            .skip(1)
            .map(|&(n, id)| {
                let pname = self.str_in(pobj.obj, n)?.to_owned();
                Ok((pname, TypeRef { obj: pobj.obj, id }))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// Pointee names of a tracepoint's arguments (`""` for non-pointers), or `None`.
    pub fn tracepoint_arg_types(&self, name: &str) -> Option<Vec<String>> {
        let params = self.tracepoint_params(name).ok()??;
        Some(
            params
                .into_iter()
                .map(|(_, ty)| self.pointee_name(ty).unwrap_or_default())
                .collect(),
        )
    }

    /// Name of the struct/union a pointer parameter points to, through qualifiers.
    pub(crate) fn pointee_name(&self, r: TypeRef) -> Option<String> {
        let (ptr, t) = self.strip(r).ok()?;
        let Kind::Ptr(target) = t.kind else {
            return None;
        };
        let (obj, t) = self
            .strip(TypeRef {
                obj: ptr.obj,
                id: target,
            })
            .ok()?;
        Some(self.str_in(obj.obj, t.name_off).ok()?.to_owned())
    }

    /// Resolves a dotted member path from the named struct/union (or typedef of one).
    pub(crate) fn member_loc(&self, ty: &str, path: &str) -> Result<MemberLoc, BtfError> {
        let mut cur = self
            .find(ty, |k| {
                matches!(
                    k,
                    Kind::Struct { .. } | Kind::Union { .. } | Kind::Typedef(_)
                )
            })
            .ok_or_else(|| not_found(ty))?;
        let mut loc = MemberLoc {
            bit_offset: 0,
            bitfield: false,
            ty: cur,
        };
        for comp in path.split('.') {
            let (name, index) = split_index(comp)
                .ok_or_else(|| unsupported(ty, path, &format!("bad path component `{comp}`")))?;
            let (owner, m, bits) = self
                .find_member(self.strip_arrays(cur, ty, path)?, name, ty, path, 0)?
                .ok_or_else(|| BtfError::MemberNotFound {
                    ty: ty.to_owned(),
                    path: path.to_owned(),
                    missing: comp.to_owned(),
                })?;
            loc.bit_offset = loc.bit_offset.saturating_add(bits);
            loc.bitfield |= m.bitfield_size != 0;
            cur = TypeRef {
                obj: owner,
                id: m.type_id,
            };
            if let Some(i) = index {
                let (elem, nelems) = self.array_of(cur, ty, path)?;
                if i >= nelems {
                    return Err(unsupported(ty, path, &format!("index {i} ≥ {nelems}")));
                }
                let elem_bits = u64::from(self.size_of(elem, 0)?) * 8;
                loc.bit_offset = u64::from(i)
                    .checked_mul(elem_bits)
                    .and_then(|b| b.checked_add(loc.bit_offset))
                    .ok_or_else(|| unsupported(ty, path, "offset overflows"))?;
                cur = elem;
            }
        }
        loc.bitfield |= self.is_int_bitfield(cur)?;
        loc.ty = cur;
        Ok(loc)
    }

    /// `sizeof` a type; pointers are 8 bytes (ctscope targets 64-bit kernels).
    pub(crate) fn size_of(&self, r: TypeRef, depth: usize) -> Result<u32, BtfError> {
        if depth > MAX_DEPTH {
            return Err(self.malformed(r.obj, "type chain too deep"));
        }
        let (obj, t) = self.resolve(r)?;
        match &t.kind {
            Kind::Int { size, .. }
            | Kind::Struct { size, .. }
            | Kind::Union { size, .. }
            | Kind::Enum { size, .. }
            | Kind::Float { size } => Ok(*size),
            Kind::Ptr(_) => Ok(8),
            Kind::Array { elem, nelems } => self
                .size_of(TypeRef { obj, id: *elem }, depth + 1)?
                .checked_mul(*nelems)
                .ok_or_else(|| self.malformed(obj, "array size overflows")),
            Kind::Typedef(next) | Kind::Modifier(_, next) => {
                self.size_of(TypeRef { obj, id: *next }, depth + 1)
            }
            _ => Err(BtfError::Unsupported {
                ty: self.type_name(r),
                path: String::new(),
                reason: "type has no size".into(),
            }),
        }
    }

    /// C-like spelling of a type, e.g. `const struct nf_conntrack_tuple *`.
    pub(crate) fn type_name(&self, r: TypeRef) -> String {
        self.type_name_depth(r, 0)
    }

    fn type_name_depth(&self, r: TypeRef, depth: usize) -> String {
        if r.id == 0 {
            return "void".into();
        }
        let Ok((obj, t)) = self.resolve(r) else {
            return format!("<bad type id {}>", r.id);
        };
        if depth > MAX_DEPTH {
            return "<too deep>".into();
        }
        let name = self.str_in(obj, t.name_off).unwrap_or("?");
        let inner = |id: u32| self.type_name_depth(TypeRef { obj, id }, depth + 1);
        let tagged = |tag: &str| match name {
            "" => format!("{tag} (anon)"),
            n => format!("{tag} {n}"),
        };
        match &t.kind {
            Kind::Struct { .. } => tagged("struct"),
            Kind::Union { .. } => tagged("union"),
            Kind::Enum { .. } => tagged("enum"),
            Kind::Fwd => tagged("struct"),
            Kind::Ptr(next) => format!("{} *", inner(*next)),
            Kind::Array { elem, nelems } => format!("{}[{nelems}]", inner(*elem)),
            Kind::Modifier(ModifierKind::Const, next) => format!("const {}", inner(*next)),
            Kind::Modifier(ModifierKind::Volatile, next) => format!("volatile {}", inner(*next)),
            Kind::Modifier(_, next) => inner(*next),
            Kind::FuncProto { ret, .. } => format!("fn(..) -> {}", inner(*ret)),
            _ => name.to_owned(),
        }
    }

    /// Maps an id seen inside object `r.obj` to its owner: ids below a split object's
    /// first id belong to vmlinux.
    fn resolve(&self, r: TypeRef) -> Result<(usize, &Type), BtfError> {
        let obj = self
            .objects
            .get(r.obj)
            .ok_or_else(|| self.malformed(0, "bad object"))?;
        let owner = if r.id < obj.first_id { 0 } else { r.obj };
        self.objects[owner]
            .get(r.id)
            .map(|t| (owner, t))
            .ok_or_else(|| self.malformed(r.obj, format!("type id {} out of range", r.id)))
    }

    fn str_in(&self, obj: usize, off: u32) -> Result<&str, BtfError> {
        let base = (obj != 0).then(|| &self.objects[0]);
        self.objects[obj].str_at(base, off)
    }

    /// Every definition of `name`, vmlinux first.
    fn find_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = TypeRef> + 'a {
        self.objects.iter().enumerate().flat_map(move |(obj, o)| {
            o.by_name
                .get(name)
                .into_iter()
                .flatten()
                .map(move |&id| TypeRef { obj, id })
        })
    }

    /// First definition of `name` whose kind passes `pred`.
    fn find(&self, name: &str, pred: impl Fn(&Kind) -> bool) -> Option<TypeRef> {
        self.find_all(name)
            .find(|&r| self.resolve(r).is_ok_and(|(_, t)| pred(&t.kind)))
    }

    /// Skips typedefs and qualifiers.
    fn strip(&self, mut r: TypeRef) -> Result<(TypeRef, &Type), BtfError> {
        for _ in 0..MAX_DEPTH {
            let (obj, t) = self.resolve(r)?;
            match t.kind {
                Kind::Typedef(next) | Kind::Modifier(_, next) => r = TypeRef { obj, id: next },
                _ => return Ok((TypeRef { obj, id: r.id }, t)),
            }
        }
        Err(self.malformed(r.obj, "typedef/qualifier chain too deep"))
    }

    /// Skips typedefs, qualifiers and arrays (a member path goes on into element 0).
    fn strip_arrays(&self, mut r: TypeRef, ty: &str, path: &str) -> Result<TypeRef, BtfError> {
        for _ in 0..MAX_DEPTH {
            let (s, t) = self.strip(r)?;
            match t.kind {
                Kind::Array { elem, .. } => {
                    r = TypeRef {
                        obj: s.obj,
                        id: elem,
                    }
                }
                Kind::Ptr(_) => return Err(unsupported(ty, path, "path goes through a pointer")),
                _ => return Ok(s),
            }
        }
        Err(self.malformed(r.obj, "array nesting too deep"))
    }

    fn array_of(&self, r: TypeRef, ty: &str, path: &str) -> Result<(TypeRef, u32), BtfError> {
        let (s, t) = self.strip(r)?;
        match t.kind {
            Kind::Array { elem, nelems } => Ok((
                TypeRef {
                    obj: s.obj,
                    id: elem,
                },
                nelems,
            )),
            _ => Err(unsupported(ty, path, "indexed member is not an array")),
        }
    }

    /// Finds member `name` in the struct/union `r`, searching anonymous members too.
    /// Returns the member's owner object, the member and its bit offset within `r`.
    fn find_member(
        &self,
        r: TypeRef,
        name: &str,
        ty: &str,
        path: &str,
        depth: usize,
    ) -> Result<Option<(usize, Member, u64)>, BtfError> {
        if depth > MAX_DEPTH {
            return Err(self.malformed(r.obj, "anonymous member nesting too deep"));
        }
        let (obj, t) = self.resolve(r)?;
        let members = match &t.kind {
            Kind::Struct { members, .. } | Kind::Union { members, .. } => members,
            Kind::Fwd => return Err(unsupported(ty, path, "type is only forward-declared")),
            _ => return Err(unsupported(ty, path, "not a struct or union")),
        };
        for m in members {
            if self.str_in(obj, m.name_off)? == name {
                return Ok(Some((obj, m.clone(), u64::from(m.bit_offset))));
            }
        }
        // Anonymous struct/union members: their members belong to the parent's namespace.
        for m in members.iter().filter(|m| m.name_off == 0) {
            let (inner, t) = self.strip(TypeRef { obj, id: m.type_id })?;
            if !matches!(t.kind, Kind::Struct { .. } | Kind::Union { .. }) {
                continue;
            }
            if let Some((o, found, bits)) = self.find_member(inner, name, ty, path, depth + 1)? {
                return Ok(Some((o, found, bits + u64::from(m.bit_offset))));
            }
        }
        Ok(None)
    }

    /// Old-style (kind_flag 0) bitfields carry their width in the INT encoding.
    fn is_int_bitfield(&self, r: TypeRef) -> Result<bool, BtfError> {
        let (_, t) = self.strip(r)?;
        Ok(match t.kind {
            Kind::Int {
                size,
                bit_offset,
                bits,
            } => bit_offset != 0 || u64::from(bits) != u64::from(size) * 8,
            _ => false,
        })
    }

    fn malformed(&self, obj: usize, reason: impl Into<String>) -> BtfError {
        let source = self.objects.get(obj).map_or("<btf>", |o| o.source.as_str());
        BtfError::malformed(source, reason)
    }
}

/// Splits `name[3]` into `("name", Some(3))`.
fn split_index(comp: &str) -> Option<(&str, Option<u32>)> {
    match comp.split_once('[') {
        None if !comp.is_empty() => Some((comp, None)),
        None => None,
        Some((name, rest)) => {
            let idx = rest.strip_suffix(']')?.parse().ok()?;
            (!name.is_empty()).then_some((name, Some(idx)))
        }
    }
}

fn not_found(name: &str) -> BtfError {
    BtfError::TypeNotFound {
        name: name.to_owned(),
    }
}

fn unsupported(ty: &str, path: &str, reason: &str) -> BtfError {
    BtfError::Unsupported {
        ty: ty.to_owned(),
        path: path.to_owned(),
        reason: reason.to_owned(),
    }
}
