//! LVM2's metadata text format (`vgcfgbackup` writes the same text as the metadata area
//! holds): `key = value` pairs and `name { ... }` sections; values are integers, quoted
//! strings and `[ ... ]` lists of them; `#` starts a comment.
//!
//! The text comes from the disk, so the parser bounds nesting (sections and lists) and never
//! panics; its length is bounded by the caller.

use super::super::FsError;

/// Sections and lists nested deeper than this are refused (LVM writes four levels).
const MAX_DEPTH: usize = 32;
/// Most items and list elements one text may hold (a VG's metadata has a few thousand):
/// bounds the parsed tree's memory whatever the text.
const MAX_VALUES: usize = 1 << 20;

/// One value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// An integer.
    Int(i64),
    /// A string.
    Str(String),
    /// A list.
    List(Vec<Value>),
    /// A section's items, in order.
    Section(Vec<(String, Value)>),
}

impl Value {
    /// The item `key` of a section.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Self::Section(items) => items.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The items of a section (none for other values).
    pub fn items(&self) -> &[(String, Value)] {
        match self {
            Self::Section(items) => items,
            _ => &[],
        }
    }

    /// An integer.
    pub fn int(&self) -> Option<i64> {
        match self {
            Self::Int(n) => Some(*n),
            _ => None,
        }
    }

    /// A string.
    pub fn str(&self) -> Option<&str> {
        match self {
            Self::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// Parses a whole metadata text into its top-level section.
pub fn parse(text: &[u8]) -> Result<Value, FsError> {
    let mut p = Parser {
        text,
        at: 0,
        values: 0,
    };
    let items = p.items(0, false)?;
    Ok(Value::Section(items))
}

struct Parser<'a> {
    text: &'a [u8],
    at: usize,
    /// Items and list elements parsed so far.
    values: usize,
}

impl Parser<'_> {
    fn count(&mut self) -> Result<(), FsError> {
        self.values += 1;
        if self.values > MAX_VALUES {
            return Err(self.error("more than a million items"));
        }
        Ok(())
    }

    fn error(&self, what: &str) -> FsError {
        FsError::corrupt(format!("LVM2 metadata text, byte {}: {what}", self.at))
    }

    /// Skips whitespace and comments; returns the next byte, if any.
    fn peek(&mut self) -> Option<u8> {
        loop {
            match self.text.get(self.at) {
                Some(b) if b.is_ascii_whitespace() || *b == 0 => self.at += 1,
                Some(b'#') => {
                    while self.text.get(self.at).is_some_and(|b| *b != b'\n') {
                        self.at += 1;
                    }
                }
                other => return other.copied(),
            }
        }
    }

    /// Items until `}` (inside a section) or the end (at the top).
    fn items(&mut self, depth: usize, nested: bool) -> Result<Vec<(String, Value)>, FsError> {
        if depth > MAX_DEPTH {
            return Err(self.error("sections nested too deep"));
        }
        let mut items = Vec::new();
        loop {
            match self.peek() {
                None if nested => return Err(self.error("a section is not closed")),
                None => return Ok(items),
                Some(b'}') if nested => {
                    self.at += 1;
                    return Ok(items);
                }
                Some(_) => {}
            }
            self.count()?;
            let key = self.identifier()?;
            match self.peek() {
                Some(b'=') => {
                    self.at += 1;
                    let value = self.value(depth)?;
                    items.push((key, value));
                }
                Some(b'{') => {
                    self.at += 1;
                    let inner = self.items(depth + 1, true)?;
                    items.push((key, Value::Section(inner)));
                }
                _ => return Err(self.error(&format!("`=` or `{{` expected after {key:?}"))),
            }
        }
    }

    fn identifier(&mut self) -> Result<String, FsError> {
        let start = self.at;
        while self
            .text
            .get(self.at)
            .is_some_and(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'+'))
        {
            self.at += 1;
        }
        if self.at == start {
            return Err(self.error("a name expected"));
        }
        Ok(String::from_utf8_lossy(&self.text[start..self.at]).into_owned())
    }

    fn value(&mut self, depth: usize) -> Result<Value, FsError> {
        match self.peek() {
            Some(b'"') => self.string(),
            Some(b'[') => {
                if depth > MAX_DEPTH {
                    return Err(self.error("lists nested too deep"));
                }
                self.at += 1;
                let mut list = Vec::new();
                loop {
                    match self.peek() {
                        Some(b']') => {
                            self.at += 1;
                            return Ok(Value::List(list));
                        }
                        Some(b',') if !list.is_empty() => self.at += 1,
                        None => return Err(self.error("a list is not closed")),
                        _ => {
                            self.count()?;
                            list.push(self.value(depth + 1)?);
                        }
                    }
                }
            }
            Some(b) if b == b'-' || b.is_ascii_digit() => self.number(),
            _ => Err(self.error("a value expected")),
        }
    }

    fn string(&mut self) -> Result<Value, FsError> {
        self.at += 1; // the opening quote
        let mut out = Vec::new();
        loop {
            match self.text.get(self.at) {
                None => return Err(self.error("a string is not closed")),
                Some(b'"') => {
                    self.at += 1;
                    return Ok(Value::Str(String::from_utf8_lossy(&out).into_owned()));
                }
                Some(b'\\') => {
                    let Some(escaped) = self.text.get(self.at + 1) else {
                        return Err(self.error("a string is not closed"));
                    };
                    out.push(*escaped);
                    self.at += 2;
                }
                Some(b) => {
                    out.push(*b);
                    self.at += 1;
                }
            }
        }
    }

    fn number(&mut self) -> Result<Value, FsError> {
        let start = self.at;
        if self.text.get(self.at) == Some(&b'-') {
            self.at += 1;
        }
        while self.text.get(self.at).is_some_and(u8::is_ascii_digit) {
            self.at += 1;
        }
        // Floats (never in VG metadata, but legal in LVM's text) are read as their integer part.
        while self
            .text
            .get(self.at)
            .is_some_and(|b| b.is_ascii_digit() || *b == b'.')
        {
            self.at += 1;
        }
        let digits = std::str::from_utf8(&self.text[start..self.at]).unwrap_or_default();
        let integer = digits.split('.').next().unwrap_or_default();
        integer
            .parse()
            .map(Value::Int)
            .map_err(|_| self.error(&format!("the number {digits:?} does not fit")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vgcfgbackup_shaped_text_parses_and_bad_text_is_refused() {
        let text = br#"# comment
contents = "Text Format Volume Group"
vg0 {
	id = "S8wI36-i40m"
	extent_size = 8192		# 4 Megabytes
	status = ["RESIZEABLE", "READ"]
	flags = []
	physical_volumes {
		pv0 { pe_start = 2048 }
	}
	lv { segment1 { stripes = [
		"pv0", 5
	] } }
}
"#;
        let top = parse(text).unwrap();
        let vg = top.get("vg0").unwrap();
        assert_eq!(vg.get("extent_size").and_then(Value::int), Some(8192));
        assert_eq!(vg.get("flags"), Some(&Value::List(Vec::new())));
        let stripes = vg
            .get("lv")
            .and_then(|l| l.get("segment1"))
            .and_then(|s| s.get("stripes"));
        assert_eq!(
            stripes,
            Some(&Value::List(vec![Value::Str("pv0".into()), Value::Int(5)]))
        );
        for bad in [
            &b"vg {"[..],
            b"a = ",
            b"a = \"x",
            b"a = [1,",
            b"= 1",
            b"a = 99999999999999999999",
        ] {
            assert!(
                matches!(parse(bad), Err(FsError::Corrupt(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let deep = "a {".repeat(100);
        assert!(parse(deep.as_bytes()).is_err());
        let deep_list = format!("a = {}", "[".repeat(100_000));
        assert!(parse(deep_list.as_bytes()).is_err());
        // The tree's memory is bounded whatever the text: a list of 2^20 + 1 elements.
        let long = format!("a = [{}0]", "0,".repeat(MAX_VALUES));
        assert!(parse(long.as_bytes()).is_err());
        let fits = format!("a = [{}0]", "0,".repeat(MAX_VALUES - 2));
        assert!(parse(fits.as_bytes()).is_ok());
    }
}
