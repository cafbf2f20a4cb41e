//! Generates the code for the repository's top-level proto/: celld's own
//! gRPC services (proto/celld/v1) and Diego's messages (proto/diego), which
//! celld's models reuse for the action tree, and which celld-diego speaks to a
//! real BBS) and Locket's service (proto/diego/locket.proto).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let diego = [
        "../../proto/diego/actions.proto",
        "../../proto/diego/lrp.proto",
        "../../proto/diego/task.proto",
        "../../proto/diego/cells.proto",
        "../../proto/diego/requests.proto",
    ];
    // Locket's service keeps its own package (`models`), which is on the wire.
    let locket = ["../../proto/diego/locket.proto"];
    let celld = [
        "../../proto/celld/v1/models.proto",
        "../../proto/celld/v1/stager.proto",
        "../../proto/celld/v1/cell.proto",
        "../../proto/celld/v1/scheduler.proto",
        "../../proto/celld/v1/apps.proto",
    ];
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("diego_descriptor.bin"))
        .compile_protos(&diego, &["../../proto"])?;
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("locket_descriptor.bin"))
        .compile_protos(&locket, &["../../proto"])?;
    // celld.v1 refers to Diego's messages where they were generated above.
    tonic_prost_build::configure()
        .extern_path(".diego.bbs", "crate::diego::bbs")
        .file_descriptor_set_path(out.join("celld_descriptor.bin"))
        .compile_protos(&celld, &["../../proto"])?;
    for p in diego.iter().chain(&locket).chain(&celld) {
        println!("cargo:rerun-if-changed={p}");
    }
    Ok(())
}
