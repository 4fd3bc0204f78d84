use argh::FromArgs;
use log::{error, info, warn};
use std::path::PathBuf;
use std::process::ExitCode;
use tinyvisor::config::{Overrides, Settings};
use tinyvisor::dry_run::{dry_run, CurrentSource};
use tinyvisor::engine::Engine;

#[derive(FromArgs)]
/// tinyvisor keeps this device's containers in line with its target state, like the balena
/// Supervisor. Every option defaults to the environment variable named in its help, then to
/// the real supervisor's default.
struct Cli {
    /// print the version and exit
    #[argh(switch)]
    version: bool,

    /// engine API socket (env DOCKER_SOCKET, default /var/run/docker.sock)
    #[argh(option)]
    docker_socket: Option<PathBuf>,

    /// host root file system (env ROOT_MOUNTPOINT, default /mnt/root)
    #[argh(option)]
    root_mountpoint: Option<PathBuf>,

    /// boot partition (env BOOT_MOUNTPOINT, default /mnt/boot)
    #[argh(option)]
    boot_mountpoint: Option<PathBuf>,

    /// config.json path (env CONFIG_MOUNT_POINT, default $BOOT_MOUNTPOINT/config.json)
    #[argh(option)]
    config_path: Option<PathBuf>,

    /// state partition (env STATE_MOUNTPOINT, default /mnt/state)
    #[argh(option)]
    state_mountpoint: Option<PathBuf>,

    /// data partition (env DATA_MOUNTPOINT, default /mnt/data)
    #[argh(option)]
    data_mountpoint: Option<PathBuf>,

    /// SQLite database (env DATABASE_PATH, default /data/database.sqlite)
    #[argh(option)]
    database_path: Option<PathBuf>,

    /// supervisor API port (env LISTEN_PORT, then config.json listenPort, default 48484)
    #[argh(option)]
    listen_port: Option<u16>,

    /// log level: error, warn, info, debug or trace (default info)
    #[argh(option, default = "log::LevelFilter::Info")]
    log_level: log::LevelFilter,

    #[argh(subcommand)]
    command: Option<Command>,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum Command {
    Plan(PlanCmd),
}

#[derive(FromArgs)]
/// print the steps a target state would cause on this device, changing nothing
#[argh(subcommand, name = "plan")]
struct PlanCmd {
    /// target state file: a v3 document, its device object, or the v2 local-mode format
    #[argh(option)]
    target: PathBuf,

    /// current state: "engine" (the live engine, default), "empty" (a device with nothing
    /// on it) or a JSON file of engine objects
    #[argh(option, default = "String::from(\"engine\")")]
    current: String,

    /// print JSON instead of text
    #[argh(switch)]
    json: bool,
}

fn main() -> ExitCode {
    let cli: Cli = argh::from_env();
    if cli.version {
        println!("tinyvisor {}", tinyvisor::VERSION);
        return ExitCode::SUCCESS;
    }
    let _ = simplelog::SimpleLogger::init(cli.log_level, simplelog::Config::default());

    let overrides = Overrides {
        docker_socket: cli.docker_socket,
        root_mountpoint: cli.root_mountpoint,
        boot_mountpoint: cli.boot_mountpoint,
        config_path: cli.config_path,
        state_mountpoint: cli.state_mountpoint,
        data_mountpoint: cli.data_mountpoint,
        database_path: cli.database_path,
        listen_port: cli.listen_port,
    };
    let settings = match Settings::load(&|k| std::env::var(k).ok(), &overrides) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tinyvisor: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(Command::Plan(cmd)) = cli.command {
        return plan(&settings, &cmd);
    }
    info!(
        "tinyvisor {} starting: engine {}, config {}, API port {}, device type {} ({})",
        tinyvisor::VERSION,
        settings.paths.docker_socket.display(),
        settings.paths.config_path.display(),
        settings.listen_port,
        settings.device_type.slug,
        settings.device_type.arch,
    );
    if settings.config_json.unmanaged() {
        info!("no apiEndpoint in config.json: running unmanaged (local mode)");
    }

    let engine = Engine::new(&settings.paths.docker_socket);
    match engine.version() {
        Ok(v) => info!(
            "engine {} (API {}, {}/{}) answers",
            v.version, v.api_version, v.os, v.arch
        ),
        Err(e) => warn!("engine not reachable yet: {e}"),
    }

    // The state engine, API and cloud threads arrive with their issues; until then the daemon
    // only waits for a stop signal, so it can already be supervised and measured.
    let mut signals = match signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ]) {
        Ok(s) => s,
        Err(e) => {
            error!("cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(sig) = signals.forever().next() {
        info!("signal {sig} received, stopping");
    }
    ExitCode::SUCCESS
}

fn plan(settings: &Settings, cmd: &PlanCmd) -> ExitCode {
    let doc = match std::fs::read(&cmd.target)
        .map_err(|e| e.to_string())
        .and_then(|b| {
            serde_json::from_slice::<serde_json::Value>(&b)
                .map_err(|e| format!("invalid JSON: {e}"))
        }) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("tinyvisor: {}: {e}", cmd.target.display());
            return ExitCode::from(2);
        }
    };
    let engine = Engine::new(&settings.paths.docker_socket);
    let current_file = PathBuf::from(&cmd.current);
    let source = match cmd.current.as_str() {
        "engine" => CurrentSource::Engine(&engine),
        "empty" => CurrentSource::Empty,
        _ => CurrentSource::File(&current_file),
    };
    match dry_run(settings, &doc, source) {
        Ok(run) => {
            if cmd.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&run.json()).unwrap_or_default()
                );
            } else {
                print!("{}", run.human());
            }
            if run.converged {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("tinyvisor: {e}");
            ExitCode::from(2)
        }
    }
}
