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
        server
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
        let output = command(bin_dir().join("pg_dump"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "passage",
                "postgres",
            ])
            .output()
            .expect("running pg_dump");
        assert!(
            output.status.success(),
            "pg_dump failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

impl Postgres {
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
