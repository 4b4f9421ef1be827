//! fjall's journals, read and checked by troupe before fjall opens them.
//!
//! When fjall opens, it replays its journals and cuts each at the first
//! entry it cannot read, taking whatever follows for a write torn by a
//! crash. That is right for the end of the newest journal and wrong
//! anywhere else: a flipped bit in the middle would erase every
//! acknowledged batch after it, from the only copy. And fjall's checksum
//! covers a batch's items, not its header: a damaged sequence number
//! passes, and reorders or hides the batch's writes (a batch whose number
//! falls below what was flushed is skipped as already flushed).
//!
//! So troupe reads every journal first, changing nothing, and keeps what
//! it learns for the checks after fjall has opened:
//! - each batch is decoded and its checksum recomputed; damage followed by
//!   any readable batch, or damage in a journal older than the newest,
//!   refuses the start before fjall can cut anything; a bad end of the
//!   newest journal is a torn write only if it was never acknowledged
//!   (`embedded` compares troupe's counts with `troupe.acked`);
//! - sequence numbers must rise in file order, the order the writer
//!   appended in;
//! - troupe's batches count themselves (`meta/batches`, inside the
//!   checksummed items): the counts must follow one another;
//! - the last value written to each key ([`Scan::expected`]): once fjall
//!   has opened, every key must read as its journal last wrote it
//!   (`embedded::check_replay`), whatever a header said.
//!
//! The format read here is fjall 3's journal (`fjall::journal::entry`):
//! little-endian, a batch is `Start` (tag 1, item count u32, seqno u64),
//! its items (tag 2: value type u8, compression u8, keyspace u64, key
//! length u16, value length u32, stored length u32, key, value; or tag 4:
//! a keyspace cleared, u64), then `End` (tag 3, xxh3 of the items' bytes
//! u64, `FJL\x03`). New journals are preallocated with zeros.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use xxhash_rust::xxh3::Xxh3;

const START: u8 = 1;
const ITEM: u8 = 2;
const END: u8 = 3;
const CLEAR: u8 = 4;
const MAGIC: &[u8] = b"FJL\x03";
/// ValueType: a value, a tombstone, a weak tombstone, a blob pointer.
const VALUE: u8 = 0;
const TOMBSTONE: u8 = 1;
const WEAK_TOMBSTONE: u8 = 2;
const INDIRECTION: u8 = 4;

/// What a key's last write in the journals left: its value's hash, or
/// nothing (a removal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Last {
    Value(u64),
    Removed,
}

/// Where a journal went wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Damage {
    pub journal: PathBuf,
    pub offset: usize,
    pub what: String,
    /// An earlier batch the damage may be in instead (its journal and
    /// where it starts): of two batches numbered out of order, either
    /// number can be the damaged one.
    pub or_before: Option<(PathBuf, usize)>,
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} is damaged at byte {}: {}",
            self.journal.display(),
            self.offset,
            self.what
        )
    }
}

/// What the journals hold, read before fjall opens them.
#[derive(Debug, Default)]
pub(super) struct Scan {
    /// Batches read whole, in every journal.
    pub batches: u64,
    /// The first and last of troupe's batch counts found (`meta/batches`).
    pub counts: Option<(u64, u64)>,
    /// The number (fjall's sequence number) of the batch holding the first.
    pub first_count_seqno: Option<u64>,
    /// The newest journal's last batch, torn by a crash: fjall drops it.
    /// Its journal, where it starts, and its bytes.
    pub torn: Option<(PathBuf, usize, Vec<u8>)>,
    /// Each key's last write: (keyspace id, key) -> what it left. Keys of
    /// a keyspace cleared, or whose value cannot be hashed here (stored
    /// compressed, or in a blob file), are left out.
    pub expected: HashMap<(u64, Vec<u8>), Last>,
    /// Bytes of journal read.
    pub bytes: u64,
    /// The journal files, oldest first.
    pub journals: Vec<PathBuf>,
    /// The number (fjall's sequence number) of the last whole batch.
    pub last_seqno: Option<u64>,
}

/// Reads every journal in `db` (fjall's directory), oldest first.
///
/// # Errors
/// `Err(Ok(damage))` for damage, `Err(Err(io))` when a journal cannot be
/// read at all.
pub(super) fn scan(db: &Path, count_key: &[u8]) -> Result<Scan, Result<Damage, std::io::Error>> {
    let journals = journals(db).map_err(Err)?;
    let mut scan = Scan {
        journals: journals.clone(),
        ..Scan::default()
    };
    let mut seqno: Option<(u64, PathBuf, usize)> = None;
    for (i, path) in journals.iter().enumerate() {
        let newest = i + 1 == journals.len();
        let file = read(path).map_err(Err)?;
        // Journals are preallocated with zeros: what matters ends at the
        // last byte that is not zero.
        let bytes = &file[..written(&file)];
        scan.bytes += bytes.len() as u64;
        let damage = |offset: usize, what: String| {
            Err(Ok(Damage {
                journal: path.clone(),
                offset,
                what,
                or_before: None,
            }))
        };
        let mut pos = 0;
        while pos < bytes.len() {
            let batch = match batch_at(bytes, pos, count_key) {
                Ok(batch) => batch,
                Err(why) => {
                    if let Some(next) = (pos + 1..bytes.len())
                        .find(|&o| bytes[o] == START && batch_at(bytes, o, count_key).is_ok())
                    {
                        return damage(
                            pos,
                            format!(
                                "{why}, and a whole batch follows at byte {next}: \
                                 not a write torn by a crash"
                            ),
                        );
                    }
                    if !newest {
                        return damage(
                            pos,
                            format!("{why}, in a journal that was complete when it was sealed"),
                        );
                    }
                    // The end of the newest journal: a batch torn by a
                    // crash, or a damaged last batch. Which one, the
                    // count of batches acknowledged tells (`embedded`).
                    scan.torn = Some((path.clone(), pos, bytes[pos..].to_vec()));
                    break;
                }
            };
            // lsm-tree reserves the top bit; a counter past it fails the
            // next write.
            if batch.seqno >= 1 << 63 {
                return damage(
                    pos,
                    format!(
                        "its batch is numbered {}, past what fjall allows",
                        batch.seqno
                    ),
                );
            }
            if let Some((before, ref at_path, at)) = seqno {
                if batch.seqno <= before {
                    return Err(Ok(Damage {
                        journal: path.clone(),
                        offset: pos,
                        what: format!(
                            "its batch is numbered {} after a batch numbered {before} \
                             (in {} at byte {at}): a batch's number is damaged",
                            batch.seqno,
                            at_path.display()
                        ),
                        or_before: Some((at_path.clone(), at)),
                    }));
                }
            }
            seqno = Some((batch.seqno, path.clone(), pos));
            if let Some(count) = batch.count {
                scan.counts = match scan.counts {
                    None => {
                        scan.first_count_seqno = Some(batch.seqno);
                        Some((count, count))
                    }
                    Some((first, prev)) if count == prev + 1 => Some((first, count)),
                    Some((_, prev)) => {
                        return damage(
                            pos,
                            format!(
                                "troupe's batch {count} follows its batch {prev}: \
                                 a batch is missing or damaged"
                            ),
                        )
                    }
                };
            }
            for item in &batch.items {
                match item {
                    Item::Write {
                        keyspace,
                        key,
                        last,
                    } => {
                        match last {
                            Some(last) => scan.expected.insert((*keyspace, key.clone()), *last),
                            None => scan.expected.remove(&(*keyspace, key.clone())),
                        };
                    }
                    Item::Clear { keyspace } => scan.expected.retain(|(k, _), _| k != keyspace),
                }
            }
            scan.batches += 1;
            pos = batch.end;
        }
    }
    scan.last_seqno = seqno.map(|(n, _, _)| n);
    Ok(scan)
}

/// The journal files in `db`, oldest first (fjall names them by a rising
/// number).
pub(super) fn journals(db: &Path) -> Result<Vec<PathBuf>, std::io::Error> {
    let mut found: Vec<(u64, PathBuf)> = Vec::new();
    let dir = match std::fs::read_dir(db) {
        Ok(dir) => dir,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    for entry in dir {
        let path = entry?.path();
        let Some(id) = path
            .extension()
            .filter(|e| *e == "jnl")
            .and(path.file_stem())
            .and_then(|s| s.to_str())
        else {
            continue;
        };
        let id: u64 = id.parse().map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} is not a journal's name", path.display()),
            )
        })?;
        found.push((id, path));
    }
    found.sort_unstable_by_key(|(id, _)| *id);
    Ok(found.into_iter().map(|(_, p)| p).collect())
}

enum Item {
    /// `last` is `None` when the value cannot be hashed here.
    Write {
        keyspace: u64,
        key: Vec<u8>,
        last: Option<Last>,
    },
    Clear {
        keyspace: u64,
    },
}

struct Batch {
    seqno: u64,
    items: Vec<Item>,
    /// troupe's count, when the batch carries one (8 bytes, big-endian).
    count: Option<u64>,
    /// Just past the batch's trailer.
    end: usize,
}

/// The batch starting at `pos`, read whole and its checksum checked.
fn batch_at(bytes: &[u8], pos: usize, count_key: &[u8]) -> Result<Batch, String> {
    let mut c = Cursor { bytes, pos };
    let tag = c.u8()?;
    if tag != START {
        return Err(format!("a batch should start here, found tag {tag}"));
    }
    let count = c.u32()?;
    let seqno = c.u64()?;
    // An item is at least 24 bytes: a count past what is left is damage,
    // not a reason to reserve memory.
    let mut items = Vec::with_capacity((count as usize).min(bytes.len() / 24));
    let mut hash = Xxh3::new();
    let mut troupe_count = None;
    for _ in 0..count {
        let from = c.pos;
        match c.u8()? {
            ITEM => {
                let value_type = c.u8()?;
                let compression = c.u8()?;
                let keyspace = c.u64()?;
                let key_len = c.u16()? as usize;
                let value_len = c.u32()? as usize;
                let stored_len = c.u32()? as usize;
                let key = c.take(key_len)?.to_vec();
                let value = c.take(stored_len)?;
                let last = match (value_type, compression) {
                    (VALUE, 0) if value_len == stored_len => {
                        if key == count_key {
                            troupe_count = value.try_into().ok().map(u64::from_be_bytes);
                        }
                        Some(Last::Value(xxhash_rust::xxh3::xxh3_64(value)))
                    }
                    (VALUE, 0) => {
                        return Err(format!(
                            "an uncompressed value of {value_len} bytes stored in {stored_len}"
                        ))
                    }
                    (TOMBSTONE | WEAK_TOMBSTONE, 0 | 1) => Some(Last::Removed),
                    (VALUE | INDIRECTION, 1) | (INDIRECTION, 0) => None,
                    (t, 0 | 1) => return Err(format!("an unknown value type {t}")),
                    (_, z) => return Err(format!("an unknown compression {z}")),
                };
                items.push(Item::Write {
                    keyspace,
                    key,
                    last,
                });
            }
            CLEAR => items.push(Item::Clear { keyspace: c.u64()? }),
            tag => return Err(format!("an item should be here, found tag {tag}")),
        }
        hash.update(&bytes[from..c.pos]);
    }
    let tag = c.u8()?;
    if tag != END {
        return Err(format!(
            "the batch's end should be here, found tag {tag} (its item count is wrong)"
        ));
    }
    let checksum = c.u64()?;
    if c.take(MAGIC.len())? != MAGIC {
        return Err("the batch's trailer is not fjall's".into());
    }
    if hash.digest() != checksum {
        return Err("the batch's checksum does not match its items".into());
    }
    Ok(Batch {
        seqno,
        items,
        count: troupe_count,
        end: c.pos,
    })
}

/// The file's bytes, reading only the extents written: fjall preallocates
/// each journal (64 MiB of zeros) and writes from its start, so on file
/// systems that keep holes (ext4, xfs, btrfs, tmpfs) the batches are a
/// small part of it. Holes read as the zeros they stand for; where holes
/// are not reported, the whole file is read.
fn read(path: &Path) -> std::io::Result<Vec<u8>> {
    use nix::unistd::{lseek, Whence};
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    let mut extents = Vec::new();
    let mut offset = 0i64;
    loop {
        let data = match lseek(&file, offset, Whence::SeekData) {
            Ok(data) => data,
            // No data past `offset`.
            Err(nix::errno::Errno::ENXIO) => break,
            Err(_) => return std::fs::read(path),
        };
        let Ok(hole) = lseek(&file, data, Whence::SeekHole) else {
            return std::fs::read(path);
        };
        extents.push((data, hole));
        offset = hole;
    }
    let end = extents.last().map_or(0, |(_, hole)| *hole);
    let end =
        usize::try_from(u64::try_from(end).unwrap_or(0).min(len)).map_err(std::io::Error::other)?;
    let mut bytes = vec![0u8; end];
    for (from, to) in extents {
        let (from, to) = (from as usize, (to as usize).min(end));
        if from < to {
            file.read_exact_at(&mut bytes[from..to], from as u64)?;
        }
    }
    Ok(bytes)
}

/// How many bytes of `file` precede the zeros it ends with.
pub(super) fn written(file: &[u8]) -> usize {
    const PAGE: usize = 4096;
    let zeros = [0u8; PAGE];
    // Whole pages first (compared as slices, which is fast in any build),
    // then the bytes of the last page that is not all zeros.
    let mut end = file.len();
    while end > 0 {
        let from = end.saturating_sub(PAGE);
        if file[from..end] != zeros[..end - from] {
            break;
        }
        end = from;
    }
    file[..end]
        .iter()
        .rposition(|b| *b != 0)
        .map_or(0, |i| i + 1)
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|end| *end <= self.bytes.len())
            .ok_or_else(|| "the journal ends inside a batch".to_owned())?;
        let taken = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(taken)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        self.take(N).map(|b| b.try_into().unwrap_or([0; N]))
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, String> {
        self.array().map(u16::from_le_bytes)
    }

    fn u32(&mut self) -> Result<u32, String> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, String> {
        self.array().map(u64::from_le_bytes)
    }
}
