//! TCP keepalives and `tcp_user_timeout`: libpq's connection keywords (`keepalives`,
//! `keepalives_idle`, `keepalives_interval`, `keepalives_count`, `tcp_user_timeout`), with
//! replicate's own defaults where the connection string says nothing. libpq leaves them to the
//! system (a first probe after 2 hours of silence); replicate's defaults notice a peer that
//! vanished behind a dead network in about 25 s, whether the connection is idle or has data in
//! flight. They apply to TCP connections only (ignored over unix-domain sockets, as by libpq).

use std::time::Duration;

use super::ConnError;

/// Seconds of silence before the first keepalive probe, when the connection string gives none.
pub const DEFAULT_IDLE: Duration = Duration::from_secs(10);
/// Seconds between unanswered probes.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
/// Unanswered probes before the connection is dropped.
pub const DEFAULT_COUNT: u32 = 3;
/// How long sent data may stay unacknowledged before the connection is dropped (also bounds the
/// keepalive probing, as on Linux `TCP_USER_TIMEOUT` does).
pub const DEFAULT_TCP_USER_TIMEOUT: Duration = Duration::from_secs(25);

/// The connection-string keywords this file reads.
pub(super) const KEYWORDS: [&str; 5] = [
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
];

/// Resolved keepalive settings of one endpoint. `None` in a field: the system's default (an
/// explicit 0 in the connection string, as in libpq).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keepalive {
    pub enabled: bool,
    pub idle: Option<Duration>,
    pub interval: Option<Duration>,
    pub count: Option<u32>,
    pub tcp_user_timeout: Option<Duration>,
}

/// What a connection string says (each `None` when absent; an inner `None`: 0, the system's
/// default).
#[derive(Debug, Default)]
pub(super) struct KeepaliveSettings {
    enabled: Option<bool>,
    idle: Option<Option<Duration>>,
    interval: Option<Option<Duration>>,
    count: Option<Option<u32>>,
    tcp_user_timeout: Option<Option<Duration>>,
}

impl KeepaliveSettings {
    /// Read one of [`KEYWORDS`]; `origin` names the connection string in errors.
    pub(super) fn set(&mut self, key: &str, value: &str, origin: &str) -> Result<(), ConnError> {
        let n = value
            .trim()
            .parse::<u32>()
            .map_err(|_| ConnError::InvalidSetting {
                setting: keyword(key),
                value: format!("{value:?}"),
                origin: origin.into(),
                reason: if key == "tcp_user_timeout" {
                    "expected a whole number of milliseconds (0: the system's default)".into()
                } else if key == "keepalives" {
                    "expected 1 (on) or 0 (off)".into()
                } else {
                    "expected a whole number (0: the system's default)".into()
                },
            })?;
        let secs = (n > 0).then(|| Duration::from_secs(n.into()));
        match key {
            "keepalives" => self.enabled = Some(n != 0),
            "keepalives_idle" => self.idle = Some(secs),
            "keepalives_interval" => self.interval = Some(secs),
            "keepalives_count" => self.count = Some((n > 0).then_some(n)),
            _ => self.tcp_user_timeout = Some((n > 0).then(|| Duration::from_millis(n.into()))),
        }
        Ok(())
    }

    /// The connection string's settings over replicate's defaults.
    pub(super) fn resolve(&self) -> Keepalive {
        Keepalive {
            enabled: self.enabled.unwrap_or(true),
            idle: self.idle.unwrap_or(Some(DEFAULT_IDLE)),
            interval: self.interval.unwrap_or(Some(DEFAULT_INTERVAL)),
            count: self.count.unwrap_or(Some(DEFAULT_COUNT)),
            tcp_user_timeout: self
                .tcp_user_timeout
                .unwrap_or(Some(DEFAULT_TCP_USER_TIMEOUT)),
        }
    }
}

/// The keyword as a `&'static str` for [`ConnError::InvalidSetting`].
fn keyword(key: &str) -> &'static str {
    KEYWORDS
        .iter()
        .find(|k| **k == key)
        .copied()
        .unwrap_or("keepalives")
}

impl Keepalive {
    /// Fill a `postgres::Config` (rust-postgres applies them to TCP sockets only).
    pub(super) fn apply(&self, config: &mut postgres::Config) {
        config.keepalives(self.enabled);
        if let Some(idle) = self.idle {
            config.keepalives_idle(idle);
        }
        if let Some(interval) = self.interval {
            config.keepalives_interval(interval);
        }
        if let Some(count) = self.count {
            config.keepalives_retries(count);
        }
        if let Some(t) = self.tcp_user_timeout {
            config.tcp_user_timeout(t);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> Result<Keepalive, ConnError> {
        let mut s = KeepaliveSettings::default();
        for (k, v) in pairs {
            s.set(k, v, "connection string x")?;
        }
        Ok(s.resolve())
    }

    #[test]
    fn defaults_notice_a_dead_peer_in_about_25_seconds() {
        let k = settings(&[]).unwrap();
        assert!(k.enabled);
        let probing = k.idle.unwrap() + k.interval.unwrap() * k.count.unwrap();
        assert!(probing <= Duration::from_secs(30), "{probing:?}");
        assert!(k.tcp_user_timeout.unwrap() <= Duration::from_secs(30));
    }

    #[test]
    fn libpq_keywords_are_read_and_zero_means_the_system_default() {
        let k = settings(&[
            ("keepalives", "0"),
            ("keepalives_idle", "30"),
            ("keepalives_interval", "0"),
            ("keepalives_count", "7"),
            ("tcp_user_timeout", "1500"),
        ])
        .unwrap();
        assert_eq!(
            k,
            Keepalive {
                enabled: false,
                idle: Some(Duration::from_secs(30)),
                interval: None,
                count: Some(7),
                tcp_user_timeout: Some(Duration::from_millis(1500)),
            }
        );
        let mut config = postgres::Config::new();
        k.apply(&mut config);
        assert!(!config.get_keepalives());
        assert_eq!(config.get_keepalives_idle(), Duration::from_secs(30));
        assert_eq!(config.get_keepalives_retries(), Some(7));
        assert_eq!(
            config.get_tcp_user_timeout(),
            Some(&Duration::from_millis(1500))
        );
    }

    #[test]
    fn bad_values_are_refused_naming_the_keyword() {
        for (k, v) in [
            ("keepalives", "yes"),
            ("keepalives_idle", "-1"),
            ("keepalives_count", "x"),
            ("tcp_user_timeout", "1.5"),
        ] {
            let err = settings(&[(k, v)]).unwrap_err();
            assert!(
                matches!(&err, ConnError::InvalidSetting { setting, .. } if *setting == k),
                "{err}"
            );
        }
    }
}
