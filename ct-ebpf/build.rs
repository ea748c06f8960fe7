use which::which;

/// Rebuild the BPF object when bpf-linker changes (it is found on PATH at link time).
fn main() {
    let bpf_linker = which("bpf-linker").expect(
        "bpf-linker not found on PATH: run `cargo xtask setup` (it builds bpf-linker against LLVM 22)",
    );
    println!("cargo:rerun-if-changed={}", bpf_linker.to_str().unwrap());
}
