//! The target description (`target.xml` and the files it includes): which
//! register has which number and size, found by name.
//!
//! A deliberately small scanner for the subset of XML that gdbstubs emit:
//! `<reg …/>` elements with `name`, `bitsize` and optional `regnum`, and
//! `<xi:include href="…"/>`.

/// One register of the target description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegDesc {
    /// Name as in the description (`rax`, `cr3`, …).
    pub name: String,
    /// Register number for `p`/`P` and the position in the `g` packet.
    pub regnum: u32,
    /// Size in bits.
    pub bitsize: u32,
}

/// All registers, in register-number order.
#[derive(Debug, Clone, Default)]
pub struct TargetDesc {
    /// Registers sorted by `regnum`.
    pub regs: Vec<RegDesc>,
}

impl TargetDesc {
    /// Look a register up by name (case-insensitive).
    pub fn find(&self, name: &str) -> Option<&RegDesc> {
        self.regs.iter().find(|r| r.name.eq_ignore_ascii_case(name))
    }

    /// Byte offset of a register inside the `g` packet's data, assuming all
    /// lower-numbered registers precede it with no gaps.
    pub fn g_offset(&self, reg: &RegDesc) -> Option<usize> {
        let mut off = 0usize;
        for (expect, r) in (self.regs.first()?.regnum..).zip(self.regs.iter()) {
            if r.regnum != expect {
                return None; // a gap: the g layout is unknown past it
            }
            if r.regnum == reg.regnum {
                return Some(off);
            }
            off += (r.bitsize as usize).div_ceil(8);
        }
        None
    }
}

/// Pull the value of `attr="…"` out of a tag's text.
fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let mut rest = tag;
    while let Some(i) = rest.find(name) {
        let before_ok = i == 0 || rest.as_bytes()[i - 1].is_ascii_whitespace();
        let after = rest[i + name.len()..].trim_start();
        if before_ok {
            if let Some(v) = after.strip_prefix('=') {
                let v = v.trim_start();
                let q = v.chars().next()?;
                if q == '"' || q == '\'' {
                    let end = v[1..].find(q)?;
                    return Some(&v[1..1 + end]);
                }
            }
        }
        rest = &rest[i + name.len()..];
    }
    None
}

/// What one XML document contributes, in document order.
#[derive(Debug, PartialEq, Eq)]
pub enum Item {
    /// An `<xi:include href=…>`.
    Include(String),
    /// A `<reg>` with its explicit number, if any.
    Reg {
        /// Name.
        name: String,
        /// Size in bits.
        bitsize: u32,
        /// Explicit `regnum`.
        regnum: Option<u32>,
    },
}

/// Scan one XML document for includes and registers.
pub fn scan(xml: &str) -> Vec<Item> {
    let mut items = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find('<') {
        rest = &rest[i + 1..];
        if let Some(c) = rest.strip_prefix("!--") {
            // Comments may hold commented-out registers (QEMU's x86-64 XML does).
            match c.find("-->") {
                Some(e) => rest = &c[e + 3..],
                None => break,
            }
            continue;
        }
        let Some(end) = rest.find('>') else { break };
        let tag = &rest[..end];
        rest = &rest[end + 1..];
        if let Some(t) = tag.strip_prefix("xi:include") {
            if let Some(h) = attr(t, "href") {
                items.push(Item::Include(h.to_string()));
            }
        } else if let Some(t) = tag.strip_prefix("reg") {
            if !t.starts_with(|c: char| c.is_ascii_whitespace()) {
                continue;
            }
            let (Some(name), Some(bits)) = (attr(t, "name"), attr(t, "bitsize")) else { continue };
            let Ok(bitsize) = bits.parse() else { continue };
            let regnum = attr(t, "regnum").and_then(|v| v.parse().ok());
            items.push(Item::Reg { name: name.to_string(), bitsize, regnum });
        }
    }
    items
}

/// Number registers over a sequence of items (includes already expanded):
/// each register takes its `regnum` or one more than the previous.
pub fn number(items: impl IntoIterator<Item = Item>) -> TargetDesc {
    let mut next = 0u32;
    let mut regs = Vec::new();
    for it in items {
        if let Item::Reg { name, bitsize, regnum } = it {
            let n = regnum.unwrap_or(next);
            next = n + 1;
            regs.push(RegDesc { name, regnum: n, bitsize });
        }
    }
    regs.sort_by_key(|r| r.regnum);
    TargetDesc { regs }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn scan_and_number() {
        let top = r#"<?xml version="1.0"?><!DOCTYPE target SYSTEM "gdb-target.dtd">
            <target><architecture>i386:x86-64</architecture>
            <xi:include href="i386-64bit.xml"/></target>"#;
        assert_eq!(scan(top), vec![Item::Include("i386-64bit.xml".into())]);
        let regs = r#"<feature name="org.gnu.gdb.i386.core">
            <reg name="rax" bitsize="64" type="int64"/>
            <reg name="rbx" bitsize="64" type="int64"/>
            <reg name="eflags" bitsize="32" type="i386_eflags"/>
            <!-- <reg name="cs_base" bitsize="64"/>
            <reg name="ss_base" bitsize="64"/-->
            <reg name="cr3" bitsize="64" regnum="40"/>
            <reg name="efer" bitsize="64"/></feature>"#;
        let td = number(scan(regs));
        assert_eq!(td.find("rbx").unwrap().regnum, 1);
        assert_eq!(td.find("CR3").unwrap().regnum, 40);
        assert_eq!(td.find("efer").unwrap().regnum, 41);
        assert_eq!(td.g_offset(td.find("eflags").unwrap()), Some(16));
        assert_eq!(td.g_offset(td.find("cr3").unwrap()), None);
    }
}
