//! Prints this kernel's verifier figures for Lifeline's programs.
fn main() -> anyhow::Result<()> {
    for r in lifeline_capture::verifier_reports()? {
        println!("{r}\n{}", r.log);
    }
    Ok(())
}
