//! A private OpenLDAP `slapd` (Debian package) in a temp dir on 127.0.0.1, seeded with users.
//!
//! It runs in the foreground with the `stats` log level (`-d 256`) so tests can see exactly
//! which binds the directory received.

use std::{
    fmt::Write as _,
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// Base DN of the test directory.
pub const BASE_DN: &str = "dc=corp,dc=example,dc=com";
/// Where users live.
pub const PEOPLE_DN: &str = "ou=people,dc=corp,dc=example,dc=com";
/// Where groups live.
pub const GROUPS_DN: &str = "ou=groups,dc=corp,dc=example,dc=com";
/// The administrator (service account) DN.
pub const ADMIN_DN: &str = "cn=admin,dc=corp,dc=example,dc=com";
/// The administrator's password.
pub const ADMIN_PASSWORD: &str = "admin-secret";
/// The users' domain (and connector group).
pub const DOMAIN: &str = "corp.example.com";

/// A directory tree: its suffix and the users' UPN domain. [`Forest::CORP`] is the default
/// one; a second forest has its own suffix, domain and administrator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forest {
    /// `dc=...` suffix.
    pub base_dn: String,
    /// UPN suffix of its users.
    pub domain: String,
}

impl Forest {
    /// The default test forest (`dc=corp,dc=example,dc=com`, `corp.example.com`).
    pub fn corp() -> Self {
        Self {
            base_dn: BASE_DN.into(),
            domain: DOMAIN.into(),
        }
    }

    /// A forest for `domain` (`fabrikam.example` → `dc=fabrikam,dc=example`).
    pub fn for_domain(domain: &str) -> Self {
        Self {
            base_dn: domain
                .split('.')
                .map(|label| format!("dc={label}"))
                .collect::<Vec<_>>()
                .join(","),
            domain: domain.into(),
        }
    }

    /// Where its users live.
    pub fn people_dn(&self) -> String {
        format!("ou=people,{}", self.base_dn)
    }

    /// Where its groups live.
    pub fn groups_dn(&self) -> String {
        format!("ou=groups,{}", self.base_dn)
    }

    /// Its administrator (the agents' service account).
    pub fn admin_dn(&self) -> String {
        format!("cn=admin,{}", self.base_dn)
    }
}

/// OpenLDAP has no `userPrincipalName`; this adds AD's attribute (same OID) and an auxiliary
/// class carrying it, so the agent's default login attribute works against slapd.
const UPN_SCHEMA: &str = "\
attributetype ( 1.2.840.113556.1.4.656 NAME 'userPrincipalName'
  EQUALITY caseIgnoreMatch SUBSTR caseIgnoreSubstringsMatch
  SYNTAX 1.3.6.1.4.1.1466.115.121.1.15 SINGLE-VALUE )
objectclass ( 1.3.6.1.4.1.4203.666.11.99.1 NAME 'passageTestUser' SUP top AUXILIARY
  MAY ( userPrincipalName ) )
";

/// A seeded user.
#[derive(Debug, Clone)]
pub struct TestUser {
    /// `uid` (the RDN).
    pub uid: String,
    /// userPrincipalName: `<uid>@corp.example.com`.
    pub upn: String,
    /// mail (an alternate login ID): `<uid>.mail@corp.example.com`.
    pub mail: String,
    /// Plaintext password (test data only).
    pub password: String,
    /// displayName.
    pub display_name: String,
    /// Groups it is a member of.
    pub groups: Vec<String>,
    /// Its forest.
    pub forest: Forest,
}

impl TestUser {
    /// A user `uid` with `password` in `groups`.
    pub fn new(uid: &str, password: &str, groups: &[&str]) -> Self {
        Self::in_forest(&Forest::corp(), uid, password, groups)
    }

    /// A user `uid` of `forest`.
    pub fn in_forest(forest: &Forest, uid: &str, password: &str, groups: &[&str]) -> Self {
        let domain = &forest.domain;
        Self {
            forest: forest.clone(),
            uid: uid.into(),
            upn: format!("{uid}@{domain}"),
            mail: format!("{uid}.mail@{domain}"),
            password: password.into(),
            display_name: format!("{uid} Example"),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        }
    }

    /// The entry's DN.
    pub fn dn(&self) -> String {
        format!("uid={},{}", self.uid, self.forest.people_dn())
    }
}

/// The default test users: alice (staff, admins) and bob (staff).
pub fn default_users() -> Vec<TestUser> {
    vec![
        TestUser::new("alice", "Alice-Pass-1!", &["staff", "admins"]),
        TestUser::new("bob", "Bob-Pass-2?", &["staff"]),
    ]
}

/// A running slapd; killed when dropped.
pub struct Slapd {
    dir: tempfile::TempDir,
    port: u16,
    /// With TLS: the `ldaps://` port (StartTLS works on `port` too).
    tls_port: Option<u16>,
    forest: Forest,
    child: Option<Child>,
    log_stats: bool,
}

fn require(path: &str) {
    assert!(
        Path::new(path).exists(),
        "{path} is missing: install the Debian packages slapd and ldap-utils (the README's test command does)"
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port on 127.0.0.1")
        .port()
}

fn seed_ldif(forest: &Forest, users: &[TestUser]) -> String {
    let base = &forest.base_dn;
    let dc = base
        .split(',')
        .next()
        .and_then(|rdn| rdn.strip_prefix("dc="))
        .expect("a dc= suffix");
    let people = forest.people_dn();
    let groups_dn = forest.groups_dn();
    let mut ldif = format!(
        "dn: {base}\nobjectClass: dcObject\nobjectClass: organization\ndc: {dc}\no: {dc}\n\n\
         dn: {people}\nobjectClass: organizationalUnit\nou: people\n\n\
         dn: {groups_dn}\nobjectClass: organizationalUnit\nou: groups\n\n\
         dn: ou=policies,{base}\nobjectClass: organizationalUnit\nou: policies\n\n\
         dn: cn=default,ou=policies,{base}\nobjectClass: pwdPolicy\nobjectClass: person\ncn: default\nsn: default\n\
         pwdAttribute: userPassword\npwdMaxFailure: 5\npwdLockout: TRUE\npwdLockoutDuration: 300\n\n"
    );
    let mut groups: Vec<&str> = users
        .iter()
        .flat_map(|u| u.groups.iter().map(String::as_str))
        .collect();
    groups.sort_unstable();
    groups.dedup();
    for user in users {
        let _ = write!(
            ldif,
            "dn: {}\nobjectClass: inetOrgPerson\nobjectClass: passageTestUser\nuid: {}\ncn: {}\nsn: Example\n\
             displayName: {}\nmail: {}\nuserPrincipalName: {}\nuserPassword: {}\n\n",
            user.dn(),
            user.uid,
            user.display_name,
            user.display_name,
            user.mail,
            user.upn,
            user.password
        );
    }
    for group in groups {
        let _ = write!(
            ldif,
            "dn: cn={group},{groups_dn}\nobjectClass: groupOfNames\ncn: {group}\n"
        );
        for user in users.iter().filter(|u| u.groups.iter().any(|g| g == group)) {
            let _ = writeln!(ldif, "member: {}", user.dn());
        }
        ldif.push('\n');
    }
    ldif
}

impl Slapd {
    /// Starts a slapd seeded with `users`, logging every operation (see [`Slapd::binds_as`]).
    pub fn start(users: &[TestUser]) -> Self {
        Self::start_with(users, true)
    }

    /// Starts a slapd seeded with `users`; `log_stats` logs every operation (tests need it,
    /// benchmarks measure without its cost).
    pub fn start_with(users: &[TestUser], log_stats: bool) -> Self {
        Self::start_full(&Forest::corp(), users, log_stats, None)
    }

    /// Starts a slapd holding `forest`, seeded with `users` (of that forest); its
    /// administrator is [`Forest::admin_dn`] with [`ADMIN_PASSWORD`].
    pub fn start_forest(forest: &Forest, users: &[TestUser]) -> Self {
        Self::start_full(forest, users, true, None)
    }

    /// Starts a slapd seeded with `users` that also speaks TLS with `cert_pem` and `key_pem`:
    /// `ldaps://` on [`Slapd::ldaps_url`], and StartTLS on [`Slapd::url`].
    pub fn start_tls(users: &[TestUser], cert_pem: &str, key_pem: &str) -> Self {
        Self::start_full(&Forest::corp(), users, true, Some((cert_pem, key_pem)))
    }

    fn start_full(
        forest: &Forest,
        users: &[TestUser],
        log_stats: bool,
        tls: Option<(&str, &str)>,
    ) -> Self {
        require("/usr/sbin/slapd");
        require("/usr/sbin/slapadd");
        let dir = tempfile::tempdir().expect("temp dir for slapd");
        let root = dir.path();
        std::fs::create_dir_all(root.join("db")).expect("slapd db dir");
        std::fs::write(root.join("upn.schema"), UPN_SCHEMA).expect("schema");
        let tls_conf = match tls {
            Some((cert, key)) => {
                std::fs::write(root.join("server.pem"), cert).expect("server certificate");
                std::fs::write(root.join("server-key.pem"), key).expect("server key");
                format!(
                    "TLSCertificateFile {root}/server.pem\nTLSCertificateKeyFile {root}/server-key.pem\n",
                    root = root.display()
                )
            }
            None => String::new(),
        };
        let conf = format!(
            "include /etc/ldap/schema/core.schema\n\
             include /etc/ldap/schema/cosine.schema\n\
             include /etc/ldap/schema/inetorgperson.schema\n\
             include /etc/ldap/schema/nis.schema\n\
             include {root}/upn.schema\n\
             modulepath /usr/lib/ldap\n\
             moduleload back_mdb\n\
             moduleload ppolicy\n\
             pidfile {root}/slapd.pid\n\
             {tls_conf}\
             threads 8\n\
             database mdb\n\
             maxsize 1073741824\n\
             suffix \"{base}\"\n\
             rootdn \"{admin}\"\n\
             rootpw {ADMIN_PASSWORD}\n\
             directory {root}/db\n\
             index uid,mail,userPrincipalName,member eq\n\
             access to attrs=userPassword by self write by anonymous auth by * none\n\
             access to * by * read\n\
             overlay ppolicy\n\
             ppolicy_default \"cn=default,ou=policies,{base}\"\n\
             ppolicy_use_lockout\n",
            root = root.display(),
            base = forest.base_dn,
            admin = forest.admin_dn(),
        );
        std::fs::write(root.join("slapd.conf"), conf).expect("slapd.conf");
        std::fs::write(root.join("seed.ldif"), seed_ldif(forest, users)).expect("seed.ldif");
        let output = Command::new("/usr/sbin/slapadd")
            .arg("-f")
            .arg(root.join("slapd.conf"))
            .arg("-l")
            .arg(root.join("seed.ldif"))
            .output()
            .expect("running slapadd");
        assert!(
            output.status.success(),
            "slapadd failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let mut slapd = Self {
            dir,
            port: free_port(),
            tls_port: tls.map(|_| free_port()),
            forest: forest.clone(),
            child: None,
            log_stats,
        };
        slapd.start_again();
        slapd
    }

    /// (Re)starts the server on the same port with the same data.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "slapd is already running");
        let root = self.dir.path();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("slapd log");
        let mut child = Command::new("/usr/sbin/slapd")
            .arg("-f")
            .arg(root.join("slapd.conf"))
            .arg("-h")
            .arg(match self.tls_port {
                Some(_) => format!("{}/ {}/", self.url(), self.ldaps_url()),
                None => self.url() + "/",
            })
            // -d keeps slapd in the foreground; level 256 (stats) logs every operation.
            .args(["-d", if self.log_stats { "256" } else { "0" }])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting slapd");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("slapd exited with {status}; its log:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "slapd did not listen within 15 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(child);
    }

    /// Stops the server (SIGKILL: what a crash or a pulled cable looks like to clients).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // mdb keeps no lock after the process is gone; the pid file may linger.
        let _ = std::fs::remove_file(self.dir.path().join("slapd.pid"));
    }

    /// CPU time slapd has used so far.
    pub fn cpu_time(&self) -> Option<Duration> {
        self.child
            .as_ref()
            .and_then(|c| crate::bins::cpu_time_of(c.id()))
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing is answered — what a hung
    /// domain controller looks like. [`Slapd::resume`] thaws it.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Thaws a paused server (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("slapd is running");
        let status = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill {signal} slapd failed");
    }

    /// `ldaps://127.0.0.1:<port>` (a slapd started with [`Slapd::start_tls`]).
    pub fn ldaps_url(&self) -> String {
        format!(
            "ldaps://127.0.0.1:{}",
            self.tls_port.expect("slapd started with TLS")
        )
    }

    /// `ldap://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("ldap://127.0.0.1:{}", self.port)
    }

    /// The LDAP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The stats log.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("slapd.log")
    }

    /// Everything logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The DN of every simple bind the directory received, in order (the service account's
    /// included); needs `log_stats`.
    pub fn bound_dns(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter_map(|l| {
                let rest = l.split("BIND dn=\"").nth(1)?;
                Some(rest.split("\" method=").next()?.to_owned())
            })
            .collect()
    }

    /// Applies `ldif` (`changetype` records) as the administrator with `ldapmodify`, with the
    /// Relax control so operational attributes the ppolicy overlay keeps
    /// (`pwdAccountLockedTime`, `pwdChangedTime`, `pwdReset`) can be set as a test needs them.
    pub fn modify(&self, ldif: &str) {
        ldapmodify(
            &["-e", "relax", "-H", &self.url()],
            &self.forest.admin_dn(),
            ADMIN_PASSWORD,
            &[],
            ldif,
        );
    }

    /// Locks `user` in the directory as the ppolicy overlay does after too many failures
    /// (`pwdAccountLockedTime` set to the permanent-lock value): every bind as them fails,
    /// whatever the password.
    pub fn lock(&self, user: &TestUser) {
        self.modify(&format!(
            "dn: {}\nchangetype: modify\nreplace: pwdAccountLockedTime\npwdAccountLockedTime: 000001010000Z\n",
            user.dn()
        ));
    }

    /// How many BIND requests named `dn` (the stats level logs each request once with its
    /// `method=`, and again with its result).
    pub fn binds_as(&self, dn: &str) -> usize {
        let needle = format!("BIND dn=\"{dn}\" method=");
        self.log().lines().filter(|l| l.contains(&needle)).count()
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs `ldapmodify -x <args> -D <bind_dn> -w <password>` with `ldif` on its stdin (and `env`);
/// panics with its output when it fails.
pub fn ldapmodify(args: &[&str], bind_dn: &str, password: &str, env: &[(&str, &str)], ldif: &str) {
    use std::io::Write as _;
    let mut child = Command::new("/usr/bin/ldapmodify")
        .arg("-x")
        .args(args)
        .args(["-D", bind_dn, "-w", password])
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running ldapmodify (Debian package ldap-utils)");
    child
        .stdin
        .take()
        .expect("ldapmodify's stdin")
        .write_all(ldif.as_bytes())
        .expect("writing to ldapmodify");
    let output = child.wait_with_output().expect("ldapmodify's answer");
    assert!(
        output.status.success(),
        "ldapmodify failed: {}{}\n{ldif}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The SHA-256 fingerprint of a PEM certificate, as `pinned_certificates_sha256` takes it.
pub fn certificate_pin(pem: &str) -> String {
    let der = passage_pki::pem_to_der(pem).expect("a PEM certificate");
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
