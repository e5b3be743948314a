//! The log's files: records and segments.
//!
//! A topic is a directory of segment files named by the offset of their
//! first record (`00000000000000000001.log`), each a run of records:
//!
//! ```text
//! u32 length of what follows the checksum | u32 CRC-32 of it
//! u64 offset | u16 key length | key | u32 receipt length | receipt | payload
//! ```
//!
//! (little-endian). Offsets only grow; they are consecutive except where a
//! failed write's records were cut off again. A crash can leave the last
//! segment with a torn record at its end: opening it reads up to the last
//! whole record and cuts the rest off. Anything unreadable before that is
//! corruption, reported rather than skipped (it would lose acked records).

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::error::{BackendError, BackendResult};

/// Bytes before a record's body: its length and checksum.
const FRAME_HEAD: usize = 8;
/// The fixed part of a body: offset, key length, receipt length.
const BODY_FIXED: usize = 8 + 2 + 4;
/// Longest record body accepted when reading (a corrupt length must not
/// make us allocate gigabytes); far above any frame Herald accepts.
const BODY_MAX: usize = 64 * 1024 * 1024;

/// One record as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub offset: u64,
    /// The idempotency key it was published under (empty: none).
    pub key: String,
    pub receipt: Vec<u8>,
    pub payload: Bytes,
}

/// Appends the encoding of one record to `out`.
pub fn encode(out: &mut Vec<u8>, offset: u64, key: &str, receipt: &[u8], payload: &[u8]) {
    let body_len = BODY_FIXED + key.len() + receipt.len() + payload.len();
    let start = out.len();
    out.reserve(FRAME_HEAD + body_len);
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(&(key.len() as u16).to_le_bytes());
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(&(receipt.len() as u32).to_le_bytes());
    out.extend_from_slice(receipt);
    out.extend_from_slice(payload);
    let crc = crc32fast::hash(&out[start + FRAME_HEAD..]);
    out[start + 4..start + FRAME_HEAD].copy_from_slice(&crc.to_le_bytes());
}

/// Longest key `encode` can store.
pub const KEY_MAX: usize = u16::MAX as usize;

/// Decodes a checked body.
fn decode_body(body: &[u8]) -> Option<Record> {
    let offset = u64::from_le_bytes(body.get(0..8)?.try_into().ok()?);
    let key_len = u16::from_le_bytes(body.get(8..10)?.try_into().ok()?) as usize;
    let key = body.get(10..10 + key_len)?;
    let at = 10 + key_len;
    let receipt_len = u32::from_le_bytes(body.get(at..at + 4)?.try_into().ok()?) as usize;
    let receipt = body.get(at + 4..at + 4 + receipt_len)?;
    let payload = body.get(at + 4 + receipt_len..)?;
    Some(Record {
        offset,
        key: String::from_utf8(key.to_vec()).ok()?,
        receipt: receipt.to_vec(),
        payload: Bytes::copy_from_slice(payload),
    })
}

/// What reading a segment from some position found.
pub struct Scan {
    pub records: Vec<Record>,
    /// Where each of them ends in the file.
    pub ends: Vec<u64>,
    /// Where the whole records end.
    pub end: u64,
    /// Something followed the last whole record that is not one.
    pub torn: bool,
}

/// Reads whole records from `file` at `position` on, at most `max`, and
/// none past offset `through`.
pub fn read_from(file: &mut File, position: u64, max: usize, through: u64) -> BackendResult<Scan> {
    file.seek(SeekFrom::Start(position))?;
    let mut reader = std::io::BufReader::with_capacity(256 * 1024, file);
    let mut scan = Scan {
        records: Vec::new(),
        ends: Vec::new(),
        end: position,
        torn: false,
    };
    let mut head = [0u8; FRAME_HEAD];
    while scan.records.len() < max {
        match read_full(&mut reader, &mut head)? {
            0 => break,
            n if n < FRAME_HEAD => {
                scan.torn = true;
                break;
            }
            _ => {}
        }
        let body_len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        if !(BODY_FIXED..=BODY_MAX).contains(&body_len) {
            scan.torn = true;
            break;
        }
        let mut body = vec![0u8; body_len];
        if read_full(&mut reader, &mut body)? < body_len || crc32fast::hash(&body) != crc {
            scan.torn = true;
            break;
        }
        let Some(record) = decode_body(&body) else {
            scan.torn = true;
            break;
        };
        if record.offset > through {
            break;
        }
        scan.end += (FRAME_HEAD + body_len) as u64;
        scan.records.push(record);
        scan.ends.push(scan.end);
    }
    Ok(scan)
}

/// Reads until `buf` is full or the file ends; the bytes read.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> BackendResult<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(filled)
}

/// The file of the segment starting at `base` in `dir`.
pub fn path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.log"))
}

/// The bases of the segments in `dir`, ascending.
pub fn list(dir: &Path) -> BackendResult<Vec<u64>> {
    let mut bases = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(base) = name.strip_suffix(".log").and_then(|b| b.parse().ok()) {
            bases.push(base);
        }
    }
    bases.sort_unstable();
    Ok(bases)
}

/// Opens a segment for appending (creating it).
pub fn open_append(dir: &Path, base: u64) -> BackendResult<File> {
    Ok(OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path(dir, base))?)
}

/// Makes a new directory entry (a segment created or removed) durable.
pub fn sync_dir(dir: &Path) -> BackendResult<()> {
    File::open(dir)?.sync_all()?;
    Ok(())
}

/// The error for a segment that cannot be read back.
pub fn corrupt(dir: &Path, base: u64, at: u64) -> BackendError {
    BackendError::Other(format!(
        "the log segment {} is unreadable at byte {at}: refusing to start without \
         its records (move the file away to start without them)",
        path(dir, base).display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(path: &Path, bytes: &[u8]) -> File {
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        f.write_all(bytes).unwrap();
        f
    }

    #[test]
    fn records_read_back_as_written_and_a_torn_end_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = Vec::new();
        encode(&mut bytes, 7, "k:1", b"receipt", b"payload one");
        encode(&mut bytes, 8, "", b"", b"");
        let whole = bytes.len() as u64;
        encode(&mut bytes, 9, "k:2", b"r", b"cut short");
        bytes.truncate(bytes.len() - 3);
        let mut f = write(&dir.path().join("s"), &bytes);
        let scan = read_from(&mut f, 0, usize::MAX, u64::MAX).unwrap();
        assert_eq!(scan.records.len(), 2);
        assert_eq!(scan.records[0].offset, 7);
        assert_eq!(scan.records[0].key, "k:1");
        assert_eq!(scan.records[0].receipt, b"receipt");
        assert_eq!(&scan.records[0].payload[..], b"payload one");
        assert_eq!(scan.records[1].offset, 8);
        assert!(scan.records[1].key.is_empty() && scan.records[1].payload.is_empty());
        assert_eq!(scan.end, whole);
        assert!(scan.torn);
    }

    #[test]
    fn a_flipped_byte_ends_the_whole_records() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = Vec::new();
        encode(&mut bytes, 1, "", b"", b"first");
        let first = bytes.len();
        encode(&mut bytes, 2, "", b"", b"second");
        bytes[first + 12] ^= 0x40;
        let mut f = write(&dir.path().join("s"), &bytes);
        let scan = read_from(&mut f, 0, usize::MAX, u64::MAX).unwrap();
        assert_eq!(scan.records.len(), 1);
        assert_eq!(scan.end, first as u64);
        assert!(scan.torn);
    }

    #[test]
    fn reading_stops_at_max_and_at_the_last_offset_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = Vec::new();
        for offset in 1..=5 {
            encode(&mut bytes, offset, "", b"", b"x");
        }
        let mut f = write(&dir.path().join("s"), &bytes);
        let two = read_from(&mut f, 0, 2, u64::MAX).unwrap();
        assert_eq!(two.records.len(), 2);
        assert!(!two.torn);
        let rest = read_from(&mut f, two.end, usize::MAX, 4).unwrap();
        let offsets: Vec<u64> = rest.records.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, [3, 4]);
        assert!(!rest.torn, "a record past `through` is not a torn one");
    }

    #[test]
    fn segments_are_listed_by_base() {
        let dir = tempfile::tempdir().unwrap();
        for base in [30, 1, 200] {
            write(&path(dir.path(), base), b"");
        }
        write(&dir.path().join("offsets"), b"");
        assert_eq!(list(dir.path()).unwrap(), [1, 30, 200]);
    }
}
