//! A minimal writer for the "new ASCII" (newc) cpio format the kernel's initramfs
//! unpacker reads, gzipped.
use std::{
    fs::{self, File},
    io::{self, BufWriter, Write as _},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use flate2::{Compression, write::GzEncoder};

/// Archives everything under `root` (plus /dev/console) into `image`.
pub fn write_gz(root: &Path, image: &Path) -> Result<()> {
    let file = File::create(image).with_context(|| format!("creating {}", image.display()))?;
    // Fast compression: the image is rebuilt on every run and read once.
    let mut out = GzEncoder::new(BufWriter::new(file), Compression::fast());
    let mut ino = 1;
    let mut paths = Vec::new();
    walk(root, &mut paths)?;
    for path in paths {
        entry(&mut out, root, &path, ino)?;
        ino += 1;
    }
    // The kernel opens /dev/console for init's stdio before init could mount devtmpfs.
    header(&mut out, "dev/console", 0o020600, ino, 1, 0, (5, 1))?;
    header(&mut out, "TRAILER!!!", 0, 0, 1, 0, (0, 0))?;
    out.finish()?.flush()?;
    Ok(())
}

/// Every path under `dir`, parents before children, in a stable order.
fn walk(dir: &Path, paths: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries: Vec<_> = fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<io::Result<_>>()?;
    entries.sort();
    for path in entries {
        paths.push(path.clone());
        if path.symlink_metadata()?.is_dir() {
            walk(&path, paths)?;
        }
    }
    Ok(())
}

fn entry(out: &mut impl io::Write, root: &Path, path: &Path, ino: u32) -> Result<()> {
    let name = path.strip_prefix(root)?.to_string_lossy().into_owned();
    let meta = path.symlink_metadata()?;
    let data = if meta.file_type().is_symlink() {
        fs::read_link(path)?.into_os_string().into_encoded_bytes()
    } else if meta.is_file() {
        fs::read(path)?
    } else {
        Vec::new()
    };
    let nlink = if meta.is_dir() { 2 } else { 1 };
    header(out, &name, meta.mode(), ino, nlink, data.len(), (0, 0))?;
    out.write_all(&data)?;
    pad(out, data.len())?;
    Ok(())
}

fn header(
    out: &mut impl io::Write,
    name: &str,
    mode: u32,
    ino: u32,
    nlink: u32,
    size: usize,
    rdev: (u32, u32),
) -> Result<()> {
    let size = u32::try_from(size).context("file too large for cpio")?;
    let namesize = u32::try_from(name.len() + 1).context("name too long")?;
    // magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor,
    // rdevmajor, rdevminor, namesize, check
    let fields = [
        ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev.0, rdev.1, namesize, 0,
    ];
    let mut text = String::from("070701");
    for field in fields {
        text.push_str(&format!("{field:08x}"));
    }
    out.write_all(text.as_bytes())?;
    out.write_all(name.as_bytes())?;
    out.write_all(&[0])?;
    pad(out, 110 + name.len() + 1)?;
    Ok(())
}

fn pad(out: &mut impl io::Write, len: usize) -> io::Result<()> {
    out.write_all(&[0; 3][..(4 - len % 4) % 4])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_newc_and_padded() {
        let mut out = Vec::new();
        header(&mut out, "init", 0o100755, 7, 1, 5, (0, 0)).unwrap();
        assert!(out.starts_with(b"070701"));
        assert_eq!(out.len() % 4, 0);
        assert_eq!(&out[110..115], b"init\0");
    }
}
