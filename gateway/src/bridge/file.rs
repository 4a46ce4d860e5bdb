//! The gateway's config file (TOML): what it may hold, and its checks. Every error names the
//! file, the line, and the key or `[[mapping]]` table at fault, and says how to fix it; paths in
//! the file are relative to the file's directory.
//!
//! ```toml
//! key_file = "net.key"              # relative to this file's directory
//! broker = "mqtt://127.0.0.1:1883"
//! port = 4783                       # also group = "239.255.83.76", interface = "eth0"
//! out = "home/#"                    # a filter, or a list: out = ["home/#", "garden/#"]
//! in = ["cmd/#"]
//!
//! [[mapping]]
//! out = "state/#"                   # again one filter or a list
//! qos = 1
//! retain = true
//! ```

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use toml::Spanned;

use super::{check_prefix, parse_broker, Mapping, RpcPolicy};

/// One topic filter or several: `out = "a/#"` and `out = ["a/#"]` mean the same.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filters(pub Vec<String>);

impl<'de> serde::Deserialize<'de> for Filters {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Filters;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a topic filter (\"home/#\") or a list of them ([\"home/#\", \"cmd/#\"])")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Filters, E> {
                Ok(Filters(vec![s.to_owned()]))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Filters, A::Error> {
                let mut all = Vec::new();
                while let Some(f) = seq.next_element::<String>()? {
                    all.push(f);
                }
                Ok(Filters(all))
            }
        }
        d.deserialize_any(Visit)
    }
}

/// A `[[mapping]]` table as written: one direction, one filter or a list, and how they cross.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMapping {
    out: Option<Spanned<Filters>>,
    #[serde(rename = "in")]
    inbound: Option<Spanned<Filters>>,
    qos: Option<Spanned<u8>>,
    retain: Option<bool>,
}

/// The file as written, with the place of every value that is checked.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    key_file: Option<Spanned<PathBuf>>,
    name: Option<Spanned<String>>,
    broker: Option<Spanned<String>>,
    group: Option<Spanned<Ipv4Addr>>,
    port: Option<Spanned<u16>>,
    interface: Option<Spanned<String>>,
    prefix: Option<Spanned<String>>,
    out: Option<Spanned<Filters>>,
    #[serde(rename = "in")]
    inbound: Option<Spanned<Filters>>,
    retain: Option<bool>,
    ca: Option<Spanned<PathBuf>>,
    client_cert: Option<Spanned<PathBuf>>,
    client_key: Option<Spanned<PathBuf>>,
    rpc: Option<RpcPolicy>,
    #[serde(default, rename = "mapping")]
    mappings: Vec<Spanned<RawMapping>>,
}

/// The gateway's config file (TOML), checked. Every key is optional; command-line flags (and
/// their `STARLING_*` variables) win over the file.
///
/// Keys: `key_file`, `name`, `broker` (`mqtt[s]://[user:password@]host[:port]`), `group`,
/// `port` and `interface` (the mesh's, as `--group`, `--port`, `--interface`), `prefix`, `out`
/// and `in` (each one filter, `out = "home/#"`, or a list, `out = ["home/#", "cmd/#"]`; an empty
/// list bridges nothing that way), `retain`, `rpc` (a list of `NODE/METHOD` rules), `ca`,
/// `client_cert`, `client_key`, and `[[mapping]]` tables, each with exactly one of `out` or `in`
/// (again one filter or a list), optional `qos = 0|1` and `retain = true|false`. Relative paths
/// (`key_file`, `ca`, `client_cert`, `client_key`) are relative to the directory of the file.
#[derive(Debug, Default, Clone)]
pub struct GatewayFile {
    /// Network key file.
    pub key_file: Option<PathBuf>,
    /// Node name.
    pub name: Option<String>,
    /// `mqtt://[user:password@]host[:port]`.
    pub broker: Option<String>,
    /// Multicast group of the mesh.
    pub group: Option<Ipv4Addr>,
    /// UDP port of the mesh (1-65535).
    pub port: Option<u16>,
    /// Network interface of the mesh: an IPv4 address or a name.
    pub interface: Option<String>,
    /// MQTT topic prefix.
    pub prefix: Option<String>,
    /// Mesh filters bridged to MQTT.
    pub out: Option<Vec<String>>,
    /// MQTT filters (relative to the prefix) bridged into the mesh.
    pub inbound: Option<Vec<String>>,
    /// Keep the last value per topic retained.
    pub retain: Option<bool>,
    /// CA certificate for `mqtts://` (PEM).
    pub ca: Option<PathBuf>,
    /// Client certificate for `mqtts://` (PEM).
    pub client_cert: Option<PathBuf>,
    /// Client key for `mqtts://` (PEM).
    pub client_key: Option<PathBuf>,
    /// Calls MQTT clients may make, as `NODE/METHOD` rules (see [`RpcPolicy`]); none by default.
    pub rpc: Option<RpcPolicy>,
    /// Topic mappings with their own QoS and retain (`[[mapping]]` tables).
    pub mappings: Vec<Mapping>,
    /// Where each key was set: `"key_file"` -> "gw.toml line 3", for errors found later.
    places: BTreeMap<&'static str, String>,
}

/// Line (1-based) of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())].iter().filter(|&&b| b == b'\n').count() + 1
}

impl GatewayFile {
    /// Reads, parses and checks a config file; errors name the file, line and key or mapping.
    pub fn load(path: &Path) -> Result<GatewayFile> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read config file {}", path.display()))?;
        Self::parse(&text, path)
    }

    /// Parses and checks `text`, the content of the config file at `path` (relative paths in it
    /// are taken relative to `path`'s directory).
    pub fn parse(text: &str, path: &Path) -> Result<GatewayFile> {
        let raw: Raw = toml::from_str(text).with_context(|| format!("config file {}", path.display()))?;
        let dir = path.parent().unwrap_or(Path::new(""));
        let at = |span: std::ops::Range<usize>| format!("{} line {}", path.display(), line_of(text, span.start));
        let mut places = BTreeMap::new();
        let mut place = |key: &'static str, span: Option<std::ops::Range<usize>>| -> String {
            let p = span.map(&at).unwrap_or_else(|| path.display().to_string());
            places.insert(key, p.clone());
            p
        };
        let mut file = GatewayFile { retain: raw.retain, rpc: raw.rpc, ..GatewayFile::default() };

        // Paths: relative to the file's directory, so the file works from any working directory.
        let resolve = |p: &Spanned<PathBuf>| dir.join(p.get_ref());
        for (key, value, slot) in [
            ("key_file", &raw.key_file, &mut file.key_file),
            ("ca", &raw.ca, &mut file.ca),
            ("client_cert", &raw.client_cert, &mut file.client_cert),
            ("client_key", &raw.client_key, &mut file.client_key),
        ] {
            if let Some(v) = value {
                place(key, Some(v.span()));
                *slot = Some(resolve(v));
            }
        }
        match (&raw.client_cert, &raw.client_key) {
            (Some(c), None) => {
                return Err(anyhow!(
                    "{}: `client_cert` needs `client_key` (the certificate's private key, PEM) too",
                    at(c.span())
                ))
            }
            (None, Some(k)) => {
                return Err(anyhow!(
                    "{}: `client_key` needs `client_cert` (the client certificate, PEM) too",
                    at(k.span())
                ))
            }
            _ => {}
        }

        if let Some(n) = &raw.name {
            let p = place("name", Some(n.span()));
            let len = n.get_ref().len();
            if len == 0 || len > starling::wire::MAX_NAME_LEN {
                return Err(anyhow!(
                    "{p}: `name` is {len} bytes; a node name is 1 to {} bytes",
                    starling::wire::MAX_NAME_LEN
                ));
            }
            file.name = Some(n.get_ref().clone());
        }
        if let Some(b) = &raw.broker {
            let p = place("broker", Some(b.span()));
            parse_broker(b.get_ref()).with_context(|| format!("{p}: `broker`"))?;
            file.broker = Some(b.get_ref().clone());
        }
        if let Some(g) = &raw.group {
            let p = place("group", Some(g.span()));
            if !g.get_ref().is_multicast() {
                return Err(anyhow!(
                    "{p}: `group = \"{}\"` is not a multicast address; give one in 224.0.0.0/4 \
                     (the default is {})",
                    g.get_ref(),
                    starling::runtime::DEFAULT_GROUP
                ));
            }
            file.group = Some(*g.get_ref());
        }
        if let Some(port) = &raw.port {
            let p = place("port", Some(port.span()));
            if *port.get_ref() == 0 {
                return Err(anyhow!(
                    "{p}: `port = 0` is not a port; the mesh's UDP port is 1-65535 (the default is {})",
                    starling::runtime::DEFAULT_PORT
                ));
            }
            file.port = Some(*port.get_ref());
        }
        if let Some(i) = &raw.interface {
            let p = place("interface", Some(i.span()));
            starling::runtime::resolve_interface(i.get_ref())
                .map_err(|e| anyhow!("{p}: `interface = \"{}\"`: {e}", i.get_ref()))?;
            file.interface = Some(i.get_ref().clone());
        }
        if let Some(prefix) = &raw.prefix {
            let p = place("prefix", Some(prefix.span()));
            check_prefix(prefix.get_ref()).with_context(|| format!("{p}: `prefix`"))?;
            file.prefix = Some(prefix.get_ref().clone());
        }

        let check_filters = |what: &str, where_: &str, filters: &Spanned<Filters>| -> Result<Vec<String>> {
            let here = at(filters.span());
            // At the top, `out = []` is a one-way bridge (nothing out); a mapping must map something.
            if filters.get_ref().0.is_empty() && !where_.is_empty() {
                return Err(anyhow!(
                    "{here}: {where_}`{what} = []` lists no filter; give one (\"home/#\") or remove the mapping"
                ));
            }
            for f in &filters.get_ref().0 {
                starling::TopicFilter::new(f).map_err(|e| anyhow!("{here}: {where_}`{what}` filter '{f}': {e}"))?;
            }
            Ok(filters.get_ref().0.clone())
        };
        if let Some(o) = &raw.out {
            place("out", Some(o.span()));
            file.out = Some(check_filters("out", "", o)?);
        }
        if let Some(i) = &raw.inbound {
            place("in", Some(i.span()));
            file.inbound = Some(check_filters("in", "", i)?);
        }

        // Which mapping first named each filter, per direction: a second one would never apply.
        let mut seen: BTreeMap<(bool, String), String> = BTreeMap::new();
        for (n, m) in raw.mappings.iter().enumerate() {
            let table = format!("mapping {} (line {})", n + 1, line_of(text, m.span().start));
            let r = m.get_ref();
            let (out, filters) = match (&r.out, &r.inbound) {
                (Some(o), None) => (true, o),
                (None, Some(i)) => (false, i),
                (Some(o), Some(_)) => {
                    return Err(anyhow!(
                        "{}: {table} has both `out` and `in`; a mapping goes one way: split it into two \
                         [[mapping]] tables",
                        at(o.span())
                    ))
                }
                (None, None) => {
                    return Err(anyhow!(
                        "{}: {table} has neither `out` nor `in`; add `out = \"FILTER\"` (mesh to MQTT) or \
                         `in = \"FILTER\"` (MQTT to mesh)",
                        at(m.span())
                    ))
                }
            };
            let what = if out { "out" } else { "in" };
            let list = check_filters(what, &format!("{table}: "), filters)?;
            if let Some(q) = &r.qos {
                if *q.get_ref() > 1 {
                    return Err(anyhow!(
                        "{}: {table}: `qos = {}`; the bridge uses QoS 0 or 1: write `qos = 0` or `qos = 1`",
                        at(q.span()),
                        q.get_ref()
                    ));
                }
            }
            for f in &list {
                if let Some(first) = seen.insert((out, f.clone()), table.clone()) {
                    return Err(anyhow!(
                        "{}: {table} repeats `{what}` filter '{f}' of {first}; only the first would apply: \
                         remove one",
                        at(filters.span())
                    ));
                }
            }
            let (out_list, in_list) = if out { (list, Vec::new()) } else { (Vec::new(), list) };
            file.mappings.push(Mapping {
                out: out_list,
                inbound: in_list,
                qos: r.qos.as_ref().map(|q| *q.get_ref()),
                retain: r.retain,
            });
        }
        file.places = places;
        Ok(file)
    }

    /// Where `key` was set, as "FILE line N", if the file set it.
    pub fn place(&self, key: &str) -> Option<&str> {
        self.places.get(key).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<GatewayFile> {
        GatewayFile::parse(text, Path::new("/etc/starling/gw.toml"))
    }

    fn err(text: &str) -> String {
        format!("{:#}", parse(text).unwrap_err())
    }

    #[test]
    fn syntax_errors_name_the_key_and_line() {
        let e = err("broker = \"mqtt://h\"\nbrokr = 1\n");
        assert!(e.contains("brokr") && e.contains("line 2") && e.contains("gw.toml"), "{e}");
        let e = err("prefix = \"s\"\nrpc = [\"relay-1\"]\n");
        assert!(e.contains("line 2") && e.contains("NODE/METHOD"), "{e}");
        let e = err("out = 5\n");
        assert!(e.contains("line 1") && e.contains("a list of them"), "{e}");
        let e = err("port = 70000\n");
        assert!(e.contains("line 1") && e.contains("70000"), "{e}");
    }

    #[test]
    fn one_filter_or_a_list() {
        let f =
            parse("in = \"cmd/#\"\nout = [\"#\"]\nretain = true\nrpc = [\"relay-1/relay.*\", \"*/$info\"]\n").unwrap();
        assert_eq!(f.inbound, Some(vec!["cmd/#".to_owned()]));
        assert_eq!(f.out, Some(vec!["#".to_owned()]));
        assert_eq!(f.retain, Some(true));
        assert_eq!(f.rpc.unwrap().rules().collect::<Vec<_>>(), ["relay-1/relay.*", "*/$info"]);
        let f =
            parse("[[mapping]]\nout = \"home/#\"\nqos = 1\nretain = true\n[[mapping]]\nin = [\"cmd/#\", \"set/#\"]\n")
                .unwrap();
        assert_eq!(f.mappings.len(), 2);
        assert_eq!(
            (f.mappings[0].out.as_slice(), f.mappings[0].qos, f.mappings[0].retain),
            (&["home/#".to_owned()][..], Some(1), Some(true))
        );
        assert_eq!(f.mappings[1].inbound, ["cmd/#", "set/#"]);
    }

    #[test]
    fn semantic_errors_name_the_mapping_and_line() {
        let e = err("prefix = \"s\"\n\n[[mapping]]\nout = \"a/#\"\n\n[[mapping]]\nqos = 1\nout = \"a/#/b\"\n");
        assert!(e.contains("gw.toml line 8: mapping 2 (line 6): `out` filter 'a/#/b'") && e.contains("'a/#'"), "{e}");
        let e = err("[[mapping]]\nout = \"a\"\nin = \"b\"\n");
        assert!(e.contains("line 2: mapping 1 (line 1) has both") && e.contains("split it"), "{e}");
        let e = err("[[mapping]]\nqos = 1\n");
        assert!(e.contains("line 1: mapping 1 (line 1) has neither"), "{e}");
        let e = err("[[mapping]]\nin = \"a\"\nqos = 2\n");
        assert!(e.contains("line 3: mapping 1 (line 1): `qos = 2`"), "{e}");
        let e = err("[[mapping]]\nin = \"a\"\n[[mapping]]\nin = [\"b\", \"a\"]\nqos = 0\n");
        assert!(e.contains("line 4: mapping 2 (line 3) repeats `in` filter 'a' of mapping 1 (line 1)"), "{e}");
        let e = err("[[mapping]]\nout = []\n");
        assert!(e.contains("lists no filter"), "{e}");
        assert_eq!(parse("out = []\n").unwrap().out, Some(vec![]), "a one-way bridge");
        let e = err("retain = true\nin = [\"x\", \"+x\"]\n");
        assert!(e.contains("line 2: `in` filter '+x'"), "{e}");
        let e = err("\nprefix = \"a/\"\n");
        assert!(e.contains("line 2: `prefix`") && e.contains("trailing"), "{e}");
        let e = err("port = 0\n");
        assert!(e.contains("line 1: `port = 0`") && e.contains("1-65535"), "{e}");
        let e = err("group = \"10.0.0.1\"\n");
        assert!(e.contains("line 1") && e.contains("multicast"), "{e}");
        let e = err("\n\ninterface = \"nosuchif0\"\n");
        assert!(e.contains("line 3") && e.contains("nosuchif0"), "{e}");
        let e = err("broker = \"tcp://x\"\n");
        assert!(e.contains("line 1: `broker`") && e.contains("mqtt://host:port"), "{e}");
        let e = err("ca = \"ca.pem\"\nclient_cert = \"c.pem\"\n");
        assert!(e.contains("line 2: `client_cert` needs `client_key`"), "{e}");
    }

    #[test]
    fn paths_are_relative_to_the_file() {
        let f = parse("key_file = \"net.key\"\nca = \"/abs/ca.pem\"\n").unwrap();
        assert_eq!(f.key_file.as_deref(), Some(Path::new("/etc/starling/net.key")));
        assert_eq!(f.ca.as_deref(), Some(Path::new("/abs/ca.pem")));
        assert_eq!(f.place("key_file"), Some("/etc/starling/gw.toml line 1"));
        assert_eq!(f.place("ca"), Some("/etc/starling/gw.toml line 2"));
        let f = GatewayFile::parse("key_file = \"k/net.key\"\n", Path::new("gw.toml")).unwrap();
        assert_eq!(f.key_file.as_deref(), Some(Path::new("k/net.key")));
    }

    #[test]
    fn mesh_settings() {
        let f = parse("group = \"239.1.2.3\"\nport = 5000\ninterface = \"127.0.0.1\"\n").unwrap();
        assert_eq!(
            (f.group, f.port, f.interface.as_deref()),
            (Some(Ipv4Addr::new(239, 1, 2, 3)), Some(5000), Some("127.0.0.1"))
        );
    }
}
