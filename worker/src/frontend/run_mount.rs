//! `RUN --mount=…`: one flag value is a CSV record of `key=value` fields (and the bare
//! `ro`, `rw`, `required`), parsed the way BuildKit v0.11's Dockerfile frontend parses it:
//! the default type is `bind`, values are expanded with the step's variables (except
//! `from`, which names a stage or image and must not hold a variable), and the same
//! messages for unknown keys, types, sharing modes and misplaced options, with a
//! "did you mean" hint, since clients and tests match on them.

use super::suggest;
use super::words::{expand, WordError};

/// What a mount is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountType {
    /// A directory of the context, a stage or an image.
    Bind,
    /// A directory kept by the worker across builds.
    Cache,
    /// A fresh tmpfs.
    Tmpfs,
    /// A secret file from the client's session.
    Secret,
    /// An SSH agent socket forwarded to the client's session.
    Ssh,
}

const TYPES: &[&str] = &["bind", "cache", "tmpfs", "secret", "ssh"];
const KEYS: &[&str] = &[
    "type",
    "from",
    "source",
    "target",
    "readonly",
    "id",
    "sharing",
    "required",
    "mode",
    "uid",
    "gid",
    "src",
    "dst",
    "ro",
    "rw",
    "readwrite",
];

impl MountType {
    fn name(self) -> &'static str {
        match self {
            MountType::Bind => "bind",
            MountType::Cache => "cache",
            MountType::Tmpfs => "tmpfs",
            MountType::Secret => "secret",
            MountType::Ssh => "ssh",
        }
    }
}

/// How concurrent builds share a cache mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sharing {
    /// All at once.
    #[default]
    Shared,
    /// One at a time; a second user gets a fresh directory.
    Private,
    /// One at a time; others wait.
    Locked,
}

/// One parsed `--mount`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunMount {
    /// The type.
    pub typ: MountType,
    /// `from`: a stage or image.
    pub from: Option<String>,
    /// `source`/`src`.
    pub source: String,
    /// `target`/`dst`/`destination`.
    pub target: String,
    /// Read-only (default for bind, secret, ssh).
    pub readonly: bool,
    /// `size` of a tmpfs, bytes.
    pub size: Option<u64>,
    /// `id` of a cache, secret or ssh mount.
    pub id: String,
    /// `sharing` of a cache.
    pub sharing: Sharing,
    /// `required` (secret, ssh).
    pub required: bool,
    /// `mode` (octal).
    pub mode: Option<u32>,
    /// `uid`.
    pub uid: Option<u32>,
    /// `gid`.
    pub gid: Option<u32>,
}

/// Why a `--mount` value was refused (worded as BuildKit words it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MountError {
    /// Not a CSV record.
    #[error("failed to parse csv mounts: {0}")]
    Csv(&'static str),
    /// A key with no `=value` that takes one.
    #[error("invalid field '{0}' must be a key=value pair")]
    Field(String),
    /// An unknown key.
    #[error("unexpected key '{key}' in '{field}'{}", suggest::near_hint(.key, KEYS))]
    Key {
        /// The key.
        key: String,
        /// Its field.
        field: String,
    },
    /// A key the type does not take.
    #[error("unexpected key '{key}' for mount type '{typ}'")]
    KeyForType {
        /// The key.
        key: String,
        /// The type.
        typ: &'static str,
    },
    /// An unknown type.
    #[error("unsupported mount type {typ:?}{hint}", typ = .0, hint = suggest::near_hint(.0, TYPES))]
    Type(String),
    /// An unknown sharing mode.
    #[error("unsupported sharing value {0:?}")]
    Sharing(String),
    /// A value that does not parse.
    #[error("invalid value for {key}: {value}")]
    Value {
        /// The key.
        key: String,
        /// The value.
        value: String,
    },
    /// A mode, uid or gid that does not parse.
    #[error("invalid value {value} for {key}")]
    Number {
        /// The key.
        key: &'static str,
        /// The value.
        value: String,
    },
    /// mode/uid/gid on a type without file ownership.
    #[error("{key} not allowed for {typ:?} type mounts")]
    FileInfo {
        /// The key.
        key: &'static str,
        /// The type.
        typ: &'static str,
    },
    /// `sharing` on something other than a cache.
    #[error("invalid cache sharing set for {0} mount")]
    SharingNotCache(&'static str),
    /// `from` holding a variable.
    #[error("'from' doesn't support variable expansion, define alias stage instead")]
    FromVariable,
    /// Secret-specific rules.
    #[error("{0}")]
    Secret(&'static str),
    /// `ssh` with a source.
    #[error("ssh does not support source")]
    SshSource,
    /// A target that is the root.
    #[error("invalid mount target {0:?}")]
    Target(String),
    /// A variable that does not expand.
    #[error(transparent)]
    Words(#[from] WordError),
}

/// Splits one CSV record (`"` quotes fields, `""` is a quote inside them).
fn csv_fields(s: &str) -> Result<Vec<String>, MountError> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars().peekable();
    let mut at_start = true;
    while let Some(c) = chars.next() {
        if c == '"' && at_start {
            loop {
                match chars.next() {
                    None => {
                        return Err(MountError::Csv("extraneous or missing \" in quoted-field"))
                    }
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        cur.push('"');
                    }
                    Some('"') => break,
                    Some(c) => cur.push(c),
                }
            }
            match chars.peek() {
                None | Some(',') => {}
                Some(_) => return Err(MountError::Csv("extraneous or missing \" in quoted-field")),
            }
            at_start = false;
        } else if c == ',' {
            out.push(std::mem::take(&mut cur));
            at_start = true;
        } else if c == '"' {
            return Err(MountError::Csv("bare \" in non-quoted-field"));
        } else {
            cur.push(c);
            at_start = false;
        }
    }
    out.push(cur);
    Ok(out)
}

/// Go's `strconv.ParseBool`.
fn parse_bool(key: &str, v: &str) -> Result<bool, MountError> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(MountError::Value {
            key: key.into(),
            value: v.into(),
        }),
    }
}

/// docker's `RAMInBytes`: a number with an optional `b`, `k`, `m`, `g`, `t`, `p` suffix
/// (binary multiples, an optional trailing `b`/`ib`).
fn ram_in_bytes(v: &str) -> Option<u64> {
    let l = v.trim().to_ascii_lowercase();
    let num_end = l
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(l.len());
    let (num, unit) = l.split_at(num_end);
    let n: f64 = num.parse().ok()?;
    let unit = unit.trim();
    let unit = unit
        .strip_suffix("ib")
        .or_else(|| unit.strip_suffix('b'))
        .unwrap_or(unit);
    let mul: u64 = match unit {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        "p" => 1 << 50,
        _ => return None,
    };
    let bytes = n * mul as f64;
    (bytes.is_finite() && bytes >= 0.0 && bytes < u64::MAX as f64).then_some(bytes as u64)
}

fn number(key: &'static str, v: &str, radix: u32) -> Result<u32, MountError> {
    u32::from_str_radix(v, radix).map_err(|_| MountError::Number {
        key,
        value: v.into(),
    })
}

/// Parses one `--mount` value, expanding values with `lookup`.
pub fn parse(
    value: &str,
    escape: char,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<RunMount, MountError> {
    let mut m = RunMount {
        typ: MountType::Bind,
        from: None,
        source: String::new(),
        target: String::new(),
        readonly: true,
        size: None,
        id: String::new(),
        sharing: Sharing::Shared,
        required: false,
        mode: None,
        uid: None,
        gid: None,
    };
    let mut ro_auto = true;
    let mut sharing_set = false;
    for field in csv_fields(value)? {
        let (key, raw) = match field.split_once('=') {
            Some((k, v)) => (k.to_ascii_lowercase(), Some(v)),
            None => (field.to_ascii_lowercase(), None),
        };
        let Some(raw) = raw else {
            match key.as_str() {
                "readonly" | "ro" => {
                    m.readonly = true;
                    ro_auto = false;
                }
                "readwrite" | "rw" => {
                    m.readonly = false;
                    ro_auto = false;
                }
                "required" if matches!(m.typ, MountType::Secret | MountType::Ssh) => {
                    m.required = true
                }
                "required" => {
                    return Err(MountError::KeyForType {
                        key,
                        typ: m.typ.name(),
                    })
                }
                _ => return Err(MountError::Field(field)),
            }
            continue;
        };
        let v = if key == "from" {
            if raw
                .char_indices()
                .any(|(i, c)| c == '$' && i + 1 < raw.len())
            {
                return Err(MountError::FromVariable);
            }
            raw.to_string()
        } else {
            expand(raw, escape, lookup)?
        };
        match key.as_str() {
            "type" => {
                m.typ = match v.to_ascii_lowercase().as_str() {
                    "bind" => MountType::Bind,
                    "cache" => MountType::Cache,
                    "tmpfs" => MountType::Tmpfs,
                    "secret" => MountType::Secret,
                    "ssh" => MountType::Ssh,
                    _ => return Err(MountError::Type(v)),
                }
            }
            "from" => m.from = Some(v),
            "source" | "src" => m.source = v,
            "target" | "dst" | "destination" => m.target = v,
            "readonly" | "ro" => {
                m.readonly = parse_bool(&key, &v)?;
                ro_auto = false;
            }
            "readwrite" | "rw" => {
                m.readonly = !parse_bool(&key, &v)?;
                ro_auto = false;
            }
            "required" if matches!(m.typ, MountType::Secret | MountType::Ssh) => {
                m.required = parse_bool(&key, &v)?
            }
            "size" if m.typ == MountType::Tmpfs => {
                m.size = Some(ram_in_bytes(&v).ok_or(MountError::Value {
                    key: key.clone(),
                    value: v.clone(),
                })?)
            }
            "required" | "size" => {
                return Err(MountError::KeyForType {
                    key,
                    typ: m.typ.name(),
                })
            }
            "id" => m.id = v,
            "sharing" => {
                m.sharing = match v.to_ascii_lowercase().as_str() {
                    "shared" => Sharing::Shared,
                    "private" => Sharing::Private,
                    "locked" => Sharing::Locked,
                    _ => return Err(MountError::Sharing(v)),
                };
                sharing_set = true;
            }
            "mode" => m.mode = Some(number("mode", &v, 8)?),
            "uid" => m.uid = Some(number("uid", &v, 10)?),
            "gid" => m.gid = Some(number("gid", &v, 10)?),
            _ => return Err(MountError::Key { key, field }),
        }
    }
    let file_info = matches!(m.typ, MountType::Secret | MountType::Ssh | MountType::Cache);
    for (key, set) in [
        ("mode", m.mode.is_some()),
        ("uid", m.uid.is_some()),
        ("gid", m.gid.is_some()),
    ] {
        if set && !file_info {
            return Err(MountError::FileInfo {
                key,
                typ: m.typ.name(),
            });
        }
    }
    if ro_auto {
        m.readonly = !matches!(m.typ, MountType::Cache | MountType::Tmpfs);
    }
    if sharing_set && m.typ != MountType::Cache {
        return Err(MountError::SharingNotCache(m.typ.name()));
    }
    match m.typ {
        MountType::Secret => {
            if m.from.is_some() {
                return Err(MountError::Secret("secret mount should not have a from"));
            }
            if m.source.is_empty() && m.target.is_empty() && m.id.is_empty() {
                return Err(MountError::Secret(
                    "invalid secret mount. one of source, target required",
                ));
            }
            if !m.source.is_empty() && !m.id.is_empty() {
                return Err(MountError::Secret("both source and id can't be set"));
            }
        }
        MountType::Ssh if !m.source.is_empty() => return Err(MountError::SshSource),
        _ => {}
    }
    Ok(m)
}

/// `/`-joins and cleans `p` (relative to `cwd` when not absolute), like Go's `path.Join`.
pub fn clean_target(cwd: &str, p: &str) -> String {
    let joined = if p.starts_with('/') {
        p.to_string()
    } else {
        format!("{}/{p}", if cwd.is_empty() { "/" } else { cwd })
    };
    let mut parts: Vec<&str> = Vec::new();
    for c in joined.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    format!("/{}", parts.join("/"))
}

impl RunMount {
    /// The secret's ID: `id`, else `source`, else the target's last part.
    pub fn secret_id(&self) -> String {
        if !self.source.is_empty() {
            return self.source.clone();
        }
        if !self.id.is_empty() {
            return self.id.clone();
        }
        clean_target("/", &self.target)
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_string()
    }

    /// Where the mount goes in the step: the target (relative to `cwd`), or a secret's
    /// default `/run/secrets/<id>`, an SSH socket's `/run/buildkit/ssh_agent.N`.
    pub fn target_in(&self, cwd: &str, n: usize) -> Result<String, MountError> {
        let t = match (self.typ, self.target.is_empty()) {
            (MountType::Secret, true) => {
                let id = self.secret_id();
                let base = id.rsplit('/').next().unwrap_or_default().to_string();
                format!("/run/secrets/{base}")
            }
            (MountType::Ssh, true) => format!("/run/buildkit/ssh_agent.{n}"),
            _ => clean_target(cwd, &self.target),
        };
        if t == "/" {
            return Err(MountError::Target(t));
        }
        Ok(t)
    }

    /// The cache ID: `id`, else the cleaned target.
    pub fn cache_id(&self) -> String {
        if self.id.is_empty() {
            clean_target("/", &self.target)
        } else {
            self.id.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<RunMount, MountError> {
        let vars = |n: &str| (n == "T").then(|| "cache".to_string());
        parse(s, '\\', &vars)
    }

    #[test]
    fn defaults_types_and_keys() {
        let m = p("target=/ctx").unwrap();
        assert_eq!((m.typ, m.readonly), (MountType::Bind, true));
        let m = p("type=cache,target=/c,sharing=locked,uid=1001,gid=1002,mode=0751").unwrap();
        assert_eq!(m.typ, MountType::Cache);
        assert!(!m.readonly);
        assert_eq!(m.sharing, Sharing::Locked);
        assert_eq!(
            (m.uid, m.gid, m.mode),
            (Some(1001), Some(1002), Some(0o751))
        );
        assert_eq!(m.cache_id(), "/c");
        let m = p("from=build,src=out,target=/out,rw").unwrap();
        assert_eq!(m.from.as_deref(), Some("build"));
        assert!(!m.readonly);
        let m = p("type=$T,target=/x").unwrap();
        assert_eq!(m.typ, MountType::Cache);
        let m = p("type=tmpfs,target=/dev/shm,size=128m").unwrap();
        assert_eq!(m.size, Some(128 << 20));
        let m = p("type=secret,id=mysecret,required").unwrap();
        assert!(m.required && m.readonly);
        assert_eq!(m.target_in("/", 0).unwrap(), "/run/secrets/mysecret");
        let m = p("type=secret,target=/a/b.txt").unwrap();
        assert_eq!(m.secret_id(), "b.txt");
        let m = p("\"type=bind\",\"target=/a,b\"").unwrap();
        assert_eq!(m.target, "/a,b");
        assert_eq!(
            p("target=rel").unwrap().target_in("/w", 0).unwrap(),
            "/w/rel"
        );
    }

    #[test]
    fn errors_are_worded_as_buildkit_words_them() {
        let e = |s: &str| p(s).unwrap_err().to_string();
        assert_eq!(
            e("typ=tmpfs"),
            "unexpected key 'typ' in 'typ=tmpfs' (did you mean type?)"
        );
        assert_eq!(
            e("type=tmp"),
            "unsupported mount type \"tmp\" (did you mean tmpfs?)"
        );
        assert_eq!(
            e("from=$ttt,type=cache,target=/tmp"),
            "'from' doesn't support variable expansion, define alias stage instead"
        );
        assert_eq!(
            e("type=bind,sharing=locked,target=/x"),
            "invalid cache sharing set for bind mount"
        );
        assert_eq!(e("type=cache,sharing=x"), "unsupported sharing value \"x\"");
        assert_eq!(
            e("type=bind,uid=1"),
            "uid not allowed for \"bind\" type mounts"
        );
        assert_eq!(
            e("type=cache,size=1"),
            "unexpected key 'size' for mount type 'cache'"
        );
        assert_eq!(
            e("type=cache,required"),
            "unexpected key 'required' for mount type 'cache'"
        );
        assert_eq!(e("type=cache,mode=9"), "invalid value 9 for mode");
        assert_eq!(e("type=cache,ro=maybe"), "invalid value for ro: maybe");
        assert_eq!(e("bogus"), "invalid field 'bogus' must be a key=value pair");
        assert_eq!(
            e("type=secret"),
            "invalid secret mount. one of source, target required"
        );
        assert_eq!(e("type=ssh,src=x"), "ssh does not support source");
        assert!(e("\"target=/x").starts_with("failed to parse csv mounts"));
        assert_eq!(
            p("target=/")
                .unwrap()
                .target_in("/", 0)
                .unwrap_err()
                .to_string(),
            "invalid mount target \"/\""
        );
    }

    #[test]
    fn sizes_are_binary_multiples() {
        assert_eq!(ram_in_bytes("128m"), Some(134217728));
        assert_eq!(ram_in_bytes("1g"), Some(1 << 30));
        assert_eq!(ram_in_bytes("512"), Some(512));
        assert_eq!(ram_in_bytes("2kb"), Some(2048));
        assert_eq!(ram_in_bytes("x"), None);
    }
}
