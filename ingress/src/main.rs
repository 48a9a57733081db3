//! `slotq-ingress [serve|migrate|token --role <role> --sub <sub> [--patient-id ID] [--clinic-id ID] [--ttl-secs N]]`.

use slotq_runtime::config::{Config, EXIT_CONFIG, Role};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    slotq_runtime::process::help_if_asked(
        "usage: slotq-ingress [serve|migrate|token ...]

  serve    (default) the public HTTP API on HTTP_ADDR, /metrics on ADMIN_ADDR
  migrate  apply the database migrations and exit
  token    mint a JWT for development (slotq-ingress token --help)

Configured by environment variables (README: Configuration): DATABASE_URL, REDIS_URL,
HTTP_ADDR, ADMIN_ADDR, JWT_HS256_SECRET, ... Exit status 64 for a configuration error.",
    );
    let config = match Config::from_env(Role::Ingress) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("slotq-ingress: {e}");
            std::process::exit(EXIT_CONFIG);
        }
    };
    slotq_runtime::telemetry::init(config.log_format);
    let command = std::env::args().nth(1).unwrap_or_else(|| "serve".into());
    let result = match command.as_str() {
        "serve" => run(config).await,
        "migrate" => slotq_runtime::process::migrate(&config).await,
        "token" => {
            if let Err(e) = token(&config, std::env::args().skip(2).collect()) {
                eprintln!("slotq-ingress token: {e}");
                std::process::exit(EXIT_CONFIG);
            }
            return;
        }
        other => {
            eprintln!("slotq-ingress: unknown command {other:?}; expected serve, migrate or token");
            std::process::exit(EXIT_CONFIG);
        }
    };
    if let Err(e) = result {
        tracing::error!(error = ?e, "slotq-ingress failed");
        std::process::exit(1);
    }
}

/// Prints an HS256 token signed with `JWT_HS256_SECRET` (development, tests, scripts).
fn token(config: &Config, args: Vec<String>) -> anyhow::Result<()> {
    use slotq_security::auth::{Role as R, claims, mint_hs256};
    let usage = "usage: slotq-ingress token --role patient|clinic_admin|ops|service --sub <sub> \
                 [--patient-id <uuid>] [--clinic-id <uuid>] [--ttl-secs <n>]\n  \
                 --patient-id is required for patient, --clinic-id for clinic_admin; \
                 --ttl-secs defaults to 3600";
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{usage}");
        return Ok(());
    }
    let mut it = args.into_iter();
    let (mut role, mut sub, mut patient, mut clinic, mut ttl) = (None, None, None, None, 3600u64);
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| anyhow::anyhow!("{flag} needs a value\n{usage}"))?;
        match flag.as_str() {
            "--role" => {
                role = Some(match value.as_str() {
                    "patient" => R::Patient,
                    "clinic_admin" => R::ClinicAdmin,
                    "ops" => R::Ops,
                    "service" => R::Service,
                    other => anyhow::bail!("unknown role {other:?}\n{usage}"),
                })
            }
            "--sub" => sub = Some(value),
            "--patient-id" => patient = Some(value.parse()?),
            "--clinic-id" => clinic = Some(value.parse()?),
            "--ttl-secs" => ttl = value.parse()?,
            other => anyhow::bail!("unknown flag {other:?}\n{usage}"),
        }
    }
    let (Some(role), Some(sub)) = (role, sub) else {
        anyhow::bail!("{usage}")
    };
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

use slotq_ingress::Running;

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
