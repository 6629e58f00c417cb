//! TLS and secrets: `replicate` over SSL to clusters whose pg_hba.conf accepts TCP clients only
//! over SSL (`hostssl`), with a CA and server certificate made here by the `openssl` command;
//! certificate checks that fail say why (exit 3); passwords never show up in what `replicate`
//! prints, logs or writes.

use rserv_tests::pair::{assert_fails, assert_ok, Pair, DB};
use rserv_tests::{replicate_command, run_replicate, run_replicate_env, Cluster};
use std::fs;
use std::net::ToSocketAddrs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Password planted for the role `rserv_pw`; must never be printed.
const PLANTED: &str = "Pl4nted-Secret-7f3c9e";

/// A directory of certificates and keys, removed on drop.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    /// A CA, a server certificate it signs for `localhost` and `127.0.0.1`, a client
    /// certificate for the role `rserv_cert`, and an unrelated CA.
    fn make(name: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!("rserv-tls-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        chmod(&dir, 0o755); // the server reads its certificate from here
        let pki = Pki { dir };
        pki.ca("ca", "rserv test CA");
        pki.ca("wrong-ca", "rserv unrelated CA");
        pki.leaf(
            "server",
            "localhost",
            "extendedKeyUsage = serverAuth\nsubjectAltName = DNS:localhost, IP:127.0.0.1\n",
        );
        pki.leaf("client", "rserv_cert", "extendedKeyUsage = clientAuth\n");
        // The server refuses a key file others can read; it runs as `postgres` under root.
        let key = pki.path("server.key");
        chmod(&key, 0o600);
        if is_root() {
            let status = Command::new("chown")
                .args(["postgres:postgres", key.to_str().unwrap()])
                .status()
                .unwrap();
            assert!(status.success(), "chown postgres {}", key.display());
        }
        chmod(&pki.path("client.key"), 0o600);
        pki
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn arg(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    fn openssl(&self, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .output()
            .expect("the openssl command (Debian package openssl)");
        assert!(
            out.status.success(),
            "openssl {args:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn ca(&self, name: &str, cn: &str) {
        // Our own config file: independent of the system's openssl.cnf defaults.
        let cnf = format!("{name}.cnf");
        fs::write(
            self.path(&cnf),
            format!(
                "[req]\ndistinguished_name = dn\nprompt = no\nx509_extensions = ext\n\
                 [dn]\nCN = {cn}\n\
                 [ext]\nbasicConstraints = critical, CA:TRUE\n\
                 keyUsage = critical, keyCertSign, cRLSign\nsubjectKeyIdentifier = hash\n"
            ),
        )
        .unwrap();
        let (key, crt) = (format!("{name}.key"), format!("{name}.crt"));
        self.openssl(&[
            "req",
            "-x509",
            "-new",
            "-nodes",
            "-config",
            &cnf,
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-keyout",
            &key,
            "-out",
            &crt,
            "-days",
            "2",
        ]);
        chmod(&self.path(&crt), 0o644);
    }

    fn leaf(&self, name: &str, cn: &str, extensions: &str) {
        let cnf = format!("{name}.cnf");
        fs::write(
            self.path(&cnf),
            format!("[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = {cn}\n"),
        )
        .unwrap();
        let ext = format!("{name}.ext");
        fs::write(
            self.path(&ext),
            format!(
                "basicConstraints = CA:FALSE\nkeyUsage = critical, digitalSignature, \
                 keyEncipherment\nauthorityKeyIdentifier = keyid\n{extensions}"
            ),
        )
        .unwrap();
        let (key, csr, crt) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.crt"),
        );
        self.openssl(&[
            "req",
            "-new",
            "-nodes",
            "-config",
            &cnf,
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-keyout",
            &key,
            "-out",
            &csr,
        ]);
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &ext,
            "-out",
            &crt,
        ]);
        chmod(&self.path(&crt), 0o644);
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A master and a slave with SSL on: local (unix-socket) connections are trusted, TCP ones
/// only over SSL: `rserv_cert` with a client certificate, `rserv_pw` with its password,
/// everyone else trusted. The master replicates `t` (two rows); the slave has only the
/// extension. Connections are logged, to check they used SSL.
fn tls_pair(name: &str, pki: &Pki) -> Pair {
    let hba = pki.path(&format!("{name}-hba.conf"));
    fs::write(
        &hba,
        "local   all all                     trust\n\
         hostssl all rserv_cert 127.0.0.1/32 cert\n\
         hostssl all rserv_pw   127.0.0.1/32 scram-sha-256\n\
         hostssl all all        127.0.0.1/32 trust\n",
    )
    .unwrap();
    chmod(&hba, 0o644);
    let (crt, key, ca, hba) = (
        pki.arg("server.crt"),
        pki.arg("server.key"),
        pki.arg("ca.crt"),
        hba.display().to_string(),
    );
    let settings = [
        ("ssl", "on"),
        ("ssl_cert_file", crt.as_str()),
        ("ssl_key_file", key.as_str()),
        // Trusted issuer of client certificates (the `cert` method needs it).
        ("ssl_ca_file", ca.as_str()),
        ("hba_file", hba.as_str()),
        ("log_connections", "on"),
    ];
    let (master, slave) = std::thread::scope(|sc| {
        let m = sc.spawn(|| Cluster::start_with(&format!("{name}-m"), &settings));
        let s = sc.spawn(|| Cluster::start_with(&format!("{name}-s"), &settings));
        (m.join().expect("master"), s.join().expect("slave"))
    });
    for c in [&master, &slave] {
        c.create_db(DB);
        c.execute(
            DB,
            &format!(
                "CREATE EXTENSION rserv; CREATE ROLE rserv_cert LOGIN SUPERUSER; \
                 CREATE ROLE rserv_pw LOGIN SUPERUSER PASSWORD '{PLANTED}'"
            ),
        );
    }
    master.execute(
        DB,
        "CREATE TABLE t (id int PRIMARY KEY, v text); SELECT rserv_add_table('t'); \
         INSERT INTO t VALUES (1, 'one'), (2, 'two')",
    );
    Pair { master, slave }
}

/// `host=<host> port=<port> user=postgres dbname=app <extra>`.
fn tcp(c: &Cluster, host: &str, extra: &str) -> String {
    format!(
        "host={host} port={} user=postgres dbname={DB} {extra}",
        c.port()
    )
}

/// `replicate --master M --slave S --create-tables app app`, with `env`.
fn replicate_tcp(p: &Pair, host: &str, extra: &str, env: &[(&str, &str)]) -> Output {
    let (m, s) = (tcp(&p.master, host, extra), tcp(&p.slave, host, extra));
    run_replicate_env(
        &["--master", &m, "--slave", &s, "--create-tables", DB, DB],
        env,
    )
}

fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A name other than `localhost` that resolves to 127.0.0.1 only: an alias from /etc/hosts,
/// else `127.1` (the resolver's short form of 127.0.0.1, which is a host name, not an IP
/// address, to the certificate check).
fn other_loopback_name() -> String {
    let only_loopback = |name: &str| {
        (name, 5432)
            .to_socket_addrs()
            .map(|addrs| {
                let addrs: Vec<_> = addrs.collect();
                !addrs.is_empty()
                    && addrs
                        .iter()
                        .all(|a| a.ip() == std::net::Ipv4Addr::LOCALHOST)
            })
            .unwrap_or(false)
    };
    let hosts = fs::read_to_string("/etc/hosts").unwrap_or_default();
    for line in hosts.lines() {
        let mut fields = line.split('#').next().unwrap_or("").split_whitespace();
        if fields.next() != Some("127.0.0.1") {
            continue;
        }
        if let Some(name) = fields.find(|n| {
            !n.starts_with("localhost")
                && n.parse::<std::net::IpAddr>().is_err()
                && only_loopback(n)
        }) {
            return name.to_string();
        }
    }
    assert!(only_loopback("127.1"), "no second name for 127.0.0.1");
    "127.1".to_string()
}

/// Every connection `replicate` made to `c` (application_name=replicate) used SSL.
fn assert_replicate_used_ssl(c: &Cluster) {
    let log = fs::read_to_string(c.log_file()).unwrap_or_default();
    let ours: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("connection authorized") && l.contains("application_name=replicate"))
        .collect();
    assert!(!ours.is_empty(), "no replicate connection logged:\n{log}");
    for line in ours {
        assert!(
            line.contains("SSL enabled"),
            "a connection without SSL: {line}"
        );
    }
}

#[test]
fn replication_over_ssl() {
    let pki = Pki::make("tls");
    let p = tls_pair("tls", &pki);
    let ca = pki.arg("ca.crt");

    // sslmode=require: encrypted, certificate not checked; --create-tables makes t.
    let out = replicate_tcp(&p, "localhost", "sslmode=require", &[]);
    assert_ok(&out, "sslmode=require");
    p.assert_equal("t");
    assert_eq!(Pair::rows(&p.slave, "t").len(), 2);

    // verify-full with the CA, by name (DNS subjectAltName) ...
    p.master.execute(DB, "INSERT INTO t VALUES (3, 'three')");
    let full = format!("sslmode=verify-full sslrootcert={ca}");
    assert_ok(
        &replicate_tcp(&p, "localhost", &full, &[]),
        "verify-full, host=localhost",
    );
    p.assert_equal("t");
    // ... and by address (IP subjectAltName), with PGSSLMODE and PGSSLROOTCERT.
    p.master.execute(DB, "UPDATE t SET v = 'ONE' WHERE id = 1");
    assert_ok(
        &replicate_tcp(
            &p,
            "127.0.0.1",
            "",
            &[("PGSSLMODE", "verify-full"), ("PGSSLROOTCERT", &ca)],
        ),
        "verify-full from the environment, host=127.0.0.1",
    );
    p.assert_equal("t");
    let expected = Pair::rows(&p.master, "t");
    p.master.execute(DB, "INSERT INTO t VALUES (4, 'four')");

    // The wrong CA: the chain is refused, with the reason and the file named.
    let wrong = pki.arg("wrong-ca.crt");
    for mode in ["verify-ca", "verify-full"] {
        let out = replicate_tcp(
            &p,
            "localhost",
            &format!("sslmode={mode} sslrootcert={wrong}"),
            &[],
        );
        assert_fails(
            &out,
            3,
            &[
                "master: could not connect to host=localhost",
                // The server sends its CA along (it has ssl_ca_file): OpenSSL's words for an
                // unknown CA are then "self-signed certificate in certificate chain".
                "SSL error: certificate verify failed: ",
                &format!("sslmode={mode}"),
                "hint: the server certificate is not signed by a CA in the root certificate file",
                &wrong,
            ],
        );
    }
    // verify-full without any root certificate: refused before connecting.
    let out = replicate_tcp(&p, "localhost", "sslmode=verify-full", &[]);
    assert_fails(
        &out,
        3,
        &[
            "cannot set up SSL for host=localhost",
            "root.crt\" does not exist",
            "sslrootcert=FILE",
        ],
    );

    // A host name the certificate does not list: verify-full refuses it, verify-ca (which
    // checks the CA only) accepts it.
    let other = other_loopback_name();
    let out = replicate_tcp(&p, &other, &full, &[]);
    assert_fails(
        &out,
        3,
        &[
            &format!(
                "server certificate for \"localhost\", \"127.0.0.1\" does not match host name \"{other}\""
            ),
            "hint: sslmode=verify-full checks that the server certificate names the host",
        ],
    );
    assert_eq!(Pair::rows(&p.slave, "t"), expected, "nothing applied");
    assert_ok(
        &replicate_tcp(
            &p,
            &other,
            &format!("sslmode=verify-ca sslrootcert={ca}"),
            &[],
        ),
        "verify-ca with another name",
    );
    p.assert_equal("t");

    // Without SSL, hostssl-only pg_hba.conf refuses us, and the hint says what to do.
    p.master.execute(DB, "INSERT INTO t VALUES (5, 'five')");
    let out = replicate_tcp(&p, "localhost", "sslmode=disable", &[]);
    assert_fails(
        &out,
        3,
        &[
            "no pg_hba.conf entry for host \"127.0.0.1\", user \"postgres\", database \"app\", no encryption",
            "hint: the server accepts this client only over SSL",
        ],
    );
    // prefer tries SSL first and then without: both attempts are reported.
    let out = replicate_tcp(
        &p,
        "localhost",
        &format!("sslmode=prefer sslrootcert={wrong}"),
        &[],
    );
    assert_fails(
        &out,
        3,
        &[
            "with SSL: SSL error: certificate verify failed",
            "; then without SSL: FATAL: no pg_hba.conf entry",
            "hint: the server certificate is not signed by a CA",
        ],
    );
    // prefer (the default) uses SSL when offered; allow retries with SSL when refused.
    assert_ok(&replicate_tcp(&p, "localhost", "", &[]), "default sslmode");
    p.assert_equal("t");
    p.master.execute(DB, "INSERT INTO t VALUES (6, 'six')");
    assert_ok(
        &replicate_tcp(&p, "localhost", "sslmode=allow", &[]),
        "sslmode=allow",
    );
    p.assert_equal("t");

    // A client certificate (sslcert/sslkey) for the `cert` method; without it, a hint.
    p.master.execute(DB, "INSERT INTO t VALUES (7, 'seven')");
    let as_cert_user = |extra: &str| {
        let m = format!(
            "host=localhost port={} dbname={DB} user=rserv_cert {extra}",
            p.master.port()
        );
        let s = format!(
            "host=localhost port={} dbname={DB} user=rserv_cert {extra}",
            p.slave.port()
        );
        run_replicate(&["--master", &m, "--slave", &s, DB, DB])
    };
    let out = as_cert_user(&format!("sslmode=verify-full sslrootcert={ca}"));
    assert_fails(
        &out,
        3,
        &["certificate", "hint: the server wants a client certificate"],
    );
    let out = as_cert_user(&format!(
        "sslmode=verify-full sslrootcert={ca} sslcert={} sslkey={}",
        pki.arg("client.crt"),
        pki.arg("client.key")
    ));
    assert_ok(&out, "client certificate");
    p.assert_equal("t");
    assert_eq!(Pair::rows(&p.slave, "t").len(), 7);

    assert_replicate_used_ssl(&p.master);
    assert_replicate_used_ssl(&p.slave);
}

#[test]
fn passwords_are_never_shown() {
    let pki = Pki::make("secret");
    let p = tls_pair("secret", &pki);
    let ca = pki.arg("ca.crt");
    let ssl = format!("sslmode=verify-full sslrootcert={ca}");
    let conn = |c: &Cluster, extra: &str| {
        format!(
            "host=localhost port={} dbname={DB} user=rserv_pw {ssl} {extra}",
            c.port()
        )
    };
    let (m, s) = (conn(&p.master, ""), conn(&p.slave, ""));
    let base = [
        "--master",
        &m,
        "--slave",
        &s,
        "--create-tables",
        "--debug",
        "-v",
    ];
    let with = |extra: &[&str]| -> Vec<String> {
        base.iter().chain(extra).map(|s| s.to_string()).collect()
    };
    let run = |args: &[String], env: &[(&str, &str)]| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut all = vec![("RSERV_LOG", "debug")];
        all.extend_from_slice(env);
        run_replicate_env(&args, &all)
    };
    let check = |out: &Output, what: &str, secret: &str| {
        let text = output_text(out);
        assert!(
            !text.contains(secret),
            "{what}: the password was printed:\n{text}"
        );
    };

    // A wrong password: refused, and neither password is printed.
    let wrong = "Wr0ng-Secret-51d2";
    let out = run(&with(&[DB, DB]), &[("PGPASSWORD", wrong)]);
    assert_fails(
        &out,
        3,
        &[
            "password authentication failed for user \"rserv_pw\"",
            "the password was taken from PGPASSWORD",
        ],
    );
    check(&out, "wrong PGPASSWORD", wrong);

    // The right one from PGPASSWORD, through a snapshot file kept by --debug.
    let snapshot = pki.path("changes.snapshot");
    let snap = snapshot.display().to_string();
    let out = run(
        &with(&["--snapshot", &snap, DB, DB]),
        &[("PGPASSWORD", PLANTED)],
    );
    assert_ok(&out, "PGPASSWORD");
    check(&out, "PGPASSWORD", PLANTED);
    p.assert_equal("t");
    let written = fs::read(&snapshot).expect("the snapshot file kept by --debug");
    assert!(!written.is_empty());
    assert!(
        !String::from_utf8_lossy(&written).contains(PLANTED),
        "the snapshot file holds the password"
    );

    // From a password file, from the connection string, from the flag (which warns).
    p.master.execute(DB, "INSERT INTO t VALUES (3, 'three')");
    let pass = pki.path("pgpass");
    fs::write(&pass, format!("*:*:*:rserv_pw:{PLANTED}\n")).unwrap();
    chmod(&pass, 0o600);
    let out = run(&with(&[DB, DB]), &[("PGPASSFILE", pass.to_str().unwrap())]);
    assert_ok(&out, "PGPASSFILE");
    check(&out, "PGPASSFILE", PLANTED);
    p.master.execute(DB, "INSERT INTO t VALUES (4, 'four')");
    let (m_pw, s_pw) = (
        conn(&p.master, &format!("password={PLANTED}")),
        conn(&p.slave, &format!("password={PLANTED}")),
    );
    let out = run_replicate_env(
        &["--master", &m_pw, "--slave", &s_pw, "--debug", "-v", DB, DB],
        &[("RSERV_LOG", "debug")],
    );
    assert_ok(&out, "password= in the connection string");
    check(&out, "password=", PLANTED);
    let flag = format!("--password={PLANTED}");
    let out = run(&with(&[&flag, DB, DB]), &[]);
    assert_ok(&out, "--password");
    check(&out, "--password", PLANTED);
    assert!(output_text(&out).contains("visible to other users in ps output"));
    p.assert_equal("t");

    // A connection string that is refused is shown with the password masked.
    let bad = conn(&p.master, &format!("password={PLANTED} hostaddr=127.0.0.1"));
    let out = run_replicate(&["--master", &bad, "--slave", &s, DB, DB]);
    assert_fails(&out, 2, &["hostaddr", "password=****"]);
    check(&out, "a refused connection string", PLANTED);

    // The daemon, with the password in its environment: not in its arguments (ps), not in
    // its debug log.
    p.master.execute(DB, "INSERT INTO t VALUES (5, 'five')");
    let log_path = pki.path("daemon.log");
    let log = fs::File::create(&log_path).unwrap();
    let mut daemon = replicate_command()
        .args([
            "run",
            "--interval=0.5",
            "--master",
            &m,
            "--slave",
            &s,
            DB,
            DB,
        ])
        .env("PGPASSWORD", PLANTED)
        .env("RSERV_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("replicate run");
    let pid = daemon.id().to_string();
    let until = Instant::now() + Duration::from_secs(60);
    while Pair::rows(&p.slave, "t") != Pair::rows(&p.master, "t") {
        if Instant::now() > until {
            let _ = daemon.kill();
            let _ = daemon.wait();
            panic!(
                "replicate run did not catch up:\n{}",
                fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let ps = Command::new("ps")
        .args(["-ww", "-o", "args=", "-p", &pid])
        .output()
        .expect("ps");
    let args = String::from_utf8_lossy(&ps.stdout);
    assert!(args.contains("replicate"), "ps shows the daemon: {args:?}");
    assert!(!args.contains(PLANTED), "ps shows the password: {args}");
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let status = daemon.wait().expect("wait for replicate run");
    let log = fs::read_to_string(&log_path).unwrap_or_default();
    assert!(status.success(), "replicate run: {status}\n{log}");
    assert!(
        !log.contains(PLANTED),
        "the daemon logged the password:\n{log}"
    );
    assert_replicate_used_ssl(&p.master);
}

#[test]
fn server_without_ssl() {
    // The harness default: ssl = off, any TCP client trusted.
    let c = Cluster::start("nossl");
    c.create_db(DB);
    c.execute(DB, "CREATE EXTENSION rserv");
    let status = |conninfo: &str| run_replicate(&["--master", conninfo, "status", DB]);
    let out = status(&tcp(&c, "127.0.0.1", "sslmode=require"));
    assert_fails(
        &out,
        3,
        &[
            "server does not support SSL, but SSL was required (sslmode=require)",
            "hint: enable SSL on the server",
        ],
    );
    // prefer and allow settle for no SSL.
    for mode in ["prefer", "allow"] {
        let out = status(&tcp(&c, "127.0.0.1", &format!("sslmode={mode}")));
        assert_ok(&out, mode);
    }
    // Over a unix-domain socket sslmode is ignored (libpq), even verify-full without a CA.
    let socket = format!(
        "host={} port={} user=postgres dbname={DB} sslmode=verify-full",
        c.socket_dir().display(),
        c.port()
    );
    assert_ok(&status(&socket), "verify-full over a unix socket");
}
