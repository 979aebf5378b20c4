//! A backup's disk as Xen Orchestra restores it: its VHD and every ancestor, found the way
//! `vhd-lib` finds them (`aliases.js`, `chain.js`, `merge.js`).
//!
//! - A name ending in `.alias.vhd` is a small file holding the path of a VhdDirectory,
//!   relative to the alias's folder; an alias naming another alias is refused (XO refuses
//!   it too). Other names are VHD files or VhdDirectory folders.
//! - A differencing disk's header names its parent in the *parent unicode name* field,
//!   relative to the folder of the child's name (the alias's, for an alias); the parent's
//!   footer unique id must equal the child's parent unique id. A merge keeps this true: the
//!   merged ancestor takes the unique id of the last child it absorbed and that child's
//!   name.
//! - At most [`MAX_CHAIN`] files; a name met twice is a loop.
//!
//! Opened files are kept by name, so importing the points of one VDI one after the other
//! opens each file of the chain once; the importer drops the files the backup being
//! imported does not use ([`ChainOpener::keep_only`]). Each open file's block map costs
//! about 32 bytes per block plus its partial bitmaps; all open files together hold at most
//! [`MAX_MAP_BYTES`], checked as each file is opened (so at most that plus one file's map,
//! itself bounded by the VHD reader), which a hostile remote cannot exceed.
//!
//! **XO working at the same time.** A layer remembers the size and modification time of
//! the files it was read from (the VHD file; an alias and its folder's header, footer,
//! `bat` and filters) when it was opened. [`ChainOpener::unchanged`] compares them again:
//! the import calls it just before publishing a point, together with checks that XO holds
//! no lock on the VM and no merge is running, so a point read while XO merged or rewrote
//! its chain is not published.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::remote::{EntryKind, RemotePath, XoRemote};
use super::vhd_directory::VhdDirectoryFile;
use crate::error::{Error, Result};
use crate::formats::vhd::{dynamic as h, footer as f, FOOTER_LEN, TYPE_DIFFERENCING};
use crate::sources::vhd::{be_u32, be_u64, parent_name, Layer, VhdSource};
use crate::sources::ReadAt;

/// Most files in one chain. Each opened file keeps its block table in memory (about 32
/// bytes per block), so a 1 TiB disk costs about 16 MiB per file.
pub const MAX_CHAIN: usize = 128;
/// Most memory the block maps of all open files hold together (entries and kept partial
/// bitmaps): 2 GiB, a 2 TiB disk with a chain of about 60 files.
pub const MAX_MAP_BYTES: u64 = 2 << 30;

/// Size and modification time of the files a layer was read from.
type Fingerprint = Vec<(RemotePath, Option<(u64, i128)>)>;
/// Largest alias file (XO's `ALIAS_MAX_PATH_LENGTH`).
const MAX_ALIAS: u64 = 1024;

/// Opens chains of one remote, keeping what it opened.
pub struct ChainOpener {
    remote: Arc<XoRemote>,
    opened: HashMap<RemotePath, (Arc<Layer>, Fingerprint)>,
    alias_targets: HashSet<RemotePath>,
}

/// An opened chain.
pub struct OpenedChain {
    /// The disk.
    pub source: VhdSource,
    /// The names of its files, top first (aliases as named, not their targets).
    pub names: Vec<RemotePath>,
}

impl ChainOpener {
    /// An opener for `remote`.
    pub fn new(remote: Arc<XoRemote>) -> Self {
        Self {
            remote,
            opened: HashMap::new(),
            alias_targets: HashSet::new(),
        }
    }

    /// Keeps only the files named `names` open (the chains of the backup being imported,
    /// which the next one mostly shares), dropping the rest.
    pub fn keep_only(&mut self, names: &[RemotePath]) {
        self.opened.retain(|name, _| names.contains(name));
    }

    /// The VhdDirectory folders aliases led to.
    pub fn alias_targets(&self) -> &HashSet<RemotePath> {
        &self.alias_targets
    }

    /// Opens the VHD named `top` and its ancestors.
    pub fn open(&mut self, top: &RemotePath) -> Result<OpenedChain> {
        let mut names = vec![top.clone()];
        let mut layers = vec![self.layer(top)?];
        let mut seen: HashSet<RemotePath> = names.iter().cloned().collect();
        while let (Some(last), Some(layer)) = (names.last(), layers.last()) {
            let Some(parent) = layer.parent_name() else {
                break;
            };
            if parent.is_empty() {
                return Err(self.bad(
                    last,
                    "it is a differencing disk whose header names no parent".into(),
                ));
            }
            let parent = last.parent().join(parent, "parent name")?;
            if !seen.insert(parent.clone()) {
                return Err(self.bad(
                    top,
                    format!("the chain of parents loops: {parent} is its own ancestor"),
                ));
            }
            if names.len() >= MAX_CHAIN {
                return Err(self.bad(top, format!("the chain is longer than {MAX_CHAIN} VHDs")));
            }
            layers.push(self.layer(&parent).map_err(|e| match e {
                Error::Source { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                    self.bad(last, format!("its parent {parent} is missing"))
                }
                other => other,
            })?);
            names.push(parent);
        }
        let source = VhdSource::from_layers(&self.remote.local(top), layers)?;
        Ok(OpenedChain { source, names })
    }

    /// The file named `name`, opened (or from the ones already opened).
    fn layer(&mut self, name: &RemotePath) -> Result<Arc<Layer>> {
        if let Some((l, _)) = self.opened.get(name) {
            return Ok(Arc::clone(l));
        }
        let before = self.fingerprint(name);
        let (layer, target) = self.open_layer(name)?;
        let kept: u64 = self.opened.values().map(|(l, _)| l.map_bytes()).sum();
        if kept + layer.map_bytes() > MAX_MAP_BYTES {
            return Err(self.bad(name, format!(
                "its block map ({} bytes) and those of the VHDs already open ({kept} bytes) exceed the {MAX_MAP_BYTES} bytes tessera keeps in memory",
                layer.map_bytes()
            )));
        }
        let layer = Arc::new(layer);
        if &target != name {
            self.alias_targets.insert(target);
        }
        self.opened
            .insert(name.clone(), (Arc::clone(&layer), before));
        Ok(layer)
    }

    /// Whether the files of the layers `names` are as they were when each was opened; an
    /// error names the first that changed.
    pub fn unchanged(&self, names: &[RemotePath]) -> std::result::Result<(), String> {
        for name in names {
            let Some((_, then)) = self.opened.get(name) else {
                return Err(format!("{name} is no longer open, so it cannot be checked"));
            };
            let now = self.fingerprint(name);
            if let Some(((path, _), _)) = then.iter().zip(&now).find(|(a, b)| a != b) {
                return Err(format!("{path} changed while it was read"));
            }
            if then.len() != now.len() {
                return Err(format!("{name} changed while it was read"));
            }
        }
        Ok(())
    }

    /// Size and modification time of the files `name` is read from.
    fn fingerprint(&self, name: &RemotePath) -> Fingerprint {
        let stat = |p: &RemotePath| {
            let meta = std::fs::symlink_metadata(self.remote.local(p)).ok()?;
            let mtime = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos().cast_signed());
            Some((meta.len(), mtime))
        };
        let mut out = vec![(name.clone(), stat(name))];
        let target = if name.file_name().ends_with(".alias.vhd") {
            self.remote
                .read(name, MAX_ALIAS, "an alias")
                .ok()
                .and_then(|t| String::from_utf8(t).ok())
                .and_then(|t| name.parent().join(t.trim(), "alias target").ok())
        } else {
            Some(name.clone())
        };
        if let Some(dir) =
            target.filter(|t| std::fs::metadata(self.remote.local(t)).is_ok_and(|m| m.is_dir()))
        {
            for part in ["header", "footer", "bat", "chunk-filters.json"] {
                if let Ok(p) = dir.join(part, "chunk") {
                    let s = stat(&p);
                    out.push((p, s));
                }
            }
        }
        out
    }

    /// Opens `name`; returns the layer and what was opened (an alias's target).
    fn open_layer(&self, name: &RemotePath) -> Result<(Layer, RemotePath)> {
        let (bytes, len, target) = self.open_bytes(name)?;
        let layer = Layer::decode(&self.remote.local(&target), bytes, len)?;
        Ok((layer, target))
    }

    /// The names `top`'s chain reaches, top first, found from the headers alone (no block
    /// table or bitmap is read): how a rerun tells orphans without re-reading the chains
    /// of backups already imported. Stops quietly where the chain cannot be followed.
    pub fn reach(&mut self, top: &RemotePath) -> Vec<RemotePath> {
        let mut out = vec![top.clone()];
        let mut seen: HashSet<RemotePath> = out.iter().cloned().collect();
        while out.len() < MAX_CHAIN {
            let Some(name) = out.last().cloned() else {
                break;
            };
            let parent = match self.opened.get(&name) {
                Some((layer, _)) => layer.parent_name().map(str::to_string),
                None => self.peek_parent_name(&name).ok().flatten(),
            };
            let Some(parent) = parent.and_then(|p| name.parent().join(&p, "parent name").ok())
            else {
                break;
            };
            if !seen.insert(parent.clone()) {
                break;
            }
            out.push(parent);
        }
        out
    }

    /// The parent unicode name in `name`'s header, if it is a differencing disk.
    fn peek_parent_name(&mut self, name: &RemotePath) -> Result<Option<String>> {
        let (bytes, len, target) = self.open_bytes(name)?;
        if &target != name {
            self.alias_targets.insert(target);
        }
        let mut footer = [0u8; FOOTER_LEN as usize];
        let footer_at = len
            .checked_sub(FOOTER_LEN)
            .ok_or_else(|| self.bad(name, "shorter than a footer".into()))?;
        bytes
            .read_exact_at(&mut footer, footer_at)
            .map_err(|e| self.bad(name, e.to_string()))?;
        if be_u32(&footer, f::DISK_TYPE) != TYPE_DIFFERENCING {
            return Ok(None);
        }
        let header_at = be_u64(&footer, f::DATA_OFFSET);
        let mut name_field = [0u8; 512];
        bytes
            .read_exact_at(
                &mut name_field,
                header_at.saturating_add(h::PARENT_NAME as u64),
            )
            .map_err(|e| self.bad(name, e.to_string()))?;
        Ok(Some(parent_name(&name_field)))
    }

    /// The bytes of the VHD named `name` (a file, or a VhdDirectory directly or through an
    /// alias): a reader, its length, and what was opened (an alias's target).
    fn open_bytes(&self, name: &RemotePath) -> Result<(Box<dyn ReadAt>, u64, RemotePath)> {
        let remote = &self.remote;
        let target = if name.file_name().ends_with(".alias.vhd") {
            let text = remote.read(name, MAX_ALIAS, "an alias")?;
            let text = String::from_utf8(text)
                .map_err(|_| self.bad(name, "the alias is not UTF-8 text".into()))?;
            let text = text.trim();
            if text.ends_with(".alias.vhd") {
                return Err(self.bad(
                    name,
                    format!("the alias names another alias ({text}); chained aliases are refused"),
                ));
            }
            let target = name.parent().join(text, "alias target")?;
            if remote.kind(&target)? != Some(EntryKind::Dir) {
                return Err(self.bad(name, format!("the alias names {target}, which is not a VhdDirectory folder in the remote")));
            }
            target
        } else {
            name.clone()
        };
        let local = remote.local(&target);
        match remote.kind(&target)? {
            Some(EntryKind::Dir) => {
                let dir = VhdDirectoryFile::open(Arc::clone(remote), &target)?;
                let len = dir.len();
                Ok((Box::new(dir), len, target))
            }
            Some(EntryKind::File) => {
                if remote.encrypted() {
                    return Err(self.bad(name, "on an encrypted remote a VHD is a VhdDirectory (a file is encrypted whole and cannot be read by range; XO cannot either)".into()));
                }
                let file = remote.open_raw(&target)?;
                let len = file
                    .metadata()
                    .map_err(|e| Error::Source { path: local.clone(), source: e })?
                    .len();
                Ok((Box::new(file), len, target))
            }
            Some(EntryKind::Other) => Err(self.bad(name, "not a file or folder inside the remote (a link leading out of it, or a special file)".into())),
            None => Err(Error::Source {
                path: local,
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such VHD"),
            }),
        }
    }

    fn bad(&self, name: &RemotePath, reason: String) -> Error {
        Error::BadImage {
            path: self.remote.local(name).display().to_string(),
            format: "VHD",
            reason,
        }
    }
}
