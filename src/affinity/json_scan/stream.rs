//! [`super::find`] fed chunk by chunk: the values at several JSON pointers
//! of a body, found as its bytes arrive, so that a body spilled to disk is
//! never read back for its key.
//!
//! A byte-driven state machine with the open containers on a stack; each
//! container carries, as bits, the pointers it lies on. Strings (most of a
//! Messages body) are skipped with `memchr` from one quote or backslash to
//! the next, as in `find`. For every pointer the answer is `find`'s on the
//! same bytes, however they are split (a differential test keeps it so),
//! with one bound `find` does not have: a value longer than `max_value`
//! bytes counts as absent rather than being held in memory.

use super::{array_index, has_control, leaf, special, MAX_DEPTH, SHORT};

/// At most this many pointers are followed at once (one bit each).
pub const MAX_POINTERS: usize = 64;

/// The values at `pointers` in a body fed to it in pieces.
pub struct StreamScan {
    pointers: Vec<Vec<String>>,
    found: Vec<Option<String>>,
    /// Pointers whose answer is settled: found, or `None` whatever follows.
    done: u64,
    /// Settled as `None` (their `find` fails on the bytes seen).
    poisoned: u64,
    stack: Vec<Frame>,
    state: State,
    invalid: bool,
    /// An incomplete UTF-8 sequence at the end of the last chunk.
    carry: Vec<u8>,
    /// The raw text of the key or leaf value being read, when one is wanted.
    raw: Vec<u8>,
    /// `raw` outgrew its bound: the key matches nothing, the value is absent.
    overflow: bool,
    max_value: usize,
    /// The longest pointer token, for the bound on keys worth reading.
    max_token: usize,
}

/// An open container: an object or an array, the pointers it lies on, and
/// (arrays) the index of the element being read.
struct Frame {
    object: bool,
    on: u64,
    index: usize,
}

#[derive(Clone, Copy)]
enum Num {
    Minus,
    Zero,
    Int,
    Dot,
    Frac,
    Exp,
    ExpSign,
    ExpDigits,
}

#[derive(Clone, Copy)]
enum Esc {
    No,
    Backslash,
    Hex(u8),
}

/// What the next byte may be. `cand`: the pointers the value lies on.
#[derive(Clone, Copy)]
enum State {
    Value {
        cand: u64,
    },
    After,
    FirstKey,
    Key,
    Colon {
        cand: u64,
    },
    FirstElement,
    Str {
        key: bool,
        cand: u64,
        esc: Esc,
        escaped: bool,
    },
    Word {
        word: &'static [u8],
        at: usize,
        cand: u64,
    },
    Number {
        at: Num,
        cand: u64,
    },
    End,
}

impl StreamScan {
    /// A scan for `pointers` (at most [`MAX_POINTERS`]; `None` beyond).
    pub fn new(pointers: Vec<Vec<String>>, max_value: usize) -> Option<StreamScan> {
        if pointers.len() > MAX_POINTERS {
            return None;
        }
        let all = bits(pointers.len());
        let max_token = pointers
            .iter()
            .flatten()
            .map(String::len)
            .max()
            .unwrap_or(0);
        Some(StreamScan {
            found: vec![None; pointers.len()],
            pointers,
            done: 0,
            poisoned: 0,
            stack: Vec::new(),
            state: State::Value { cand: all },
            invalid: false,
            carry: Vec::new(),
            raw: Vec::new(),
            overflow: false,
            max_value,
            max_token,
        })
    }

    /// The next bytes of the body.
    pub fn feed(&mut self, chunk: &[u8]) {
        if self.invalid {
            return;
        }
        self.utf8(chunk);
        let mut i = 0;
        while i < chunk.len() && !self.invalid {
            i = self.step(chunk, i);
        }
    }

    /// The body ended: each pointer's value, as `find` gives it.
    pub fn finish(mut self) -> Vec<Option<String>> {
        if let State::Number { at, cand } = self.state {
            if matches!(at, Num::Zero | Num::Int | Num::Frac | Num::ExpDigits) {
                self.number_done(cand);
            }
        }
        let valid = !self.invalid && self.carry.is_empty() && matches!(self.state, State::End);
        if !valid {
            return vec![None; self.pointers.len()];
        }
        let poisoned = self.poisoned;
        self.found
            .into_iter()
            .enumerate()
            .map(|(n, v)| v.filter(|_| poisoned & (1 << n) == 0))
            .collect()
    }

    /// Check the chunk's UTF-8, carrying a sequence cut at its end over.
    fn utf8(&mut self, chunk: &[u8]) {
        let mut rest = chunk;
        if !self.carry.is_empty() {
            let need = match self.carry[0] {
                b if b >= 0xf0 => 4,
                b if b >= 0xe0 => 3,
                _ => 2,
            };
            let take = (need - self.carry.len()).min(rest.len());
            self.carry.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.carry.len() < need {
                return;
            }
            if std::str::from_utf8(&self.carry).is_err() {
                self.invalid = true;
                return;
            }
            self.carry.clear();
        }
        if let Err(e) = simdutf8::compat::from_utf8(rest) {
            match e.error_len() {
                None => self.carry.extend_from_slice(&rest[e.valid_up_to()..]),
                Some(_) => self.invalid = true,
            }
        }
    }

    /// The pointers not yet settled among `set`.
    fn open(&self, set: u64) -> u64 {
        set & !self.done
    }

    /// The text of the string just scanned (`raw`, its quotes included),
    /// unescaped; `None` if it is not valid.
    fn raw_text(&self, escaped: bool) -> Option<String> {
        if escaped {
            serde_json::from_slice::<String>(&self.raw).ok()
        } else {
            std::str::from_utf8(&self.raw[1..self.raw.len() - 1])
                .ok()
                .map(str::to_string)
        }
    }

    /// Those of `cand` that end at this level (the value is their answer).
    fn ending(&self, cand: u64) -> u64 {
        let level = self.stack.len();
        self.select(cand, |p| p.len() == level)
    }

    fn select(&self, set: u64, keep: impl Fn(&[String]) -> bool) -> u64 {
        let mut out = 0;
        let mut rest = self.open(set);
        while rest != 0 {
            let n = rest.trailing_zeros() as usize;
            rest &= rest - 1;
            if keep(&self.pointers[n]) {
                out |= 1 << n;
            }
        }
        out
    }

    /// The pointers on the current array's element `index`.
    fn element(&self, index: usize) -> u64 {
        let Some(frame) = self.stack.last() else {
            return 0;
        };
        let level = self.stack.len() - 1;
        self.select(frame.on, |p| array_index(&p[level]) == Some(index))
    }

    /// After a value: close the document, or wait for what follows it.
    fn value_done(&mut self) {
        self.state = if self.stack.is_empty() {
            State::End
        } else {
            State::After
        };
    }

    fn settle(&mut self, set: u64, value: &Option<String>) {
        let mut rest = self.open(set);
        while rest != 0 {
            let n = rest.trailing_zeros() as usize;
            rest &= rest - 1;
            if value.is_some() {
                self.found[n] = value.clone();
                self.done |= 1 << n;
            }
        }
    }

    /// Settle `set` as absent whatever follows.
    fn poison(&mut self, set: u64) {
        let set = self.open(set);
        self.poisoned |= set;
        self.done |= set;
    }

    fn collect(&mut self, bytes: &[u8], bound: usize) {
        if self.overflow {
            return;
        }
        if self.raw.len() + bytes.len() > bound {
            self.overflow = true;
            self.raw.clear();
            return;
        }
        self.raw.extend_from_slice(bytes);
    }

    fn number_done(&mut self, cand: u64) {
        let ending = self.ending(cand);
        if ending != 0 {
            if self.overflow {
                self.poison(ending);
            } else {
                let value = leaf(&self.raw);
                self.settle(ending, &value);
            }
        }
        self.value_done();
    }

    fn string_done(&mut self, key: bool, cand: u64, escaped: bool) {
        if key {
            let Some(frame) = self.stack.last() else {
                self.invalid = true;
                return;
            };
            let level = self.stack.len() - 1;
            let matched = if self.overflow || frame.on & !self.done == 0 {
                0
            } else {
                match self.raw_text(escaped) {
                    Some(k) => self.select(frame.on, |p| p[level] == k),
                    None => 0,
                }
            };
            self.state = State::Colon { cand: matched };
            return;
        }
        let ending = self.ending(cand);
        if ending != 0 {
            if self.overflow {
                self.poison(ending);
            } else {
                match self.raw_text(escaped) {
                    Some(v) => self.settle(ending, &Some(v)),
                    None => self.poison(ending),
                }
            }
        }
        self.value_done();
    }

    /// Consume from `chunk[i]` on; the index of the next byte to look at.
    fn step(&mut self, chunk: &[u8], mut i: usize) -> usize {
        if let State::Str {
            key,
            cand,
            esc: Esc::No,
            escaped,
        } = self.state
        {
            // The bulk of a body: run to the next quote or backslash, eight
            // bytes at a time while the string is short, then with `memchr`.
            let rest = &chunk[i..];
            let wanted = self.wanted();
            let bound = self.bound(key);
            let at = match special(&rest[..rest.len().min(SHORT)]) {
                Some(at) if rest[at] < 0x20 => return self.fail(),
                Some(at) => Some(at),
                None if rest.len() <= SHORT => None,
                None => match memchr::memchr2(b'"', b'\\', rest) {
                    Some(at) if has_control(&rest[..at]) => return self.fail(),
                    found => found,
                },
            };
            let Some(at) = at else {
                if rest.len() > SHORT && has_control(rest) {
                    return self.fail();
                }
                if wanted {
                    self.collect(rest, bound);
                }
                return chunk.len();
            };
            if wanted {
                self.collect(&rest[..=at], bound);
            }
            i += at + 1;
            if rest[at] == b'"' {
                self.string_done(key, cand, escaped);
            } else {
                self.state = State::Str {
                    key,
                    cand,
                    esc: Esc::Backslash,
                    escaped: true,
                };
            }
            return i;
        }
        let b = chunk[i];
        i += 1;
        match self.state {
            State::Str {
                key,
                cand,
                esc,
                escaped,
            } => {
                let next = match esc {
                    Esc::Backslash => match b {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Esc::No,
                        b'u' => Esc::Hex(4),
                        _ => return self.fail(),
                    },
                    Esc::Hex(n) if b.is_ascii_hexdigit() => {
                        if n == 1 {
                            Esc::No
                        } else {
                            Esc::Hex(n - 1)
                        }
                    }
                    _ => return self.fail(),
                };
                if self.wanted() {
                    let bound = self.bound(key);
                    self.collect(&[b], bound);
                }
                self.state = State::Str {
                    key,
                    cand,
                    esc: next,
                    escaped,
                };
            }
            _ if matches!(b, b' ' | b'\t' | b'\n' | b'\r')
                && !matches!(self.state, State::Word { .. } | State::Number { .. }) => {}
            State::Value { cand } => self.value(b, cand),
            State::FirstKey | State::Key => {
                if b == b'}' && matches!(self.state, State::FirstKey) {
                    self.stack.pop();
                    self.value_done();
                } else if b == b'"' {
                    self.string_start(true, 0);
                } else {
                    return self.fail();
                }
            }
            State::Colon { cand } => {
                if b != b':' {
                    return self.fail();
                }
                self.state = State::Value { cand };
            }
            State::FirstElement => {
                if b == b']' {
                    self.stack.pop();
                    self.value_done();
                } else {
                    let cand = self.element(0);
                    self.value(b, cand);
                }
            }
            State::After => self.after(b),
            State::Word { word, at, cand } => {
                if word[at] != b {
                    return self.fail();
                }
                if at + 1 < word.len() {
                    self.state = State::Word {
                        word,
                        at: at + 1,
                        cand,
                    };
                } else {
                    let ending = self.ending(cand);
                    if word != b"null" && ending != 0 {
                        let text = String::from_utf8_lossy(word).into_owned();
                        self.settle(ending, &Some(text));
                    }
                    self.value_done();
                }
            }
            State::Number { at, cand } => {
                let next = match (at, b) {
                    (Num::Minus, b'0') => Num::Zero,
                    (Num::Minus, b'1'..=b'9') => Num::Int,
                    (Num::Int, b'0'..=b'9') => Num::Int,
                    (Num::Zero | Num::Int, b'.') => Num::Dot,
                    (Num::Dot | Num::Frac, b'0'..=b'9') => Num::Frac,
                    (Num::Zero | Num::Int | Num::Frac, b'e' | b'E') => Num::Exp,
                    (Num::Exp, b'+' | b'-') => Num::ExpSign,
                    (Num::Exp | Num::ExpSign | Num::ExpDigits, b'0'..=b'9') => Num::ExpDigits,
                    (Num::Zero | Num::Int | Num::Frac | Num::ExpDigits, _) => {
                        // The number ended before this byte: look at it again.
                        self.number_done(cand);
                        return i - 1;
                    }
                    _ => return self.fail(),
                };
                if self.ending(cand) != 0 {
                    self.collect(&[b], self.max_value);
                }
                self.state = State::Number { at: next, cand };
            }
            State::End => return self.fail(),
        }
        i
    }

    /// Whether the string being read is kept: its opening quote went into
    /// `raw` (or `raw` outgrew its bound).
    fn wanted(&self) -> bool {
        self.overflow || !self.raw.is_empty()
    }

    /// How much of a string `raw` may keep: a key longer than six times
    /// the longest token cannot equal it (an escape is at most six bytes).
    fn bound(&self, key: bool) -> usize {
        if key {
            6 * self.max_token + 2
        } else {
            self.max_value.saturating_add(2)
        }
    }

    fn fail(&mut self) -> usize {
        self.invalid = true;
        usize::MAX
    }

    fn string_start(&mut self, key: bool, cand: u64) {
        self.raw.clear();
        self.overflow = false;
        let wanted = if key {
            self.stack.last().is_some_and(|f| self.open(f.on) != 0)
        } else {
            self.ending(cand) != 0
        };
        if wanted {
            self.raw.push(b'"');
        }
        self.state = State::Str {
            key,
            cand,
            esc: Esc::No,
            escaped: false,
        };
    }

    /// The first byte of a value.
    fn value(&mut self, b: u8, cand: u64) {
        match b {
            b'{' | b'[' => {
                if self.stack.len() + 1 > MAX_DEPTH {
                    self.invalid = true;
                    return;
                }
                let level = self.stack.len();
                let on = self.select(cand, |p| p.len() > level);
                let object = b == b'{';
                self.stack.push(Frame {
                    object,
                    on,
                    index: 0,
                });
                self.state = if object {
                    State::FirstKey
                } else {
                    State::FirstElement
                };
            }
            b'"' => self.string_start(false, cand),
            b't' | b'f' | b'n' => {
                let word: &'static [u8] = match b {
                    b't' => b"true",
                    b'f' => b"false",
                    _ => b"null",
                };
                self.state = State::Word { word, at: 1, cand };
            }
            b'-' | b'0'..=b'9' => {
                self.raw.clear();
                self.overflow = false;
                if self.ending(cand) != 0 {
                    self.raw.push(b);
                }
                let at = match b {
                    b'-' => Num::Minus,
                    b'0' => Num::Zero,
                    _ => Num::Int,
                };
                self.state = State::Number { at, cand };
            }
            _ => self.invalid = true,
        }
    }

    /// A byte after a value inside a container.
    fn after(&mut self, b: u8) {
        let Some(frame) = self.stack.last_mut() else {
            self.invalid = true;
            return;
        };
        match (b, frame.object) {
            (b',', true) => self.state = State::Key,
            (b',', false) => {
                frame.index += 1;
                let index = frame.index;
                let cand = self.element(index);
                self.state = State::Value { cand };
            }
            (b'}', true) | (b']', false) => {
                self.stack.pop();
                self.value_done();
            }
            _ => self.invalid = true,
        }
    }
}

/// The low `n` bits.
fn bits(n: usize) -> u64 {
    if n >= 64 {
        u64::MAX
    } else {
        (1u64 << n) - 1
    }
}

#[cfg(test)]
mod tests;
