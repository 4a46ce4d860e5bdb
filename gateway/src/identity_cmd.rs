//! `starling identity` and `starling allow`: make device key pairs and edit the allowlist file.
//!
//! The allowlist is edited with `toml_edit`, so a person's comments and layout survive, and every
//! edit is checked by parsing the result before it replaces the file atomically (running nodes
//! that watch it never see half a file).

use std::fs;
use std::path::Path;

use anyhow::{bail, Context, Result};
use starling::identity::{Identity, PublicKey};
use starling::runtime::identity_file::{self, DEFAULT_NETWORK};
use toml_edit::{value, Array, ArrayOfTables, DocumentMut, Item, Table};

/// A new identity: the file text to save and its public key.
pub fn new_identity(name: &str) -> Result<(String, PublicKey)> {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| anyhow::anyhow!("cannot read OS randomness: {e}"))?;
    let id = Identity::from_secret(secret);
    Ok((identity_file::format_identity(name, &id), id.public()))
}

/// Reads a public key from `source`: 64 hex digits, a file holding them (`#` comments allowed),
/// or an identity file (its public half).
pub fn resolve_public_key(source: &str) -> Result<PublicKey> {
    if let Ok(k) = PublicKey::parse_hex(source) {
        return Ok(k);
    }
    let path = Path::new(source);
    let text = fs::read_to_string(path)
        .with_context(|| format!("{source}: neither 64 hex digits nor a readable key or identity file"))?;
    if let Ok(id) = identity_file::parse_identity(&text) {
        return Ok(id.identity.public());
    }
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .with_context(|| format!("{source}: the file holds no key"))?;
    PublicKey::parse_hex(line).map_err(|e| anyhow::anyhow!("{source}: {e}"))
}

fn load_doc(path: &Path, network: Option<&str>) -> Result<DocumentMut> {
    match fs::read_to_string(path) {
        Ok(text) => text.parse::<DocumentMut>().with_context(|| format!("{}: not valid TOML", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut doc = DocumentMut::new();
            doc["network"] = value(network.unwrap_or(DEFAULT_NETWORK));
            doc.decor_mut().set_prefix(
                "# Starling allowlist: the members of the network and what each may do.\n\
                 # Nodes started with --allowlist reload this file when it changes.\n",
            );
            Ok(doc)
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Checks the edited text as nodes will read it, then replaces the file atomically.
fn store(path: &Path, doc: &DocumentMut) -> Result<()> {
    let text = doc.to_string();
    identity_file::parse_allowlist(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let tmp = path.with_extension("allow.tmp");
    fs::write(&tmp, &text).with_context(|| format!("cannot write {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(())
}

fn strings(items: &[String]) -> Array {
    items.iter().map(String::as_str).collect()
}

/// What `allow add` puts in a member entry.
#[derive(Debug, Clone, Default)]
pub struct Member {
    /// Unique name shown for it.
    pub name: String,
    /// Topic filters it may publish on.
    pub publish: Vec<String>,
    /// Topic filters it may receive.
    pub subscribe: Vec<String>,
    /// Method patterns it may call.
    pub call: Vec<String>,
}

/// Adds a member to the allowlist at `path` (created if missing, with network name `network`).
pub fn allow_add(path: &Path, key: &PublicKey, m: &Member, network: Option<&str>) -> Result<()> {
    let mut doc = load_doc(path, network)?;
    if let Some(list) = fs::read_to_string(path).ok().and_then(|t| identity_file::parse_allowlist(&t).ok()) {
        if let Some(e) = list.get(key) {
            bail!("this key is already on the allowlist as {:?}; remove it first to change it", e.name);
        }
        if list.entries.iter().any(|e| e.name == m.name) {
            bail!("the name {:?} is already on the allowlist; names must be unique", m.name);
        }
    }
    let mut t = Table::new();
    t["name"] = value(&m.name);
    t["key"] = value(key.to_string());
    t["publish"] = value(strings(&m.publish));
    t["subscribe"] = value(strings(&m.subscribe));
    t["call"] = value(strings(&m.call));
    match doc.get_mut("member") {
        Some(Item::ArrayOfTables(a)) => a.push(t),
        Some(_) => bail!("{}: `member` must be an array of tables ([[member]])", path.display()),
        None => {
            let mut a = ArrayOfTables::new();
            a.push(t);
            doc["member"] = Item::ArrayOfTables(a);
        }
    }
    store(path, &doc)
}

/// Removes the member named `name` (or whose key is `name`, in hex). Returns its key.
pub fn allow_remove(path: &Path, name: &str) -> Result<String> {
    let mut doc = load_doc(path, None)?;
    if !path.exists() {
        bail!("{} does not exist", path.display());
    }
    let Some(Item::ArrayOfTables(members)) = doc.get_mut("member") else {
        bail!("{} lists no members", path.display());
    };
    let found = members.iter().position(|t| {
        t.get("name").and_then(Item::as_str) == Some(name) || t.get("key").and_then(Item::as_str) == Some(name)
    });
    let Some(i) = found else {
        bail!("no member named {name:?} in {}; `starling allow list` shows them", path.display());
    };
    let key = members.get(i).and_then(|t| t.get("key")).and_then(Item::as_str).unwrap_or_default().to_string();
    members.remove(i);
    store(path, &doc)?;
    Ok(key)
}

/// One line per member: name, key, permissions.
pub fn allow_list(path: &Path) -> Result<String> {
    let list = identity_file::read_allowlist(path)?;
    let mut out = format!("network {:?}, {} members\n", list.network, list.entries.len());
    for e in &list.entries {
        let join = |v: Vec<&str>| if v.is_empty() { "-".to_string() } else { v.join(",") };
        let p = &e.permissions;
        out.push_str(&format!(
            "{:<20} {}  publish {}  subscribe {}  call {}\n",
            e.name,
            e.key,
            join(p.publish.iter().map(|f| f.as_str()).collect()),
            join(p.subscribe.iter().map(|f| f.as_str()).collect()),
            join(p.call.iter().map(|c| c.as_str()).collect()),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_remove_keep_comments_and_refuse_duplicates() {
        let dir = std::env::temp_dir().join(format!("starling-allow-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("net.allow");
        let _ = fs::remove_file(&path);
        let a = Identity::from_secret([1; 32]).public();
        let b = Identity::from_secret([2; 32]).public();
        let m = |n: &str| Member { name: n.into(), publish: vec!["home/#".into()], ..Member::default() };
        allow_add(&path, &a, &m("kitchen"), Some("home")).unwrap();
        let mut text = fs::read_to_string(&path).unwrap();
        text.push_str("# a person's note\n");
        fs::write(&path, text).unwrap();
        allow_add(&path, &b, &m("hall"), None).unwrap();
        assert!(allow_add(&path, &b, &m("other"), None).unwrap_err().to_string().contains("already"));
        assert!(allow_add(&path, &Identity::from_secret([3; 32]).public(), &m("hall"), None).is_err());
        let list = identity_file::read_allowlist(&path).unwrap();
        assert_eq!(list.network, "home");
        assert_eq!(list.entries.len(), 2);
        assert_eq!(allow_remove(&path, "kitchen").unwrap(), a.to_string());
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains("# a person's note"), "{text}");
        assert_eq!(identity_file::read_allowlist(&path).unwrap().entries.len(), 1);
        assert!(allow_remove(&path, "kitchen").is_err());
        assert!(allow_list(&path).unwrap().contains("hall"));
        // A bad filter is refused before the file is touched.
        let bad = Member { name: "x".into(), subscribe: vec!["a/#/b".into()], ..Member::default() };
        assert!(allow_add(&path, &Identity::from_secret([4; 32]).public(), &bad, None).is_err());
        assert_eq!(identity_file::read_allowlist(&path).unwrap().entries.len(), 1);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn public_keys_from_hex_key_files_and_identity_files() {
        let id = Identity::from_secret([9; 32]);
        let hex = id.public().to_string();
        assert_eq!(resolve_public_key(&hex).unwrap(), id.public());
        let dir = std::env::temp_dir().join(format!("starling-pub-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let pubf = dir.join("k.pub");
        fs::write(&pubf, format!("# kitchen\n{hex}\n")).unwrap();
        assert_eq!(resolve_public_key(pubf.to_str().unwrap()).unwrap(), id.public());
        let idf = dir.join("k.id");
        fs::write(&idf, identity_file::format_identity("k", &id)).unwrap();
        assert_eq!(resolve_public_key(idf.to_str().unwrap()).unwrap(), id.public());
        assert!(resolve_public_key("nope").is_err());
        fs::remove_dir_all(&dir).unwrap();
    }
}
