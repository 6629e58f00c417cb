use clap::Parser;
use replicate::cli::{log_style, run, Cli};

fn main() {
    let cli = Cli::parse();
    replicate::log::init(cli.log_format, log_style(&cli));
    if replicate::argv::hide_passwords() > 0 {
        tracing::warn!(
            "a connection string on the command line holds a password, which is visible to \
             other users in ps output until replicate hides it at start; use PGPASSWORD, \
             ~/.pgpass or --password-file instead"
        );
    }
    let code = match run(cli) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{e}");
            e.exit_code()
        }
    };
    std::process::exit(code);
}
