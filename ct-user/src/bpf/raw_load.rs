//! Loading and attaching BPF programs through bpf(2) directly, for what aya 0.14 cannot
//! do: fentry/fexit on functions of kernel modules (aya never passes the module's BTF
//! object fd), and program types it does not know (BPF_PROG_TYPE_NETFILTER).
//!
//! The programs come from the same object aya loaded, and use aya's maps: [`RawObject`]
//! parses the object with aya-obj, points its map references at the maps aya created
//! (including the `.rodata`/`.bss` maps that hold loader-set globals such as `LAYOUT`)
//! and links its subprograms. Then [`RawObject::load`] runs `BPF_PROG_LOAD` with the
//! [`ProgSpec`] the caller chooses:
//!
//! ```ignore
//! let raw = RawObject::new(OBJECT, &ebpf)?;
//! let btf = raw_load::kernel_btf_fd("nf_conntrack")?; // None: built in, vmlinux
//! let prog = raw.load("confirm_enter_fentry", &ProgSpec {
//!     prog_type: bpf_prog_type::BPF_PROG_TYPE_TRACING,
//!     expected_attach_type: Some(bpf_attach_type::BPF_TRACE_FENTRY),
//!     attach_btf_id: Some(type_id_of_the_func_in_that_btf),
//!     attach_btf_obj_fd: btf.as_ref().map(|fd| fd.as_fd()),
//! })?;
//! let link = raw_load::attach_tracing(prog.as_fd())?; // keep it: closing detaches
//! ```
//!
//! Every `unsafe` of the raw path is in this module: the bpf(2) call and reading the
//! union it fills.

use std::{
    collections::{HashMap, HashSet},
    ffi::CString,
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
};

use aya::{Ebpf, maps::Map};
use aya_obj::{
    Object,
    generated::{bpf_attach_type, bpf_attr, bpf_btf_info, bpf_cmd, bpf_insn, bpf_prog_type},
};

/// How one program is loaded: `BPF_PROG_LOAD`'s type and attach fields.
#[derive(Clone, Copy, Debug)]
pub struct ProgSpec<'a> {
    pub prog_type: bpf_prog_type,
    pub expected_attach_type: Option<bpf_attach_type>,
    /// BTF type id of the target (a FUNC for fentry/fexit), in `attach_btf_obj_fd`'s BTF.
    pub attach_btf_id: Option<u32>,
    /// The kernel BTF object holding `attach_btf_id` ([`kernel_btf_fd`]); `None` for vmlinux.
    pub attach_btf_obj_fd: Option<BorrowedFd<'a>>,
}

/// The BPF object with its map references bound to an [`Ebpf`]'s maps and its calls
/// linked, ready for [`load`](Self::load). It holds its own duplicates of the map fds, so
/// it stays valid whatever happens to the `Ebpf` (the maps live while either holds them).
pub struct RawObject {
    obj: Object,
    /// The fds written into the instructions: they must stay open until the last load.
    _maps: Vec<OwnedFd>,
}

impl RawObject {
    /// Parses `object` (the bytes `ebpf` was loaded from) and binds it to `ebpf`'s maps.
    pub fn new(object: &[u8], ebpf: &Ebpf) -> Result<Self, String> {
        let mut obj = Object::parse(object).map_err(|e| format!("parsing the BPF object: {e}"))?;
        let mut fds = HashMap::new();
        for name in obj.maps.keys() {
            let map = ebpf.map(name).ok_or_else(|| {
                format!("map {name} of the BPF object was not created by the loader")
            })?;
            let fd = map_fd(map)
                .try_clone_to_owned()
                .map_err(|e| format!("duplicating the fd of map {name}: {e}"))?;
            fds.insert(name.clone(), fd);
        }
        let text_sections: HashSet<usize> = obj.functions.keys().map(|&(s, _)| s).collect();
        let maps: Vec<(String, i32, aya_obj::Map)> = obj
            .maps
            .iter()
            .map(|(name, m)| (name.clone(), fds[name].as_raw_fd(), m.clone()))
            .collect();
        obj.relocate_maps(
            maps.iter().map(|(n, fd, m)| (n.as_str(), *fd, m)),
            &text_sections,
        )
        .map_err(|e| format!("binding the BPF object to its maps: {e}"))?;
        obj.relocate_calls(&text_sections)
            .map_err(|e| format!("linking the BPF object's calls: {e}"))?;
        Ok(Self {
            obj,
            _maps: fds.into_values().collect(),
        })
    }

    /// Loads program `name` as `spec` says. On refusal the error carries errno and the
    /// verifier's last lines.
    pub fn load(&self, name: &str, spec: &ProgSpec<'_>) -> Result<OwnedFd, String> {
        let prog = self
            .obj
            .programs
            .get(name)
            .ok_or_else(|| format!("program {name} missing from the BPF object"))?;
        let func = self
            .obj
            .functions
            .get(&prog.function_key())
            .ok_or_else(|| format!("program {name} has no code in the BPF object"))?;
        let load =
            |log: &mut [u8]| prog_load(name, &func.instructions, &self.obj.license, spec, log);
        match load(&mut []) {
            Ok(fd) => Ok(fd),
            Err(first) => {
                // Again with the verifier's log, only to say why.
                let mut log = vec![0u8; 1 << 20];
                match load(&mut log) {
                    Ok(fd) => Ok(fd),
                    Err(e) => {
                        Err(refusal(e, &log).unwrap_or_else(|| format!("load refused: {first}")))
                    }
                }
            }
        }
    }
}

/// [`RawObject::new`] then [`RawObject::load`], for a single program.
pub fn load(
    object: &[u8],
    ebpf: &Ebpf,
    name: &str,
    spec: &ProgSpec<'_>,
) -> Result<OwnedFd, String> {
    RawObject::new(object, ebpf)?.load(name, spec)
}

/// The fd of the kernel BTF object named `name` ("vmlinux" or a module's name, as in
/// /sys/kernel/btf), or `None` if the kernel has none by that name.
pub fn kernel_btf_fd(name: &str) -> Result<Option<OwnedFd>, String> {
    let mut id = 0;
    loop {
        let mut attr = zeroed_attr();
        attr.__bindgen_anon_6.__bindgen_anon_1.start_id = id;
        match sys_bpf(bpf_cmd::BPF_BTF_GET_NEXT_ID, &mut attr) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
            Err(e) => return Err(format!("BPF_BTF_GET_NEXT_ID: {e}")),
        }
        // SAFETY: the kernel filled the GET_NEXT_ID member of the union we passed.
        id = unsafe { attr.__bindgen_anon_6.next_id };
        let mut attr = zeroed_attr();
        attr.__bindgen_anon_6.__bindgen_anon_1.btf_id = id;
        let fd = match sys_bpf(bpf_cmd::BPF_BTF_GET_FD_BY_ID, &mut attr) {
            Ok(fd) => owned(fd),
            // Unloaded since listed (a module went away): go on with the next.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => return Err(format!("BPF_BTF_GET_FD_BY_ID {id}: {e}")),
        };
        if btf_name(fd.as_fd())? == name.as_bytes() {
            return Ok(Some(fd));
        }
    }
}

/// Attaches a loaded fentry/fexit (or other tracing) program to the target it was
/// loaded for. The program stays attached while the returned link fd is open.
pub fn attach_tracing(prog: BorrowedFd<'_>) -> Result<OwnedFd, String> {
    let mut attr = zeroed_attr();
    attr.raw_tracepoint.prog_fd = prog.as_raw_fd() as u32;
    sys_bpf(bpf_cmd::BPF_RAW_TRACEPOINT_OPEN, &mut attr)
        .map(owned)
        .map_err(|e| format!("attach refused (BPF_RAW_TRACEPOINT_OPEN): {e}"))
}

fn prog_load(
    name: &str,
    insns: &[bpf_insn],
    license: &CString,
    spec: &ProgSpec<'_>,
    log: &mut [u8],
) -> io::Result<OwnedFd> {
    let mut attr = zeroed_attr();
    // Writes to union fields are safe; each names the PROG_LOAD member.
    attr.__bindgen_anon_3.prog_type = spec.prog_type as u32;
    attr.__bindgen_anon_3.expected_attach_type = spec.expected_attach_type.map_or(0, |t| t as u32);
    attr.__bindgen_anon_3.insns = insns.as_ptr() as u64;
    attr.__bindgen_anon_3.insn_cnt = insns.len() as u32;
    attr.__bindgen_anon_3.license = license.as_ptr() as u64;
    // The kernel keeps 15 bytes of the name, and only [A-Za-z0-9_.].
    let mut prog_name = [0 as libc::c_char; 16];
    for (dst, src) in prog_name.iter_mut().zip(name.bytes().take(15)) {
        *dst = src as libc::c_char;
    }
    attr.__bindgen_anon_3.prog_name = prog_name;
    attr.__bindgen_anon_3.attach_btf_id = spec.attach_btf_id.unwrap_or(0);
    if let Some(fd) = spec.attach_btf_obj_fd {
        attr.__bindgen_anon_3.__bindgen_anon_1.attach_btf_obj_fd = fd.as_raw_fd() as u32;
    }
    if !log.is_empty() {
        attr.__bindgen_anon_3.log_level = 1;
        attr.__bindgen_anon_3.log_buf = log.as_mut_ptr() as u64;
        attr.__bindgen_anon_3.log_size = log.len() as u32;
    }
    sys_bpf(bpf_cmd::BPF_PROG_LOAD, &mut attr).map(owned)
}

/// `errno; verifier: <last lines>` when the log says something.
fn refusal(e: io::Error, log: &[u8]) -> Option<String> {
    let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
    let text = String::from_utf8_lossy(&log[..end]);
    let stats = ["verification time", "stack depth", "processed "];
    let mut tail: Vec<&str> = text
        .lines()
        .rev()
        .filter(|l| !l.trim().is_empty() && !stats.iter().any(|s| l.starts_with(s)))
        .take(2)
        .collect();
    if tail.is_empty() {
        return None;
    }
    tail.reverse();
    Some(format!("load refused: {e}; verifier: {}", tail.join(" | ")))
}

/// The name the kernel gives a BTF object ("vmlinux", or the module's).
fn btf_name(fd: BorrowedFd<'_>) -> Result<Vec<u8>, String> {
    let mut name = [0u8; 64];
    // SAFETY: bpf_btf_info is plain integers; all-zero is a valid value.
    let mut info: bpf_btf_info = unsafe { std::mem::zeroed() };
    info.name = name.as_mut_ptr() as u64;
    info.name_len = name.len() as u32;
    let mut attr = zeroed_attr();
    attr.info.bpf_fd = fd.as_raw_fd() as u32;
    attr.info.info_len = size_of::<bpf_btf_info>() as u32;
    attr.info.info = &mut info as *mut bpf_btf_info as u64;
    sys_bpf(bpf_cmd::BPF_OBJ_GET_INFO_BY_FD, &mut attr)
        .map_err(|e| format!("BPF_OBJ_GET_INFO_BY_FD on a BTF object: {e}"))?;
    let len = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    Ok(name[..len].to_vec())
}

/// The fd of any map aya created: every variant wraps a `MapData`.
fn map_fd(map: &Map) -> BorrowedFd<'_> {
    macro_rules! fd_of {
        ($($variant:ident),* $(,)?) => {
            match map { $(Map::$variant(data))|* => data.fd().as_fd() }
        };
    }
    fd_of!(
        Array,
        ArrayOfMaps,
        BloomFilter,
        CgroupArray,
        CgroupStorage,
        CgrpStorage,
        CpuMap,
        DevMap,
        DevMapHash,
        HashMap,
        HashOfMaps,
        InodeStorage,
        LpmTrie,
        LruHashMap,
        PerCpuArray,
        PerCpuCgroupStorage,
        PerCpuHashMap,
        PerCpuLruHashMap,
        PerfEventArray,
        ProgramArray,
        Queue,
        ReusePortSockArray,
        RingBuf,
        SockHash,
        SockMap,
        SkStorage,
        Stack,
        StackTraceMap,
        Unsupported,
        XskMap,
    )
}

fn zeroed_attr() -> bpf_attr {
    // SAFETY: bpf_attr is a union of plain integer structs; all-zero is the value the
    // kernel expects for every field not set (it rejects non-zero unused tails).
    unsafe { std::mem::zeroed() }
}

/// bpf(2). Returns the non-negative result (an fd for the commands that create one).
fn sys_bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<i32> {
    // SAFETY: `attr` is a valid, exclusively borrowed bpf_attr of the size we pass; the
    // pointers inside it (instructions, license, log, info buffers) are set by callers
    // from live borrows that outlive this call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_int,
            attr as *mut bpf_attr,
            size_of::<bpf_attr>() as u32,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as i32)
    }
}

fn owned(fd: i32) -> OwnedFd {
    // SAFETY: `fd` was just returned by bpf(2) as a new descriptor that nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bpf::loader::{DEFAULT_RING_BYTES, OBJECT};

    /// aya's maps for the real object, or `None` after saying why not here.
    fn aya_maps() -> Option<Ebpf> {
        if OBJECT.is_empty() {
            println!("SKIPPED: raw_load: built without the BPF object (AYA_BUILD_SKIP)");
            return None;
        }
        match aya::EbpfLoader::new()
            .map_max_entries("EVENTS", DEFAULT_RING_BYTES)
            .load(OBJECT)
        {
            Ok(ebpf) => Some(ebpf),
            Err(e) => {
                println!("SKIPPED: raw_load: cannot create BPF maps here (needs root): {e}");
                None
            }
        }
    }

    /// A kprobe-type program (it loads on every kernel with BPF, kprobes or not) goes
    /// through the raw path with aya's maps, the `.rodata` globals' map included.
    #[test]
    fn loads_a_program_bound_to_ayas_maps() {
        let Some(ebpf) = aya_maps() else { return };
        let spec = ProgSpec {
            prog_type: bpf_prog_type::BPF_PROG_TYPE_KPROBE,
            expected_attach_type: None,
            attach_btf_id: None,
            attach_btf_obj_fd: None,
        };
        let fd = load(OBJECT, &ebpf, "ct_delete_enter", &spec).expect("raw load");
        assert!(fd.as_raw_fd() > 2);
        let raw = RawObject::new(OBJECT, &ebpf).unwrap();
        let err = raw.load("no_such_program", &spec).unwrap_err();
        assert!(err.contains("no_such_program"), "{err}");
        // A refusal says what the kernel said.
        let wrong = ProgSpec {
            prog_type: bpf_prog_type::BPF_PROG_TYPE_TRACING,
            expected_attach_type: Some(bpf_attach_type::BPF_TRACE_FENTRY),
            attach_btf_id: Some(u32::MAX),
            attach_btf_obj_fd: None,
        };
        let err = raw.load("fe_ct_free_enter", &wrong).unwrap_err();
        assert!(
            err.starts_with("load refused") || err.contains("os error"),
            "{err}"
        );
    }

    #[test]
    fn finds_vmlinux_btf_and_not_a_made_up_module() {
        if aya_maps().is_none() {
            return;
        }
        assert!(kernel_btf_fd("vmlinux").unwrap().is_some());
        assert!(kernel_btf_fd("no_such_module_xyz").unwrap().is_none());
    }
}
