//! Identity and allowlist files (PROTOCOL.md §11.7): small TOML files a person can read and edit.
//!
//! Errors name the file, the line and the fix; an identity file that others can read is
//! reported so the caller can warn.

use std::fmt;
use std::path::{Path, PathBuf};
use std::string::{String, ToString};
use std::vec::Vec;
use std::{format, fs};

use serde::Deserialize;
use toml::Spanned;

use crate::identity::{AllowEntry, Allowlist, Identity, MethodPattern, Permissions, PublicKey};
use crate::topic::TopicFilter;

/// A file that could not be used: which, where, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileError {
    /// The file, when one was read.
    pub path: Option<PathBuf>,
    /// 1-based line of the problem, when known.
    pub line: Option<usize>,
    /// What is wrong and how to fix it.
    pub problem: String,
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(p) = &self.path {
            write!(f, "{}", p.display())?;
            if let Some(l) = self.line {
                write!(f, ":{l}")?;
            }
            f.write_str(": ")?;
        } else if let Some(l) = self.line {
            write!(f, "line {l}: ")?;
        }
        f.write_str(&self.problem)
    }
}

impl std::error::Error for FileError {}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].bytes().filter(|&b| b == b'\n').count() + 1
}

fn at<T>(text: &str, v: &Spanned<T>, problem: String) -> FileError {
    FileError { path: None, line: Some(line_of(text, v.span().start)), problem }
}

fn toml_error(text: &str, e: toml::de::Error) -> FileError {
    let line = e.span().map(|s| line_of(text, s.start));
    FileError { path: None, line, problem: e.message().to_string() }
}

fn with_path(path: &Path) -> impl Fn(FileError) -> FileError + '_ {
    move |mut e| {
        e.path = Some(path.to_path_buf());
        e
    }
}

fn read(path: &Path) -> Result<String, FileError> {
    fs::read_to_string(path).map_err(|e| FileError {
        path: Some(path.to_path_buf()),
        line: None,
        problem: e.to_string(),
    })
}

fn parse_key(text: &str, v: &Spanned<String>, what: &str) -> Result<[u8; 32], FileError> {
    let s = v.get_ref().trim();
    if s.len() != 64 {
        return Err(at(
            text,
            v,
            format!("{what} must be 64 hexadecimal digits (32 bytes), found {} characters", s.len()),
        ));
    }
    let mut k = [0u8; 32];
    crate::hex::decode_into(s, &mut k)
        .map_err(|i| at(text, v, format!("character {} of {what} is not a hexadecimal digit", i + 1)))?;
    Ok(k)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IdentityToml {
    name: Option<String>,
    public: Option<Spanned<String>>,
    secret: Spanned<String>,
}

/// A device's identity file: its key pair and the name it was made for.
#[derive(Debug, Clone)]
pub struct IdentityFile {
    /// The name given at creation (a default for the node's name).
    pub name: String,
    /// The key pair.
    pub identity: Identity,
}

/// Parses an identity file's text.
pub fn parse_identity(text: &str) -> Result<IdentityFile, FileError> {
    let t: IdentityToml = toml::from_str(text).map_err(|e| toml_error(text, e))?;
    let identity = Identity::from_secret(parse_key(text, &t.secret, "secret")?);
    if let Some(p) = &t.public {
        if parse_key(text, p, "public")? != identity.public().0 {
            return Err(at(
                text,
                p,
                "public does not belong to secret: the file was edited; restore it or make a new one".into(),
            ));
        }
    }
    Ok(IdentityFile { name: t.name.unwrap_or_default(), identity })
}

/// The text of a new identity file (keep it secret: mode 0600).
pub fn format_identity(name: &str, identity: &Identity) -> String {
    let mut secret = [0u8; 64];
    crate::hex::encode_into(identity.secret(), &mut secret);
    format!(
        "# Starling identity of {name:?}. Keep this file secret (chmod 600): it is the device's private key.\n\
         # Put the public key on the network's allowlist with `starling allow add`.\n\
         name = {name:?}\n\
         public = \"{}\"\n\
         secret = \"{}\"\n",
        identity.public(),
        std::str::from_utf8(&secret).expect("hex is ASCII"),
    )
}

/// Reads an identity file. The second value is a warning when the file is readable by others.
pub fn read_identity(path: &Path) -> Result<(IdentityFile, Option<String>), FileError> {
    let text = read(path)?;
    let id = parse_identity(&text).map_err(with_path(path))?;
    Ok((id, loose_permissions(path)))
}

#[cfg(unix)]
fn loose_permissions(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(path).ok()?.permissions().mode();
    (mode & 0o077 != 0).then(|| {
        format!(
            "{}: the identity file is readable by other users (mode {:o}); restrict it with `chmod 600 {}`",
            path.display(),
            mode & 0o777,
            path.display()
        )
    })
}

#[cfg(not(unix))]
fn loose_permissions(_: &Path) -> Option<String> {
    None
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AllowlistToml {
    network: Option<String>,
    #[serde(default)]
    member: Vec<MemberToml>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MemberToml {
    name: Spanned<String>,
    key: Spanned<String>,
    #[serde(default)]
    publish: Vec<Spanned<String>>,
    #[serde(default)]
    subscribe: Vec<Spanned<String>>,
    #[serde(default)]
    call: Vec<Spanned<String>>,
}

/// The network name used when an allowlist gives none.
pub const DEFAULT_NETWORK: &str = "starling";

/// Parses an allowlist file's text (format in PROTOCOL.md §11.7).
pub fn parse_allowlist(text: &str) -> Result<Allowlist, FileError> {
    let t: AllowlistToml = toml::from_str(text).map_err(|e| toml_error(text, e))?;
    let mut entries: Vec<AllowEntry> = Vec::with_capacity(t.member.len());
    for m in &t.member {
        let key = PublicKey(parse_key(text, &m.key, "key")?);
        if key.is_low_order() {
            return Err(at(text, &m.key, "key is a small-order Curve25519 point, never a valid device key".into()));
        }
        if m.name.get_ref().is_empty() || m.name.get_ref().len() > crate::wire::MAX_NAME_LEN {
            return Err(at(text, &m.name, "name must be 1 to 32 bytes".into()));
        }
        if let Some(prev) = entries.iter().find(|e| e.key == key) {
            return Err(at(
                text,
                &m.key,
                format!("this key is already listed as {:?}; list each device once", prev.name),
            ));
        }
        if entries.iter().any(|e| &e.name == m.name.get_ref()) {
            return Err(at(
                text,
                &m.name,
                format!("the name {:?} is listed twice; names must be unique", m.name.get_ref()),
            ));
        }
        let filters = |list: &[Spanned<String>], what: &str| -> Result<Vec<TopicFilter>, FileError> {
            list.iter()
                .map(|f| {
                    TopicFilter::new(f.get_ref())
                        .map_err(|e| at(text, f, format!("{what} filter {:?}: {e}", f.get_ref())))
                })
                .collect()
        };
        let call = m
            .call
            .iter()
            .map(|c| {
                MethodPattern::new(c.get_ref()).map_err(|e| at(text, c, format!("call pattern {:?}: {e}", c.get_ref())))
            })
            .collect::<Result<Vec<_>, _>>()?;
        entries.push(AllowEntry {
            name: m.name.get_ref().clone(),
            key,
            permissions: Permissions {
                publish: filters(&m.publish, "publish")?,
                subscribe: filters(&m.subscribe, "subscribe")?,
                call,
            },
        });
    }
    let list = Allowlist { network: t.network.unwrap_or_else(|| DEFAULT_NETWORK.into()), entries };
    list.validate().map_err(|e| FileError { path: None, line: None, problem: e.to_string() })?;
    Ok(list)
}

/// Reads and parses an allowlist file.
pub fn read_allowlist(path: &Path) -> Result<Allowlist, FileError> {
    parse_allowlist(&read(path)?).map_err(with_path(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u8) -> Identity {
        Identity::from_secret([i; 32])
    }

    #[test]
    fn identity_file_round_trip_and_errors() {
        let id = key(7);
        let text = format_identity("kitchen", &id);
        let back = parse_identity(&text).unwrap();
        assert_eq!(back.name, "kitchen");
        assert_eq!(back.identity.public(), id.public());
        let edited = text.replace(&format!("{}", id.public())[..4], "0000");
        let e = parse_identity(&edited).unwrap_err();
        assert_eq!(e.line, Some(4), "{e}");
        let e = parse_identity("secret = \"12\"\n").unwrap_err();
        assert!(e.problem.contains("64 hexadecimal"), "{e}");
        let e = parse_identity("secret = 3\nbogus = 1\n").unwrap_err();
        assert!(e.line.is_some(), "{e}");
    }

    #[test]
    fn allowlist_parses_and_names_the_line_of_each_error() {
        let a = key(1).public();
        let b = key(2).public();
        let text = format!(
            "network = \"home\"\n\n[[member]]\nname = \"kitchen\"\nkey = \"{a}\"\npublish = [\"home/kitchen/#\"]\n\
             subscribe = [\"home/+/cmd\"]\ncall = [\"relay.*\"]\n\n[[member]]\nname = \"gw\"\nkey = \"{b}\"\n"
        );
        let list = parse_allowlist(&text).unwrap();
        assert_eq!(list.network, "home");
        assert_eq!(list.entries.len(), 2);
        assert!(list.entries[0].permissions.may_call("relay.on"));
        let bad_filter = text.replace("home/+/cmd", "home/#/cmd");
        let e = parse_allowlist(&bad_filter).unwrap_err();
        assert_eq!(e.line, Some(7), "{e}");
        assert!(e.problem.contains("subscribe filter"), "{e}");
        let dup = text.replace(&format!("{b}"), &format!("{a}"));
        let e = parse_allowlist(&dup).unwrap_err();
        assert_eq!(e.line, Some(12), "{e}");
        let low = text.replace(&format!("{b}"), &"00".repeat(32));
        assert!(parse_allowlist(&low).unwrap_err().problem.contains("small-order"));
        let unknown = text.replace("call =", "calls =");
        let e = parse_allowlist(&unknown).unwrap_err();
        assert_eq!(e.line, Some(8), "{e}");
        let bad_pattern = text.replace("relay.*", "re*lay");
        assert!(parse_allowlist(&bad_pattern).unwrap_err().problem.contains("call pattern"));
    }
}
