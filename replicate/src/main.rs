use clap::Parser;
use replicate::cli::{run, Cli};

fn main() {
    let cli = Cli::parse();
    let code = match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("replicate: {e}");
            e.exit_code()
        }
    };
    std::process::exit(code);
}
