//! The `callguard` command: parse arguments, load config, run the chosen subcommand.
//!
//! Exit codes: 0 success, 1 runtime failure, 2 bad usage or invalid config/input.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use callguard::config::{self, Config};

#[derive(Parser)]
#[command(
    name = "callguard",
    version,
    about = "Real-time abuse, threat and crisis alerts for Nordic contact-centre calls"
)]
struct Args {
    /// Log as JSON lines (for log shippers) instead of text.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gRPC service.
    Serve {
        /// TOML config file (merged over the embedded defaults); reloaded when it changes.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Listen address, overriding server.addr.
        #[arg(long)]
        addr: Option<SocketAddr>,
        /// Incident database, overriding incidents.path.
        #[arg(long)]
        incidents_db: Option<PathBuf>,
    },
    /// Score a JSONL file of utterances ({"id","text","lang"?,"speaker"?}) offline.
    Score {
        #[arg(long)]
        input: PathBuf,
        /// Output JSONL (default: standard output).
        #[arg(long)]
        output: Option<PathBuf>,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Play calls ({"call_id","lang","turns":[...]}) through the gRPC API and print their alerts.
    Replay {
        #[arg(long)]
        input: PathBuf,
        /// A running server; by default one is started on an ephemeral loopback port.
        #[arg(long)]
        addr: Option<String>,
        /// Output JSONL (default: standard output).
        #[arg(long)]
        output: Option<PathBuf>,
        /// Config for the server replay starts itself.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Soak under faults (random disconnects, a SIGTERM and a SIGKILL restart, a config
    /// reload) and count lost alerts and incidents; writes DIR/summary.json.
    Soak {
        #[arg(long, default_value_t = 600)]
        secs: u64,
        /// Calls in progress at once.
        #[arg(long, default_value_t = 60)]
        calls: usize,
        #[arg(long)]
        corpus: Option<PathBuf>,
        #[arg(long, default_value = "target/soak")]
        dir: PathBuf,
        /// Extra config for the server (must not contain [server] or [thresholds.da]).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Read the incident store: a call's report, or per-team counts.
    Incidents {
        #[command(subcommand)]
        command: IncidentsCommand,
    },
    /// Print the SHA-256 of a token read from standard input, for auth.tokens[].sha256.
    HashToken,
    /// Validate a config file and exit.
    CheckConfig { file: PathBuf },
    /// Load-test a server like a telephony platform (raw model ceiling, saturation, 70 % load,
    /// ramp to the most calls with p99 final→alert <= 50 ms) and write a JSON summary.
    Loadgen {
        /// A running server; by default one is started as a child process.
        #[arg(long)]
        addr: Option<String>,
        /// Pid of that server, for its RSS and CPU.
        #[arg(long, requires = "addr")]
        server_pid: Option<String>,
        /// Utterances to speak (JSONL with text, lang, speaker); default: the dev set.
        #[arg(long)]
        corpus: Option<PathBuf>,
        #[arg(long, default_value = "target/bench/summary.json")]
        out: PathBuf,
        /// Seconds measured per stage.
        #[arg(long, default_value_t = 20)]
        stage_secs: u64,
        /// Most calls the ramp tries.
        #[arg(long, default_value_t = 4000)]
        max_calls: usize,
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum IncidentsCommand {
    /// Everything stored for one call, for a police report or a debrief.
    Export {
        #[arg(long)]
        call: String,
        #[arg(long, value_enum, default_value_t = Format::Json)]
        format: Format,
        /// Database (default: incidents.path from the config).
        #[arg(long)]
        db: Option<PathBuf>,
        #[arg(long)]
        config: Option<PathBuf>,
        /// Output file (default: standard output).
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Alerts and calls per team and alert kind, for well-being follow-up.
    Stats {
        /// Look back this many days.
        #[arg(long, default_value_t = 30)]
        days: u32,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        #[arg(long)]
        db: Option<PathBuf>,
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    Json,
    Text,
    Html,
}

fn main() -> ExitCode {
    let args = Args::parse();
    callguard::telemetry::init(args.log_json);
    match try_main(args) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("callguard: {err:#}");
            ExitCode::from(1)
        }
    }
}

fn try_main(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Command::CheckConfig { file } => match config::load(Some(&file)) {
            Ok(_) => {
                println!("{}: ok", file.display());
                Ok(ExitCode::SUCCESS)
            }
            Err(err) => {
                eprintln!("{err}");
                Ok(ExitCode::from(2))
            }
        },
        Command::Serve {
            config,
            addr,
            incidents_db,
        } => {
            let mut cfg = load_config(config.as_deref())?;
            if let Some(db) = incidents_db {
                cfg.incidents.path = db;
            }
            let addr = match addr {
                Some(addr) => addr,
                None => cfg.server.addr.parse().context("server.addr")?,
            };
            runtime()?.block_on(async move {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("bind {addr}"))?;
                let shutdown = CancellationToken::new();
                tokio::spawn(stop_on_signal(shutdown.clone()));
                callguard::run(cfg, config, listener, shutdown).await?;
                Ok(ExitCode::SUCCESS)
            })
        }
        Command::Incidents { command } => incidents(command),
        Command::Soak {
            secs,
            calls,
            corpus,
            dir,
            config,
        } => {
            let opts = callguard::soak::SoakOptions {
                secs,
                calls,
                corpus: corpus.unwrap_or_else(callguard::loadgen::default_corpus),
                dir: dir.clone(),
                config,
            };
            // one worker: the client must stay light beside the server it tests
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()?;
            let summary = rt.block_on(callguard::soak::soak(&opts))?;
            let text = serde_json::to_string_pretty(&summary)?;
            std::fs::write(dir.join("summary.json"), format!("{text}\n"))?;
            println!("{text}");
            let clean = summary["alerts_lost"] == 0
                && summary["incidents_lost"] == 0
                && summary["panics"] == 0;
            Ok(if clean {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(4)
            })
        }
        Command::HashToken => {
            let mut token = String::new();
            std::io::stdin().read_line(&mut token)?;
            let token = token.trim_end_matches(['\r', '\n']);
            anyhow::ensure!(token.len() >= 16, "a token needs at least 16 characters");
            println!("{}", callguard::auth::hash_token(token));
            Ok(ExitCode::SUCCESS)
        }
        Command::Score {
            input,
            output,
            config,
        } => {
            let cfg = load_config(config.as_deref())?;
            let reader =
                BufReader::new(File::open(&input).with_context(|| input.display().to_string())?);
            let bad = with_output(output.as_deref(), |out| {
                Ok(callguard::offline::score_jsonl(&cfg, reader, out)?)
            })?;
            Ok(if bad == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            })
        }
        Command::Loadgen {
            addr,
            server_pid,
            corpus,
            out,
            stage_secs,
            max_calls,
            config,
        } => {
            let cfg = load_config(config.as_deref())?;
            let config_path = config.clone();
            if let Some(dir) = out.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let endpoint = addr.map(|a| {
                let url = if a.contains("://") {
                    a
                } else {
                    format!("http://{a}")
                };
                (url, server_pid.unwrap_or_else(|| "0".into()))
            });
            let opts = callguard::loadgen::BenchOptions {
                endpoint,
                corpus: corpus.unwrap_or_else(callguard::loadgen::default_corpus),
                out: out.clone(),
                stage_secs,
                max_calls,
                config_path,
            };
            // one thread: the generator must stay light beside the server it measures
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let summary = rt.block_on(callguard::loadgen::bench(&cfg, &opts))?;
            let text = serde_json::to_string_pretty(&summary)?;
            std::fs::write(&out, format!("{text}\n"))?;
            println!("{text}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Replay {
            input,
            addr,
            output,
            config,
        } => {
            let mut cfg = load_config(config.as_deref())?;
            // replayed calls are tests, not incidents: the server replay starts keeps them in memory
            cfg.incidents.path = PathBuf::from(":memory:");
            let reader =
                BufReader::new(File::open(&input).with_context(|| input.display().to_string())?);
            let bad = runtime()?.block_on(async move {
                let shutdown = CancellationToken::new();
                let (endpoint, server) = match addr {
                    Some(addr) if addr.contains("://") => (addr, None),
                    Some(addr) => (format!("http://{addr}"), None),
                    None => {
                        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                        let endpoint = format!("http://{}", listener.local_addr()?);
                        let server =
                            tokio::spawn(callguard::run(cfg, None, listener, shutdown.clone()));
                        (endpoint, Some(server))
                    }
                };
                let mut buffer = Vec::new();
                let result = callguard::replay::replay_jsonl(&endpoint, reader, &mut buffer).await;
                shutdown.cancel();
                if let Some(server) = server {
                    server.await??;
                }
                let bad = result?;
                with_output(output.as_deref(), |out| Ok(out.write_all(&buffer)?))?;
                anyhow::Ok(bad)
            })?;
            Ok(if bad == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            })
        }
    }
}

fn incidents(command: IncidentsCommand) -> anyhow::Result<ExitCode> {
    use callguard::incidents as store;
    let db_path = |db: Option<PathBuf>, config: Option<PathBuf>| -> anyhow::Result<PathBuf> {
        let path = match db {
            Some(db) => db,
            None => load_config(config.as_deref())?.incidents.path,
        };
        // reading must not create an empty database where the real one is expected
        anyhow::ensure!(path.exists(), "no incident database at {}", path.display());
        Ok(path)
    };
    match command {
        IncidentsCommand::Export {
            call,
            format,
            db,
            config,
            output,
        } => {
            let rows = store::export_call(&db_path(db, config)?, &call)?;
            if rows.is_empty() {
                eprintln!("no incidents stored for call {call}");
            }
            with_output(output.as_deref(), |out| {
                match format {
                    Format::Json => {
                        let doc = serde_json::json!({
                            "call_id": call,
                            "exported_at": store::format_utc(store::now_ms()),
                            "incidents": rows,
                        });
                        writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
                    }
                    Format::Text | Format::Html => {
                        let html = format == Format::Html;
                        out.write_all(store::render_export(&call, &rows, html).as_bytes())?;
                    }
                }
                Ok(())
            })?;
            Ok(if rows.is_empty() {
                ExitCode::from(3)
            } else {
                ExitCode::SUCCESS
            })
        }
        IncidentsCommand::Stats {
            days,
            format,
            db,
            config,
        } => {
            let since = store::now_ms() - i64::from(days) * 86_400_000;
            let stats = store::team_stats(&db_path(db, config)?, since)?;
            with_output(None, |out| {
                if format == Format::Json {
                    let rows: Vec<_> = stats
                        .iter()
                        .map(|(team, kind, alerts, calls)| {
                            serde_json::json!({"team": team, "kind": kind, "alerts": alerts, "calls": calls})
                        })
                        .collect();
                    let doc = serde_json::json!({"days": days, "teams": rows});
                    writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
                } else {
                    writeln!(out, "alerts in the last {days} days, per team and kind")?;
                    writeln!(
                        out,
                        "{:<20} {:<18} {:>8} {:>8}",
                        "team", "kind", "alerts", "calls"
                    )?;
                    for (team, kind, alerts, calls) in &stats {
                        writeln!(out, "{team:<20} {kind:<18} {alerts:>8} {calls:>8}")?;
                    }
                }
                Ok(())
            })?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn load_config(path: Option<&Path>) -> anyhow::Result<Config> {
    Ok(config::load(path)?)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// Run `write` against the output file, or stdout when none is given.
fn with_output<T>(
    path: Option<&Path>,
    write: impl FnOnce(&mut dyn Write) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    match path {
        Some(path) => {
            let mut out =
                BufWriter::new(File::create(path).with_context(|| path.display().to_string())?);
            let value = write(&mut out)?;
            out.flush()?;
            Ok(value)
        }
        None => {
            let stdout = std::io::stdout();
            let mut out = BufWriter::new(stdout.lock());
            write(&mut out)
        }
    }
}

/// Fire `shutdown` on SIGINT or SIGTERM.
async fn stop_on_signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(err) => {
                    tracing::warn!(error = %err, "no SIGTERM handler");
                    let _ = ctrl_c.await;
                    shutdown.cancel();
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    shutdown.cancel();
}
