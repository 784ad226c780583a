fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=lifeline.proto");
    println!("cargo:rerun-if-changed=control.proto");
    println!("cargo:rerun-if-changed=image.proto");
    println!("cargo:rerun-if-changed=boot.proto");
    println!("cargo:rerun-if-changed=history.proto");
    tonic_prost_build::configure()
        .compile_protos(&["lifeline.proto", "image.proto", "boot.proto", "history.proto", "control.proto"], &["."])?;
    Ok(())
}
