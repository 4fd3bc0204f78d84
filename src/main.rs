use argh::FromArgs;
use log::{error, info, warn};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tinyvisor::api::{self, Api};
use tinyvisor::cloud::CloudLink;
use tinyvisor::config::{Overrides, Settings};
use tinyvisor::db::Db;
use tinyvisor::dry_run::{dry_run, CurrentSource};
use tinyvisor::engine::Engine;
use tinyvisor::logs;
use tinyvisor::state::apply::{self, Status};

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
    Apply(ApplyCmd),
    Bundle(BundleCmd),
    Firewall(FirewallCmd),
    Healthcheck(HealthcheckCmd),
}

#[derive(FromArgs)]
/// ask the running daemon's /v1/healthy (the image's HEALTHCHECK: there is no shell or wget in
/// it); exit 0 when healthy
#[argh(subcommand, name = "healthcheck")]
struct HealthcheckCmd {}

#[derive(FromArgs)]
/// print or install the host firewall the daemon installs (BALENA-FIREWALL, IPv4 and IPv6)
#[argh(subcommand, name = "firewall")]
struct FirewallCmd {
    /// HOST_FIREWALL_MODE: on, off or auto (default off: only the API port is restricted)
    #[argh(option, default = "String::from(\"off\")")]
    mode: String,
    /// as in local mode: the API is open on every interface
    #[argh(switch)]
    local_mode: bool,
    /// as when a service runs with host networking (decides auto)
    #[argh(switch)]
    host_network: bool,
    /// print the iptables-restore input instead of installing it
    #[argh(switch)]
    print: bool,
}

#[derive(FromArgs)]
/// hand a target state to the running daemon (POST /v2/local/target-state) and return
#[argh(subcommand, name = "apply")]
struct ApplyCmd {
    /// target state file: the v2 local-mode format or a v3 device object
    #[argh(positional)]
    target: PathBuf,

    /// override update locks held by the apps
    #[argh(switch)]
    force: bool,
}

#[derive(FromArgs)]
/// signed offline bundles: make a signing key, create a bundle, apply one (docs/bundles.md)
#[argh(subcommand, name = "bundle")]
struct BundleCmd {
    #[argh(subcommand)]
    action: BundleAction,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum BundleAction {
    Keygen(BundleKeygenCmd),
    Create(BundleCreateCmd),
    Apply(BundleApplyCmd),
}

#[derive(FromArgs)]
/// make an Ed25519 key pair: <out>.key (keep it secret) and <out>.pub (for config.json
/// tinyvisorBundleKeys)
#[argh(subcommand, name = "keygen")]
struct BundleKeygenCmd {
    /// path and base name of the two files
    #[argh(option, short = 'o')]
    out: PathBuf,
}

#[derive(FromArgs)]
/// write a bundle of a target and the images its services use, read from the engine
#[argh(subcommand, name = "create")]
struct BundleCreateCmd {
    /// target state file: a v3 document, its device object, or the v2 local-mode format
    #[argh(option)]
    target: PathBuf,
    /// the private key (from bundle keygen)
    #[argh(option)]
    key: PathBuf,
    /// the bundle file to write
    #[argh(option, short = 'o')]
    out: PathBuf,
}

#[derive(FromArgs)]
/// hand a bundle to the running daemon (POST /v2/local/bundle) and wait until it is applied
#[argh(subcommand, name = "apply")]
struct BundleApplyCmd {
    /// the bundle file
    #[argh(positional)]
    bundle: PathBuf,
    /// the device's API key (default: BALENA_SUPERVISOR_API_KEY, else the database's)
    #[argh(option)]
    api_key: Option<String>,
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
    limit_memory_overhead();
    let cli: Cli = argh::from_env();
    if cli.version {
        println!("tinyvisor {}", tinyvisor::VERSION);
        return ExitCode::SUCCESS;
    }
    tinyvisor::logs::console::init(cli.log_level);

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
    match cli.command {
        Some(Command::Plan(cmd)) => return plan(&settings, &cmd),
        Some(Command::Apply(cmd)) => return apply(&settings, &cmd),
        Some(Command::Bundle(cmd)) => return bundle(&settings, cmd.action),
        Some(Command::Firewall(cmd)) => return firewall(&settings, &cmd),
        Some(Command::Healthcheck(_)) => return healthcheck(&settings),
        None => {}
    }
    match run_daemon(settings) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// The daemon: the API first, then the database, the state engine, the log collector and
/// the cloud link; then it waits for SIGTERM/SIGINT and stops them.
fn run_daemon(settings: Settings) -> Result<(), String> {
    log_start(&settings);
    // The API first: `/ping` answers while the rest starts (the database, the engine, keys).
    let early_api = api::listen(settings.listen_port).map_err(|e| e.to_string())?;
    let engine = Engine::new(&settings.paths.docker_socket);
    match engine.version() {
        Ok(v) => info!(
            "engine {} (API {}, {}/{}) answers",
            v.version, v.api_version, v.os, v.arch
        ),
        Err(e) => warn!("engine not reachable yet: {e}"),
    }
    ensure_identity(&settings)?;
    let db = Db::open(&settings.paths.database_path).map_err(|e| {
        format!(
            "cannot open the database {}: {e}",
            settings.paths.database_path.display()
        )
    })?;
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])
    .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    let managed = !settings.config_json.unmanaged();
    let settings = Arc::new(settings);
    let status = initial_status(&db);
    let log_bus = start_log_bus(managed);
    // The report thread and the log collector hear about every status the engine publishes.
    let (changes_tx, changes_rx) = crossbeam_channel::bounded(1);
    let (collector_tx, collector_rx) = crossbeam_channel::bounded(1);
    let mut listeners = vec![collector_tx];
    if managed {
        listeners.push(changes_tx.clone());
    }
    let host: Arc<dyn tinyvisor::systemd::HostControl> = Arc::new(
        tinyvisor::systemd::SystemBus::new(&settings.paths.dbus_system_bus_address),
    );
    let (state_engine_tx, engine_thread) = apply::spawn(
        Arc::clone(&settings),
        db,
        Arc::clone(&status),
        listeners,
        host,
    )
    .map_err(|e| format!("cannot start the state engine: {e}"))?;
    let stop_collector = start_log_collector(&settings, &log_bus, &status, collector_rx);
    let cloud = if managed {
        let link = CloudLink::start(
            Arc::clone(&settings),
            state_engine_tx.clone(),
            Arc::clone(&status),
            (changes_tx, changes_rx),
            Arc::clone(&log_bus),
        )
        .map_err(|e| format!("cannot start the cloud link: {e}"))?;
        Some(link)
    } else {
        None
    };
    let server = early_api.ready(Api {
        settings: Arc::clone(&settings),
        state_engine: state_engine_tx.clone(),
        status,
        cloud: cloud.as_ref().map(|c| api::CloudHandle {
            shared: Arc::clone(&c.shared),
            poll: c.poll.clone(),
            // An API worker waits for it: 10 s at most.
            client: tinyvisor::balena_api::device_client_with_timeout(
                &settings,
                std::time::Duration::from_secs(10),
            ),
        }),
        logs: log_bus,
    });
    if let Some(sig) = signals.forever().next() {
        info!("signal {sig} received, stopping");
    }
    if let Some(cloud) = cloud {
        cloud.stop();
    }
    stop_collector.store(true, std::sync::atomic::Ordering::Release);
    // Steps are idempotent: whatever is cut short here is finished after the next start.
    let _ = state_engine_tx.send_timeout(apply::Command::Shutdown, Duration::from_secs(1));
    server.stop();
    wait_for_state_engine(engine_thread);
    Ok(())
}

fn log_start(settings: &Settings) {
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
}

/// The status before the state engine publishes one: the global key works from the first
/// request (the state engine publishes the rest).
fn initial_status(db: &Db) -> Arc<Mutex<Status>> {
    let api_secret = match db.global_api_key(tinyvisor::encoding::random_hex_key) {
        Ok(k) => Some(k),
        Err(e) => {
            warn!("cannot read or create the global API key: {e}");
            None
        }
    };
    let api_keys = api_secret
        .iter()
        .map(|k| (k.clone(), tinyvisor::state::apply::KeyScope::GLOBAL))
        .collect();
    Arc::new(Mutex::new(Status {
        api_secret,
        api_keys: Arc::new(api_keys),
        ..Status::default()
    }))
}

/// The log bus every thread logs to; a managed device keeps its logs for the cloud from the
/// first line on.
fn start_log_bus(managed: bool) -> Arc<logs::LogBus> {
    let log_bus = Arc::new(logs::LogBus::default());
    logs::install(Arc::clone(&log_bus));
    log_bus.set_shipping(managed);
    logs::event("Supervisor starting", false);
    log_bus
}

/// Follows the running containers' output onto the bus; returns its stop flag.
fn start_log_collector(
    settings: &Settings,
    log_bus: &Arc<logs::LogBus>,
    status: &Arc<Mutex<Status>>,
    changes: crossbeam_channel::Receiver<()>,
) -> Arc<std::sync::atomic::AtomicBool> {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let collector = logs::collect::Collector {
        source: Arc::new(logs::collect::EngineLogs {
            engine: Engine::new(&settings.paths.docker_socket),
        }),
        bus: Arc::clone(log_bus),
        status: Arc::clone(status),
        stop: Arc::clone(&stop),
    };
    if let Err(e) = std::thread::Builder::new()
        .name("logs".into())
        .stack_size(256 * 1024)
        .spawn(move || collector.run(changes))
    {
        warn!("cannot start the log collector: {e}");
    }
    stop
}

/// Waits up to 10 s for the state engine to finish its step.
fn wait_for_state_engine(engine_thread: std::thread::JoinHandle<()>) {
    let (done_tx, done_rx) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        let _ = engine_thread.join();
        let _ = done_tx.send(());
    });
    if done_rx.recv_timeout(Duration::from_secs(10)).is_err() {
        warn!("state engine still busy after 10 s; exiting anyway");
    }
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

/// Generates and stores the device uuid on first start, and the device API key of a managed
/// device, as the real supervisor does (docs/contract/cloud-api.md §2.1).
fn ensure_identity(settings: &Settings) -> Result<(), String> {
    let cfg = &settings.config_json;
    let missing = |k: &str| cfg.get_str(k).is_none_or(|v| v.is_empty());
    let mut changes = Vec::new();
    let new_key = || {
        tinyvisor::encoding::random_hex_key().map_err(|e| format!("cannot read random bytes: {e}"))
    };
    if missing("uuid") {
        changes.push(("uuid", Some(serde_json::Value::String(new_key()?))));
    }
    if !cfg.unmanaged() && missing("deviceApiKey") {
        changes.push(("deviceApiKey", Some(serde_json::Value::String(new_key()?))));
    }
    if changes.is_empty() {
        return Ok(());
    }
    cfg.update(&changes).map(drop).map_err(|e| e.to_string())
}

fn apply(settings: &Settings, cmd: &ApplyCmd) -> ExitCode {
    let body = match std::fs::read(&cmd.target) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("tinyvisor: {}: {e}", cmd.target.display());
            return ExitCode::from(2);
        }
    };
    let mut doc: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("tinyvisor: {}: invalid JSON: {e}", cmd.target.display());
            return ExitCode::from(2);
        }
    };
    let Some(fields) = doc.as_object_mut() else {
        eprintln!(
            "tinyvisor: {}: expected a JSON object (a v2 local target or a v3 device object)",
            cmd.target.display()
        );
        return ExitCode::from(2);
    };
    if cmd.force {
        fields.insert("force".into(), serde_json::Value::Bool(true));
    }
    match local_post(
        settings.listen_port,
        "/v2/local/target-state",
        &doc.to_string(),
    ) {
        Ok((200, _)) => {
            println!("target accepted");
            ExitCode::SUCCESS
        }
        Ok((status, text)) => {
            eprintln!("tinyvisor: the daemon refused the target ({status}): {text}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!(
                "tinyvisor: cannot reach the daemon on port {}: {e}",
                settings.listen_port
            );
            ExitCode::FAILURE
        }
    }
}

fn bundle(settings: &Settings, action: BundleAction) -> ExitCode {
    use tinyvisor::bundle::{cli, create};
    let result = match action {
        BundleAction::Keygen(cmd) => cli::keygen(&cmd.out).map(|public| {
            println!("{public}");
            eprintln!(
                "wrote {0}.key and {0}.pub; devices that accept this key list it in config.json: \"tinyvisorBundleKeys\": [\"{public}\"]",
                cmd.out.display()
            );
        }),
        BundleAction::Create(cmd) => bundle_create(settings, &cmd).map(|c: create::Created| {
            println!(
                "wrote {} ({} bytes, {} image(s)), bundle {}",
                cmd.out.display(),
                c.bytes,
                c.images,
                c.digest
            );
        }),
        BundleAction::Apply(cmd) => return bundle_apply(settings, &cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tinyvisor: {e}");
            ExitCode::from(2)
        }
    }
}

fn bundle_create(
    settings: &Settings,
    cmd: &BundleCreateCmd,
) -> Result<tinyvisor::bundle::create::Created, String> {
    let read = |p: &PathBuf| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    let target: serde_json::Value = serde_json::from_slice(&read(&cmd.target)?)
        .map_err(|e| format!("{}: invalid JSON: {e}", cmd.target.display()))?;
    let key = String::from_utf8_lossy(&read(&cmd.key)?).into_owned();
    let engine = Engine::new(&settings.paths.docker_socket);
    let created = tinyvisor::encoding::rfc3339_from_seconds(tinyvisor::logs::now_ms() / 1000);
    tinyvisor::bundle::create::create(&engine, target, &key, &cmd.out, &created)
}

fn bundle_apply(settings: &Settings, cmd: &BundleApplyCmd) -> ExitCode {
    let key = cmd
        .api_key
        .clone()
        .or_else(|| std::env::var("BALENA_SUPERVISOR_API_KEY").ok())
        .or_else(|| {
            // Only the daemon's own database: opening a path that is not there would create one.
            let path = &settings.paths.database_path;
            if !path.exists() {
                return None;
            }
            let db = Db::open(path).ok()?;
            db.global_api_key(|| Err(std::io::Error::other("none yet")))
                .ok()
        });
    match tinyvisor::bundle::cli::apply(settings.listen_port, &cmd.bundle, key.as_deref()) {
        Ok((200, text)) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Ok((status, text)) => {
            eprintln!("tinyvisor: the daemon refused the bundle ({status}): {text}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!(
                "tinyvisor: cannot hand the bundle to the daemon on port {}: {e}",
                settings.listen_port
            );
            ExitCode::FAILURE
        }
    }
}

fn healthcheck(settings: &Settings) -> ExitCode {
    match local_call(
        settings.listen_port,
        "GET",
        "/v1/healthy",
        None,
        Duration::from_secs(30),
    ) {
        Ok((200, _)) => ExitCode::SUCCESS,
        Ok((status, text)) => {
            eprintln!("tinyvisor: unhealthy ({status}): {text}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("tinyvisor: no answer on port {}: {e}", settings.listen_port);
            ExitCode::FAILURE
        }
    }
}

fn firewall(settings: &Settings, cmd: &FirewallCmd) -> ExitCode {
    use tinyvisor::firewall;
    if !["on", "off", "auto"].contains(&cmd.mode.as_str()) {
        eprintln!(
            "tinyvisor: --mode: expected on, off or auto, got {:?}",
            cmd.mode
        );
        return ExitCode::from(2);
    }
    let wanted = firewall::Settings {
        mode: firewall::Mode::parse(&cmd.mode),
        local_mode: cmd.local_mode,
        api_port: settings.listen_port,
        host_network_services: cmd.host_network,
    };
    if cmd.print {
        print!(
            "{}",
            firewall::ruleset(&wanted, firewall::Family::V4, false)
        );
        return ExitCode::SUCCESS;
    }
    match firewall::apply(&wanted) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tinyvisor: firewall not applied: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A POST to the local API; returns the status and the `message` (or body) of the answer.
fn local_post(port: u16, path: &str, body: &str) -> std::io::Result<(u16, String)> {
    local_call(port, "POST", path, Some(body), Duration::from_secs(60))
}

/// One request to the local API; the status and the `message` (or body) of the answer.
fn local_call(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> std::io::Result<(u16, String)> {
    use tinyvisor::local_api;
    let body = body.map_or(local_api::Body::None, |b| {
        local_api::Body::Json(b.as_bytes())
    });
    let (status, raw) = local_api::call(port, method, path, None, body, (timeout, timeout))?;
    Ok((status, local_api::message(&raw)))
}

/// Keeps memory small before any thread starts: library threads (tiny_http's) get 256 KiB
/// stacks like ours unless RUST_MIN_STACK says otherwise, and glibc gets one malloc arena
/// instead of one per core and thread (musl builds have no arenas).
fn limit_memory_overhead() {
    if std::env::var_os("RUST_MIN_STACK").is_none() {
        std::env::set_var("RUST_MIN_STACK", "262144");
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        const M_ARENA_MAX: i32 = -8;
        // SAFETY: mallopt only changes allocator tuning; no other thread exists yet.
        unsafe {
            mallopt(M_ARENA_MAX, 1);
        }
    }
}
