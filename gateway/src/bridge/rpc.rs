//! Calls from MQTT: which ones the gateway makes on a client's behalf, and where it may answer.
//!
//! The gateway's mesh node calls with its own rights (in identity mode often `--call '*'`), so
//! every call it makes for an MQTT client lends those rights to whoever may publish under
//! `<prefix>/$rpc/`. Hence calls are off unless an [`RpcPolicy`] names them, and a reply goes
//! only where the caller cannot turn it into a command: MQTT 5 response topics must lie under
//! `<prefix>/$reply/` (see [`reply_topic_allowed`]); 3.1.1 replies go next to the request, under
//! `<prefix>/$rpc/`. Neither namespace is ever bridged into a mesh (`$` topics are not), nor does
//! any other bridge topic (`$nodes`, `$gateway`, mesh topics) live there.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Result};
use rumqttc::v5::mqttbytes::v5::{Publish, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::AsyncClient;
use starling::runtime::Node;
use starling::NodeId;

use super::{BridgeStats, ERROR};

/// How long a call made from MQTT may take.
const RPC_TIMEOUT: Duration = Duration::from_secs(5);

/// The level under the prefix where MQTT 5 response topics must lie: `<prefix>/$reply/...`.
pub const REPLY_LEVEL: &str = "$reply";

/// Which calls MQTT clients may have the gateway make: none (the default), or those matching
/// one of its rules.
///
/// A rule is `NODE/METHOD`:
/// - `NODE` is a node name as announced on the mesh, a 16-hex-digit node id, `*` for any node,
///   or a name prefix ending in `*` (`relay-*`).
/// - `METHOD` is a method name, `*`, or a prefix ending in `*` (`relay.*`), as in an identity
///   allowlist's `call`. A pattern that does not itself start with `$` never matches a method
///   that does: the built-in `$info` and `$stats` and the gateway's `$stats.bridge` must be named
///   (`*/$info`, `*/$*`), like MQTT's `#` never matching `$SYS`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RpcPolicy {
    rules: Vec<RpcRule>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct RpcRule {
    text: String,
    node: NodePattern,
    method: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum NodePattern {
    Id(NodeId),
    /// A name, or a name prefix when it ends in `*` (`*` alone: any node).
    Name(String),
}

/// The node a call is for, as far as the gateway knows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Target {
    pub id: Option<NodeId>,
    pub name: Option<String>,
}

/// `*` only at the end; a trailing `*` matches any rest, including none.
fn glob(pattern: &str, s: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => s.starts_with(prefix),
        None => pattern == s,
    }
}

fn check_part(part: &str, what: &str, rule: &str) -> Result<()> {
    if part.is_empty() {
        bail!("RPC rule '{rule}': the {what} is empty (write NODE/METHOD, e.g. 'relay-1/relay.*' or '*/$info')");
    }
    if part.contains(char::is_whitespace) || part.contains(['+', '#']) {
        bail!("RPC rule '{rule}': the {what} '{part}' contains whitespace, '+' or '#'");
    }
    if part.find('*').is_some_and(|i| i != part.len() - 1) {
        bail!("RPC rule '{rule}': '*' may only end the {what} (e.g. 'relay.*')");
    }
    Ok(())
}

impl RpcPolicy {
    /// No calls from MQTT at all.
    pub fn off() -> Self {
        RpcPolicy::default()
    }

    /// Parses `NODE/METHOD` rules; an empty list is [`off`](Self::off). Errors name the rule.
    pub fn parse<S: AsRef<str>>(rules: &[S]) -> Result<Self> {
        let mut parsed = Vec::with_capacity(rules.len());
        for rule in rules {
            let text = rule.as_ref();
            let Some((node, method)) = text.split_once('/') else {
                bail!("RPC rule '{text}' must be NODE/METHOD, e.g. 'relay-1/relay.*' or '*/$info'");
            };
            check_part(node, "node", text)?;
            check_part(method, "method", text)?;
            if method.contains('/') {
                bail!("RPC rule '{text}': a method is one topic level, without '/'");
            }
            let node = match node.parse::<NodeId>() {
                Ok(id) if node.len() == 16 => NodePattern::Id(id),
                _ => NodePattern::Name(node.to_owned()),
            };
            parsed.push(RpcRule { text: text.to_owned(), node, method: method.to_owned() });
        }
        Ok(RpcPolicy { rules: parsed })
    }

    /// Whether no call is allowed.
    pub fn is_off(&self) -> bool {
        self.rules.is_empty()
    }

    /// The rules as given.
    pub fn rules(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|r| r.text.as_str())
    }

    /// Whether a call of `method` on `target` is allowed.
    pub(super) fn permits(&self, target: &Target, method: &str) -> bool {
        self.rules.iter().any(|r| {
            let node = match &r.node {
                NodePattern::Id(id) => target.id == Some(*id),
                NodePattern::Name(p) if p == "*" => true,
                NodePattern::Name(p) => target.name.as_deref().is_some_and(|n| glob(p, n)),
            };
            let dollar_ok = !method.starts_with('$') || r.method.starts_with('$');
            node && dollar_ok && glob(&r.method, method)
        })
    }
}

/// A list of rules in the config file (`rpc = ["relay-1/relay.*"]`): a bad rule is an error at
/// its line.
impl<'de> serde::Deserialize<'de> for RpcPolicy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let rules = Vec::<String>::deserialize(d)?;
        RpcPolicy::parse(&rules).map_err(|e| serde::de::Error::custom(format!("{e:#}")))
    }
}

/// Whether an MQTT 5 response topic is one the gateway answers on: `<prefix>/$reply/` and at
/// least one more character, no wildcard, no NUL. Anything else (a command topic such as
/// `home/door/set`, a mesh topic under the prefix, `$nodes` availability) is refused, so a
/// client cannot make the gateway publish where the broker would not let the client publish.
pub fn reply_topic_allowed(prefix: &str, topic: &str) -> bool {
    topic
        .strip_prefix(prefix)
        .and_then(|t| t.strip_prefix('/'))
        .and_then(|t| t.strip_prefix(REPLY_LEVEL))
        .and_then(|t| t.strip_prefix('/'))
        .is_some_and(|rest| !rest.is_empty() && !rest.contains(['+', '#', '\0']))
}

/// Finds a mesh node by id (16 hex digits) or by its unique name among the peers that are up.
async fn resolve(node: &Node, who: &str) -> Target {
    let peers = node.peers().await.unwrap_or_default();
    if who.len() == 16 {
        if let Ok(id) = who.parse::<NodeId>() {
            let name = peers.iter().find(|p| p.id == id).map(|p| p.name.clone());
            return Target { id: Some(id), name };
        }
    }
    let mut named = peers.iter().filter(|p| p.name == who);
    match (named.next(), named.next()) {
        (Some(p), None) => Target { id: Some(p.id), name: Some(p.name.clone()) },
        // Unknown or ambiguous: name rules are still checked against the name asked for, so
        // that a refused caller learns nothing about who is on the mesh.
        _ => Target { id: None, name: Some(who.to_owned()) },
    }
}

/// What the gateway needs to answer calls from MQTT.
#[derive(Clone)]
pub(super) struct Rpc {
    pub node: Node,
    pub client: AsyncClient,
    pub prefix: String,
    pub policy: Arc<RpcPolicy>,
    pub stats: Arc<Mutex<BridgeStats>>,
}

/// Where the answer to a call goes.
enum Answer {
    /// MQTT 5: the response topic, errors in the `starling-error` user property.
    V5(String),
    /// MQTT 3.1.1: `<request>/reply`, errors as text on `<request>/error`.
    V311 { reply: String, error: String },
}

impl Rpc {
    /// Handles `<prefix>/$rpc/<node>/<method>[/<txid>]` (`rest` is what follows `$rpc/`):
    /// checks the policy, calls the node and publishes the answer. The call runs in its own task,
    /// so a slow callee never holds up the bridge. Refusals are counted in `rpc_refused`, calls
    /// made in `rpc_calls`.
    pub fn handle(&self, topic: &str, rest: &str, p: Publish) {
        let mut levels = rest.splitn(3, '/');
        let (Some(who), Some(method)) = (levels.next(), levels.next()) else { return };
        let txid = levels.next().filter(|t| !t.is_empty() && !t.contains('/'));
        let props = p.properties.unwrap_or_default();
        let answer = match (&props.response_topic, txid) {
            (Some(rt), _) if reply_topic_allowed(&self.prefix, rt) => Answer::V5(rt.clone()),
            (Some(rt), _) => {
                self.stats.lock().expect("not poisoned").rpc_refused += 1;
                tracing::warn!(
                    "refusing the call on '{topic}': its response topic '{rt}' is not under '{}/{REPLY_LEVEL}/'",
                    self.prefix
                );
                return;
            }
            // Answers go one level below the txid, so they never parse as requests (their txid
            // level would hold a '/'); a txid merely ending in "reply" or "error" is a txid.
            (None, Some(tx)) if tx != "reply" && tx != "error" => {
                Answer::V311 { reply: format!("{topic}/reply"), error: format!("{topic}/error") }
            }
            (None, Some(tx)) => {
                self.stats.lock().expect("not poisoned").rpc_refused += 1;
                tracing::warn!(
                    "refusing the call on '{topic}': a transaction id may not be '{tx}' (the level answers go to)"
                );
                return;
            }
            _ => return, // a reply of the 3.1.1 convention, or nowhere to answer
        };
        let this = self.clone();
        let (who, method) = (who.to_owned(), method.to_owned());
        let correlation = props.correlation_data.clone();
        tokio::spawn(async move {
            let result = this.call(&who, &method, p.payload.to_vec()).await;
            let mut out = PublishProperties { correlation_data: correlation, ..PublishProperties::default() };
            let (topic, payload) = match (result, answer) {
                (Ok(reply), Answer::V5(topic)) | (Ok(reply), Answer::V311 { reply: topic, .. }) => (topic, reply),
                (Err(e), Answer::V311 { error, .. }) => (error, e.into_bytes()),
                (Err(e), Answer::V5(topic)) => {
                    out.user_properties.push((ERROR.into(), e));
                    (topic, Vec::new())
                }
            };
            if let Err(e) = this.client.publish_with_properties(topic, QoS::AtLeastOnce, false, payload, out).await {
                tracing::warn!("answering a call from MQTT: {e}");
            }
        });
    }

    /// The policy first, on what is known of the target, then the call.
    async fn call(&self, who: &str, method: &str, payload: Vec<u8>) -> Result<Vec<u8>, String> {
        let refused = |why: String| {
            self.stats.lock().expect("not poisoned").rpc_refused += 1;
            tracing::warn!("refused a call from MQTT to '{who}/{method}': {why}");
            Err(format!("refused by the gateway: {why}"))
        };
        if self.policy.is_off() {
            return refused("calls from MQTT are off (enable some with --rpc NODE/METHOD)".into());
        }
        let target = resolve(&self.node, who).await;
        if !self.policy.permits(&target, method) {
            return refused(format!("'{who}/{method}' is not among the calls allowed from MQTT (--rpc)"));
        }
        let Some(id) = target.id else {
            // The library's look-up, at once, tells an ambiguous name from an absent one.
            return Err(match self.node.resolve(who, std::time::Duration::ZERO).await {
                Err(e @ starling::runtime::Error::AmbiguousName { .. }) => e.to_string(),
                _ => format!("no node '{who}' is up on the mesh (give its name or 16-digit id)"),
            });
        };
        if target.name.is_none() {
            // An id no peer has: say so now rather than after the call's whole timeout.
            return Err(format!("no node with id {id} is up on the mesh"));
        }
        self.stats.lock().expect("not poisoned").rpc_calls += 1;
        self.node.call(id, method, payload, RPC_TIMEOUT).await.map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(id: u64, name: &str) -> Target {
        Target { id: Some(format!("{id:016x}").parse().unwrap()), name: Some(name.into()) }
    }

    #[test]
    fn rules_match_nodes_and_methods_and_dollar_methods_only_when_named() {
        let p = RpcPolicy::parse(&["relay-1/relay.*", "*/$info", "sensor-*/read", "00000000000000aa/*"]).unwrap();
        let relay = target(1, "relay-1");
        assert!(p.permits(&relay, "relay.set"));
        assert!(p.permits(&relay, "relay."));
        assert!(!p.permits(&relay, "reboot"));
        assert!(p.permits(&relay, "$info"));
        assert!(!p.permits(&relay, "$stats"));
        assert!(p.permits(&target(2, "sensor-kitchen"), "read"));
        assert!(!p.permits(&target(2, "sensor-kitchen"), "write"));
        assert!(!p.permits(&target(3, "relay-2"), "relay.set"));
        // by id: any method that does not start with `$`, whatever the name says
        assert!(p.permits(&target(0xaa, "whoever"), "anything"));
        assert!(!p.permits(&target(0xaa, "whoever"), "$stats.bridge"));
        // an unresolved id is matched by id rules and `*` only
        assert!(!p.permits(&Target { id: Some("00000000000000bb".parse().unwrap()), name: None }, "relay.set"));
        assert!(p.permits(&Target { id: None, name: Some("x".into()) }, "$info"));

        let all = RpcPolicy::parse(&["*/*"]).unwrap();
        assert!(all.permits(&relay, "relay.set") && !all.permits(&relay, "$stats"));
        assert!(RpcPolicy::parse(&["*/$*"]).unwrap().permits(&relay, "$stats"));
        assert!(RpcPolicy::off().is_off() && RpcPolicy::parse::<&str>(&[]).unwrap().is_off());
        assert!(!RpcPolicy::off().permits(&relay, "relay.set"));
    }

    #[test]
    fn bad_rules_are_named() {
        for (rule, says) in [
            ("relay.set", "NODE/METHOD"),
            ("/relay.set", "node is empty"),
            ("relay-1/", "method is empty"),
            ("re*lay/x", "'*' may only end the node"),
            ("a/b/c", "one topic level"),
            ("a/+", "'+' or '#'"),
            ("a/b c", "whitespace"),
        ] {
            let err = RpcPolicy::parse(&[rule]).unwrap_err().to_string();
            assert!(err.contains(rule) && err.contains(says), "{rule}: {err}");
        }
    }

    #[test]
    fn replies_go_only_under_the_reply_level() {
        assert!(reply_topic_allowed("starling", "starling/$reply/1"));
        assert!(reply_topic_allowed("starling", "starling/$reply/client-7/a/b"));
        for bad in [
            "home/door/set",
            "starling/home/door/set",
            "starling/$nodes/0000000000000001/status",
            "starling/$reply",
            "starling/$reply/",
            "starling/$reply/+",
            "starling/$reply/#",
            "starling/$replyx/1",
            "starlingx/$reply/1",
            "other/starling/$reply/1",
        ] {
            assert!(!reply_topic_allowed("starling", bad), "{bad}");
        }
        assert!(reply_topic_allowed("site/a", "site/a/$reply/x"));
    }
}
