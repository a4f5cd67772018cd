//! The customer map of a routing file read without the YAML parser, when it is written in the
//! plainest block form, as `kubectl get -o yaml` and most generators write it:
//!
//! ```yaml
//!   customerToPlacement:
//!     customer-00000042: cell-3
//! ```
//!
//! The YAML parser takes about 2 µs per customer; this scan takes a fraction of that, so a
//! 100k-customer file is not dominated by its parse. It reads only what it can read exactly as
//! the parser would: one `customerToPlacement:` line, then lines of one indent, each
//! `key: value` with both plain scalars that can only be strings (a letter, then letters,
//! digits, `-`, `_` and `.`; never a word YAML resolves to a boolean or null). Anything else
//! (comments, quotes, flow style, a duplicate, a tab, another layout) leaves the whole document
//! to the parser.
//!
//! The key must be outside any flow collection (no `{` or `[` left open on a line before it). The
//! block's lines are replaced by one line of the same layout, a sentinel the document does not
//! contain as both key and value, and the rest goes through the parser with every rule and
//! limit. Only when the parsed document's customer map is exactly that sentinel (so the lifted
//! lines were the spec's block map, not text inside a block scalar or another mapping) are the
//! lifted customers put in its place; otherwise, and on any error (whose line numbers must be
//! the document's own), the whole document is parsed again.

use crate::manifest::CustomerMap;

/// A customer block lifted out of a document.
pub(crate) struct Lifted {
    /// The document with the block replaced by the sentinel map.
    pub rest: String,
    sentinel: String,
    customers: CustomerMap,
}

impl Lifted {
    /// Puts the lifted customers in place of `parsed`, the customer map the parser read from
    /// [`Self::rest`], if it is exactly the sentinel map; false (and nothing changed) otherwise.
    pub fn restore(self, parsed: &mut CustomerMap) -> bool {
        let is_sentinel = parsed.len() == 1 && parsed.get(&self.sentinel) == Some(&self.sentinel);
        if is_sentinel {
            *parsed = self.customers;
        }
        is_sentinel
    }
}

const KEY: &str = "customerToPlacement:";

/// The customer block of `text`, if it has exactly one and it is in the plain form.
pub(crate) fn lift(text: &str) -> Option<Lifted> {
    if text.contains('\r') {
        return None;
    }
    let mut key_line = None;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let content = line.trim_end_matches('\n');
        let trimmed = content.trim_start_matches(' ');
        if trimmed.starts_with(KEY) {
            if key_line.is_some() || trimmed != KEY || trimmed.len() == content.len() {
                return None;
            }
            key_line = Some((offset, line.len(), content.len() - trimmed.len()));
        }
        offset += line.len();
    }
    let (key_start, key_len, key_indent) = key_line?;
    if !block_context(&text[..key_start]) {
        return None;
    }
    let block_start = key_start + key_len;
    let mut customers = CustomerMap::new();
    let mut indent = None;
    let mut end = block_start;
    for line in text[block_start..].split_inclusive('\n') {
        let content = line.trim_end_matches('\n');
        let trimmed = content.trim_start_matches(' ');
        let this_indent = content.len() - trimmed.len();
        if trimmed.is_empty() {
            // A blank line does not end a YAML block: left to the parser.
            return None;
        }
        if this_indent <= key_indent {
            break;
        }
        if *indent.get_or_insert(this_indent) != this_indent {
            return None;
        }
        let (key, value) = trimmed.split_once(": ")?;
        if !plain_string(key) || !plain_string(value) {
            return None;
        }
        if customers.insert(key.to_owned(), value.to_owned()).is_some() {
            return None;
        }
        end += line.len();
    }
    if customers.is_empty() {
        return None;
    }
    let mut sentinel = String::from("cellroute-lifted-customers");
    while text.contains(&sentinel) {
        sentinel.push('x');
    }
    // The block becomes its first line's layout with the sentinel as its one entry.
    let indent = " ".repeat(indent.unwrap_or_default());
    let mut rest = String::with_capacity(text.len() - (end - block_start) + 2 * sentinel.len() + 8);
    rest.push_str(&text[..block_start]);
    for part in [indent.as_str(), &sentinel, ": ", &sentinel, "\n", &text[end..]] {
        rest.push_str(part);
    }
    Some(Lifted {
        rest,
        sentinel,
        customers,
    })
}

/// Whether no flow collection (`{`, `[`) is open after `before`, line by line: a bracket
/// closed on a later line, or closed and another opened on one line, is taken as open (so is one
/// inside quotes: the parser reads that document).
fn block_context(before: &str) -> bool {
    before.split('\n').all(|line| {
        let mut depth = 0i32;
        for b in line.bytes() {
            match b {
                b'{' | b'[' => depth += 1,
                b'}' | b']' => depth -= 1,
                _ => {}
            }
            if depth < 0 {
                return false;
            }
        }
        depth == 0
    })
}

/// A plain scalar that YAML (1.1 or 1.2) can only read as this very string.
fn plain_string(s: &str) -> bool {
    let bytes = s.as_bytes();
    let Some(first) = bytes.first() else {
        return false;
    };
    first.is_ascii_alphabetic()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !is_keyword(s)
}

/// Words some YAML schema resolves to a boolean or null whatever their case.
fn is_keyword(s: &str) -> bool {
    const WORDS: [&str; 9] = ["true", "false", "null", "yes", "no", "on", "off", "y", "n"];
    s.len() <= 5 && WORDS.iter().any(|w| w.eq_ignore_ascii_case(s))
}
