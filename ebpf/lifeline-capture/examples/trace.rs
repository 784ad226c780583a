//! Prints the file changes the kernel reports under the given directories:
//! `cargo run -p lifeline-capture --example trace -- /some/dir`.
use std::path::PathBuf;

use lifeline_capture::{Capture, CaptureOptions, PathResolver};

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).init();
    let roots: Vec<PathBuf> =
        std::env::args().skip(1).map(|p| std::fs::canonicalize(p).expect("existing directory")).collect();
    let mut cap = Capture::load(&CaptureOptions::default())?;
    cap.set_watched(&roots)?;
    cap.attach()?;
    let reader = cap.take_reader().expect("reader");
    reader.run(PathResolver::new(roots)?, |m| {
        println!("{m:?}");
        true
    });
    Ok(())
}
