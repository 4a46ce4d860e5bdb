//! How `starling watch` draws a [`Model`]: header, topic tree, the selected topic's messages,
//! hex and text panes side by side, the nodes pane, status and key help. Pure: a model and a
//! [`UiState`] in, a frame out, so every pane is tested on ratatui's `TestBackend`.

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Paragraph, Row as TableRow, Table, TableState};
use ratatui::Frame;

use super::decode::{self, Decode, ROW};
use super::model::{Captured, Model, Pattern, RowKind};

/// Which pane the arrow keys move in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Focus {
    /// The topic tree.
    #[default]
    Topics,
    /// The nodes pane.
    Nodes,
}

/// A line being typed at the bottom of the screen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prompt {
    /// Payload to publish on the selected topic.
    Publish,
    /// `method [payload]` to call on the selected node.
    Call,
    /// A pattern for the topic tree.
    Filter,
    /// A file to save the captured messages to.
    Save,
}

/// What is selected and how it is shown.
#[derive(Debug, Clone, Default)]
pub struct UiState {
    /// Where the arrows act.
    pub focus: Focus,
    /// The selected topic or filter, by name (stays put while the tree changes).
    pub topic: Option<String>,
    /// The selected node, by id (stays on it while others come and go).
    pub node: Option<String>,
    /// Which message of the topic's history: 0 the newest, 1 the one before, ...
    pub back: usize,
    /// The text pane's decoding.
    pub decode: Decode,
    /// Highlight what changed from the previous message.
    pub diff: bool,
    /// Which topics the tree shows.
    pub pattern: Pattern,
    /// The prompt being typed, and its text so far.
    pub input: Option<(Prompt, String)>,
    /// The outcome of the last action (publish, call reply, save, error).
    pub status: String,
}

impl UiState {
    /// The selectable names of the tree, in order.
    pub fn names(model: &Model, pattern: &Pattern) -> Vec<String> {
        model.rows(pattern).into_iter().filter_map(|r| r.kind.name().map(str::to_owned)).collect()
    }

    /// Moves the selection in the focused pane by `delta` rows.
    pub fn move_by(&mut self, model: &Model, delta: isize) {
        match self.focus {
            Focus::Topics => {
                let names = Self::names(model, &self.pattern);
                if names.is_empty() {
                    return;
                }
                let at = self.topic.as_ref().and_then(|t| names.iter().position(|n| n == t));
                let next = match at {
                    None => 0,
                    Some(i) => (i as isize + delta).clamp(0, names.len() as isize - 1) as usize,
                };
                if self.topic.as_ref() != Some(&names[next]) {
                    self.back = 0;
                }
                self.topic = Some(names[next].clone());
            }
            Focus::Nodes => {
                let n = model.nodes.len();
                if n > 0 {
                    let next = match self.node_index(model) {
                        None => 0,
                        Some(i) => (i as isize + delta).clamp(0, n as isize - 1) as usize,
                    };
                    self.node = Some(model.nodes[next].id.clone());
                }
            }
        }
    }
}

impl UiState {
    /// Where the selected node is in the nodes pane, if it is still there.
    pub fn node_index(&self, model: &Model) -> Option<usize> {
        self.node.as_ref().and_then(|id| model.nodes.iter().position(|n| &n.id == id))
    }

    /// The selected node, if it is still up.
    pub fn selected_node<'a>(&self, model: &'a Model) -> Option<&'a super::model::NodeRow> {
        self.node_index(model).map(|i| &model.nodes[i])
    }
}

const HELP: &str = "↑↓ select  Tab topics/nodes  [ ] older/newer  d decode  v diff  p publish  c call  \
                    space pause  / filter  s save  q quit";

/// Draws the whole screen.
pub fn draw(f: &mut Frame, model: &Model, ui: &UiState) {
    let node_rows = (model.nodes.len() as u16).clamp(1, 8) + 3;
    let [header, main, nodes, status, help] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(8),
        Constraint::Length(node_rows),
        Constraint::Length(1),
        Constraint::Length(1),
    ])
    .areas(f.area());
    f.render_widget(Paragraph::new(header_line(model, ui)), header);
    let [tree, right] = Layout::horizontal([Constraint::Percentage(45), Constraint::Percentage(55)]).areas(main);
    draw_tree(f, tree, model, ui);
    let [list, diff, panes] =
        Layout::vertical([Constraint::Length(8), Constraint::Length(u16::from(ui.diff)), Constraint::Min(4)])
            .areas(right);
    draw_messages(f, list, model, ui);
    if ui.diff {
        f.render_widget(Paragraph::new(diff_line(model, ui)).style(Style::new().add_modifier(Modifier::BOLD)), diff);
    }
    draw_payload(f, panes, model, ui);
    draw_nodes(f, nodes, model, ui);
    let status_text = match &ui.input {
        Some((p, text)) => format!("{}{text}_", prompt_label(*p, ui, model)),
        None => ui.status.clone(),
    };
    f.render_widget(Paragraph::new(status_text), status);
    f.render_widget(Paragraph::new(HELP).style(Style::new().add_modifier(Modifier::DIM)), help);
}

fn prompt_label(p: Prompt, ui: &UiState, model: &Model) -> String {
    match p {
        Prompt::Publish => {
            format!("publish to {} (text with \\xNN, or hex:00ff): ", ui.topic.as_deref().unwrap_or("?"))
        }
        Prompt::Call => {
            let who = ui.selected_node(model).map(|n| n.name.as_str()).unwrap_or("?");
            format!("call on {who} (method [payload]): ")
        }
        Prompt::Filter => "show topics matching (text or MQTT filter, empty for all): ".into(),
        Prompt::Save => "save captured messages to file: ".into(),
    }
}

/// The first line: totals and bounds.
pub fn header_line(model: &Model, ui: &UiState) -> String {
    let mut s = format!(
        "starling watch  {} node(s)  {} topic(s)  {:.0} msg/s  {} msg  kept {} KiB",
        model.nodes.len(),
        model.topics().count(),
        model.rate(),
        model.total,
        model.bytes / 1024
    );
    if model.lagged > 0 || model.topics_evicted > 0 || model.bytes_evicted > 0 {
        s += &format!(
            "  dropped {} (lagged)  evicted {} topic(s) {} msg",
            model.lagged, model.topics_evicted, model.bytes_evicted
        );
    }
    if model.foreign > 0 && model.nodes.is_empty() {
        s += &format!("  {} datagram(s) from another network (another key or mode?)", model.foreign);
    }
    if model.paused {
        s += &format!("  PAUSED ({} not kept)", model.skipped_paused);
    }
    if ui.pattern != Pattern::All {
        s += &format!("  filter '{}'", ui.pattern.text());
    }
    s
}

/// A rate as shown: whole messages per second, one decimal below 10.
pub fn rate(r: f64) -> String {
    if r < 10.0 {
        format!("{r:.1}/s")
    } else {
        format!("{r:.0}/s")
    }
}

fn age(d: std::time::Duration) -> String {
    let s = d.as_secs_f64();
    if s < 60.0 {
        format!("{s:.1}s")
    } else if s < 3600.0 {
        format!("{:.0}m", s / 60.0)
    } else {
        format!("{:.0}h", s / 3600.0)
    }
}

fn block(title: String, focused: bool) -> Block<'static> {
    let b = Block::default().borders(Borders::ALL).title(title);
    if focused {
        b.border_style(Style::new().add_modifier(Modifier::BOLD))
    } else {
        b
    }
}

fn draw_tree(f: &mut Frame, area: Rect, model: &Model, ui: &UiState) {
    let rows = model.rows(&ui.pattern);
    let mut selected = None;
    let table_rows: Vec<TableRow> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let name = format!("{}{}", "  ".repeat(r.depth), r.label);
            if r.kind.name().is_some() && r.kind.name() == ui.topic.as_deref() {
                selected = Some(i);
            }
            match &r.kind {
                RowKind::Folder => TableRow::new(vec![name]),
                RowKind::Topic(t) => {
                    let s = model.topic(t).expect("rows come from the model");
                    TableRow::new(vec![
                        name,
                        rate(s.rate()),
                        age(model.now.saturating_duration_since(s.last_seen)),
                        if s.qos() == "best effort" { "be".into() } else { s.qos().chars().take(3).collect() },
                        s.publishers.iter().cloned().collect::<Vec<_>>().join(","),
                    ])
                }
                RowKind::Filter(flt) => {
                    let by = model.filters.get(flt).map(|s| s.iter().cloned().collect::<Vec<_>>().join(","));
                    TableRow::new(vec![name, "sub".into(), String::new(), String::new(), by.unwrap_or_default()])
                        .style(Style::new().add_modifier(Modifier::ITALIC))
                }
            }
        })
        .collect();
    let widths = [
        Constraint::Min(12),
        Constraint::Length(7),
        Constraint::Length(6),
        Constraint::Length(3),
        Constraint::Percentage(30),
    ];
    let header = TableRow::new(vec!["TOPIC", "RATE", "AGE", "QOS", "FROM / SUB BY"]);
    let table = Table::new(table_rows, widths)
        .header(header.style(Style::new().add_modifier(Modifier::UNDERLINED)))
        .block(block(format!("topics ({})", model.topics().count()), ui.focus == Focus::Topics))
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED))
        .highlight_symbol(">");
    let mut state = TableState::default().with_selected(selected);
    f.render_stateful_widget(table, area, &mut state);
}

/// The selected topic's messages, newest first, and the index of the one shown in the panes.
fn history<'a>(model: &'a Model, ui: &UiState) -> Vec<&'a Captured> {
    ui.topic.as_deref().and_then(|t| model.topic(t)).map(|t| t.history.iter().rev().collect()).unwrap_or_default()
}

fn clock(at_ms: u64) -> String {
    let s = at_ms / 1000;
    format!("{:02}:{:02}:{:02}.{:03}", s / 3600 % 24, s / 60 % 60, s % 60, at_ms % 1000)
}

fn draw_messages(f: &mut Frame, area: Rect, model: &Model, ui: &UiState) {
    let msgs = history(model, ui);
    let lines: Vec<Line> = msgs
        .iter()
        .enumerate()
        .take(area.height.saturating_sub(2) as usize)
        .map(|(i, m)| {
            let preview = match crate::render::printable_text(&m.payload) {
                Some(t) => crate::render::one_line(t, 40),
                None => format!("hex {}", crate::render::hex(&m.payload[..m.payload.len().min(16)])),
            };
            let mark = if i == ui.back { ">" } else { " " };
            let seq = m.seq.map(|s| format!(" #{s}")).unwrap_or_default();
            let line =
                Line::from(format!("{mark}{} {} {} B{seq}  {preview}", clock(m.at_ms), m.sender(), m.payload.len()));
            if i == ui.back {
                line.style(Style::new().add_modifier(Modifier::REVERSED))
            } else {
                line
            }
        })
        .collect();
    let title = match ui.topic.as_deref() {
        Some(t) => format!("messages on {t} (newest first)"),
        None => "messages (select a topic)".into(),
    };
    f.render_widget(Paragraph::new(lines).block(block(title, false)), area);
}

/// The diff line above the panes: what changed from the previous message of the topic.
fn diff_line(model: &Model, ui: &UiState) -> String {
    let msgs = history(model, ui);
    match (msgs.get(ui.back), msgs.get(ui.back + 1)) {
        (Some(m), Some(prev)) => format!("diff: {}", decode::diff(&prev.payload, &m.payload).summary()),
        _ => "diff: no previous message".into(),
    }
}

fn draw_payload(f: &mut Frame, area: Rect, model: &Model, ui: &UiState) {
    let msgs = history(model, ui);
    let shown = msgs.get(ui.back);
    let hex_width = (6 + 3 * ROW + 2) as u16;
    let [hex_area, text_area] = Layout::horizontal([Constraint::Length(hex_width), Constraint::Min(10)]).areas(area);
    let Some(m) = shown else {
        let note: String = match ui.topic.as_deref() {
            Some(t) if model.filters.contains_key(t) && model.topic(t).is_none() => {
                "a filter nodes subscribed to; nothing heard on it yet (p publishes to it if it has no wildcard)".into()
            }
            _ => "no message".into(),
        };
        f.render_widget(Paragraph::new("").block(block("hex".into(), false)), hex_area);
        f.render_widget(Paragraph::new(note).block(block(ui.decode.name().into(), false)), text_area);
        return;
    };
    let diff = if ui.diff { msgs.get(ui.back + 1).map(|prev| decode::diff(&prev.payload, &m.payload)) } else { None };
    let changed = |i: usize| diff.as_ref().is_some_and(|d| d.changed.binary_search(&i).is_ok());
    let hex_lines: Vec<Line> = m
        .payload
        .chunks(ROW)
        .enumerate()
        .map(|(r, chunk)| {
            let mut spans = vec![Span::raw(format!("{:04x} ", r * ROW))];
            for (j, b) in chunk.iter().enumerate() {
                let style = if changed(r * ROW + j) {
                    Style::new().add_modifier(Modifier::REVERSED | Modifier::BOLD)
                } else {
                    Style::new()
                };
                spans.push(Span::raw(" "));
                spans.push(Span::styled(format!("{b:02x}"), style));
            }
            Line::from(spans)
        })
        .collect();
    let text: Vec<Line> = decode::text_lines(&m.payload, ui.decode).into_iter().map(Line::from).collect();
    let hex_title = format!("hex ({} B)", m.payload.len());
    let text_title = format!("{} [d]", ui.decode.name());
    f.render_widget(Paragraph::new(hex_lines).block(block(hex_title, false)), hex_area);
    f.render_widget(Paragraph::new(text).block(block(text_title, false)), text_area);
}

fn ms(d: Option<std::time::Duration>) -> String {
    d.map(|d| format!("{:.1}", d.as_secs_f64() * 1000.0)).unwrap_or_else(|| "-".into())
}

/// The first two names and how many more.
pub fn short_list(names: &[&str]) -> String {
    match names {
        [] => String::new(),
        [a] => (*a).to_owned(),
        [a, b] => format!("{a},{b}"),
        [a, b, rest @ ..] => format!("{a},{b} +{}", rest.len()),
    }
}

fn draw_nodes(f: &mut Frame, area: Rect, model: &Model, ui: &UiState) {
    let rows: Vec<TableRow> = model
        .nodes
        .iter()
        .map(|n| {
            let methods: Vec<&str> = n.methods.iter().map(String::as_str).filter(|m| !m.starts_with('$')).collect();
            TableRow::new(vec![
                n.name.clone(),
                n.id.clone(),
                n.addr.clone(),
                format!("{}/{}", n.epoch, age(n.up_for)),
                format!("{}/{}", ms(n.rtt_here), ms(n.rtt_there)),
                format!("{}", n.stat("gaps") + n.stat("fragments_lost")),
                format!("{}/{}/{}", n.stat("drop_auth"), n.stat("drop_replay"), n.stat("drop_malformed")),
                methods.join(","),
                n.filters.join(","),
                short_list(&model.published_by(n)),
            ])
        })
        .collect();
    let widths = [
        Constraint::Length(14),
        Constraint::Length(16),
        Constraint::Length(15),
        Constraint::Length(8),
        Constraint::Length(11),
        Constraint::Length(4),
        Constraint::Length(11),
        Constraint::Percentage(12),
        Constraint::Percentage(12),
        Constraint::Fill(1),
    ];
    let header = TableRow::new(vec![
        "NAME",
        "ID",
        "ADDRESS",
        "EPOCH/UP",
        "RTT ms h/t",
        "LOSS",
        "MAC/RPL/MAL",
        "METHODS",
        "FILTERS",
    ]);
    let selected = if ui.focus == Focus::Nodes { ui.node_index(model) } else { None };
    let table = Table::new(rows, widths)
        .header(header.style(Style::new().add_modifier(Modifier::UNDERLINED)))
        .block(block(format!("nodes ({})", model.nodes.len()), ui.focus == Focus::Nodes))
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED))
        .highlight_symbol(">");
    let mut state = TableState::default().with_selected(selected);
    f.render_stateful_widget(table, area, &mut state);
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use ratatui::backend::TestBackend;
    use ratatui::Terminal;

    use super::super::model::{Limits, NodeRow};
    use super::*;

    fn screen(model: &Model, ui: &UiState, w: u16, h: u16) -> Vec<String> {
        let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
        t.draw(|f| draw(f, model, ui)).unwrap();
        let buf = t.backend().buffer().clone();
        (0..h)
            .map(|y| {
                let mut s = String::new();
                let mut x = 0;
                while x < w {
                    let sym = buf[(x, y)].symbol();
                    s.push_str(sym);
                    x += 1;
                }
                s
            })
            .collect()
    }

    fn fixed() -> (Model, UiState) {
        let t0 = Instant::now();
        let mut m = Model::new(Limits::default(), t0);
        let cap = |payload: &[u8], at_ms: u64, seq| Captured {
            at_ms,
            topic: "cam/1/frame".into(),
            from: "00000000000000aa".into(),
            name: Some("camera".into()),
            seq,
            payload: payload.to_vec(),
        };
        m.record(cap(b"\x00\x00\xffA\xc3(hi", 3_600_000 + 1_000, None), t0);
        m.record(cap(b"\x00\x01\xffA\xc3(hi\x00zz", 3_600_000 + 2_500, Some(4)), t0 + Duration::from_millis(500));
        let mut temp = cap(b"21.5", 3_600_000 + 3_000, None);
        temp.topic = "home/kitchen/temp".into();
        m.record(temp, t0 + Duration::from_millis(900));
        m.set_nodes(vec![NodeRow {
            id: "00000000000000bb".into(),
            name: "heater".into(),
            addr: "127.0.0.1:40000".into(),
            epoch: 3,
            up_for: Duration::from_secs(42),
            filters: vec!["home/+/cmd".into()],
            methods: vec!["$stats".into(), "$info".into(), "relay.set".into()],
            rtt_here: Some(Duration::from_micros(1500)),
            rtt_there: Some(Duration::from_micros(2500)),
            stats: [("drop_auth", 5), ("drop_replay", 6), ("drop_malformed", 7), ("gaps", 2), ("fragments_lost", 1)]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
            ..NodeRow::default()
        }]);
        m.tick(t0 + Duration::from_secs(2));
        let ui = UiState { topic: Some("cam/1/frame".into()), ..UiState::default() };
        (m, ui)
    }

    fn find<'a>(lines: &'a [String], needle: &str) -> &'a str {
        lines
            .iter()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line has {needle:?}:\n{}", lines.join("\n")))
    }

    #[test]
    fn payload_panes_show_hex_beside_text_for_zero_bytes_and_invalid_utf8() {
        let (m, mut ui) = fixed();
        let s = screen(&m, &ui, 140, 34);
        // newest message: 00 01 ff 41 c3 28 68 69 | 00 7a 7a; hex on the left, its text on the same row
        let row0 = find(&s, "0000  00 01 ff 41 c3 28 68 69");
        assert!(row0.contains("│...A.(hi"), "text pane beside the hex row: {row0}");
        let row1 = find(&s, "0008  00 7a 7a");
        assert!(row1.contains("│.zz"), "{row1}");
        assert!(find(&s, "hex (11 B)").contains("text [d]"));

        ui.decode = Decode::Utf8;
        let s = screen(&m, &ui, 140, 34);
        let row0 = find(&s, "0000  00 01 ff 41 c3 28 68 69");
        assert!(row0.contains(r"\0\x01\xffA\xc3(hi\0zz"), "every byte visible as UTF-8 escapes: {row0}");

        ui.diff = true;
        let s = screen(&m, &ui, 140, 34);
        find(&s, "diff: 4 byte(s) differ at 0x1,0x8,0x9,0xa; length 8 -> 11");

        ui.back = 1; // the older message
        ui.decode = Decode::Ascii;
        ui.diff = false;
        let s = screen(&m, &ui, 140, 34);
        assert!(find(&s, "0000  00 00 ff 41 c3 28 68 69").contains("│...A.(hi"));
        assert!(!s.iter().any(|l| l.contains("0008 ")), "8 bytes are one row");
    }

    #[test]
    fn topic_tree_shows_rate_age_qos_publishers_and_announced_filters() {
        let (m, ui) = fixed();
        let s = screen(&m, &ui, 140, 34);
        assert!(s[0].starts_with("starling watch  1 node(s)  2 topic(s)  2 msg/s  3 msg"), "{}", s[0]);
        let frame = find(&s, "    frame ");
        assert!(
            frame.contains(">") && frame.contains("1.0/s") && frame.contains("1.5s") && frame.contains("mix"),
            "{frame}"
        );
        assert!(frame.contains("camera"), "{frame}");
        assert!(find(&s, "    temp").contains("1.1s"));
        let cmd = find(&s, "    cmd ");
        assert!(cmd.contains("sub") && cmd.contains("heater"), "a filter announced by heater: {cmd}");
        find(&s, "│ cam ");
        find(&s, "│   1 ");
    }

    #[test]
    fn messages_pane_lists_newest_first_with_binary_as_hex() {
        let (m, ui) = fixed();
        let s = screen(&m, &ui, 140, 34);
        let newest = find(&s, "01:00:02.500 camera 11 B #4");
        assert!(newest.contains(">01:00:02.500") && newest.contains("hex 0001ff41c3286869007a7a"), "{newest}");
        find(&s, " 01:00:01.000 camera 8 B  hex 0000ff41c3286869");
        find(&s, "messages on cam/1/frame (newest first)");
    }

    #[test]
    fn nodes_pane_shows_identity_rtt_loss_drops_and_offers() {
        let (mut m, mut ui) = fixed();
        let mut nodes = m.nodes.clone();
        nodes.push(NodeRow { id: "00000000000000aa".into(), name: "camera".into(), ..NodeRow::default() });
        m.set_nodes(nodes);
        ui.focus = Focus::Nodes;
        ui.move_by(&m, 1); // the first: camera
        ui.move_by(&m, 1);
        assert_eq!(ui.node.as_deref(), Some("00000000000000bb"));
        let s = screen(&m, &ui, 180, 34);
        let row = find(&s, "00000000000000aa");
        assert!(row.contains("cam/1/frame,home/kitchen/temp"), "what camera publishes: {row}");
        let row = find(&s, ">heater");
        for want in
            ["00000000000000bb", "127.0.0.1:40000", "3/42.0s", "1.5/2.5", " 3 ", "5/6/7", "relay.set", "home/+/cmd"]
        {
            assert!(row.contains(want), "{want:?} missing: {row}");
        }
        assert!(!row.contains("$stats"), "built-in methods are not listed");
        assert!(row.contains(">heater"), "selected when the nodes pane has focus: {row}");
        find(&s, "MAC/RPL/MAL");
    }

    #[test]
    fn prompts_and_filter_show_on_screen() {
        let (m, mut ui) = fixed();
        ui.input = Some((Prompt::Publish, r"on\x00".into()));
        ui.pattern = Pattern::parse("home").unwrap();
        let s = screen(&m, &ui, 140, 34);
        find(&s, r"publish to cam/1/frame (text with \xNN, or hex:00ff): on\x00_");
        assert!(s[0].contains("filter 'home'"));
        assert!(!s.iter().any(|l| l.contains("    frame")), "cam/1/frame is filtered out of the tree");
        ui.move_by(&m, 1);
        assert_eq!(ui.topic.as_deref(), Some("home/+/cmd"), "selection moves within what is shown");
    }

    #[test]
    fn another_networks_datagrams_show_in_the_header_while_no_node_is_seen() {
        let (mut m, ui) = fixed();
        m.nodes.clear();
        m.foreign = 12;
        assert!(header_line(&m, &ui).contains("12 datagram(s) from another network"));
        m.foreign = 0;
        assert!(!header_line(&m, &ui).contains("another network"));
    }
}
