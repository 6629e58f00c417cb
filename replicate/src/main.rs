use clap::Parser;
use replicate::cli::{run, Cli};

fn main() {
    let cli = Cli::parse();
    if replicate::argv::hide_passwords() > 0 {
        eprintln!(
            "replicate: warning: a connection string on the command line holds a password, which \
             is visible to other users in ps output until replicate hides it at start; use \
             PGPASSWORD, ~/.pgpass or --password-file instead"
        );
    }
    let code = match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("replicate: {e}");
            e.exit_code()
        }
    };
    std::process::exit(code);
}
