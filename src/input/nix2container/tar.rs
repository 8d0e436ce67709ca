//! A tar header encoder that writes exactly what Go's `archive/tar` writes
//! for a header whose `Format` is left unset (formats.md §2.1).
//!
//! nix2container computes a layer's digest from Go's output, so "a valid tar"
//! is not enough: every byte of every header must match. That rules out the
//! `tar` crate (GNU long names, different padding and PAX choices). This
//! module knows nothing about store paths or trees (see `tree`); it takes
//! headers and data and writes USTAR when the header fits, PAX otherwise,
//! never GNU, and ends with two zero blocks and no 10240-byte padding.

use std::collections::BTreeMap;
use std::io::{self, Write};

const BLOCK: usize = 512;
const NAME_SIZE: usize = 100;
const PREFIX_SIZE: usize = 155;

/// Go's `tar.TypeReg`.
pub const TYPE_REG: u8 = b'0';
/// Go's `tar.TypeSymlink`.
pub const TYPE_SYMLINK: u8 = b'2';
/// Go's `tar.TypeChar`.
pub const TYPE_CHAR: u8 = b'3';
/// Go's `tar.TypeBlock`.
pub const TYPE_BLOCK: u8 = b'4';
/// Go's `tar.TypeDir`.
pub const TYPE_DIR: u8 = b'5';
/// Go's `tar.TypeFifo`.
pub const TYPE_FIFO: u8 = b'6';
const TYPE_XHEADER: u8 = b'x';

/// The header fields nix2container sets. Names are byte strings: they are
/// written as they are, never decoded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Header {
    pub name: Vec<u8>,
    pub typeflag: u8,
    pub mode: i64,
    pub uid: i64,
    pub gid: i64,
    pub size: i64,
    /// Seconds since the epoch (nix2container: always 1).
    pub mtime: i64,
    pub linkname: Vec<u8>,
    pub uname: Vec<u8>,
    pub gname: Vec<u8>,
    pub devmajor: i64,
    pub devminor: i64,
}

/// Why a header or its data could not be written.
#[derive(Debug, thiserror::Error)]
pub enum TarError {
    #[error("cannot write the tar stream")]
    Io(#[source] io::Error),
    /// Go would fall back to the GNU format (or refuse) for this header;
    /// nix2container never produces such a header from a store path.
    #[error("tar header for `{name}` cannot be written as USTAR or PAX: {reason}")]
    Unencodable { name: String, reason: String },
    #[error("tar entry `{name}` got more data than its declared size {size}")]
    WriteTooLong { name: String, size: i64 },
    #[error("tar entry `{name}` is missing {missing} bytes of its declared size")]
    MissingBytes { name: String, missing: i64 },
}

/// Writes tar entries byte-for-byte as Go's `archive/tar.Writer` does.
pub struct GoTarWriter<W: Write> {
    out: W,
    /// Name of the current entry, for errors.
    current: Vec<u8>,
    /// Data bytes still owed by the current entry.
    remaining: i64,
    /// Zero bytes to write after the current entry's data.
    pad: usize,
}

impl<W: Write> GoTarWriter<W> {
    pub fn new(out: W) -> Self {
        GoTarWriter {
            out,
            current: Vec::new(),
            remaining: 0,
            pad: 0,
        }
    }

    /// Writes the header of the next entry (and a PAX extended header before
    /// it when USTAR cannot hold it). Its data follows with [`write_data`].
    ///
    /// [`write_data`]: GoTarWriter::write_data
    pub fn write_header(&mut self, hdr: &Header) -> Result<(), TarError> {
        self.flush_entry()?;
        let pax = pax_records(hdr)?;
        let block = match pax {
            None => ustar_block(hdr),
            Some(records) => {
                self.write_pax_extended_header(&hdr.name, &records)?;
                pax_real_block(hdr)
            }
        };
        self.out.write_all(&block).map_err(TarError::Io)?;
        // Go's writer accepts no data for header-only types, whatever the
        // size field says.
        let size = if is_header_only(hdr.typeflag) {
            0
        } else {
            hdr.size
        };
        self.current = hdr.name.clone();
        self.remaining = size;
        self.pad = padding(size as u64);
        Ok(())
    }

    /// Appends data to the current entry; more than its size is an error.
    pub fn write_data(&mut self, data: &[u8]) -> Result<(), TarError> {
        if data.len() as i64 > self.remaining {
            return Err(TarError::WriteTooLong {
                name: lossy(&self.current),
                size: self.remaining,
            });
        }
        self.out.write_all(data).map_err(TarError::Io)?;
        self.remaining -= data.len() as i64;
        Ok(())
    }

    /// Data bytes the current entry still needs.
    pub fn remaining(&self) -> i64 {
        self.remaining
    }

    /// Ends the archive with two zero blocks (Go pads no further) and
    /// returns the inner writer.
    pub fn finish(mut self) -> Result<W, TarError> {
        self.flush_entry()?;
        self.out
            .write_all(&[0u8; 2 * BLOCK])
            .map_err(TarError::Io)?;
        self.out.flush().map_err(TarError::Io)?;
        Ok(self.out)
    }

    fn flush_entry(&mut self) -> Result<(), TarError> {
        if self.remaining > 0 {
            return Err(TarError::MissingBytes {
                name: lossy(&self.current),
                missing: self.remaining,
            });
        }
        if self.pad > 0 {
            self.out
                .write_all(&[0u8; BLOCK][..self.pad])
                .map_err(TarError::Io)?;
            self.pad = 0;
        }
        Ok(())
    }

    /// Go's `writeRawFile(path.Join(dir, "PaxHeaders.0", file), records, 'x')`.
    fn write_pax_extended_header(
        &mut self,
        real_name: &[u8],
        records: &[u8],
    ) -> Result<(), TarError> {
        let (dir, file) = go_path_split(real_name);
        let name = go_path_join(&[dir, b"PaxHeaders.0", file]);
        let mut name = to_ascii(&name);
        name.truncate(NAME_SIZE);
        while name.last() == Some(&b'/') {
            name.pop();
        }
        let mut b = [0u8; BLOCK];
        b[156] = TYPE_XHEADER;
        format_string(&mut b[0..100], &name);
        format_octal(&mut b[100..108], 0);
        format_octal(&mut b[108..116], 0);
        format_octal(&mut b[116..124], 0);
        format_octal(&mut b[124..136], records.len() as i64);
        format_octal(&mut b[136..148], 0);
        set_ustar_magic_and_checksum(&mut b);
        self.out.write_all(&b).map_err(TarError::Io)?;
        self.out.write_all(records).map_err(TarError::Io)?;
        let pad = padding(records.len() as u64);
        self.out
            .write_all(&[0u8; BLOCK][..pad])
            .map_err(TarError::Io)?;
        Ok(())
    }
}

fn padding(size: u64) -> usize {
    ((BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64) as usize
}

fn is_header_only(typeflag: u8) -> bool {
    matches!(typeflag, b'1' | b'2' | b'3' | b'4' | b'5' | b'6')
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Go's `isASCII`: NUL counts as non-ASCII.
fn is_ascii(s: &[u8]) -> bool {
    s.iter().all(|&c| c != 0 && c < 0x80)
}

/// Go's `toASCII`. Go iterates runes, but every byte of a multi-byte or
/// invalid sequence is ≥ 0x80, so a byte filter drops exactly the same.
fn to_ascii(s: &[u8]) -> Vec<u8> {
    s.iter().copied().filter(|&c| c != 0 && c < 0x80).collect()
}

fn fits_in_octal(width: usize, x: i64) -> bool {
    let bits = (width as u32 - 1) * 3;
    x >= 0 && (width >= 22 || x < (1i64 << bits))
}

/// Go's `formatter.formatString`: copy, NUL-terminate when shorter, and when
/// cut, turn the first of a trailing run of `/` into NUL (Go clears that one
/// byte only).
fn format_string(b: &mut [u8], s: &[u8]) {
    let n = s.len().min(b.len());
    b[..n].copy_from_slice(&s[..n]);
    if s.len() < b.len() {
        b[s.len()] = 0;
    }
    if s.len() > b.len() && b[b.len() - 1] == b'/' {
        let kept = &s[..b.len()];
        let trimmed = kept.iter().rposition(|&c| c != b'/').map_or(0, |i| i + 1);
        b[trimmed] = 0;
    }
}

/// Go's `formatter.formatOctal`: zero-padded to width−1, NUL; 0 when it
/// does not fit.
fn format_octal(b: &mut [u8], x: i64) {
    let x = if fits_in_octal(b.len(), x) { x } else { 0 };
    let digits = format!("{x:o}");
    let zeros = (b.len() as isize - digits.len() as isize - 1).max(0) as usize;
    let mut s = vec![b'0'; zeros];
    s.extend_from_slice(digits.as_bytes());
    format_string(b, &s);
}

fn set_ustar_magic_and_checksum(b: &mut [u8; BLOCK]) {
    b[257..263].copy_from_slice(b"ustar\0");
    b[263..265].copy_from_slice(b"00");
    // The checksum counts its own field as eight spaces.
    let sum: i64 = b
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            if (148..156).contains(&i) {
                32
            } else {
                c as i64
            }
        })
        .sum();
    format_octal(&mut b[148..155], sum);
    b[155] = b' ';
}

/// Go's `splitUSTARPath`.
fn split_ustar_path(name: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut length = name.len();
    if length <= NAME_SIZE || !is_ascii(name) {
        return None;
    } else if length > PREFIX_SIZE + 1 {
        length = PREFIX_SIZE + 1;
    } else if name[length - 1] == b'/' {
        length -= 1;
    }
    let i = name[..length].iter().rposition(|&c| c == b'/')?;
    let nlen = name.len() - i - 1;
    if i == 0 || nlen > NAME_SIZE || nlen == 0 || i > PREFIX_SIZE {
        return None;
    }
    Some((&name[..i], &name[i + 1..]))
}

/// The fields common to the USTAR and PAX real headers (Go's
/// `templateV7Plus`), strings passed through `fmt_str`.
fn template(hdr: &Header, ascii_only: bool, name: &[u8]) -> [u8; BLOCK] {
    let mut b = [0u8; BLOCK];
    let fmt_str = |field: &mut [u8], s: &[u8]| {
        if ascii_only {
            format_string(field, &to_ascii(s))
        } else {
            format_string(field, s)
        }
    };
    b[156] = hdr.typeflag;
    fmt_str(&mut b[0..100], name);
    fmt_str(&mut b[157..257], &hdr.linkname);
    format_octal(&mut b[100..108], hdr.mode);
    format_octal(&mut b[108..116], hdr.uid);
    format_octal(&mut b[116..124], hdr.gid);
    format_octal(&mut b[124..136], hdr.size);
    format_octal(&mut b[136..148], hdr.mtime);
    fmt_str(&mut b[265..297], &hdr.uname);
    fmt_str(&mut b[297..329], &hdr.gname);
    format_octal(&mut b[329..337], hdr.devmajor);
    format_octal(&mut b[337..345], hdr.devminor);
    b
}

fn ustar_block(hdr: &Header) -> [u8; BLOCK] {
    let (prefix, name): (&[u8], &[u8]) = match split_ustar_path(&hdr.name) {
        Some((prefix, suffix)) => (prefix, suffix),
        None => (b"", &hdr.name),
    };
    let mut b = template(hdr, false, name);
    format_string(&mut b[345..500], prefix);
    set_ustar_magic_and_checksum(&mut b);
    b
}

fn pax_real_block(hdr: &Header) -> [u8; BLOCK] {
    let mut b = template(hdr, true, &hdr.name);
    set_ustar_magic_and_checksum(&mut b);
    b
}

/// Go's `Header.allowedFormats` restricted to what an unset `Format` can
/// produce: `None` when USTAR holds the header, else the sorted PAX records.
fn pax_records(hdr: &Header) -> Result<Option<Vec<u8>>, TarError> {
    let unencodable = |reason: String| TarError::Unencodable {
        name: lossy(&hdr.name),
        reason,
    };
    let mut ustar = true;
    let mut records: BTreeMap<&str, Vec<u8>> = BTreeMap::new();

    let strings: [(&[u8], usize, &str); 4] = [
        (&hdr.name, NAME_SIZE, "path"),
        (&hdr.linkname, NAME_SIZE, "linkpath"),
        (&hdr.uname, 32, "uname"),
        (&hdr.gname, 32, "gname"),
    ];
    for (s, size, key) in strings {
        if s.contains(&0) {
            return Err(unencodable(format!("`{key}` contains NUL")));
        }
        if !is_ascii(s) || s.len() > size {
            if key != "path" || split_ustar_path(s).is_none() {
                ustar = false;
            }
            records.insert(key, s.to_vec());
        }
    }
    let numbers: [(i64, usize, &str); 6] = [
        (hdr.mode, 8, "mode"),
        (hdr.uid, 8, "uid"),
        (hdr.gid, 8, "gid"),
        (hdr.size, 12, "size"),
        (hdr.devmajor, 8, "devmajor"),
        (hdr.devminor, 8, "devminor"),
    ];
    for (n, width, key) in numbers {
        if !fits_in_octal(width, n) {
            if matches!(key, "mode" | "devmajor" | "devminor") {
                // Go would switch to GNU base-256 here.
                return Err(unencodable(format!("`{key}` {n} does not fit")));
            }
            ustar = false;
            records.insert(key, n.to_string().into_bytes());
        }
    }
    if !fits_in_octal(12, hdr.mtime) {
        return Err(unencodable(format!("mtime {} does not fit", hdr.mtime)));
    }
    if hdr.typeflag == TYPE_REG && hdr.name.last() == Some(&b'/') {
        return Err(unencodable("a regular file name ends with `/`".into()));
    }
    if hdr.size < 0 {
        return Err(unencodable("negative size".into()));
    }
    if ustar {
        return Ok(None);
    }
    let mut out = Vec::new();
    for (key, value) in records {
        out.extend_from_slice(&pax_record(key, &value));
    }
    Ok(Some(out))
}

/// `"<len> <key>=<value>\n"`, where `<len>` counts the whole record,
/// its own digits included.
fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let base = key.len() + value.len() + 3;
    let mut size = base + base.to_string().len();
    if size.to_string().len() + base != size {
        size = base + size.to_string().len();
    }
    let mut rec = format!("{size} {key}=").into_bytes();
    rec.extend_from_slice(value);
    rec.push(b'\n');
    rec
}

/// Go's `path.Clean` on bytes.
pub fn go_path_clean(p: &[u8]) -> Vec<u8> {
    if p.is_empty() {
        return b".".to_vec();
    }
    let rooted = p[0] == b'/';
    let n = p.len();
    let mut out: Vec<u8> = Vec::with_capacity(n);
    let mut r = 0;
    let mut dotdot = 0;
    if rooted {
        out.push(b'/');
        r = 1;
        dotdot = 1;
    }
    while r < n {
        if p[r] == b'/' || (p[r] == b'.' && (r + 1 == n || p[r + 1] == b'/')) {
            // An empty or `.` element.
            r += 1;
        } else if p[r] == b'.' && p[r + 1] == b'.' && (r + 2 == n || p[r + 2] == b'/') {
            r += 2;
            if out.len() > dotdot {
                let mut w = out.len() - 1;
                while w > dotdot && out[w] != b'/' {
                    w -= 1;
                }
                out.truncate(w);
            } else if !rooted {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(b"..");
                dotdot = out.len();
            }
        } else {
            if (rooted && out.len() != 1) || (!rooted && !out.is_empty()) {
                out.push(b'/');
            }
            while r < n && p[r] != b'/' {
                out.push(p[r]);
                r += 1;
            }
        }
    }
    if out.is_empty() {
        return b".".to_vec();
    }
    out
}

/// Go's `path.Split`: everything up to and including the last `/`, and the
/// rest.
pub fn go_path_split(p: &[u8]) -> (&[u8], &[u8]) {
    match p.iter().rposition(|&c| c == b'/') {
        Some(i) => (&p[..=i], &p[i + 1..]),
        None => (b"", p),
    }
}

/// Go's `path.Join`: empty elements skipped, result cleaned, `""` when all
/// are empty.
pub fn go_path_join(elems: &[&[u8]]) -> Vec<u8> {
    let parts: Vec<&[u8]> = elems.iter().copied().filter(|e| !e.is_empty()).collect();
    if parts.is_empty() {
        return Vec::new();
    }
    go_path_clean(&parts.join(&b'/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr(name: &[u8]) -> Header {
        Header {
            name: name.to_vec(),
            typeflag: TYPE_REG,
            mode: 0o644,
            mtime: 1,
            uname: b"root".to_vec(),
            gname: b"root".to_vec(),
            ..Header::default()
        }
    }

    use crate::digest::Digest;
    use serde_json::Value;

    fn testdata(name: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("testdata/nix2container")
            .join(name)
    }

    /// A header-case entry as the Go generators read it.
    fn case_header(e: &Value) -> (Header, Vec<u8>) {
        let text = |k: &str| {
            e.get(k)
                .and_then(Value::as_str)
                .unwrap_or("")
                .as_bytes()
                .to_vec()
        };
        let int = |k: &str| e.get(k).and_then(Value::as_i64).unwrap_or(0);
        let bytes_or_hex = |k: &str, hex_key: &str| match e.get(hex_key).and_then(Value::as_str) {
            Some(h) => hex::decode(h).unwrap(),
            None => text(k),
        };
        let data = text("Data");
        let hdr = Header {
            name: bytes_or_hex("Name", "NameHex"),
            typeflag: text("Type")[0],
            mode: int("Mode"),
            uid: int("Uid"),
            gid: int("Gid"),
            size: data.len() as i64,
            mtime: 1,
            linkname: bytes_or_hex("Link", "LinkHex"),
            uname: text("Uname"),
            gname: text("Gname"),
            devmajor: int("Devmajor"),
            devminor: int("Devminor"),
        };
        (hdr, data)
    }

    fn write_cases<'a>(cases: impl IntoIterator<Item = &'a Value>) -> Vec<u8> {
        let mut w = GoTarWriter::new(Vec::new());
        for e in cases {
            let (hdr, data) = case_header(e);
            w.write_header(&hdr).unwrap();
            w.write_data(&data).unwrap();
        }
        w.finish().unwrap()
    }

    fn read_json(name: &str) -> Value {
        serde_json::from_slice(&std::fs::read(testdata(name)).unwrap()).unwrap()
    }

    #[test]
    fn shared_conformance_vector() {
        let cases = read_json("header-cases.json");
        let tar = write_cases(cases.as_array().unwrap());
        assert_eq!(tar.len(), 15360);
        assert_eq!(
            Digest::of(&tar).to_string(),
            "sha256:8fd9fa2d4b0c3a62167c3726ea01bcbaf9ceb929ccc28e68710d9527dbd62a1b"
        );
    }

    #[test]
    fn go_generated_vectors_match_case_by_case() {
        let cases = read_json("header-cases-more.json");
        let cases = cases.as_array().unwrap();
        let expected = read_json("header-cases-more.expected.json");
        let sums = expected["cases"].as_array().unwrap();
        assert_eq!(cases.len(), sums.len());
        let mut failed = Vec::new();
        for (i, (case, sum)) in cases.iter().zip(sums).enumerate() {
            let tar = write_cases([case]);
            let got = (Digest::of(&tar).to_string(), tar.len() as u64);
            let want = (
                sum["sha256"].as_str().unwrap().to_owned(),
                sum["size"].as_u64().unwrap(),
            );
            if got != want {
                failed.push(format!(
                    "case {i} ({}): got {got:?}, want {want:?}",
                    case["Name"]
                ));
            }
        }
        assert!(failed.is_empty(), "{}", failed.join("\n"));
        let tar = write_cases(cases);
        assert_eq!(
            Digest::of(&tar).to_string(),
            expected["all"]["sha256"].as_str().unwrap()
        );
        assert_eq!(tar.len() as u64, expected["all"]["size"].as_u64().unwrap());
    }

    #[test]
    fn octal_and_checksum_fields_have_go_layout() {
        let b = ustar_block(&hdr(b"/a"));
        assert_eq!(&b[100..108], b"0000644\0");
        assert_eq!(&b[136..148], b"00000000001\0");
        assert_eq!(&b[329..337], b"0000000\0");
        assert_eq!(&b[257..265], b"ustar\x0000");
        assert_eq!(b[154], 0);
        assert_eq!(b[155], b' ');
        let sum: u32 = b
            .iter()
            .enumerate()
            .map(|(i, &c)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    c as u32
                }
            })
            .sum();
        let text = std::str::from_utf8(&b[148..154]).unwrap();
        assert_eq!(u32::from_str_radix(text, 8).unwrap(), sum);
    }

    #[test]
    fn pax_record_length_counts_its_own_digits() {
        // 3 + 1 + 4 + 1 = 9 bytes without the length; "9" makes it 10, which
        // has two digits, so the record is 11 bytes.
        let rec = pax_record("path", b"ab");
        assert_eq!(rec, b"11 path=ab\n");
        assert_eq!(rec.len(), 11);
        let long = vec![b'a'; 90];
        let rec = pax_record("path", &long);
        assert_eq!(
            rec.len().to_string().as_bytes(),
            &rec[..rec.len().to_string().len()]
        );
    }

    #[test]
    fn path_helpers_follow_go() {
        assert_eq!(go_path_clean(b"/a/../b//c/."), b"/b/c");
        assert_eq!(go_path_clean(b"../../a/.."), b"../..");
        assert_eq!(go_path_clean(b""), b".");
        assert_eq!(go_path_clean(b"/.."), b"/");
        assert_eq!(go_path_split(b"/x"), (&b"/"[..], &b"x"[..]));
        assert_eq!(
            go_path_join(&[b"", b"PaxHeaders.0", b"x"]),
            b"PaxHeaders.0/x"
        );
        assert_eq!(
            go_path_join(&[b"/", b"PaxHeaders.0", b"x"]),
            b"/PaxHeaders.0/x"
        );
        assert_eq!(go_path_join(&[b"", b""]), b"");
    }

    #[test]
    fn truncation_clears_only_the_first_trailing_slash() {
        let mut field = [0u8; 4];
        format_string(&mut field, b"ab//cd");
        assert_eq!(&field, b"ab\0/");
    }

    #[test]
    fn unsplittable_long_name_gets_pax_path() {
        let name = [b"/".as_slice(), &[b'a'; 120]].concat();
        let recs = pax_records(&hdr(&name)).unwrap().unwrap();
        assert!(recs.ends_with(&[b"path=".as_slice(), &name, b"\n"].concat()));
        let split = [b"/".as_slice(), &[b'a'; 60], b"/", &[b'b'; 60]].concat();
        assert!(pax_records(&hdr(&split)).unwrap().is_none());
    }

    #[test]
    fn data_size_is_enforced() {
        let mut w = GoTarWriter::new(Vec::new());
        let mut h = hdr(b"f");
        h.size = 3;
        w.write_header(&h).unwrap();
        assert!(matches!(
            w.write_data(b"abcd"),
            Err(TarError::WriteTooLong { .. })
        ));
        w.write_data(b"ab").unwrap();
        assert!(matches!(
            w.finish(),
            Err(TarError::MissingBytes { missing: 1, .. })
        ));
    }
}
