//! The `herald` command: `serve` (the default) and everyday admin tasks.

use anyhow::Context;
use clap::{Parser, Subcommand};
use herald::domain::rfc3339;
use herald::store::{QueueFilter, Store};
use herald::{app, service, Application, Settings};

/// jemalloc rather than glibc's malloc: under load glibc's allocator took
/// about an eighth of Herald's CPU, partly in arena locks shared by the
/// runtime's threads and in consolidating freed chunks. With jemalloc's
/// per-thread caches, in six interleaved benchmark pairs, Herald spent less
/// CPU per delivery in all six broadcasts and five of six per-user runs (a
/// median of 13% less), with resident memory within the targets' margins
/// (README, Benchmark).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "herald",
    version,
    about = "Self-hosted Web Push delivery service"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP API and the delivery workers (the default).
    Serve,
    /// Create or upgrade the database schema, then exit.
    Migrate,
    /// Manage apps.
    #[command(subcommand)]
    App(AppCommand),
    /// Inspect or clear the delivery queue.
    #[command(subcommand)]
    Queue(QueueCommand),
    /// Key material.
    #[command(subcommand)]
    Keys(KeysCommand),
}

#[derive(Subcommand)]
enum AppCommand {
    /// Create an app; prints its API key (shown only now) and VAPID public key.
    Create {
        #[arg(long)]
        name: String,
        /// mailto: address or https: URL the push services may contact.
        #[arg(long)]
        contact: String,
    },
    /// List apps with their VAPID public keys.
    List,
}

#[derive(Subcommand)]
enum QueueCommand {
    /// Show deliveries (newest first).
    Show {
        #[arg(long)]
        app: Option<String>,
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Remove queued (pending and in-flight) deliveries, of one app or all.
    Clear {
        #[arg(long)]
        app: Option<String>,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Print a new master key (base64), e.g. for HERALD_MASTER_KEY on PostgreSQL.
    Generate,
}

/// How many tasks a runtime worker polls from its own queue before it looks
/// at the shared one (Tokio's default is 61). Work woken from outside the
/// runtime lands in the shared queue: above all the store's tasks, woken by
/// the SQLite connection thread after every statement. With the default, a
/// worker busy encrypting a thousand queued sends lets each of those wake-ups
/// wait behind 61 of them, once per statement, and the accept transaction
/// that a 202 waits for pays that wait five times over.
const GLOBAL_QUEUE_INTERVAL: u32 = 7;

fn main() -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .global_queue_interval(GLOBAL_QUEUE_INTERVAL)
        .build()?
        .block_on(run())
}

async fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HERALD_LOG")
                .unwrap_or_else(|_| "info,sqlx=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let settings = Settings::load()?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(settings).await,
        Command::Migrate => {
            open(&settings).await?;
            println!("database is up to date");
            Ok(())
        }
        Command::App(cmd) => app_command(settings, cmd).await,
        Command::Queue(cmd) => queue_command(settings, cmd).await,
        Command::Keys(KeysCommand::Generate) => {
            println!("{}", herald::secrets::MasterKey::generate().to_base64());
            Ok(())
        }
    }
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let application = Application::build(settings).await?;
    if let Some(token) = &application.new_admin_token {
        println!("Admin token (shown once; also stored in the keys directory): {token}");
    }
    tracing::info!(address = %application.local_addr(), database = application.store.backend(), "Herald is listening");
    let stop = application.stop_token();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        stop.cancel();
    });
    application.run_until_stopped().await
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

async fn open(s: &Settings) -> anyhow::Result<Store> {
    Store::connect(&s.database_url, 2, s.db_statement_timeout_ms)
        .await
        .with_context(|| format!("opening {}", app::redact(&s.database_url)))
}

async fn app_command(settings: Settings, cmd: AppCommand) -> anyhow::Result<()> {
    let store = open(&settings).await?;
    match cmd {
        AppCommand::Create { name, contact } => {
            let master = app::load_master_key(&settings)?;
            let created =
                service::create_app(&store, &master, &name, &contact, settings.app_concurrency)
                    .await?;
            println!("id:               {}", created.app.id);
            println!("name:             {}", created.app.name);
            println!("contact:          {}", created.app.contact);
            println!("api key:          {}  (shown only now)", created.api_key);
            println!("vapid public key: {}", created.app.vapid_public_key);
        }
        AppCommand::List => {
            for a in store.app_list().await? {
                println!(
                    "{}  {}  {}  max_concurrency={}",
                    a.id, a.name, a.contact, a.max_concurrency
                );
                println!("    vapid public key: {}", a.vapid_public_key);
                if let Some(e) = a.last_config_error {
                    println!("    last configuration error: {e}");
                }
            }
        }
    }
    Ok(())
}

async fn queue_command(settings: Settings, cmd: QueueCommand) -> anyhow::Result<()> {
    let store = open(&settings).await?;
    match cmd {
        QueueCommand::Show { app, status, limit } => {
            let status = status
                .map(|s| {
                    herald::domain::DeliveryStatus::parse(&s)
                        .with_context(|| format!("unknown status {s}"))
                })
                .transpose()?;
            let rows = store
                .queue_list(&QueueFilter { app, status, limit })
                .await?;
            println!(
                "{:>8}  {:<10} {:>3}  {:<28} {:<20} {:<24} last error",
                "id", "status", "try", "endpoint host", "user", "next attempt"
            );
            for r in rows {
                println!(
                    "{:>8}  {:<10} {:>3}  {:<28} {:<20} {:<24} {}",
                    r.id,
                    r.status,
                    r.attempts,
                    r.endpoint_host,
                    r.user_id,
                    rfc3339(r.next_attempt_at),
                    r.last_error.unwrap_or_default()
                );
            }
        }
        QueueCommand::Clear { app } => {
            let n = store.queue_clear(app.as_deref()).await?;
            println!("removed {n} queued deliveries");
        }
    }
    Ok(())
}
