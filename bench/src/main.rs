//! `starling-bench`: Starling against raw UDP and MQTT through Mosquitto, on this machine, now.
//!
//! `--quick` (about a minute), `--smoke` (seconds, for tests), default full; `--json PATH`
//! chooses where the JSON goes (default `target/starling-bench/<mode>.json`); `--only PART`
//! measures one part (`rtt`, `one-way`, `throughput`, `loss`, `core`). `--profile KIND N` does
//! N operations and nothing else, for `valgrind --tool=callgrind` instruction counts.

use std::path::PathBuf;

use starling_bench::{Mode, Plan};

fn main() -> anyhow::Result<()> {
    let mut mode = Mode::Full;
    let mut json: Option<PathBuf> = None;
    let mut only: Option<&'static str> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => mode = Mode::Quick,
            "--smoke" => mode = Mode::Smoke,
            "--full" => mode = Mode::Full,
            "--json" => json = Some(args.next().ok_or_else(|| anyhow::anyhow!("--json needs a path"))?.into()),
            "--only" => {
                let part = args.next().ok_or_else(|| anyhow::anyhow!("--only needs a part"))?;
                only = Some(Box::leak(part.into_boxed_str()));
            }
            "--profile" => {
                let kind = args.next().ok_or_else(|| anyhow::anyhow!("--profile needs rpc|publish|reliable"))?;
                let n: usize = args.next().ok_or_else(|| anyhow::anyhow!("--profile needs a count"))?.parse()?;
                let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
                return rt.block_on(starling_bench::star::profile(&kind, n)).map_err(anyhow::Error::msg);
            }
            "-h" | "--help" => {
                println!("usage: starling-bench [--quick | --smoke | --full] [--json PATH] [--only rtt|one-way|throughput|loss|core] | --profile rpc|publish|reliable N");
                return Ok(());
            }
            other => anyhow::bail!("unknown argument {other:?}; try --help"),
        }
    }
    let report = starling_bench::run(Plan { only, ..Plan::new(mode) });
    let path = json.unwrap_or_else(|| PathBuf::from(format!("target/starling-bench/{}.json", report.mode)));
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
    println!("{}", report.markdown());
    println!("JSON written to {}", path.display());
    Ok(())
}
