use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = gradcam_serve::cli::Cli::parse();
    match gradcam_serve::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
