//! Finds the value at a JSON pointer in a body without building the document.
//!
//! One pass over the body with a small validating tokenizer: the body must
//! be UTF-8 (checked first with SIMD, `simdutf8`) and JSON as a whole, or
//! nothing is found. Strings, which make up most of a Messages body, are
//! skipped eight bytes at a time while short, then with `memchr` from one
//! quote or backslash to the next, checked for control characters in blocks
//! that the compiler vectorizes; containers off the pointer are skipped in
//! a loop rather than by recursion.
//! Against `serde_json` with `IgnoredAny`, which this replaced: about 61
//! against 110 µs per MiB of long strings, 624 against 669 µs per MiB of
//! small objects (`benches/RESULTS.md`). A differential test keeps the two in
//! agreement. Strings, numbers and booleans are returned as text
//! (numbers as `serde_json` prints them); objects, arrays and null count as
//! absent. Nesting deeper than `serde_json`'s own limit (127 levels) is refused.

pub mod stream;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use std::fmt;

/// Strings are looked at a word at a time this far before `memchr` takes over.
const SHORT: usize = 64;

/// How deep objects and arrays may nest, as in `serde_json` (which fails
/// the 128th level).
const MAX_DEPTH: usize = 127;

/// The value at `pointer` (unescaped tokens) in `body`, if `body` is JSON and
/// the value is a string, number or boolean.
pub fn find(body: &[u8], pointer: &[String]) -> Option<String> {
    simdutf8::basic::from_utf8(body).ok()?;
    let mut scan = Scanner { b: body, i: 0 };
    let found = scan.value(Some(pointer), 0).ok()?;
    scan.ws();
    (scan.i == body.len()).then_some(found).flatten()
}

/// The body is not valid JSON.
struct Invalid;

type Step<T> = Result<T, Invalid>;

struct Scanner<'b> {
    b: &'b [u8],
    i: usize,
}

impl<'b> Scanner<'b> {
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    fn peek(&self) -> Step<u8> {
        self.b.get(self.i).copied().ok_or(Invalid)
    }

    fn expect(&mut self, byte: u8) -> Step<()> {
        if self.peek()? != byte {
            return Err(Invalid);
        }
        self.i += 1;
        Ok(())
    }

    /// One value. `path`: `Some(rest)` while it lies on the pointer (the
    /// value is wanted when `rest` is empty), `None` to skip it.
    fn value(&mut self, path: Option<&[String]>, depth: usize) -> Step<Option<String>> {
        if path.is_none() {
            self.skip(depth)?;
            return Ok(None);
        }
        self.ws();
        let start = self.i;
        match self.peek()? {
            b'{' => self.object(path, depth + 1),
            b'[' => self.array(path, depth + 1),
            b'"' => {
                let escaped = self.string()?;
                Ok(match path {
                    Some([]) => Some(self.string_text(start, escaped)?),
                    _ => None,
                })
            }
            b't' => self.literal(b"true", path),
            b'f' => self.literal(b"false", path),
            b'n' => self.literal(b"null", None),
            _ => {
                self.number()?;
                Ok(match path {
                    Some([]) => leaf(&self.b[start..self.i]),
                    _ => None,
                })
            }
        }
    }

    /// Skip one value off the pointer, checking its grammar: a loop with
    /// the open containers as bits (1: object), not recursion.
    fn skip(&mut self, depth: usize) -> Step<()> {
        let (mut open, mut levels) = (0u128, depth);
        loop {
            // A value.
            self.ws();
            match self.peek()? {
                c @ (b'{' | b'[') => {
                    levels += 1;
                    if levels > MAX_DEPTH {
                        return Err(Invalid);
                    }
                    let object = c == b'{';
                    open = (open << 1) | u128::from(object);
                    self.i += 1;
                    self.ws();
                    match self.peek()? {
                        b'}' if object => self.i += 1,
                        b']' if !object => self.i += 1,
                        _ if object => {
                            self.key()?;
                            continue;
                        }
                        _ => continue,
                    }
                    // Empty: closed at once.
                    open >>= 1;
                    levels -= 1;
                }
                b'"' => {
                    self.string()?;
                }
                b't' => self.word(b"true")?,
                b'f' => self.word(b"false")?,
                b'n' => self.word(b"null")?,
                _ => self.number()?,
            }
            // After a value: close containers until one goes on.
            loop {
                if levels == depth {
                    return Ok(());
                }
                self.ws();
                let object = open & 1 == 1;
                match self.peek()? {
                    b',' => {
                        self.i += 1;
                        if object {
                            self.ws();
                            self.key()?;
                        }
                        break;
                    }
                    b'}' if object => {}
                    b']' if !object => {}
                    _ => return Err(Invalid),
                }
                self.i += 1;
                open >>= 1;
                levels -= 1;
            }
        }
    }

    /// An object key and its colon.
    fn key(&mut self) -> Step<()> {
        if self.peek()? != b'"' {
            return Err(Invalid);
        }
        self.string()?;
        self.ws();
        self.expect(b':')
    }

    fn word(&mut self, word: &[u8]) -> Step<()> {
        if !self.b[self.i..].starts_with(word) {
            return Err(Invalid);
        }
        self.i += word.len();
        Ok(())
    }

    fn literal(&mut self, word: &[u8], path: Option<&[String]>) -> Step<Option<String>> {
        self.word(word)?;
        Ok(match path {
            Some([]) => Some(String::from_utf8_lossy(word).into_owned()),
            _ => None,
        })
    }

    fn object(&mut self, path: Option<&[String]>, depth: usize) -> Step<Option<String>> {
        if depth > MAX_DEPTH {
            return Err(Invalid);
        }
        self.i += 1;
        let (head, rest) = match path {
            Some([head, rest @ ..]) => (Some(head.as_str()), rest),
            _ => (None, &[][..]),
        };
        let mut found = None;
        self.ws();
        if self.peek()? == b'}' {
            self.i += 1;
            return Ok(None);
        }
        loop {
            self.ws();
            let key_start = self.i;
            if self.peek()? != b'"' {
                return Err(Invalid);
            }
            let escaped = self.string()?;
            let wanted =
                found.is_none() && head.is_some_and(|h| self.key_is(key_start, escaped, h));
            self.ws();
            self.expect(b':')?;
            let v = self.value(wanted.then_some(rest), depth)?;
            if wanted {
                found = v;
            }
            self.ws();
            match self.peek()? {
                b',' => self.i += 1,
                b'}' => {
                    self.i += 1;
                    return Ok(found);
                }
                _ => return Err(Invalid),
            }
        }
    }

    fn array(&mut self, path: Option<&[String]>, depth: usize) -> Step<Option<String>> {
        if depth > MAX_DEPTH {
            return Err(Invalid);
        }
        self.i += 1;
        let (wanted, rest) = match path {
            Some([head, rest @ ..]) => (array_index(head), rest),
            _ => (None, &[][..]),
        };
        let mut found = None;
        self.ws();
        if self.peek()? == b']' {
            self.i += 1;
            return Ok(None);
        }
        for index in 0usize.. {
            let on_path = wanted == Some(index);
            let v = self.value(on_path.then_some(rest), depth)?;
            if on_path {
                found = v;
            }
            self.ws();
            match self.peek()? {
                b',' => self.i += 1,
                b']' => {
                    self.i += 1;
                    break;
                }
                _ => return Err(Invalid),
            }
        }
        Ok(found)
    }

    /// Skip a string (at its opening quote); whether it holds escapes.
    fn string(&mut self) -> Step<bool> {
        self.i += 1;
        let mut escaped = false;
        loop {
            let rest = &self.b[self.i..];
            // Most strings in a body are short (keys, roles, types): eight
            // bytes at a time beats setting up a vector search.
            let at = match special(&rest[..rest.len().min(SHORT)]) {
                Some(at) if rest[at] < 0x20 => return Err(Invalid),
                Some(at) => at,
                None => {
                    let at = memchr::memchr2(b'"', b'\\', rest).ok_or(Invalid)?;
                    if has_control(&rest[..at]) {
                        return Err(Invalid);
                    }
                    at
                }
            };
            self.i += at;
            if self.b[self.i] == b'"' {
                self.i += 1;
                return Ok(escaped);
            }
            escaped = true;
            self.i += 1;
            match self.peek()? {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.i += 1,
                b'u' => {
                    let hex = self.b.get(self.i + 1..self.i + 5).ok_or(Invalid)?;
                    if !hex.iter().all(u8::is_ascii_hexdigit) {
                        return Err(Invalid);
                    }
                    self.i += 5;
                }
                _ => return Err(Invalid),
            }
        }
    }

    /// The text of the string that starts at `start` and ends before `self.i`.
    fn string_text(&self, start: usize, escaped: bool) -> Step<String> {
        let raw = &self.b[start..self.i];
        if !escaped {
            return std::str::from_utf8(&raw[1..raw.len() - 1])
                .map(str::to_string)
                .map_err(|_| Invalid);
        }
        // Escapes (rare in keys and ids): serde_json decodes, surrogates too.
        serde_json::from_slice::<String>(raw).map_err(|_| Invalid)
    }

    /// Whether the key string at `start` equals `want` once unescaped.
    fn key_is(&self, start: usize, escaped: bool, want: &str) -> bool {
        if !escaped {
            return &self.b[start + 1..self.i - 1] == want.as_bytes();
        }
        self.string_text(start, true).is_ok_and(|k| k == want)
    }

    /// Skip a number, checking JSON's grammar for it.
    fn number(&mut self) -> Step<()> {
        if self.b.get(self.i) == Some(&b'-') {
            self.i += 1;
        }
        match self.peek()? {
            b'0' => self.i += 1,
            b'1'..=b'9' => self.digits(),
            _ => return Err(Invalid),
        }
        if self.b.get(self.i) == Some(&b'.') {
            self.i += 1;
            self.some_digits()?;
        }
        if let Some(b'e' | b'E') = self.b.get(self.i) {
            self.i += 1;
            if let Some(b'+' | b'-') = self.b.get(self.i) {
                self.i += 1;
            }
            self.some_digits()?;
        }
        Ok(())
    }

    fn digits(&mut self) {
        while self.b.get(self.i).is_some_and(u8::is_ascii_digit) {
            self.i += 1;
        }
    }

    fn some_digits(&mut self) -> Step<()> {
        let from = self.i;
        self.digits();
        if self.i == from {
            return Err(Invalid);
        }
        Ok(())
    }
}

/// The first quote, backslash or control character in `bytes`, eight bytes
/// at a time (the classic "has zero byte" test; a false hit can only follow
/// a true one, so the lowest hit is exact).
/// A pointer token as an array index, as RFC 6901 (and serde_json) read
/// it: `0`, or digits without a leading zero; `01` or `+1` name no element.
fn array_index(token: &str) -> Option<usize> {
    let digits = !token.is_empty() && token.bytes().all(|b| b.is_ascii_digit());
    if !digits || (token.len() > 1 && token.starts_with('0')) {
        return None;
    }
    token.parse().ok()
}

fn special(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let mut words = bytes.chunks_exact(8);
    for (n, word) in words.by_ref().enumerate() {
        let mut w = [0u8; 8];
        w.copy_from_slice(word);
        let w = u64::from_le_bytes(w);
        let quote = w ^ (ONES * u64::from(b'"'));
        let backslash = w ^ (ONES * u64::from(b'\\'));
        let hits = (quote.wrapping_sub(ONES) & !quote)
            | (backslash.wrapping_sub(ONES) & !backslash)
            | (w.wrapping_sub(ONES * 0x20) & !w);
        let hits = hits & HIGH;
        if hits != 0 {
            return Some(n * 8 + (hits.trailing_zeros() / 8) as usize);
        }
    }
    let tail = words.remainder();
    let done = bytes.len() - tail.len();
    tail.iter()
        .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
        .map(|p| done + p)
}

/// A raw control character, which JSON forbids inside strings. Checked in
/// blocks without an early exit, so that the compiler vectorizes it.
fn has_control(bytes: &[u8]) -> bool {
    bytes
        .chunks(64)
        .any(|block| block.iter().fold(false, |seen, &c| seen | (c < 0x20)))
}

/// A number as text, the way `serde_json` prints it (`1.50` is `1.5`).
fn leaf(raw: &[u8]) -> Option<String> {
    let mut de = serde_json::Deserializer::from_slice(raw);
    de.deserialize_any(LeafVisitor).ok().flatten()
}

struct LeafVisitor;

impl<'de> Visitor<'de> for LeafVisitor {
    type Value = Option<String>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Some(v.to_string()))
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Some(v.to_string()))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Some(v.to_string()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Some(v.to_string()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Some(v.to_string()))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(None)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }
}

#[cfg(test)]
mod tests;
