//! Headers from fuzz input through the Go-compatible tar writer, read back
//! with the `tar` crate: every entry the writer accepts must come back with
//! its name, link name, size, mode, owner, type and data. A writer error is a
//! valid outcome, a panic or a mismatch is not.
//!
//! Entries are either made up whole or taken from the repository's header
//! fixtures (`testdata/nix2container/header-cases*.json`) with some fields
//! swapped, so mutation starts from the shapes nix2container really writes.
#![no_main]

use std::collections::HashMap;
use std::io::Read;
use std::sync::OnceLock;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use manifold::input::nix2container::tar::{
    GoTarWriter, Header, TYPE_BLOCK, TYPE_CHAR, TYPE_DIR, TYPE_FIFO, TYPE_REG, TYPE_SYMLINK,
};
use serde_json::Value;

/// Go's `tar.TypeLink` (header-only, like the others but regular files).
const TYPE_LINK: u8 = b'1';
const TYPES: [u8; 7] = [
    TYPE_REG,
    TYPE_LINK,
    TYPE_SYMLINK,
    TYPE_CHAR,
    TYPE_BLOCK,
    TYPE_DIR,
    TYPE_FIFO,
];

#[derive(Arbitrary, Debug)]
enum Input {
    /// One of the fixture headers, optionally with fields replaced.
    Case {
        index: u8,
        name: Option<Vec<u8>>,
        linkname: Option<Vec<u8>>,
        uid: Option<i64>,
        gid: Option<i64>,
        data: Vec<u8>,
    },
    Raw(Raw),
}

#[derive(Arbitrary, Debug)]
struct Raw {
    name: Vec<u8>,
    kind: u8,
    mode: i64,
    uid: i64,
    gid: i64,
    mtime: i64,
    linkname: Vec<u8>,
    uname: Vec<u8>,
    gname: Vec<u8>,
    devmajor: i64,
    devminor: i64,
    data: Vec<u8>,
}

/// The fixture headers, decoded once (`NameHex`/`LinkHex` give raw bytes).
fn cases() -> &'static [Header] {
    static CASES: OnceLock<Vec<Header>> = OnceLock::new();
    CASES.get_or_init(|| {
        let mut out = Vec::new();
        for text in [
            include_str!("../../testdata/nix2container/header-cases.json"),
            include_str!("../../testdata/nix2container/header-cases-more.json"),
        ] {
            let list: Vec<Value> = serde_json::from_str(text).expect("fixture is JSON");
            out.extend(list.iter().map(case_header));
        }
        out
    })
}

fn bytes_field(case: &Value, hex_key: &str, key: &str) -> Vec<u8> {
    if let Some(h) = case.get(hex_key).and_then(Value::as_str) {
        return (0..h.len() / 2)
            .filter_map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).ok())
            .collect();
    }
    case.get(key)
        .and_then(Value::as_str)
        .unwrap_or("")
        .as_bytes()
        .to_vec()
}

fn case_header(case: &Value) -> Header {
    let int = |k: &str| case.get(k).and_then(Value::as_i64).unwrap_or(0);
    Header {
        name: bytes_field(case, "NameHex", "Name"),
        typeflag: case
            .get("Type")
            .and_then(Value::as_str)
            .and_then(|t| t.bytes().next())
            .unwrap_or(TYPE_REG),
        mode: int("Mode"),
        uid: int("Uid"),
        gid: int("Gid"),
        size: 0,
        mtime: 1,
        linkname: bytes_field(case, "LinkHex", "Link"),
        uname: bytes_field(case, "", "Uname"),
        gname: bytes_field(case, "", "Gname"),
        devmajor: int("Devmajor"),
        devminor: int("Devminor"),
    }
}

fn entry(input: Input) -> Option<(Header, Vec<u8>)> {
    let (mut header, data) = match input {
        Input::Case {
            index,
            name,
            linkname,
            uid,
            gid,
            data,
        } => {
            let all = cases();
            let mut h = all.get(index as usize % all.len())?.clone();
            h.name = name.unwrap_or(h.name);
            h.linkname = linkname.unwrap_or(h.linkname);
            h.uid = uid.unwrap_or(h.uid);
            h.gid = gid.unwrap_or(h.gid);
            (h, data)
        }
        Input::Raw(r) => (
            Header {
                name: r.name,
                typeflag: TYPES[r.kind as usize % TYPES.len()],
                mode: r.mode,
                uid: r.uid,
                gid: r.gid,
                size: 0,
                mtime: r.mtime,
                linkname: r.linkname,
                uname: r.uname,
                gname: r.gname,
                devmajor: r.devmajor,
                devminor: r.devminor,
            },
            r.data,
        ),
    };
    // Header-only types carry no data and, as Go's FileInfoHeader writes
    // them, a zero size: readers other than Go's (the `tar` crate among
    // them) would skip a nonzero size's worth of following bytes.
    let data = if header.typeflag == TYPE_REG {
        data
    } else {
        Vec::new()
    };
    header.size = data.len() as i64;
    Some((header, data))
}

/// PAX records of an entry, raw.
fn pax(entry: &mut tar::Entry<'_, &[u8]>) -> HashMap<String, Vec<u8>> {
    let mut out = HashMap::new();
    if let Ok(Some(records)) = entry.pax_extensions() {
        for record in records.flatten() {
            if let Ok(key) = record.key() {
                out.insert(key.to_owned(), record.value_bytes().to_vec());
            }
        }
    }
    out
}

fn number(pax: &HashMap<String, Vec<u8>>, key: &str, field: std::io::Result<u64>) -> i64 {
    match pax.get(key) {
        Some(v) => std::str::from_utf8(v)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("PAX `{key}` is not a number: {v:?}")),
        None => field.unwrap_or_else(|e| panic!("`{key}` field unreadable: {e}")) as i64,
    }
}

fuzz_target!(|inputs: Vec<Input>| {
    let entries: Vec<(Header, Vec<u8>)> = inputs.into_iter().take(8).filter_map(entry).collect();
    let mut writer = GoTarWriter::new(Vec::new());
    for (header, data) in &entries {
        if writer.write_header(header).is_err() {
            return;
        }
        if writer.write_data(data).is_err() {
            return;
        }
    }
    let Ok(bytes) = writer.finish() else {
        return;
    };
    // The `tar` crate splits PAX records at newlines instead of by their
    // length prefix (tar 0.4.46 `pax.rs`), so a string that needs a PAX
    // record and holds `\n` cannot be read back by it. Go reads it; the
    // writer is right. Such entries are only written, not compared.
    let newline = |s: &[u8]| s.contains(&b'\n');
    if entries.iter().any(|(h, _)| {
        newline(&h.name) || newline(&h.linkname) || newline(&h.uname) || newline(&h.gname)
    }) {
        return;
    }
    assert_eq!(bytes.len() % 512, 0, "not a whole number of blocks");

    let mut archive = tar::Archive::new(&bytes[..]);
    let mut read = archive.entries().expect("entries of a fresh archive");
    for (i, (header, data)) in entries.iter().enumerate() {
        let mut got = read
            .next()
            .unwrap_or_else(|| panic!("entry {i} missing"))
            .unwrap_or_else(|e| panic!("entry {i} unreadable: {e}"));
        let pax = pax(&mut got);
        let h = got.header().clone();
        assert_eq!(
            got.path_bytes().as_ref(),
            &header.name[..],
            "name of entry {i}"
        );
        if !header.linkname.is_empty() || got.link_name_bytes().is_some() {
            assert_eq!(
                got.link_name_bytes().as_deref().unwrap_or(b""),
                &header.linkname[..],
                "link name of entry {i}"
            );
        }
        assert_eq!(
            h.entry_type().as_byte(),
            header.typeflag,
            "type of entry {i}"
        );
        assert_eq!(got.size() as i64, header.size, "size of entry {i}");
        assert_eq!(
            i64::from(h.mode().expect("mode")),
            header.mode,
            "mode of entry {i}"
        );
        assert_eq!(number(&pax, "uid", h.uid()), header.uid, "uid of entry {i}");
        assert_eq!(number(&pax, "gid", h.gid()), header.gid, "gid of entry {i}");
        assert_eq!(
            number(&pax, "mtime", h.mtime()),
            header.mtime,
            "mtime of entry {i}"
        );
        let uname = pax
            .get("uname")
            .cloned()
            .or_else(|| h.username_bytes().map(<[u8]>::to_vec))
            .unwrap_or_default();
        assert_eq!(uname, header.uname, "uname of entry {i}");
        let gname = pax
            .get("gname")
            .cloned()
            .or_else(|| h.groupname_bytes().map(<[u8]>::to_vec))
            .unwrap_or_default();
        assert_eq!(gname, header.gname, "gname of entry {i}");
        if matches!(header.typeflag, TYPE_CHAR | TYPE_BLOCK) {
            assert_eq!(
                h.device_major().ok().flatten().map(i64::from),
                Some(header.devmajor),
                "devmajor of entry {i}"
            );
            assert_eq!(
                h.device_minor().ok().flatten().map(i64::from),
                Some(header.devminor),
                "devminor of entry {i}"
            );
        }
        let mut body = Vec::new();
        got.read_to_end(&mut body).expect("entry data");
        assert_eq!(&body, data, "data of entry {i}");
    }
    assert!(read.next().is_none(), "an entry more than was written");
});
