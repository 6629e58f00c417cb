//! `replicate.toml`, the daemon's configuration file: one `[master]`, one or more
//! `[[slave]]`, an optional `[run]` (`deploy/replicate.toml` is a commented example).

use crate::conn::ConnArgs;
use crate::error::Error;
use serde::Deserialize;
use std::path::Path;

/// A connection as written in the configuration file.
#[derive(Deserialize, Debug, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// libpq key=value string or postgresql:// URL
    pub conninfo: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub user: Option<String>,
    pub dbname: Option<String>,
}

impl NodeConfig {
    pub(super) fn args(&self) -> ConnArgs {
        ConnArgs {
            conninfo: self.conninfo.clone(),
            host: self.host.clone(),
            port: self.port,
            user: self.user.clone(),
            password: None,
            dbname: self.dbname.clone(),
        }
    }
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct SlaveConfig {
    /// shown in logs and metrics; defaults to the database name
    pub name: Option<String>,
    /// this slave's id on the master; without it, the id the master binds this slave
    /// database's node id to (the one it has, else the lowest free one from 1 up)
    pub server: Option<i32>,
    #[serde(default)]
    pub create_tables: bool,
    #[serde(flatten)]
    pub node: NodeConfig,
}

#[derive(Deserialize, Debug, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// longest wait between cycles when no NOTIFY arrives, seconds (default 1)
    pub interval: Option<f64>,
    /// serve Prometheus metrics here, e.g. "127.0.0.1:9187"
    pub metrics_addr: Option<String>,
    /// remove log rows no slave needs after each cycle (default true)
    pub clean_log: Option<bool>,
    /// password file in ~/.pgpass format for every connection
    pub password_file: Option<String>,
    /// seconds a slave's apply waits for a lock before it rolls back, names the holder and
    /// retries (0: wait forever; default 10)
    pub lock_timeout: Option<f64>,
    /// seconds without data after which a connection is checked over a new one (0: never;
    /// default 10)
    pub read_timeout: Option<f64>,
}

/// `replicate.toml`: one `[master]`, one or more `[[slave]]`, an optional `[run]`.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub master: NodeConfig,
    #[serde(rename = "slave")]
    pub slaves: Vec<SlaveConfig>,
    #[serde(default)]
    pub run: RunConfig,
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::Usage(format!("cannot read configuration {}: {e}", path.display()))
        })?;
        let config: Config = toml::from_str(&text)
            .map_err(|e| Error::Usage(format!("invalid configuration {}: {e}", path.display())))?;
        if config.slaves.is_empty() {
            return Err(Error::Usage(format!(
                "{}: no [[slave]] section: name at least one slave",
                path.display()
            )));
        }
        let mut ids: Vec<i32> = config.slaves.iter().filter_map(|s| s.server).collect();
        ids.sort_unstable();
        if ids.windows(2).any(|w| w[0] == w[1]) {
            return Err(Error::Usage(format!(
                "{}: two [[slave]] sections share a server id: give each slave its own `server = N`",
                path.display()
            )));
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_configuration_parses() {
        let cfg: Config = toml::from_str(include_str!("../../../deploy/replicate.toml")).unwrap();
        assert_eq!(cfg.slaves.len(), 2);
        assert_eq!(cfg.slaves[0].server, Some(1));
        assert!(cfg.slaves[0].create_tables);
        assert_eq!(cfg.run.metrics_addr.as_deref(), Some("127.0.0.1:9187"));
        assert_eq!(cfg.run.lock_timeout, Some(10.0));
        assert_eq!(cfg.run.read_timeout, Some(10.0));
    }

    #[test]
    fn misspelt_keys_and_shared_ids_are_refused() {
        assert!(toml::from_str::<Config>("[master]\nhots = \"x\"\n[[slave]]\n").is_err());
        let dir = std::env::temp_dir().join(format!("rserv-cfg-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("c.toml");
        std::fs::write(
            &f,
            "[master]\n[[slave]]\nserver = 1\n[[slave]]\nserver = 1\n",
        )
        .unwrap();
        assert!(
            matches!(Config::load(&f), Err(Error::Usage(m)) if m.contains("share a server id"))
        );
        std::fs::write(&f, "[master]\nslave = []\n").unwrap();
        assert!(Config::load(&f).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
