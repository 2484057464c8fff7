//! The `.vsplice.records` section that `vsplice.h` fills: one text record per
//! `VSPLICE_REPLACE` / `VSPLICE_SYMBOL`, `"<kind> <a> <b> [qualifier]\0"`.

use object::{Object, ObjectSection};

use crate::model::Qualifier;

/// Section holding the records.
pub const RECORDS_SECTION: &str = ".vsplice.records";

/// One record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// `VSPLICE_REPLACE(old, new)`.
    Replace {
        /// Target function.
        old: String,
        /// Patch function.
        new: String,
        /// Which `old`.
        qualifier: Option<Qualifier>,
    },
    /// `VSPLICE_SYMBOL(name, target, qual)`.
    Symbol {
        /// Name in the patch.
        name: String,
        /// Target symbol.
        target: String,
        /// Which one.
        qualifier: Option<Qualifier>,
    },
}

/// Parses the records of a section's bytes.
pub fn parse_records(data: &[u8]) -> Result<Vec<Record>, String> {
    let mut out = Vec::new();
    for raw in data.split(|&b| b == 0) {
        let text = std::str::from_utf8(raw).map_err(|_| "record is not UTF-8".to_owned())?.trim();
        if text.is_empty() {
            continue;
        }
        let words: Vec<&str> = text.split_whitespace().collect();
        let (kind, a, b, qual) = match words.as_slice() {
            [k, a, b] => (*k, *a, *b, ""),
            [k, a, b, q] => (*k, *a, *b, *q),
            _ => return Err(format!("malformed record `{text}`")),
        };
        let qualifier = Qualifier::parse(qual).map_err(|e| format!("record `{text}`: {e}"))?;
        out.push(match kind {
            "replace" => Record::Replace { old: a.to_owned(), new: b.to_owned(), qualifier },
            "symbol" => Record::Symbol { name: a.to_owned(), target: b.to_owned(), qualifier },
            _ => return Err(format!("unknown record kind in `{text}`")),
        });
    }
    Ok(out)
}

/// The records of an ELF object (none when it has no records section).
pub fn object_records(object: &[u8]) -> Result<Vec<Record>, String> {
    let file = object::File::parse(object).map_err(|e| e.to_string())?;
    match file.section_by_name(RECORDS_SECTION) {
        None => Ok(Vec::new()),
        Some(s) => parse_records(s.data().map_err(|e| e.to_string())?),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn records_parse() {
        let r = parse_records(b"replace a b \0symbol x y file:z.c\0\0replace c d pos:2\0").unwrap();
        assert_eq!(r.len(), 3);
        assert_eq!(r[1], Record::Symbol { name: "x".into(), target: "y".into(), qualifier: Some(Qualifier::File("z.c".into())) });
        assert!(parse_records(b"replace a\0").is_err());
        assert!(parse_records(b"frobnicate a b\0").is_err());
        assert!(parse_records(b"replace a b bogus\0").is_err());
    }
}
