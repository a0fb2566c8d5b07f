//! Finding (and if needed building) the binaries under test, and running them.

use std::{
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{OnceLock, mpsc},
    time::Duration,
};

/// The directory holding `passage-agent`, `passage-dispatcher`, `passage-gateway` for the
/// profile this test was built with. They are built once per test process; cargo makes that a
/// no-op when they are fresh.
///
/// `PASSAGE_BIN_DIR` names a directory whose binaries are already built and used as they are:
/// `scripts/test.sh` builds them with `cargo build --workspace --all-targets` first, so they
/// share the test build's features and dependencies. (A `cargo build -p …` of the services
/// alone resolves features differently and compiles some 130 dependencies a second time.)
pub fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(dir) = std::env::var_os("PASSAGE_BIN_DIR") {
            let dir = PathBuf::from(dir);
            for name in [
                "passage-agent",
                "passage-dispatcher",
                "passage-gateway",
                "passage",
            ] {
                assert!(
                    dir.join(name).is_file(),
                    "PASSAGE_BIN_DIR={} holds no {name}: build the binaries first",
                    dir.display()
                );
            }
            return dir;
        }
        // target/<profile>/deps/<test binary> → target/<profile>
        let exe = std::env::current_exe().expect("current test executable");
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test binary lives in target/<profile>/deps")
            .to_path_buf();
        let release = dir.file_name().is_some_and(|n| n == "release");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build.args([
            "build",
            "--quiet",
            "-p",
            "passage-agent",
            "-p",
            "passage-dispatcher",
            "-p",
            "passage-gateway",
            "-p",
            "passage",
            "--bins",
        ]);
        if release {
            build.arg("--release");
        }
        let status = build
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("running cargo build for the service binaries");
        assert!(status.success(), "building the service binaries failed");
        dir
    })
}

/// Runs `bin_dir()/name args` to completion: (success, stdout, stderr). A command still running
/// after a minute is killed and the test fails, rather than hanging the suite.
pub fn run_to_end(name: &str, args: &[&str]) -> (bool, String, String) {
    let mut child = Command::new(bin_dir().join(name))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("running {name}: {err}"));
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut text);
            }
            String::from_utf8_lossy(&text).into_owned()
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for the command") {
            break Some(status);
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (stdout, stderr) = (
        stdout.join().unwrap_or_default(),
        stderr.join().unwrap_or_default(),
    );
    let Some(status) = status else {
        panic!("{name} {args:?} still running after 60 s; stderr:\n{stderr}");
    };
    (status.success(), stdout, stderr)
}

/// A child process killed when dropped, whose stderr goes to a log file and stdout to a
/// second one. Dropping it fails the test if the process panicked (a panic in any thread or
/// task prints "panicked at" on stderr), so no test passes over a crash it did not look for.
pub struct Process {
    child: Child,
    /// Where its stderr (the structured log) goes.
    pub log_path: PathBuf,
    /// Where its stdout goes.
    pub stdout_path: PathBuf,
    /// The first line it printed on stdout (its listening addresses).
    pub ready_line: String,
    name: String,
}

/// The log filter of processes started with [`Process::start`]: `info`, or what
/// `PASSAGE_TEST_LOG` says. Leak checks start theirs with `debug`
/// ([`Process::start_with_log`]).
pub fn default_log_filter() -> String {
    std::env::var("PASSAGE_TEST_LOG").unwrap_or_else(|_| "info".into())
}

impl Process {
    /// Starts `bin_dir()/name args` with `env` added to its environment, logging stderr to
    /// `log_path`, and waits (up to 30 s) for its first stdout line.
    pub fn start(name: &str, args: &[&str], env: &[(String, String)], log_path: &Path) -> Self {
        Self::start_with_log(name, args, env, log_path, &default_log_filter())
    }

    /// [`Process::start`] with the log filter `filter` (`RUST_LOG`).
    pub fn start_with_log(
        name: &str,
        args: &[&str],
        env: &[(String, String)],
        log_path: &Path,
        filter: &str,
    ) -> Self {
        let log = std::fs::File::create(log_path).expect("creating the process log");
        let stdout_path = log_path.with_extension("stdout");
        let mut stdout_file =
            std::fs::File::create(&stdout_path).expect("creating the process stdout file");
        let mut child = Command::new(bin_dir().join(name))
            .args(args)
            .env("RUST_LOG", filter)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|err| panic!("starting {name}: {err}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            use std::io::Write as _;
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = writeln!(stdout_file, "{line}");
                let _ = tx.send(line);
            }
            // Keep draining (into the file, for leak checks) so the child never blocks.
            for line in lines.map_while(Result::ok) {
                let _ = writeln!(stdout_file, "{line}");
            }
        });
        let ready_line = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let log = std::fs::read_to_string(log_path).unwrap_or_default();
                panic!("{name} did not start within 30 s; its log:\n{log}");
            }
        };
        Self {
            child,
            log_path: log_path.to_path_buf(),
            stdout_path,
            ready_line,
            name: name.to_owned(),
        }
    }

    /// The value of `key=` in the ready line.
    pub fn ready_value(&self, key: &str) -> String {
        self.ready_line
            .split_whitespace()
            .find_map(|word| word.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("no {key}= in {:?}", self.ready_line))
            .to_owned()
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its resident memory, from `/proc` (Linux).
    pub fn resident_bytes(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Kills the process at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits up to `timeout` for a clean exit; true when it exited cleanly.
    pub fn terminate(&mut self, timeout: Duration) -> bool {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        false
    }

    /// CPU time (user + system) the process has used so far, where `/proc` tells.
    pub fn cpu_time(&self) -> Option<Duration> {
        cpu_time_of(self.child.id())
    }

    /// Everything it has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Everything it has printed on stdout so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    /// Both its log and its stdout, for leak checks.
    pub fn output(&self) -> String {
        format!("{}\n{}", self.log(), self.stdout())
    }

    /// Fails the test if the process panicked.
    pub fn assert_no_panic(&self) {
        let output = self.output();
        if let Some(at) = output.find("panicked at") {
            let start = output[..at].rfind('\n').map_or(0, |n| n + 1);
            let end = output[at..].find("\n\n").map_or(output.len(), |n| at + n);
            panic!("{} panicked:\n{}", self.name, &output[start..end]);
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
        if !std::thread::panicking() {
            self.assert_no_panic();
        }
    }
}

/// CPU time (user + system) of process `pid` from `/proc/<pid>/stat` (Linux; `None` elsewhere).
pub fn cpu_time_of(pid: u32) -> Option<Duration> {
    Some(proc_stat(pid)?.cpu)
}

/// What `/proc/<pid>/stat` says of a process, read once.
#[derive(Debug, Clone, Copy)]
pub struct ProcStat {
    /// Its parent's pid.
    pub parent: u32,
    /// Its own CPU time, user + system.
    pub cpu: Duration,
    /// The CPU time of the children it has waited for, user + system.
    pub reaped_cpu: Duration,
}

/// `/proc/<pid>/stat` of `pid` (Linux; `None` elsewhere, or once it has exited).
pub fn proc_stat(pid: u32) -> Option<ProcStat> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the parenthesised command name: index 0 is field 3 (the state, a
    // letter, read as 0), so field N is at index N − 3.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<u64> = rest
        .split_whitespace()
        .map(|field| field.parse().unwrap_or(0))
        .collect();
    // USER_HZ is 100 on every Linux architecture Passage targets.
    let ticks = |first: usize| -> Option<Duration> {
        Some(Duration::from_millis(
            (fields.get(first)? + fields.get(first + 1)?) * 10,
        ))
    };
    Some(ProcStat {
        // ppid: field 4.
        parent: u32::try_from(*fields.get(1)?).ok()?,
        // utime, stime: fields 14 and 15; cutime, cstime: 16 and 17.
        cpu: ticks(11)?,
        reaped_cpu: ticks(13)?,
    })
}
