//! Tier 1 through BPF trampolines: each kprobe/kretprobe program's fentry/fexit twin,
//! attached where the kernel allows it (kretprobes cost several times what fexit costs).
//!
//! nf_conntrack is a module on distro kernels, so its functions' BTF is the module's split
//! BTF: the twin is loaded with the module's BTF object fd and the FUNC's id there
//! ([`raw_load`]), which aya 0.14 cannot do. A twin that cannot load or attach leaves its
//! hook to the kprobe, and says why.

use std::os::fd::{AsFd, OwnedFd};

use aya::Ebpf;
use aya_obj::generated::{bpf_attach_type, bpf_prog_type};
use ct_btf::{KernelBtf, VMLINUX};

use crate::bpf::{
    hooks::{HookKind, HookSpec, Kallsyms, Resolution},
    raw_load::{self, ProgSpec, RawObject},
};

/// Set (to anything but "0") to keep tier 1 on kprobes: for kernels whose trampolines
/// misbehave, and for testing the fallback.
pub const NO_FENTRY_ENV: &str = "CTSCOPE_NO_FENTRY";

/// The BTF object that holds nf_conntrack's functions.
const CONNTRACK: &str = "nf_conntrack";

/// What loading twins needs, prepared once per load.
pub struct Trampolines {
    raw: RawObject,
    btf: KernelBtf,
    /// "nf_conntrack" when it is a module, else "vmlinux".
    object: &'static str,
    /// That object's fd; `None` for vmlinux, which the kernel takes by default.
    object_fd: Option<OwnedFd>,
}

impl Trampolines {
    /// `Err` says why no twin can be tried on this kernel (or run).
    pub fn new(object: &[u8], ebpf: &Ebpf, btf: KernelBtf) -> Result<Self, String> {
        if std::env::var(NO_FENTRY_ENV).is_ok_and(|v| !v.is_empty() && v != "0") {
            return Err(format!("fentry not tried: {NO_FENTRY_ENV} is set"));
        }
        let module = btf.object_names().contains(&CONNTRACK);
        if !module && is_module(CONNTRACK) {
            // 5.10: BTF in vmlinux only (module BTF came in 5.11), so nf_conntrack's
            // functions have no prototype a trampoline could be built from.
            return Err(format!(
                "fentry not used: the {CONNTRACK} module has no BTF (no /sys/kernel/btf/{CONNTRACK}: \
                 a kernel without module BTF), and fentry needs its functions' BTF"
            ));
        }
        let (name, object_fd) = if module {
            let fd = raw_load::kernel_btf_fd(CONNTRACK)
                .map_err(|e| {
                    // The kernel lists BTF objects to CAP_SYS_ADMIN only.
                    let hint = if e.contains("os error 1)") {
                        " (needs CAP_SYS_ADMIN)"
                    } else {
                        ""
                    };
                    format!("fentry: finding the {CONNTRACK} module's BTF: {e}{hint}")
                })?
                .ok_or_else(|| format!("fentry: the kernel lists no BTF object {CONNTRACK}"))?;
            (CONNTRACK, Some(fd))
        } else {
            (VMLINUX, None)
        };
        Ok(Self {
            raw: RawObject::new(object, ebpf).map_err(|e| format!("fentry: {e}"))?,
            btf,
            object: name,
            object_fd,
        })
    }

    /// Loads and attaches the twin of `spec` on the first of its targets that has an
    /// exact symbol and a BTF FUNC; returns that target and the link (detached on close).
    pub fn attach(
        &self,
        spec: &HookSpec,
        kallsyms: &Kallsyms,
    ) -> Result<(String, OwnedFd), String> {
        let twin = spec.twin.ok_or("no fentry twin")?;
        let mut why = Vec::new();
        for func in spec.targets {
            match self.attach_to(spec, twin.program, twin.params, func, kallsyms) {
                Ok(link) => return Ok((func.to_string(), link)),
                Err(e) => why.push(format!("{func}: {e}")),
            }
        }
        Err(why.join("; "))
    }

    fn attach_to(
        &self,
        spec: &HookSpec,
        program: &str,
        params: Option<usize>,
        func: &str,
        kallsyms: &Kallsyms,
    ) -> Result<OwnedFd, String> {
        // The kernel finds the trampoline's address by the exact name: a compiler clone
        // (`.isra.0`) has other arguments, and a duplicate name may be another function.
        match kallsyms.resolve(func) {
            Resolution::Found(symbol) if symbol == func => {}
            Resolution::Found(clone) => return Err(format!("only a compiler clone ({clone})")),
            Resolution::Ambiguous(n) => return Err(format!("{n} symbols share the name")),
            Resolution::Missing => return Err("not in kallsyms".into()),
        }
        let id = self
            .btf
            .func_id(self.object, func)
            .ok_or_else(|| format!("no single BTF FUNC in {}", self.object))?;
        if let Some(n) = params {
            let have = self.btf.func_params(func).map_or(0, |p| p.len());
            if have != n {
                return Err(format!(
                    "{have} parameters in BTF, the fentry program reads {n}"
                ));
            }
        }
        let attach_type = match spec.twin_kind() {
            HookKind::Fexit => bpf_attach_type::BPF_TRACE_FEXIT,
            _ => bpf_attach_type::BPF_TRACE_FENTRY,
        };
        let prog = self.raw.load(
            program,
            &ProgSpec {
                prog_type: bpf_prog_type::BPF_PROG_TYPE_TRACING,
                expected_attach_type: Some(attach_type),
                attach_btf_id: Some(id),
                attach_btf_obj_fd: self.object_fd.as_ref().map(|fd| fd.as_fd()),
            },
        )?;
        raw_load::attach_tracing(prog.as_fd())
    }
}

/// Whether `name` is a loaded module (built-in code has no `initstate`).
fn is_module(name: &str) -> bool {
    std::path::Path::new("/sys/module")
        .join(name)
        .join("initstate")
        .exists()
}

#[cfg(test)]
mod tests {
    use aya_obj::{Object, ProgramSection};

    use crate::bpf::{
        hooks::{HookKind, TIER1},
        loader::OBJECT,
    };

    /// Every twin the plan names is in the object, as the section its kind needs.
    #[test]
    fn every_twin_is_in_the_object_with_its_kind() {
        if OBJECT.is_empty() {
            println!("SKIPPED: twins: built without the BPF object (AYA_BUILD_SKIP)");
            return;
        }
        let obj = Object::parse(OBJECT).expect("parse the BPF object");
        let twins: Vec<_> = TIER1
            .iter()
            .filter_map(|s| s.twin.map(|t| (s, t)))
            .collect();
        assert_eq!(twins.len(), 17, "every kprobe/kretprobe has a twin");
        for (spec, twin) in twins {
            let prog = obj
                .programs
                .get(twin.program)
                .unwrap_or_else(|| panic!("{} missing from the object", twin.program));
            let fits = matches!(
                (spec.twin_kind(), &prog.section),
                (HookKind::Fentry, ProgramSection::FEntry { .. })
                    | (HookKind::Fexit, ProgramSection::FExit { .. })
            );
            assert!(
                fits,
                "{}: {:?} for a {:?}",
                twin.program, prog.section, spec.kind
            );
        }
    }
}
