//! `WWW-Authenticate` parsing (RFC 7235 auth-params, quoted strings with escapes), bounded
//! and strict: a malformed header is an error, never a guess.

/// One challenge from a 401.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// `Basic realm=…`.
    Basic,
    /// `Bearer realm=…,service=…,scope=…`.
    Bearer {
        /// Token endpoint.
        realm: String,
        /// Service name to ask for.
        service: Option<String>,
        /// Scope the registry asks for, if given.
        scope: Option<String>,
    },
}

/// Longest header parsed.
const MAX_HEADER: usize = 8192;

/// Why a `WWW-Authenticate` header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChallengeError {
    /// Longer than the parser reads.
    #[error("WWW-Authenticate header is longer than {MAX_HEADER} bytes")]
    TooLong,
    /// No auth scheme where one must start.
    #[error("expected an auth scheme")]
    NoScheme,
    /// A Bearer challenge names no token endpoint.
    #[error("Bearer challenge without realm")]
    NoRealm,
    /// Something that is neither a parameter nor a scheme.
    #[error("unexpected character at byte {0}")]
    Unexpected(usize),
    /// A quoted string that does not end.
    #[error("unterminated quoted string")]
    Unterminated,
    /// A quoted string whose bytes are not UTF-8.
    #[error("quoted string is not UTF-8")]
    NotUtf8,
    /// A backslash at the very end.
    #[error("dangling escape")]
    DanglingEscape,
    /// A control character inside a quoted string.
    #[error("control character in quoted string")]
    Control,
}

/// Parses a `WWW-Authenticate` header into the challenges we understand (Basic, Bearer);
/// other schemes are skipped; a malformed header or a Bearer without realm is an error.
pub fn parse_challenges(header: &str) -> Result<Vec<Challenge>, ChallengeError> {
    if header.len() > MAX_HEADER {
        return Err(ChallengeError::TooLong);
    }
    let mut out = Vec::new();
    let mut p = Parser {
        s: header.as_bytes(),
        i: 0,
    };
    p.ws();
    while !p.done() {
        let scheme = p.token().ok_or(ChallengeError::NoScheme)?;
        p.ws();
        let mut params: Vec<(String, String)> = Vec::new();
        // auth-params: name=value pairs separated by commas, until the next scheme.
        loop {
            let save = p.i;
            let Some(name) = p.token() else { break };
            p.ws();
            if !p.eat(b'=') {
                // Not a parameter: it is the next scheme.
                p.i = save;
                break;
            }
            p.ws();
            let value = if p.peek() == Some(b'"') {
                p.quoted()?
            } else if let Some(t) = p.token() {
                t
            } else {
                // token68 padding (`Negotiate abc==`): not a parameter we use.
                while p.eat(b'=') {}
                String::new()
            };
            params.push((name.to_ascii_lowercase(), value));
            // Separators (commas, blanks) before the next parameter or scheme.
            p.ws();
        }
        let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        match scheme.to_ascii_lowercase().as_str() {
            "basic" => out.push(Challenge::Basic),
            "bearer" => {
                let realm = get("realm")
                    .filter(|r| !r.is_empty())
                    .ok_or(ChallengeError::NoRealm)?;
                out.push(Challenge::Bearer {
                    realm,
                    service: get("service"),
                    scope: get("scope"),
                });
            }
            _ => {}
        }
        p.ws();
        if !p.done() && !p.token_start() {
            return Err(ChallengeError::Unexpected(p.i));
        }
    }
    Ok(out)
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn done(&self) -> bool {
        self.i >= self.s.len()
    }
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }
    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b',')) {
            self.i += 1;
        }
    }
    fn is_tchar(c: u8) -> bool {
        c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~/:".contains(&c)
    }
    fn token_start(&self) -> bool {
        self.peek().is_some_and(Self::is_tchar)
    }
    fn token(&mut self) -> Option<String> {
        let start = self.i;
        while self.peek().is_some_and(Self::is_tchar) {
            self.i += 1;
        }
        (self.i > start).then(|| String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
    }
    fn quoted(&mut self) -> Result<String, ChallengeError> {
        self.i += 1; // opening quote
        let mut out = Vec::new();
        loop {
            match self.peek() {
                None => return Err(ChallengeError::Unterminated),
                Some(b'"') => {
                    self.i += 1;
                    return String::from_utf8(out).map_err(|_| ChallengeError::NotUtf8);
                }
                Some(b'\\') => {
                    self.i += 1;
                    let c = self.peek().ok_or(ChallengeError::DanglingEscape)?;
                    out.push(c);
                    self.i += 1;
                }
                Some(c) if c < 0x20 && c != b'\t' => return Err(ChallengeError::Control),
                Some(c) => {
                    out.push(c);
                    self.i += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_and_basic() {
        let c = parse_challenges(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        )
        .unwrap();
        assert_eq!(
            c,
            vec![Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("registry.example".into()),
                scope: Some("repository:a/b:pull,push".into()),
            }]
        );
        assert_eq!(
            parse_challenges(r#"Basic realm="lab""#).unwrap(),
            vec![Challenge::Basic]
        );
        let both =
            parse_challenges(r#"Negotiate, Basic realm="x", Bearer realm="http://t/""#).unwrap();
        assert_eq!(both.len(), 2);
        let esc = parse_challenges(r#"Bearer realm="a\"b""#).unwrap();
        assert_eq!(
            esc,
            vec![Challenge::Bearer {
                realm: "a\"b".into(),
                service: None,
                scope: None
            }]
        );
    }

    #[test]
    fn malformed() {
        for bad in [
            r#"Bearer realm="unterminated"#,
            r#"Bearer service="x""#,
            "Bearer realm=\"a\u{1}b\"",
            r#"Bearer realm=="#,
            "\"",
        ] {
            assert!(parse_challenges(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_challenges(&"a".repeat(10_000)).is_err());
    }
}
