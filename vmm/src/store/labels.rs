//! Target labels (`--label key=value`) and target ids (`--register-id`):
//! a bounded charset, so a label is safe as a selector, a table column and
//! an environment variable's name part, and an id as an etcd key component
//! and a file name.
//!
//! - key: 1 to 63 of `A-Z a-z 0-9 . _ -`, starting with a letter or digit;
//! - value: 0 to 128 of `A-Z a-z 0-9 . _ - : @ + /`;
//! - at most [`MAX_LABELS`] labels, each key once;
//! - id: 1 to 128 of `A-Z a-z 0-9 . _ -`, starting with a letter or digit.

use std::collections::BTreeMap;

use thiserror::Error;

/// Most labels on one target.
pub const MAX_LABELS: usize = 32;
/// Longest label key.
pub const MAX_KEY: usize = 63;
/// Longest label value.
pub const MAX_VALUE: usize = 128;
/// Longest target id.
pub const MAX_ID: usize = 128;

/// Why a label or an id is refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LabelError {
    /// Not `key=value`.
    #[error("label `{0}` is not key=value")]
    Malformed(String),
    /// The key is empty, too long, or has a character outside the charset.
    #[error("label key `{0}` must be 1-63 of A-Z a-z 0-9 . _ - starting with a letter or digit")]
    BadKey(String),
    /// The value is too long or has a character outside the charset.
    #[error("label value `{0}` must be at most 128 of A-Z a-z 0-9 . _ - : @ + /")]
    BadValue(String),
    /// The same key twice.
    #[error("label key `{0}` given twice")]
    Duplicate(String),
    /// More than [`MAX_LABELS`].
    #[error("more than {MAX_LABELS} labels")]
    TooMany,
    /// A target id outside the charset.
    #[error("target id `{0}` must be 1-128 of A-Z a-z 0-9 . _ - starting with a letter or digit")]
    BadId(String),
}

impl LabelError {
    /// Stable cause.
    pub fn cause(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "label_malformed",
            Self::BadKey(_) => "label_bad_key",
            Self::BadValue(_) => "label_bad_value",
            Self::Duplicate(_) => "label_duplicate",
            Self::TooMany => "too_many_labels",
            Self::BadId(_) => "bad_target_id",
        }
    }
}

/// Shows at most 40 characters of untrusted text (escaped) in an error.
fn shown(s: &str) -> String {
    s.chars().take(40).flat_map(char::escape_default).collect()
}

fn word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

fn word(s: &str, max: usize) -> bool {
    (1..=max).contains(&s.len()) && s.starts_with(|c: char| c.is_ascii_alphanumeric()) && s.chars().all(word_char)
}

/// Checks a label key.
pub fn check_key(k: &str) -> Result<(), LabelError> {
    if word(k, MAX_KEY) {
        Ok(())
    } else {
        Err(LabelError::BadKey(shown(k)))
    }
}

/// Checks a label value.
pub fn check_value(v: &str) -> Result<(), LabelError> {
    if v.len() <= MAX_VALUE && v.chars().all(|c| word_char(c) || matches!(c, ':' | '@' | '+' | '/')) {
        Ok(())
    } else {
        Err(LabelError::BadValue(shown(v)))
    }
}

/// Checks a target id.
pub fn check_id(id: &str) -> Result<(), LabelError> {
    if word(id, MAX_ID) {
        Ok(())
    } else {
        Err(LabelError::BadId(shown(id)))
    }
}

/// Checks a set of labels (read from a store: untrusted).
pub fn check(labels: &BTreeMap<String, String>) -> Result<(), LabelError> {
    if labels.len() > MAX_LABELS {
        return Err(LabelError::TooMany);
    }
    labels.iter().try_for_each(|(k, v)| check_key(k).and_then(|()| check_value(v)))
}

/// Parses repeated `--label key=value` arguments.
pub fn parse(args: &[String]) -> Result<BTreeMap<String, String>, LabelError> {
    let mut out = BTreeMap::new();
    for a in args {
        let (k, v) = a.split_once('=').ok_or_else(|| LabelError::Malformed(shown(a)))?;
        check_key(k)?;
        check_value(v)?;
        if out.insert(k.to_owned(), v.to_owned()).is_some() {
            return Err(LabelError::Duplicate(k.to_owned()));
        }
        if out.len() > MAX_LABELS {
            return Err(LabelError::TooMany);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn p(args: &[&str]) -> Result<BTreeMap<String, String>, &'static str> {
        parse(&args.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>()).map_err(|e| e.cause())
    }

    #[test]
    fn labels_parse_within_the_charset() {
        let l = p(&["host=a", "zone=eu-west.1", "rack=r:12", "empty=", "k8s.io_x-y=v@1+2/3"]).unwrap();
        assert_eq!(l["host"], "a");
        assert_eq!(l["empty"], "");
        assert_eq!(l.len(), 5);
        assert_eq!(p(&[]).unwrap().len(), 0);
        // Only the first `=` splits; a second one is outside the value charset.
        assert_eq!(p(&["a=b=c"]), Err("label_bad_value"));
    }

    #[test]
    fn bad_labels_are_refused_with_their_cause() {
        assert_eq!(p(&["host"]), Err("label_malformed"));
        assert_eq!(p(&["=a"]), Err("label_bad_key"));
        assert_eq!(p(&["-x=a"]), Err("label_bad_key"));
        assert_eq!(p(&["ho st=a"]), Err("label_bad_key"));
        assert_eq!(p(&["hôst=a"]), Err("label_bad_key"));
        assert_eq!(p(&[&format!("{}=a", "k".repeat(64))]), Err("label_bad_key"));
        assert_eq!(p(&["host=a b"]), Err("label_bad_value"));
        assert_eq!(p(&["host=a\n"]), Err("label_bad_value"));
        assert_eq!(p(&[&format!("k={}", "v".repeat(129))]), Err("label_bad_value"));
        assert_eq!(p(&["host=a", "zone=z", "host=b"]), Err("label_duplicate"));
        let many: Vec<String> = (0..=MAX_LABELS).map(|i| format!("k{i}=v")).collect();
        assert_eq!(parse(&many).unwrap_err().cause(), "too_many_labels");
        assert!(parse(&many[..MAX_LABELS]).is_ok());
        // A refused label is shown bounded and escaped.
        let e = parse(&[format!("{}\u{1b}[31m=v", "x".repeat(100))]).unwrap_err().to_string();
        assert!(e.len() < 200 && !e.contains('\u{1b}'), "{e}");
    }

    #[test]
    fn ids_and_label_sets_from_a_store() {
        assert!(check_id("vm0").is_ok() && check_id("host-a_1.2").is_ok());
        for bad in ["", "../x", "a/b", ".hidden", "a b", &"x".repeat(129)] {
            assert_eq!(check_id(bad).unwrap_err().cause(), "bad_target_id", "{bad}");
        }
        let mut l: BTreeMap<String, String> = [("host".to_owned(), "a".to_owned())].into();
        assert!(check(&l).is_ok());
        l.insert("bad key".into(), "v".into());
        assert_eq!(check(&l).unwrap_err().cause(), "label_bad_key");
    }
}
