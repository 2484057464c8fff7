//! A unified diff cut into its files: each file's part (its `diff`,
//! `---`/`+++` header and hunks), so that one file of a multi-file fix can
//! be built, cached and reported alone, and a partial build can apply only
//! the files it keeps. Hunks are walked by their line counts, so a removed
//! line that reads `-- x` is not taken for a new file's header.

/// One file's part of a diff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilePart {
    /// The file's path without the `b/` prefix (`-p1`).
    pub file: String,
    /// Its text: header and hunks, each line ending in `\n`.
    pub text: String,
}

/// `(old, new)` line counts of a `@@ -a,b +c,d @@` header.
fn hunk_counts(line: &str) -> Option<(usize, usize)> {
    let rest = line.strip_prefix("@@ -")?;
    let (old, rest) = rest.split_once(" +")?;
    let (new, _) = rest.split_once(" @@")?;
    let count = |r: &str| -> Option<usize> {
        match r.split_once(',') {
            Some((_, n)) => n.parse().ok(),
            None => Some(1),
        }
    };
    Some((count(old)?, count(new)?))
}

fn path_of(plus: &str) -> Option<String> {
    let p = plus.strip_prefix("+++ ")?;
    let p = p.split('\t').next().unwrap_or(p).trim();
    let (_, rest) = p.split_once('/')?;
    (!rest.is_empty()).then(|| rest.to_owned())
}

/// The diff's files in order (text outside any file's part is dropped).
pub fn per_file(diff: &str) -> Vec<FilePart> {
    let lines: Vec<&str> = diff.split_inclusive('\n').collect();
    let mut out: Vec<FilePart> = Vec::new();
    let mut header = String::new();
    let mut i = 0;
    while i < lines.len() {
        let l = lines[i];
        if l.starts_with("--- ") && lines.get(i + 1).is_some_and(|n| n.starts_with("+++ ")) {
            let plus = lines[i + 1].trim_end_matches('\n');
            let file = path_of(plus).unwrap_or_default();
            let mut text = std::mem::take(&mut header);
            text.push_str(l);
            text.push_str(lines[i + 1]);
            i += 2;
            while let Some((mut old, mut new)) = lines.get(i).and_then(|h| hunk_counts(h)) {
                text.push_str(lines[i]);
                i += 1;
                while (old > 0 || new > 0) && i < lines.len() {
                    let b = lines[i].as_bytes().first().copied().unwrap_or(b' ');
                    match b {
                        b'-' => old = old.saturating_sub(1),
                        b'+' => new = new.saturating_sub(1),
                        b'\\' => {}
                        _ => {
                            old = old.saturating_sub(1);
                            new = new.saturating_sub(1);
                        }
                    }
                    text.push_str(lines[i]);
                    i += 1;
                }
                // "\ No newline at end of file" after the last line.
                if lines.get(i).is_some_and(|n| n.starts_with('\\')) {
                    text.push_str(lines[i]);
                    i += 1;
                }
            }
            if !text.ends_with('\n') {
                text.push('\n');
            }
            if file.is_empty() || file == "dev/null" {
                continue;
            }
            out.push(FilePart { file, text });
        } else {
            // `diff -urN a/x b/x` lines and the like belong to the next file.
            if l.starts_with("diff ") || l.starts_with("Only in ") || l.starts_with("index ") {
                header.push_str(l);
            } else {
                header.clear();
            }
            i += 1;
        }
    }
    out
}

/// The parts of `files` (in the diff's order), joined into one diff.
pub fn only(parts: &[FilePart], files: &[String]) -> String {
    parts.iter().filter(|p| files.contains(&p.file)).map(|p| p.text.as_str()).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const TWO: &str = "preamble\n\
diff -urN src/fs/a.c src-to/fs/a.c\n\
--- a/fs/a.c\t2026-01-01\n\
+++ b/fs/a.c\t2026-01-02\n\
@@ -1,3 +1,3 @@\n\
 int a;\n\
--- removed line that looks like a header\n\
+++ added line that looks like a header\n\
 int b;\n\
diff -urN src/include/x.h src-to/include/x.h\n\
--- a/include/x.h\n\
+++ b/include/x.h\n\
@@ -1 +1,2 @@\n\
 #define X 1\n\
+#define Y 2\n";

    #[test]
    fn files_are_cut_by_their_hunks_not_by_lines_that_look_like_headers() {
        let p = per_file(TWO);
        assert_eq!(p.iter().map(|f| f.file.as_str()).collect::<Vec<_>>(), ["fs/a.c", "include/x.h"]);
        assert!(p[0].text.starts_with("diff -urN src/fs/a.c"), "{}", p[0].text);
        assert!(p[0].text.contains("+++ added line"), "{}", p[0].text);
        assert!(p[1].text.ends_with("+#define Y 2\n"), "{}", p[1].text);
        assert!(!p[0].text.contains("preamble"));
        let joined = only(&p, &["include/x.h".to_owned()]);
        assert_eq!(joined, p[1].text);
        assert_eq!(per_file(&only(&p, &["fs/a.c".to_owned(), "include/x.h".to_owned()])), p);
    }

    #[test]
    fn hunk_headers_without_counts_mean_one_line() {
        assert_eq!(hunk_counts("@@ -5 +5,2 @@ fn x"), Some((1, 2)));
        assert_eq!(hunk_counts("@@ -0,0 +1,7 @@"), Some((0, 7)));
        assert_eq!(hunk_counts("not a hunk"), None);
    }
}
