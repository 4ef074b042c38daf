//! What a model file is, told by its content, not its name: a safetensors state dict (the
//! native ResNet path), a TorchScript archive (an exported model), or something the server
//! cannot use, said with what to do instead.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// The kinds of file `--weights` may name, and the ones it refuses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileKind {
    /// `safetensors`: an 8-byte little-endian header length, then a JSON header.
    Safetensors,
    /// A zip archive with TorchScript code (`torch.jit.save`).
    TorchScript,
    /// A zip archive with a pickle and no code (`torch.save`, a `.pth` checkpoint).
    PyTorchPickle,
    /// The legacy (non-zip) `torch.save` format.
    LegacyPickle,
    /// A zip archive that cannot be read: cut short, or damaged.
    BrokenArchive(String),
    /// None of these.
    Unknown,
}

/// Reads as much of `path` as tells its kind.
pub fn detect(path: &Path) -> std::io::Result<FileKind> {
    let mut file = File::open(path)?;
    let mut head = [0u8; 9];
    let n = read_up_to(&mut file, &mut head)?;
    let head = &head[..n];
    if head.starts_with(b"PK\x03\x04") {
        file.seek(SeekFrom::Start(0))?;
        return Ok(archive_kind(file));
    }
    // Python's pickle protocol 2 opcode, with which the legacy torch.save begins.
    if head.starts_with(&[0x80, 0x02]) {
        return Ok(FileKind::LegacyPickle);
    }
    if n == 9 && head[8] == b'{' {
        let header = u64::from_le_bytes(head[..8].try_into().expect("eight bytes"));
        if header > 1 && header < 100 << 20 {
            return Ok(FileKind::Safetensors);
        }
    }
    Ok(FileKind::Unknown)
}

fn read_up_to(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// A zip's kind from its entry names (PyTorch writes `<name>/code/...` and
/// `<name>/constants.pkl` for TorchScript, `<name>/data.pkl` alone for `torch.save`).
fn archive_kind(file: File) -> FileKind {
    let archive = match zip::ZipArchive::new(file) {
        Ok(a) => a,
        Err(e) => return FileKind::BrokenArchive(e.to_string()),
    };
    let names: Vec<&str> = archive.file_names().collect();
    let code = names
        .iter()
        .any(|n| n.contains("/code/") || n.ends_with("/constants.pkl"));
    if code {
        FileKind::TorchScript
    } else if names.iter().any(|n| n.ends_with("data.pkl")) {
        FileKind::PyTorchPickle
    } else {
        FileKind::Unknown
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn kind_of(bytes: &[u8]) -> FileKind {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(bytes).unwrap();
        detect(f.path()).unwrap()
    }

    fn zip_with(names: &[&str]) -> Vec<u8> {
        let mut buf = std::io::Cursor::new(Vec::new());
        let mut w = zip::ZipWriter::new(&mut buf);
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        for name in names {
            w.start_file(*name, options).unwrap();
            w.write_all(b"x").unwrap();
        }
        w.finish().unwrap();
        buf.into_inner()
    }

    #[test]
    fn kinds_are_told_by_content() {
        let mut safetensors = 2u64.to_le_bytes().to_vec();
        safetensors.extend_from_slice(b"{}");
        assert_eq!(kind_of(&safetensors), FileKind::Safetensors);
        assert_eq!(
            kind_of(&zip_with(&[
                "m/data.pkl",
                "m/code/__torch__.py",
                "m/constants.pkl"
            ])),
            FileKind::TorchScript
        );
        assert_eq!(
            kind_of(&zip_with(&["archive/data.pkl", "archive/data/0"])),
            FileKind::PyTorchPickle
        );
        assert_eq!(kind_of(&[0x80, 0x02, 0x8a, 0x0a]), FileKind::LegacyPickle);
        assert_eq!(kind_of(b"hello"), FileKind::Unknown);
        assert_eq!(kind_of(b""), FileKind::Unknown);
        let whole = zip_with(&["m/data.pkl", "m/code/x.py"]);
        let cut = &whole[..whole.len() / 2];
        assert!(matches!(kind_of(cut), FileKind::BrokenArchive(_)));
    }
}
