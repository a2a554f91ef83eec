//! Bearer-token authentication: the token file (principal and SHA-256 of
//! each token; the tokens themselves are never stored), `authorization:
//! Bearer <token>` parsing, and the lookup from a presented token to its
//! principal.
//!
//! Token file format, one entry a line (the `sha256sum` output layout, so
//! `printf %s "$TOKEN" | sha256sum` also works):
//!
//! ```text
//! # comment
//! 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08  alice
//! ```
//!
//! A presented token is hashed and looked up in a map keyed by that hash, so
//! no comparison ever touches a stored secret byte by byte.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Longest token accepted, in bytes (longer is malformed, never hashed).
pub const TOKEN_BYTES_MAX: usize = 4096;
/// Largest token file read.
pub const TOKEN_FILE_BYTES_MAX: u64 = 16 << 20;
/// Most entries a token file may hold.
pub const TOKEN_ENTRIES_MAX: usize = 100_000;
/// Longest principal name, in bytes.
pub const PRINCIPAL_BYTES_MAX: usize = 256;
/// Bytes of a SHA-256 digest.
pub const TOKEN_HASH_BYTES: usize = 32;

/// The SHA-256 of a token, as stored in the token file.
pub type TokenHash = [u8; TOKEN_HASH_BYTES];

/// Why a token file or a token to hash was refused. Messages never contain
/// a token.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The file could not be read.
    #[error("cannot read token file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is larger than [`TOKEN_FILE_BYTES_MAX`] or has more than
    /// [`TOKEN_ENTRIES_MAX`] entries.
    #[error("token file {path} is too large: {reason}")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Which bound it exceeds.
        reason: String,
    },
    /// A line is not `<64 hex digits> <principal>`.
    #[error("token file {path} line {line}: {reason}")]
    Line {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// A token given to `hash-token` is not a valid bearer token.
    #[error("invalid token: {0}")]
    InvalidToken(&'static str),
}

/// Principals by the SHA-256 of their tokens, as loaded from the token file.
#[derive(Debug, Clone, Default)]
pub struct TokenTable {
    by_hash: HashMap<TokenHash, String>,
}

impl TokenTable {
    /// Reads and parses a token file.
    pub fn load(path: &Path) -> Result<Self, TokenError> {
        let read_error = |source| TokenError::Read {
            path: path.to_owned(),
            source,
        };
        let size_bytes = std::fs::metadata(path).map_err(read_error)?.len();
        if size_bytes > TOKEN_FILE_BYTES_MAX {
            return Err(TokenError::TooLarge {
                path: path.to_owned(),
                reason: format!("{size_bytes} bytes, limit {TOKEN_FILE_BYTES_MAX}"),
            });
        }
        let text = std::fs::read_to_string(path).map_err(read_error)?;
        Self::parse(&text, path)
    }

    /// Parses token file text; `path` only names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, TokenError> {
        let mut by_hash = HashMap::new();
        for (index, line) in text.lines().enumerate() {
            let line_error = |reason: String| TokenError::Line {
                path: path.to_owned(),
                line: index + 1,
                reason,
            };
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (hash, principal) = parse_line(line).map_err(line_error)?;
            if by_hash.len() == TOKEN_ENTRIES_MAX {
                return Err(TokenError::TooLarge {
                    path: path.to_owned(),
                    reason: format!("more than {TOKEN_ENTRIES_MAX} entries"),
                });
            }
            if by_hash.insert(hash, principal.to_owned()).is_some() {
                return Err(line_error(
                    "the same token hash appears twice (each token must map to one principal)"
                        .to_owned(),
                ));
            }
        }
        Ok(Self { by_hash })
    }

    /// The principal a token belongs to, if any.
    pub fn principal_of(&self, token: &str) -> Option<&str> {
        self.by_hash.get(&hash_token(token)).map(String::as_str)
    }

    /// Every (hash, principal) entry.
    pub fn entries(&self) -> impl Iterator<Item = (&TokenHash, &str)> {
        self.by_hash
            .iter()
            .map(|(hash, principal)| (hash, principal.as_str()))
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    /// Whether the table has no token.
    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }
}

fn parse_line(line: &str) -> Result<(TokenHash, &str), String> {
    let Some((hash_hex, principal)) = line.split_once(char::is_whitespace) else {
        return Err("expected `<sha256 hex> <principal>`".to_owned());
    };
    let mut hash = [0u8; TOKEN_HASH_BYTES];
    hex::decode_to_slice(hash_hex, &mut hash).map_err(|_| {
        "the hash must be 64 hex digits (SHA-256); make it with `shardlog hash-token`".to_owned()
    })?;
    let principal = principal.trim();
    validate_principal(principal)?;
    Ok((hash, principal))
}

/// Checks a principal name from the token file or config: 1 to
/// [`PRINCIPAL_BYTES_MAX`] printable ASCII characters, `*` excluded (it means
/// "any principal" in rules).
pub fn validate_principal(principal: &str) -> Result<(), String> {
    if principal.is_empty() || principal.len() > PRINCIPAL_BYTES_MAX {
        return Err(format!(
            "principal must be 1 to {PRINCIPAL_BYTES_MAX} bytes"
        ));
    }
    if principal == "*" {
        return Err("\"*\" is not a principal name (it means any principal in rules)".to_owned());
    }
    if !principal
        .bytes()
        .all(|byte| byte.is_ascii_graphic() || byte == b' ')
    {
        return Err(format!("principal {principal:?} must be printable ASCII"));
    }
    Ok(())
}

/// SHA-256 of a token's bytes.
pub fn hash_token(token: &str) -> TokenHash {
    Sha256::digest(token.as_bytes()).into()
}

/// The token file line for `token` (hex digest, then the principal if
/// given). Refuses what a client could not send as a bearer token.
pub fn token_file_line(token: &str, principal: Option<&str>) -> Result<String, TokenError> {
    validate_token(token).map_err(TokenError::InvalidToken)?;
    let hash = hex::encode(hash_token(token));
    match principal {
        Some(principal) => {
            validate_principal(principal).map_err(|_| {
                TokenError::InvalidToken("principal must be 1-256 printable ASCII characters")
            })?;
            Ok(format!("{hash}  {principal}"))
        }
        None => Ok(hash),
    }
}

/// Why an `authorization` value is not a usable bearer token. Never
/// carries the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BearerError {
    /// Not `Bearer <token>` (other scheme, no token, repeated header).
    Malformed,
}

/// Extracts the token from an `authorization` value `Bearer <token>` (the
/// scheme is case-insensitive, RFC 6750's b64token charset).
pub fn parse_bearer(value: &str) -> Result<&str, BearerError> {
    let (scheme, token) = value.split_once(' ').ok_or(BearerError::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(BearerError::Malformed);
    }
    let token = token.trim_start_matches(' ');
    validate_token(token).map_err(|_| BearerError::Malformed)?;
    Ok(token)
}

/// Checks RFC 6750 `b64token` syntax: `[A-Za-z0-9-._~+/]+` then `=`*.
fn validate_token(token: &str) -> Result<(), &'static str> {
    if token.is_empty() || token.len() > TOKEN_BYTES_MAX {
        return Err("a token must be 1 to 4096 bytes");
    }
    let body = token.trim_end_matches('=');
    let is_token_byte = |byte: u8| {
        byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
    };
    if body.is_empty() || !body.bytes().all(is_token_byte) {
        return Err("a token may hold only A-Z a-z 0-9 - . _ ~ + / (then trailing =)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEST_TOKEN: &str = "s3cret-token";

    #[test]
    fn file_maps_hash_to_principal() {
        let line = token_file_line(TEST_TOKEN, Some("alice")).expect("valid");
        let text = format!("# tokens\n\n{line}\n");
        let table = TokenTable::parse(&text, Path::new("t")).expect("parses");
        assert_eq!(table.len(), 1);
        assert_eq!(table.principal_of(TEST_TOKEN), Some("alice"));
        assert_eq!(table.principal_of("other"), None);
    }

    #[test]
    fn hash_matches_sha256sum() {
        // printf %s test | sha256sum
        assert_eq!(
            token_file_line("test", None).expect("valid"),
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        );
    }

    #[test]
    fn bad_lines_are_refused_with_their_number() {
        for text in [
            "abc alice",
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08 *",
        ] {
            let error = TokenTable::parse(&format!("\n{text}"), Path::new("t")).unwrap_err();
            assert!(error.to_string().contains("line 2"), "{error}");
        }
        let line = token_file_line(TEST_TOKEN, Some("a")).expect("valid");
        let twice = format!("{line}\n{line}");
        assert!(TokenTable::parse(&twice, Path::new("t")).is_err());
    }

    #[test]
    fn bearer_values() {
        assert_eq!(parse_bearer("Bearer abc"), Ok("abc"));
        assert_eq!(parse_bearer("bearer abc=="), Ok("abc=="));
        for bad in [
            "abc",
            "Basic abc",
            "Bearer ",
            "Bearer a b",
            "Bearer ===",
            "Bearer a\"b",
        ] {
            assert_eq!(parse_bearer(bad), Err(BearerError::Malformed), "{bad}");
        }
        let long = format!("Bearer {}", "a".repeat(TOKEN_BYTES_MAX + 1));
        assert_eq!(parse_bearer(&long), Err(BearerError::Malformed));
    }

    #[test]
    fn errors_never_echo_the_token() {
        let error = token_file_line("bad token!", None).unwrap_err();
        assert!(!error.to_string().contains("bad token!"));
    }
}
