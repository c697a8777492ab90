//! Delivery benchmark: Herald end to end, on one machine.
//!
//! `scripts/bench.sh` builds the release binary and runs this. What it does:
//!
//! - starts a local HTTPS push sink (the test emulator's sink mode: HTTP/2 and
//!   HTTP/1.1, its own CA, `201` with an empty body) in a child process
//!   (`delivery --sink`), so its CPU is accounted apart from everything else;
//! - makes N subscriptions with real P-256 keys and 16-byte auth secrets, all
//!   on the sink (`https://localhost:PORT/fcm/send/<token>`), one per user, and
//!   stores them once in a template database through Herald's own store and
//!   subscription parsing, i.e. the rows the API would write;
//! - per run: starts `target/release/herald` on a fresh copy of that database
//!   and measures through the public HTTP API
//!   - one `{"to":{"all":true}}` broadcast: 202 time, deliveries/s from the
//!     call to the last arrival at the sink, Herald CPU per delivery
//!     (`/proc/<pid>/stat` utime+stime);
//!   - many `{"to":{"user":…}}` sends from 64 concurrent clients: the same;
//!   - idle latency: one send to one user, wait for its arrival, repeated;
//!   - resident memory idle and with 10 broadcasts pending while the app is
//!     paused (`max_concurrency: 0`), then the queue is cleared;
//! - the `web-push` package on Node (bench/peer) sends to the same kind of
//!   subscriptions on the same sink, 64 requests in flight over a keep-alive
//!   agent: its deliveries/s and CPU per delivery are the reference;
//! - when `Store::connect` accepts a PostgreSQL URL, the broadcast and the
//!   per-user sends again on PostgreSQL with one, two and three instances
//!   sharing one database, and, as a control, three instances with a
//!   database each: nothing shared, so nothing to coordinate. What three
//!   instances lose against one beyond what the control loses is what
//!   coordinating through one database costs; the rest is what three
//!   processes cost on this machine.
//!
//! Figures are medians over runs; a table, then one summary line.
//! `--help` lists the options.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use futures::StreamExt;
use herald::secrets::MasterKey;
use herald::store::{NewSubscription, Store};
use herald::webpush::{AllowedHosts, ContentEncoding, Subscription, SubscriptionJson, Vendor};
use serde_json::{json, Value};
use sqlx::Connection;
use support::emulator::{Emulator, Mode};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

const ADMIN: &str = "bench-admin-token-0123456789abcdef";
const CONTACT: &str = "mailto:bench@example.com";
/// Requests in flight from the API clients and from the reference sender.
const CLIENTS: usize = 64;
/// Broadcasts queued while paused, for the memory figure.
const PENDING_BROADCASTS: usize = 10;

// ---------------------------------------------------------------------------
// Options

#[derive(Debug, Clone)]
struct Opts {
    subs: usize,
    user_sends: usize,
    latency_sends: usize,
    runs: usize,
    pending_runs: usize,
    peer_count: usize,
    peer: bool,
    postgres: bool,
    pg_url: String,
    pg_instances: Vec<usize>,
    pg_runs: usize,
    /// Also run the largest instance count with a database each.
    pg_control: bool,
    herald_bin: PathBuf,
}

const HELP: &str = "\
delivery benchmark (run through scripts/bench.sh)

  --quick              10 000 subscriptions, one run (about 1.5 minutes)
  --runs N             runs per figure (default 3; quick 1)
  --subs N             subscriptions (default 100 000)
  --user-sends N       per-user sends per run (default 10 000)
  --latency N          idle-latency samples per run (default 200)
  --pending-runs N     runs that also measure memory with 10 broadcasts pending (default 1)
  --peer-count N       sends by the web-push reference per run (default 10 000)
  --no-peer            skip the web-push reference
  --no-postgres        skip PostgreSQL
  --pg-url URL         PostgreSQL server to create scratch databases on
                       (default $HERALD_BENCH_PG_URL or postgres://127.0.0.1:5432/test)
  --pg-instances LIST  instance counts on PostgreSQL (default 1,2,3)
  --pg-runs N          runs per instance count (default 1; 3 add about 7 minutes)
  --no-pg-control      skip the control: the largest instance count again, each
                       instance on a database of its own (nothing shared)
  --herald PATH        Herald binary (default target/release/herald)

Herald runs with its defaults plus what the benchmark needs (bind, database,
keys, allowed host, CA); other HERALD_* variables in the environment reach it,
e.g. HERALD_CONCURRENCY=1024.";

impl Opts {
    fn smoke() -> Opts {
        Opts {
            subs: 300,
            user_sends: 100,
            latency_sends: 20,
            runs: 1,
            pending_runs: 1,
            peer_count: 0,
            peer: false,
            postgres: false,
            pg_url: String::new(),
            pg_instances: Vec::new(),
            pg_runs: 0,
            pg_control: false,
            herald_bin: env!("CARGO_BIN_EXE_herald").into(),
        }
    }

    fn parse(args: &[String]) -> anyhow::Result<Opts> {
        let quick = args.iter().any(|a| a == "--quick");
        let target_dir = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
        let mut o = Opts {
            subs: if quick { 10_000 } else { 100_000 },
            user_sends: if quick { 2_000 } else { 10_000 },
            latency_sends: if quick { 50 } else { 200 },
            runs: if quick { 1 } else { 3 },
            pending_runs: 1,
            peer_count: if quick { 5_000 } else { 10_000 },
            peer: true,
            postgres: true,
            pg_url: std::env::var("HERALD_BENCH_PG_URL")
                .unwrap_or_else(|_| "postgres://127.0.0.1:5432/test".into()),
            pg_instances: vec![1, 2, 3],
            pg_runs: 0,
            pg_control: true,
            herald_bin: target_dir.join("release/herald"),
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut value = || {
                it.next()
                    .cloned()
                    .ok_or_else(|| anyhow!("{a} needs a value"))
            };
            match a.as_str() {
                "--quick" | "--bench" => {}
                "--runs" => o.runs = value()?.parse()?,
                "--subs" => o.subs = value()?.parse()?,
                "--user-sends" => o.user_sends = value()?.parse()?,
                "--latency" => o.latency_sends = value()?.parse()?,
                "--pending-runs" => o.pending_runs = value()?.parse()?,
                "--peer-count" => o.peer_count = value()?.parse()?,
                "--no-peer" => o.peer = false,
                "--no-postgres" => o.postgres = false,
                "--pg-url" => o.pg_url = value()?,
                "--pg-instances" => {
                    o.pg_instances = value()?
                        .split(',')
                        .map(|s| s.trim().parse())
                        .collect::<Result<_, _>>()?
                }
                "--pg-runs" => o.pg_runs = value()?.parse()?,
                "--no-pg-control" => o.pg_control = false,
                // Herald starts in a scratch directory: resolve a relative path now.
                "--herald" => o.herald_bin = std::path::absolute(value()?)?,
                "--help" | "-h" => {
                    println!("{HELP}");
                    std::process::exit(0);
                }
                other => bail!("unknown option {other} (see --help)"),
            }
        }
        if o.pg_runs == 0 {
            o.pg_runs = 1;
        }
        o.runs = o.runs.max(1);
        o.peer_count = o.peer_count.min(o.subs);
        if o.subs < o.user_sends + o.latency_sends {
            bail!(
                "--subs must be at least --user-sends + --latency (each send goes to its own user)"
            );
        }
        Ok(o)
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--sink") {
        return sink_main();
    }
    // `cargo bench` passes --bench. Without it this runs under `cargo test`
    // (e.g. --all-targets): a small smoke run that keeps the benchmark
    // working, on the binary of the same build, without the reference sender
    // or PostgreSQL.
    let opts = if args.iter().any(|a| a == "--bench") {
        Opts::parse(&args)?
    } else {
        eprintln!("delivery benchmark: smoke run under cargo test (figures: scripts/bench.sh)");
        Opts::smoke()
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(bench(opts))
}

// ---------------------------------------------------------------------------
// The sink, as a child process
//
// Protocol on stdin/stdout, one line each way:
//   (start)                       -> "sink <port> <ca file>"
//   count                         -> arrivals so far
//   wait <token> <unix ns> <ms>   -> unix ns of the first arrival for <token>
//                                    after the given time, or "timeout"

fn sink_main() -> anyhow::Result<()> {
    use std::io::{BufRead, Write};
    let emu = Emulator::launch(Mode::Sink);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "sink {} {}", emu.port(), emu.ca_file().display())?;
    out.flush()?;
    // Arrival offsets are on the sink's monotonic clock; the parent speaks
    // wall-clock time. The zero point is taken afresh per command, so clock
    // slewing over a long run cannot accumulate into the figures.
    let epoch_of_start =
        |emu: &Emulator| unix_ns().saturating_sub(emu.started_at().elapsed().as_nanos());
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let mut parts = line.split_whitespace();
        match parts.next() {
            Some("count") => writeln!(out, "{}", emu.sink_count())?,
            Some("wait") => {
                let (token, after, timeout) = (parts.next(), parts.next(), parts.next());
                let (Some(token), Some(after), Some(timeout)) = (token, after, timeout) else {
                    bail!("bad wait command: {line}")
                };
                let after: u128 = after.parse()?;
                let zero = epoch_of_start(&emu);
                let after = Duration::from_nanos(after.saturating_sub(zero) as u64);
                match rt.block_on(emu.wait_for_token(
                    token,
                    after,
                    Duration::from_millis(timeout.parse()?),
                )) {
                    Some(at) => writeln!(out, "{}", epoch_of_start(&emu) + at.as_nanos())?,
                    None => writeln!(out, "timeout")?,
                }
            }
            _ => break,
        }
        out.flush()?;
    }
    Ok(())
}

fn unix_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos()
}

struct SinkProc {
    child: Child,
    pid: u32,
    port: u16,
    ca_file: PathBuf,
    stdin: ChildStdin,
    stdout: tokio::io::Lines<BufReader<ChildStdout>>,
}

impl SinkProc {
    async fn start() -> anyhow::Result<SinkProc> {
        let exe = std::env::current_exe()?;
        let mut child = Command::new(exe)
            .arg("--sink")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let pid = child.id().context("sink pid")?;
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let hello = stdout
            .next_line()
            .await?
            .context("sink exited before starting")?;
        let mut parts = hello.split_whitespace();
        let (Some("sink"), Some(port), Some(ca)) = (parts.next(), parts.next(), parts.next())
        else {
            bail!("sink said {hello}")
        };
        Ok(SinkProc {
            child,
            pid,
            port: port.parse()?,
            ca_file: ca.into(),
            stdin,
            stdout,
        })
    }

    async fn ask(&mut self, line: &str) -> anyhow::Result<String> {
        self.stdin.write_all(format!("{line}\n").as_bytes()).await?;
        self.stdin.flush().await?;
        self.stdout.next_line().await?.context("sink went away")
    }

    async fn count(&mut self) -> anyhow::Result<u64> {
        Ok(self.ask("count").await?.parse()?)
    }

    /// Waits until at least `n` arrivals; returns when that was seen (polled
    /// every 5 ms, so the end of a phase is known to within that).
    async fn wait_count(&mut self, n: u64, timeout: Duration) -> anyhow::Result<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            let c = self.count().await?;
            if c >= n {
                return Ok(Instant::now());
            }
            if Instant::now() > deadline {
                bail!("the sink saw {c} arrivals, expected {n} within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Unix ns of the first arrival for `token` after `after_unix_ns`.
    async fn wait_token(
        &mut self,
        token: &str,
        after_unix_ns: u128,
        timeout: Duration,
    ) -> anyhow::Result<Option<u128>> {
        let answer = self
            .ask(&format!(
                "wait {token} {after_unix_ns} {}",
                timeout.as_millis()
            ))
            .await?;
        Ok(if answer == "timeout" {
            None
        } else {
            Some(answer.parse()?)
        })
    }

    async fn stop(mut self) {
        let _ = self.stdin.shutdown().await;
        drop(self.stdin);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
    }
}

// ---------------------------------------------------------------------------
// /proc accounting

fn clk_tck() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// What CPU accounting reads from `/proc/<pid>/stat`; times in clock ticks.
struct ProcStat {
    ppid: u32,
    /// utime + stime of the process (all its threads).
    own: u64,
    /// cutime + cstime: its children that exited and were waited for.
    reaped: u64,
}

fn proc_stat(pid: u32) -> Option<ProcStat> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name, which may hold spaces and parens.
    let f: Vec<&str> = s[s.rfind(')')? + 2..].split_whitespace().collect();
    let n = |i: usize| f.get(i)?.parse::<u64>().ok();
    Some(ProcStat {
        ppid: n(1)? as u32,
        own: n(11)? + n(12)?,
        reaped: n(13)? + n(14)?,
    })
}

/// utime + stime of a process (all its threads), in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    proc_stat(pid).map(|p| p.own)
}

/// A `Vm*` line of /proc/<pid>/status, in MiB.
fn vm_mib(pid: u32, field: &str) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s
        .lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// The CPU's model and the vector extensions its P-256 and AES code can
/// use: the machine behind the same name has changed from day to day (with
/// and without AVX-512), and figures from different days compare only with
/// this beside them.
fn cpu_model() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        info.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default()
    };
    let flags = field("flags");
    let has = |f: &str| flags.split_whitespace().any(|x| x == f);
    let extensions: Vec<&str> = [
        ("avx2", "AVX2"),
        ("avx512f", "AVX-512"),
        ("avx512ifma", "IFMA"),
        ("vaes", "VAES"),
    ]
    .into_iter()
    .filter(|(flag, _)| has(flag))
    .map(|(_, name)| name)
    .collect();
    match field("model name") {
        m if m.is_empty() => "unknown CPU".into(),
        m => format!("{m} ({})", extensions.join(", ")),
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// CPU ticks per thread kind of a process: thread names with their numbering
/// removed (`tokio-runtime-w`, `sqlx-sqlite-wor`, …; the kernel keeps 15
/// characters of a name), summed over the threads alive now.
fn thread_ticks(pid: u32) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        let tid = t.file_name().to_string_lossy().to_string();
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = stat[open + 1..close]
            .trim_end_matches(|c: char| c.is_ascii_digit() || c == '-')
            .to_string();
        let f: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        let ticks = f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
            + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        *out.entry(name).or_default() += ticks;
    }
    out
}

fn threads_of(pids: &[u32]) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for &p in pids {
        for (k, v) in thread_ticks(p) {
            *out.entry(k).or_default() += v;
        }
    }
    out
}

/// Per-thread-kind µs per item between two readings (threads that ended in
/// between are missing; Herald's runtime and database threads live on).
fn threads_per_item(
    cpu: &CpuMeter,
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
    items: u64,
) -> BTreeMap<String, f64> {
    after
        .iter()
        .filter_map(|(k, &v)| {
            cpu.per_item_us(v.saturating_sub(before.get(k).copied().unwrap_or(0)), items)
                .map(|us| (k.clone(), us))
        })
        .collect()
}

/// CPU of a set of processes, read together.
struct CpuMeter {
    tck: f64,
}

impl CpuMeter {
    fn total(&self, pids: &[u32]) -> u64 {
        pids.iter().filter_map(|&p| cpu_ticks(p)).sum()
    }
    /// Microseconds of CPU per item for a tick delta.
    fn per_item_us(&self, ticks: u64, items: u64) -> Option<f64> {
        (items > 0).then(|| ticks as f64 / self.tck * 1e6 / items as f64)
    }
}

// ---------------------------------------------------------------------------
// Subscriptions

#[derive(Clone)]
struct BenchSub {
    user: String,
    token: String,
    json: SubscriptionJson,
}

fn make_subs(n: usize, port: u16) -> anyhow::Result<Vec<BenchSub>> {
    use aws_lc_rs::agreement::{PrivateKey, ECDH_P256};
    let mut subs = Vec::with_capacity(n);
    for i in 0..n {
        let key = PrivateKey::generate(&ECDH_P256).map_err(|_| anyhow!("P-256 key generation"))?;
        let public = key
            .compute_public_key()
            .map_err(|_| anyhow!("P-256 public key"))?;
        let mut auth = [0u8; 16];
        let mut t = [0u8; 38];
        aws_lc_rs::rand::fill(&mut auth).map_err(|_| anyhow!("random"))?;
        aws_lc_rs::rand::fill(&mut t).map_err(|_| anyhow!("random"))?;
        // FCM-shaped registration token.
        let token = format!("{}:APA91b{}", B64.encode(&t[..8]), B64.encode(&t[8..]));
        let json: SubscriptionJson = serde_json::from_value(json!({
            "endpoint": format!("https://localhost:{port}/fcm/send/{token}"),
            "expirationTime": null,
            "keys": { "p256dh": B64.encode(public.as_ref()), "auth": B64.encode(auth) },
        }))?;
        subs.push(BenchSub {
            user: format!("user-{i:06}"),
            token,
            json,
        });
    }
    Ok(subs)
}

/// What `POST /api/v1/apps/{app}/subscriptions` stores for this body (no
/// topics, default content encoding).
fn new_subscription(
    app_id: &str,
    s: &BenchSub,
    allowed: &AllowedHosts,
) -> anyhow::Result<NewSubscription> {
    let sub =
        Subscription::parse(&s.json, allowed).map_err(|e| anyhow!("subscription refused: {e}"))?;
    Ok(NewSubscription {
        app_id: app_id.to_string(),
        user_id: s.user.clone(),
        endpoint: sub.endpoint.as_str().to_string(),
        endpoint_host: sub.endpoint.host().to_string(),
        vendor: Vendor::of(&sub.endpoint).as_str().to_string(),
        p256dh: sub.p256dh.0.to_vec(),
        auth: sub.auth.0.to_vec(),
        content_encoding: ContentEncoding::Aes128gcm.as_str().to_string(),
        topics: Vec::new(),
    })
}

struct Seeded {
    app_id: String,
    api_key: String,
}

/// Creates the app and stores every subscription through the store.
async fn seed(
    store: &Store,
    master: &MasterKey,
    subs: &[BenchSub],
    parallel: usize,
) -> anyhow::Result<Seeded> {
    let created = herald::service::create_app(
        store,
        master,
        "bench",
        CONTACT,
        herald::Settings::default().app_concurrency,
    )
    .await?;
    let allowed = AllowedHosts::with_extra(["localhost"]);
    let rows = subs
        .iter()
        .map(|s| new_subscription(&created.app.id, s, &allowed))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let now = herald::domain::now_millis();
    let mut results = futures::stream::iter(rows.iter().map(|r| store.subscription_upsert(r, now)))
        .buffer_unordered(parallel);
    while let Some(r) = results.next().await {
        let (_, created) = r?;
        if !created {
            bail!("a benchmark subscription was stored twice");
        }
    }
    Ok(Seeded {
        app_id: created.app.id,
        api_key: created.api_key,
    })
}

// ---------------------------------------------------------------------------
// Herald processes

struct Common {
    opts: Opts,
    master_b64: String,
    ca_file: PathBuf,
    http: reqwest::Client,
    cpu: CpuMeter,
}

struct Herald {
    child: Child,
    pid: u32,
    base: String,
    log: PathBuf,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn start_herald(
    c: &Common,
    dir: &Path,
    database_url: &str,
    name: &str,
) -> anyhow::Result<Herald> {
    let port = free_port()?;
    let log = dir.join(format!("{name}.log"));
    let logfile = std::fs::File::create(&log)?;
    let mut cmd = Command::new(&c.opts.herald_bin);
    cmd.current_dir(dir)
        .env_remove("HERALD_CONFIG")
        .env("HERALD_BIND", format!("127.0.0.1:{port}"))
        .env("HERALD_DATABASE_URL", database_url)
        .env("HERALD_KEYS_DIR", dir.join("keys"))
        .env("HERALD_MASTER_KEY", &c.master_b64)
        .env("HERALD_ADMIN_TOKEN", ADMIN)
        .env("HERALD_ALLOWED_PUSH_HOSTS", "localhost")
        .env("HERALD_EXTRA_CA_FILES", &c.ca_file)
        .env(
            "HERALD_STATIC_DIR",
            concat!(env!("CARGO_MANIFEST_DIR"), "/static"),
        )
        .env("NO_PROXY", "localhost,127.0.0.1")
        .env("no_proxy", "localhost,127.0.0.1")
        .env("NO_COLOR", "1")
        .env(
            "HERALD_LOG",
            std::env::var("HERALD_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(logfile.try_clone()?)
        .stderr(logfile)
        .kill_on_drop(true);
    let mut child = cmd.spawn().with_context(|| {
        format!(
            "starting {} (build it with cargo build --release)",
            c.opts.herald_bin.display()
        )
    })?;
    let pid = child.id().context("herald pid")?;
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            bail!(
                "Herald exited at start ({status}); log {}:\n{}",
                log.display(),
                tail(&log)
            );
        }
        if let Ok(r) = c.http.get(format!("{base}/healthz")).send().await {
            if r.status().is_success() {
                break;
            }
        }
        if Instant::now() > deadline {
            bail!(
                "Herald did not answer /healthz within 60 s; log:\n{}",
                tail(&log)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(Herald {
        child,
        pid,
        base,
        log,
    })
}

fn tail(path: &Path) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

impl Herald {
    async fn stop(mut self) {
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .status();
        if tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }

    /// Warnings and errors Herald logged: a count and the first one.
    fn problems(&self) -> Option<String> {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let mut bad = s
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"));
        let first: String = bad.next()?.chars().take(300).collect();
        Some(format!(
            "{} warning(s)/error(s) in {}, first: {first}",
            1 + bad.count(),
            self.log.display()
        ))
    }
}

async fn call(
    c: &Common,
    method: reqwest::Method,
    url: String,
    token: &str,
    body: Option<Value>,
) -> anyhow::Result<(u16, Value)> {
    let mut req = c.http.request(method, url).bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await?;
    let status = resp.status().as_u16();
    let text = resp.text().await?;
    Ok((
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    ))
}

/// One API client of the per-user phase: a keep-alive HTTP/1.1 connection
/// of its own per instance, as a backend's HTTP client holds one. It costs
/// the machine less CPU per call than a `reqwest::Client` (no pool lookup,
/// no URL parsing, no timeout timer per request), and on two cores every
/// microsecond the load generator spends is taken from Herald.
struct ApiClient {
    conns: Vec<Option<hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>>>,
    /// Per instance, `host:port`: what the connection dials and `Host` names.
    authorities: Vec<String>,
    hosts: Vec<hyper::header::HeaderValue>,
    path: String,
    authorization: hyper::header::HeaderValue,
}

#[derive(serde::Deserialize)]
struct SendAnswer {
    deliveries: u64,
}

impl ApiClient {
    fn new(bases: &[String], app: &Seeded) -> anyhow::Result<Self> {
        let authorities = bases
            .iter()
            .map(|b| {
                b.strip_prefix("http://")
                    .map(str::to_string)
                    .ok_or_else(|| anyhow!("API base {b} is not http://"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(ApiClient {
            conns: bases.iter().map(|_| None).collect(),
            hosts: authorities
                .iter()
                .map(|a| a.parse())
                .collect::<Result<_, _>>()?,
            authorities,
            path: format!("/api/v1/apps/{}/notifications", app.app_id),
            authorization: format!("Bearer {}", app.api_key).parse()?,
        })
    }

    async fn connection(
        &mut self,
        i: usize,
    ) -> anyhow::Result<
        &mut hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>,
    > {
        let connect = match &self.conns[i] {
            Some(c) => c.is_closed(),
            None => true,
        };
        if connect {
            let stream = tokio::net::TcpStream::connect(&self.authorities[i]).await?;
            stream.set_nodelay(true)?;
            let (tx, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            self.conns[i] = Some(tx);
        }
        Ok(self.conns[i].as_mut().expect("connected above"))
    }

    /// Sends to the instance `i`; returns the time to the 202 and the
    /// deliveries queued.
    async fn send(&mut self, i: usize, body: &Value) -> anyhow::Result<(Duration, u64)> {
        use http_body_util::BodyExt;
        let t = Instant::now();
        let req = hyper::Request::post(self.path.as_str())
            .header(hyper::header::HOST, self.hosts[i].clone())
            .header(hyper::header::AUTHORIZATION, self.authorization.clone())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(
                serde_json::to_vec(body)?,
            )))?;
        let conn = self.connection(i).await?;
        conn.ready().await?;
        let resp = conn.send_request(req).await?;
        let status = resp.status();
        let answer = resp.into_body().collect().await?.to_bytes();
        let took = t.elapsed();
        if status != hyper::StatusCode::ACCEPTED {
            bail!(
                "send answered {status}: {}",
                String::from_utf8_lossy(&answer)
            );
        }
        let answer: SendAnswer = serde_json::from_slice(&answer)
            .with_context(|| format!("send answer {}", String::from_utf8_lossy(&answer)))?;
        Ok((took, answer.deliveries))
    }
}

/// Sends a notification; returns the time to the 202 and the deliveries queued.
async fn send(
    c: &Common,
    base: &str,
    app: &Seeded,
    body: Value,
) -> anyhow::Result<(Duration, u64)> {
    let t = Instant::now();
    let (status, answer) = call(
        c,
        reqwest::Method::POST,
        format!("{base}/api/v1/apps/{}/notifications", app.app_id),
        &app.api_key,
        Some(body),
    )
    .await?;
    let took = t.elapsed();
    if status != 202 {
        bail!("send answered {status}: {answer}");
    }
    Ok((took, answer["deliveries"].as_u64().unwrap_or(0)))
}

async fn patch_concurrency(c: &Common, base: &str, app: &Seeded, n: i64) -> anyhow::Result<()> {
    let (status, answer) = call(
        c,
        reqwest::Method::PATCH,
        format!("{base}/api/v1/apps/{}", app.app_id),
        ADMIN,
        Some(json!({ "max_concurrency": n })),
    )
    .await?;
    if status != 200 {
        bail!("PATCH max_concurrency answered {status}: {answer}");
    }
    Ok(())
}

/// Queue gauges and outcome counters from /metrics.
#[derive(Debug, Default)]
struct Gauges {
    queued: f64,
    in_flight: f64,
    outcomes: BTreeMap<String, f64>,
}

async fn gauges(c: &Common, base: &str) -> anyhow::Result<Gauges> {
    let text = c
        .http
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    let mut g = Gauges::default();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let value: f64 = value.parse().unwrap_or(0.0);
        if name == "herald_queued" {
            g.queued = value;
        } else if name == "herald_in_flight" {
            g.in_flight = value;
        } else if let Some(labels) = name.strip_prefix("herald_deliveries_total{") {
            if let Some(outcome) = labels
                .split(',')
                .find_map(|kv| kv.strip_prefix("outcome=\""))
            {
                *g.outcomes
                    .entry(outcome.trim_end_matches(['"', '}']).to_string())
                    .or_default() += value;
            }
        }
    }
    Ok(g)
}

/// Waits until nothing is queued or in flight in any of the instances.
async fn drained(c: &Common, bases: &[String], timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut busy = false;
        for b in bases {
            let g = gauges(c, b).await?;
            busy |= g.queued > 0.0 || g.in_flight > 0.0;
        }
        if !busy {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the queue did not drain within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn broadcast_body() -> Value {
    json!({"to": {"all": true}, "title": "Bench broadcast", "body": "Herald delivery benchmark", "target_url": "https://example.com/bench"})
}

fn user_body(user: &str) -> Value {
    json!({"to": {"user": user}, "title": "Bench", "body": format!("Hello {user}"), "target_url": "https://example.com/bench"})
}

// ---------------------------------------------------------------------------
// Phases

#[derive(Debug, Default, Clone)]
struct Throughput {
    accept_ms: f64,
    rate: f64,
    herald_cpu_us: Option<f64>,
    sink_cpu_us: Option<f64>,
    db_cpu_us: Option<f64>,
    /// Herald CPU per delivery by thread kind.
    threads: BTreeMap<String, f64>,
    /// Per-user sends: 202 times under load.
    api_p50_ms: Option<f64>,
    api_p99_ms: Option<f64>,
    /// CPU of this process (the API clients) per send call.
    driver_cpu_us: Option<f64>,
    /// Pushes that reached the sink beyond one per delivery, counted once
    /// the queue has drained: a delivery claimed twice shows up here.
    extra_pushes: u64,
}

/// Readings taken as a phase that delivers starts, for
/// [`DeliveryMeter::finish`] to measure the phase against.
struct DeliveryMeter {
    sink_count: u64,
    herald: u64,
    sink: u64,
    db: Option<u64>,
    threads: BTreeMap<String, u64>,
    started: Instant,
}

impl DeliveryMeter {
    async fn start(
        c: &Common,
        sink: &mut SinkProc,
        pids: &[u32],
        db: &DbCpu,
    ) -> anyhow::Result<Self> {
        Ok(DeliveryMeter {
            sink_count: sink.count().await?,
            herald: c.cpu.total(pids),
            sink: c.cpu.total(&[sink.pid]),
            db: db.ticks(),
            threads: threads_of(pids),
            started: Instant::now(),
        })
    }

    /// Waits for `n` pushes to arrive at the sink and for the queue to
    /// drain, then gives the figures every phase that delivers has: the
    /// rate up to the last arrival, CPU per delivery (Herald's, by thread
    /// kind, the sink's and the database server's) and pushes beyond one
    /// per delivery.
    async fn finish(
        self,
        c: &Common,
        sink: &mut SinkProc,
        pids: &[u32],
        db: &DbCpu,
        bases: &[String],
        n: u64,
    ) -> anyhow::Result<Throughput> {
        let end = sink
            .wait_count(self.sink_count + n, Duration::from_secs(600))
            .await?;
        let sink_cpu = c.cpu.total(&[sink.pid]);
        let sink_n = sink.count().await? - self.sink_count;
        drained(c, bases, Duration::from_secs(120)).await?;
        let (herald, db_ticks) = (c.cpu.total(pids), db.ticks());
        let threads = threads_of(pids);
        let extra_pushes = (sink.count().await? - self.sink_count).saturating_sub(n);
        Ok(Throughput {
            extra_pushes,
            threads: threads_per_item(&c.cpu, &self.threads, &threads, n),
            rate: n as f64 / (end - self.started).as_secs_f64(),
            herald_cpu_us: c.cpu.per_item_us(herald - self.herald, n),
            sink_cpu_us: c.cpu.per_item_us(sink_cpu - self.sink, sink_n),
            db_cpu_us: db_ticks
                .zip(self.db)
                .and_then(|(a, b)| c.cpu.per_item_us(a.saturating_sub(b), n)),
            ..Default::default()
        })
    }
}

/// A broadcast to every subscription, sent at once through as many of
/// `bases` as `expect` has entries, the i-th expected to queue `expect[i]`
/// deliveries: through one instance when they share a database, through
/// each when each has its own. The 202 time is the slowest call's.
async fn phase_broadcast(
    c: &Common,
    sink: &mut SinkProc,
    pids: &[u32],
    db: &DbCpu,
    bases: &[String],
    app: &Seeded,
    expect: &[u64],
) -> anyhow::Result<Throughput> {
    let meter = DeliveryMeter::start(c, sink, pids, db).await?;
    let calls = bases
        .iter()
        .take(expect.len())
        .map(|base| send(c, base, app, broadcast_body()));
    let mut accept = Duration::ZERO;
    for (answer, &n) in futures::future::join_all(calls)
        .await
        .into_iter()
        .zip(expect)
    {
        let (took, queued) = answer?;
        if queued != n {
            bail!("the broadcast queued {queued} deliveries, expected {n}");
        }
        accept = accept.max(took);
    }
    let n = expect.iter().sum();
    Ok(Throughput {
        accept_ms: ms(accept),
        ..meter.finish(c, sink, pids, db, bases, n).await?
    })
}

/// `count` sends to one user each, from 64 concurrent clients spread over the
/// instances.
async fn phase_users(
    c: &Arc<Common>,
    sink: &mut SinkProc,
    pids: &[u32],
    db: &DbCpu,
    bases: &[String],
    app: &Arc<Seeded>,
    users: &[BenchSub],
) -> anyhow::Result<Throughput> {
    let n = users.len() as u64;
    let meter = DeliveryMeter::start(c, sink, pids, db).await?;
    let me0 = c.cpu.total(&[std::process::id()]);
    let mut took = drive_user_sends(bases, app, users).await?;
    let me1 = c.cpu.total(&[std::process::id()]);
    let delivered = meter.finish(c, sink, pids, db, bases, n).await?;
    took.sort_by(f64::total_cmp);
    Ok(Throughput {
        driver_cpu_us: c.cpu.per_item_us(me1 - me0, n),
        accept_ms: percentile(&took, 50.0),
        api_p50_ms: Some(percentile(&took, 50.0)),
        api_p99_ms: Some(percentile(&took, 99.0)),
        ..delivered
    })
}

/// Sends once to each of `users` from [`CLIENTS`] concurrent clients, in
/// turn over the instances; answers each call's time to its 202 in ms.
async fn drive_user_sends(
    bases: &[String],
    app: &Arc<Seeded>,
    users: &[BenchSub],
) -> anyhow::Result<Vec<f64>> {
    let next = Arc::new(AtomicUsize::new(0));
    let users: Arc<Vec<String>> = Arc::new(users.iter().map(|s| s.user.clone()).collect());
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let (next, users) = (next.clone(), users.clone());
        let mut client = ApiClient::new(bases, app)?;
        let instances = bases.len();
        tasks.push(tokio::spawn(async move {
            let mut took = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= users.len() {
                    return anyhow::Ok(took);
                }
                let (t, queued) = client.send(i % instances, &user_body(&users[i])).await?;
                if queued != 1 {
                    bail!("a send to {} queued {queued} deliveries", users[i]);
                }
                took.push(ms(t));
            }
        }));
    }
    let mut took = Vec::new();
    for t in tasks {
        took.extend(t.await??);
    }
    Ok(took)
}

/// The per-user sends again, to the app paused (`max_concurrency: 0`):
/// each is stored and answered but not sent, so Herald's CPU per send is
/// that of the API call and the storage alone: the part of a per-user
/// delivery that a broadcast's deliveries share one call for. The queue is
/// cleared after.
async fn phase_paused_users(
    c: &Arc<Common>,
    h: &Herald,
    app: &Arc<Seeded>,
    users: &[BenchSub],
) -> anyhow::Result<Throughput> {
    let n = users.len() as u64;
    patch_concurrency(c, &h.base, app, 0).await?;
    let pids = [h.pid];
    let h0 = c.cpu.total(&pids);
    let th0 = threads_of(&pids);
    let me0 = c.cpu.total(&[std::process::id()]);
    let t0 = Instant::now();
    let mut took = drive_user_sends(std::slice::from_ref(&h.base), app, users).await?;
    let elapsed = t0.elapsed();
    let (h1, me1) = (c.cpu.total(&pids), c.cpu.total(&[std::process::id()]));
    let th1 = threads_of(&pids);
    clear_queue_and_resume(c, h, app).await?;
    took.sort_by(f64::total_cmp);
    Ok(Throughput {
        threads: threads_per_item(&c.cpu, &th0, &th1, n),
        driver_cpu_us: c.cpu.per_item_us(me1 - me0, n),
        accept_ms: percentile(&took, 50.0),
        rate: n as f64 / elapsed.as_secs_f64(),
        herald_cpu_us: c.cpu.per_item_us(h1 - h0, n),
        api_p50_ms: Some(percentile(&took, 50.0)),
        api_p99_ms: Some(percentile(&took, 99.0)),
        ..Throughput::default()
    })
}

#[derive(Debug, Default, Clone)]
struct Latency {
    /// 202 answer to arrival at the sink (negative when the push arrived first).
    from_202: Vec<f64>,
    /// Start of the send call to arrival.
    from_post: Vec<f64>,
}

/// One send to one user at a time on an idle queue.
async fn phase_latency(
    c: &Common,
    sink: &mut SinkProc,
    base: &str,
    app: &Seeded,
    users: &[BenchSub],
) -> anyhow::Result<Latency> {
    let mut l = Latency::default();
    for s in users {
        let posted = unix_ns();
        let (_, queued) = send(c, base, app, user_body(&s.user)).await?;
        let answered = unix_ns();
        if queued != 1 {
            bail!("a send to {} queued {queued} deliveries", s.user);
        }
        let Some(arrived) = sink
            .wait_token(&s.token, posted, Duration::from_secs(10))
            .await?
        else {
            bail!("the push to {} did not arrive within 10 s", s.user);
        };
        l.from_202
            .push((arrived as i128 - answered as i128) as f64 / 1e6);
        l.from_post
            .push((arrived as i128 - posted as i128) as f64 / 1e6);
        // Let the outcome be recorded, so the next send meets an idle queue.
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    l.from_202.sort_by(f64::total_cmp);
    l.from_post.sort_by(f64::total_cmp);
    Ok(l)
}

#[derive(Debug, Default, Clone)]
struct Pending {
    rss_mib: Option<f64>,
    hwm_mib: Option<f64>,
    deliveries: u64,
    accept_ms: Vec<f64>,
}

/// Pauses the app, queues 10 broadcasts, reads memory, clears the queue.
async fn phase_pending(c: &Common, h: &Herald, app: &Seeded, n: u64) -> anyhow::Result<Pending> {
    let mut p = Pending::default();
    patch_concurrency(c, &h.base, app, 0).await?;
    for _ in 0..PENDING_BROADCASTS {
        let (took, queued) = send(c, &h.base, app, broadcast_body()).await?;
        if queued != n {
            bail!("a paused broadcast queued {queued} deliveries, expected {n}");
        }
        p.deliveries += queued;
        p.accept_ms.push(ms(took));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    p.rss_mib = vm_mib(h.pid, "VmRSS");
    p.hwm_mib = vm_mib(h.pid, "VmHWM");
    clear_queue_and_resume(c, h, app).await?;
    Ok(p)
}

/// Empties the app's queue and gives it back its default concurrency.
async fn clear_queue_and_resume(c: &Common, h: &Herald, app: &Seeded) -> anyhow::Result<()> {
    let (status, answer) = call(
        c,
        reqwest::Method::DELETE,
        format!("{}/api/v1/queue?app={}", h.base, app.app_id),
        ADMIN,
        None,
    )
    .await?;
    if status != 200 {
        bail!("clearing the queue answered {status}: {answer}");
    }
    patch_concurrency(
        c,
        &h.base,
        app,
        herald::Settings::default().app_concurrency as i64,
    )
    .await
}

#[derive(Debug, Default, Clone)]
struct PeerResult {
    rate: f64,
    cpu_us: Option<f64>,
    sink_cpu_us: Option<f64>,
    failed: u64,
}

async fn phase_peer(
    c: &Common,
    sink: &mut SinkProc,
    subs_file: &Path,
    count: usize,
) -> anyhow::Result<PeerResult> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/peer/send.mjs");
    let mut child = Command::new("node")
        .arg(&script)
        .args(["--subs".as_ref(), subs_file.as_os_str()])
        .args(["--ca".as_ref(), c.ca_file.as_os_str()])
        .args([
            "--count",
            &count.to_string(),
            "--concurrency",
            &CLIENTS.to_string(),
        ])
        .env("NODE_EXTRA_CA_CERTS", &c.ca_file)
        .env("NO_PROXY", "localhost,127.0.0.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting node (bench/peer needs `npm ci`; scripts/bench.sh does it)")?;
    let pid = child.id().context("node pid")?;
    let mut stdin = child.stdin.take().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = out
        .next_line()
        .await?
        .context("the peer exited before it was ready")?;
    if ready != "ready" {
        bail!("the peer said {ready}");
    }
    let c0 = sink.count().await?;
    let (p0, s0) = (c.cpu.total(&[pid]), c.cpu.total(&[sink.pid]));
    let t0 = Instant::now();
    stdin.write_all(b"go\n").await?;
    stdin.flush().await?;
    let line = tokio::time::timeout(Duration::from_secs(900), out.next_line())
        .await??
        .context("the peer exited without a result")?;
    let result: Value =
        serde_json::from_str(&line).with_context(|| format!("peer result {line}"))?;
    let ok = result["ok"].as_u64().unwrap_or(0);
    let end = sink.wait_count(c0 + ok, Duration::from_secs(60)).await?;
    let (p1, s1) = (c.cpu.total(&[pid]), c.cpu.total(&[sink.pid]));
    let sink_n = sink.count().await? - c0;
    drop(stdin);
    let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
    let failed = result["failed"].as_u64().unwrap_or(0);
    if failed > 0 {
        eprintln!(
            "  web-push: {failed} sends failed, first: {}",
            result["first_error"]
        );
    }
    Ok(PeerResult {
        rate: ok as f64 / (end - t0).as_secs_f64(),
        cpu_us: c.cpu.per_item_us(p1 - p0, ok),
        sink_cpu_us: c.cpu.per_item_us(s1 - s0, sink_n),
        failed,
    })
}

// ---------------------------------------------------------------------------
// PostgreSQL server CPU

/// The PostgreSQL server, for CPU accounting: the postmaster, its children
/// alive at each reading (the backends, also those a pool opens after the
/// run began, and the auxiliary processes), and what its exited children
/// used. Backends of other databases count too; here they sit idle. `None`
/// on SQLite.
struct DbCpu {
    postmaster: Option<u32>,
}

impl DbCpu {
    fn none() -> DbCpu {
        DbCpu { postmaster: None }
    }
    fn ticks(&self) -> Option<u64> {
        let pm = self.postmaster?;
        let server = proc_stat(pm)?;
        let children: u64 = std::fs::read_dir("/proc")
            .ok()?
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter_map(proc_stat)
            .filter(|p| p.ppid == pm)
            .map(|p| p.own)
            .sum();
        Some(server.own + server.reaped + children)
    }
}

/// The postmaster of the server at `admin_url`: the parent of a backend.
async fn pg_server(admin_url: &str) -> anyhow::Result<DbCpu> {
    let mut conn = sqlx::PgConnection::connect(admin_url).await?;
    let backend: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut conn)
        .await?;
    conn.close().await?;
    Ok(DbCpu {
        postmaster: proc_stat(backend as u32).map(|p| p.ppid),
    })
}

// ---------------------------------------------------------------------------
// Runs

#[derive(Debug, Default, Clone)]
struct SqliteRun {
    rss_start: Option<f64>,
    broadcast: Throughput,
    users: Throughput,
    paused_users: Throughput,
    latency: Latency,
    rss_idle: Option<f64>,
    pending: Option<Pending>,
    peer: Option<PeerResult>,
    outcomes: BTreeMap<String, f64>,
}

struct Setup {
    common: Arc<Common>,
    subs: Vec<BenchSub>,
    subs_file: PathBuf,
    work: tempfile::TempDir,
}

async fn sqlite_run(
    s: &Setup,
    sink: &mut SinkProc,
    template: &Path,
    app: &Arc<Seeded>,
    run: usize,
) -> anyhow::Result<SqliteRun> {
    let c = &s.common;
    let o = &c.opts;
    let dir = s.work.path().join(format!("sqlite-run-{run}"));
    std::fs::create_dir_all(&dir)?;
    std::fs::copy(template, dir.join("herald.db"))?;
    let url = format!("sqlite://{}/herald.db", dir.display());
    let h = start_herald(c, &dir, &url, "herald").await?;
    let bases = vec![h.base.clone()];
    let mut r = SqliteRun::default();
    tokio::time::sleep(Duration::from_secs(1)).await;
    r.rss_start = vm_mib(h.pid, "VmRSS");

    eprintln!("  broadcast to {} subscriptions", o.subs);
    r.broadcast = phase_broadcast(
        c,
        sink,
        &[h.pid],
        &DbCpu::none(),
        &bases,
        app,
        &[o.subs as u64],
    )
    .await?;
    eprintln!(
        "    {:.0} deliveries/s, {:.0} µs CPU each, 202 in {:.0} ms",
        r.broadcast.rate,
        r.broadcast.herald_cpu_us.unwrap_or(f64::NAN),
        r.broadcast.accept_ms
    );

    eprintln!("  {} per-user sends, {CLIENTS} clients", o.user_sends);
    r.users = phase_users(
        c,
        sink,
        &[h.pid],
        &DbCpu::none(),
        &bases,
        app,
        &s.subs[..o.user_sends],
    )
    .await?;
    eprintln!(
        "    {:.0} deliveries/s, {:.0} µs CPU each",
        r.users.rate,
        r.users.herald_cpu_us.unwrap_or(f64::NAN)
    );

    eprintln!("  idle latency, {} sends", o.latency_sends);
    r.latency = phase_latency(
        c,
        sink,
        &h.base,
        app,
        &s.subs[o.user_sends..o.user_sends + o.latency_sends],
    )
    .await?;
    eprintln!(
        "    202 → arrival p50 {:.2} ms, p99 {:.2} ms",
        percentile(&r.latency.from_202, 50.0),
        percentile(&r.latency.from_202, 99.0)
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    r.rss_idle = vm_mib(h.pid, "VmRSS");

    eprintln!("  {} per-user sends to the app paused", o.user_sends);
    r.paused_users = phase_paused_users(c, &h, app, &s.subs[..o.user_sends]).await?;
    eprintln!(
        "    {:.0} sends/s stored, {:.0} µs CPU each",
        r.paused_users.rate,
        r.paused_users.herald_cpu_us.unwrap_or(f64::NAN)
    );

    if run <= o.pending_runs {
        eprintln!("  {PENDING_BROADCASTS} broadcasts pending while paused");
        let p = phase_pending(c, &h, app, o.subs as u64).await?;
        eprintln!(
            "    {} deliveries pending, RSS {:.0} MiB",
            p.deliveries,
            p.rss_mib.unwrap_or(f64::NAN)
        );
        r.pending = Some(p);
    }
    r.outcomes = gauges(c, &h.base).await?.outcomes;
    if let Some(p) = h.problems() {
        eprintln!("  Herald logged {p}");
    }
    h.stop().await;

    if o.peer {
        eprintln!("  web-push reference, {} sends", o.peer_count);
        let p = phase_peer(c, sink, &s.subs_file, o.peer_count).await?;
        eprintln!(
            "    {:.0} deliveries/s, {:.0} µs CPU each",
            p.rate,
            p.cpu_us.unwrap_or(f64::NAN)
        );
        r.peer = Some(p);
    }
    Ok(r)
}

#[derive(Debug, Default, Clone)]
struct PgRun {
    broadcast: Throughput,
    users: Throughput,
}

/// The PostgreSQL runs: by instance count on one database, and the control
/// (that many instances with a database each), if it ran.
#[derive(Debug, Default)]
struct PgResults {
    shared: BTreeMap<usize, Vec<PgRun>>,
    control: Option<(usize, Vec<PgRun>)>,
}

fn pg_url_for(base: &str, db: &str) -> anyhow::Result<String> {
    let mut u = url::Url::parse(base)?;
    u.set_path(&format!("/{db}"));
    Ok(u.to_string())
}

async fn pg_exec(admin_url: &str, sql: &str) -> anyhow::Result<()> {
    let mut conn = sqlx::PgConnection::connect(admin_url).await?;
    sqlx::raw_sql(sql).execute(&mut conn).await?;
    conn.close().await?;
    Ok(())
}

/// Builds the template database; `Err` with the reason when Herald cannot use
/// PostgreSQL (yet).
async fn pg_template(s: &Setup, master: &MasterKey, name: &str) -> anyhow::Result<Seeded> {
    let admin = &s.common.opts.pg_url;
    pg_exec(
        admin,
        &format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"),
    )
    .await?;
    pg_exec(admin, &format!("CREATE DATABASE \"{name}\"")).await?;
    let url = pg_url_for(admin, name)?;
    let store = match Store::connect(&url, 8, 10_000).await {
        Ok(s) => s,
        Err(e) => {
            let _ = pg_exec(
                admin,
                &format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"),
            )
            .await;
            bail!("{e}");
        }
    };
    let t = Instant::now();
    let seeded = seed(&store, master, &s.subs, 16).await?;
    eprintln!(
        "  stored {} subscriptions on PostgreSQL in {:.1} s",
        s.subs.len(),
        t.elapsed().as_secs_f64()
    );
    drop(store);
    // A template must have no sessions; the pool closes its connections lazily.
    tokio::time::sleep(Duration::from_millis(200)).await;
    pg_exec(admin, &format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}' AND pid <> pg_backend_pid()")).await?;
    Ok(seeded)
}

/// How a run's instances use PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Layout {
    /// One database, one queue: the deployment being measured.
    Shared,
    /// The control, with nothing to coordinate: each instance on a copy of
    /// the template that keeps only its share of the subscriptions, the
    /// users the per-user phase sends to through it. A broadcast goes
    /// through every instance, each to its share.
    Separate,
}

/// Makes `dbs` from the template for a run of `layout`; answers their URLs
/// and the deliveries a broadcast through each instance should queue.
async fn pg_run_databases(
    s: &Setup,
    template: &str,
    dbs: &[String],
    instances: usize,
    layout: Layout,
) -> anyhow::Result<(Vec<String>, Vec<u64>)> {
    let (admin, o) = (&s.common.opts.pg_url, &s.common.opts);
    let mut urls = Vec::new();
    let mut expect = Vec::new();
    for (i, db) in dbs.iter().enumerate() {
        pg_exec(
            admin,
            &format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"),
        )
        .await?;
        pg_exec(
            admin,
            &format!("CREATE DATABASE \"{db}\" TEMPLATE \"{template}\""),
        )
        .await?;
        let url = pg_url_for(admin, db)?;
        if layout == Layout::Separate {
            // The per-user phase sends its i-th send through instance
            // i % instances, to the i-th subscription's user.
            let keep: Vec<&str> = s
                .subs
                .iter()
                .enumerate()
                .filter(|(j, _)| j % instances == i)
                .map(|(_, sub)| sub.user.as_str())
                .collect();
            let mut conn = sqlx::PgConnection::connect(&url).await?;
            sqlx::query("DELETE FROM subscriptions WHERE NOT (user_id = ANY($1))")
                .bind(&keep)
                .execute(&mut conn)
                .await?;
            sqlx::raw_sql("VACUUM ANALYZE subscriptions")
                .execute(&mut conn)
                .await?;
            conn.close().await?;
            expect.push(keep.len() as u64);
        } else {
            expect.push(o.subs as u64);
        }
        urls.push(url);
    }
    Ok((urls, expect))
}

async fn pg_run(
    s: &Setup,
    sink: &mut SinkProc,
    template: &str,
    app: &Arc<Seeded>,
    instances: usize,
    layout: Layout,
    run: usize,
) -> anyhow::Result<PgRun> {
    let c = &s.common;
    let o = &c.opts;
    let admin = &o.pg_url;
    let dbs: Vec<String> = match layout {
        Layout::Shared => vec![format!("{template}_run")],
        Layout::Separate => (0..instances)
            .map(|i| format!("{template}_run_{i}"))
            .collect(),
    };
    let dir = s
        .work
        .path()
        .join(format!("pg-{instances}-{layout:?}-run-{run}"));
    std::fs::create_dir_all(&dir)?;
    // Inside the block, so that the databases are dropped below even when
    // making one of them failed.
    let result = async {
        let (urls, expect) = pg_run_databases(s, template, &dbs, instances, layout).await?;
        let mut hs = Vec::new();
        for i in 0..instances {
            let url = &urls[i.min(urls.len() - 1)];
            hs.push(start_herald(c, &dir, url, &format!("herald-{i}")).await?);
        }
        let pids: Vec<u32> = hs.iter().map(|h| h.pid).collect();
        let bases: Vec<String> = hs.iter().map(|h| h.base.clone()).collect();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let db_cpu = pg_server(admin).await?;
        let mut r = PgRun::default();
        let outcome = async {
            r.broadcast = phase_broadcast(c, sink, &pids, &db_cpu, &bases, app, &expect).await?;
            eprintln!(
                "    broadcast {:.0} deliveries/s, {:.0} µs Herald CPU each, {:.0} µs PostgreSQL",
                r.broadcast.rate,
                r.broadcast.herald_cpu_us.unwrap_or(f64::NAN),
                r.broadcast.db_cpu_us.unwrap_or(f64::NAN)
            );
            r.users = phase_users(
                c,
                sink,
                &pids,
                &db_cpu,
                &bases,
                app,
                &s.subs[..o.user_sends],
            )
            .await?;
            eprintln!(
                "    per-user {:.0} deliveries/s, {:.0} µs Herald CPU each, {:.0} µs PostgreSQL, POST → 202 p50 {:.2} ms",
                r.users.rate,
                r.users.herald_cpu_us.unwrap_or(f64::NAN),
                r.users.db_cpu_us.unwrap_or(f64::NAN),
                r.users.api_p50_ms.unwrap_or(f64::NAN)
            );
            anyhow::Ok(())
        }
        .await;
        for h in hs {
            if let Some(p) = h.problems() {
                eprintln!("  Herald logged {p}");
            }
            h.stop().await;
        }
        outcome.map(|_| r)
    }
    .await;
    for db in &dbs {
        let _ = pg_exec(
            admin,
            &format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"),
        )
        .await;
    }
    result
}

// ---------------------------------------------------------------------------
// Main

async fn bench(opts: Opts) -> anyhow::Result<()> {
    if !opts.herald_bin.exists() {
        bail!(
            "{} is missing: run scripts/bench.sh (it builds the release binary)",
            opts.herald_bin.display()
        );
    }
    let started = Instant::now();
    let mut sink = SinkProc::start().await?;
    let cpu = CpuMeter { tck: clk_tck() };
    let master = MasterKey::generate();
    let http = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(2 * CLIENTS)
        .timeout(Duration::from_secs(300))
        .build()?;
    let common = Arc::new(Common {
        opts: opts.clone(),
        master_b64: master.to_base64(),
        ca_file: sink.ca_file.clone(),
        http,
        cpu,
    });
    let herald_env: Vec<String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("HERALD_") && !k.starts_with("HERALD_BENCH"))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    eprintln!(
        "Herald delivery benchmark: {} subscriptions, {} run(s), load average {} on {} cores, {}{}",
        opts.subs,
        opts.runs,
        loadavg(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        cpu_model(),
        if herald_env.is_empty() {
            String::new()
        } else {
            format!(", Herald environment {}", herald_env.join(" "))
        }
    );

    let t = Instant::now();
    let subs = make_subs(opts.subs, sink.port)?;
    eprintln!(
        "  made {} P-256 subscriptions in {:.1} s",
        subs.len(),
        t.elapsed().as_secs_f64()
    );
    let work = tempfile::Builder::new().prefix("herald-bench-").tempdir()?;
    let subs_file = work.path().join("subscriptions.json");
    std::fs::write(
        &subs_file,
        serde_json::to_vec(&subs.iter().map(|s| &s.json).collect::<Vec<_>>())?,
    )?;
    let setup = Setup {
        common: common.clone(),
        subs,
        subs_file,
        work,
    };

    // SQLite template: stored once through the store, copied per run.
    let t = Instant::now();
    let build_url = format!("sqlite://{}/build.db", setup.work.path().display());
    let template = setup.work.path().join("template.db");
    let app = {
        let store = Store::connect(&build_url, 2, 10_000).await?;
        let app = seed(&store, &master, &setup.subs, 8).await?;
        let mut conn = sqlx::SqliteConnection::connect(&build_url).await?;
        sqlx::query("VACUUM INTO ?")
            .bind(template.display().to_string())
            .execute(&mut conn)
            .await?;
        conn.close().await?;
        Arc::new(app)
    };
    eprintln!(
        "  stored {} subscriptions on SQLite in {:.1} s",
        setup.subs.len(),
        t.elapsed().as_secs_f64()
    );

    let mut sqlite_runs = Vec::new();
    for run in 1..=opts.runs {
        eprintln!(
            "SQLite run {run}/{} (load average {})",
            opts.runs,
            loadavg()
        );
        sqlite_runs.push(sqlite_run(&setup, &mut sink, &template, &app, run).await?);
    }

    let mut pg: Result<PgResults, String> = Err("skipped (--no-postgres)".into());
    if opts.postgres && !opts.pg_instances.is_empty() {
        let name = format!("herald_bench_{}", std::process::id());
        eprintln!("PostgreSQL at {}", herald::app::redact(&opts.pg_url));
        match pg_template(&setup, &master, &name).await {
            Err(e) => {
                eprintln!("  not measured: {e}");
                pg = Err(format!("not measured: {e}"));
            }
            Ok(seeded) => {
                let pg_app = Arc::new(seeded);
                let mut results = PgResults::default();
                let most = opts.pg_instances.iter().copied().max().unwrap_or(1);
                let mut turns: Vec<(usize, Layout)> = opts
                    .pg_instances
                    .iter()
                    .map(|&k| (k, Layout::Shared))
                    .collect();
                if opts.pg_control && most > 1 {
                    turns.push((most, Layout::Separate));
                }
                // Instance counts take turns, so a change in the machine's load
                // falls on all of them alike.
                for run in 1..=opts.pg_runs {
                    for &(k, layout) in &turns {
                        let how = match layout {
                            Layout::Shared => "",
                            Layout::Separate => ", a database each (control)",
                        };
                        eprintln!(
                            "PostgreSQL, {k} instance(s){how}, run {run}/{} (load average {})",
                            opts.pg_runs,
                            loadavg()
                        );
                        match pg_run(&setup, &mut sink, &name, &pg_app, k, layout, run).await {
                            Ok(r) => match layout {
                                Layout::Shared => {
                                    results.shared.entry(k).or_insert_with(Vec::new).push(r)
                                }
                                Layout::Separate => {
                                    results.control.get_or_insert((k, Vec::new())).1.push(r)
                                }
                            },
                            Err(e) => eprintln!("  failed: {e:#}"),
                        }
                    }
                }
                let _ = pg_exec(
                    &opts.pg_url,
                    &format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"),
                )
                .await;
                pg = Ok(results);
            }
        }
    }
    sink.stop().await;
    report(&opts, &sqlite_runs, &pg, started.elapsed());
    Ok(())
}

// ---------------------------------------------------------------------------
// Report

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

#[derive(Clone, Copy)]
enum Target {
    AtLeast(f64),
    AtMost(f64),
}

impl Target {
    fn met(self, v: f64) -> bool {
        match self {
            Target::AtLeast(t) => v >= t,
            Target::AtMost(t) => v <= t,
        }
    }
    fn text(self, unit: &str) -> String {
        match self {
            Target::AtLeast(t) => format!("≥ {} {unit}", fmt_num(t)),
            Target::AtMost(t) => format!("≤ {} {unit}", fmt_num(t)),
        }
    }
}

fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        return "–".into();
    }
    let a = v.abs();
    if a >= 1000.0 {
        let s = format!("{:.0}", v);
        // thin grouping for readability: 12 345
        let (sign, digits) = s.strip_prefix('-').map(|d| ("-", d)).unwrap_or(("", &s));
        let mut out = String::new();
        for (i, ch) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push(' ');
            }
            out.push(ch);
        }
        format!("{sign}{out}")
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

struct Table {
    rows: Vec<[String; 5]>,
    met: usize,
    judged: usize,
}

impl Table {
    fn section(&mut self, title: &str) {
        self.rows.push([
            format!("[{title}]"),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
        ]);
    }

    /// A row: the median of the runs' values, their range, and the target.
    fn row(
        &mut self,
        label: &str,
        unit: &str,
        values: Vec<f64>,
        target: Option<Target>,
    ) -> Option<f64> {
        let m = median(values.clone());
        let finite: Vec<f64> = values.into_iter().filter(|v| v.is_finite()).collect();
        let range = if finite.len() > 1 {
            let lo = finite.iter().cloned().fold(f64::INFINITY, f64::min);
            let hi = finite.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            format!("{} – {}", fmt_num(lo), fmt_num(hi))
        } else {
            String::new()
        };
        let verdict = match (target, m) {
            (Some(t), Some(v)) => {
                self.judged += 1;
                if t.met(v) {
                    self.met += 1;
                    format!("{}  met", t.text(unit))
                } else {
                    format!("{}  MISSED", t.text(unit))
                }
            }
            (Some(t), None) => {
                self.judged += 1;
                format!("{}  not measured", t.text(unit))
            }
            _ => String::new(),
        };
        self.rows.push([
            format!("  {label}"),
            m.map(fmt_num).unwrap_or_else(|| "–".into()),
            unit.to_string(),
            range,
            verdict,
        ]);
        m
    }

    fn note(&mut self, text: String) {
        self.rows.push([
            format!("  {text}"),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
        ]);
    }

    fn print(&self) {
        let header = ["figure", "median", "unit", "range over runs", "target"].map(String::from);
        let is_data = |r: &[String; 5]| !(r[1].is_empty() && r[4].is_empty());
        let mut w = [0usize; 5];
        for r in self
            .rows
            .iter()
            .filter(|r| is_data(r))
            .chain(std::iter::once(&header))
        {
            for i in 0..5 {
                w[i] = w[i].max(r[i].chars().count());
            }
        }
        let pad = |s: &str, n: usize, right: bool| {
            let fill = " ".repeat(n.saturating_sub(s.chars().count()));
            if right {
                format!("{fill}{s}")
            } else {
                format!("{s}{fill}")
            }
        };
        let line = |r: &[String; 5]| {
            format!(
                "{}  {}  {}  {}  {}",
                pad(&r[0], w[0], false),
                pad(&r[1], w[1], true),
                pad(&r[2], w[2], false),
                pad(&r[3], w[3], false),
                r[4]
            )
        };
        println!("{}", line(&header).trim_end());
        println!("{}", "-".repeat(w.iter().sum::<usize>() + 8 + 14));
        for r in &self.rows {
            if is_data(r) {
                println!("{}", line(r).trim_end());
            } else {
                println!("{}", r[0]);
            }
        }
    }
}

/// Rows of Herald CPU per delivery by thread kind (those above 1 µs).
fn thread_rows(t: &mut Table, what: &str, phases: &[&Throughput]) {
    let kinds: std::collections::BTreeSet<&String> =
        phases.iter().flat_map(|p| p.threads.keys()).collect();
    for k in kinds {
        let values: Vec<f64> = phases
            .iter()
            .map(|p| p.threads.get(k).copied().unwrap_or(0.0))
            .collect();
        if median(values.clone()).unwrap_or(0.0) >= 1.0 {
            t.row(
                &format!("{what}: … of which in {k} threads"),
                "µs",
                values,
                None,
            );
        }
    }
}

fn report(o: &Opts, runs: &[SqliteRun], pg: &Result<PgResults, String>, took: Duration) {
    let mut t = Table {
        rows: Vec::new(),
        met: 0,
        judged: 0,
    };
    let col = |f: &dyn Fn(&SqliteRun) -> Option<f64>| {
        runs.iter()
            .map(|r| f(r).unwrap_or(f64::NAN))
            .collect::<Vec<f64>>()
    };
    let subs = fmt_num(o.subs as f64);

    t.section(&format!(
        "Herald on SQLite (embedded default), {subs} subscriptions, {} run(s)",
        runs.len()
    ));
    let b_rate = t.row(
        &format!("broadcast to {subs}: deliveries/s (call → last arrival)"),
        "/s",
        col(&|r| Some(r.broadcast.rate)),
        Some(Target::AtLeast(10_000.0)),
    );
    let b_cpu = t.row(
        "broadcast: Herald CPU per delivery",
        "µs",
        col(&|r| r.broadcast.herald_cpu_us),
        Some(Target::AtMost(150.0)),
    );
    thread_rows(
        &mut t,
        "broadcast",
        &runs.iter().map(|r| &r.broadcast).collect::<Vec<_>>(),
    );
    let accept = t.row(
        &format!("broadcast to {subs}: POST → 202"),
        "ms",
        col(&|r| Some(r.broadcast.accept_ms)),
        Some(Target::AtMost(2000.0)),
    );
    let u_rate = t.row(
        &format!(
            "{} per-user sends, {CLIENTS} clients: deliveries/s",
            fmt_num(o.user_sends as f64)
        ),
        "/s",
        col(&|r| Some(r.users.rate)),
        Some(Target::AtLeast(10_000.0)),
    );
    let u_cpu = t.row(
        "per-user sends: Herald CPU per delivery (API included)",
        "µs",
        col(&|r| r.users.herald_cpu_us),
        Some(Target::AtMost(150.0)),
    );
    thread_rows(
        &mut t,
        "per-user",
        &runs.iter().map(|r| &r.users).collect::<Vec<_>>(),
    );
    t.row(
        "per-user sends: CPU of the API clients (this process) per call",
        "µs",
        col(&|r| r.users.driver_cpu_us),
        None,
    );
    t.row(
        "per-user sends: POST → 202 p50 under load",
        "ms",
        col(&|r| r.users.api_p50_ms),
        None,
    );
    t.row(
        "per-user sends: POST → 202 p99 under load",
        "ms",
        col(&|r| r.users.api_p99_ms),
        None,
    );
    t.row(
        "the same sends to the app paused (stored, not sent): sends/s",
        "/s",
        col(&|r| Some(r.paused_users.rate)),
        None,
    );
    t.row(
        "paused: Herald CPU per send (API and storage alone)",
        "µs",
        col(&|r| r.paused_users.herald_cpu_us),
        None,
    );
    thread_rows(
        &mut t,
        "paused",
        &runs.iter().map(|r| &r.paused_users).collect::<Vec<_>>(),
    );
    let p50 = t.row(
        &format!(
            "idle: 202 → arrival p50 ({} sends per run)",
            o.latency_sends
        ),
        "ms",
        col(&|r| Some(percentile(&r.latency.from_202, 50.0))),
        Some(Target::AtMost(5.0)),
    );
    let p99 = t.row(
        "idle: 202 → arrival p99",
        "ms",
        col(&|r| Some(percentile(&r.latency.from_202, 99.0))),
        Some(Target::AtMost(25.0)),
    );
    t.row(
        "idle: POST → arrival p50",
        "ms",
        col(&|r| Some(percentile(&r.latency.from_post, 50.0))),
        None,
    );
    t.row(
        "idle: POST → arrival p99",
        "ms",
        col(&|r| Some(percentile(&r.latency.from_post, 99.0))),
        None,
    );
    let negative: usize = runs
        .iter()
        .map(|r| r.latency.from_202.iter().filter(|&&v| v < 0.0).count())
        .sum();
    if negative > 0 {
        t.note(format!("({negative} idle pushes arrived before the client had read the 202: counted as negative)"));
    }
    t.row(
        "RSS idle, after start",
        "MiB",
        col(&|r| r.rss_start),
        Some(Target::AtMost(64.0)),
    );
    let rss_idle = t.row(
        "RSS idle, after the load above",
        "MiB",
        col(&|r| r.rss_idle),
        Some(Target::AtMost(64.0)),
    );
    let pending: Vec<&Pending> = runs.iter().filter_map(|r| r.pending.as_ref()).collect();
    let pend_n = pending.first().map(|p| p.deliveries).unwrap_or(0);
    let rss_pend = t.row(
        &format!("RSS with {} deliveries pending", fmt_num(pend_n as f64)),
        "MiB",
        pending
            .iter()
            .map(|p| p.rss_mib.unwrap_or(f64::NAN))
            .collect(),
        Some(Target::AtMost(256.0)),
    );
    t.row(
        "peak RSS (VmHWM) of that process",
        "MiB",
        pending
            .iter()
            .map(|p| p.hwm_mib.unwrap_or(f64::NAN))
            .collect(),
        None,
    );
    t.row(
        &format!("POST → 202 of those {PENDING_BROADCASTS} broadcasts, median"),
        "ms",
        pending
            .iter()
            .map(|p| median(p.accept_ms.clone()).unwrap_or(f64::NAN))
            .collect(),
        None,
    );
    let mut outcomes: BTreeMap<String, f64> = BTreeMap::new();
    for r in runs {
        for (k, v) in &r.outcomes {
            *outcomes.entry(k.clone()).or_default() += v;
        }
    }
    if outcomes.keys().any(|k| k != "delivered") {
        t.note(format!("outcomes other than delivered: {outcomes:?}"));
    }

    let mut peer_rate = None;
    let mut peer_cpu = None;
    if o.peer {
        t.section(&format!("web-push {} on Node {} (reference), {} sends, {CLIENTS} in flight, HTTP/1.1 keep-alive", "3.6.7", node_version(), fmt_num(o.peer_count as f64)));
        let pcol = |f: &dyn Fn(&PeerResult) -> Option<f64>| {
            runs.iter()
                .filter_map(|r| r.peer.as_ref())
                .map(|p| f(p).unwrap_or(f64::NAN))
                .collect::<Vec<f64>>()
        };
        peer_rate = t.row("deliveries/s", "/s", pcol(&|p| Some(p.rate)), None);
        peer_cpu = t.row(
            "CPU per delivery (node process)",
            "µs",
            pcol(&|p| p.cpu_us),
            None,
        );
        let failed: u64 = runs
            .iter()
            .filter_map(|r| r.peer.as_ref())
            .map(|p| p.failed)
            .sum();
        if failed > 0 {
            t.note(format!("{failed} web-push sends failed"));
        }
        let ratio = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| a / b);
        t.row(
            "Herald broadcast deliveries/s ÷ web-push",
            "×",
            vec![ratio(b_rate, peer_rate).unwrap_or(f64::NAN)],
            None,
        );
        t.row(
            "Herald per-user deliveries/s ÷ web-push",
            "×",
            vec![ratio(u_rate, peer_rate).unwrap_or(f64::NAN)],
            None,
        );
        t.row(
            "Herald broadcast CPU per delivery ÷ web-push",
            "×",
            vec![ratio(b_cpu, peer_cpu).unwrap_or(f64::NAN)],
            None,
        );
        t.row(
            "Herald per-user CPU per delivery ÷ web-push",
            "×",
            vec![ratio(u_cpu, peer_cpu).unwrap_or(f64::NAN)],
            None,
        );
    }

    t.section("push sink (separate process, one thread): CPU per request");
    let sink_all: Vec<f64> = runs
        .iter()
        .flat_map(|r| [r.broadcast.sink_cpu_us, r.users.sink_cpu_us])
        .map(|v| v.unwrap_or(f64::NAN))
        .collect();
    let sink_us = t.row("while Herald sends (HTTP/2)", "µs", sink_all, None);
    if o.peer {
        t.row(
            "while web-push sends (HTTP/1.1)",
            "µs",
            runs.iter()
                .filter_map(|r| r.peer.as_ref())
                .map(|p| p.sink_cpu_us.unwrap_or(f64::NAN))
                .collect(),
            None,
        );
    }
    if let Some(s) = sink_us {
        t.note(format!(
            "→ the sink can take ≈ {} requests/s from Herald on one core",
            fmt_num(1e6 / s)
        ));
    }

    let pg_summary: String = match pg {
        Err(why) => {
            t.section(&format!("Herald on PostgreSQL: {why}"));
            "PostgreSQL not measured".into()
        }
        Ok(PgResults {
            shared: by_count,
            control,
        }) => {
            t.section(&format!(
                "Herald on PostgreSQL ({}), {subs} subscriptions",
                herald::app::redact(&o.pg_url)
            ));
            let mut rates = BTreeMap::new();
            for (k, rs) in by_count {
                let rows = pg_rows(&mut t, &format!("{k} instance(s)"), *k, Layout::Shared, rs);
                rates.insert(*k, rows);
            }
            let one = rates.get(&1).copied();
            let three = rates.get(&3).copied();
            if let (Some((b1, u1)), Some((b3, u3))) = (one, three) {
                t.row(
                    "3 instances ÷ 1: broadcast deliveries/s",
                    "×",
                    vec![b3.zip(b1).map(|(a, b)| a / b).unwrap_or(f64::NAN)],
                    Some(Target::AtLeast(1.0)),
                );
                t.row(
                    "3 instances ÷ 1: per-user deliveries/s",
                    "×",
                    vec![u3.zip(u1).map(|(a, b)| a / b).unwrap_or(f64::NAN)],
                    Some(Target::AtLeast(1.0)),
                );
            }
            let mut control_summary = String::new();
            if let Some((k, rs)) = control {
                let who = format!("{k} instances, a database each (control)");
                let (cb, cu) = pg_rows(&mut t, &who, *k, Layout::Separate, rs);
                let (sb, su) = rates.get(k).copied().unwrap_or((None, None));
                let (b1, u1) = one.unwrap_or((None, None));
                let quotient = |a: Option<f64>, b: Option<f64>| {
                    vec![a.zip(b).map(|(a, b)| a / b).unwrap_or(f64::NAN)]
                };
                t.row(
                    &format!("{k} with a database each ÷ 1: broadcast deliveries/s"),
                    "×",
                    quotient(cb, b1),
                    None,
                );
                let cu1 = t.row(
                    &format!("{k} with a database each ÷ 1: per-user deliveries/s"),
                    "×",
                    quotient(cu, u1),
                    None,
                );
                t.row(
                    &format!("{k} sharing one database ÷ {k} with a database each: broadcast"),
                    "×",
                    quotient(sb, cb),
                    None,
                );
                let su_cu = t.row(
                    &format!("{k} sharing one database ÷ {k} with a database each: per-user"),
                    "×",
                    quotient(su, cu),
                    None,
                );
                t.note(format!(
                    "→ ÷ 1: what {k} processes cost on this machine with nothing to coordinate; \
                     sharing ÷ a database each: what coordinating through one database costs"
                ));
                let f2 = |v: Option<f64>| v.map(|v| format!("{v:.2}")).unwrap_or("–".into());
                control_summary = format!(
                    "; per-user {k} with a database each ÷ 1 {}, sharing ÷ a database each {}",
                    f2(cu1),
                    f2(su_cu)
                );
            }
            format!(
                "PostgreSQL broadcast deliveries/s by instances {}{control_summary}",
                rates
                    .iter()
                    .map(|(k, (b, _))| format!("{k}: {}", b.map(fmt_num).unwrap_or("–".into())))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    };

    println!();
    t.print();
    println!();
    let f = |v: Option<f64>| v.map(fmt_num).unwrap_or_else(|| "–".into());
    let ratio = |a: Option<f64>, b: Option<f64>| {
        a.zip(b)
            .map(|(a, b)| format!("{:.2}×", a / b))
            .unwrap_or_else(|| "–".into())
    };
    println!(
        "SUMMARY: SQLite {} subs: broadcast {} deliveries/s, per-user {} /s, {} µs CPU/delivery, idle p50 {} ms p99 {} ms, 202 in {} ms, RSS {} MiB idle / {} MiB with {} pending; vs web-push {} throughput, {} CPU; {}; sink {} µs/request; {}; targets met {}/{} ({:.0} s)",
        subs,
        f(b_rate),
        f(u_rate),
        f(b_cpu),
        f(p50),
        f(p99),
        f(accept),
        f(rss_idle),
        f(rss_pend),
        fmt_num(pend_n as f64),
        ratio(b_rate, peer_rate),
        ratio(b_cpu, peer_cpu),
        pg_summary,
        f(sink_us),
        cpu_model(),
        t.met,
        t.judged,
        took.as_secs_f64()
    );
}

/// The rows of one PostgreSQL set-up (`who`, `k` instances, sharing one
/// database or not); answers the median broadcast and per-user
/// deliveries/s. Duplicates are judged where instances share a queue.
fn pg_rows(
    t: &mut Table,
    who: &str,
    k: usize,
    layout: Layout,
    rs: &[PgRun],
) -> (Option<f64>, Option<f64>) {
    let b = t.row(
        &format!("{who}: broadcast deliveries/s"),
        "/s",
        rs.iter().map(|r| r.broadcast.rate).collect(),
        None,
    );
    t.row(
        &format!("{who}: broadcast Herald CPU per delivery (all instances)"),
        "µs",
        rs.iter()
            .map(|r| r.broadcast.herald_cpu_us.unwrap_or(f64::NAN))
            .collect(),
        None,
    );
    t.row(
        &format!("{who}: broadcast PostgreSQL server CPU per delivery"),
        "µs",
        rs.iter()
            .map(|r| r.broadcast.db_cpu_us.unwrap_or(f64::NAN))
            .collect(),
        None,
    );
    t.row(
        &format!("{who}: broadcast POST → 202"),
        "ms",
        rs.iter().map(|r| r.broadcast.accept_ms).collect(),
        None,
    );
    let u = t.row(
        &format!("{who}: per-user deliveries/s (sends spread over instances)"),
        "/s",
        rs.iter().map(|r| r.users.rate).collect(),
        None,
    );
    t.row(
        &format!("{who}: per-user Herald CPU per delivery"),
        "µs",
        rs.iter()
            .map(|r| r.users.herald_cpu_us.unwrap_or(f64::NAN))
            .collect(),
        None,
    );
    t.row(
        &format!("{who}: per-user PostgreSQL server CPU per delivery"),
        "µs",
        rs.iter()
            .map(|r| r.users.db_cpu_us.unwrap_or(f64::NAN))
            .collect(),
        None,
    );
    if k > 1 && layout == Layout::Shared {
        t.row(
            &format!("{who}: pushes beyond one per delivery (duplicates)"),
            "",
            rs.iter()
                .map(|r| (r.broadcast.extra_pushes + r.users.extra_pushes) as f64)
                .collect(),
            Some(Target::AtMost(0.0)),
        );
    }
    (b, u)
}

fn node_version() -> String {
    std::process::Command::new("node")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}
