//! celld: role dispatch happens before any async runtime or thread exists.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use celld::blobstore::Blobstore;
use celld::config::{Config, Role};
use celld::garden::server::Server;
use celld::gardener::{Gardener, GardenerConfig};
use celld::network::pool::Ipv4Net;
use celld::network::{NetworkConfig, Networker};
use celld::runtime::{Containerizer, RuntimeConfig, helper};
use celld::staging::stager::{Stager, StagerConfig};
use clap::Parser;

fn main() {
    let cfg = Config::parse();
    init_logging(&cfg.log_level);
    if let Some(Role::Helper { .. }) = &cfg.role {
        if let Err(e) = helper::run() {
            eprintln!("celld helper: {e}");
            std::process::exit(1);
        }
        return;
    }
    if let Err(e) = run_daemon(cfg) {
        eprintln!("celld: {e:#}");
        std::process::exit(1);
    }
}

fn init_logging(level: &str) {
    let filter =
        tracing_subscriber::EnvFilter::try_new(level).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

fn run_daemon(cfg: Config) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("locating the celld executable")?;
    let rt = Containerizer::new(RuntimeConfig {
        depot: cfg.depot.clone(),
        run_dir: cfg.run_dir.clone(),
        rootfs_dir: cfg.rootfs_dir(),
        default_rootfs: cfg.default_rootfs.clone(),
        exe,
        log_level: cfg.log_level.clone(),
    })?;
    let net = if cfg.no_network { None } else { Some(Arc::new(networker(&cfg)?)) };
    let gardener = Arc::new(Gardener::new(
        rt,
        net,
        GardenerConfig {
            max_containers: cfg.max_containers,
            default_grace_time: cfg.default_grace_time.saturating_mul(1_000_000_000),
            stop_timeout: Duration::from_secs(cfg.stop_timeout),
        },
    ));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(cfg, gardener))
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
    })
    .context("setting up container networking")
}

async fn serve(cfg: Config, gardener: Arc<Gardener>) -> anyhow::Result<()> {
    gardener.restore(cfg.destroy_containers_on_startup).await;
    let stager = stager(&cfg, gardener.clone()).await?;
    let (stop_grpc, grpc_stopped) = tokio::sync::oneshot::channel::<()>();
    let grpc = celld::grpc::serve(&cfg.grpc_listen, stager, async {
        let _ = grpc_stopped.await;
    })
    .await?;
    tracing::info!(address = %cfg.grpc_listen, "serving gRPC (Stager)");
    let grpc = tokio::spawn(grpc);
    let server = Server::new(gardener.clone());
    if let Some(dir) = cfg.garden_socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let _ = std::fs::remove_file(&cfg.garden_socket);
    let unix = tokio::net::UnixListener::bind(&cfg.garden_socket)
        .with_context(|| format!("listening on {}", cfg.garden_socket.display()))?;
    tracing::info!(socket = %cfg.garden_socket.display(), rootfs_dir = %cfg.rootfs_dir().display(), "serving the Garden API");
    if let Some(addr) = &cfg.garden_tcp {
        let tcp = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("listening on {addr}"))?;
        tracing::info!(address = %addr, "serving the Garden API on TCP");
        let server = server.clone();
        tokio::spawn(async move {
            loop {
                if let Ok((conn, _)) = tcp.accept().await {
                    let _ = conn.set_nodelay(true);
                    tokio::spawn(server.clone().serve(conn));
                }
            }
        });
    }
    tokio::spawn(gardener.clone().reap_forever());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            accepted = unix.accept() => {
                if let Ok((conn, _)) = accepted {
                    tokio::spawn(server.clone().serve(conn));
                }
            }
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    // Containers keep running; the next celld picks them up from the depot.
    tracing::info!("shutting down; containers keep running");
    let _ = stop_grpc.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), grpc).await;
    gardener.shutdown().await;
    let _ = std::fs::remove_file(&cfg.garden_socket);
    Ok(())
}

async fn stager(cfg: &Config, gardener: Arc<Gardener>) -> anyhow::Result<Arc<Stager>> {
    let url = cfg.blobstore_url();
    let blobs = Arc::new(Blobstore::open(&url).with_context(|| format!("opening the blobstore {url}"))?);
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
