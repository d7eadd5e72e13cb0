//! A JSON value written as block-style YAML, the form operators read and `kubectl apply`
//! takes. The manifests are built once, as `serde_json::Value`s, and printed either way; the
//! only YAML they need is maps, lists and scalars, so a few lines do instead of a YAML crate.
//! A string that YAML could read as anything but that string (a number, `true`, `no`, `~`,
//! something with `:` or `#`, an empty string) is written double-quoted in JSON syntax, which
//! is valid YAML.

use serde_json::Value;

/// `value` as a YAML document body (no `---`), ending in a newline.
pub fn to_yaml(value: &Value) -> String {
    let mut out = String::new();
    match value {
        Value::Object(map) if !map.is_empty() => write_map(&mut out, map, 0),
        Value::Array(items) if !items.is_empty() => write_list(&mut out, items, 0),
        scalar => {
            out.push_str(&inline(scalar));
            out.push('\n');
        }
    }
    out
}

fn write_map(out: &mut String, map: &serde_json::Map<String, Value>, indent: usize) {
    let pad = " ".repeat(indent);
    for (key, value) in map {
        out.push_str(&pad);
        out.push_str(&string_scalar(key));
        out.push(':');
        write_nested(out, value, indent + 2);
    }
}

fn write_list(out: &mut String, items: &[Value], indent: usize) {
    let pad = " ".repeat(indent);
    for item in items {
        out.push_str(&pad);
        out.push('-');
        match item {
            // The first key on the dash's line, the others under it.
            Value::Object(map) if !map.is_empty() => {
                let mut nested = String::new();
                write_map(&mut nested, map, indent + 2);
                out.push(' ');
                out.push_str(nested.trim_start());
            }
            other => write_nested(out, other, indent + 2),
        }
    }
}

/// After `key:` or `-`: a scalar (or empty collection) on the same line, else a block below.
fn write_nested(out: &mut String, value: &Value, indent: usize) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            out.push('\n');
            write_map(out, map, indent);
        }
        Value::Array(items) if !items.is_empty() => {
            out.push('\n');
            write_list(out, items, indent);
        }
        scalar => {
            out.push(' ');
            out.push_str(&inline(scalar));
            out.push('\n');
        }
    }
}

fn inline(value: &Value) -> String {
    match value {
        Value::String(s) => string_scalar(s),
        Value::Object(_) => "{}".to_string(),
        Value::Array(_) => "[]".to_string(),
        // null, booleans and numbers are written the same in JSON and YAML.
        other => other.to_string(),
    }
}

/// Words YAML 1.1 (which many tools still speak) reads as booleans or null.
const RESERVED_WORDS: &[&str] = &["true", "false", "yes", "no", "y", "n", "on", "off", "null", "~"];

/// A string plain when YAML reads it back as that same string, else double-quoted.
fn string_scalar(s: &str) -> String {
    let plain = s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '/')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
        && !RESERVED_WORDS.contains(&s.to_ascii_lowercase().as_str());
    if plain {
        s.to_string()
    } else {
        // A JSON string is a YAML double-quoted scalar; serializing a &str cannot fail.
        serde_json::to_string(s).unwrap_or_else(|_| format!("{s:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn maps_and_lists_nest_in_block_style() {
        let value = json!({
            "kind": "PersistentVolume",
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "terms": [{"key": "zfs-csi.io/node", "values": ["node-1"]}],
                "empty": {},
                "none": [],
            },
        });
        assert_eq!(
            to_yaml(&value),
            "kind: PersistentVolume\n\
             spec:\n  \
               accessModes:\n    \
                 - ReadWriteOnce\n  \
               empty: {}\n  \
               none: []\n  \
               terms:\n    \
                 - key: zfs-csi.io/node\n      \
                   values:\n        \
                     - node-1\n"
        );
    }

    #[test]
    fn strings_yaml_would_misread_are_quoted() {
        let quoted = |s: &str| string_scalar(s);
        assert_eq!(quoted("128Gi"), "\"128Gi\"");
        assert_eq!(quoted("134217728"), "\"134217728\"");
        assert_eq!(quoted(""), "\"\"");
        assert_eq!(quoted("yes"), "\"yes\"");
        assert_eq!(quoted("NO"), "\"NO\"");
        assert_eq!(quoted("10.0.0.5"), "\"10.0.0.5\"");
        assert_eq!(quoted("a: b"), "\"a: b\"");
        assert_eq!(quoted("x#y"), "\"x#y\"");
        assert_eq!(quoted("line\nbreak"), "\"line\\nbreak\"");
        assert_eq!(quoted("vms/HomeAssistant"), "vms/HomeAssistant");
        assert_eq!(quoted("zfs-csi.io"), "zfs-csi.io");
    }
}
