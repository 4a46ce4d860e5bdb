//! `starling watch`: a live monitor of the mesh, as a full-screen terminal UI or as plain lines.
//!
//! - [`model`]: what is known (topics, bounded histories, rates, nodes); no terminal.
//! - [`decode`]: hex rows, text decodings (UTF-8, JSON, CBOR, postcard) and byte diffs.
//! - [`ui`]: drawing a model with ratatui.
//!
//! The loop here feeds the model from one `#` subscription (cheap per message: a map lookup and
//! a ring push), refreshes the node table once a second (beacons, and each node's `$info` and
//! `$stats` every few seconds), and redraws at a fixed tick, so a flood never freezes the screen.

pub mod decode;
pub mod model;
pub mod ui;

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use starling::runtime::{Node, Received, INFO_METHOD, STATS_METHOD};
use starling::NodeId;
use tokio::sync::mpsc;

use model::{Captured, Limits, Model, NodeRow, Pattern, RowKind};
use ui::{Focus, Prompt, UiState};

/// How `watch` runs.
#[derive(Debug, Clone)]
pub struct WatchConfig {
    /// Memory bounds.
    pub limits: Limits,
    /// Print lines instead of drawing a screen.
    pub plain: bool,
    /// Redraw period (UI) or report period (plain).
    pub tick: Duration,
    /// Stop after this long.
    pub duration: Option<Duration>,
    /// Which topics to show.
    pub pattern: Pattern,
    /// Save the captured messages here on exit.
    pub save: Option<PathBuf>,
    /// The mesh's `group:port`, as notes name it.
    pub mesh: String,
}

/// How often each node's `$info` and `$stats` are asked for.
const REMOTE_EVERY: Duration = Duration::from_secs(3);
/// At most this many nodes are asked per round, so a large mesh costs bounded calls.
const REMOTE_MAX: usize = 32;

/// What a node told about itself by `$info` and `$stats`.
#[derive(Debug, Clone, Default)]
struct Remote {
    methods: Vec<String>,
    rtt_there: Option<Duration>,
    stats: std::collections::BTreeMap<String, u64>,
}

/// Events into the loop from helper tasks and the keyboard thread.
enum Input {
    Key(ratatui::crossterm::event::KeyEvent),
    /// A node's answers; `None` when it did not answer (asked again next round).
    Remote(NodeId, Option<Remote>),
    RoundDone,
    Status(String),
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Runs the monitor until `q`, Ctrl-C or `duration`.
pub async fn run(node: Node, cfg: WatchConfig) -> Result<()> {
    let mut sub = node.subscribe("#").await?;
    let mut model = Model::new(cfg.limits, Instant::now());
    let mut ui = UiState { pattern: cfg.pattern.clone(), ..UiState::default() };
    let (tx, mut inputs) = mpsc::channel::<Input>(256);
    let mut term = if cfg.plain { None } else { Some(Screen::start(tx.clone())?) };
    let started = Instant::now();
    let deadline = cfg.duration.map(|d| tokio::time::Instant::now() + d);
    let mut tick = tokio::time::interval(cfg.tick);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut refresh = tokio::time::interval(Duration::from_secs(1));
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut remote: HashMap<NodeId, Remote> = HashMap::new();
    let mut first_seen: HashMap<NodeId, Instant> = HashMap::new();
    let mut last_round: Option<Instant> = None;
    let mut round_busy = false;
    let mut stdout = std::io::stdout();
    let result: Result<()> = loop {
        tokio::select! {
            biased;
            _ = tick.tick() => {
                let now = Instant::now();
                model.tick(now);
                match term.as_mut() {
                    Some(screen) => screen.draw(&model, &ui)?,
                    None => {
                        let report = plain_report(&model, &ui.pattern, now.duration_since(started), &cfg.mesh);
                        if stdout.write_all(report.as_bytes()).and_then(|_| stdout.flush()).is_err() {
                            break Ok(()); // stdout closed: nobody is reading
                        }
                    }
                }
            }
            _ = sleep_until(deadline) => break Ok(()),
            _ = crate::signals::terminated() => break Ok(()),
            input = inputs.recv() => match input {
                Some(Input::Key(k)) => {
                    if !handle_key(k, &node, &mut model, &mut ui, &tx).await {
                        break Ok(());
                    }
                }
                Some(Input::Remote(id, Some(r))) => { remote.insert(id, r); }
                Some(Input::Remote(id, None)) => { remote.entry(id).or_default(); }
                Some(Input::RoundDone) => round_busy = false,
                Some(Input::Status(s)) => ui.status = s,
                None => break Ok(()),
            },
            _ = refresh.tick() => {
                let details = node.peer_details().await?;
                let now = Instant::now();
                first_seen.retain(|id, _| details.iter().any(|d| d.info.id == *id));
                remote.retain(|id, _| details.iter().any(|d| d.info.id == *id));
                let rows = details.iter().map(|d| {
                    let up = *first_seen.entry(d.info.id).or_insert(now);
                    let r = remote.get(&d.info.id).cloned().unwrap_or_default();
                    NodeRow {
                        id: d.info.id.to_string(),
                        name: d.info.name.clone(),
                        addr: d.info.addr.to_string(),
                        epoch: d.info.epoch,
                        up_for: now.duration_since(up),
                        last_seen: node.elapsed_since(d.info.last_heard),
                        filters: d.filters.clone(),
                        methods: r.methods,
                        rtt_here: d.rtt,
                        rtt_there: r.rtt_there,
                        stats: r.stats,
                    }
                }).collect();
                model.set_nodes(rows);
                let stats = node.stats().await?;
                model.lagged = stats.subscriber_lagged;
                model.foreign = crate::render::foreign_datagrams(&stats.core);
                let newcomer = details.iter().any(|d| !remote.contains_key(&d.info.id));
                let due = last_round.is_none_or(|t| now.duration_since(t) >= REMOTE_EVERY);
                if !round_busy && !details.is_empty() && (due || newcomer) {
                    round_busy = true;
                    last_round = Some(now);
                    let ids: Vec<NodeId> = details.iter().take(REMOTE_MAX).map(|d| d.info.id).collect();
                    tokio::spawn(ask_nodes(node.clone(), ids, tx.clone()));
                }
            }
            m = sub.recv_event() => match m {
                Some(Received::Message(m)) => {
                    let c = Captured {
                        at_ms: unix_ms(),
                        topic: m.topic,
                        from: m.from.to_string(),
                        name: m.from_name,
                        seq: m.seq,
                        payload: m.payload,
                    };
                    model.record(c, Instant::now());
                }
                Some(Received::Gap { .. }) => {}
                None => break Ok(()),
            },
        }
    };
    drop(term.take()); // the terminal is restored before anything more is printed
    if let Some(path) = &cfg.save {
        let n = save(&model, path)?;
        eprintln!("saved {n} message(s) to {}", path.display());
    }
    drop(sub);
    node.close().await?;
    result
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Asks each node for `$info` and `$stats`, concurrently, each within a second.
async fn ask_nodes(node: Node, ids: Vec<NodeId>, tx: mpsc::Sender<Input>) {
    let me = node.id().to_string();
    let asks: Vec<_> = ids
        .into_iter()
        .map(|id| {
            let (node, me) = (node.clone(), me.clone());
            tokio::spawn(async move {
                let limit = Duration::from_secs(1);
                let info = node.call(id, INFO_METHOD, Vec::new(), limit).await;
                let stats = node.call(id, STATS_METHOD, Vec::new(), limit).await;
                let answered = match (info, stats) {
                    (Ok(info), Ok(stats)) => Some(parse_remote(&info, &stats, &me)),
                    _ => None,
                };
                (id, answered)
            })
        })
        .collect();
    for ask in asks {
        if let Ok((id, r)) = ask.await {
            let _ = tx.send(Input::Remote(id, r)).await;
        }
    }
    let _ = tx.send(Input::RoundDone).await;
}

fn parse_remote(info: &[u8], stats: &[u8], me: &str) -> Remote {
    let mut r = Remote::default();
    for line in String::from_utf8_lossy(info).lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["method", m] => r.methods.push((*m).to_owned()),
            ["peer", id, "rtt_us", us] if *id == me => r.rtt_there = us.parse().ok().map(Duration::from_micros),
            _ => {}
        }
    }
    for line in String::from_utf8_lossy(stats).lines() {
        if let Some((k, v)) = line.split_once(' ') {
            if let Ok(v) = v.trim().parse() {
                r.stats.insert(k.to_owned(), v);
            }
        }
    }
    r
}

/// Writes every captured message as JSON lines; returns how many.
pub fn save(model: &Model, path: &Path) -> Result<usize> {
    let all = model.captured();
    let mut out = String::new();
    for c in &all {
        out.push_str(&c.to_json_line());
        out.push('\n');
    }
    std::fs::write(path, out).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(all.len())
}

/// Reads a file written by [`save`]; an error names the line and the field.
pub fn load(path: &Path) -> Result<Vec<Captured>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let c =
            Captured::from_json_line(line).map_err(|e| anyhow::anyhow!("{} line {}: {e}", path.display(), i + 1))?;
        out.push(c);
    }
    Ok(out)
}

/// Turns what the user typed for `p` into bytes: `hex:00ff..` as hex, else text where `\xNN`,
/// `\0`, `\n`, `\t` and `\\` are escapes.
pub fn parse_payload(text: &str) -> Result<Vec<u8>, String> {
    if let Some(h) = text.strip_prefix("hex:") {
        return crate::args::parse_hex(h);
    }
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find('\\') {
        out.extend_from_slice(&rest.as_bytes()[..i]);
        let esc = &rest[i + 1..];
        let (bytes, used): (Vec<u8>, usize) = match esc.chars().next() {
            Some('x') => {
                let digits = esc.get(1..3).ok_or(format!("'\\{esc}' needs two hex digits after \\x"))?;
                let b = u8::from_str_radix(digits, 16).map_err(|_| format!("'\\x{digits}' is not a hex byte"))?;
                (vec![b], 3)
            }
            Some('0') => (vec![0], 1),
            Some('n') => (vec![b'\n'], 1),
            Some('t') => (vec![b'\t'], 1),
            Some('\\') => (vec![b'\\'], 1),
            Some(c) => return Err(format!("unknown escape '\\{c}'; use \\xNN, \\0, \\n, \\t or \\\\")),
            None => return Err("a lone '\\' at the end; write \\\\ for a backslash".into()),
        };
        out.extend(bytes);
        rest = &esc[used..];
    }
    out.extend_from_slice(rest.as_bytes());
    Ok(out)
}

/// Plain mode: the same information as lines, one block per tick.
/// `mesh` (`group:port`) is named when another network's datagrams arrive and no node is seen.
pub fn plain_report(model: &Model, pattern: &Pattern, elapsed: Duration, mesh: &str) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "watch t={:.1}s rate={:.0}/s total={} topics={} nodes={} kept_kib={} lagged={} evicted_topics={} evicted_msgs={}",
        elapsed.as_secs_f64(),
        model.rate(),
        model.total,
        model.topics().count(),
        model.nodes.len(),
        model.bytes / 1024,
        model.lagged,
        model.topics_evicted,
        model.bytes_evicted
    );
    if model.foreign > 0 && model.nodes.is_empty() {
        let _ = writeln!(s, "note {}", crate::render::other_network_note(model.foreign, mesh));
    }
    for row in model.rows(pattern) {
        match &row.kind {
            RowKind::Folder => {}
            RowKind::Topic(name) => {
                let t = model.topic(name).expect("rows come from the model");
                let last = t.history.back().map(|c| {
                    let body = match crate::render::printable_text(&c.payload) {
                        _ if c.payload.is_empty() => "(empty)".to_owned(),
                        Some(text) => crate::render::one_line(text, 60),
                        None => format!("hex {}", crate::render::hex(&c.payload[..c.payload.len().min(32)])),
                    };
                    format!(" last={} B {body}", c.payload.len())
                });
                let _ = writeln!(
                    s,
                    "topic {name} rate={} total={} age={:.1}s qos={} from={}{}",
                    ui::rate(t.rate()),
                    t.total,
                    model.now.saturating_duration_since(t.last_seen).as_secs_f64(),
                    t.qos().replace(' ', "-"),
                    t.publishers.iter().cloned().collect::<Vec<_>>().join(","),
                    last.unwrap_or_default()
                );
            }
            RowKind::Filter(f) => {
                let by: Vec<String> = model.filters.get(f).into_iter().flatten().cloned().collect();
                let _ = writeln!(s, "filter {f} subscribed-by={}", by.join(","));
            }
        }
    }
    for n in &model.nodes {
        let ms = |d: Option<Duration>| d.map(|d| format!("{:.1}", d.as_secs_f64() * 1e3)).unwrap_or("-".into());
        let methods: Vec<&str> = n.methods.iter().map(String::as_str).filter(|m| !m.starts_with('$')).collect();
        let _ = writeln!(
            s,
            "node {} id={} addr={} epoch={} up={:.0}s rtt_ms={}/{} loss={} drop_auth={} drop_replay={} drop_malformed={} methods={} filters={} publishes={}",
            n.name,
            n.id,
            n.addr,
            n.epoch,
            n.up_for.as_secs_f64(),
            ms(n.rtt_here),
            ms(n.rtt_there),
            n.stat("gaps") + n.stat("fragments_lost"),
            n.stat("drop_auth"),
            n.stat("drop_replay"),
            n.stat("drop_malformed"),
            methods.join(","),
            n.filters.join(","),
            ui::short_list(&model.published_by(n))
        );
    }
    s
}

/// Acts on one key; `false` means quit.
async fn handle_key(
    k: ratatui::crossterm::event::KeyEvent,
    node: &Node,
    model: &mut Model,
    ui: &mut UiState,
    tx: &mpsc::Sender<Input>,
) -> bool {
    use ratatui::crossterm::event::{KeyCode, KeyEventKind, KeyModifiers};
    if k.kind == KeyEventKind::Release {
        return true;
    }
    if let Some((prompt, mut text)) = ui.input.take() {
        match k.code {
            KeyCode::Esc => ui.status = "cancelled".into(),
            KeyCode::Enter => submit(prompt, &text, node, model, ui, tx).await,
            KeyCode::Backspace => {
                text.pop();
                ui.input = Some((prompt, text));
            }
            KeyCode::Char('u') if k.modifiers.contains(KeyModifiers::CONTROL) => {
                ui.input = Some((prompt, String::new()))
            }
            KeyCode::Char(c) => {
                text.push(c);
                ui.input = Some((prompt, text));
            }
            _ => ui.input = Some((prompt, text)),
        }
        return true;
    }
    match k.code {
        KeyCode::Char('q') => return false,
        KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => return false,
        KeyCode::Up | KeyCode::Char('k') => ui.move_by(model, -1),
        KeyCode::Down | KeyCode::Char('j') => ui.move_by(model, 1),
        KeyCode::PageUp => ui.move_by(model, -10),
        KeyCode::PageDown => ui.move_by(model, 10),
        KeyCode::Tab => ui.focus = if ui.focus == Focus::Topics { Focus::Nodes } else { Focus::Topics },
        KeyCode::Char('[') => {
            let n = ui.topic.as_deref().and_then(|t| model.topic(t)).map_or(0, |t| t.history.len());
            ui.back = (ui.back + 1).min(n.saturating_sub(1));
        }
        KeyCode::Char(']') => ui.back = ui.back.saturating_sub(1),
        KeyCode::Char('d') => ui.decode = ui.decode.next(),
        KeyCode::Char('v') => ui.diff = !ui.diff,
        KeyCode::Char(' ') => {
            model.paused = !model.paused;
            ui.status = if model.paused { "paused: counting, not keeping" } else { "resumed" }.into();
        }
        KeyCode::Char('p') => match ui.topic.as_deref() {
            Some(t) if starling::Topic::new(t).is_ok() => ui.input = Some((Prompt::Publish, String::new())),
            Some(t) => ui.status = format!("cannot publish to '{t}': it is a filter with wildcards"),
            None => ui.status = "select a topic first (arrows)".into(),
        },
        KeyCode::Char('c') => {
            if ui.selected_node(model).is_some() {
                ui.input = Some((Prompt::Call, String::new()));
            } else {
                ui.status = "no node selected (Tab to the nodes pane, arrows to pick one)".into();
            }
        }
        KeyCode::Char('/') => ui.input = Some((Prompt::Filter, ui.pattern.text().to_owned())),
        KeyCode::Char('s') => ui.input = Some((Prompt::Save, format!("watch-{}.jsonl", unix_ms() / 1000))),
        _ => {}
    }
    true
}

async fn submit(
    prompt: Prompt,
    text: &str,
    node: &Node,
    model: &mut Model,
    ui: &mut UiState,
    tx: &mpsc::Sender<Input>,
) {
    match prompt {
        Prompt::Publish => {
            let topic = ui.topic.clone().unwrap_or_default();
            ui.status = match parse_payload(text) {
                Err(e) => format!("not published: {e}"),
                Ok(p) => match node.publish(&topic, p.clone()).await {
                    Ok(()) => format!("published {} B to {topic}", p.len()),
                    Err(e) => format!("publishing to {topic} failed: {e}"),
                },
            };
        }
        Prompt::Call => {
            let Some(n) = ui.selected_node(model) else {
                ui.status = "the selected node is gone".into();
                return;
            };
            let (method, arg) = text.trim_start().split_once(' ').unwrap_or((text.trim(), ""));
            if method.is_empty() {
                ui.status = "no method given; type `method [payload]`".into();
                return;
            }
            let payload = match parse_payload(arg) {
                Ok(p) => p,
                Err(e) => {
                    ui.status = format!("not called: {e}");
                    return;
                }
            };
            let Ok(id) = n.id.parse::<NodeId>() else { return };
            let (node, tx, who, method) = (node.clone(), tx.clone(), n.name.clone(), method.to_owned());
            ui.status = format!("calling {method} on {who}...");
            tokio::spawn(async move {
                let s = match node.call(id, &method, payload, Duration::from_secs(5)).await {
                    Ok(reply) => {
                        let shown = match crate::render::printable_text(&reply) {
                            Some(t) => crate::render::one_line(t, usize::MAX),
                            None => format!("hex {}", crate::render::hex(&reply)),
                        };
                        format!("reply from {who} to {method}: {shown}")
                    }
                    Err(e) => format!("call {method} on {who} failed: {e}"),
                };
                let _ = tx.send(Input::Status(s)).await;
            });
        }
        Prompt::Filter => match Pattern::parse(text) {
            Ok(p) => {
                ui.pattern = p;
                ui.status = format!("showing topics matching '{}'", ui.pattern.text());
            }
            Err(e) => ui.status = e,
        },
        Prompt::Save => {
            ui.status = match save(model, Path::new(text.trim())) {
                Ok(n) => format!("saved {n} message(s) to {}", text.trim()),
                Err(e) => format!("{e:#}"),
            }
        }
    }
}

/// The terminal while the UI runs: raw mode, alternate screen, and a thread reading keys.
struct Screen {
    terminal: ratatui::DefaultTerminal,
    stop_keys: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Screen {
    fn start(tx: mpsc::Sender<Input>) -> Result<Screen> {
        use std::io::IsTerminal as _;
        if !std::io::stdout().is_terminal() {
            bail!("standard output is not a terminal; use `starling watch --plain` for logs and scripts");
        }
        let terminal = ratatui::try_init().context("cannot set up the terminal")?;
        let stop_keys = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop = stop_keys.clone();
        std::thread::spawn(move || {
            use ratatui::crossterm::event;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match event::poll(Duration::from_millis(100)) {
                    Ok(true) => {
                        if let Ok(event::Event::Key(k)) = event::read() {
                            if tx.blocking_send(Input::Key(k)).is_err() {
                                return;
                            }
                        }
                    }
                    Ok(false) => {}
                    Err(_) => return,
                }
            }
        });
        Ok(Screen { terminal, stop_keys })
    }

    fn draw(&mut self, model: &Model, ui: &UiState) -> Result<()> {
        self.terminal.draw(|f| ui::draw(f, model, ui)).context("drawing the screen")?;
        Ok(())
    }
}

/// Leaves the terminal as it was, however `run` ends (errors included).
impl Drop for Screen {
    fn drop(&mut self) {
        self.stop_keys.store(true, std::sync::atomic::Ordering::Relaxed);
        ratatui::restore();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_payloads() {
        assert_eq!(parse_payload(r"on\x00\xff\n\\"), Ok(b"on\x00\xff\n\\".to_vec()));
        assert_eq!(parse_payload("hex:00ff10"), Ok(vec![0, 0xff, 0x10]));
        assert_eq!(parse_payload("plain"), Ok(b"plain".to_vec()));
        assert!(parse_payload(r"\xZZ").unwrap_err().contains("not a hex byte"));
        assert!(parse_payload(r"\q").unwrap_err().contains("unknown escape"));
        assert!(parse_payload("hex:abc").unwrap_err().contains("odd number"));
    }

    #[test]
    fn remote_info_and_stats_parse() {
        let r = parse_remote(
            b"method $stats\nmethod relay.set\npeer 00000000000000aa rtt_us 1500\npeer 00000000000000bb rtt_us 9\n",
            b"drop_auth 5\ngaps 2\n",
            "00000000000000aa",
        );
        assert_eq!(r.methods, ["$stats", "relay.set"]);
        assert_eq!(r.rtt_there, Some(Duration::from_micros(1500)));
        assert_eq!(r.stats["drop_auth"], 5);
    }
}
