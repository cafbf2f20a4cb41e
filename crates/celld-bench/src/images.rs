//! Issue 21's images: a ~50 MB, 5-layer image pulled and unpacked from a
//! local registry (Debian's docker-registry) into celld's store, side by side
//! with `skopeo copy` + `umoci unpack` of the same image; a create from the
//! cached image beside a create from the preloaded rootfs; and the store's
//! growth for 100 containers of one image.

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use celld_image::testing::{Entry, ImageBuilder, TestDir, TestRegistry, push};
use celld_image::{ImageStore, StoreConfig};
use garden_api::client::Client;
use garden_api::types::{ContainerSpec, ImageRef};

use super::{ms, percentiles, run_cmd};

/// Pulls timed (each into an empty store), and creates timed per kind.
const PULLS: usize = 3;
const CREATES: usize = 30;
const SAME_IMAGE: usize = 100;
/// Bytes of each of the four data layers (random: gzip cannot shrink them).
const DATA_LAYER: usize = 11 << 20;

/// The bench image: the tiny rootfs, then four layers of random files.
fn bench_image(tiny: &Path) -> ImageBuilder {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut image = ImageBuilder::new().layer(vec![Entry::HostDir(tiny.to_path_buf())]);
    for layer in 0..4 {
        let mut files = vec![Entry::dir(&format!("data{layer}"))];
        for f in 0..8 {
            let data: Vec<u8> = (0..DATA_LAYER / 8)
                .map(|_| {
                    // xorshift: cheap, incompressible enough for gzip.
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            files.push(Entry::file(&format!("data{layer}/f{f}"), &data));
        }
        image = image.layer(files);
    }
    image.config("Env", serde_json::json!(["PATH=/bin:/usr/bin"]))
}

/// A registry holding the bench image, and where it is.
pub struct BenchRegistry {
    reg: TestRegistry,
    _tmp: TestDir,
    pub uri: String,
}

impl BenchRegistry {
    pub fn start(tiny: &Path) -> Result<Self> {
        let tmp = TestDir::new("bench-image");
        let reg = TestRegistry::start(None).context("starting docker-registry")?;
        let layout = tmp.path().join("layout");
        bench_image(tiny).write(&layout, "v1").context("writing the bench image")?;
        push(&layout, "v1", &reg, "bench/app").context("pushing the bench image with skopeo")?;
        let uri = format!("docker://{}/bench/app:v1", reg.host());
        Ok(Self { reg, _tmp: tmp, uri })
    }

    pub fn host(&self) -> String {
        self.reg.host()
    }
}

/// celld's pull into an empty store beside skopeo + umoci, each timed whole.
pub async fn pull_vs_skopeo(reg: &BenchRegistry, dir: &Path) -> Result<()> {
    let (mut celld, mut baseline) = (Vec::new(), Vec::new());
    let mut image_bytes = 0;
    for i in 0..PULLS {
        let store_dir = dir.join(format!("store-{i}"));
        let mut cfg = StoreConfig::new(store_dir.clone());
        cfg.insecure_registries = vec![reg.host()];
        let t0 = Instant::now();
        let store = ImageStore::open(cfg, Arc::new(HashSet::new)).context("opening a store")?;
        let image = store.pull(&reg.uri, None).await.context("pulling the bench image")?;
        let (lowers, image) = tokio::task::spawn_blocking(move || (image.lower_dirs(false), image))
            .await
            .context("unpacking off the runtime")?;
        let lowers = lowers.context("its lower dirs")?;
        celld.push(t0.elapsed());
        ensure!(lowers.len() == 5, "the bench image has {} layers, not 5", lowers.len());
        image_bytes = image.size_bytes;
        drop(image);
        drop(store);
        std::fs::remove_dir_all(&store_dir).with_context(|| format!("removing {}", store_dir.display()))?;

        let (layout, bundle) = (dir.join(format!("skopeo-{i}")), dir.join(format!("umoci-{i}")));
        let t0 = Instant::now();
        let src = format!("docker://{}", reg.uri.trim_start_matches("docker://"));
        run_cmd(
            Command::new("skopeo")
                .args(["copy", "--quiet", "--src-tls-verify=false", &src])
                .arg(format!("oci:{}:v1", layout.display())),
            "skopeo copy",
        )?;
        run_cmd(
            Command::new("umoci").args(["unpack", "--image"]).arg(format!("{}:v1", layout.display())).arg(&bundle),
            "umoci unpack",
        )?;
        baseline.push(t0.elapsed());
        for d in [&layout, &bundle] {
            std::fs::remove_dir_all(d).with_context(|| format!("removing {}", d.display()))?;
        }
    }
    let (c50, c95) = percentiles(&mut celld);
    let (b50, b95) = percentiles(&mut baseline);
    println!(
        "images bench: pull + unpack of a {} MB, 5-layer image from a local registry, {PULLS} runs into an empty store",
        image_bytes >> 20
    );
    println!("{:<26}{:>8}{:>9}", "", "p50 ms", "p95 ms");
    println!("{:<26}{:>8.0}{:>9.0}", "celld pull", ms(c50), ms(c95));
    println!("{:<26}{:>8.0}{:>9.0}", "skopeo copy + umoci unpack", ms(b50), ms(b95));
    println!("ratio celld/skopeo+umoci: {:.2} (target <= 1.0)", c50.as_secs_f64() / b50.as_secs_f64());
    Ok(())
}

fn image_spec(handle: String, uri: &str) -> ContainerSpec {
    ContainerSpec { handle, image: ImageRef { uri: uri.into(), ..Default::default() }, ..Default::default() }
}

/// Creates from the cached image beside creates from the preloaded rootfs,
/// interleaved so both see the same machine; then the store's growth for
/// 100 containers of the image.
pub async fn creates(client: &Client, reg: &BenchRegistry) -> Result<()> {
    // Warm: the image pulled and shifted, the preloaded rootfs copied.
    for (i, uri) in [reg.uri.as_str(), ""].into_iter().enumerate() {
        let h = client.create(&image_spec(format!("images-warm-{i}"), uri)).await.context("warm-up create")?;
        client.destroy(&h).await?;
    }
    let (mut image, mut preloaded) = (Vec::new(), Vec::new());
    for i in 0..CREATES {
        for (uri, samples) in [(reg.uri.as_str(), &mut image), ("", &mut preloaded)] {
            let t0 = Instant::now();
            let h = client.create(&image_spec(format!("images-{i}-{}", samples.len()), uri)).await?;
            samples.push(t0.elapsed());
            client.destroy(&h).await?;
        }
    }
    let (i50, i95) = percentiles(&mut image);
    let (p50, p95) = percentiles(&mut preloaded);
    println!("creates ({CREATES} each, --no-network)");
    println!("{:<26}{:>8.1}{:>9.1}", "from the cached image", ms(i50), ms(i95));
    println!("{:<26}{:>8.1}{:>9.1}", "from preloaded:tiny", ms(p50), ms(p95));
    println!("difference p50: {:+.1} ms (target within 2 ms)", ms(i50) - ms(p50));

    let one = client.create(&image_spec("images-same-0".into(), &reg.uri)).await?;
    let after_one = client.capacity().await?.image_store_in_bytes;
    let mut handles = vec![one];
    for i in 1..SAME_IMAGE {
        handles.push(client.create(&image_spec(format!("images-same-{i}"), &reg.uri)).await?);
    }
    let after_all = client.capacity().await?.image_store_in_bytes;
    for h in &handles {
        client.destroy(h).await?;
    }
    println!(
        "{SAME_IMAGE} containers of the image: store {} MB after one, {} MB after {SAME_IMAGE} (x{:.2})",
        after_one >> 20,
        after_all >> 20,
        after_all as f64 / after_one.max(1) as f64
    );
    println!();
    Ok(())
}
