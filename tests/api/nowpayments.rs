//! NOWPayments: crypto invoices at checkout and verified IPNs into the same ledger and orders as
//! Stripe's events. The canonical JSON its signatures are computed over is held to Node's own
//! `JSON.stringify` on generated payloads.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use secrecy::SecretString;
use tollgate::nowpayments::canonical::canonicalize;
use tollgate::nowpayments::signature::sign;

use crate::helpers::{in_ci, skip};

/// NOWPayments' documented check, with arrays kept as arrays: keys sorted recursively, then
/// `JSON.stringify`; each line of the input file a JSON string holding one payload's raw text.
const NODE_CANONICAL: &str = r#"
const crypto = require('crypto');
const fs = require('fs');
const sortObject = (o) => (o && typeof o === 'object')
  ? (Array.isArray(o) ? o.map(sortObject)
     : Object.keys(o).sort().reduce((r, k) => { r[k] = sortObject(o[k]); return r; }, {}))
  : o;
const payloads = JSON.parse(fs.readFileSync(process.argv[1], 'utf8'));
const out = payloads.map((p) => {
  const canonical = JSON.stringify(sortObject(JSON.parse(p)));
  return [canonical, crypto.createHmac('sha512', process.argv[2]).update(canonical).digest('hex')];
});
process.stdout.write(JSON.stringify(out));
"#;

const NUMBERS: &[&str] = &[
    "1e-7",
    "0.000001",
    "0.0000001",
    "12.99",
    "12.990000",
    "1e21",
    "1e+21",
    "1E21",
    "-0",
    "-0.0",
    "0",
    "0.0",
    "1.0e0",
    "123456789012345678901234567890",
    "9007199254740993",
    "9007199254740992",
    "-9007199254740993",
    "1E400",
    "-1e-400",
    "0.1",
    "100",
    "1.5E-10",
    "5e-324",
    "2.2250738585072014e-308",
    "1.7976931348623157e308",
    "0.30000000000000004",
    "999999999999999999999",
    "100000000000000000000",
    "1e-6",
    "1.23456789e-7",
    "0.00001234",
    "33.333333333333336",
];

const STRING_PIECES: &[&str] = &[
    "a",
    "Z",
    "0",
    " ",
    "é",
    "\u{1f600}",
    "\u{2028}",
    "\u{2029}",
    "\u{7f}",
    "\u{e000}",
    "\u{ffff}",
    "€",
    "\\u0001",
    "\\u001f",
    "\\ud800",
    "\\udc00",
    "\\ud83d\\ude00",
    "\\n",
    "\\t",
    "\\b",
    "\\f",
    "\\r",
    "\\\"",
    "\\\\",
    "\\/",
    "\\u00e9",
    "\\u2028",
    "\\u0000",
    "/",
    "<",
    "'",
];

const KEYS: &[&str] = &[
    "payment_id",
    "payment_status",
    "price_amount",
    "a",
    "B",
    "_",
    "0",
    "1",
    "9",
    "10",
    "01",
    "4294967294",
    "4294967295",
    "-1",
    "é",
    "\u{1f600}",
    "\u{e000}",
    "\\ud800",
    "z",
    "Z",
    "aa",
    "a b",
    "",
];

fn ws(rng: &mut StdRng, out: &mut String) {
    if rng.gen_bool(0.2) {
        out.push_str([" ", "\n", "\t", "\r", "  "][rng.gen_range(0..5)]);
    }
}

fn number(rng: &mut StdRng) -> String {
    match rng.gen_range(0..4) {
        0 => NUMBERS[rng.gen_range(0..NUMBERS.len())].to_owned(),
        1 => {
            let n = f64::from_bits(rng.gen());
            let n = if n.is_finite() { n } else { 1.5 };
            if rng.gen_bool(0.5) {
                format!("{n:e}")
            } else {
                format!("{n}")
            }
        }
        2 => {
            format!("{}.{:0width$}", rng.gen_range(0..100_000u64), rng.gen_range(0..100_000_000u64), width = rng.gen_range(1..9))
        }
        _ => {
            let digits: String = (0..rng.gen_range(1..25)).map(|_| char::from(b'0' + rng.gen_range(0..10u8))).collect();
            let digits = digits.trim_start_matches('0');
            let digits = if digits.is_empty() { "0" } else { digits };
            let sign = if rng.gen_bool(0.3) { "-" } else { "" };
            format!("{sign}{digits}e{}", rng.gen_range(-340..340))
        }
    }
}

fn string(rng: &mut StdRng) -> String {
    let pieces: String = (0..rng.gen_range(0..8)).map(|_| STRING_PIECES[rng.gen_range(0..STRING_PIECES.len())]).collect();
    format!("\"{pieces}\"")
}

fn value(rng: &mut StdRng, depth: usize, out: &mut String) {
    ws(rng, out);
    match rng.gen_range(0..if depth < 3 { 8 } else { 6 }) {
        0 | 1 | 2 => out.push_str(&number(rng)),
        3 | 4 => out.push_str(&string(rng)),
        5 => out.push_str(["true", "false", "null"][rng.gen_range(0..3)]),
        6 => object(rng, depth + 1, out),
        _ => {
            out.push('[');
            for i in 0..rng.gen_range(0..4) {
                if i > 0 {
                    out.push(',');
                }
                value(rng, depth + 1, out);
            }
            ws(rng, out);
            out.push(']');
        }
    }
    ws(rng, out);
}

fn object(rng: &mut StdRng, depth: usize, out: &mut String) {
    out.push('{');
    let mut keys: Vec<&str> = KEYS.to_vec();
    for i in 0..rng.gen_range(0..8) {
        if i > 0 {
            out.push(',');
        }
        ws(rng, out);
        let key = keys.swap_remove(rng.gen_range(0..keys.len()));
        out.push_str(&format!("\"{key}\""));
        ws(rng, out);
        out.push(':');
        value(rng, depth, out);
    }
    ws(rng, out);
    out.push('}');
}

#[test]
fn the_canonical_form_is_byte_for_byte_what_node_json_stringify_writes() {
    const TEST: &str = "the_canonical_form_is_byte_for_byte_what_node_json_stringify_writes";
    let node_ok = std::process::Command::new("node").arg("--version").output().is_ok_and(|o| o.status.success());
    if !node_ok {
        assert!(!in_ci(), "node is required in CI");
        skip(TEST, "node is not installed");
        return;
    }
    let mut rng = StdRng::seed_from_u64(14);
    let payloads: Vec<String> = (0..2000)
        .map(|_| {
            let mut out = String::new();
            ws(&mut rng, &mut out);
            object(&mut rng, 0, &mut out);
            ws(&mut rng, &mut out);
            out
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("payloads.json");
    std::fs::write(&file, serde_json::to_vec(&payloads).unwrap()).unwrap();
    let secret = "ipn_secret_for_the_node_comparison";
    let output = std::process::Command::new("node").arg("-e").arg(NODE_CANONICAL).arg(&file).arg(secret).output().unwrap();
    assert!(output.status.success(), "node failed: {}", String::from_utf8_lossy(&output.stderr));
    let node: Vec<(String, String)> = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(node.len(), payloads.len());
    let secret = SecretString::from(secret);
    let (mut awkward_numbers, mut escapes) = (0, 0);
    for (payload, (node_canonical, node_hmac)) in payloads.iter().zip(&node) {
        let (_, ours) = canonicalize(payload.as_bytes()).unwrap_or_else(|e| panic!("{e}: {payload}"));
        assert_eq!(&ours, node_canonical, "payload: {payload}");
        assert_eq!(&sign(&ours, &secret), node_hmac);
        awkward_numbers += usize::from(ours.contains("e-") || ours.contains("e+"));
        escapes += usize::from(ours.contains("\\u"));
    }
    // The generator did reach the cases that matter.
    assert!(awkward_numbers > 200 && escapes > 200, "{awkward_numbers} {escapes}");
}
