//! YAML as kubectl prints it.

use std::fmt::Write as _;

use serde_json::Value;

/// YAML as kubectl prints it (sigs.k8s.io/yaml over go-yaml v2): keys sorted, a sequence at its
/// key's indentation, empty collections as `{}` and `[]`, strings quoted only where a plain
/// scalar would read as something else (a number, a boolean of YAML 1.1 such as `y`, null, a
/// timestamp...).
pub fn kubectl_yaml(v: &Value) -> String {
    let mut out = String::new();
    emit(v, 0, &mut out);
    out
}

fn emit(v: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            for k in keys {
                let (k, x) = (scalar(&Value::String(k.clone())), &m[k]);
                match x {
                    Value::Object(o) if !o.is_empty() => {
                        let _ = writeln!(out, "{pad}{k}:");
                        emit(x, indent + 2, out);
                    }
                    Value::Array(a) if !a.is_empty() => {
                        let _ = writeln!(out, "{pad}{k}:");
                        emit(x, indent, out);
                    }
                    _ => {
                        let _ = writeln!(out, "{pad}{k}: {}", scalar(x));
                    }
                }
            }
        }
        Value::Array(a) => {
            for x in a {
                let nested =
                    matches!(x, Value::Object(o) if !o.is_empty()) || matches!(x, Value::Array(a) if !a.is_empty());
                if nested {
                    let mut sub = String::new();
                    emit(x, indent + 2, &mut sub);
                    let _ = write!(out, "{pad}- {}", &sub[indent + 2..]);
                } else {
                    let _ = writeln!(out, "{pad}- {}", scalar(x));
                }
            }
        }
        other => {
            let _ = writeln!(out, "{pad}{}", scalar(other));
        }
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Object(_) => "{}".into(),
        Value::Array(_) => "[]".into(),
        Value::String(s) => {
            if needs_quotes(s) {
                serde_json::to_string(s).expect("a string")
            } else {
                s.clone()
            }
        }
    }
}

fn needs_quotes(s: &str) -> bool {
    const YAML11_WORDS: &[&str] = &[
        "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "true", "True", "TRUE", "false", "False", "FALSE",
        "on", "On", "ON", "off", "Off", "OFF", "null", "Null", "NULL", "~",
    ];
    let b = s.as_bytes();
    // An indicator that cannot start a plain scalar, or `-`, `?`, `:` alone or before a space.
    let indicator = b.first().is_some_and(|c| b",[]{}#&*!|>'\"%@`".contains(c) || c.is_ascii_whitespace())
        || (b.first().is_some_and(|c| b"-?:".contains(c)) && b.get(1).is_none_or(|c| *c == b' '));
    let unsigned = s.trim_start_matches(['-', '+']);
    let numeric =
        s.replace('_', "").parse::<f64>().is_ok_and(|_| !s.contains(char::is_alphabetic) || s.contains(['e', 'E']))
            || unsigned.strip_prefix("0x").is_some_and(|h| !h.is_empty() && h.bytes().all(|c| c.is_ascii_hexdigit()))
            || [".inf", ".Inf", ".INF", ".nan", ".NaN", ".NAN"].contains(&unsigned);
    let timestamp = b.len() >= 10 && b[4] == b'-' && b[7] == b'-' && b[..4].iter().all(u8::is_ascii_digit);
    s.is_empty()
        || YAML11_WORDS.contains(&s)
        || indicator
        || s.ends_with(char::is_whitespace)
        || s.ends_with(':')
        || s.contains(": ")
        || s.contains(" #")
        || s.contains('\n')
        || numeric
        || timestamp
}
