//! Topic names and filters (MQTT rules, PROTOCOL.md §5) on arbitrary strings. The input is a
//! name and a filter separated by a 0xff byte (never part of UTF-8). Invariants: a valid name is
//! a valid filter and matches itself; `#` matches every valid name not starting with `$`; and
//! `TopicFilter::matches` agrees with a naive reference matcher written here from the spec.
#![no_main]

use libfuzzer_sys::fuzz_target;
use starling::topic::{validate_filter, validate_topic};
use starling::{Topic, TopicFilter};

/// MQTT matching, level by level, from the spec text: `+` is one level, `#` the rest (parent
/// included), and wildcards at the start never match a `$` name.
fn reference(filter: &str, name: &str) -> bool {
    if name.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let f: Vec<&str> = filter.split('/').collect();
    let n: Vec<&str> = name.split('/').collect();
    for (i, level) in f.iter().enumerate() {
        if *level == "#" {
            return true;
        }
        match n.get(i) {
            Some(t) if *level == "+" || level == t => {}
            _ => return false,
        }
    }
    f.len() == n.len()
}

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(2, |&b| b == 0xff);
    let name = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let filter = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let topic = Topic::new(&name);
    assert_eq!(topic.is_ok(), validate_topic(&name).is_ok());
    let parsed = TopicFilter::new(&filter);
    assert_eq!(parsed.is_ok(), validate_filter(&filter).is_ok());
    assert_eq!(filter.parse::<TopicFilter>(), parsed);
    if let Ok(t) = &topic {
        assert_eq!(t.as_str(), name);
        let own = TopicFilter::new(&name).expect("a valid name is a valid filter");
        assert!(own.is_exact());
        assert!(own.matches(t), "{name:?} does not match itself");
        let all = TopicFilter::new("#").unwrap();
        assert_eq!(all.matches(t), !name.starts_with('$'), "`#` and {name:?}");
    }
    if let Ok(f) = &parsed {
        assert_eq!(f.as_str(), filter);
        assert_eq!(f.is_exact(), !filter.contains(['+', '#']));
        if let Ok(t) = &topic {
            assert_eq!(f.matches(t), reference(&filter, &name), "filter {filter:?} name {name:?}");
        }
    }
});
