//! What `starling watch` knows, without any terminal: the topic tree with rates and bounded
//! per-topic histories, the filters peers announced, the node table, and the selection state the
//! screen shows. Every collection here has a bound, so a flood cannot grow it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use base64::Engine as _;

/// How much `watch` keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Messages kept per topic (`--history`).
    pub history: usize,
    /// Topics tracked; the one heard from least recently is evicted first (`--max-topics`).
    pub max_topics: usize,
    /// Payload bytes kept across all histories (`--max-bytes`).
    pub max_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { history: 100, max_topics: 1000, max_bytes: 32 << 20 }
    }
}

/// Publishers remembered per topic (the most recent ones).
const MAX_PUBLISHERS: usize = 8;

/// One captured message: what the save file holds, one JSON object per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Captured {
    /// When it arrived, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// Topic name.
    pub topic: String,
    /// Publisher id, 16 hex digits.
    pub from: String,
    /// Publisher name, if its beacon was heard.
    pub name: Option<String>,
    /// Sequence number for reliable messages, `None` for best effort.
    pub seq: Option<u64>,
    /// Payload bytes.
    pub payload: Vec<u8>,
}

impl Captured {
    /// The save format: `{"t_ms":..,"topic":..,"from":..,"name":..,"seq":..,"payload_b64":..}`.
    pub fn to_json_line(&self) -> String {
        serde_json::json!({
            "t_ms": self.at_ms,
            "topic": self.topic,
            "from": self.from,
            "name": self.name,
            "seq": self.seq,
            "payload_b64": base64::engine::general_purpose::STANDARD.encode(&self.payload),
        })
        .to_string()
    }

    /// Reads one line of the save format back; the error names the field at fault.
    pub fn from_json_line(line: &str) -> Result<Captured, String> {
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
        let field = |k: &str| v.get(k).filter(|x| !x.is_null());
        let topic = field("topic").and_then(|t| t.as_str()).ok_or("field `topic` (a string) is missing")?;
        let b64 = field("payload_b64").and_then(|t| t.as_str()).ok_or("field `payload_b64` (a string) is missing")?;
        let payload = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| format!("field `payload_b64` is not base64: {e}"))?;
        let number = |k: &str| -> Result<Option<u64>, String> {
            match field(k) {
                None => Ok(None),
                Some(x) => x.as_u64().map(Some).ok_or(format!("field `{k}` is not a non-negative integer")),
            }
        };
        Ok(Captured {
            at_ms: number("t_ms")?.unwrap_or(0),
            topic: topic.to_owned(),
            from: field("from").and_then(|f| f.as_str()).unwrap_or_default().to_owned(),
            name: field("name").and_then(|f| f.as_str()).map(str::to_owned),
            seq: number("seq")?,
            payload,
        })
    }

    /// The sender as shown: its name, else its id.
    pub fn sender(&self) -> &str {
        self.name.as_deref().filter(|n| !n.is_empty()).unwrap_or(&self.from)
    }
}

/// Counts over time, turned into a rate once a second.
#[derive(Debug, Clone, Copy)]
struct Meter {
    since: Instant,
    at_since: u64,
    rate: f64,
}

impl Meter {
    fn new(now: Instant, total: u64) -> Self {
        Meter { since: now, at_since: total, rate: 0.0 }
    }

    fn tick(&mut self, now: Instant, total: u64) {
        let dt = now.saturating_duration_since(self.since);
        if dt >= Duration::from_secs(1) {
            self.rate = (total - self.at_since) as f64 / dt.as_secs_f64();
            *self = Meter { since: now, at_since: total, rate: self.rate };
        }
    }
}

/// A topic heard on the mesh.
#[derive(Debug, Clone)]
pub struct TopicStats {
    /// Messages heard on it (also while paused).
    pub total: u64,
    /// Of which reliable.
    pub reliable: u64,
    /// When the last one arrived.
    pub last_seen: Instant,
    /// The most recent publishers (names, else ids), at most eight.
    pub publishers: VecDeque<String>,
    /// The last messages, oldest first.
    pub history: VecDeque<Captured>,
    bytes: usize,
    meter: Meter,
}

impl TopicStats {
    /// Messages per second over the last second or so.
    pub fn rate(&self) -> f64 {
        self.meter.rate
    }

    /// `best effort`, `reliable` or `mixed`, from what was heard.
    pub fn qos(&self) -> &'static str {
        match (self.reliable, self.total - self.reliable) {
            (0, _) => "best effort",
            (_, 0) => "reliable",
            _ => "mixed",
        }
    }
}

/// A node of the mesh as `watch` sees it, refreshed from beacons, `$info` and `$stats`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeRow {
    /// Its id, 16 hex digits.
    pub id: String,
    /// Its announced name.
    pub name: String,
    /// Address its frames come from.
    pub addr: String,
    /// Its boot epoch.
    pub epoch: u32,
    /// How long `watch` has seen it up.
    pub up_for: Duration,
    /// How long since it was last heard.
    pub last_seen: Duration,
    /// Subscription filters it announced.
    pub filters: Vec<String>,
    /// Methods it serves (from its `$info`); empty until it answered.
    pub methods: Vec<String>,
    /// Round trip from `watch` to it, as `watch` measured it.
    pub rtt_here: Option<Duration>,
    /// Round trip from it to `watch`, as the node measured it (from its `$info`).
    pub rtt_there: Option<Duration>,
    /// Its counters (from its `$stats`), by name.
    pub stats: BTreeMap<String, u64>,
}

impl NodeRow {
    /// A counter of the node, 0 if it did not report it.
    pub fn stat(&self, name: &str) -> u64 {
        self.stats.get(name).copied().unwrap_or(0)
    }
}

/// Everything `watch` shows.
#[derive(Debug)]
pub struct Model {
    /// Bounds in force.
    pub limits: Limits,
    topics: BTreeMap<String, TopicStats>,
    /// Filters announced by peers, each with the names of the nodes that announced it.
    pub filters: BTreeMap<String, BTreeSet<String>>,
    /// Nodes up, sorted by name.
    pub nodes: Vec<NodeRow>,
    /// Messages heard in all.
    pub total: u64,
    meter: Meter,
    /// Topics evicted because `max_topics` was reached.
    pub topics_evicted: u64,
    /// Messages dropped from histories to keep within `max_bytes`.
    pub bytes_evicted: u64,
    /// Messages counted but not kept while paused.
    pub skipped_paused: u64,
    /// Messages the node dropped because `watch` did not keep up (its `subscriber_lagged`).
    pub lagged: u64,
    /// Datagrams the node heard from another network (another key or mode): shown, since a
    /// wrong key otherwise looks like an empty mesh.
    pub foreign: u64,
    /// While paused, histories stay as they are (counts and rates go on).
    pub paused: bool,
    /// Payload bytes held in histories.
    pub bytes: usize,
    /// The time ages are shown against (set by [`tick`](Self::tick)).
    pub now: Instant,
}

impl Model {
    /// An empty model.
    pub fn new(limits: Limits, now: Instant) -> Self {
        Model {
            limits: Limits { history: limits.history.max(1), max_topics: limits.max_topics.max(1), ..limits },
            topics: BTreeMap::new(),
            filters: BTreeMap::new(),
            nodes: Vec::new(),
            total: 0,
            meter: Meter::new(now, 0),
            topics_evicted: 0,
            bytes_evicted: 0,
            skipped_paused: 0,
            lagged: 0,
            foreign: 0,
            paused: false,
            bytes: 0,
            now,
        }
    }

    /// Takes in one message: cheap (a map lookup and a ring push), so it keeps up with floods.
    pub fn record(&mut self, m: Captured, now: Instant) {
        self.total += 1;
        if !self.topics.contains_key(&m.topic) {
            if self.topics.len() >= self.limits.max_topics {
                self.evict_stalest_topics();
            }
            let t = TopicStats {
                total: 0,
                reliable: 0,
                last_seen: now,
                publishers: VecDeque::new(),
                history: VecDeque::new(),
                bytes: 0,
                meter: Meter::new(now, 0),
            };
            self.topics.insert(m.topic.clone(), t);
        }
        let t = self.topics.get_mut(&m.topic).expect("inserted above");
        t.total += 1;
        t.reliable += u64::from(m.seq.is_some());
        t.last_seen = now;
        let who = m.sender();
        if t.publishers.front().is_none_or(|p| p != who) {
            t.publishers.retain(|p| p != who);
            t.publishers.push_front(who.to_owned());
            t.publishers.truncate(MAX_PUBLISHERS);
        }
        if self.paused {
            self.skipped_paused += 1;
            return;
        }
        let size = m.payload.len();
        t.history.push_back(m);
        t.bytes += size;
        self.bytes += size;
        if t.history.len() > self.limits.history {
            let old = t.history.pop_front().expect("longer than the limit");
            t.bytes -= old.payload.len();
            self.bytes -= old.payload.len();
        }
        self.shed_bytes();
    }

    /// Drops the oldest messages of the fullest histories until within `max_bytes` (the newest
    /// message of a topic stays, whatever its size).
    fn shed_bytes(&mut self) {
        while self.bytes > self.limits.max_bytes {
            let Some(t) = self.topics.values_mut().filter(|t| t.history.len() > 1).max_by_key(|t| t.bytes) else {
                return;
            };
            let old = t.history.pop_front().expect("more than one");
            t.bytes -= old.payload.len();
            self.bytes -= old.payload.len();
            self.bytes_evicted += 1;
        }
    }

    /// Forgets the least recently heard sixteenth of the topics at once, so that a stream of new
    /// topics costs one scan per batch rather than one per message.
    fn evict_stalest_topics(&mut self) {
        let batch = (self.limits.max_topics / 16).max(1);
        let mut ages: Vec<(Instant, &String)> = self.topics.iter().map(|(k, t)| (t.last_seen, k)).collect();
        let cut = batch.min(ages.len()) - 1;
        ages.select_nth_unstable(cut);
        let victims: Vec<String> = ages[..=cut].iter().map(|(_, k)| (*k).clone()).collect();
        for k in victims {
            let t = self.topics.remove(&k).expect("just listed");
            self.bytes -= t.bytes;
            self.topics_evicted += 1;
        }
    }

    /// Updates the rates (once a second) and the time ages are shown against.
    pub fn tick(&mut self, now: Instant) {
        self.now = now;
        self.meter.tick(now, self.total);
        for t in self.topics.values_mut() {
            t.meter.tick(now, t.total);
        }
    }

    /// Messages per second on the whole mesh (as heard here).
    pub fn rate(&self) -> f64 {
        self.meter.rate
    }

    /// A topic's statistics.
    pub fn topic(&self, name: &str) -> Option<&TopicStats> {
        self.topics.get(name)
    }

    /// Topics heard, in name order.
    pub fn topics(&self) -> impl Iterator<Item = (&str, &TopicStats)> {
        self.topics.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The topics a node (by name, or id when it has none) was heard publishing on lately.
    pub fn published_by(&self, node: &NodeRow) -> Vec<&str> {
        let who = if node.name.is_empty() { &node.id } else { &node.name };
        self.topics.iter().filter(|(_, t)| t.publishers.iter().any(|p| p == who)).map(|(k, _)| k.as_str()).collect()
    }

    /// Replaces the node table, and the announced filters with theirs.
    pub fn set_nodes(&mut self, mut nodes: Vec<NodeRow>) {
        nodes.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
        self.filters.clear();
        for n in &nodes {
            for f in &n.filters {
                let who = if n.name.is_empty() { n.id.clone() } else { n.name.clone() };
                self.filters.entry(f.clone()).or_default().insert(who);
            }
        }
        self.nodes = nodes;
    }

    /// Every message in every history, oldest first: what `s` saves.
    pub fn captured(&self) -> Vec<&Captured> {
        let mut all: Vec<&Captured> = self.topics.values().flat_map(|t| t.history.iter()).collect();
        all.sort_by_key(|c| c.at_ms);
        all
    }

    /// The rows of the topic tree that match `pattern`: parents as folders, then topics heard
    /// and filters announced.
    pub fn rows(&self, pattern: &Pattern) -> Vec<Row> {
        let mut leaves: BTreeMap<&str, RowKind> = BTreeMap::new();
        for f in self.filters.keys() {
            leaves.insert(f, RowKind::Filter(f.clone()));
        }
        for k in self.topics.keys() {
            leaves.insert(k, RowKind::Topic(k.clone())); // a heard topic wins over an equal filter
        }
        let mut rows = Vec::new();
        let mut open: Vec<&str> = Vec::new();
        for (name, kind) in leaves {
            if !pattern.matches(name) {
                continue;
            }
            let levels: Vec<&str> = name.split('/').collect();
            let parents = &levels[..levels.len() - 1];
            let common = open.iter().zip(parents).take_while(|(a, b)| a == b).count();
            open.truncate(common);
            for (depth, level) in parents.iter().enumerate().skip(common) {
                rows.push(Row { depth, label: (*level).to_owned(), kind: RowKind::Folder });
                open.push(level);
            }
            rows.push(Row { depth: parents.len(), label: levels[levels.len() - 1].to_owned(), kind });
        }
        rows
    }
}

/// One line of the topic tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// Nesting level (0 = top).
    pub depth: usize,
    /// The last level of the name.
    pub label: String,
    /// What it is.
    pub kind: RowKind,
}

/// What a tree row stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowKind {
    /// A level with topics below it.
    Folder,
    /// A topic messages were heard on (full name).
    Topic(String),
    /// A filter a peer subscribed to, before or without traffic (full text).
    Filter(String),
}

impl RowKind {
    /// The full topic or filter name; `None` for folders.
    pub fn name(&self) -> Option<&str> {
        match self {
            RowKind::Folder => None,
            RowKind::Topic(n) | RowKind::Filter(n) => Some(n),
        }
    }
}

/// Which topics the tree shows (`/` in the UI, `--filter` in plain mode): an MQTT filter when it
/// has wildcards, else a substring.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Pattern {
    /// Everything.
    #[default]
    All,
    /// Names containing this text.
    Contains(String),
    /// Names the MQTT filter matches.
    Filter(starling::TopicFilter),
}

impl Pattern {
    /// Parses what the user typed; an invalid filter is an error saying why.
    pub fn parse(text: &str) -> Result<Pattern, String> {
        let t = text.trim();
        if t.is_empty() {
            Ok(Pattern::All)
        } else if t.contains(['+', '#']) {
            starling::TopicFilter::new(t).map(Pattern::Filter).map_err(|e| format!("filter '{t}': {e}"))
        } else {
            Ok(Pattern::Contains(t.to_owned()))
        }
    }

    /// Whether `name` (a topic, or an announced filter) is shown.
    pub fn matches(&self, name: &str) -> bool {
        match self {
            Pattern::All => true,
            Pattern::Contains(s) => name.contains(s.as_str()),
            Pattern::Filter(f) => match starling::Topic::new(name) {
                Ok(t) => f.matches(&t),
                Err(_) => f.as_str() == name, // an announced filter shows when typed exactly
            },
        }
    }

    /// As typed.
    pub fn text(&self) -> &str {
        match self {
            Pattern::All => "",
            Pattern::Contains(s) => s,
            Pattern::Filter(f) => f.as_str(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(topic: &str, payload: &[u8], at_ms: u64) -> Captured {
        Captured {
            at_ms,
            topic: topic.into(),
            from: "00000000000000aa".into(),
            name: Some("kitchen".into()),
            seq: None,
            payload: payload.to_vec(),
        }
    }

    #[test]
    fn history_is_bounded_per_topic_and_rates_follow_traffic() {
        let t0 = Instant::now();
        let mut m = Model::new(Limits { history: 3, max_topics: 10, max_bytes: 1 << 20 }, t0);
        for i in 0..1000u32 {
            m.record(msg("a/b", &i.to_le_bytes(), u64::from(i)), t0 + Duration::from_millis(u64::from(i)));
        }
        let t = m.topic("a/b").unwrap();
        assert_eq!((t.total, t.history.len()), (1000, 3));
        assert_eq!(t.history.back().unwrap().payload, 999u32.to_le_bytes());
        assert_eq!(m.bytes, 12);
        m.tick(t0 + Duration::from_secs(1));
        assert!((m.rate() - 1000.0).abs() < 1.0, "{}", m.rate());
        assert!((m.topic("a/b").unwrap().rate() - 1000.0).abs() < 1.0);
        m.tick(t0 + Duration::from_secs(2));
        assert_eq!(m.rate(), 0.0, "no traffic in the last second");
    }

    #[test]
    fn topics_beyond_the_limit_evict_the_stalest() {
        let t0 = Instant::now();
        let mut m = Model::new(Limits { history: 2, max_topics: 3, max_bytes: 1 << 20 }, t0);
        for (i, name) in ["a", "b", "c", "a", "d", "e"].iter().enumerate() {
            m.record(msg(name, b"x", 0), t0 + Duration::from_secs(i as u64));
        }
        let names: Vec<&str> = m.topics().map(|(k, _)| k).collect();
        assert_eq!(names, ["a", "d", "e"], "b then c were the stalest");
        assert_eq!(m.topics_evicted, 2);
        assert_eq!(m.bytes, 4, "evicted histories no longer count");

        // A stream of new topics: bounded, evicted a sixteenth at a time.
        let mut m = Model::new(Limits { history: 2, max_topics: 160, max_bytes: 1 << 20 }, t0);
        for i in 0..10_000u64 {
            m.record(msg(&format!("churn/{i}"), b"x", 0), t0 + Duration::from_micros(i));
        }
        assert!(m.topics().count() <= 160);
        assert_eq!(m.topics_evicted, 10_000 - m.topics().count() as u64);
        assert!(m.topic("churn/9999").is_some() && m.topic("churn/0").is_none());
    }

    #[test]
    fn byte_budget_sheds_oldest_of_the_fullest_history() {
        let t0 = Instant::now();
        let mut m = Model::new(Limits { history: 100, max_topics: 10, max_bytes: 1000 }, t0);
        for _ in 0..5 {
            m.record(msg("big", &[0u8; 300], 0), t0);
        }
        m.record(msg("small", &[1u8; 10], 0), t0);
        assert!(m.bytes <= 1000, "{}", m.bytes);
        assert_eq!(m.topic("big").unwrap().history.len(), 3);
        assert_eq!(m.topic("small").unwrap().history.len(), 1);
        assert_eq!(m.bytes_evicted, 2);
        // One message larger than the budget is still kept: the newest of a topic always is.
        m.record(msg("huge", &[2u8; 5000], 0), t0);
        assert_eq!(m.topic("huge").unwrap().history.len(), 1);
    }

    #[test]
    fn pause_keeps_counting_but_not_keeping() {
        let t0 = Instant::now();
        let mut m = Model::new(Limits::default(), t0);
        m.record(msg("a", b"1", 0), t0);
        m.paused = true;
        m.record(msg("a", b"2", 0), t0);
        let t = m.topic("a").unwrap();
        assert_eq!((t.total, t.history.len(), m.skipped_paused), (2, 1, 1));
    }

    #[test]
    fn publishers_qos_and_tree_rows_with_announced_filters() {
        let t0 = Instant::now();
        let mut m = Model::new(Limits::default(), t0);
        m.record(msg("home/kitchen/temp", b"1", 0), t0);
        let mut r = msg("home/kitchen/temp", b"2", 1);
        (r.name, r.seq) = (Some("hall".into()), Some(0));
        m.record(r, t0);
        m.record(msg("home/hall/temp", b"3", 2), t0);
        m.record(msg("cam", b"4", 3), t0);
        let t = m.topic("home/kitchen/temp").unwrap();
        assert_eq!(t.publishers, ["hall", "kitchen"]);
        assert_eq!(t.qos(), "mixed");
        m.set_nodes(vec![NodeRow {
            id: "00000000000000bb".into(),
            name: "heater".into(),
            filters: vec!["home/+/cmd".into(), "cam".into()],
            ..NodeRow::default()
        }]);
        let rows: Vec<(usize, String, bool)> = m
            .rows(&Pattern::All)
            .into_iter()
            .map(|r| (r.depth, r.label, matches!(r.kind, RowKind::Filter(_))))
            .collect();
        let want = [(0, "cam", false), (0, "home", false), (1, "+", false), (2, "cmd", true)];
        assert_eq!(rows[..4], want.map(|(d, l, f)| (d, l.to_owned(), f)));
        let rest: Vec<&str> = rows[4..].iter().map(|r| r.1.as_str()).collect();
        assert_eq!(rest, ["hall", "temp", "kitchen", "temp"]);
        assert_eq!(m.filters["home/+/cmd"], BTreeSet::from(["heater".to_owned()]));
        let hall = NodeRow { name: "hall".into(), ..NodeRow::default() };
        assert_eq!(m.published_by(&hall), ["home/kitchen/temp"]);
        let kitchen = NodeRow { name: "kitchen".into(), ..NodeRow::default() };
        assert_eq!(m.published_by(&kitchen), ["cam", "home/hall/temp", "home/kitchen/temp"]);

        let only = Pattern::parse("home/+/temp").unwrap();
        let names: Vec<String> = m.rows(&only).into_iter().filter_map(|r| r.kind.name().map(str::to_owned)).collect();
        assert_eq!(names, ["home/hall/temp", "home/kitchen/temp"]);
        let names: Vec<String> = m
            .rows(&Pattern::parse("cmd").unwrap())
            .into_iter()
            .filter_map(|r| r.kind.name().map(str::to_owned))
            .collect();
        assert_eq!(names, ["home/+/cmd"]);
        assert!(Pattern::parse("a/#/b").unwrap_err().contains("'a/#/b'"));
    }

    #[test]
    fn save_lines_round_trip_and_bad_lines_name_the_field() {
        let mut c = msg("cam/1", &[0, 0xff, 0xc3, 0x28, b'\n'], 1_700_000_000_000);
        c.seq = Some(7);
        let line = c.to_json_line();
        assert!(line.contains("\"payload_b64\":\"AP/DKAo=\""), "{line}");
        assert_eq!(Captured::from_json_line(&line).unwrap(), c);
        c.name = None;
        assert_eq!(Captured::from_json_line(&c.to_json_line()).unwrap(), c);
        assert!(Captured::from_json_line("{}").unwrap_err().contains("`topic`"));
        let e = Captured::from_json_line(r#"{"topic":"a","payload_b64":"%%"}"#).unwrap_err();
        assert!(e.contains("`payload_b64`"), "{e}");
        assert!(Captured::from_json_line("nope").unwrap_err().contains("not JSON"));
    }
}
