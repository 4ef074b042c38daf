//! The HTTP service comes in its own change; until then `serve` refuses clearly.
pub fn run(_config: crate::config::Config) -> anyhow::Result<()> {
    anyhow::bail!("the HTTP service is not built yet; use `gradcam-serve explain IMAGE`")
}
