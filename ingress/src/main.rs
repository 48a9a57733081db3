//! `slotq-ingress [serve|migrate|token --role <role> --sub <sub> [--patient-id ID] [--clinic-id ID] [--ttl-secs N]]`.

use clap::{Arg, Command};
use slotq_ingress::Running;
use slotq_runtime::config::{Config, EXIT_CONFIG, Role};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    let args = slotq_runtime::process::parse_args(cli());
    let config = match Config::from_env(Role::Ingress) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("slotq-ingress: {e}");
            std::process::exit(EXIT_CONFIG);
        }
    };
    slotq_runtime::telemetry::init(config.log_format);
    let result = match args.subcommand() {
        None | Some(("serve", _)) => run(config).await,
        Some(("token", t)) => {
            if let Err(e) = token(&config, t) {
                eprintln!("slotq-ingress token: {e}");
                std::process::exit(EXIT_CONFIG);
            }
            return;
        }
        // clap accepts no other subcommand.
        Some(_) => slotq_runtime::process::migrate(&config).await,
    };
    if let Err(e) = result {
        tracing::error!(error = ?e, "slotq-ingress failed");
        std::process::exit(1);
    }
}

/// The command line: `serve` (default), `migrate`, `token`.
fn cli() -> Command {
    Command::new("slotq-ingress")
        .about("slotq's public HTTP API")
        .override_usage("slotq-ingress [serve|migrate|token ...]")
        .subcommand(
            Command::new("serve")
                .about("(default) the public HTTP API on HTTP_ADDR, /metrics on ADMIN_ADDR"),
        )
        .subcommand(Command::new("migrate").about("apply the database migrations and exit"))
        .subcommand(
            Command::new("token")
                .about("mint a JWT for development (slotq-ingress token --help)")
                .override_usage(
                    "slotq-ingress token --role patient|clinic_admin|ops|service --sub <sub> \
                     [--patient-id <uuid>] [--clinic-id <uuid>] [--ttl-secs <n>]",
                )
                .arg(
                    Arg::new("role")
                        .long("role")
                        .required(true)
                        .value_parser(["patient", "clinic_admin", "ops", "service"])
                        .help("the caller's role"),
                )
                .arg(
                    Arg::new("sub")
                        .long("sub")
                        .required(true)
                        .help("the token's subject"),
                )
                .arg(
                    Arg::new("patient-id")
                        .long("patient-id")
                        .value_parser(|s: &str| s.parse::<uuid::Uuid>())
                        .help("required for patient"),
                )
                .arg(
                    Arg::new("clinic-id")
                        .long("clinic-id")
                        .value_parser(|s: &str| s.parse::<uuid::Uuid>())
                        .help("required for clinic_admin"),
                )
                .arg(
                    Arg::new("ttl-secs")
                        .long("ttl-secs")
                        .value_parser(clap::value_parser!(u64))
                        .default_value("3600")
                        .help("lifetime in seconds"),
                )
                .after_help(
                    "--patient-id is required for patient, --clinic-id for clinic_admin; \
                     --ttl-secs defaults to 3600",
                ),
        )
}

/// Prints an HS256 token signed with `JWT_HS256_SECRET` (development, tests, scripts).
fn token(config: &Config, args: &clap::ArgMatches) -> anyhow::Result<()> {
    use slotq_security::auth::{Role as R, claims, mint_hs256};
    let usage = "see slotq-ingress token --help";
    let role = match args.get_one::<String>("role").map(String::as_str) {
        Some("patient") => R::Patient,
        Some("clinic_admin") => R::ClinicAdmin,
        Some("ops") => R::Ops,
        _ => R::Service,
    };
    let sub = args.get_one::<String>("sub").cloned().unwrap_or_default();
    let patient = args.get_one::<uuid::Uuid>("patient-id").copied();
    let clinic = args.get_one::<uuid::Uuid>("clinic-id").copied();
    let ttl = args.get_one::<u64>("ttl-secs").copied().unwrap_or(3600);
    // The server refuses these tokens; say so now rather than print one.
    match (role, patient, clinic) {
        (R::Patient, None, _) => anyhow::bail!("a patient token needs --patient-id\n{usage}"),
        (R::ClinicAdmin, _, None) => {
            anyhow::bail!("a clinic_admin token needs --clinic-id\n{usage}")
        }
        _ => {}
    }
    let secret = config
        .auth
        .hs256_secret
        .as_ref()
        .map(secrecy::ExposeSecret::expose_secret)
        .ok_or_else(|| anyhow::anyhow!("JWT_HS256_SECRET is not set"))?;
    let c = claims(
        &config.auth,
        role,
        &sub,
        clinic,
        patient,
        std::time::Duration::from_secs(ttl),
    );
    println!("{}", mint_hs256(secret, &c)?);
    Ok(())
}

async fn run(config: Config) -> anyhow::Result<()> {
    let (trigger, shutdown) = slotq_runtime::shutdown::channel();
    let listener = tokio::net::TcpListener::bind(config.http_addr)
        .await
        .map_err(|e| anyhow::anyhow!("binding HTTP_ADDR {}: {e}", config.http_addr))?;
    let state = slotq_ingress::AppState::connect(config, shutdown).await?;
    let running = slotq_ingress::serve(listener, state).await?;
    tracing::info!(addr = %running.addr, admin = %running.admin_addr, "slotq-ingress listening");
    let stopped = running.state.shutdown.clone();
    tokio::select! {
        () = slotq_runtime::shutdown::signal() => {}
        // A critical task died: stop at once (the orchestrator starts a fresh process).
        () = stopped.wait() => {}
    }
    // Not ready first, still serving: load balancers take the pod out of rotation during the
    // delay, then the listener closes and in-flight requests finish.
    running.state.metrics.shutting_down.set(1);
    let delay = running.state.config.shutdown_delay;
    tracing::info!(
        delay_ms = delay.as_millis() as u64,
        "shutting down: not ready; closing the listener after the delay"
    );
    tokio::time::sleep(delay).await;
    tracing::info!("shutting down: finishing in-flight requests");
    trigger.fire();
    let Running { state, handle, .. } = running;
    handle.await??;
    let tasks = state.tasks.clone();
    // The admitter ends when the last handle to it is gone.
    drop(state);
    tokio::time::timeout(std::time::Duration::from_secs(10), tasks.wait())
        .await
        .map_err(|_| anyhow::anyhow!("background tasks did not stop within 10 s"))??;
    tracing::info!("slotq-ingress stopped: every in-flight request answered");
    Ok(())
}
