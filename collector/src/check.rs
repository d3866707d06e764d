//! A configured value's checks: the one error a configuration gets
//! ([`ConfigError`], which `config` re-exports), [`invalid`], and the id
//! check. A leaf: the domain modules that validate their own sections
//! (leases, power events) use it without depending on `config`.

/// A configuration error: the key (TOML path) and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// TOML syntax or a type/unknown-key error (toml's text names the key and line).
    #[error("{0}")]
    Parse(String),
    /// A value that parses but is not acceptable.
    #[error("{key}: {reason}")]
    Invalid {
        /// The TOML path of the key, e.g. `meters[2].it_point`.
        key: String,
        /// Why it is not acceptable.
        reason: String,
    },
}

/// A [`ConfigError::Invalid`].
pub fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

/// Ids become label values and URL path segments: keep them plain.
pub fn check_id(key: &str, id: &str) -> Result<(), ConfigError> {
    if id.is_empty() || id.len() > 128 {
        return Err(invalid(key, "must be 1 to 128 characters"));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
    {
        return Err(invalid(
            key,
            format!("{id:?} may only contain ASCII letters, digits, '-', '_', '.', ':'"),
        ));
    }
    Ok(())
}
