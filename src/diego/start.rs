//! Joining Diego at start: the TLS identities (checked, so a bad file stops
//! start-up naming it and its problem), the BBS client, then — once the
//! executor has restored its containers — the rep API listeners, the
//! presence in Locket and the cell's health check.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use celld_diego::tls::{PemFiles, TlsIdentity, Usage};
use celld_diego::{BbsClient, Presence, PresenceConfig};

use super::convert::Stacks;
use super::plane::DiegoPlane;
use super::{DiegoCell, DiegoSettings};
use crate::config::Config;
use crate::executor::{Executor, Reporter};
use crate::gardener::Gardener;

/// BBS reached, identities loaded; nothing listens yet.
pub struct Connected {
    pub plane: Arc<DiegoPlane>,
    bbs: BbsClient,
    rep_tls: Arc<rustls::ServerConfig>,
    locket_tls: TlsIdentity,
    locket_address: String,
    settings: DiegoSettings,
}

/// The cell, serving Diego.
pub struct Joined {
    pub cell: Arc<DiegoCell>,
    presence: Presence,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn need(flag: &str, v: &Option<PathBuf>) -> anyhow::Result<PathBuf> {
    v.clone().with_context(|| format!("{flag} is required with --bbs-address (or its key in --rep-config)"))
}

pub fn connect(cfg: &Config, bbs_address: &str) -> anyhow::Result<Connected> {
    // Like the rep, the cell may use its one identity (--rep-*) for BBS too.
    let bbs_files = PemFiles::new(
        need("--bbs-ca-cert", &cfg.bbs_ca_cert.clone().or(cfg.rep_ca.clone()))?,
        need("--bbs-client-cert", &cfg.bbs_client_cert.clone().or(cfg.rep_cert.clone()))?,
        need("--bbs-client-key", &cfg.bbs_client_key.clone().or(cfg.rep_key.clone()))?,
    );
    let bbs_tls = TlsIdentity::load(&bbs_files, Usage::Client).context("BBS client identity")?;
    let bbs = BbsClient::new(bbs_address, &*bbs_tls.client_config()?, Default::default())?;
    let locket_files = PemFiles::new(
        cfg.locket_ca_cert.clone().unwrap_or(bbs_files.ca.clone()),
        cfg.locket_client_cert.clone().unwrap_or(bbs_files.cert.clone()),
        cfg.locket_client_key.clone().unwrap_or(bbs_files.key.clone()),
    );
    let locket_tls = TlsIdentity::load(&locket_files, Usage::Client).context("Locket client identity")?;
    let locket_address = cfg
        .locket_address
        .clone()
        .context("--locket-address is required with --bbs-address: the cell's presence is kept in Locket")?;
    let rep_files = PemFiles::new(
        need("--rep-ca", &cfg.rep_ca)?,
        need("--rep-cert", &cfg.rep_cert)?,
        need("--rep-key", &cfg.rep_key)?,
    );
    let rep_tls = TlsIdentity::load(&rep_files, Usage::Server).context("rep API server identity")?.server_config()?;
    let cell_id = cfg.cell_id();
    let settings = DiegoSettings {
        rep_url: cfg
            .rep_url
            .clone()
            .unwrap_or_else(|| DiegoSettings::rep_url(&cell_id, &cfg.advertise_domain, &cfg.rep_listen)),
        rep_address: DiegoSettings::rep_address(&cfg.rep_admin_listen),
        cell_id,
        cell_index: cfg.cell_index,
        zone: cfg.zone.clone(),
        placement_tags: cfg.placement_tags.clone(),
        optional_placement_tags: cfg.optional_placement_tags.clone(),
        stacks: Stacks::parse(&cfg.preloaded_rootfs).map_err(anyhow::Error::msg)?,
    };
    Ok(Connected {
        plane: Arc::new(DiegoPlane::new(bbs.clone(), &cfg.zone)),
        bbs,
        rep_tls,
        locket_tls,
        locket_address,
        settings,
    })
}

impl Connected {
    /// Listens on the rep API and admin addresses, then announces the cell.
    pub async fn serve(
        self,
        cfg: &Config,
        executor: Arc<Executor>,
        gardener: Arc<Gardener>,
        reporter: Arc<dyn Reporter>,
    ) -> anyhow::Result<Joined> {
        let cell = DiegoCell::new(self.settings.clone(), self.bbs, reporter);
        cell.set_executor(executor.clone());
        let mut tasks = Vec::new();
        for (addr, admin, flag) in
            [(&cfg.rep_listen, false, "--rep-listen"), (&cfg.rep_admin_listen, true, "--rep-admin-listen")]
        {
            let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("{flag} {addr}"))?;
            tracing::info!(address = %addr, admin, "serving the rep API with mutual TLS");
            tasks.push(tokio::spawn(super::api::serve(listener, self.rep_tls.clone(), cell.clone(), admin)));
        }
        tasks.push(tokio::spawn(cell.clone().check_health_forever(gardener)));
        // The presence is made once: its contents do not change while the cell runs.
        let presence = self.settings.presence(&executor);
        presence.validate().context("this cell's presence would be refused by BBS")?;
        let value = presence.to_json();
        let presence = Presence::start(
            PresenceConfig::new(&self.locket_address, &self.settings.cell_id),
            &self.locket_tls,
            move || value.clone(),
        )?;
        tracing::info!(cell_id = %self.settings.cell_id, rep_url = %self.settings.rep_url, locket = %self.locket_address, "joined Diego");
        Ok(Joined { cell, presence, tasks })
    }
}

impl Joined {
    /// Leaves Diego: the presence is released (so a replacement cell of the
    /// same id need not wait out its TTL) and the listeners close.
    pub async fn stop(self) {
        if let Err(e) = self.presence.release().await {
            tracing::warn!(error = %e, "releasing the presence in Locket");
        }
        for t in self.tasks {
            t.abort();
        }
    }
}
