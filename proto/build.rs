fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=lifeline.proto");
    tonic_prost_build::configure().compile_protos(&["lifeline.proto"], &["."])?;
    Ok(())
}
