//! A real Active Directory domain controller: Samba (Debian package `samba`) provisioned into a
//! temp dir and serving LDAPS on a loopback address of its own (127.0.0.2, .3, ...), so it needs
//! no free port 389/636 on 127.0.0.1. See `../shared/recipes/samba-ad-dc.md`.
//!
//! Provisioning takes a few seconds; Samba runs as root in its own process group, which is
//! killed as a whole when the value is dropped.

use std::{
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU8, Ordering},
    time::{Duration, Instant},
};

/// The realm's DNS domain (and the users' UPN suffix).
pub const DOMAIN: &str = "corp.example.com";
/// The NetBIOS domain.
pub const NETBIOS: &str = "CORP";
/// The domain's naming context.
pub const BASE_DN: &str = "DC=corp,DC=example,DC=com";
/// Where `samba-tool user create` puts users.
pub const USERS_DN: &str = "CN=Users,DC=corp,DC=example,DC=com";
/// The Administrator's password (test data only).
pub const ADMIN_PASSWORD: &str = "Admin-Pass-123!";
/// The Administrator, as a simple-bind name.
pub const ADMIN_UPN: &str = "Administrator@corp.example.com";

const SAMBA: &str = "/usr/sbin/samba";
const SAMBA_TOOL: &str = "/usr/bin/samba-tool";

/// A running Samba AD DC.
pub struct SambaDc {
    dir: tempfile::TempDir,
    address: Ipv4Addr,
    child: Child,
}

/// The next loopback address to try (one DC per address, tests run in parallel).
static NEXT_ADDRESS: AtomicU8 = AtomicU8::new(2);

fn require(path: &str) {
    assert!(
        Path::new(path).exists(),
        "{path} is missing: install the Debian packages samba and iproute2 (the README's test command does)"
    );
}

/// A loopback address whose LDAPS port is free, added to `lo` (Samba listens only on
/// addresses an interface has).
fn free_loopback_address() -> Ipv4Addr {
    loop {
        let last = NEXT_ADDRESS.fetch_add(1, Ordering::SeqCst);
        assert!(last < 250, "no free loopback address for Samba");
        let address = Ipv4Addr::new(127, 0, 0, last);
        if TcpListener::bind(SocketAddr::from((address, 636))).is_err()
            || TcpListener::bind(SocketAddr::from((address, 389))).is_err()
        {
            continue;
        }
        let added = Command::new("ip")
            .args(["addr", "add", &format!("{address}/32"), "dev", "lo"])
            .output()
            .expect("running ip (Debian package iproute2)");
        let stderr = String::from_utf8_lossy(&added.stderr);
        assert!(
            added.status.success()
                || stderr.contains("File exists")
                || stderr.contains("already assigned"),
            "adding {address} to lo failed (root or CAP_NET_ADMIN is needed): {stderr}"
        );
        return address;
    }
}

impl SambaDc {
    /// Provisions a new domain `CORP.EXAMPLE.COM` and starts its DC.
    pub fn start() -> Self {
        require(SAMBA);
        require(SAMBA_TOOL);
        let dir = tempfile::tempdir().expect("temp dir for Samba");
        let address = free_loopback_address();
        let output = Command::new(SAMBA_TOOL)
            .args([
                "domain",
                "provision",
                "--realm=CORP.EXAMPLE.COM",
                &format!("--domain={NETBIOS}"),
                "--server-role=dc",
                "--dns-backend=NONE",
                &format!("--adminpass={ADMIN_PASSWORD}"),
            ])
            .arg(format!("--targetdir={}", dir.path().display()))
            .arg(format!("--option=interfaces={address}"))
            .args([
                "--option=bind interfaces only=yes",
                "--option=server services=ldap",
            ])
            .stdin(Stdio::null())
            .output()
            .expect("running samba-tool domain provision");
        assert!(
            output.status.success(),
            "provisioning failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        // Samba (like AD for NTLM) keeps accepting an old password for an hour after a change
        // by default; the tests check that a change really replaces it. (Provisioning keeps
        // only some --option values, so this one goes into [global] here.)
        let conf = dir.path().join("etc/smb.conf");
        let text = std::fs::read_to_string(&conf).expect("smb.conf");
        std::fs::write(
            &conf,
            text.replacen(
                "[global]\n",
                "[global]\n\told password allowed period = 0\n",
                1,
            ),
        )
        .expect("smb.conf");
        let log = std::fs::File::create(dir.path().join("samba.log")).expect("samba log");
        let child = Command::new(SAMBA)
            .args(["-i", "-s"])
            .arg(dir.path().join("etc/smb.conf"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("samba log"))
            .stderr(log)
            // Its own process group: Samba forks a dozen workers, all ended with it.
            .process_group(0)
            .spawn()
            .expect("starting samba");
        // From here on, dropping the value (a panic below included) ends the whole group.
        let mut dc = Self {
            dir,
            address,
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(SocketAddr::from((address, 636))).is_err() {
            if let Ok(Some(status)) = dc.child.try_wait() {
                panic!(
                    "samba exited with {status}: {}",
                    std::fs::read_to_string(dc.dir.path().join("samba.log")).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "samba did not listen within 60 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        dc
    }

    /// `ldaps://<address>`.
    pub fn url(&self) -> String {
        format!("ldaps://{}", self.address)
    }

    /// The DC's self-signed certificate (PEM), which Samba made at its first start.
    pub fn certificate_pem(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("private/tls/cert.pem"))
            .expect("Samba's certificate")
    }

    /// Runs `samba-tool <args>` against the domain's database; panics with its output if it
    /// fails.
    pub fn tool(&self, args: &[&str]) -> String {
        let output = Command::new(SAMBA_TOOL)
            .args(args)
            .arg("-s")
            .arg(self.dir.path().join("etc/smb.conf"))
            .stdin(Stdio::null())
            .output()
            .expect("running samba-tool");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            output.status.success(),
            "samba-tool {args:?} failed: {text}"
        );
        text
    }

    /// Applies `ldif` as the Administrator over LDAPS (`ldapmodify`; the DC's certificate is
    /// self-signed).
    pub fn modify(&self, ldif: &str) {
        crate::slapd::ldapmodify(
            &["-H", &self.url()],
            ADMIN_UPN,
            ADMIN_PASSWORD,
            &[("LDAPTLS_REQCERT", "never")],
            ldif,
        );
    }

    /// The DN of a user made by `samba-tool user create NAME`.
    pub fn user_dn(name: &str) -> String {
        format!("CN={name},{USERS_DN}")
    }

    /// Where its files are.
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_owned()
    }
}

impl Drop for SambaDc {
    fn drop(&mut self) {
        // The whole process group: the root process and its workers.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.wait();
    }
}
