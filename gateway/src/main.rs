//! `starling`: the command-line tool for Starling meshes.

use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use starling::runtime::{self, Node, NodeBuilder, PeerEvent, Received, Request};
use starling_gateway::args::{parse_duration, parse_hex, parse_positive_duration, parse_ttl, resolve_key};
use starling_gateway::render::{self, hex, Shown};
use starling_gateway::signals::terminated;

/// Starling: brokerless, encrypted publish/subscribe over UDP multicast.
///
/// Every node on the same multicast group with the same network key forms one mesh. There is no
/// broker and nothing to connect to: start nodes and they find each other.
///
/// Quick start:
///   starling keygen > net.key && chmod 600 net.key
///   starling sub --key net.key 'home/+/temp'          # terminal 1
///   starling pub --key net.key home/kitchen/temp 21.5  # terminal 2
#[derive(Parser)]
#[command(name = "starling", version, verbatim_doc_comment)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print a new random network key (64 hex digits); every node of a mesh needs the same one.
    Keygen,
    /// Publish a message (best effort, or --reliable).
    Pub(PubArgs),
    /// Print messages on topics matching one or more filters (MQTT wildcards + and #).
    Sub(SubArgs),
    /// List the nodes seen on the mesh.
    Nodes(NodesArgs),
    /// Call a method on a node and print the reply.
    Call(CallArgs),
    /// Serve `echo` (replies with the request) and `fail` (fails with the request): a demo responder.
    ServeEcho(ServeArgs),
    /// Bridge the mesh to an MQTT broker: mesh topic a/b is MQTT topic PREFIX/a/b, both ways.
    Gateway(GatewayArgs),
    /// Live monitor: topic tree with rates, payloads as hex beside text, nodes; publish, call, save.
    ///
    /// Keys: arrows select, Tab switches topics/nodes, [ ] older/newer message, d decoding
    /// (text, UTF-8, JSON, CBOR, postcard), v diff, p publish, c call, space pause, / filter,
    /// s save, q quit. `--plain` prints the same as lines instead.
    Watch(WatchArgs),
    /// Re-publish messages saved by `watch` (JSON lines with base64 payloads), or print them.
    Replay(ReplayArgs),
    /// Write a device's provisioning blob (Wi-Fi, key, name, intervals) for flashing, or --check one.
    Provision(starling_gateway::provision::ProvisionArgs),
    /// Run the ESP32-C3 firmware's application on this host from its provisioning blob (a twin).
    Twin(starling_gateway::twin::TwinArgs),
    /// Identity mode: make a device key pair, or show an identity file's public key.
    #[command(subcommand)]
    Identity(IdentityCommand),
    /// Identity mode: add, remove or list the members of an allowlist file.
    #[command(subcommand)]
    Allow(AllowCommand),
}

#[derive(Args)]
struct WatchArgs {
    #[command(flatten)]
    mesh: MeshArgs,
    /// Print lines (a report per --tick) instead of the full-screen UI: for logs and scripts.
    #[arg(long)]
    plain: bool,
    /// Messages kept per topic.
    #[arg(long, default_value_t = 100, value_name = "N")]
    history: usize,
    /// Topics tracked; the one heard from least recently is forgotten first.
    #[arg(long, default_value_t = 1000, value_name = "N")]
    max_topics: usize,
    /// Payload bytes kept in all histories together, in MiB.
    #[arg(long, default_value_t = 32, value_name = "MIB")]
    max_mib: usize,
    /// Redraw (UI) or report (--plain) period.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    tick: Option<Duration>,
    /// Show only topics containing this text, or matching this MQTT filter (with + or #).
    #[arg(long, value_name = "PATTERN")]
    filter: Option<String>,
    /// Exit after this long.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    duration: Option<Duration>,
    /// On exit, save the captured messages to FILE (JSON lines, base64 payloads).
    #[arg(long, value_name = "FILE")]
    save: Option<PathBuf>,
    /// Messages buffered between the node and the monitor; beyond it they are dropped and counted.
    #[arg(long, default_value_t = 16384, value_name = "N")]
    buffer: usize,
}

#[derive(Args)]
struct ReplayArgs {
    #[command(flatten)]
    mesh: MeshArgs,
    /// A file saved by `starling watch` (`s` key or --save).
    file: PathBuf,
    /// Print the messages instead of publishing them.
    #[arg(long)]
    dry_run: bool,
    /// Publish back to back instead of keeping the recorded gaps between messages.
    #[arg(long)]
    no_timing: bool,
    /// Longest pause kept between two messages.
    #[arg(long, default_value = "5s", value_parser = parse_duration, value_name = "DURATION")]
    max_gap: Duration,
}

#[derive(Subcommand)]
enum IdentityCommand {
    /// Print a new identity file (save it, chmod 600); its public key goes to stderr.
    New {
        /// The device's name (the default for its --name).
        name: String,
    },
    /// Print the public key of an identity file (save it as NAME.pub for `allow add`).
    Show {
        /// The identity file.
        file: PathBuf,
    },
}

#[derive(Args)]
struct AllowFile {
    /// The allowlist file to edit (created by the first `allow add`).
    #[arg(short, long, env = "STARLING_ALLOWLIST", default_value = "net.allow", value_name = "FILE")]
    allowlist: PathBuf,
}

#[derive(Subcommand)]
enum AllowCommand {
    /// Add a member: its public key (64 hex digits, a .pub file or an identity file) and rights.
    Add {
        /// Public key, .pub file or identity file.
        key: String,
        /// Unique name shown for this member.
        #[arg(long)]
        name: String,
        /// Topic filter it may publish on (repeatable).
        #[arg(long)]
        publish: Vec<String>,
        /// Topic filter it may receive (repeatable).
        #[arg(long)]
        subscribe: Vec<String>,
        /// Method it may call: exact, `*`, or a prefix such as `relay.*` (repeatable).
        #[arg(long)]
        call: Vec<String>,
        /// Network name for a new allowlist (binds handshakes to it).
        #[arg(long)]
        network: Option<String>,
        #[command(flatten)]
        file: AllowFile,
    },
    /// Remove a member by name or key: running nodes that watch the file cut it off in seconds.
    Remove {
        /// Its name (or key).
        name: String,
        #[command(flatten)]
        file: AllowFile,
    },
    /// List the members.
    List {
        #[command(flatten)]
        file: AllowFile,
    },
}

#[derive(Args)]
struct GatewayArgs {
    #[command(flatten)]
    mesh: MeshArgs,
    /// The MQTT broker, as mqtt://host:port or mqtt://user:password@host:port. Without one the
    /// gateway runs a Mosquitto of its own on --listen (if Mosquitto is installed).
    #[arg(short, long, env = "STARLING_BROKER", value_name = "URL")]
    broker: Option<String>,
    /// Where the gateway's own broker listens when no --broker is given.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:1883")]
    listen: std::net::SocketAddr,
    /// MQTT topic prefix of the mesh (default `starling`).
    #[arg(long)]
    prefix: Option<String>,
    /// Mesh filters bridged to MQTT (repeatable) (default `#`).
    #[arg(long = "out", value_name = "FILTER")]
    out: Vec<String>,
    /// MQTT filters (relative to the prefix) bridged into the mesh (repeatable) (default `#`).
    #[arg(long = "in", value_name = "FILTER")]
    r#in: Vec<String>,
    /// Keep the last value of each bridged topic retained on the broker.
    #[arg(long)]
    retain: bool,
    /// Allow calls from MQTT (PREFIX/$rpc/NODE/METHOD) matching NODE/METHOD (repeatable). NODE is
    /// a node name, a 16-digit id, `*` or a prefix ending in `*`; METHOD a name, `*` or a prefix
    /// ending in `*` (`relay.*`); `*` does not cover methods starting with `$`, name them
    /// (`*/$info`). Without any, calls from MQTT are refused: each call is made with the
    /// gateway's own rights on the mesh. MQTT 5 response topics must lie under PREFIX/$reply/.
    #[arg(long = "rpc", value_name = "NODE/METHOD")]
    rpc: Vec<String>,
    /// Refuse every call from MQTT, whatever the config file's `rpc` allows.
    #[arg(long, conflicts_with = "rpc")]
    no_rpc: bool,
    /// With mqtts://: the CA certificate (PEM) the broker's certificate must chain to.
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// With mqtts://: a client certificate (PEM), for brokers that require one.
    #[arg(long, value_name = "FILE", requires = "client_key")]
    client_cert: Option<PathBuf>,
    /// With mqtts://: the client certificate's key (PEM).
    #[arg(long, value_name = "FILE", requires = "client_cert")]
    client_key: Option<PathBuf>,
    /// A TOML file with any of: key_file, name, broker, group, port, interface, prefix, out, in,
    /// retain, rpc, ca, client_cert, client_key, and `[[mapping]]` tables (each with one of `out`
    /// or `in`, and optional `qos = 0|1`, `retain = true|false`). `out` and `in`, at the top and
    /// in a mapping, take one filter (`out = "home/#"`) or a list (`out = ["home/#", "cmd/#"]`).
    /// Relative paths are relative to the file's directory. Flags and their environment
    /// variables win over the file.
    #[arg(short, long, env = "STARLING_GATEWAY_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Check the configuration (file, flags, key) and exit.
    #[arg(long)]
    check_config: bool,
    /// Which mesh settings the command line (or environment) gave: those win over the file.
    #[arg(skip)]
    given: MeshGiven,
}

/// Whether `--group`, `--port` and `--interface` (or their variables) were given, rather than
/// left at their defaults.
#[derive(Default, Clone, Copy)]
struct MeshGiven {
    group: bool,
    port: bool,
    interface: bool,
}

/// A payload given on the command line: text, a file, hex or empty.
#[derive(Args)]
struct PayloadArgs {
    /// Read the payload from a file (`-` for standard input); any bytes.
    #[arg(short, long, value_name = "FILE", conflicts_with_all = ["hex", "empty"])]
    file: Option<PathBuf>,
    /// Payload as hex digits, e.g. `00ff10` or `00:ff:10`.
    #[arg(long, value_name = "HEX", conflicts_with = "empty")]
    hex: Option<String>,
    /// Send an empty payload.
    #[arg(long)]
    empty: bool,
}

#[derive(Args)]
struct CallArgs {
    #[command(flatten)]
    mesh: MeshArgs,
    /// The node to call: its id (16 hex digits, from `starling nodes`) or its name.
    node: String,
    /// Method name.
    method: String,
    /// Request payload as text (none given: an empty request).
    #[arg(conflicts_with_all = ["file", "hex", "empty"])]
    payload: Option<String>,
    #[command(flatten)]
    source: PayloadArgs,
    /// Give up after this long.
    #[arg(short, long, default_value = "5s", value_parser = parse_positive_duration, value_name = "DURATION")]
    timeout: Duration,
    /// Print the reply as a hexdump.
    #[arg(long = "show-hex")]
    show_hex: bool,
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    mesh: MeshArgs,
    /// Exit after answering this many calls.
    #[arg(short, long, value_name = "N")]
    count: Option<u64>,
}

/// How to reach the mesh: key, group, port, interface, identity.
#[derive(Args, Clone)]
struct MeshArgs {
    /// Network key file, as written by `starling keygen`. The key text itself may instead be
    /// given in the STARLING_KEY environment variable.
    #[arg(short, long, env = "STARLING_KEY_FILE", value_name = "FILE")]
    key: Option<PathBuf>,
    /// Multicast group of the mesh.
    #[arg(long, env = "STARLING_GROUP", default_value_t = runtime::DEFAULT_GROUP)]
    group: Ipv4Addr,
    /// UDP port of the mesh (1-65535).
    #[arg(long, env = "STARLING_PORT", default_value_t = runtime::DEFAULT_PORT,
          value_parser = clap::value_parser!(u16).range(1..))]
    port: u16,
    /// Network interface: an IPv4 address or a name such as `lo` or `wlan0`. The default keeps
    /// traffic on this machine; give your LAN interface to reach other devices.
    #[arg(short, long, env = "STARLING_INTERFACE", default_value = "127.0.0.1")]
    interface: String,
    /// Node name shown to other nodes (default: `HOSTNAME-COMMAND`).
    #[arg(short, long, env = "STARLING_NAME")]
    name: Option<String>,
    /// State file keeping this node's id and packet-number lease across runs. Without it each run
    /// is a new node with a random id.
    #[arg(long, env = "STARLING_STATE", value_name = "FILE")]
    state: Option<PathBuf>,
    /// Identity mode: this device's identity file (from `starling identity new`). Needs
    /// --allowlist; no network key then.
    #[arg(long, env = "STARLING_IDENTITY", value_name = "FILE", requires = "allowlist")]
    identity: Option<PathBuf>,
    /// Identity mode: the network's allowlist file, reloaded whenever it changes.
    #[arg(long, env = "STARLING_ALLOWLIST", value_name = "FILE", requires = "identity")]
    allowlist: Option<PathBuf>,
}

#[derive(Args)]
struct PubArgs {
    #[command(flatten)]
    mesh: MeshArgs,
    /// Topic to publish on (no wildcards).
    topic: String,
    /// Payload as text.
    #[arg(conflicts_with_all = ["file", "hex", "empty"])]
    payload: Option<String>,
    #[command(flatten)]
    source: PayloadArgs,
    /// Deliver reliably: retransmit until every matching subscriber has it (exit 0), fail
    /// (exit 1) naming those that did not, or say that no subscriber was found (exit 3: nothing
    /// was waited for, so nothing is known to have arrived).
    #[arg(long)]
    reliable: bool,
    /// With --reliable: never deliver or repair the message after this long (at most 24h).
    #[arg(long, value_parser = parse_ttl, value_name = "DURATION")]
    ttl: Option<Duration>,
    /// With --reliable or --identity: how long to ask the mesh for its nodes before publishing
    /// (a new node solicits beacons for its first second; on a lossy link the later answers
    /// are the ones that find every subscriber).
    #[arg(long, default_value = "1s", value_parser = parse_duration, value_name = "DURATION")]
    discover: Duration,
    /// Publish this many times.
    #[arg(long, default_value_t = 1, value_name = "N")]
    repeat: u64,
    /// Pause between repeated publications.
    #[arg(long, default_value = "1s", value_parser = parse_duration, value_name = "DURATION")]
    interval: Duration,
}

#[derive(Args)]
struct SubArgs {
    #[command(flatten)]
    mesh: MeshArgs,
    /// Topic filters, e.g. `home/+/temp` or `home/#`.
    #[arg(required = true)]
    filters: Vec<String>,
    /// Show every payload as a hexdump.
    #[arg(long, conflicts_with = "json")]
    hex: bool,
    /// Print one JSON object per message: t_ms (arrival, Unix milliseconds), topic, from, name,
    /// size, hex, text (when UTF-8), seq (when it came reliably).
    #[arg(long)]
    json: bool,
    /// Exit after this many messages.
    #[arg(short, long, value_name = "N")]
    count: Option<u64>,
    /// Exit after this long.
    #[arg(long, value_parser = parse_positive_duration, value_name = "DURATION")]
    timeout: Option<Duration>,
}

#[derive(Args)]
struct NodesArgs {
    #[command(flatten)]
    mesh: MeshArgs,
    /// How long to listen before printing.
    #[arg(short, long, default_value = "2s", value_parser = parse_duration, value_name = "DURATION")]
    wait: Duration,
    /// Also print the counters of this node and of every node (traffic, drops: drop_auth is a
    /// bad MAC, drop_replay a replay...) as one table; counters that are zero everywhere are left out.
    #[arg(long)]
    stats: bool,
    /// With --stats: show the counters that are zero too.
    #[arg(long, requires = "stats")]
    all: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Exit status of `pub --reliable` when no subscriber was known to wait for.
const EXIT_NO_SUBSCRIBERS: i32 = 3;

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("STARLING_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let matches = <Cli as clap::CommandFactory>::command().get_matches();
    let mut cli = <Cli as clap::FromArgMatches>::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if let (Command::Gateway(a), Some(m)) = (&mut cli.command, matches.subcommand_matches("gateway")) {
        let given = |id: &str| m.value_source(id).is_some_and(|s| s != clap::parser::ValueSource::DefaultValue);
        a.given = MeshGiven { group: given("group"), port: given("port"), interface: given("interface") };
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    if let Err(e) = rt.block_on(run(cli)) {
        eprintln!("error: {e:#}");
        // A reliable publication nobody was waited for is neither a success nor a delivery
        // failure: scripts can tell it apart.
        let nobody = e.chain().any(|c| {
            matches!(c.downcast_ref::<starling::runtime::Error>(), Some(starling::runtime::Error::NoSubscribers))
        });
        std::process::exit(if nobody { EXIT_NO_SUBSCRIBERS } else { 1 });
    }
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Keygen => keygen(),
        Command::Pub(a) => publish(a).await,
        Command::Sub(a) => subscribe(a).await,
        Command::Nodes(a) => nodes(a).await,
        Command::Call(a) => call(a).await,
        Command::ServeEcho(a) => serve_echo(a).await,
        Command::Gateway(a) => gateway(a).await,
        Command::Watch(a) => watch(a).await,
        Command::Replay(a) => replay(a).await,
        Command::Identity(c) => identity(c),
        Command::Allow(c) => allow(c),
        Command::Provision(a) => starling_gateway::provision::run(a),
        Command::Twin(a) => starling_gateway::twin::run(a).await,
    }
}

fn identity(c: IdentityCommand) -> Result<()> {
    use starling_gateway::identity_cmd;
    match c {
        IdentityCommand::New { name } => {
            if name.is_empty() || name.len() > starling::wire::MAX_NAME_LEN {
                bail!("the name must be 1 to 32 bytes");
            }
            let (text, public) = identity_cmd::new_identity(&name)?;
            print!("{text}");
            eprintln!("public key of {name}: {public}");
            eprintln!(
                "add it with: starling allow add {public} --name {name} --publish ... --subscribe ... --call ..."
            );
            Ok(())
        }
        IdentityCommand::Show { file } => {
            let (id, warning) = starling::runtime::identity_file::read_identity(&file)?;
            if let Some(w) = warning {
                eprintln!("warning: {w}");
            }
            println!("# public key of {:?}", id.name);
            println!("{}", id.identity.public());
            Ok(())
        }
    }
}

fn allow(c: AllowCommand) -> Result<()> {
    use starling_gateway::identity_cmd::{self, Member};
    match c {
        AllowCommand::Add { key, name, publish, subscribe, call, network, file } => {
            let key = identity_cmd::resolve_public_key(&key)?;
            let member = Member { name: name.clone(), publish, subscribe, call };
            identity_cmd::allow_add(&file.allowlist, &key, &member, network.as_deref())?;
            eprintln!("added {name} ({key}) to {}", file.allowlist.display());
        }
        AllowCommand::Remove { name, file } => {
            let key = identity_cmd::allow_remove(&file.allowlist, &name)?;
            eprintln!("removed {name} ({key}) from {}; nodes watching the file cut it off", file.allowlist.display());
        }
        AllowCommand::List { file } => print!("{}", identity_cmd::allow_list(&file.allowlist)?),
    }
    Ok(())
}

fn keygen() -> Result<()> {
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).map_err(|e| anyhow::anyhow!("cannot read OS randomness: {e}"))?;
    println!("# Starling network key. Keep it secret: whoever holds it can read and write the mesh.");
    println!("{}", hex(&key));
    Ok(())
}

/// PSK mode's key, or identity mode's key pair and allowlist, as the mesh flags say.
enum Membership {
    Psk(starling::NetworkKey),
    Identity {
        file: starling::runtime::identity_file::IdentityFile,
        allowlist: PathBuf,
        list: starling::identity::Allowlist,
    },
}

fn membership(mesh: &MeshArgs) -> Result<Membership> {
    use starling::runtime::identity_file;
    match (&mesh.identity, &mesh.allowlist) {
        (Some(id), Some(list)) => {
            if mesh.key.is_some() {
                bail!("--key and --identity exclude each other: a network is either PSK or identity mode");
            }
            let (file, warning) = identity_file::read_identity(id)?;
            if let Some(w) = warning {
                eprintln!("warning: {w}");
            }
            let allow = identity_file::read_allowlist(list)?;
            if allow.get(&file.identity.public()).is_none() {
                bail!(
                    "{}: this identity ({}) is not on the allowlist; add it with `starling allow add {} --name NAME ...`",
                    list.display(),
                    file.identity.public(),
                    id.display()
                );
            }
            Ok(Membership::Identity { file, allowlist: list.clone(), list: allow })
        }
        _ => Ok(Membership::Psk(resolve_key(mesh.key.as_deref(), std::env::var("STARLING_KEY").ok().as_deref())?)),
    }
}

async fn open(mesh: &MeshArgs, command: &str) -> Result<Node> {
    let opened = builder(mesh, command)?.open().await;
    opened.map_err(|e| explain_open_error(e, mesh)).context("cannot start the node")
}

/// Adds the fix to socket errors users meet: a port another program holds.
fn explain_open_error(e: runtime::Error, mesh: &MeshArgs) -> anyhow::Error {
    let in_use = matches!(&e, runtime::Error::Socket { source, .. } if source.kind() == std::io::ErrorKind::AddrInUse);
    let e = anyhow::Error::from(e);
    if in_use {
        return e.context(format!(
            "UDP port {} is held by a program that does not share it; pick another with --port (every node of \
             the mesh must use the same one) or stop that program",
            mesh.port
        ));
    }
    e
}

fn builder(mesh: &MeshArgs, command: &str) -> Result<NodeBuilder> {
    let membership = membership(mesh)?;
    let interface = runtime::resolve_interface(&mesh.interface).map_err(anyhow::Error::msg).context("--interface")?;
    let name = match (&mesh.name, &membership) {
        (Some(n), _) => n.clone(),
        (None, Membership::Identity { file, .. }) if !file.name.is_empty() => file.name.clone(),
        (None, _) => default_name(command),
    };
    if name.len() > starling::wire::MAX_NAME_LEN {
        bail!("--name '{name}' is {} bytes; node names are at most 32 bytes", name.len());
    }
    let b = match membership {
        Membership::Psk(key) => NodeBuilder::new(key),
        Membership::Identity { file, allowlist, list } => {
            NodeBuilder::identity(file.identity, list).allowlist_file(allowlist)
        }
    };
    let mut b = b.name(name).group(mesh.group).port(mesh.port).interface(interface);
    if let Some(path) = &mesh.state {
        b = b.state_file(path);
    }
    Ok(b)
}

fn default_name(command: &str) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into());
    let mut name = format!("{host}-{command}");
    while name.len() > starling::wire::MAX_NAME_LEN {
        name.remove(0);
    }
    name
}

fn payload(text: Option<&String>, a: &PayloadArgs) -> Result<Vec<u8>> {
    if let Some(text) = text {
        return Ok(text.as_bytes().to_vec());
    }
    if let Some(h) = &a.hex {
        return parse_hex(h).map_err(anyhow::Error::msg).context("--hex");
    }
    if let Some(path) = &a.file {
        if path.as_os_str() == "-" {
            let mut buf = Vec::new();
            std::io::stdin().read_to_end(&mut buf).context("reading the payload from standard input")?;
            return Ok(buf);
        }
        return std::fs::read(path).with_context(|| format!("reading payload file {}", path.display()));
    }
    if a.empty {
        return Ok(Vec::new());
    }
    bail!("no payload: give it as an argument, or use --file FILE, --hex HEX or --empty")
}

/// How much longer than `--discover` an identity-mode `pub` waits for its first session.
const IDENTITY_GRACE: Duration = Duration::from_secs(2);

async fn publish(a: PubArgs) -> Result<()> {
    starling::Topic::new(&a.topic).with_context(|| format!("topic '{}'", a.topic))?;
    if a.ttl.is_some() && !a.reliable {
        bail!("--ttl needs --reliable: a best-effort message is sent once and has no lifetime to limit");
    }
    check_own_publish_right(&a.mesh, &a.topic)?;
    let payload = payload(a.payload.as_ref(), &a.source)?;
    let node = open(&a.mesh, "pub").await?;
    if a.reliable || a.mesh.identity.is_some() {
        // Learn the subscribers first: a reliable publication waits for those known when sent,
        // and in identity mode receivers can read us only once a session gave them our key.
        tokio::time::sleep(a.discover).await;
        if a.mesh.identity.is_some() {
            // A handshake on a busy or lossy network can take longer than --discover: with no
            // session at all, nobody could read the message, so give the first one a little more.
            let until = tokio::time::Instant::now() + IDENTITY_GRACE;
            while node.peers().await?.is_empty() && tokio::time::Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    let mut result = Ok(());
    for i in 0..a.repeat {
        if i > 0 {
            tokio::time::sleep(a.interval).await;
        }
        let mut p = node.publish(&a.topic, payload.clone());
        if a.reliable {
            p = p.reliable();
        }
        if let Some(ttl) = a.ttl {
            p = p.ttl(ttl);
        }
        result = match p.await {
            // Name the subscribers that did not acknowledge, where their names are known.
            Err(runtime::Error::NotDelivered(f)) => {
                Err(anyhow::anyhow!(named_ids(&node, &f.to_string(), &f.missing).await))
            }
            other => other.map_err(anyhow::Error::from),
        }
        .with_context(|| format!("publishing on '{}'", a.topic));
        if result.is_err() {
            break;
        }
    }
    node.close().await?;
    result
}

/// `text` with each of `ids` shown as `name (id)` where this node knows the peer's name.
async fn named_ids(node: &Node, text: &str, ids: &[starling::NodeId]) -> String {
    let peers = node.peers().await.unwrap_or_default();
    let mut out = text.to_owned();
    for id in ids {
        if let Some(p) = peers.iter().find(|p| p.id == *id && !p.name.is_empty()) {
            out = out.replace(&id.to_string(), &format!("{} ({id})", p.name));
        }
    }
    out
}

/// Identity mode: a topic outside this device's own allowlist entry would be dropped by every
/// member, so say so before anything is sent, naming what the entry allows.
fn check_own_publish_right(mesh: &MeshArgs, topic: &str) -> Result<()> {
    if mesh.identity.is_none() {
        return Ok(());
    }
    let Membership::Identity { file, list, .. } = membership(mesh)? else { return Ok(()) };
    let Some(entry) = list.get(&file.identity.public()) else { return Ok(()) };
    let t = starling::Topic::new(topic).with_context(|| format!("topic '{topic}'"))?;
    if !entry.permissions.may_publish(&t) {
        let allowed: Vec<&str> = entry.permissions.publish.iter().map(|f| f.as_str()).collect();
        bail!(
            "this device's allowlist entry '{}' may publish only on {}: every member would drop a message on \
             '{topic}' (widen the entry with `starling allow add ... --publish FILTER`)",
            entry.name,
            if allowed.is_empty() { "no topic".to_owned() } else { allowed.join(", ") }
        );
    }
    Ok(())
}

async fn subscribe(a: SubArgs) -> Result<()> {
    for f in &a.filters {
        starling::TopicFilter::new(f).with_context(|| format!("filter '{f}'"))?;
    }
    let node = open(&a.mesh, "sub").await?;
    let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
    for f in &a.filters {
        let mut sub = node.subscribe(f).await?;
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some(m) = sub.recv_event().await {
                if tx.send(m).await.is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);
    eprintln!(
        "listening on {}:{} as {} ({}) for {}; Ctrl-C to stop",
        a.mesh.group,
        a.mesh.port,
        node.id(),
        node.local_addr(),
        a.filters.join(" ")
    );
    let deadline = a.timeout.map(|t| tokio::time::Instant::now() + t);
    let mut seen = 0u64;
    let mut stdout = std::io::stdout().lock();
    // Said once, checked every 2 s, while nothing has arrived but another network's datagrams have.
    let mut hint_check =
        tokio::time::interval_at(tokio::time::Instant::now() + Duration::from_secs(2), Duration::from_secs(2));
    let mut hinted = false;
    while a.count.is_none_or(|c| seen < c) {
        let next = tokio::select! {
            m = rx.recv() => m,
            _ = sleep_until(deadline) => None,
            _ = terminated() => None,
            _ = hint_check.tick(), if !hinted && seen == 0 => {
                if let Some(hint) = other_network(&node, &a.mesh).await {
                    eprintln!("note: nothing received yet, but {hint}");
                    hinted = true;
                }
                continue;
            }
        };
        let m = match next {
            None => break,
            Some(Received::Message(m)) => m,
            Some(Received::Gap { from, first, end }) => {
                let line = if a.json {
                    serde_json::json!({ "gap": { "from": from.to_string(), "first": first, "end": end } }).to_string()
                } else {
                    format!(
                        "!! gap: {} reliable message chunk(s) from {from} lost for good (seq {first}..{end})",
                        end - first
                    )
                };
                writeln!(stdout, "{line}")?;
                continue;
            }
        };
        seen += 1;
        let shown = Shown {
            topic: &m.topic,
            from: m.from.to_string(),
            name: m.from_name.as_deref(),
            payload: &m.payload,
            seq: m.seq,
        };
        let text = if a.json {
            let t_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            shown.json_at(t_ms)
        } else if a.hex {
            shown.hexdump()
        } else {
            shown.line()
        };
        writeln!(stdout, "{}", text.trim_end_matches('\n'))?;
        stdout.flush()?;
    }
    node.close().await?;
    Ok(())
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

async fn nodes(a: NodesArgs) -> Result<()> {
    let node = open(&a.mesh, "nodes").await?;
    let mut events = node.peer_events();
    let deadline = tokio::time::Instant::now() + a.wait;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => break,
            e = events.recv() => if let Ok(PeerEvent::IdConflict { addr }) = e {
                eprintln!("warning: a device at {addr} uses this node's id (copied state file?)");
            },
        }
    }
    let mut peers = node.peers().await?;
    peers.sort_by(|x, y| x.name.cmp(&y.name).then(x.id.cmp(&y.id)));
    let own: Vec<(String, u64)> = node.stats().await?.fields().into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    // Every node's counters (and a gateway's bridge counters), asked for all at once.
    let remote: Vec<Option<Vec<(String, u64)>>> = if a.stats {
        let asks = peers.iter().map(|p| {
            let (node, id) = (node.clone(), p.id);
            tokio::spawn(async move { remote_stats(&node, id).await })
        });
        let mut out = Vec::new();
        for ask in asks.collect::<Vec<_>>() {
            out.push(ask.await.ok().flatten());
        }
        out
    } else {
        Vec::new()
    };
    let as_json = |fields: &[(String, u64)]| -> serde_json::Value {
        fields.iter().map(|(k, v)| (k.clone(), serde_json::Value::from(*v))).collect::<serde_json::Map<_, _>>().into()
    };
    if a.json {
        let list: Vec<_> = peers
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let mut v = serde_json::json!({
                    "id": p.id.to_string(), "name": p.name, "address": p.addr.to_string(), "epoch": p.epoch,
                    "last_seen_ms": node.elapsed_since(p.last_heard).as_millis() as u64,
                });
                if let Some(Some(fields)) = remote.get(i) {
                    v["stats"] = as_json(fields);
                }
                v
            })
            .collect();
        let mut out = serde_json::json!({ "self": node.id().to_string(), "nodes": list });
        if a.stats {
            out["stats"] = as_json(&own);
        }
        println!("{out}");
    } else {
        println!("{:<16}  {:<24}  {:<21}  {:>5}  {:>9}", "ID", "NAME", "ADDRESS", "EPOCH", "LAST SEEN");
        for p in &peers {
            let ago = format!("{:.1}s ago", node.elapsed_since(p.last_heard).as_secs_f64());
            println!("{:<16}  {:<24}  {:<21}  {:>5}  {:>9}", p.id, p.name, p.addr, p.epoch, ago);
        }
        println!("{} node(s) seen in {:.1}s (this node: {})", peers.len(), a.wait.as_secs_f64(), node.id());
        if let Some(hint) = other_network(&node, &a.mesh).await {
            eprintln!("note: {hint}");
        }
        if a.stats {
            let mut columns = vec![("this node".to_owned(), Some(own))];
            for (p, fields) in peers.iter().zip(remote) {
                let name = if p.name.is_empty() { p.id.to_string() } else { p.name.clone() };
                columns.push((name, fields));
            }
            print!("\n{}", starling_gateway::render::counter_table(&columns, a.all));
        }
    }
    node.close().await?;
    Ok(())
}

/// The likeliest misconfiguration, nodes with another key (or the other security mode) on the
/// same group and port, must not meet silence: a sentence when datagrams arrived that this node's
/// key does not open, else `None`.
async fn other_network(node: &Node, mesh: &MeshArgs) -> Option<String> {
    let n = render::foreign_datagrams(&node.stats().await.ok()?.core);
    (n > 0).then(|| render::other_network_note(n, &format!("{}:{}", mesh.group, mesh.port)))
}

/// A node's counters by the built-in `$stats` call, plus a gateway's `$stats.bridge` ones.
async fn remote_stats(node: &Node, id: starling::NodeId) -> Option<Vec<(String, u64)>> {
    let parse = |bytes: Vec<u8>, prefix: &str| -> Vec<(String, u64)> {
        String::from_utf8_lossy(&bytes)
            .lines()
            .filter_map(|l| l.split_once(' '))
            .filter_map(|(k, v)| Some((format!("{prefix}{k}"), v.trim().parse().ok()?)))
            .collect()
    };
    let limit = Duration::from_secs(2);
    let mut fields = parse(node.call(id, runtime::STATS_METHOD, Vec::new(), limit).await.ok()?, "");
    if let Ok(bridge) = node.call(id, starling_gateway::bridge::STATS_METHOD, Vec::new(), limit).await {
        fields.extend(parse(bridge, "bridge."));
    }
    Some(fields)
}

/// Finds a node by id or name, waiting for it to appear (up to `limit`).
async fn find_peer(node: &Node, who: &str, limit: Duration) -> Result<starling::NodeId> {
    match node.resolve(runtime::Target::parse(who), limit).await {
        Err(e @ runtime::Error::NoSuchNode { .. }) => bail!("{e}; `starling nodes` lists the mesh"),
        r => Ok(r?),
    }
}

async fn call(a: CallArgs) -> Result<()> {
    // Many methods take no argument (`info`): no payload at all means an empty request.
    let given = a.payload.is_some() || a.source.file.is_some() || a.source.hex.is_some();
    let request = if given { payload(a.payload.as_ref(), &a.source)? } else { Vec::new() };
    let node = open(&a.mesh, "call").await?;
    let started = tokio::time::Instant::now();
    let peer = match find_peer(&node, &a.node, a.timeout).await {
        Ok(p) => p,
        Err(e) => match other_network(&node, &a.mesh).await {
            Some(hint) => bail!("{e}; {hint}"),
            None => return Err(e),
        },
    };
    let left = a.timeout.saturating_sub(started.elapsed());
    let reply = node.call(peer, &a.method, request, left).await;
    node.close().await?;
    let reply = reply.with_context(|| format!("calling {} on {}", a.method, a.node))?;
    let mut stdout = std::io::stdout().lock();
    if a.show_hex {
        write!(stdout, "{}", starling_gateway::render::hexdump(&reply, ""))?;
    } else {
        match starling_gateway::render::printable_text(&reply) {
            Some(text) => writeln!(stdout, "{}", text.trim_end_matches(['\n', '\r']))?,
            None if reply.is_empty() => {}
            None => writeln!(stdout, "hex {}", hex(&reply))?,
        }
    }
    Ok(())
}

async fn serve_echo(a: ServeArgs) -> Result<()> {
    let node = open(&a.mesh, "echo").await?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(String, Request)>(64);
    for method in ["echo", "fail"] {
        let tx = tx.clone();
        node.serve(method, move |req: Request| {
            let tx = tx.clone();
            async move {
                let reply = req.payload.clone();
                let fail = req.method == "fail";
                let _ = tx.send((req.method.clone(), req)).await;
                if fail {
                    Err(reply)
                } else {
                    Ok(reply)
                }
            }
        })
        .await?;
    }
    drop(tx);
    eprintln!("serving echo and fail as {} ({}); Ctrl-C to stop", node.id(), node.local_addr());
    let mut answered = 0u64;
    while a.count.is_none_or(|c| answered < c) {
        let next = tokio::select! {
            r = rx.recv() => r,
            _ = terminated() => None,
        };
        let Some((method, req)) = next else { break };
        answered += 1;
        let shown = Shown { topic: &method, from: req.from.to_string(), name: None, payload: &req.payload, seq: None };
        println!("{}", shown.line());
    }
    node.close().await?; // lingers until the last responses are acknowledged
    Ok(())
}

async fn gateway(mut a: GatewayArgs) -> Result<()> {
    use starling_gateway::bridge::{parse_broker, BridgeConfig, GatewayFile};
    let file = match &a.config {
        Some(path) => GatewayFile::load(path)?,
        None => GatewayFile::default(),
    };
    // "(`ca` in gw.toml line 3)" for a value that came from the file, for errors found later.
    let from_file = |key: &str| file.place(key).map(|p| format!(" (`{key}` in {p})")).unwrap_or_default();
    // "`key_file` in gw.toml line 1", to put before an error about a value from the file.
    let named_in_file = |key: &str| file.place(key).map(|p| format!("`{key}` in {p}")).unwrap_or_default();
    let own_broker = a.broker.is_none() && file.broker.is_none();
    let url = match a.broker.clone().or(file.broker.clone()) {
        Some(url) => url,
        None => format!("mqtt://{}", a.listen),
    };
    let broker =
        parse_broker(&url).context(if a.broker.is_some() { "--broker".to_owned() } else { named_in_file("broker") })?;
    let mut config = BridgeConfig::new(broker.host, broker.port);
    config.credentials = broker.credentials;
    if broker.tls {
        let Some(ca) = a.ca.clone().or(file.ca.clone()) else {
            bail!("mqtts:// needs --ca FILE (or `ca` in the config file): the broker's CA certificate, PEM");
        };
        let cert = a.client_cert.clone().or(file.client_cert.clone());
        let key = a.client_key.clone().or(file.client_key.clone());
        let client = match (cert, key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => bail!("a client certificate needs its key and the other way round (client_cert, client_key)"),
        };
        let checks = [
            (Some(&ca), a.ca.is_none().then(|| from_file("ca"))),
            (client.as_ref().map(|c| &c.0), a.client_cert.is_none().then(|| from_file("client_cert"))),
            (client.as_ref().map(|c| &c.1), a.client_key.is_none().then(|| from_file("client_key"))),
        ];
        for (f, whence) in checks {
            if let Some(f) = f.filter(|f| !f.is_file()) {
                bail!("TLS file {} does not exist{}", f.display(), whence.unwrap_or_default());
            }
        }
        config.tls = Some(starling_gateway::bridge::TlsFiles { ca, client });
    }
    config.prefix = a.prefix.clone().or(file.prefix.clone()).unwrap_or_else(|| "starling".into());
    // Flags, else the file's lists, else the mappings' filters, else everything.
    let pick = |flags: &Vec<String>, listed: &Option<Vec<String>>, mapped: Vec<String>| {
        if !flags.is_empty() {
            flags.clone()
        } else if let Some(l) = listed {
            l.clone()
        } else if !mapped.is_empty() {
            mapped
        } else {
            vec!["#".into()]
        }
    };
    let mapped = |f: fn(&starling_gateway::bridge::Mapping) -> &Vec<String>| {
        file.mappings.iter().flat_map(f).cloned().collect::<Vec<String>>()
    };
    config.mesh_filters = pick(&a.out, &file.out, mapped(|m| &m.out));
    config.mqtt_filters = pick(&a.r#in, &file.inbound, mapped(|m| &m.inbound));
    config.retain = a.retain || file.retain.unwrap_or(false);
    // Mapped filters always cross, each with its own QoS and retain.
    for m in &file.mappings {
        for f in &m.out {
            if !config.mesh_filters.contains(f) {
                config.mesh_filters.push(f.clone());
            }
        }
        for f in &m.inbound {
            if !config.mqtt_filters.contains(f) {
                config.mqtt_filters.push(f.clone());
            }
        }
    }
    config.mappings = file.mappings.clone();
    config.rpc = if !a.rpc.is_empty() {
        starling_gateway::bridge::RpcPolicy::parse(&a.rpc).context("--rpc")?
    } else if a.no_rpc {
        starling_gateway::bridge::RpcPolicy::off()
    } else {
        file.rpc.clone().unwrap_or_default()
    };
    config.validate()?;
    // The mesh: flags (and their variables) win over the file, the file over the defaults.
    let key_from_file = a.mesh.key.is_none() && file.key_file.is_some();
    if a.mesh.key.is_none() {
        a.mesh.key = file.key_file.clone();
    }
    if a.mesh.name.is_none() {
        a.mesh.name = file.name.clone();
    }
    if let (false, Some(g)) = (a.given.group, file.group) {
        a.mesh.group = g;
    }
    if let (false, Some(p)) = (a.given.port, file.port) {
        a.mesh.port = p;
    }
    if let (false, Some(i)) = (a.given.interface, &file.interface) {
        a.mesh.interface = i.clone();
    }
    let key_context = |e: anyhow::Error| if key_from_file { e.context(named_in_file("key_file")) } else { e };
    if a.check_config {
        membership(&a.mesh).map_err(key_context)?;
        let whose = if own_broker { " (its own Mosquitto)" } else { "" };
        let rpc: Vec<&str> = config.rpc.rules().collect();
        let rpc = if rpc.is_empty() { "off".to_owned() } else { format!("{rpc:?}") };
        println!(
            "config OK: broker {}:{}{whose}, prefix '{}', out {:?}, in {:?}, retain {}, rpc {rpc}, mesh {}:{} on {}",
            config.host,
            config.port,
            config.prefix,
            config.mesh_filters,
            config.mqtt_filters,
            config.retain,
            a.mesh.group,
            a.mesh.port,
            a.mesh.interface
        );
        return Ok(());
    }
    // Without a configured broker, run one: Mosquitto, as a child that ends with the gateway.
    let _broker = if own_broker {
        let child = starling_gateway::own_broker::start(a.listen).await?;
        eprintln!("no --broker given: started Mosquitto on {} for this gateway", a.listen);
        Some(child)
    } else {
        config.unreachable_hint = Some(format!(
            "is a broker running there? Without --broker (and without `broker` in the config file) the gateway \
             runs its own Mosquitto on --listen ({})",
            a.listen
        ));
        None
    };
    let node = open(&a.mesh, "gateway").await.map_err(key_context)?;
    let rpc: Vec<&str> = config.rpc.rules().collect();
    let rpc = if rpc.is_empty() { "off (--rpc NODE/METHOD allows some)".to_owned() } else { rpc.join(" ") };
    eprintln!(
        "gateway {} on mesh {}:{}: connecting to mqtt://{}:{}",
        node.id(),
        a.mesh.group,
        a.mesh.port,
        config.host,
        config.port
    );
    config.banner = Some(format!(
        "bridging mesh {}:{} as {} to mqtt://{}:{} under '{}/'; calls from MQTT: {rpc}; Ctrl-C to stop",
        a.mesh.group,
        a.mesh.port,
        node.id(),
        config.host,
        config.port,
        config.prefix
    ));
    tokio::select! {
        r = starling_gateway::bridge::run(node.clone(), config) => r?,
        _ = terminated() => {}
    }
    node.close().await?;
    Ok(()) // its own broker, if any, ends here too
}

async fn watch(a: WatchArgs) -> Result<()> {
    use starling_gateway::watch::{self, model::Limits, model::Pattern, WatchConfig};
    if a.history == 0 || a.max_topics == 0 || a.max_mib == 0 || a.buffer == 0 {
        bail!("--history, --max-topics, --max-mib and --buffer must each be at least 1");
    }
    let pattern = Pattern::parse(a.filter.as_deref().unwrap_or("")).map_err(anyhow::Error::msg).context("--filter")?;
    let config = WatchConfig {
        limits: Limits { history: a.history, max_topics: a.max_topics, max_bytes: a.max_mib << 20 },
        plain: a.plain,
        tick: a.tick.unwrap_or(if a.plain { Duration::from_secs(1) } else { Duration::from_millis(200) }),
        duration: a.duration,
        pattern,
        save: a.save,
        mesh: format!("{}:{}", a.mesh.group, a.mesh.port),
    };
    if config.tick < Duration::from_millis(20) {
        bail!("--tick {:?} is too short; at least 20ms", config.tick);
    }
    let node =
        builder(&a.mesh, "watch")?.subscription_capacity(a.buffer).open().await.context("cannot start the node")?;
    if a.plain {
        eprintln!("watching {}:{} as {}; Ctrl-C to stop", a.mesh.group, a.mesh.port, node.id());
    }
    watch::run(node, config).await
}

async fn replay(a: ReplayArgs) -> Result<()> {
    let messages = starling_gateway::watch::load(&a.file)?;
    for (i, m) in messages.iter().enumerate() {
        starling::Topic::new(&m.topic)
            .with_context(|| format!("{} message {}: topic '{}'", a.file.display(), i + 1, m.topic))?;
    }
    if a.dry_run {
        for m in &messages {
            let shown = Shown {
                topic: &m.topic,
                from: m.from.clone(),
                name: m.name.as_deref(),
                payload: &m.payload,
                seq: m.seq,
            };
            println!("{}", shown.line());
        }
        return Ok(());
    }
    let node = open(&a.mesh, "replay").await?;
    let mut previous: Option<u64> = None;
    for m in &messages {
        if let (false, Some(p)) = (a.no_timing, previous) {
            let gap = Duration::from_millis(m.at_ms.saturating_sub(p)).min(a.max_gap);
            tokio::time::sleep(gap).await;
        }
        previous = Some(m.at_ms);
        node.publish(&m.topic, m.payload.clone()).await.with_context(|| format!("publishing on '{}'", m.topic))?;
    }
    eprintln!("replayed {} message(s) from {}", messages.len(), a.file.display());
    node.close().await?;
    Ok(())
}
