//! # dcwatt-confenv
//!
//! Both binaries read TOML configuration files whose **string values** may name
//! environment variables: `node = "${NODE_NAME}"`,
//! `token_file = "/etc/dcwatt/tokens/${NODE_NAME}"`. The expansion works on the
//! parsed values, never on the file's text, so:
//!
//! - only `${NAME}` is replaced, `NAME` being `[A-Za-z_][A-Za-z0-9_]*`; any
//!   other `$` (in a URL, a password file name, a hash) is left as it is;
//! - `$${` is a literal `${` (write `$${NODE_NAME}` to keep `${NODE_NAME}`);
//!   the text is read left to right, so `$$${X}` is `$` then a literal `${X}`;
//! - a variable that is not set is an error naming the key and the variable
//!   (`node: environment variable NODE_NAME is not set`); a set but empty one
//!   expands to the empty string (the key's own validation then judges it);
//! - `${` without a valid name and a closing `}` is an error naming the key;
//! - a variable's value is not expanded again, keys (table names) never are,
//!   and numbers, booleans and dates are untouched.
//!
//! Errors keep toml's line and column: the values are replaced in toml's
//! spanned document, so a type error still points into the file as written.

use std::borrow::Cow;

use serde::de::DeserializeOwned;
use toml::de::{DeTable, DeValue};

/// Why a configuration file could not be read into its type.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// TOML syntax, a type or an unknown key; toml's text names the key, line and column.
    #[error("{0}")]
    Toml(#[from] toml::de::Error),
    /// A `${…}` reference that cannot be expanded.
    #[error("{key}: {reason}")]
    Env {
        /// The key whose value holds the reference, e.g. `collectors[0].token_file`.
        key: String,
        /// Why, in lowercase, naming the variable.
        reason: String,
    },
}

/// Parses `text` into `T`, expanding `${NAME}` in every string value from the
/// process environment.
pub fn from_toml<T: DeserializeOwned>(text: &str) -> Result<T, Error> {
    from_toml_with(text, |name| std::env::var(name).ok())
}

/// [`from_toml`] with the variables looked up by `lookup` (tests).
pub fn from_toml_with<T: DeserializeOwned>(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<T, Error> {
    let mut doc = DeTable::parse(text)?;
    // Every reference is tried; the error reported is the first in the file.
    let mut errors = Vec::new();
    expand_table(doc.get_mut(), "", &lookup, &mut errors);
    if let Some((_, e)) = errors.into_iter().min_by_key(|(at, _)| *at) {
        return Err(e);
    }
    let de = toml::de::Deserializer::from(doc);
    T::deserialize(de).map_err(|mut e| {
        e.set_input(Some(text));
        Error::Toml(e)
    })
}

fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// Errors with the byte offset of their value in the file.
type Found = Vec<(usize, Error)>;

fn expand_table(
    table: &mut DeTable<'_>,
    path: &str,
    lookup: &impl Fn(&str) -> Option<String>,
    errors: &mut Found,
) {
    for (k, v) in table.iter_mut() {
        let key = child(path, k.get_ref());
        let at = v.span().start;
        expand_value(v.get_mut(), at, &key, lookup, errors);
    }
}

fn expand_value(
    value: &mut DeValue<'_>,
    at: usize,
    key: &str,
    lookup: &impl Fn(&str) -> Option<String>,
    errors: &mut Found,
) {
    match value {
        DeValue::String(s) => match expand_str(s, key, lookup) {
            Ok(Some(expanded)) => *s = Cow::Owned(expanded),
            Ok(None) => {}
            Err(e) => errors.push((at, e)),
        },
        DeValue::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                let at = item.span().start;
                expand_value(item.get_mut(), at, &format!("{key}[{i}]"), lookup, errors);
            }
        }
        DeValue::Table(t) => expand_table(t, key, lookup, errors),
        DeValue::Integer(_) | DeValue::Float(_) | DeValue::Boolean(_) | DeValue::Datetime(_) => {}
    }
}

/// Expands one string value; `None` when it holds no `${` (left as it is).
pub fn expand_str(
    s: &str,
    key: &str,
    lookup: &impl Fn(&str) -> Option<String>,
) -> Result<Option<String>, Error> {
    if !s.contains("${") {
        return Ok(None);
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        if let Some(after) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
        } else if let Some(after) = tail.strip_prefix("${") {
            let Some(end) = after.find('}') else {
                return Err(bad_reference(key, tail));
            };
            let name = &after[..end];
            if !is_name(name) {
                return Err(bad_reference(key, tail));
            }
            match lookup(name) {
                Some(v) => out.push_str(&v),
                None => {
                    return Err(Error::Env {
                        key: key.to_owned(),
                        reason: format!("environment variable {name} is not set"),
                    })
                }
            }
            rest = &after[end + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    Ok(Some(out))
}

fn bad_reference(key: &str, at: &str) -> Error {
    let shown: String = at.chars().take(40).collect();
    Error::Env {
        key: key.to_owned(),
        reason: format!(
            "{shown:?}: `${{` must start a reference `${{NAME}}` (NAME: letters, digits, '_'; not a digit first); write `$${{` for a literal `${{`"
        ),
    }
}

fn is_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Conf {
        node: Option<String>,
        #[serde(default)]
        port: u16,
        #[serde(default)]
        list: Vec<String>,
        #[serde(default)]
        collectors: Vec<Coll>,
    }
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Coll {
        url: String,
        token_file: String,
    }

    fn env(name: &str) -> Option<String> {
        match name {
            "NODE_NAME" => Some("gpu-node-7".into()),
            "EMPTY" => Some(String::new()),
            "DOLLAR" => Some("${NODE_NAME}".into()),
            _ => None,
        }
    }

    fn parse(text: &str) -> Result<Conf, Error> {
        from_toml_with(text, env)
    }

    #[test]
    fn expands_values_in_tables_arrays_and_inline_tables() {
        let c = parse(
            r#"
node = "${NODE_NAME}"
list = ["a-${NODE_NAME}-b", "${EMPTY}x"]
[[collectors]]
url = "https://c:9400"
token_file = "/etc/dcwatt/tokens/${NODE_NAME}"
"#,
        )
        .unwrap();
        assert_eq!(c.node.as_deref(), Some("gpu-node-7"));
        assert_eq!(c.list, ["a-gpu-node-7-b", "x"]);
        assert_eq!(c.collectors[0].token_file, "/etc/dcwatt/tokens/gpu-node-7");
        assert_eq!(c.collectors[0].url, "https://c:9400");
    }

    #[test]
    fn other_dollars_and_the_escape_are_kept() {
        let c = parse(
            r#"
node = "$x${NODE_NAME}$HOME$ $${ $$${NODE_NAME}"
list = ["pa$$word", "$${NODE_NAME}", "$", "${DOLLAR}"]
"#,
        )
        .unwrap();
        assert_eq!(
            c.node.as_deref(),
            Some("$xgpu-node-7$HOME$ ${ $${NODE_NAME}")
        );
        // No `${` at all: left exactly as written.
        assert_eq!(c.list[0], "pa$$word");
        assert_eq!(c.list[1], "${NODE_NAME}");
        assert_eq!(c.list[2], "$");
        // A variable's value is not expanded again.
        assert_eq!(c.list[3], "${NODE_NAME}");
    }

    #[test]
    fn unset_variable_names_key_and_variable() {
        let e = parse("[[collectors]]\nurl = \"u\"\ntoken_file = \"/t/${NOPE}\"\n")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "collectors[0].token_file: environment variable NOPE is not set"
        );
        let e = parse("list = [\"ok\", \"${NOPE}\"]\n")
            .unwrap_err()
            .to_string();
        assert_eq!(e, "list[1]: environment variable NOPE is not set");
        // Several: the first in the file is named, whatever the keys' order.
        let e =
            parse("node = \"${ZED}\"\n[[collectors]]\nurl = \"${ALPHA}\"\ntoken_file = \"t\"\n")
                .unwrap_err()
                .to_string();
        assert_eq!(e, "node: environment variable ZED is not set");
        let e = parse("list = [\"${B}\"]\nnode = \"${A}\"\n")
            .unwrap_err()
            .to_string();
        assert_eq!(e, "list[0]: environment variable B is not set");
    }

    #[test]
    fn malformed_references_name_the_key() {
        for bad in [
            "${",
            "${}",
            "${1A}",
            "${A-B}",
            "x${NODE_NAME",
            "${ NODE_NAME}",
        ] {
            let text = format!("node = {bad:?}\n");
            let e = parse(&text).unwrap_err().to_string();
            assert!(e.starts_with("node: "), "{bad}: {e}");
            assert!(e.contains("$${"), "{bad}: {e}");
        }
    }

    #[test]
    fn toml_errors_keep_line_and_key() {
        let e = parse("node = \"${NODE_NAME}\"\n\nport = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 3"), "{e}");
        assert!(e.contains("port"), "{e}");
        let e = parse("node = \"a\"\nbogus = 1\n").unwrap_err().to_string();
        assert!(e.contains("unknown field `bogus`"), "{e}");
        assert!(e.contains("line 2"), "{e}");
        assert!(parse("node = \n").is_err());
    }

    #[test]
    fn numbers_and_keys_untouched() {
        let c = parse("port = 9400\n").unwrap();
        assert_eq!(c.port, 9400);
        assert!(c.node.is_none());
    }
}
