//! Unpacking the tar stream the engine sends for a container's files (`GET
//! /containers/<id>/archive`): regular files and directories under one top directory, with
//! the PAX and GNU long names Go's archive/tar writes. Written by hand: what the updater copy
//! needs is a page of code, and the tar crates bring more than that.
//!
//! Bad input is an error, never a file outside the destination: absolute names and `..`
//! are refused, links and devices are skipped, and sizes and counts are bounded.

use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};

const BLOCK: usize = 512;
/// Bounds for one archive: the balenahup scripts are a few hundred KiB.
pub const MAX_BYTES: u64 = 64 << 20;
pub const MAX_ENTRIES: usize = 10_000;
/// A PAX header or GNU long name larger than this is not a name.
const MAX_META: u64 = 64 << 10;

fn invalid(m: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, m.into())
}

/// What an archive held.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Unpacked {
    pub files: usize,
    pub bytes: u64,
    /// Entries left out: links, devices, FIFOs.
    pub skipped: usize,
}

/// Unpacks the entries under `top/` (the archive of a container path `/top`) into `dest`,
/// which must exist. Returns what was written.
pub fn unpack_under(archive: impl Read, top: &str, dest: &Path) -> io::Result<Unpacked> {
    let mut reader = Reader { inner: archive };
    let mut out = Unpacked::default();
    let mut long_name: Option<String> = None;
    for _ in 0..MAX_ENTRIES {
        let Some(header) = reader.header()? else {
            return Ok(out);
        };
        let size = header.size()?;
        if out.bytes + size > MAX_BYTES {
            return Err(invalid(format!("archive larger than {MAX_BYTES} bytes")));
        }
        out.bytes += size;
        match header.kind() {
            b'x' => long_name = pax_path(&reader.meta(size)?).or(long_name),
            b'L' => {
                let raw = reader.meta(size)?;
                long_name = Some(String::from_utf8_lossy(&raw).trim_end_matches('\0').into());
            }
            b'g' => drop(reader.meta(size)?),
            kind @ (b'0' | 0 | b'7' | b'5') => {
                let name = long_name.take().unwrap_or_else(|| header.name());
                let Some(target) = destination(&name, top, dest)? else {
                    reader.skip(size)?;
                    continue;
                };
                if kind == b'5' {
                    std::fs::create_dir_all(&target)?;
                } else {
                    reader.copy_to_file(size, &target, header.mode()?)?;
                    out.files += 1;
                }
            }
            _ => {
                long_name = None;
                reader.skip(size)?;
                out.skipped += 1;
            }
        }
    }
    Err(invalid(format!(
        "archive has more than {MAX_ENTRIES} entries"
    )))
}

/// Where entry `name` goes: `None` for the top directory itself and for entries outside it.
fn destination(name: &str, top: &str, dest: &Path) -> io::Result<Option<PathBuf>> {
    let mut parts = Path::new(name.trim_start_matches("./")).components();
    match parts.next() {
        Some(Component::Normal(first)) if first == top => {}
        Some(Component::Normal(_)) => return Ok(None),
        _ => return Err(invalid(format!("unsafe name in archive: {name:?}"))),
    }
    let mut path = dest.to_path_buf();
    let mut any = false;
    for part in parts {
        match part {
            Component::Normal(p) => {
                path.push(p);
                any = true;
            }
            Component::CurDir => {}
            _ => return Err(invalid(format!("unsafe name in archive: {name:?}"))),
        }
    }
    Ok(any.then_some(path))
}

/// The `path` record of a PAX extended header (`<len> path=<value>\n` records).
fn pax_path(raw: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(raw);
    text.lines().find_map(|record| {
        let (_, kv) = record.split_once(' ')?;
        kv.strip_prefix("path=").map(String::from)
    })
}

struct Header([u8; BLOCK]);

impl Header {
    fn field(&self, at: usize, len: usize) -> &[u8] {
        let f = &self.0[at..at + len];
        let end = f.iter().position(|b| *b == 0).unwrap_or(len);
        &f[..end]
    }

    fn octal(&self, at: usize, len: usize, what: &str) -> io::Result<u64> {
        let raw = self.field(at, len);
        let text = std::str::from_utf8(raw)
            .unwrap_or("")
            .trim_matches([' ', '\0']);
        if text.is_empty() {
            return Ok(0);
        }
        u64::from_str_radix(text, 8).map_err(|_| invalid(format!("bad {what} in tar header")))
    }

    fn name(&self) -> String {
        let name = String::from_utf8_lossy(self.field(0, 100)).into_owned();
        let prefix = String::from_utf8_lossy(self.field(345, 155)).into_owned();
        if &self.0[257..262] == b"ustar" && !prefix.is_empty() {
            format!("{prefix}/{name}")
        } else {
            name
        }
    }

    fn size(&self) -> io::Result<u64> {
        self.octal(124, 12, "size")
    }

    fn mode(&self) -> io::Result<u32> {
        // Permission bits only: no set-uid, set-gid or sticky files from an image.
        Ok(self.octal(100, 8, "mode")? as u32 & 0o777)
    }

    fn kind(&self) -> u8 {
        self.0[156]
    }

    /// An end-of-archive block (all zeros).
    fn is_end(&self) -> bool {
        self.0.iter().all(|b| *b == 0)
    }

    fn checksum_ok(&self) -> io::Result<bool> {
        Ok(checksum(&self.0) == self.octal(148, 8, "checksum")?)
    }
}

/// A header's checksum: the sum of its bytes with the checksum field read as spaces.
fn checksum(block: &[u8]) -> u64 {
    block
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u64::from(*b)
            }
        })
        .sum()
}

struct Reader<R> {
    inner: R,
}

impl<R: Read> Reader<R> {
    /// The next header; `None` at the end-of-archive block (or a clean end of stream).
    fn header(&mut self) -> io::Result<Option<Header>> {
        match self.block()? {
            None => Ok(None),
            Some(header) if header.is_end() => Ok(None),
            Some(header) => Ok(Some(header)),
        }
    }

    /// The next header block as it is (the end-of-archive block included); `None` at a
    /// clean end of the stream.
    fn block(&mut self) -> io::Result<Option<Header>> {
        let mut block = [0u8; BLOCK];
        let mut got = 0;
        while got < BLOCK {
            match self.inner.read(&mut block[got..])? {
                0 if got == 0 => return Ok(None),
                0 => return Err(invalid("archive ends inside a header")),
                n => got += n,
            }
        }
        let header = Header(block);
        if !header.is_end() && !header.checksum_ok()? {
            return Err(invalid("tar header checksum mismatch"));
        }
        Ok(Some(header))
    }

    fn padding(size: u64) -> u64 {
        (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
    }

    fn meta(&mut self, size: u64) -> io::Result<Vec<u8>> {
        if size > MAX_META {
            return Err(invalid("tar extended header too large"));
        }
        let mut raw = vec![0; size as usize];
        self.inner.read_exact(&mut raw)?;
        self.skip_exact(Self::padding(size))?;
        Ok(raw)
    }

    fn skip(&mut self, size: u64) -> io::Result<()> {
        self.skip_exact(size + Self::padding(size))
    }

    fn skip_exact(&mut self, n: u64) -> io::Result<()> {
        let copied = io::copy(&mut (&mut self.inner).take(n), &mut io::sink())?;
        if copied != n {
            return Err(invalid("archive ends inside an entry"));
        }
        Ok(())
    }

    fn copy_to_file(&mut self, size: u64, path: &Path, mode: u32) -> io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(path)?;
        let copied = io::copy(&mut (&mut self.inner).take(size), &mut file)?;
        if copied != size {
            return Err(invalid("archive ends inside a file"));
        }
        file.flush()?;
        self.skip_exact(Self::padding(size))
    }
}

/// One entry of an archive read as a stream (offline bundles): its name and size. Only
/// regular files are entries; anything else in the archive is an error.
#[derive(Debug, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub size: u64,
}

/// Reads an archive of plain files one entry at a time, handing out each entry's data as a
/// bounded reader, so nothing is held whole in memory.
pub struct Entries<R> {
    reader: Reader<R>,
    /// Data and padding of the current entry not yet read.
    data_left: u64,
    pad_left: u64,
}

impl<R: Read> Entries<R> {
    pub fn new(inner: R) -> Self {
        Entries {
            reader: Reader { inner },
            data_left: 0,
            pad_left: 0,
        }
    }

    /// The next entry (the rest of the current one is skipped); `None` at the end of the
    /// archive. A stream that ends without the end-of-archive blocks is an error: a cut file.
    pub fn next_entry(&mut self) -> io::Result<Option<Entry>> {
        self.reader.skip_exact(self.data_left + self.pad_left)?;
        (self.data_left, self.pad_left) = (0, 0);
        let Some(header) = self.reader.block()? else {
            return Err(invalid("archive ends without its end blocks"));
        };
        if header.is_end() {
            return Ok(None);
        }
        if !matches!(header.kind(), b'0' | 0) {
            return Err(invalid(format!(
                "unexpected entry type {:?} for {:?}",
                header.kind() as char,
                header.name()
            )));
        }
        let size = header.size()?;
        (self.data_left, self.pad_left) = (size, Reader::<R>::padding(size));
        Ok(Some(Entry {
            name: header.name(),
            size,
        }))
    }

    /// The whole data of the current entry, which must not be larger than `limit`.
    pub fn read_data(&mut self, limit: u64) -> io::Result<Vec<u8>> {
        if self.data_left > limit {
            return Err(invalid(format!("entry larger than {limit} bytes")));
        }
        let mut out = vec![0; self.data_left as usize];
        self.read_exact(&mut out)?;
        Ok(out)
    }
}

/// The current entry's data; reads 0 at its end.
impl<R: Read> Read for Entries<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf
            .len()
            .min(usize::try_from(self.data_left).unwrap_or(usize::MAX));
        if want == 0 {
            return Ok(0);
        }
        let n = self.reader.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(invalid("archive ends inside an entry"));
        }
        self.data_left -= n as u64;
        Ok(n)
    }
}

/// Writes the ustar header of a regular file `name` (< 100 bytes) of `size` bytes.
pub fn write_header(out: &mut impl Write, name: &str, size: u64) -> io::Result<()> {
    if name.len() >= 100 || name.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("tar entry name must be 1-99 bytes: {name:?}"),
        ));
    }
    let mut h = [0u8; BLOCK];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..107].copy_from_slice(b"0000644");
    h[108..115].copy_from_slice(b"0000000");
    h[116..123].copy_from_slice(b"0000000");
    h[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
    h[136..147].copy_from_slice(b"00000000000");
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    let sum = checksum(&h);
    h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    out.write_all(&h)
}

/// Pads an entry of `size` bytes to the block size.
pub fn write_padding(out: &mut impl Write, size: u64) -> io::Result<()> {
    let pad = Reader::<&[u8]>::padding(size) as usize;
    out.write_all(&[0u8; BLOCK][..pad])
}

/// The two zero blocks that end an archive.
pub fn write_end(out: &mut impl Write) -> io::Result<()> {
    out.write_all(&[0u8; 2 * BLOCK])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;

    /// A ustar header block for `name`.
    fn header(name: &str, kind: u8, size: usize, mode: u32) -> Vec<u8> {
        let mut h = vec![0u8; BLOCK];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..107].copy_from_slice(format!("{mode:07o}").as_bytes());
        h[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
        h[156] = kind;
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        sign(&mut h);
        h
    }

    fn sign(h: &mut [u8]) {
        let sum = checksum(h);
        h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    }

    fn entry(name: &str, kind: u8, body: &[u8], mode: u32) -> Vec<u8> {
        let mut out = header(name, kind, body.len(), mode);
        out.extend_from_slice(body);
        out.resize(
            out.len() + Reader::<&[u8]>::padding(body.len() as u64) as usize,
            0,
        );
        out
    }

    fn end() -> Vec<u8> {
        vec![0; 2 * BLOCK]
    }

    #[test]
    fn unpacks_files_and_directories_under_the_top_directory() {
        let dir = TempDir::new("tar");
        let long = format!("app/{}/deep.sh", "d".repeat(120));
        let pax = format!("{} path={long}\n", long.len() + 7);
        let archive = [
            entry("app/", b'5', b"", 0o755),
            entry(
                "app/entry.sh",
                b'0',
                b"#!/bin/sh\nexec ./upgrade.sh \"$@\"\n",
                0o4755,
            ),
            entry("app/lib/", b'5', b"", 0o755),
            entry("app/lib/data", b'0', &[7u8; 1000], 0o644),
            entry("app/link", b'2', b"", 0o777),
            entry("PaxHeaders/x", b'x', pax.as_bytes(), 0o644),
            entry("app/truncated-name", b'0', b"long", 0o600),
            entry("other/file", b'0', b"elsewhere", 0o644),
            end(),
        ]
        .concat();
        let got = unpack_under(&archive[..], "app", dir.path()).unwrap();
        assert_eq!((got.files, got.skipped), (3, 1));
        let script = dir.path().join("entry.sh");
        assert!(std::fs::read_to_string(&script)
            .unwrap()
            .starts_with("#!/bin/sh"));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&script).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o755, "set-uid is dropped");
        assert_eq!(
            std::fs::read(dir.path().join("lib/data")).unwrap().len(),
            1000
        );
        let deep = dir.path().join(long.strip_prefix("app/").unwrap());
        assert_eq!(std::fs::read_to_string(deep).unwrap(), "long");
        assert!(!dir.path().join("link").exists());
        assert!(!dir.path().join("file").exists() && !dir.path().join("other").exists());
    }

    fn written(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, data) in files {
            write_header(&mut out, name, data.len() as u64).unwrap();
            out.extend_from_slice(data);
            write_padding(&mut out, data.len() as u64).unwrap();
        }
        write_end(&mut out).unwrap();
        out
    }

    #[test]
    fn written_archives_read_back_entry_by_entry() {
        let big = vec![9u8; 3000];
        let archive = written(&[("manifest.json", b"{}"), ("images/0.tar", &big)]);
        let mut entries = Entries::new(&archive[..]);
        let first = entries.next_entry().unwrap().unwrap();
        assert_eq!(first.name, "manifest.json");
        assert_eq!(entries.read_data(10).unwrap(), b"{}");
        let second = entries.next_entry().unwrap().unwrap();
        assert_eq!((second.name.as_str(), second.size), ("images/0.tar", 3000));
        let mut data = Vec::new();
        entries.read_to_end(&mut data).unwrap();
        assert_eq!(data, big);
        assert_eq!(entries.next_entry().unwrap(), None);
        // Unread data is skipped; the whole archive is read by `tar` too.
        let mut entries = Entries::new(&archive[..]);
        entries.next_entry().unwrap();
        assert_eq!(entries.next_entry().unwrap().unwrap().size, 3000);
        assert!(entries.next_entry().unwrap().is_none());
    }

    #[test]
    fn streamed_entries_refuse_cuts_big_data_and_odd_types() {
        let archive = written(&[("a", &[1u8; 700]), ("b", b"x")]);
        for cut in [100, 600, 1024 + 512, archive.len() - 1024] {
            let mut entries = Entries::new(&archive[..cut]);
            let mut failed = false;
            for _ in 0..3 {
                match entries.next_entry() {
                    Ok(Some(_)) => {
                        if io::copy(&mut entries, &mut io::sink()).is_err() {
                            failed = true;
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(_) => {
                        failed = true;
                        break;
                    }
                }
            }
            assert!(failed, "cut at {cut} is an error");
        }
        let mut entries = Entries::new(&archive[..]);
        entries.next_entry().unwrap();
        assert!(entries.read_data(699).is_err());
        let odd = [entry("dir/", b'5', b"", 0o755), end()].concat();
        assert!(Entries::new(&odd[..]).next_entry().is_err());
        assert!(write_header(&mut Vec::new(), &"n".repeat(100), 1).is_err());
    }

    #[test]
    fn escaping_names_bad_checksums_and_truncation_are_errors() {
        let dir = TempDir::new("tarbad");
        for name in ["app/../escape", "/app/abs", "../app/x"] {
            let archive = [entry(name, b'0', b"x", 0o644), end()].concat();
            let e = unpack_under(&archive[..], "app", dir.path()).unwrap_err();
            assert!(e.to_string().contains("unsafe name"), "{name}: {e}");
        }
        let mut bad = entry("app/x", b'0', b"x", 0o644);
        bad[0] = b'b';
        assert!(unpack_under(&bad[..], "app", dir.path())
            .unwrap_err()
            .to_string()
            .contains("checksum"));
        let whole = entry("app/y", b'0', &[1u8; 700], 0o644);
        let e = unpack_under(&whole[..600], "app", dir.path()).unwrap_err();
        assert!(e.to_string().contains("ends inside"), "{e}");
        assert!(!dir.path().parent().unwrap().join("escape").exists());
    }

    #[test]
    fn sizes_are_bounded() {
        let dir = TempDir::new("tarbig");
        let mut h = header("app/huge", b'0', 0, 0o644);
        h[124..135].copy_from_slice(format!("{:011o}", MAX_BYTES + 1).as_bytes());
        sign(&mut h);
        let e = unpack_under(&h[..], "app", dir.path()).unwrap_err();
        assert!(e.to_string().contains("larger than"), "{e}");
    }
}
