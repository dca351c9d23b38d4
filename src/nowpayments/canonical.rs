//! The form NOWPayments signs: the IPN body's JSON with every object's keys sorted and no
//! whitespace, exactly as Node writes `JSON.stringify(sortObjectDeep(JSON.parse(body)))` with the
//! `sortObjectDeep` of NOWPayments' own Node SDK (`NowPaymentsIO/nowpayments-sdk-nodejs`,
//! `src/ipn.js`), which keeps arrays as arrays (the widely copied `sortObject` snippet that recurses
//! with `typeof === 'object'` would turn `[a,b]` into `{"0":a,"1":b}`; IPNs carry no arrays).
//!
//! A small parser of our own rather than serde_json: the bytes must be re-written as JavaScript
//! would write them, so numbers are read as doubles and printed in JavaScript's shortest form
//! (`1e-7`, `0.000001`, `1e+21`, `-0` as `0`), strings are kept as UTF-16 code units (a lone
//! surrogate escape survives and is written back as `\udXXX`), and object keys are ordered as a
//! JavaScript object enumerates them: array-index keys (`"0"`, `"7"`, `"10"`) first in numeric
//! order, then the rest in `Array.prototype.sort` order (by UTF-16 code units). Arrays stay arrays.
//!
//! Refused, because two parsers could read them differently: duplicate keys, a `__proto__` key
//! (Node's `result[key] = …` would set the prototype instead of a property), a body that is not
//! one JSON object, bytes that are not UTF-8.

use std::fmt::Write as _;

/// Why a body has no canonical form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CanonicalError {
    #[error("the body is not valid JSON ({0})")]
    Syntax(&'static str),
    #[error("the body is not a JSON object")]
    NotAnObject,
    #[error("the body has a duplicate key")]
    DuplicateKey,
    #[error("the body has a __proto__ key")]
    ProtoKey,
    #[error("the body is nested too deeply")]
    TooDeep,
}

/// Deeper than any IPN; bounds the recursion a hostile body could ask for.
const MAX_DEPTH: usize = 64;

/// A parsed JSON value that remembers what JavaScript would.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Number(f64),
    /// UTF-16 code units, as a JavaScript string holds them.
    String(Vec<u16>),
    Array(Vec<Value>),
    /// In the order written; [`canonical`] sorts.
    Object(Vec<(Vec<u16>, Value)>),
}

impl Value {
    /// The member `key` of an object, if there is one.
    pub fn get(&self, key: &str) -> Option<&Value> {
        let Value::Object(members) = self else { return None };
        let key: Vec<u16> = key.encode_utf16().collect();
        members.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// A string member's text (lone surrogates replaced), or a number's JavaScript text.
    pub fn as_text(&self) -> Option<String> {
        match self {
            Value::String(units) => Some(String::from_utf16_lossy(units)),
            Value::Number(n) => {
                let mut out = String::new();
                write_number(*n, &mut out);
                Some(out)
            }
            _ => None,
        }
    }
}

/// Parses `body` (one JSON object) and writes its canonical form.
pub fn canonicalize(body: &[u8]) -> Result<(Value, String), CanonicalError> {
    let value = parse(body)?;
    let mut out = String::with_capacity(body.len());
    canonical(&value, &mut out);
    Ok((value, out))
}

/// Parses one JSON object as `JSON.parse` would, refusing what two parsers could read differently.
pub fn parse(body: &[u8]) -> Result<Value, CanonicalError> {
    let text = std::str::from_utf8(body).map_err(|_| CanonicalError::Syntax("not UTF-8"))?;
    let mut p = Parser { s: text.as_bytes(), text, i: 0 };
    p.ws();
    let value = p.value(0)?;
    p.ws();
    if p.i != p.s.len() {
        return Err(CanonicalError::Syntax("trailing characters"));
    }
    if !matches!(value, Value::Object(_)) {
        return Err(CanonicalError::NotAnObject);
    }
    Ok(value)
}

struct Parser<'a> {
    s: &'a [u8],
    text: &'a str,
    i: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        // JSON.parse's whitespace: exactly these four.
        while matches!(self.s.get(self.i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn eat(&mut self, literal: &[u8]) -> Result<(), CanonicalError> {
        if self.s[self.i..].starts_with(literal) {
            self.i += literal.len();
            Ok(())
        } else {
            Err(CanonicalError::Syntax("unexpected token"))
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, CanonicalError> {
        if depth > MAX_DEPTH {
            return Err(CanonicalError::TooDeep);
        }
        match self.s.get(self.i) {
            Some(b'{') => self.object(depth),
            Some(b'[') => self.array(depth),
            Some(b'"') => Ok(Value::String(self.string()?)),
            Some(b't') => self.eat(b"true").map(|()| Value::Bool(true)),
            Some(b'f') => self.eat(b"false").map(|()| Value::Bool(false)),
            Some(b'n') => self.eat(b"null").map(|()| Value::Null),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => Err(CanonicalError::Syntax("unexpected token")),
            None => Err(CanonicalError::Syntax("unexpected end")),
        }
    }

    fn object(&mut self, depth: usize) -> Result<Value, CanonicalError> {
        self.i += 1;
        let mut members: Vec<(Vec<u16>, Value)> = Vec::new();
        self.ws();
        if self.s.get(self.i) == Some(&b'}') {
            self.i += 1;
            return Ok(Value::Object(members));
        }
        loop {
            self.ws();
            if self.s.get(self.i) != Some(&b'"') {
                return Err(CanonicalError::Syntax("expected a key"));
            }
            let key = self.string()?;
            self.ws();
            self.eat(b":")?;
            self.ws();
            let value = self.value(depth + 1)?;
            members.push((key, value));
            self.ws();
            match self.s.get(self.i) {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    break;
                }
                _ => return Err(CanonicalError::Syntax("expected , or }")),
            }
        }
        let proto: Vec<u16> = "__proto__".encode_utf16().collect();
        if members.iter().any(|(k, _)| *k == proto) {
            return Err(CanonicalError::ProtoKey);
        }
        let mut keys: Vec<&Vec<u16>> = members.iter().map(|(k, _)| k).collect();
        keys.sort_unstable();
        if keys.windows(2).any(|w| w[0] == w[1]) {
            return Err(CanonicalError::DuplicateKey);
        }
        Ok(Value::Object(members))
    }

    fn array(&mut self, depth: usize) -> Result<Value, CanonicalError> {
        self.i += 1;
        let mut items = Vec::new();
        self.ws();
        if self.s.get(self.i) == Some(&b']') {
            self.i += 1;
            return Ok(Value::Array(items));
        }
        loop {
            self.ws();
            items.push(self.value(depth + 1)?);
            self.ws();
            match self.s.get(self.i) {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    break;
                }
                _ => return Err(CanonicalError::Syntax("expected , or ]")),
            }
        }
        Ok(Value::Array(items))
    }

    fn hex4(&mut self) -> Result<u16, CanonicalError> {
        let digits = self.s.get(self.i..self.i + 4).ok_or(CanonicalError::Syntax("short \\u escape"))?;
        if !digits.iter().all(u8::is_ascii_hexdigit) {
            return Err(CanonicalError::Syntax("bad \\u escape"));
        }
        self.i += 4;
        let text = std::str::from_utf8(digits).map_err(|_| CanonicalError::Syntax("bad \\u escape"))?;
        u16::from_str_radix(text, 16).map_err(|_| CanonicalError::Syntax("bad \\u escape"))
    }

    fn string(&mut self) -> Result<Vec<u16>, CanonicalError> {
        self.i += 1;
        let mut units = Vec::new();
        loop {
            let start = self.i;
            while let Some(&b) = self.s.get(self.i) {
                if b == b'"' || b == b'\\' || b < 0x20 {
                    break;
                }
                self.i += 1;
            }
            // Runs between the ASCII delimiters are whole UTF-8 characters (the input is UTF-8).
            units.extend(self.text[start..self.i].encode_utf16());
            match self.s.get(self.i) {
                Some(b'"') => {
                    self.i += 1;
                    return Ok(units);
                }
                Some(b'\\') => {
                    self.i += 1;
                    let escape = *self.s.get(self.i).ok_or(CanonicalError::Syntax("unexpected end"))?;
                    self.i += 1;
                    units.push(match escape {
                        b'"' => 0x22,
                        b'\\' => 0x5c,
                        b'/' => 0x2f,
                        b'b' => 0x08,
                        b'f' => 0x0c,
                        b'n' => 0x0a,
                        b'r' => 0x0d,
                        b't' => 0x09,
                        b'u' => self.hex4()?,
                        _ => return Err(CanonicalError::Syntax("bad escape")),
                    });
                }
                Some(_) => return Err(CanonicalError::Syntax("control character in a string")),
                None => return Err(CanonicalError::Syntax("unterminated string")),
            }
        }
    }

    fn number(&mut self) -> Result<Value, CanonicalError> {
        let start = self.i;
        let digits = |p: &mut Self| {
            let from = p.i;
            while matches!(p.s.get(p.i), Some(b'0'..=b'9')) {
                p.i += 1;
            }
            p.i - from
        };
        if self.s.get(self.i) == Some(&b'-') {
            self.i += 1;
        }
        match self.s.get(self.i) {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => {
                digits(self);
            }
            _ => return Err(CanonicalError::Syntax("bad number")),
        }
        if self.s.get(self.i) == Some(&b'.') {
            self.i += 1;
            if digits(self) == 0 {
                return Err(CanonicalError::Syntax("bad number"));
            }
        }
        if matches!(self.s.get(self.i), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.s.get(self.i), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if digits(self) == 0 {
                return Err(CanonicalError::Syntax("bad number"));
            }
        }
        // Rust's parse is correctly rounded, as JavaScript's is; out of range is ±infinity in both.
        let n: f64 = self.text[start..self.i].parse().map_err(|_| CanonicalError::Syntax("bad number"))?;
        Ok(Value::Number(n))
    }
}

/// The index an array-index key stands for (`"0"`, `"42"`; not `"01"`, not 2^32 − 1 or more):
/// JavaScript enumerates such keys first, in numeric order.
fn array_index(key: &[u16]) -> Option<u32> {
    if key.is_empty() || key.len() > 10 || (key.len() > 1 && key[0] == u16::from(b'0')) {
        return None;
    }
    let mut n: u64 = 0;
    for &u in key {
        if !(u16::from(b'0')..=u16::from(b'9')).contains(&u) {
            return None;
        }
        n = n * 10 + u64::from(u - u16::from(b'0'));
    }
    u32::try_from(n).ok().filter(|n| *n != u32::MAX)
}

/// Writes `value` in canonical form (object keys sorted, no whitespace).
pub fn canonical(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => write_number(*n, out),
        Value::String(units) => write_string(units, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(item, out);
            }
            out.push(']');
        }
        Value::Object(members) => {
            let mut sorted: Vec<&(Vec<u16>, Value)> = members.iter().collect();
            sorted.sort_by(|(a, _), (b, _)| match (array_index(a), array_index(b)) {
                (Some(x), Some(y)) => x.cmp(&y),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (None, None) => a.cmp(b),
            });
            out.push('{');
            for (i, (key, item)) in sorted.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(key, out);
                out.push(':');
                canonical(item, out);
            }
            out.push('}');
        }
    }
}

/// A string as `JSON.stringify` writes it (the well-formed variant, Node 12 and later).
fn write_string(units: &[u16], out: &mut String) {
    out.push('"');
    for item in char::decode_utf16(units.iter().copied()) {
        match item {
            Ok('"') => out.push_str("\\\""),
            Ok('\\') => out.push_str("\\\\"),
            Ok('\u{8}') => out.push_str("\\b"),
            Ok('\u{c}') => out.push_str("\\f"),
            Ok('\n') => out.push_str("\\n"),
            Ok('\r') => out.push_str("\\r"),
            Ok('\t') => out.push_str("\\t"),
            Ok(c) if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            Ok(c) => out.push(c),
            Err(lone) => {
                let _ = write!(out, "\\u{:04x}", lone.unpaired_surrogate());
            }
        }
    }
    out.push('"');
}

/// A double as JavaScript's `Number.prototype.toString()` writes it (ECMA-262 Number::toString):
/// the shortest digits that read back to the same double, in plain notation when the decimal
/// exponent is in −6..21 and in `d.ddde±x` notation otherwise. Non-finite numbers are `null` in
/// JSON, and `-0` is `0`.
pub fn write_number(n: f64, out: &mut String) {
    if !n.is_finite() {
        out.push_str("null");
        return;
    }
    if n == 0.0 {
        out.push('0');
        return;
    }
    if n < 0.0 {
        out.push('-');
    }
    // Rust's `{:e}` is the shortest round-trip form too: "d.ddde-x" / "de+x"-less "dex".
    let sci = format!("{:e}", n.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let exp: i32 = exp.parse().unwrap_or(0);
    let k = digits.len() as i32;
    // value = 0.digits × 10^point
    let point = exp + 1;
    if k <= point && point <= 21 {
        out.push_str(&digits);
        out.extend(std::iter::repeat_n('0', (point - k) as usize));
    } else if 0 < point && point <= 21 {
        out.push_str(&digits[..point as usize]);
        out.push('.');
        out.push_str(&digits[point as usize..]);
    } else if -6 < point && point <= 0 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', (-point) as usize));
        out.push_str(&digits);
    } else {
        out.push_str(&digits[..1]);
        if k > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let e = point - 1;
        let _ = write!(out, "e{}{}", if e < 0 { '-' } else { '+' }, e.abs());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(body: &str) -> Result<String, CanonicalError> {
        canonicalize(body.as_bytes()).map(|(_, c)| c)
    }

    fn number(n: f64) -> String {
        let mut out = String::new();
        write_number(n, &mut out);
        out
    }

    #[test]
    fn numbers_are_written_as_javascript_writes_them() {
        for (n, js) in [
            (1e-7, "1e-7"),
            (0.000001, "0.000001"),
            (0.0000012, "0.0000012"),
            (12.99, "12.99"),
            (1e21, "1e+21"),
            (1e20, "100000000000000000000"),
            (123456789012345680000.0, "123456789012345680000"),
            (-0.0, "0"),
            (9007199254740993.0, "9007199254740992"),
            (1.5e300, "1.5e+300"),
            (-2.5e-10, "-2.5e-10"),
            (0.1 + 0.2, "0.30000000000000004"),
            (5e-324, "5e-324"),
            (f64::MAX, "1.7976931348623157e+308"),
            (100.0, "100"),
        ] {
            assert_eq!(number(n), js, "{n:?}");
        }
        assert_eq!(canon(r#"{"a":1e999,"b":-1e999}"#).unwrap(), r#"{"a":null,"b":null}"#);
        assert_eq!(canon(r#"{"a":1.0,"b":-0,"c":1E+2}"#).unwrap(), r#"{"a":1,"b":0,"c":100}"#);
    }

    #[test]
    fn keys_sort_recursively_with_array_indices_first_and_whitespace_goes() {
        let body = "{ \"b\" : [ {\"z\":1, \"a\":2} ], \"a\" : {\"10\":1, \"9\":2, \"x\":3, \"01\":4},\n\"\u{e000}\":1, \"\u{1f600}\":2 }";
        assert_eq!(
            canon(body).unwrap(),
            "{\"a\":{\"9\":2,\"10\":1,\"01\":4,\"x\":3},\"b\":[{\"a\":2,\"z\":1}],\"\u{1f600}\":2,\"\u{e000}\":1}"
        );
    }

    #[test]
    fn strings_are_escaped_as_json_stringify_does() {
        let body = r#"{"s":"\u0001\u001f\b\f\n\r\t\"\\\/\u2028\u2029\u007f\ud800x\udc00\ud83d\ude00é"}"#;
        assert_eq!(
            canon(body).unwrap(),
            "{\"s\":\"\\u0001\\u001f\\b\\f\\n\\r\\t\\\"\\\\/\u{2028}\u{2029}\u{7f}\\ud800x\\udc00\u{1f600}é\"}"
        );
    }

    #[test]
    fn what_two_parsers_could_read_differently_is_refused() {
        assert_eq!(canon(r#"{"a":1,"a":2}"#), Err(CanonicalError::DuplicateKey));
        assert_eq!(canon(r#"{"o":{"a":1,"b":2,"a":1}}"#), Err(CanonicalError::DuplicateKey));
        assert_eq!(canon(r#"{"a":1,"\u0061":2}"#), Err(CanonicalError::DuplicateKey));
        assert_eq!(canon(r#"{"__proto__":{}}"#), Err(CanonicalError::ProtoKey));
        assert_eq!(canon("[1]"), Err(CanonicalError::NotAnObject));
        assert_eq!(canon("\"x\""), Err(CanonicalError::NotAnObject));
        for bad in [
            "",
            "{",
            "{\"a\":01}",
            "{\"a\":1.}",
            "{\"a\":.5}",
            "{\"a\":+1}",
            "{\"a\":NaN}",
            "{\"a\":1}x",
            "{'a':1}",
            "{\"a\":\"\t\"}",
            "{\"a\":1,}",
            "\u{feff}{}",
            "{\"a\":\"\\x\"}",
        ] {
            assert!(matches!(canon(bad), Err(CanonicalError::Syntax(_))), "{bad:?}");
        }
        assert!(matches!(canonicalize(b"{\"a\":\"\xff\"}"), Err(CanonicalError::Syntax(_))));
        let deep = format!("{{\"a\":{}1{}}}", "[".repeat(100), "]".repeat(100));
        assert_eq!(canon(&deep), Err(CanonicalError::TooDeep));
    }
}
