//! Tar member names, and an index of a plain tar file's members by name.
//!
//! Both archive readers name members the way `manifest.json` and
//! `index.json` cite them ([`normalize`]) and follow links the same way
//! ([`resolve_relative`]). A plain tar *file* can also be indexed without
//! reading its data ([`TarIndex`]): one pass over the headers, seeking past
//! each member, maps names to byte ranges, which `oci-archive:` inputs read
//! in place and docker-archive inputs use to pick one image of several.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use super::InputError;

/// How many links a name may go through before it is given up on.
pub(super) const MAX_LINKS: usize = 8;

/// A member name as `manifest.json` cites it: no `./`, no trailing `/`.
pub(super) fn normalize(name: &str) -> String {
    let mut n = name;
    while let Some(rest) = n.strip_prefix("./") {
        n = rest;
    }
    n.trim_start_matches('/').trim_end_matches('/').to_owned()
}

/// A symlink target, relative to the link's directory, as a member name.
pub(super) fn resolve_relative(link: &str, target: &str) -> String {
    let mut parts: Vec<&str> = if target.starts_with('/') {
        Vec::new()
    } else {
        link.split('/').collect()
    };
    parts.pop(); // the link's own name
    for p in target.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    parts.join("/")
}

/// Where a member's bytes lie in the tar file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub offset: u64,
    pub size: u64,
}

#[derive(Debug)]
enum Entry {
    Data(Span),
    /// A hard or symbolic link, by the member name it points at.
    Link(String),
}

/// The members of a plain tar file, by normalized name.
#[derive(Debug)]
pub struct TarIndex {
    entries: HashMap<String, Entry>,
}

impl TarIndex {
    /// One pass over the headers of the plain tar `file` (`input` names it
    /// in messages), seeking past member data. A member that would end past
    /// the file's end is truncation.
    pub fn scan(input: &str, file: File) -> Result<TarIndex, InputError> {
        let tar_err = |source| InputError::Tar {
            input: input.to_owned(),
            source,
        };
        let len = file.metadata().map_err(tar_err)?.len();
        let mut archive = tar::Archive::new(file);
        let mut entries = HashMap::new();
        for entry in archive.entries_with_seek().map_err(tar_err)? {
            let entry = entry.map_err(tar_err)?;
            let name = normalize(&String::from_utf8_lossy(&entry.path_bytes()));
            if name.is_empty() {
                continue;
            }
            let kind = entry.header().entry_type();
            let indexed = if kind.is_file() || kind.is_contiguous() {
                let span = Span {
                    offset: entry.raw_file_position(),
                    size: entry.size(),
                };
                if span.offset.saturating_add(span.size) > len {
                    return Err(InputError::Truncated {
                        input: input.to_owned(),
                    });
                }
                Entry::Data(span)
            } else if kind.is_symlink() || kind.is_hard_link() {
                let target = entry
                    .link_name_bytes()
                    .map(|t| String::from_utf8_lossy(&t).into_owned())
                    .unwrap_or_default();
                Entry::Link(if kind.is_symlink() {
                    resolve_relative(&name, &target)
                } else {
                    normalize(&target)
                })
            } else {
                continue;
            };
            entries.insert(name, indexed);
        }
        Ok(TarIndex { entries })
    }

    /// Whether a member is named `name` (a link counts, followed or not).
    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// The data member `name` is, links followed.
    pub fn target(&self, name: &str) -> Option<String> {
        let mut name = normalize(name);
        for _ in 0..=MAX_LINKS {
            match self.entries.get(&name)? {
                Entry::Data(_) => return Some(name),
                Entry::Link(to) => name = to.clone(),
            }
        }
        None
    }

    /// Where the member `name` (links followed) lies.
    pub fn span(&self, name: &str) -> Option<Span> {
        match self.entries.get(&self.target(name)?)? {
            Entry::Data(span) => Some(*span),
            Entry::Link(_) => None,
        }
    }

    /// The whole of the small member `name` of the tar file at `path`
    /// (`input` names it in messages), refused past `max` bytes.
    pub fn read(
        &self,
        input: &str,
        path: &Path,
        name: &str,
        max: u64,
        role: &'static str,
    ) -> Result<Vec<u8>, InputError> {
        let span = self.span(name).ok_or_else(|| InputError::MissingMember {
            input: input.to_owned(),
            member: name.to_owned(),
            role,
        })?;
        if span.size > max {
            return Err(InputError::MemberTooLarge {
                input: input.to_owned(),
                member: name.to_owned(),
                size: span.size,
                limit: max,
            });
        }
        let member_err = |source| InputError::Member {
            input: input.to_owned(),
            member: name.to_owned(),
            source,
        };
        let mut file = File::open(path).map_err(member_err)?;
        file.seek(SeekFrom::Start(span.offset))
            .map_err(member_err)?;
        let mut bytes = Vec::with_capacity(span.size as usize);
        file.take(span.size)
            .read_to_end(&mut bytes)
            .map_err(member_err)?;
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_normalized_and_links_resolved() {
        assert_eq!(normalize("./a/layer.tar"), "a/layer.tar");
        assert_eq!(normalize("././a/"), "a");
        assert_eq!(normalize("/index.json"), "index.json");
        assert_eq!(
            resolve_relative("b/layer.tar", "../a/layer.tar"),
            "a/layer.tar"
        );
        assert_eq!(
            resolve_relative("b/layer.tar", "/a/layer.tar"),
            "a/layer.tar"
        );
        assert_eq!(resolve_relative("blobs/sha256/x", "y"), "blobs/sha256/y");
    }
}
