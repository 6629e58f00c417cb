//! Logging. Every message `replicate` writes to stderr goes through `tracing`: progress and
//! results of the one-shot commands, `--verbose` steps, warnings, errors, the server's NOTICEs
//! and the daemon's structured lines. What stays on stdout is each command's output (a change
//! set, a sync id, a report).
//!
//! Two text styles and JSON:
//! - [`Style::Plain`] (every command but `run`): the message alone, as the seed's tools wrote
//!   it (`>>>>>>>>>>>>> Prepare Snapshot`, `change set 7 applied: ...`); warnings start with
//!   `replicate: warning: `, errors with `replicate: `, a server NOTICE is shown as psql shows
//!   it (`NOTICE: ...`). Never coloured.
//! - [`Style::Full`] (`replicate run`): timestamp, level, message and fields, one line per
//!   event; coloured only when stderr is a terminal (not in a file or the journal).
//! - `--log-format json`: one JSON object per line (timestamp, level, target, message and
//!   fields), for log shippers, whatever the command.
//!
//! `RSERV_LOG` takes a tracing filter (`debug`, `replicate=debug`, ...); the default is
//! `info`.

use std::io::IsTerminal;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

/// Target of the events that carry a server's NOTICE or WARNING (shown as the server wrote
/// it).
pub const NOTICE: &str = "replicate::notice";

/// `--log-format`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Lines for people (plain for one-shot commands, with time and level for `run`)
    #[default]
    Text,
    /// One JSON object per line, for log shippers
    Json,
}

/// How text lines look (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    /// The message alone: the one-shot commands.
    Plain,
    /// Timestamp, level, message, fields: `replicate run`.
    Full,
}

/// Whether text lines get ANSI colours: only in the full style, on a terminal.
pub fn colour(style: Style, stderr_is_terminal: bool) -> bool {
    style == Style::Full && stderr_is_terminal
}

/// Install the process's subscriber (stderr). A second call changes nothing.
pub fn init(format: LogFormat, style: Style) {
    let filter = EnvFilter::try_from_env("RSERV_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match (format, style) {
        (LogFormat::Json, _) => builder.json().flatten_event(true).try_init(),
        (LogFormat::Text, Style::Full) => builder
            .with_ansi(colour(style, std::io::stderr().is_terminal()))
            .try_init(),
        (LogFormat::Text, Style::Plain) => builder.with_ansi(false).event_format(Plain).try_init(),
    };
}

/// [`Style::Plain`]: the message and its fields, with the seed-compatible prefixes.
struct Plain;

impl<S, N> FormatEvent<S, N> for Plain
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let meta = event.metadata();
        if meta.target() != NOTICE {
            match *meta.level() {
                Level::ERROR => writer.write_str("replicate: ")?,
                Level::WARN => writer.write_str("replicate: warning: ")?,
                _ => {}
            }
        }
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_and_never_in_plain_lines() {
        assert!(colour(Style::Full, true));
        assert!(!colour(Style::Full, false));
        assert!(!colour(Style::Plain, true));
        assert!(!colour(Style::Plain, false));
    }

    /// The plain style, through a subscriber writing into a buffer.
    #[test]
    fn plain_lines_are_the_seed_s() {
        use std::sync::{Arc, Mutex};
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let out = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .event_format(Plain)
            .with_writer(move || out.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(">>>>>>>>>>>>> Prepare Snapshot");
            tracing::warn!("--password is visible to other users in ps output");
            tracing::error!("master: could not connect");
            tracing::warn!(target: NOTICE, "WARNING: table t is not replicated");
            tracing::info!(rows = 3, "copying t");
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert_eq!(
            text,
            ">>>>>>>>>>>>> Prepare Snapshot\n\
             replicate: warning: --password is visible to other users in ps output\n\
             replicate: master: could not connect\n\
             WARNING: table t is not replicated\n\
             copying t rows=3\n"
        );
    }
}
