//! Running the workspace's `replicate` binary in tests: found next to the test binaries (or
//! where `RSERV_REPLICATE_BIN` says), started with a clean environment (no `PG*` variable, a
//! `HOME` of its own), killed with its process group when it runs too long.

use std::fs;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use crate::is_pg_env;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests crate lives inside the workspace")
        .to_path_buf()
}

/// Path of the `replicate` binary built from this workspace:
/// `$RSERV_REPLICATE_BIN` if set, else `<$CARGO_TARGET_DIR or <workspace>/target>/<profile>/replicate`
/// with profile `debug` (or `$RSERV_PROFILE`), else next to the running test binary.
/// Panics with "build it first: cargo build -p replicate" if missing. Warns (once) on stderr if
/// the binary is older than the `replicate/` sources.
pub fn replicate_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("RSERV_REPLICATE_BIN") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "RSERV_REPLICATE_BIN={} does not exist",
            p.display()
        );
        return p;
    }
    let profile_env = std::env::var("RSERV_PROFILE").ok();
    let profile = match profile_env.as_deref() {
        None | Some("") | Some("dev") | Some("test") => "debug",
        Some("bench") => "release",
        Some(p) => p,
    };
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(t) if Path::new(&t).is_absolute() => PathBuf::from(t),
        Some(t) => workspace_root().join(t),
        None => workspace_root().join("target"),
    };
    let mut candidates = vec![target.join(profile).join("replicate")];
    if profile_env.is_none() {
        // <target>/<profile>/deps/<test binary>: covers a target dir set in .cargo/config.toml.
        if let Some(dir) = std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent()?.parent().map(Path::to_path_buf))
        {
            candidates.push(dir.join("replicate"));
        }
    }
    candidates.dedup();
    let Some(found) = candidates.iter().find(|p| p.is_file()) else {
        let release = if profile == "release" {
            " --release"
        } else {
            ""
        };
        panic!(
            "replicate binary not found (looked at {}): build it first: cargo build -p replicate{release}",
            candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    };
    static WARNED: OnceLock<()> = OnceLock::new();
    WARNED.get_or_init(|| warn_if_stale(found));
    found.clone()
}

fn newest_mtime(path: &Path) -> Option<SystemTime> {
    let meta = fs::metadata(path).ok()?;
    let mut newest = meta.modified().ok();
    if meta.is_dir() {
        for entry in fs::read_dir(path).ok()?.flatten() {
            newest = newest.max(newest_mtime(&entry.path()));
        }
    }
    newest
}

fn warn_if_stale(bin: &Path) {
    let src = workspace_root().join("replicate");
    let (Some(built), Some(source)) = (
        fs::metadata(bin).and_then(|m| m.modified()).ok(),
        newest_mtime(&src),
    ) else {
        return;
    };
    if source > built {
        eprintln!(
            "rserv-tests: WARNING: {} is older than the sources in {}; rebuild it: cargo build -p replicate",
            bin.display(),
            src.display()
        );
    }
}
/// A `Command` for the `replicate` binary with a clean environment: every `PG*` variable
/// (PGHOST, PGPORT, PGUSER, PGDATABASE, PGPASSWORD, PGPASSFILE, PGSSLMODE, PGSERVICE, ...) is
/// removed and HOME points to a directory that does not exist (so no `~/.pgpass`/`~/.pg_service.conf`
/// is read). For long-running/background use; [`run_replicate`] is the usual entry point.
pub fn replicate_command() -> Command {
    replicate_command_of(&replicate_bin())
}

/// [`replicate_command`] for the `replicate` binary at `bin` (another release's, say).
pub fn replicate_command_of(bin: &Path) -> Command {
    let mut cmd = Command::new(bin);
    for (key, _) in std::env::vars_os() {
        if is_pg_env(&key) {
            cmd.env_remove(key);
        }
    }
    cmd.env("HOME", "/nonexistent/rserv-tests-home");
    cmd.stdin(Stdio::null());
    cmd
}

/// Runs `replicate` with `args` and captures its output. See [`run_replicate_env`].
pub fn run_replicate(args: &[&str]) -> Output {
    run_replicate_env(args, &[])
}

/// Runs `replicate` with `args` and the extra environment `env`, captures stdout/stderr and
/// returns the `Output` (whatever the exit status). The caller's `PG*` variables are removed
/// and HOME is an empty temporary directory (deleted afterwards). stdin is /dev/null. Panics if
/// it cannot be started or runs longer than `$RSERV_REPLICATE_TIMEOUT` seconds (default 300;
/// the process is killed and its output shown).
pub fn run_replicate_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    run_replicate_of(&replicate_bin(), args, env)
}

/// [`run_replicate_env`] with the `replicate` binary at `bin`.
pub fn run_replicate_of(bin: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let home = TempDir::new("home");
    let mut cmd = replicate_command_of(bin);
    cmd.args(args)
        .env("HOME", &home.0)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let timeout = std::env::var("RSERV_REPLICATE_TIMEOUT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300u64);
    let what = format!("replicate {args:?}");
    run_with_timeout(&mut cmd, &what, Duration::from_secs(timeout))
}

/// Spawns `cmd` (stdout/stderr must be piped) in its own process group and waits up to
/// `timeout` for it to exit and close its output. On timeout (or panic) the whole process group
/// is killed, so no stray children are left behind.
fn run_with_timeout(cmd: &mut Command, what: &str, timeout: Duration) -> Output {
    struct KillOnDrop(Option<Child>);
    impl KillOnDrop {
        fn kill(&mut self) {
            if let Some(child) = &mut self.0 {
                // The child leads its own process group: kill the group, then the child itself.
                let _ = Command::new("kill")
                    .args(["-KILL", "--", &format!("-{}", child.id())])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            self.kill();
        }
    }
    cmd.process_group(0);
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what} ({:?}): {e}", cmd.get_program()));
    let mut guard = KillOnDrop(Some(child));
    let child = guard.0.as_mut().expect("child");
    let (tx, rx) = mpsc::channel::<(usize, Vec<u8>)>();
    let pipes: [Option<Box<dyn Read + Send>>; 2] = [
        child.stdout.take().map(|s| Box::new(s) as _),
        child.stderr.take().map(|s| Box::new(s) as _),
    ];
    for (i, pipe) in pipes.into_iter().enumerate() {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            let _ = tx.send((i, buf));
        });
    }
    drop(tx);
    let deadline = Instant::now() + timeout;
    let mut bufs: [Option<Vec<u8>>; 2] = [None, None];
    let mut status: Option<ExitStatus> = None;
    let mut timed_out = false;
    loop {
        if status.is_none() {
            status = child
                .try_wait()
                .unwrap_or_else(|e| panic!("waiting for {what}: {e}"));
        }
        if status.is_some() && bufs.iter().all(Option::is_some) {
            break;
        }
        if Instant::now() >= deadline {
            timed_out = true;
            guard.kill();
            // Collect what was written before the kill.
            while let Ok((i, buf)) = rx.recv_timeout(Duration::from_secs(5)) {
                bufs[i] = Some(buf);
                if bufs.iter().all(Option::is_some) {
                    break;
                }
            }
            break;
        }
        if let Ok((i, buf)) = rx.recv_timeout(Duration::from_millis(10)) {
            bufs[i] = Some(buf);
        }
    }
    let [stdout, stderr] = bufs.map(Option::unwrap_or_default);
    if timed_out {
        panic!(
            "{what} did not finish within {}s (exit status {}); its process group was killed\n--- stdout ---\n{}\n--- stderr ---\n{}",
            timeout.as_secs(),
            status.map_or_else(|| "none: still running".to_owned(), |s| s.to_string()),
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        );
    }
    guard.0 = None;
    Output {
        status: status.expect("exited"),
        stdout,
        stderr,
    }
}

/// An empty temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> TempDir {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let pid = std::process::id();
        loop {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!("rserv-test-{what}-{pid}-{n}"));
            match fs::create_dir(&dir) {
                Ok(()) => return TempDir(dir),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => panic!("cannot create {}: {e}", dir.display()),
            }
        }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A `replicate` run held at its test-only pause points (`RSERV_TEST_STEP=pause:<step>,...`,
/// see `replicate/src/steps.rs`): [`Stepped::wait_for`] returns once it says it paused at a
/// step, [`Stepped::resume`] lets it go on, [`Stepped::finish`] waits for it to exit. Killed
/// if dropped before it exited.
pub struct Stepped {
    child: Child,
    stderr: mpsc::Receiver<String>,
    seen: Vec<String>,
    stdout: Option<std::thread::JoinHandle<Vec<u8>>>,
}

impl Stepped {
    /// Start `replicate args` pausing at each of `steps`.
    pub fn start(args: &[String], steps: &[&str]) -> Stepped {
        let pauses: Vec<String> = steps.iter().map(|s| format!("pause:{s}")).collect();
        let mut cmd = replicate_command();
        cmd.args(args)
            .env("RSERV_TEST_STEP", pauses.join(","))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start replicate");
        let (tx, rx) = mpsc::channel();
        if let Some(err) = child.stderr.take() {
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let stdout = child.stdout.take().map(|mut out| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = out.read_to_end(&mut buf);
                buf
            })
        });
        Stepped {
            child,
            stderr: rx,
            seen: Vec::new(),
            stdout,
        }
    }

    /// Wait (up to two minutes) until it pauses at `step`; panics with its output if it exits
    /// or pauses elsewhere first.
    pub fn wait_for(&mut self, step: &str) {
        let deadline = Instant::now() + Duration::from_secs(120);
        let want = format!("replicate: paused at {step}");
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) => {
                    let done = line == want;
                    self.seen.push(line);
                    if done {
                        return;
                    }
                }
                Err(_) => panic!(
                    "replicate never paused at {step} (exit status {:?}); its stderr:\n{}",
                    self.child.try_wait(),
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Let it go on from the step it paused at.
    pub fn resume(&mut self) {
        use std::io::Write;
        if let Some(stdin) = self.child.stdin.as_mut() {
            let _ = stdin.write_all(b"\n");
            let _ = stdin.flush();
        }
    }

    /// Wait for it to exit: (exit code, stdout, stderr).
    pub fn finish(mut self) -> (Option<i32>, String, String) {
        self.child.stdin.take();
        let status = self.child.wait().expect("wait for replicate");
        while let Ok(line) = self.stderr.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(line);
        }
        let out = self
            .stdout
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        (
            status.code(),
            String::from_utf8_lossy(&out).into_owned(),
            self.seen.join("\n"),
        )
    }
}

impl Drop for Stepped {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
