//! A private PostgreSQL (Debian `postgresql` package): `initdb` into a temp dir, `postgres`
//! on a free 127.0.0.1 port, trust authentication, stopped when dropped.
//!
//! PostgreSQL refuses to run as root; as root (CI), the harness runs it as the `postgres`
//! system user the Debian package creates.

use std::{
    net::{TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// A running PostgreSQL server.
pub struct Postgres {
    dir: tempfile::TempDir,
    port: u16,
    child: Child,
}

fn bin_dir() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    versions
        .pop()
        .filter(|dir| dir.join("initdb").exists())
        .expect("PostgreSQL is missing: install the Debian package postgresql (the README's test command does)")
}

/// Whether `PASSAGE_PG_STATEMENTS` asks for statement statistics (`pg_stat_statements`).
fn statement_statistics() -> bool {
    std::env::var_os("PASSAGE_PG_STATEMENTS").is_some_and(|v| v == "1")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

/// `program args...`, as the `postgres` user when we are root (`setpriv` execs in place, so
/// the child we hold is postgres itself and signals reach it).
fn command(program: PathBuf) -> Command {
    if is_root() {
        let mut command = Command::new("setpriv");
        command
            .args([
                "--reuid=postgres",
                "--regid=postgres",
                "--init-groups",
                "--",
            ])
            .arg(program);
        command
    } else {
        Command::new(program)
    }
}

impl Postgres {
    /// Initialises and starts a server.
    pub fn start() -> Self {
        let bin = bin_dir();
        let dir = tempfile::tempdir().expect("temp dir for PostgreSQL");
        if is_root() {
            let status = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(
                status.success(),
                "chown of the PostgreSQL dir to postgres failed"
            );
        }
        let data = dir.path().join("data");
        let output = command(bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", "passage", "--no-sync", "-E", "UTF8"])
            .output()
            .expect("running initdb");
        assert!(
            output.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let log = std::fs::File::create(dir.path().join("postgres.log")).expect("log file");
        let child = command(bin.join("postgres"))
            .arg("-D")
            .arg(&data)
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-k"])
            .arg(dir.path())
            .args(["-c", "fsync=off", "-c", "full_page_writes=off"])
            .args(if statement_statistics() {
                &[
                    "-c",
                    "shared_preload_libraries=pg_stat_statements",
                    "-c",
                    "pg_stat_statements.track_planning=on",
                ][..]
            } else {
                &[]
            })
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting postgres");
        let mut server = Self { dir, port, child };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("postgres exited with {status}:\n{}", server.log());
            }
            assert!(
                Instant::now() < deadline,
                "postgres did not listen within 30 s:\n{}",
                server.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // Listening is not accepting: wait until start-up recovery is over.
        std::thread::sleep(Duration::from_millis(200));
        if statement_statistics() {
            server.psql("CREATE EXTENSION pg_stat_statements");
        }
        server
    }

    /// Runs `sql` with `psql` (unaligned output); panics with psql's error when it fails.
    pub fn psql(&self, sql: &str) -> String {
        self.client(
            "psql",
            &[
                "-d",
                "postgres",
                "-X",
                "-A",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ],
        )
    }

    /// Runs the client `program` (`psql`, `pg_dump`) against this server as `passage` with
    /// `args`; its output, or a panic with its error when it fails.
    fn client(&self, program: &str, args: &[&str]) -> String {
        let output = command(bin_dir().join(program))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "passage",
            ])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("running {program}: {e}"));
        assert!(
            output.status.success(),
            "{program} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// With `PASSAGE_PG_STATEMENTS=1` (the server then loads `pg_stat_statements`): the `n`
    /// statements that took the most server time since the last call, with their calls, rows
    /// and mean time; `None` without it.
    pub fn top_statements(&self, n: usize) -> Option<String> {
        if !statement_statistics() {
            return None;
        }
        let top = self.psql(&format!(
            "SELECT calls, rows, round(total_exec_time::numeric, 1) AS total_ms, \
             round(mean_exec_time::numeric, 3) AS mean_ms, \
             round(total_plan_time::numeric, 1) AS plan_ms, \
             left(regexp_replace(query, '\\s+', ' ', 'g'), 110) AS query \
             FROM pg_stat_statements ORDER BY total_exec_time + total_plan_time DESC LIMIT {n}"
        ));
        self.psql("SELECT pg_stat_statements_reset()");
        Some(top)
    }

    /// `postgres://passage@127.0.0.1:<port>/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://passage@127.0.0.1:{}/postgres", self.port)
    }

    /// The server's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }

    /// `pg_dump` of the whole database as SQL text (to check what is stored, and what is not).
    pub fn dump(&self) -> String {
        self.client("pg_dump", &["postgres"])
    }
}

impl Postgres {
    /// CPU time of the whole server so far: the postmaster, every process it started that is
    /// still running (backends, writers, autovacuum), and those it has reaped.
    pub fn cpu_time(&self) -> Option<std::time::Duration> {
        let postmaster = self.child.id();
        let own = crate::bins::proc_stat(postmaster)?;
        let mut total = own.cpu + own.reaped_cpu;
        for entry in std::fs::read_dir("/proc").ok()?.flatten() {
            let Some(stat) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
                .and_then(crate::bins::proc_stat)
            else {
                continue;
            };
            if stat.parent == postmaster {
                total += stat.cpu;
            }
        }
        Some(total)
    }

    /// Stops the server at once (SIGQUIT: "immediate" shutdown, every connection dropped), as
    /// a crashed database would; waits until it has exited.
    pub fn stop_now(&mut self) {
        let _ = Command::new("kill")
            .args(["-QUIT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // SIGINT: "fast" shutdown. The process runs as another user when we are root, so ask
        // `kill` (as root it may signal anyone).
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
