//! Generates the gRPC code for proto/celld/v1 (daemon builds only; the static
//! lifecycle binary needs none of it).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    #[cfg(feature = "daemon")]
    {
        let protos = [
            "proto/celld/v1/models.proto",
            "proto/celld/v1/stager.proto",
            "proto/celld/v1/cell.proto",
            "proto/celld/v1/scheduler.proto",
            "proto/celld/v1/apps.proto",
        ];
        let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
        tonic_prost_build::configure()
            .file_descriptor_set_path(out.join("celld_descriptor.bin"))
            .compile_protos(&protos, &["proto"])?;
        for p in protos {
            println!("cargo:rerun-if-changed={p}");
        }
    }
    Ok(())
}
