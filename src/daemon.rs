//! The daemon's start: TLS material, the networker, the runtime, the gardener,
//! the executor, the stager, the rep, and in local mode the scheduler, the app
//! layer, the router and the ssh proxy; then every listener until SIGTERM.
//!
//! In the library, not in `main.rs`: a release build instantiates generic code
//! (tokio tasks, hyper and tonic servers) in every crate that uses it, so the
//! binary would generate all of it again on every change to the daemon. The
//! binary keeps role dispatch and the printing of errors; `anyhow` stays in
//! this entry module.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::blobstore::Blobstore;
use crate::config::Config;
use crate::executor::logs::LogHub;
use crate::executor::{Executor, ExecutorConfig, NoReporter, Reporter};
use crate::garden::server::Server;
use crate::gardener::{Gardener, GardenerConfig};
use crate::network::pool::Ipv4Net;
use crate::network::{NetworkConfig, Networker};
use crate::rep::scheduler::SchedulerPlane;
use crate::rep::{Rep, RepConfig};
use crate::runtime::{Containerizer, ImageSettings, RuntimeConfig};
use crate::staging::stager::{Stager, StagerConfig};

pub fn init_logging(level: &str) {
    let filter =
        tracing_subscriber::EnvFilter::try_new(level).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

/// The listeners' TLS material, read before anything else starts so that a
/// bad file fails start-up with its name.
struct Tls {
    garden: Option<Arc<rustls::ServerConfig>>,
    grpc: Option<Arc<crate::tls::TlsMaterial>>,
}

fn load_tls(cfg: &Config) -> anyhow::Result<Tls> {
    let garden = match cfg.garden_tls()? {
        Some(files) => Some(files.load()?.server_config()?),
        None => None,
    };
    let grpc = match cfg.grpc_tls()? {
        Some(files) => Some(files.load()?),
        None => None,
    };
    if let Some(t) = &grpc {
        // The cell dials the scheduler (and local mode's app layer dials
        // cells) with the same identity.
        crate::grpc::set_client_tls(t.clone());
    }
    Ok(Tls { garden, grpc })
}

pub fn run_daemon(cfg: Config, nofile: u64) -> anyhow::Result<()> {
    let tls = load_tls(&cfg)?;
    let exe = std::env::current_exe().context("locating the celld executable")?;
    let rt = Containerizer::new(RuntimeConfig {
        depot: cfg.depot.clone(),
        run_dir: cfg.run_dir.clone(),
        rootfs_dir: cfg.rootfs_dir(),
        default_rootfs: cfg.default_rootfs.clone(),
        exe,
        log_level: cfg.log_level.clone(),
        default_pids_limit: cfg.default_pids_limit,
        images: ImageSettings {
            max_bytes: cfg.image_store_size.unwrap_or(0),
            insecure_registries: cfg.insecure_docker_registries.clone(),
            registry_mirror: cfg.docker_registry_mirror.clone(),
        },
        disk: cfg.disk(),
    })?;
    let net = if cfg.no_network { None } else { Some(Arc::new(networker(&cfg)?)) };
    // The process's one registry: every part registers its handles here.
    let registry = crate::metrics::SharedRegistry::new();
    let gardener = Arc::new(Gardener::new(
        rt,
        net,
        GardenerConfig {
            max_containers: cfg.max_containers,
            default_grace_time: cfg.default_grace_time.saturating_mul(1_000_000_000),
            stop_timeout: Duration::from_secs(cfg.stop_timeout),
        },
        registry.register(crate::garden::metrics::GardenMetrics::register),
    ));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(cfg, gardener, tls, nofile, registry))
}

fn networker(cfg: &Config) -> anyhow::Result<Networker> {
    let deny_networks = cfg
        .deny_networks
        .iter()
        .map(|d| d.parse::<Ipv4Net>().with_context(|| format!("--deny-network {d}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Networker::new(NetworkConfig {
        pool: cfg.network_pool.parse().with_context(|| format!("--network-pool {}", cfg.network_pool))?,
        port_pool_start: cfg.port_pool_start,
        port_pool_size: cfg.port_pool_size,
        allow_host_access: cfg.allow_host_access,
        deny_networks,
        resolv_conf: cfg.resolv_conf.clone(),
        dns_servers: cfg.dns_servers.clone(),
        mtu: cfg.mtu,
        external_ip: cfg.external_ip,
        owner: cfg.depot.clone(),
    })
    .context("setting up container networking")
}

async fn serve(
    cfg: Config,
    gardener: Arc<Gardener>,
    tls: Tls,
    nofile: u64,
    registry: crate::metrics::SharedRegistry,
) -> anyhow::Result<()> {
    // First: a taken port fails the start before anything is restored.
    let metrics_endpoint = match cfg.metrics_listen {
        crate::metrics::MetricsListen::On(addr) => Some(crate::metrics::serve(addr, registry.clone()).await?),
        crate::metrics::MetricsListen::Off => None,
    };
    let executor_metrics = registry.register(crate::executor::metrics::ExecutorMetrics::register);
    gardener.restore(cfg.destroy_containers_on_startup).await;
    let url = cfg.blobstore_url();
    let blobs = Arc::new(Blobstore::open(&url).with_context(|| format!("opening the blobstore {url}"))?);
    let logs = Arc::new(
        LogHub::default().with_counters(executor_metrics.log_lines.clone(), executor_metrics.log_lines_dropped.clone()),
    );
    // Local mode keeps apps' lines across restarts; read back before anything
    // emits, so the disk and the hub agree on their order.
    let disk_log = if cfg.local {
        let dir = cfg.depot.join("apps").join("logs");
        let attached = crate::apps::log_disk::DiskLog::attach(&dir, Default::default(), &logs);
        Some(attached.context("opening the app log store")?)
    } else {
        None
    };
    let staging_metrics = registry.register(crate::staging::metrics::StagingMetrics::register);
    let stager = stager(&cfg, gardener.clone(), blobs.clone(), logs.clone(), staging_metrics).await?;
    // Local mode embeds the scheduler (unless told to use another one).
    let (scheduler_addr, embedded) = match (&cfg.scheduler, cfg.local) {
        (None, true) => {
            (Some(cfg.scheduler_listen.clone()), Some(embedded_scheduler(&cfg, tls.grpc.clone(), &registry).await?))
        }
        (addr, _) => (addr.clone(), None),
    };
    // Joined to Diego: BBS is the control plane (the rep API below takes the
    // auctioneer's work); else celld's own scheduler, if there is one.
    let diego = match &cfg.bbs_address {
        Some(addr) => Some(crate::diego::start::connect(&cfg, addr)?),
        None => None,
    };
    let rep_config = RepConfig {
        cell_id: cfg.cell_id(),
        advertise_address: cfg.advertise_address.clone().or_else(|| cfg.grpc_listen()).unwrap_or_default(),
        heartbeat_interval: Duration::from_secs(5),
        reconcile_interval: Duration::from_secs(cfg.reconcile_interval.max(1)),
        evacuation_timeout: Duration::from_secs(cfg.evacuation_timeout),
    };
    let rep = match (&diego, &scheduler_addr) {
        (Some(d), _) => Some(Rep::new(d.plane.clone(), rep_config).context("--bbs-address")?),
        (None, Some(addr)) => Some(
            Rep::new(Arc::new(SchedulerPlane::new(addr).context("--scheduler")?), rep_config).context("--scheduler")?,
        ),
        (None, None) => None,
    };
    let reporter: Arc<dyn Reporter> = match &rep {
        Some(r) => r.clone(),
        None => Arc::new(NoReporter),
    };
    let executor = executor(
        &cfg,
        gardener.clone(),
        blobs.clone(),
        logs.clone(),
        reporter.clone(),
        stager.lifecycle_dir(),
        executor_metrics,
    )?;
    executor.restore().await;
    let (apps, cf_api_hint, routes) = match (&scheduler_addr, cfg.local) {
        (Some(addr), true) => {
            let (apps, cf, routes) =
                local_apps(&cfg, addr, stager.clone(), blobs.clone(), logs.clone(), executor.clone(), &registry)
                    .await?;
            (Some(apps), cf, Some(routes))
        }
        _ => (None, None, None),
    };
    let dashboard_url = dashboard(&cfg, apps.as_ref(), &executor, routes.as_deref()).await?;
    // Instances are labelled with their app's name where the app layer has it.
    // Read only when someone may scrape them: the reading costs CPU per container.
    let names = apps.clone().map(|a| -> crate::executor::metrics::AppNames { Arc::new(move |g| a.app_name(g)) });
    let metrics_refresh = metrics_endpoint
        .is_some()
        .then(|| tokio::spawn(crate::executor::metrics::refresh_forever(executor.clone(), names)));
    let (stop_grpc, grpc_stopped) = tokio::sync::oneshot::channel::<()>();
    let grpc = match cfg.grpc_listen() {
        Some(addr) => {
            let grpc = crate::grpc::serve(&addr, tls.grpc.as_deref(), stager, executor.clone(), apps.clone(), async {
                let _ = grpc_stopped.await;
            })
            .await?;
            tracing::info!(address = %addr, scheduler = ?scheduler_addr, apps = apps.is_some(), tls = tls.grpc.is_some(), "serving gRPC (Stager, Cell)");
            Some(tokio::spawn(grpc))
        }
        None => None,
    };
    // Only now that the Cell service listens: a rep that announced the cell
    // earlier drew work the scheduler could not deliver ("cell unreachable"),
    // which then waited for the next convergence pass.
    if let Some(rep) = &rep {
        rep.start(executor.clone());
    }
    let joined = match diego {
        Some(d) => Some(d.serve(&cfg, executor.clone(), gardener.clone(), reporter).await?),
        None => None,
    };
    let server = Server::new(gardener.clone());
    let limits = cfg.garden_limits();
    let conns = crate::garden::listener::Conns::new(crate::garden::listener::Limits {
        max_connections: crate::garden::listener::fit_max_connections(limits.max_connections, nofile),
        ..limits
    });
    let mut listeners = Vec::new();
    if let Some(addr) = &cfg.garden_tcp {
        let tcp = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("listening on {addr}"))?;
        if tls.garden.is_some() {
            tracing::info!(address = %addr, "serving the Garden API on TCP with mutual TLS");
        } else {
            tracing::warn!(address = %addr, "serving the Garden API on TCP without TLS: Garden has no authentication, so anyone who can reach this address is root on this host (privileged containers, host bind mounts); use --garden-tls-cert/--garden-tls-key/--garden-tls-ca");
        }
        listeners.push(tokio::spawn(crate::garden::listener::serve_tcp(
            conns.clone(),
            server.clone(),
            tcp,
            tls.garden.clone(),
        )));
    }
    if let Some(dir) = cfg.garden_socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let _ = std::fs::remove_file(&cfg.garden_socket);
    let unix = tokio::net::UnixListener::bind(&cfg.garden_socket)
        .with_context(|| format!("listening on {}", cfg.garden_socket.display()))?;
    tracing::info!(socket = %cfg.garden_socket.display(), rootfs_dir = %cfg.rootfs_dir().display(), max_connections = conns.limits().max_connections, nofile, "serving the Garden API");
    listeners.push(tokio::spawn(crate::garden::listener::serve_unix(conns.clone(), server.clone(), unix)));
    if let Some(addr) = &cfg.debug_listen {
        let tcp = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("--debug-listen {addr}"))?;
        let vars = Arc::new(crate::garden::debug::DebugVars { containers_dir: gardener.containers_dir() });
        tracing::info!(address = %addr, "serving /debug/vars");
        listeners.push(tokio::spawn(crate::garden::debug::serve(tcp, vars)));
    }
    tokio::spawn(gardener.clone().reap_forever());
    if let Some(apps) = &apps {
        print_local_banner(&cfg, apps, cf_api_hint.as_deref(), dashboard_url.as_deref());
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let evacuate_requested = async {
        match &joined {
            Some(j) => j.cell.evacuate_requested.notified().await,
            None => std::future::pending().await,
        }
    };
    let evacuate = tokio::select! {
        _ = term.recv() => true,
        _ = evacuate_requested => true,
        _ = tokio::signal::ctrl_c() => false,
    };
    // SIGTERM on a cell with a scheduler: Diego's evacuation, while Garden
    // and gRPC keep serving. Not in local mode's own scheduler: there is no
    // other cell to take the instances, so it would only wait out
    // --evacuation-timeout; they keep running for the next start instead.
    if let (true, None, Some(rep)) = (evacuate, &embedded, &rep) {
        rep.evacuate().await;
    }
    for l in &listeners {
        l.abort();
    }
    if let Some(r) = metrics_refresh {
        r.abort();
    }
    // Containers keep running; the next celld picks them up from the depot.
    tracing::info!("shutting down; containers keep running");
    if let Some(j) = joined {
        j.stop().await;
    }
    let _ = stop_grpc.send(());
    if let Some(grpc) = grpc {
        let _ = tokio::time::timeout(Duration::from_secs(5), grpc).await;
    }
    gardener.shutdown().await;
    let _ = std::fs::remove_file(&cfg.garden_socket);
    drop(embedded);
    // The lines still queued for the disk (a crash loses only those).
    if let Some(disk_log) = disk_log {
        let _ = tokio::task::spawn_blocking(move || disk_log.flush()).await;
    }
    Ok(())
}

/// Local mode's scheduler: SQLite under the depot, served on --scheduler-listen.
async fn embedded_scheduler(
    cfg: &Config,
    tls: Option<Arc<crate::tls::TlsMaterial>>,
    registry: &crate::metrics::SharedRegistry,
) -> anyhow::Result<Arc<crate::scheduler::SchedulerHandle>> {
    use crate::scheduler::{SchedulerConfig, SchedulerHandle};
    let listener = crate::grpc::bind(&cfg.scheduler_listen).await?;
    let config = SchedulerConfig {
        db: cfg.depot.join("scheduler").join("scheduler.db"),
        convergence_interval: Duration::from_secs(30),
        presence_ttl: Duration::from_secs(15),
        test_clock: false,
        // On the cell's endpoint: local mode has one /metrics.
        metrics: registry.register(crate::scheduler::metrics::SchedulerMetrics::register),
    };
    let handle = Arc::new(SchedulerHandle::start(config).await.context("starting the embedded scheduler")?);
    let serving = handle.clone();
    tokio::spawn(async move {
        if let Err(e) = serving.serve_with_tls(listener, tls.as_deref(), std::future::pending()).await {
            tracing::error!(error = %e, "the embedded scheduler stopped");
        }
    });
    tracing::info!(address = %cfg.scheduler_listen, "serving gRPC (Scheduler, embedded)");
    Ok(handle)
}

/// The web dashboard: in local mode on the router's `celld.<domain>` (a
/// listener of its own on loopback that only the router dials), and on
/// `--dashboard-listen` on any cell; one dashboard, so one sampler, for both.
/// Its URL through the router, for the banner.
async fn dashboard(
    cfg: &Config,
    apps: Option<&Arc<crate::apps::AppLayer>>,
    executor: &Arc<Executor>,
    routes: Option<&crate::router::RouteTable>,
) -> anyhow::Result<Option<String>> {
    use crate::dashboard::{Dashboard, DashboardConfig, SYSTEM_HOST, Source};
    let routed = routes.filter(|_| !cfg.no_dashboard);
    if routed.is_none() && cfg.dashboard_listen.is_none() {
        return Ok(None);
    }
    let source = match apps {
        Some(a) => Source::Apps(a.clone()),
        None => Source::Cell(executor.clone(), Arc::new(crate::rep::vitals::Vitals::new(executor.work_dir()))),
    };
    let host = apps.map(|a| format!("{SYSTEM_HOST}.{}", a.domain()));
    let d = Dashboard::new(source, DashboardConfig { actions: cfg.dashboard_actions, system_host: host.clone() })?;
    if let Some(addr) = &cfg.dashboard_listen {
        let l = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("--dashboard-listen {addr}"))?;
        tracing::info!(address = %addr, actions = cfg.dashboard_actions, "serving the dashboard");
        tokio::spawn(d.clone().serve(l));
    }
    let (Some(table), Some(apps), Some(host)) = (routed, apps, host) else { return Ok(None) };
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("listening for the dashboard")?;
    let addr = l.local_addr().context("listening for the dashboard")?;
    table.set_system_route(&host, addr);
    tokio::spawn(d.serve(l));
    let url = apps.url(&host);
    tracing::info!(url = %url, actions = cfg.dashboard_actions, "serving the dashboard through the router");
    Ok(Some(url))
}

/// Local mode's app layer and router.
async fn local_apps(
    cfg: &Config,
    scheduler: &str,
    stager: Arc<Stager>,
    blobs: Arc<Blobstore>,
    logs: Arc<LogHub>,
    executor: Arc<Executor>,
    registry: &crate::metrics::SharedRegistry,
) -> anyhow::Result<(Arc<crate::apps::AppLayer>, Option<String>, Arc<crate::router::RouteTable>)> {
    use crate::router::{RouteTable, Router, RouterConfig};
    let listener = tokio::net::TcpListener::bind(&cfg.router_listen)
        .await
        .with_context(|| format!("--router-listen {}", cfg.router_listen))?;
    let router_port = listener.local_addr().map(|a| a.port()).unwrap_or(80);
    let table = Arc::new(RouteTable::new());
    let apps = crate::apps::AppLayer::new(
        crate::apps::AppsConfig {
            db: cfg.depot.join("apps").join("apps.db"),
            domain: cfg.domain.clone(),
            default_space: cfg.default_space.clone(),
            scheduler: scheduler.to_string(),
            router_port,
        },
        stager,
        blobs,
        logs.clone(),
        table.clone(),
    )
    .context("starting the app layer")?;
    apps.prune_logs().context("pruning the logs of deleted apps")?;
    apps.start();
    let router = Router::new(
        table.clone(),
        RouterConfig {
            access_log: Some(Arc::new(crate::apps::RouterLog(logs))),
            live: Some(executor),
            metrics: registry.register(crate::router::metrics::RouterMetrics::register),
        },
    );
    // Threads of its own, one per core as nginx's `worker_processes auto`:
    // see Router::serve_on_threads.
    let threads = std::thread::available_parallelism().map_or(2, usize::from);
    let listener = listener.into_std().context("taking the router's listener off the runtime")?;
    router.serve_on_threads(listener, threads).context("starting the router")?;
    tracing::info!(address = %cfg.router_listen, domain = %cfg.domain, "serving the router");
    if cfg.ssh_proxy_listen != "off" {
        ssh_proxy(cfg, apps.clone(), registry).await?;
    }
    let cf = match cfg.cf_api_listen.as_str() {
        "off" => None,
        _ => Some(cf_api(cfg, apps.clone()).await?),
    };
    Ok((apps, cf, table))
}

/// Local mode's ssh proxy, deciding logins through the app layer.
async fn ssh_proxy(
    cfg: &Config,
    apps: Arc<crate::apps::AppLayer>,
    registry: &crate::metrics::SharedRegistry,
) -> anyhow::Result<()> {
    use crate::sshproxy::{ProxyConfig, SshProxy};
    let listen: std::net::SocketAddr = cfg
        .ssh_proxy_listen
        .parse()
        .with_context(|| format!("--ssh-proxy-listen {}: not HOST:PORT", cfg.ssh_proxy_listen))?;
    let authority = Arc::new(crate::apps::ssh::SshAuthority {
        apps: apps.clone(),
        diego_credentials: cfg.ssh_diego_credentials.clone(),
    });
    let proxy = SshProxy::new(
        ProxyConfig {
            listen,
            host_key_path: cfg.depot.join("ssh-proxy").join("host_key"),
            idle_timeout: Duration::from_secs(cfg.ssh_idle_timeout.max(1)),
            ciphers: crate::sshproxy::parse_ciphers(&cfg.ssh_ciphers)?,
            metrics: registry.register(crate::sshproxy::metrics::SshMetrics::register),
        },
        authority,
    )?;
    let listener = proxy.bind().await?;
    let bound = listener.local_addr().map(|a| a.to_string()).unwrap_or_else(|_| cfg.ssh_proxy_listen.clone());
    apps.set_ssh_proxy(bound.clone(), proxy.fingerprint());
    tracing::info!(address = %bound, fingerprint = %proxy.fingerprint(), "serving the ssh proxy");
    tokio::spawn(proxy.serve(listener, std::future::pending()));
    Ok(())
}

/// Local mode's Cloud Foundry API, for the `cf` CLI; what to type to use it.
async fn cf_api(cfg: &Config, apps: Arc<crate::apps::AppLayer>) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind(&cfg.cf_api_listen)
        .await
        .with_context(|| format!("--cf-api-listen {}", cfg.cf_api_listen))?;
    let addr = listener.local_addr().context("--cf-api-listen")?;
    let password = crate::cfapi::serve(
        apps,
        crate::cfapi::CfApiConfig {
            dir: cfg.depot.join("cf-api"),
            admin_password: cfg.cf_admin_password.clone(),
            tls: cfg.cf_api_tls,
        },
        listener,
    )
    .await
    .context("starting the CF API")?;
    let (scheme, skip) = if cfg.cf_api_tls { ("https", " --skip-ssl-validation") } else { ("http", "") };
    tracing::info!(address = %addr, "serving the CF API");
    Ok(format!("cf api {scheme}://{addr}{skip} && cf auth admin {password}"))
}

/// What a person starting `celld --local` needs to know, on stdout.
fn print_local_banner(cfg: &Config, apps: &crate::apps::AppLayer, cf: Option<&str>, dashboard: Option<&str>) {
    println!("celld --local is up:");
    println!("  apps API (cellctl --api)  {}", cfg.grpc_listen().unwrap_or_default());
    println!("  router                    {}  (http://APP.{}:PORT/)", cfg.router_listen, apps.domain());
    println!("  scheduler                 {}", cfg.scheduler.as_deref().unwrap_or(&cfg.scheduler_listen));
    println!("  Garden API                {}", cfg.garden_socket.display());
    println!("  depot                     {}", cfg.depot.display());
    let ssh = apps.ssh_info();
    if !ssh.endpoint.is_empty() {
        println!("  ssh proxy (cellctl ssh)   {}  ({})", ssh.endpoint, ssh.host_key_fingerprint);
    }
    if let Some(url) = dashboard {
        println!("  dashboard                 {url}");
    }
    if let crate::metrics::MetricsListen::On(addr) = cfg.metrics_listen {
        println!("  metrics (Prometheus)      http://{addr}/metrics");
    }
    println!("  default space             {}", cfg.default_space);
    if let Some(cf) = cf {
        println!("  cf CLI                    {cf} && cf target -o local -s {}", cfg.default_space);
    }
}

fn executor(
    cfg: &Config,
    gardener: Arc<Gardener>,
    blobs: Arc<Blobstore>,
    logs: Arc<LogHub>,
    reporter: Arc<dyn Reporter>,
    lifecycle_dir: std::path::PathBuf,
    metrics: crate::executor::metrics::ExecutorMetrics,
) -> anyhow::Result<Arc<Executor>> {
    let machine = gardener.capacity();
    let total = crate::grpc::pb::Resources {
        memory_mb: cfg.memory_mb.unwrap_or(u32::try_from(machine.memory_in_bytes >> 20).unwrap_or(u32::MAX)),
        disk_mb: cfg.disk_mb.unwrap_or(u32::try_from(machine.disk_in_bytes >> 20).unwrap_or(u32::MAX)),
        // Joined to Diego, one slot is kept for the cell's health-check
        // container, as Diego's executor keeps one for Garden's.
        containers: u32::try_from(cfg.max_containers.saturating_sub(usize::from(cfg.bbs_address.is_some())))
            .unwrap_or(u32::MAX),
    };
    Executor::new(
        gardener,
        blobs,
        logs,
        reporter,
        ExecutorConfig {
            cell_id: cfg.cell_id(),
            zone: cfg.zone.clone(),
            work_dir: cfg.depot.join("executor"),
            lifecycle_dir,
            rootfs_dir: cfg.rootfs_dir(),
            default_rootfs: cfg.default_rootfs.clone(),
            // Work for a cell's optional placement tags is welcome too.
            placement_tags: cfg.placement_tags.iter().chain(&cfg.optional_placement_tags).cloned().collect(),
            total,
            log_rate_limit: cfg.log_rate_limit,
            metrics,
        },
    )
    .context("starting the executor")
}

async fn stager(
    cfg: &Config,
    gardener: Arc<Gardener>,
    blobs: Arc<Blobstore>,
    logs: Arc<LogHub>,
    metrics: crate::staging::metrics::StagingMetrics,
) -> anyhow::Result<Arc<Stager>> {
    let stager = Stager::new(
        gardener,
        blobs.clone(),
        StagerConfig {
            cell_id: cfg.cell_id(),
            lifecycle_binary: cfg.lifecycle_binary(),
            work_dir: cfg.depot.join("staging"),
            rootfs_dir: cfg.rootfs_dir(),
            default_stack: cfg.default_stack(),
            timeout: Duration::from_secs(cfg.staging_timeout),
            memory_mb: cfg.staging_memory_mb,
            disk_mb: cfg.staging_disk_mb,
            max_package_bytes: cfg.max_package_size_mb.saturating_mul(1 << 20),
            logs: Some(logs),
            metrics,
        },
    )
    .await
    .context("starting the stager")?;
    let scratch = cfg.depot.join("staging").join("scratch");
    stager
        .registry
        .register_builtin(&blobs, &cfg.buildpacks_dir(), &scratch)
        .await
        .context("registering the built-in buildpacks")?;
    tracing::info!(blobstore = %blobs.describe(), buildpacks = stager.registry.list().len(), "stager ready");
    Ok(stager)
}
