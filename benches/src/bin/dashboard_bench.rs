//! How long the dashboard's pages take for a repository of many snapshots (SPEC §27; issue
//! 20's goal: pages for 1000 snapshots in under 200 ms). A repository gets `--series`
//! series whose snapshots add up to `--snapshots` (one series holds half of them, so its
//! series page has that many rows); `tessera serve` serves it; a client logs in and times
//! each page over HTTP on loopback — the first request (which computes the cached figures:
//! the repository totals, the freed bytes of every snapshot) and the median of the next
//! `--repeat` ones.
//!
//! `cargo run -p tessera-benches --bin dashboard-bench -- [--snapshots 1000] [--series 10] [--repeat 10]`

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tessera_benches::bin_args::{arg, tessera_path};
use tessera_benches::measure::tessera_ok;

/// The goal of issue 20 for one page.
const GOAL_MS: f64 = 200.0;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Writes a 1 MiB image whose block `gen % 16` differs in each generation.
fn image(path: &Path, series: usize, gen: usize) -> Result<()> {
    let mut data = vec![0u8; 1 << 20];
    for (i, b) in data.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(31).wrapping_add(series as u8);
    }
    let block = (gen % 16) * 65536;
    for (i, b) in data[block..block + 65536].iter_mut().enumerate() {
        *b = (i as u8) ^ (gen as u8) ^ ((gen >> 8) as u8);
    }
    std::fs::write(path, data)?;
    Ok(())
}

/// Backs up `snapshots` generations of a small image into `series` series of `repo`, half
/// of them into `vm0`.
fn fill(bin: &Path, repo: &Path, w: &Path, snapshots: usize, series: usize) -> Result<()> {
    let s = |p: &Path| p.display().to_string();
    let img = w.join("disk.raw");
    let started = Instant::now();
    let big = snapshots / 2;
    for n in 0..snapshots {
        let (which, gen) = if n < big {
            (0, n)
        } else {
            (1 + (n - big) % (series - 1).max(1), n)
        };
        image(&img, which, gen)?;
        let disk = format!("disk0={}", s(&img));
        tessera_ok(
            bin,
            &["backup", &s(repo), "--series", &format!("vm{which}"), &disk],
        )?;
    }
    eprintln!(
        "{snapshots} snapshots in {series} series made in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Times each page: the first request, then the median of `repeat`; prints a table.
fn time_pages(
    agent: &ureq::Agent,
    url: &str,
    cookie: &str,
    pages: &[(&str, String)],
    repeat: usize,
) -> Result<()> {
    println!("| page | first request ms | then ms | bytes | goal {GOAL_MS:.0} ms |");
    println!("|---|---|---|---|---|");
    for (name, path) in pages {
        let get = || -> Result<(f64, usize)> {
            let t = Instant::now();
            let r = agent
                .get(&format!("{url}{path}"))
                .set("cookie", cookie)
                .call()?;
            let body = r.into_string()?;
            Ok((t.elapsed().as_secs_f64() * 1000.0, body.len()))
        };
        let (cold, size) = get()?;
        let warm = median(
            (0..repeat)
                .map(|_| get().map(|x| x.0))
                .collect::<Result<_>>()?,
        );
        let verdict = if warm <= GOAL_MS { "met" } else { "missed" };
        println!("| {name} | {cold:.1} | {warm:.1} | {size} | {verdict} |");
    }
    Ok(())
}

fn main() -> Result<()> {
    let snapshots: usize = arg("--snapshots", "1000").parse()?;
    let series: usize = arg("--series", "10").parse()?;
    let repeat: usize = arg("--repeat", "10").parse()?;
    let bin = tessera_path();
    let work = tempfile::Builder::new()
        .prefix("tessera-dashboard-bench-")
        .tempdir_in("/var/tmp")?;
    let w = work.path();
    let repo = w.join("repo");
    let s = |p: &Path| p.display().to_string();
    tessera_ok(&bin, &["init", &s(&repo), "--encryption", "none"])?;
    fill(&bin, &repo, w, snapshots, series)?;
    let tokens = w.join("tokens");
    let out = Command::new(&bin)
        .args([
            "token",
            "add",
            &s(&tokens),
            "--role",
            "admin",
            "--name",
            "bench",
        ])
        .output()?;
    if !out.status.success() {
        bail!("token add: {}", String::from_utf8_lossy(&out.stderr));
    }
    let token = String::from_utf8(out.stdout)?.trim().to_string();
    let mut child = Command::new(&bin)
        .args([
            "serve",
            &s(&repo),
            "--tokens",
            &s(&tokens),
            "--listen",
            "127.0.0.1:0",
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut first = String::new();
    let mut stdout = child.stdout.take().context("serve stdout")?;
    let server = Server(child);
    // `--json` prints one pretty-printed object: read up to its closing brace.
    let mut byte = [0u8; 1];
    while stdout.read(&mut byte)? == 1 {
        first.push(byte[0] as char);
        if first.trim_end().ends_with("\n}") {
            break;
        }
    }
    let listening: serde_json::Value = serde_json::from_str(&first)?;
    let url = listening["listening"]
        .as_str()
        .ok_or_else(|| anyhow!("serve printed {first}"))?
        .to_string();
    let agent = ureq::AgentBuilder::new()
        .redirects(0)
        .timeout(Duration::from_secs(90))
        .build();
    let login = agent
        .post(&format!("{url}/ui/login"))
        .send_form(&[("token", &token)])?;
    let cookie = login
        .header("set-cookie")
        .and_then(|c| c.split(';').next())
        .ok_or_else(|| anyhow!("login gave no cookie (status {})", login.status()))?
        .to_string();
    let list: serde_json::Value =
        serde_json::from_str(&tessera_ok(&bin, &["list", &s(&repo), "--json"])?.stdout)?;
    let newest = list["snapshots"]
        .as_array()
        .and_then(|a| a.iter().rev().find(|x| x["series"] == "vm0"))
        .and_then(|x| x["id"].as_str())
        .ok_or_else(|| anyhow!("no snapshot listed"))?
        .to_string();
    let pages = [
        ("overview", "/ui/".to_string()),
        ("series (half the snapshots)", "/ui/series/vm0".to_string()),
        ("snapshot", format!("/ui/snapshot/{newest}")),
        ("health", "/ui/health".to_string()),
    ];
    println!("dashboard pages, {snapshots} snapshots in {series} series (HTTP on loopback, median of {repeat})");
    time_pages(&agent, &url, &cookie, &pages, repeat)?;
    drop(server);
    Ok(())
}
