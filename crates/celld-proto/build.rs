//! Generates the gRPC code for the repository's top-level proto/celld/v1.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "../../proto/celld/v1/models.proto",
        "../../proto/celld/v1/stager.proto",
        "../../proto/celld/v1/cell.proto",
        "../../proto/celld/v1/scheduler.proto",
        "../../proto/celld/v1/apps.proto",
    ];
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("celld_descriptor.bin"))
        .compile_protos(&protos, &["../../proto"])?;
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    Ok(())
}
