//! Compiles `proto/` with tonic-prost-build (a vendored protoc unless PROTOC is set) and writes
//! the descriptor set that server reflection serves. Nothing else.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = match std::env::var_os("PROTOC") {
        Some(path) => path.into(),
        None => protoc_bin_vendored::protoc_bin_path()?,
    };
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc);
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("callguard_descriptor.bin"))
        .compile_with_config(
            config,
            &[
                "proto/callguard/v1/ingest.proto",
                "proto/callguard/v1/alerts.proto",
                "proto/callguard/v1/ops.proto",
            ],
            &["proto"],
        )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
