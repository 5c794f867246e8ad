//! A batch id is data, never a path. Every object of a batch lives below
//! `batch_id=SEGMENT/`, where SEGMENT is the batch id with every byte
//! outside `A-Z a-z 0-9 . _ -` written as `+XX` (two upper-case hex digits;
//! `+` itself is `+2B`). The encoding is injective and reversible, so two
//! ids never share a directory and the configured id is what comes back;
//! its alphabet is one that every object store and file system keeps as it
//! is (object_store escapes `%`, `*`, `?`, `#`, ... itself, and `/` would
//! split the key). The ids Firefox sends, such as
//! `content.blocking_blocked_TESTONLY-0`, are their own segment.

const PREFIX: &str = "batch_id=";

fn kept(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-')
}

/// `batch_id=SEGMENT`, the directory of a batch's objects.
pub fn batch_dir(batch_id: &str) -> String {
    let mut dir = String::with_capacity(PREFIX.len() + batch_id.len());
    dir.push_str(PREFIX);
    for &byte in batch_id.as_bytes() {
        if kept(byte) {
            dir.push(char::from(byte));
        } else {
            dir.push_str(&format!("+{byte:02X}"));
        }
    }
    dir
}

/// The batch id of a directory written by [`batch_dir`]; `None` for any
/// other name (not one this encoding writes, so no other id's directory).
pub fn batch_id_of(dir: &str) -> Option<String> {
    let segment = dir.strip_prefix(PREFIX)?.as_bytes();
    let mut bytes = Vec::with_capacity(segment.len());
    let mut i = 0;
    while i < segment.len() {
        match segment[i] {
            b'+' => {
                let hex = std::str::from_utf8(segment.get(i + 1..i + 3)?).ok()?;
                if hex.bytes().any(|b| b.is_ascii_lowercase()) {
                    return None;
                }
                let byte = u8::from_str_radix(hex, 16).ok()?;
                if kept(byte) {
                    return None;
                }
                bytes.push(byte);
                i += 3;
            }
            byte if kept(byte) => {
                bytes.push(byte);
                i += 1;
            }
            _ => return None,
        }
    }
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_ids_of_any_characters_get_their_own_directory_and_come_back() {
        let ids = [
            "content.blocking_blocked_TESTONLY-0",
            "x",
            "x/",
            "x/evil",
            "x+2F",
            "a%*?#[]~ b",
            "é",
            "..",
            "batch_id=x",
            "+",
        ];
        let dirs: Vec<String> = ids.iter().map(|id| batch_dir(id)).collect();
        for (id, dir) in ids.iter().zip(&dirs) {
            assert_eq!(batch_id_of(dir).as_deref(), Some(*id), "{dir}");
            assert!(!dir[PREFIX.len()..].contains('/'), "{dir}");
            assert!(
                dir.bytes().all(|b| kept(b) || b == b'+' || b == b'='),
                "{dir}"
            );
        }
        let distinct: std::collections::HashSet<_> = dirs.iter().collect();
        assert_eq!(distinct.len(), ids.len(), "no two ids share a directory");
        assert_eq!(dirs[0], "batch_id=content.blocking_blocked_TESTONLY-0");
        assert_eq!(dirs[2], "batch_id=x+2F");
    }

    #[test]
    fn names_this_encoding_does_not_write_are_no_batch() {
        for dir in [
            "batch_id=x/",
            "batch_id=a b",
            "batch_id=+2",
            "batch_id=+2f",
            "batch_id=+41",
            "batch_id=+FF",
            "other=x",
        ] {
            assert_eq!(batch_id_of(dir), None, "{dir}");
        }
    }
}
