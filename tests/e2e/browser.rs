//! The browser sign-in in a real headless Chromium (driven over WebDriver by chromedriver):
//! the sample relying party sends the browser to Passage's page, a slapd user types their
//! password, and the browser lands back in the application signed in; a wrong password shows
//! the error on the page. A screenshot of the sign-in page is kept as a test artefact
//! (`target/test-artefacts/sign-in-page.png`).
//!
//! Needs the Debian packages `chromium` and `chromium-driver` (the README's test command
//! installs them); a missing one is a clear panic.

use std::{
    net::TcpListener,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use fantoccini::{ClientBuilder, Locator};
use passage_tests::{Cluster, ClusterOptions, bins::Process, slapd::default_users};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// chromedriver on a free port; killed when dropped.
struct ChromeDriver {
    child: Child,
    url: String,
}

impl ChromeDriver {
    fn start(dir: &Path) -> Self {
        for binary in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(binary).exists(),
                "{binary} is missing: install the Debian packages chromium and chromium-driver (the README's test command does)"
            );
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let log = std::fs::File::create(dir.join("chromedriver.log")).unwrap();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting chromedriver");
        let url = format!("http://127.0.0.1:{port}");
        // Ready when it accepts connections.
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, url }
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_person_signs_in_to_the_sample_app_in_chromium() {
    let dir = tempfile::tempdir().unwrap();
    // The sample application's port first: the gateway registers its redirect URI (the app
    // starts once the gateway's issuer is known).
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let app_url = format!("http://localhost:{port}");
    let cluster = Cluster::start(ClusterOptions {
        development_store: true,
        gateway_clients: format!(
            "\n[[clients]]\nid = \"sample-app\"\nname = \"Sample app\"\nredirect_uris = [\"{app_url}/callback\"]\n"
        ),
        ..ClusterOptions::default()
    })
    .await;
    let issuer = cluster.gateway.issuer.clone();
    assert!(issuer.starts_with("http://localhost:"), "{issuer}");
    let _app = Process::start(
        "passage",
        &[
            "sample-rp",
            "--issuer",
            &issuer,
            "--client-id",
            "sample-app",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ],
        &[],
        &dir.path().join("app.log"),
    );

    let driver = ChromeDriver::start(dir.path());
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": CHROMIUM,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1024,900"],
        }),
    );
    let browser = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&driver.url)
        .await
        .expect("a Chromium session");
    let alice = &default_users()[0];
    let wait = Duration::from_secs(20);

    // The application sends the browser to Passage's page.
    browser.goto(&format!("{app_url}/")).await.unwrap();
    browser
        .find(Locator::Id("signin"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let username = browser
        .wait()
        .at_most(wait)
        .for_element(Locator::Id("username"))
        .await
        .expect("Passage's sign-in page");
    let page_url = browser.current_url().await.unwrap();
    assert!(page_url.as_str().starts_with(&issuer), "{page_url}");
    let artefacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-artefacts");
    std::fs::create_dir_all(&artefacts).unwrap();
    let screenshot = browser.screenshot().await.unwrap();
    assert!(screenshot.starts_with(b"\x89PNG"), "a PNG screenshot");
    std::fs::write(artefacts.join("sign-in-page.png"), &screenshot).unwrap();

    // A wrong password: the page says so, read out by screen readers (role=alert).
    username.send_keys(&alice.upn).await.unwrap();
    browser
        .find(Locator::Id("password"))
        .await
        .unwrap()
        .send_keys("not-her-password")
        .await
        .unwrap();
    browser
        .find(Locator::Id("submit"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let error = browser
        .wait()
        .at_most(wait)
        .for_element(Locator::Css("#error[role=alert]"))
        .await
        .expect("the error on the page");
    assert!(!error.text().await.unwrap().is_empty());
    std::fs::write(
        artefacts.join("sign-in-page-error.png"),
        browser.screenshot().await.unwrap(),
    )
    .unwrap();

    // The right one: back in the application, signed in.
    let username = browser.find(Locator::Id("username")).await.unwrap();
    username.clear().await.unwrap();
    username.send_keys(&alice.upn).await.unwrap();
    browser
        .find(Locator::Id("password"))
        .await
        .unwrap()
        .send_keys(&alice.password)
        .await
        .unwrap();
    browser
        .find(Locator::Id("submit"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let signed_in = browser
        .wait()
        .at_most(wait)
        .for_element(Locator::Id("signed-in"))
        .await
        .expect("back in the application, signed in");
    let text = signed_in.text().await.unwrap();
    assert!(text.contains(&alice.upn), "{text}");
    let landed = browser.current_url().await.unwrap();
    assert!(
        landed.as_str().starts_with(&format!("{app_url}/callback")),
        "{landed}"
    );
    // The password is in no URL the browser visited.
    assert!(!landed.as_str().contains(&alice.password));
    browser.close().await.unwrap();
    drop(cluster);
}
