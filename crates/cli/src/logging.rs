//! Logging for every subcommand, set up once in `main`: `tracing` lines on stderr, filtered
//! with `RUST_LOG`-style directives from `DEVHEAL_LOG` (else `RUST_LOG`, else `info`), written
//! as text or as one JSON object per line (`--log-format`).

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One readable line per event.
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `fields` (with `message`).
    Json,
}

/// The environment variables read for the filter, in order.
const FILTER_VARS: [&str; 2] = ["DEVHEAL_LOG", "RUST_LOG"];

/// The filter the environment asks for, or `info`; a directive that does not parse is said on
/// stderr and the default is used (never a panic).
fn filter(var: impl Fn(&str) -> Option<String>) -> EnvFilter {
    let wanted =
        FILTER_VARS.iter().find_map(|name| var(name).filter(|v| !v.trim().is_empty()).map(|v| (*name, v)));
    match wanted {
        Some((name, directives)) => EnvFilter::try_new(&directives).unwrap_or_else(|e| {
            eprintln!("devheal: ignoring {name}={directives:?} ({e}); logging at info");
            EnvFilter::new("info")
        }),
        None => EnvFilter::new("info"),
    }
}

/// Install the process's subscriber: stderr, filtered, in `format`.
pub fn init(format: LogFormat) {
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter(|name| std::env::var(name).ok()));
    // A second init (there is none) would keep the first subscriber.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(false).try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::filter::LevelFilter;

    fn level(env: &[(&str, &str)]) -> Option<LevelFilter> {
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        filter(|name| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())).max_level_hint()
    }

    #[test]
    fn the_filter_comes_from_devheal_log_then_rust_log_else_info() {
        assert_eq!(level(&[]), Some(LevelFilter::INFO));
        assert_eq!(level(&[("RUST_LOG", "debug")]), Some(LevelFilter::DEBUG));
        assert_eq!(level(&[("DEVHEAL_LOG", "warn"), ("RUST_LOG", "debug")]), Some(LevelFilter::WARN));
        assert_eq!(level(&[("DEVHEAL_LOG", " "), ("RUST_LOG", "error")]), Some(LevelFilter::ERROR));
        // RUST_LOG-style directives: per target.
        assert_eq!(level(&[("RUST_LOG", "warn,devheal_controller=trace")]), Some(LevelFilter::TRACE));
        // A directive that does not parse: the default, no panic.
        assert_eq!(level(&[("DEVHEAL_LOG", "devheal=loud")]), Some(LevelFilter::INFO));
    }
}
