//! A small parser for the kernel's embedded BTF (`__start_BTF`..`__stop_BTF`,
//! raw blob with magic 0xeB9F): types, struct members by dotted path
//! (through nested and anonymous structs/unions), sizes and type names.

use std::collections::HashMap;

use thiserror::Error;

/// Deepest chain of arrays, pointers and qualifiers followed (a real
/// kernel's deepest is a handful; a hostile blob may make a type its own
/// element).
pub const MAX_TYPE_DEPTH: u32 = 32;
/// Most struct/union records one member lookup visits through anonymous
/// members (anonymous members pointing at each other could otherwise fan
/// out exponentially within the depth bound).
pub const MAX_SEARCH_STEPS: u32 = 4096;
/// Most members [`Btf::layout`] lists (the largest kernel structs have a
/// few hundred, flattened).
pub const MAX_LAYOUT_MEMBERS: usize = 16384;

/// Why a BTF blob could not be parsed.
#[derive(Debug, Error)]
pub enum BtfError {
    /// Wrong magic, version or header.
    #[error("not a BTF blob: {0}")]
    Header(String),
    /// A type record runs past the type section or has an unknown kind.
    #[error("malformed BTF type #{id}: {why}")]
    Type {
        /// Type id.
        id: u32,
        /// What is wrong.
        why: String,
    },
    /// A search gave up at one of its bounds (anonymous members nested
    /// deeper than any real kernel's, or fanning out): the answer is not
    /// "absent", it is unknown.
    #[error("BTF search for `{path}` stopped at its bound ({bound})")]
    Bound {
        /// What was looked for.
        path: String,
        /// Which bound (`depth 16`, `4096 records`).
        bound: &'static str,
    },
}

impl BtfError {
    /// Stable machine-readable cause name.
    pub fn cause(&self) -> &'static str {
        match self {
            Self::Header(_) => "btf_header",
            Self::Type { .. } => "btf_type",
            Self::Bound { .. } => "btf_bound",
        }
    }
}

/// BTF kinds (BTF_KIND_*).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// 1
    Int,
    /// 2
    Ptr,
    /// 3
    Array,
    /// 4
    Struct,
    /// 5
    Union,
    /// 6
    Enum,
    /// 7
    Fwd,
    /// 8
    Typedef,
    /// 9
    Volatile,
    /// 10
    Const,
    /// 11
    Restrict,
    /// 12
    Func,
    /// 13
    FuncProto,
    /// 14
    Var,
    /// 15
    Datasec,
    /// 16
    Float,
    /// 17
    DeclTag,
    /// 18
    TypeTag,
    /// 19
    Enum64,
}

/// A struct/union member.
#[derive(Debug, Clone)]
pub struct Member {
    /// Name offset in the string section (0 = anonymous).
    pub name_off: u32,
    /// Member type id.
    pub type_id: u32,
    /// Offset in bits from the start of the containing type.
    pub bit_offset: u32,
    /// Bitfield width (0 when not a bitfield).
    pub bitfield_size: u32,
}

/// One type record.
#[derive(Debug, Clone)]
pub struct Type {
    /// Name offset.
    pub name_off: u32,
    /// Kind.
    pub kind: Kind,
    /// Size (int, struct, union, enum, float, datasec) or referenced type id.
    pub size_or_type: u32,
    /// Members of structs and unions.
    pub members: Vec<Member>,
    /// Arrays: (element type, number of elements).
    pub array: Option<(u32, u32)>,
}

/// A member found by path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    /// Byte offset from the start of the outer struct.
    pub offset: u64,
    /// Bit offset (for bitfields).
    pub bit_offset: u64,
    /// Member type id.
    pub type_id: u32,
    /// Size in bytes of the member's type, when sized.
    pub size: Option<u64>,
}

/// Parsed BTF.
#[derive(Debug, Clone)]
pub struct Btf {
    types: Vec<Type>, // index = id - 1
    strings: Vec<u8>,
    by_name: HashMap<String, Vec<u32>>,
}

fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
}

impl Btf {
    /// Parse a raw BTF blob.
    pub fn parse(blob: &[u8]) -> Result<Self, BtfError> {
        let h = |why: &str| BtfError::Header(why.to_string());
        if blob.get(0..2) != Some(&[0x9f, 0xeb]) {
            return Err(h("bad magic"));
        }
        if blob.get(2) != Some(&1) {
            return Err(h("unsupported version"));
        }
        let hdr_len = u32_at(blob, 4).ok_or_else(|| h("short header"))? as usize;
        let field = |o| u32_at(blob, o).map(|v| v as usize).ok_or_else(|| h("short header"));
        let (type_off, type_len, str_off, str_len) = (field(8)?, field(12)?, field(16)?, field(20)?);
        let types_raw = blob.get(hdr_len + type_off..hdr_len + type_off + type_len).ok_or_else(|| h("type section outside blob"))?;
        let strings = blob.get(hdr_len + str_off..hdr_len + str_off + str_len).ok_or_else(|| h("string section outside blob"))?.to_vec();
        let mut types = Vec::new();
        let mut o = 0usize;
        while o < types_raw.len() {
            let id = types.len() as u32 + 1;
            let terr = |why: &str| BtfError::Type { id, why: why.to_string() };
            let name_off = u32_at(types_raw, o).ok_or_else(|| terr("truncated"))?;
            let info = u32_at(types_raw, o + 4).ok_or_else(|| terr("truncated"))?;
            let size_or_type = u32_at(types_raw, o + 8).ok_or_else(|| terr("truncated"))?;
            o += 12;
            let vlen = (info & 0xffff) as usize;
            let kind_flag = info >> 31 != 0;
            let kind = match (info >> 24) & 0x1f {
                1 => Kind::Int,
                2 => Kind::Ptr,
                3 => Kind::Array,
                4 => Kind::Struct,
                5 => Kind::Union,
                6 => Kind::Enum,
                7 => Kind::Fwd,
                8 => Kind::Typedef,
                9 => Kind::Volatile,
                10 => Kind::Const,
                11 => Kind::Restrict,
                12 => Kind::Func,
                13 => Kind::FuncProto,
                14 => Kind::Var,
                15 => Kind::Datasec,
                16 => Kind::Float,
                17 => Kind::DeclTag,
                18 => Kind::TypeTag,
                19 => Kind::Enum64,
                k => return Err(terr(&format!("unknown kind {k}"))),
            };
            let mut t = Type { name_off, kind, size_or_type, members: Vec::new(), array: None };
            let extra = match kind {
                Kind::Int | Kind::Var | Kind::DeclTag => 4,
                Kind::Array => {
                    let e = u32_at(types_raw, o).ok_or_else(|| terr("truncated array"))?;
                    let n = u32_at(types_raw, o + 8).ok_or_else(|| terr("truncated array"))?;
                    t.array = Some((e, n));
                    12
                }
                Kind::Struct | Kind::Union => {
                    for i in 0..vlen {
                        let m = o + 12 * i;
                        let (Some(n), Some(ty), Some(off)) = (u32_at(types_raw, m), u32_at(types_raw, m + 4), u32_at(types_raw, m + 8)) else {
                            return Err(terr("truncated members"));
                        };
                        let (bit_offset, bitfield_size) = if kind_flag { (off & 0xff_ffff, off >> 24) } else { (off, 0) };
                        t.members.push(Member { name_off: n, type_id: ty, bit_offset, bitfield_size });
                    }
                    12 * vlen
                }
                Kind::Enum | Kind::FuncProto => 8 * vlen,
                Kind::Datasec | Kind::Enum64 => 12 * vlen,
                _ => 0,
            };
            o += extra;
            if o > types_raw.len() {
                return Err(terr("runs past the type section"));
            }
            types.push(t);
        }
        let mut btf = Self { types, strings, by_name: HashMap::new() };
        let mut by_name: HashMap<String, Vec<u32>> = HashMap::new();
        for (i, t) in btf.types.iter().enumerate() {
            if t.name_off != 0 {
                by_name.entry(btf.str_at(t.name_off).to_string()).or_default().push(i as u32 + 1);
            }
        }
        btf.by_name = by_name;
        Ok(btf)
    }

    /// Number of types.
    pub fn len(&self) -> usize {
        self.types.len()
    }

    /// True when there are no types.
    pub fn is_empty(&self) -> bool {
        self.types.is_empty()
    }

    /// A string from the string section.
    pub fn str_at(&self, off: u32) -> &str {
        let s = self.strings.get(off as usize..).unwrap_or(&[]);
        let end = s.iter().position(|&b| b == 0).unwrap_or(s.len());
        std::str::from_utf8(&s[..end]).unwrap_or("?")
    }

    /// A type by id (1-based; 0 is void).
    pub fn get(&self, id: u32) -> Option<&Type> {
        self.types.get((id as usize).checked_sub(1)?)
    }

    /// The name of a type (empty for anonymous ones).
    pub fn name(&self, id: u32) -> &str {
        self.get(id).map(|t| self.str_at(t.name_off)).unwrap_or("")
    }

    /// The complete struct (or union) of this name.
    pub fn find_struct(&self, name: &str) -> Option<u32> {
        self.by_name.get(name)?.iter().copied().find(|&id| {
            self.get(id).is_some_and(|t| matches!(t.kind, Kind::Struct | Kind::Union))
        })
    }

    /// Follow typedefs and qualifiers.
    pub fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..64 {
            match self.get(id) {
                Some(t) if matches!(t.kind, Kind::Typedef | Kind::Volatile | Kind::Const | Kind::Restrict | Kind::TypeTag) => {
                    id = t.size_or_type
                }
                _ => break,
            }
        }
        id
    }

    /// Size in bytes of a type (`None` for unsized types, for arrays whose
    /// size overflows, and for chains deeper than [`MAX_TYPE_DEPTH`]: an
    /// array of itself in a hostile blob).
    pub fn size_of(&self, id: u32) -> Option<u64> {
        self.size_of_at(id, 0)
    }

    fn size_of_at(&self, id: u32, depth: u32) -> Option<u64> {
        if depth > MAX_TYPE_DEPTH {
            return None;
        }
        let id = self.resolve(id);
        let t = self.get(id)?;
        match t.kind {
            Kind::Int | Kind::Struct | Kind::Union | Kind::Enum | Kind::Enum64 | Kind::Float | Kind::Datasec => Some(u64::from(t.size_or_type)),
            Kind::Ptr => Some(8),
            Kind::Array => {
                let (e, n) = t.array?;
                self.size_of_at(e, depth + 1)?.checked_mul(u64::from(n))
            }
            _ => None,
        }
    }

    /// A C-like name for a type: `struct list_head`, `char[16]`, `void *`.
    pub fn type_name(&self, id: u32) -> String {
        self.type_name_at(id, 0)
    }

    fn type_name_at(&self, id: u32, depth: u32) -> String {
        if id == 0 {
            return "void".into();
        }
        if depth > MAX_TYPE_DEPTH {
            return "<type chain too deep>".into();
        }
        let Some(t) = self.get(id) else { return format!("<bad type {id}>") };
        let n = self.str_at(t.name_off);
        let anon = |what: &str| if n.is_empty() { format!("{what} <anon>") } else { format!("{what} {n}") };
        let inner = |id: u32| self.type_name_at(id, depth + 1);
        match t.kind {
            Kind::Struct => anon("struct"),
            Kind::Union => anon("union"),
            Kind::Enum | Kind::Enum64 => anon("enum"),
            Kind::Fwd => format!("struct {n}"),
            Kind::Ptr => format!("{} *", inner(t.size_or_type)),
            Kind::Array => match t.array {
                Some((e, c)) => format!("{}[{c}]", inner(e)),
                None => "?[]".into(),
            },
            Kind::Const => format!("const {}", inner(t.size_or_type)),
            Kind::Volatile => format!("volatile {}", inner(t.size_or_type)),
            Kind::FuncProto => "fn(...)".into(),
            _ => n.to_string(),
        }
    }

    /// Find a member by dotted path (`thread.sp`, `thread_info.cpu`),
    /// looking through anonymous structs and unions at every step. `None`
    /// also when a search bound was hit: [`Btf::member_checked`] tells.
    pub fn member(&self, struct_id: u32, path: &str) -> Option<MemberInfo> {
        self.member_checked(struct_id, path).ok().flatten()
    }

    /// [`Btf::member`], with a search that stopped at a bound an error
    /// ([`BtfError::Bound`], `btf_bound`) rather than "no such member".
    pub fn member_checked(&self, struct_id: u32, path: &str) -> Result<Option<MemberInfo>, BtfError> {
        let mut cur = self.resolve(struct_id);
        let mut bits = 0u64;
        let mut last = None;
        for part in path.split('.') {
            let mut steps = 0u32;
            let found = self.find_direct(cur, part, 0, &mut steps).map_err(|bound| BtfError::Bound { path: path.to_owned(), bound })?;
            let Some((b, ty)) = found else { return Ok(None) };
            let Some(sum) = bits.checked_add(b) else { return Ok(None) };
            bits = sum;
            last = Some(ty);
            cur = self.resolve(ty);
        }
        let Some(ty) = last else { return Ok(None) };
        Ok(Some(MemberInfo { offset: bits / 8, bit_offset: bits, type_id: ty, size: self.size_of(ty) }))
    }

    /// `Err(bound)` when the search stopped at a bound.
    fn find_direct(&self, id: u32, name: &str, depth: u32, steps: &mut u32) -> Result<Option<(u64, u32)>, &'static str> {
        *steps += 1;
        if depth > 16 {
            return Err("depth 16");
        }
        if *steps > MAX_SEARCH_STEPS {
            return Err("4096 records");
        }
        let Some(t) = self.get(self.resolve(id)) else { return Ok(None) };
        for m in &t.members {
            if m.name_off != 0 && self.str_at(m.name_off) == name {
                return Ok(Some((u64::from(m.bit_offset), m.type_id)));
            }
        }
        for m in t.members.iter().filter(|m| m.name_off == 0) {
            if let Some((b, ty)) = self.find_direct(m.type_id, name, depth + 1, steps)? {
                return Ok(Some((u64::from(m.bit_offset) + b, ty)));
            }
        }
        Ok(None)
    }

    /// The members of a struct, anonymous ones flattened:
    /// `(name, byte offset, size, type name)`.
    pub fn layout(&self, struct_id: u32) -> Vec<(String, u64, Option<u64>, String)> {
        let mut out = Vec::new();
        let mut steps = 0u32;
        self.layout_into(self.resolve(struct_id), 0, &mut out, 0, &mut steps);
        out
    }

    /// True when a layout listing is cut at its bound.
    fn layout_full(out: &[(String, u64, Option<u64>, String)]) -> bool {
        out.len() >= MAX_LAYOUT_MEMBERS
    }

    fn layout_into(&self, id: u32, base_bits: u64, out: &mut Vec<(String, u64, Option<u64>, String)>, depth: u32, steps: &mut u32) {
        let Some(t) = self.get(id) else { return };
        *steps += 1;
        if depth > 16 || *steps > MAX_SEARCH_STEPS {
            return;
        }
        for m in &t.members {
            if Self::layout_full(out) {
                return;
            }
            let bits = base_bits + u64::from(m.bit_offset);
            if m.name_off == 0 {
                self.layout_into(self.resolve(m.type_id), bits, out, depth + 1, steps);
            } else {
                let mut ty = self.type_name(m.type_id);
                if m.bitfield_size != 0 {
                    ty = format!("{ty} : {}", m.bitfield_size);
                }
                out.push((self.str_at(m.name_off).to_string(), bits / 8, self.size_of(m.type_id), ty));
            }
        }
    }
}
