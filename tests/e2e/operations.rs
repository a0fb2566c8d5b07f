//! What operators rely on: health and reflection on every gRPC server, one trace id across
//! the three processes' logs, one exported OpenTelemetry trace across the three processes,
//! and no password in any log or exported span.

use std::time::Duration;

use passage_error_codes::ErrorCode;
use passage_proto::v1::SignInRequest;
use passage_tests::{
    Cluster, ClusterOptions, TestUser, cluster::CLIENT_ID, otlp::ReceivedSpan, slapd::default_users,
};
use tonic::transport::Channel;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

async fn channel(url: &str) -> Channel {
    Channel::from_shared(url.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

async fn serving(url: &str, service: &str) -> bool {
    let response = HealthClient::new(channel(url).await)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap_or_else(|status| panic!("health check of {service} at {url}: {status:?}"))
        .into_inner();
    response.status == ServingStatus::Serving as i32
}

async fn reflected_services(url: &str) -> Vec<String> {
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel(url).await)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection stream")
        .into_inner();
    let response = responses
        .message()
        .await
        .expect("reflection answer")
        .expect("one answer");
    match response.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("unexpected reflection answer {other:?}"),
    }
}

/// The services listed by the older `v1alpha` reflection (Python's grpcio-reflection, older
/// grpcurl).
async fn reflected_services_v1alpha(url: &str) -> Vec<String> {
    use tonic_reflection::pb::v1alpha::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel(url).await)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("v1alpha reflection stream")
        .into_inner();
    match responses
        .message()
        .await
        .expect("reflection answer")
        .expect("one answer")
        .message_response
    {
        Some(MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("unexpected reflection answer {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_grpc_server_serves_health_and_reflection() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let servers = [
        (&cluster.gateway.grpc_url, "passage.v1.Gateway"),
        (&cluster.dispatcher.api_url, "passage.v1.Dispatcher"),
        (&cluster.dispatcher.agent_url, "passage.v1.AgentTunnel"),
    ];
    for (url, service) in servers {
        assert!(serving(url, "").await, "{url} overall health");
        assert!(serving(url, service).await, "{url} {service} health");
        let services = reflected_services(url).await;
        assert!(
            services.iter().any(|s| s == service),
            "{url} reflects {services:?}"
        );
        let old = reflected_services_v1alpha(url).await;
        assert!(
            old.iter().any(|s| s == service),
            "{url} reflects over v1alpha too: {old:?}"
        );
        assert!(
            services.iter().any(|s| s == "grpc.health.v1.Health"),
            "{url} reflects {services:?}"
        );
    }
}

/// Signs `user` in with the caller's trace context `traceparent`; the sign-in must succeed.
async fn sign_in_traced(cluster: &Cluster, user: &TestUser, traceparent: &str) {
    let mut request = tonic::Request::new(SignInRequest {
        username: user.upn.clone(),
        password: user.password.clone(),
        client_id: CLIENT_ID.into(),
        client_ip: String::new(),
        offline_access: false,
    });
    request
        .metadata_mut()
        .insert("traceparent", traceparent.parse().unwrap());
    cluster
        .gateway_client()
        .sign_in(request)
        .await
        .expect("sign-in");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_id_follows_a_sign_in_and_no_password_is_logged() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let alice = default_users().remove(0);
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    sign_in_traced(
        &cluster,
        &alice,
        &format!("00-{trace_id}-00f067aa0ba902b7-01"),
    )
    .await;
    // A wrong password and an empty one must not be logged either.
    let _ = cluster.sign_in(&alice.upn, "Wrong-Secret-Attempt-9").await;
    let _ = cluster.sign_in(&alice.upn, "").await;

    let logs = [
        ("gateway", cluster.gateway.process.log()),
        ("dispatcher", cluster.dispatcher.process.log()),
        ("agent", cluster.agents[0].process.log()),
    ];
    for (name, log) in &logs {
        assert!(
            log.contains(trace_id),
            "{name} log lacks the trace id:\n{log}"
        );
        for secret in [alice.password.as_str(), "Wrong-Secret-Attempt-9"] {
            assert!(
                !log.contains(secret),
                "{name} log contains a password:\n{log}"
            );
        }
    }
}

/// The one span of `trace_id` named `name` sent by `service`.
fn span<'a>(
    spans: &'a [ReceivedSpan],
    trace_id: &str,
    service: &str,
    name: &str,
) -> &'a ReceivedSpan {
    let found: Vec<_> = spans
        .iter()
        .filter(|s| s.trace_id == trace_id && s.service == service && s.name == name)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one {service} span {name} in trace {trace_id}; received: {spans:#?}"
    );
    found[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_in_is_one_exported_trace_across_the_three_processes() {
    let cluster = Cluster::start(ClusterOptions {
        trace_export: true,
        ..ClusterOptions::default()
    })
    .await;
    let collector = cluster.collector.as_ref().expect("trace export is on");
    let alice = default_users().remove(0);
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let caller_span = "b7ad6b7169203331";
    sign_in_traced(&cluster, &alice, &format!("00-{trace_id}-{caller_span}-01")).await;
    let wrong = "Wrong-Secret-In-A-Trace-4";
    let status = cluster.sign_in(&alice.upn, wrong).await.unwrap_err();
    assert_eq!(ErrorCode::of(&status), Some(ErrorCode::InvalidCredentials));

    // Both sign-ins reach the agent's directory call; each process sends its batches every
    // 100 ms.
    let steps = [
        ("passage-gateway", "sign_in"),
        ("passage-dispatcher", "dispatch"),
        ("passage-dispatcher", "relay"),
        ("passage-agent", "validate"),
        ("passage-agent", "decrypt"),
        ("passage-agent", "authenticate"),
    ];
    let spans = collector
        .wait_for(Duration::from_secs(15), |spans| {
            steps.iter().all(|(service, name)| {
                spans
                    .iter()
                    .filter(|s| s.service == *service && s.name == *name)
                    .count()
                    >= 2
            })
        })
        .await;

    // The caller's context → gateway → dispatcher → relay hop → agent → decrypt and bind.
    let sign_in = span(&spans, trace_id, "passage-gateway", "sign_in");
    assert_eq!(sign_in.parent_span_id, caller_span);
    assert_eq!(sign_in.attributes["username"], alice.upn);
    assert_eq!(sign_in.attributes["client_id"], CLIENT_ID);
    let dispatch = span(&spans, trace_id, "passage-dispatcher", "dispatch");
    assert_eq!(dispatch.parent_span_id, sign_in.span_id);
    let relay = span(&spans, trace_id, "passage-dispatcher", "relay");
    assert_eq!(relay.parent_span_id, dispatch.span_id);
    assert_eq!(relay.attributes["agent_id"], cluster.agents[0].agent_id);
    let validate = span(&spans, trace_id, "passage-agent", "validate");
    assert_eq!(validate.parent_span_id, relay.span_id);
    for step in ["decrypt", "authenticate"] {
        let child = span(&spans, trace_id, "passage-agent", step);
        assert_eq!(child.parent_span_id, validate.span_id, "{step}");
    }

    // The second sign-in came without a context: a new root, followed the same way, and
    // marked failed with its error code.
    let failed = spans
        .iter()
        .find(|s| s.name == "sign_in" && s.trace_id != trace_id)
        .expect("the failed sign-in's span");
    assert_eq!(failed.parent_span_id, "", "a root span");
    assert_eq!(
        failed.attributes["error_code"],
        ErrorCode::InvalidCredentials.as_str()
    );
    let failed_dispatch = span(&spans, &failed.trace_id, "passage-dispatcher", "dispatch");
    assert_eq!(failed_dispatch.parent_span_id, failed.span_id);
    span(&spans, &failed.trace_id, "passage-agent", "authenticate");

    let exported = collector.dump();
    assert!(exported.contains(&alice.upn), "the dump holds the spans");
    for secret in [alice.password.as_str(), wrong] {
        assert!(!exported.contains(secret), "a password was exported");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dispatcher_drains_on_sigterm_and_agents_reconnect_to_its_successor() {
    let mut cluster = Cluster::start(ClusterOptions::default()).await;
    let alice = default_users().remove(0);
    cluster
        .sign_in(&alice.upn, &alice.password)
        .await
        .expect("before the restart");
    let agent_id = cluster.agents[0].agent_id.clone();

    let clean = cluster.restart_dispatcher(std::time::Duration::from_secs(10));
    assert!(clean, "the dispatcher exits cleanly on SIGTERM");
    // The agent reconnects by itself (jittered backoff), and the gateway's lazy channel too.
    cluster.wait_for_agents(|ids| ids.contains(&agent_id)).await;
    cluster
        .sign_in(&alice.upn, &alice.password)
        .await
        .expect("after the restart");
    let agent_log = cluster.agents[0].process.log();
    assert!(
        agent_log.contains("dispatcher asked to drain")
            || agent_log.contains("stream to dispatcher ended"),
        "the agent noticed the old dispatcher leave:\n{agent_log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_on_every_address_needs_an_issuer() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "grpc_listen = \"127.0.0.1:0\"\nhttp_listen = \"0.0.0.0:0\"\n\
             dispatcher_url = \"http://127.0.0.1:9\"\nsigning_key_file = \"{}\"\n\
             insecure_plaintext = true\n",
            dir.path().join("key.der").display()
        ),
    )
    .unwrap();
    let (ok, _, stderr) =
        passage_tests::bins::run_to_end("passage-gateway", &["--config", config.to_str().unwrap()]);
    assert!(!ok, "started without an issuer");
    assert!(
        stderr.contains("issuer is required when http_listen is 0.0.0.0:0"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passage_signin_says_why_it_cannot_connect() {
    for (url, expected) in [
        (
            "http://127.0.0.1:1",
            "Connection refused (os error 111) (nothing listens there",
        ),
        (
            "https://gateway.invalid:9443",
            "the host name does not resolve",
        ),
    ] {
        let mut args = vec![
            "signin",
            "--gateway",
            url,
            "--user",
            "alice@corp.example.com",
        ];
        if url.starts_with("http:") {
            args.push("--insecure-plaintext");
        }
        let (ok, _, stderr) = passage_tests::bins::run_to_end("passage", &args);
        assert!(!ok);
        assert!(stderr.contains(expected), "{url}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_postgresql_store_says_why_and_keeps_its_password() {
    let (ok, _, stderr) = passage_tests::bins::run_to_end(
        "passage",
        &[
            "signins",
            "--store",
            "postgres://passage:Store-Secret-9@127.0.0.1:1/passage",
        ],
    );
    assert!(!ok);
    assert!(
        stderr.contains("cannot reach the database")
            && stderr.contains("Connection refused (os error 111)"),
        "{stderr}"
    );
    assert!(!stderr.contains("Store-Secret-9"), "{stderr}");
}

/// `GET path` on the gateway's plaintext HTTP listener: (status code, body).
async fn http_get(issuer: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = issuer.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: passage\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = response
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_without_a_dispatcher_is_alive_but_not_ready() {
    let mut cluster = Cluster::start(ClusterOptions {
        gateway_config: "readiness_interval_ms = 200\n".into(),
        ..ClusterOptions::default()
    })
    .await;
    let issuer = cluster.gateway.issuer.clone();
    assert_eq!(
        http_get(&issuer, "/readyz").await,
        (200, "ready".to_owned())
    );
    cluster.dispatcher.process.kill();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let body = loop {
        let (status, body) = http_get(&issuer, "/readyz").await;
        if status == 503 {
            break body;
        }
        assert!(std::time::Instant::now() < deadline, "still ready: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(body.contains("the dispatcher does not answer"), "{body}");
    assert_eq!(http_get(&issuer, "/healthz").await, (200, "ok".to_owned()));
    let url = cluster.gateway.grpc_url.clone();
    assert!(!serving(&url, "passage.v1.Gateway").await);
    assert!(!serving(&url, "").await);
    // Liveness probes ask a health service of their own: not ready is not dead.
    assert!(serving(&url, "liveness").await);
}

/// The fields a configuration type accepts, as serde lists them when it meets an unknown one.
fn accepted_fields<T: serde::de::DeserializeOwned>() -> std::collections::BTreeSet<String> {
    let message = match toml::from_str::<T>("zz_not_a_field = 1\n") {
        Ok(_) => panic!("an unknown field was accepted"),
        Err(err) => err.to_string(),
    };
    let listed = message
        .split("expected one of")
        .nth(1)
        .unwrap_or_else(|| panic!("no field list in {message:?}"));
    listed
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// The fields the README's table under `heading` documents (every `name` in a row's first
/// cell: "`agent_tls`, `api_tls`" documents two).
fn documented_fields(heading: &str) -> std::collections::BTreeSet<String> {
    let readme = include_str!("../../README.md");
    let table = readme
        .split(heading)
        .nth(1)
        .unwrap_or_else(|| panic!("no {heading:?} in the README"));
    table
        .lines()
        .skip(1)
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .filter(|l| l.starts_with("| `"))
        .flat_map(|l| {
            let cell = l.split('|').nth(1).unwrap_or_default();
            cell.split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn the_readme_configuration_reference_lists_exactly_what_the_services_accept() {
    let cases = [
        (
            "### Gateway (",
            accepted_fields::<passage_gateway::GatewayConfig>(),
        ),
        (
            "### Dispatcher (",
            accepted_fields::<passage_dispatcher::DispatcherConfig>(),
        ),
        (
            "### Agent (",
            accepted_fields::<passage_agent::AgentConfig>(),
        ),
        (
            "`[directory] kind = \"ldap\"`:",
            accepted_fields::<passage_directory::ldap::LdapConfig>(),
        ),
    ];
    for (heading, accepted) in cases {
        let documented = documented_fields(heading);
        // Both lists were really read (an empty pair would agree on nothing).
        assert!(accepted.len() >= 10, "{heading}: {accepted:?}");
        assert!(
            accepted.contains("insecure_plaintext") || accepted.contains("base_dn"),
            "{heading}: {accepted:?}"
        );
        // The LDAP table documents the connector's own fields; `kind` selects it.
        let missing: Vec<_> = accepted.difference(&documented).collect();
        let unknown: Vec<_> = documented.difference(&accepted).collect();
        assert!(
            missing.is_empty() && unknown.is_empty(),
            "{heading}: accepted but not in the README: {missing:?}; in the README but not accepted: {unknown:?}"
        );
    }
}

/// Starts the cluster's first agent with its local health endpoint on a free port (returned).
async fn start_agent_with_health_endpoint(cluster: &mut Cluster) -> u16 {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let config = cluster.agent_config(0);
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        format!("health_listen = \"127.0.0.1:{port}\"\n{text}"),
    )
    .unwrap();
    cluster.start_agent(0, true).await;
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_tells_its_host_whether_it_is_connected() {
    let mut cluster = Cluster::start(ClusterOptions {
        agents: 0,
        ..ClusterOptions::default()
    })
    .await;
    let port = start_agent_with_health_endpoint(&mut cluster).await;
    let health = format!("http://127.0.0.1:{port}");
    let (status, body) = http_get(&health, "/healthz").await;
    assert_eq!(status, 200, "{body}");
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(report["streams_connected"], 1, "{body}");
    assert_eq!(report["agent_id"], cluster.agents[0].agent_id.as_str());
    // Without its dispatcher the agent is alive and says it is not connected.
    cluster.dispatcher.process.kill();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) = http_get(&health, "/healthz").await;
        if status == 503 {
            assert!(body.contains("\"streams_connected\":0"), "{body}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still connected: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The README's first command, as a newcomer runs it: `passage demo` with no input serves the
/// sample web application it prints, and a person signing in there through Passage's page
/// lands back signed in; `--signin alice` prints a verified token and exits.
#[tokio::test(flavor = "multi_thread")]
async fn the_demo_serves_a_sample_app_that_signs_in_through_the_browser_flow() {
    use passage_tests::web::{FormBrowser, query};
    let dir = tempfile::tempdir().unwrap();
    let mut demo = passage_tests::bins::Process::start(
        "passage",
        &["demo"],
        &[],
        &dir.path().join("demo.log"),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let printed = loop {
        let stdout = demo.stdout();
        if stdout.contains("Serving until Ctrl-C.") {
            break stdout;
        }
        assert!(
            std::time::Instant::now() < deadline && demo.is_running(),
            "the demo did not start: {}",
            demo.output()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let field = |label: &str| -> String {
        printed
            .lines()
            .find_map(|line| line.trim_start().strip_prefix(label))
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("the demo prints {label:?}: {printed}"))
            .trim_end_matches('/')
            .to_owned()
    };
    let app = field("sample web app");
    let alice = field("alice@demo.passage.dev");
    let password = printed
        .lines()
        .find(|line| line.trim_start().starts_with("alice@demo.passage.dev"))
        .and_then(|line| line.split_whitespace().nth(2))
        .expect("alice's demo password is printed")
        .to_owned();
    assert_eq!(alice, "password");

    let mut browser = FormBrowser::default();
    let home = browser.get(&format!("{app}/")).await;
    assert!(home.body.contains("id=\"signin\""), "{}", home.body);
    let to_passage = browser.get(&format!("{app}/login")).await;
    let authorize = to_passage.location().expect("sent to Passage").to_owned();
    let page = browser.get(&authorize).await;
    assert_eq!(page.status, 200, "{}", page.body);
    let mut fields = page.hidden_inputs();
    fields.push(("username".into(), "alice@demo.passage.dev".into()));
    fields.push(("password".into(), password.clone()));
    let action = authorize.split('?').next().unwrap().to_owned();
    let answer = browser.post_form(&action, &fields).await;
    let back = answer.location().expect("sent back to the app").to_owned();
    assert!(back.starts_with(&format!("{app}/callback")), "{back}");
    assert!(query(&back).contains_key("code") && !back.contains(&password));
    let signed_in = browser.get(&back).await;
    assert!(
        signed_in.body.contains("id=\"signed-in\"")
            && signed_in.body.contains("alice@demo.passage.dev"),
        "{}",
        signed_in.body
    );
    demo.assert_no_panic();
    assert!(
        demo.terminate(Duration::from_secs(10)),
        "the demo stops on SIGTERM"
    );

    let (ok, stdout, stderr) =
        passage_tests::bins::run_to_end("passage", &["demo", "--signin", "alice"]);
    assert!(ok, "{stdout}{stderr}");
    assert!(
        stdout.contains("ID token verified against") && stdout.contains("access_token:"),
        "{stdout}"
    );
}

/// One scrape of `/metrics`, parsed by a real OpenMetrics parser.
struct Scrape {
    text: String,
    parsed: openmetrics_parser::MetricsExposition<
        openmetrics_parser::OpenMetricsType,
        openmetrics_parser::OpenMetricsValue,
    >,
}

impl Scrape {
    async fn of(metrics_url: &str) -> Self {
        let (base, path) = metrics_url
            .trim_start_matches("http://")
            .split_once('/')
            .expect("a metrics URL");
        let (status, text) = http_get(&format!("http://{base}"), &format!("/{path}")).await;
        assert_eq!(status, 200, "{metrics_url}: {text}");
        let parsed = openmetrics_parser::openmetrics::parse_openmetrics(&text)
            .unwrap_or_else(|err| panic!("{metrics_url} is not OpenMetrics: {err:?}\n{text}"));
        Self { text, parsed }
    }

    /// The samples of `family` whose labels include `labels`.
    fn samples(
        &self,
        family: &str,
        labels: &[(&str, &str)],
    ) -> Vec<&openmetrics_parser::Sample<openmetrics_parser::OpenMetricsValue>> {
        let family = self
            .parsed
            .families
            .get(family)
            .unwrap_or_else(|| panic!("no {family} in\n{}", self.text));
        family
            .iter_samples()
            .filter(|sample| {
                let set = sample.get_labelset().expect("labels");
                labels
                    .iter()
                    .all(|(name, value)| set.get_label_value(name) == Some(*value))
            })
            .collect()
    }

    /// The value of the one sample of `family` with `labels`: a counter's or a gauge's value,
    /// a histogram's count.
    fn value(&self, family: &str, labels: &[(&str, &str)]) -> f64 {
        use openmetrics_parser::OpenMetricsValue;
        let samples = self.samples(family, labels);
        assert_eq!(samples.len(), 1, "{family} {labels:?} in\n{}", self.text);
        match &samples[0].value {
            OpenMetricsValue::Counter(counter) => counter.value.as_f64(),
            OpenMetricsValue::Gauge(gauge) => gauge.as_f64(),
            OpenMetricsValue::Histogram(histogram) => histogram.count.unwrap_or(0) as f64,
            other => panic!("{family}: {other:?}"),
        }
    }

    /// The trace ids of `family`'s histogram exemplars with `labels`.
    fn exemplar_traces(&self, family: &str, labels: &[(&str, &str)]) -> Vec<String> {
        self.samples(family, labels)
            .into_iter()
            .filter_map(|sample| match &sample.value {
                openmetrics_parser::OpenMetricsValue::Histogram(histogram) => Some(histogram),
                _ => None,
            })
            .flat_map(|histogram| &histogram.buckets)
            .filter_map(|bucket| bucket.exemplar.as_ref())
            .map(|exemplar| exemplar.labels["trace_id"].clone())
            .collect()
    }
}

/// Each service is scraped after a few sign-ins: the counters moved as the sign-ins did, the
/// latency histograms link to the sign-in's trace, the agents connected are listed, and no
/// username ever is a label.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_counts_sign_ins_for_prometheus() {
    // Production trust: certificates (their expiry is measured) and a store (smart lockout's
    // latency is).
    let mut cluster = Cluster::start(ClusterOptions {
        agents: 0,
        enrolment: true,
        trace_export: true,
        ..ClusterOptions::default()
    })
    .await;
    let token = cluster.create_token("default", passage_tests::slapd::DOMAIN, "1h");
    let (enrolled, _, stderr) = cluster.register_agent(0, "default", &token);
    assert!(enrolled, "{stderr}");
    // The agent's metrics are on its local health endpoint.
    let port = start_agent_with_health_endpoint(&mut cluster).await;
    let agent_id = cluster.agents[0].agent_id.clone();

    let alice = default_users().remove(0);
    let trace_id = "5ae9b0c3b1e04a2e9a1f3c4d5e6f7a8b";
    cluster.sign_in(&alice.upn, &alice.password).await.unwrap();
    let status = cluster
        .sign_in(&alice.upn, "Wrong-Metrics-Pass-1")
        .await
        .unwrap_err();
    assert_eq!(ErrorCode::of(&status), Some(ErrorCode::InvalidCredentials));
    // Last, so that its trace is the newest exemplar of each bucket it lands in.
    sign_in_traced(
        &cluster,
        &alice,
        &format!("00-{trace_id}-00f067aa0ba902b7-01"),
    )
    .await;

    let gateway = Scrape::of(&cluster.gateway.metrics_url).await;
    let wrong = ("code", ErrorCode::InvalidCredentials.as_str());
    assert_eq!(
        gateway.value(
            "passage_gateway_sign_ins",
            &[("outcome", "success"), ("code", "")]
        ),
        2.0
    );
    assert_eq!(
        gateway.value("passage_gateway_sign_ins", &[("outcome", "failure"), wrong]),
        1.0
    );
    assert_eq!(
        gateway.value(
            "passage_gateway_sign_in_duration_seconds",
            &[("outcome", "success")]
        ),
        2.0
    );
    assert_eq!(
        gateway.value("passage_gateway_policy_decisions", &[("grant", "allow")]),
        2.0
    );
    assert_eq!(
        gateway.value(
            "passage_gateway_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    // The traced sign-in's own trace id is an exemplar of the success latency.
    assert!(
        gateway
            .exemplar_traces(
                "passage_gateway_sign_in_duration_seconds",
                &[("outcome", "success")]
            )
            .contains(&trace_id.to_owned()),
        "{}",
        gateway.text
    );

    let dispatcher = Scrape::of(&cluster.dispatcher.metrics_url).await;
    assert_eq!(
        dispatcher.value("passage_dispatcher_relays", &[("outcome", "answered")]),
        3.0
    );
    assert_eq!(
        dispatcher.value(
            "passage_dispatcher_relay_duration_seconds",
            &[("outcome", "answered")]
        ),
        3.0
    );
    let group = [("connector_group", passage_tests::slapd::DOMAIN)];
    assert_eq!(
        dispatcher.value("passage_dispatcher_connected_agents", &group),
        1.0
    );
    assert_eq!(
        dispatcher.value(
            "passage_dispatcher_agent_in_flight",
            &[("agent_id", &agent_id)]
        ),
        0.0
    );
    assert_eq!(
        dispatcher.value(
            "passage_dispatcher_agent_info",
            &[
                ("agent_id", &agent_id),
                ("version", env!("CARGO_PKG_VERSION"))
            ]
        ),
        1.0
    );

    let agent = Scrape::of(&format!("http://127.0.0.1:{port}/metrics")).await;
    assert_eq!(
        agent.value("passage_agent_validations", &[("outcome", "success")]),
        2.0
    );
    assert_eq!(
        agent.value(
            "passage_agent_validations",
            &[("outcome", "invalid_credentials")]
        ),
        1.0
    );
    assert_eq!(
        agent.value("passage_agent_decrypt_duration_seconds", &[]),
        3.0
    );
    assert_eq!(
        agent.value(
            "passage_agent_directory_duration_seconds",
            &[("operation", "authenticate"), ("outcome", "success")]
        ),
        2.0
    );
    assert_eq!(agent.value("passage_agent_streams_connected", &[]), 1.0);
    assert_eq!(agent.value("passage_agent_streams_expected", &[]), 1.0);
    assert_eq!(agent.value("passage_agent_directory_servers_up", &[]), 1.0);
    assert!(
        agent
            .exemplar_traces("passage_agent_decrypt_duration_seconds", &[])
            .contains(&trace_id.to_owned()),
        "{}",
        agent.text
    );

    // Every series the shipped Grafana dashboards query is exported.
    let exported: std::collections::HashSet<&str> = [&gateway, &dispatcher, &agent]
        .iter()
        .flat_map(|scrape| scrape.text.lines())
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split(['{', ' ']).next())
        .collect();
    let queried = include_str!("../../charts/passage/dashboards/metrics-used.txt");
    let missing: Vec<&str> = queried
        .lines()
        .filter(|name| !exported.contains(name))
        .collect();
    assert!(
        queried.lines().count() >= 10 && missing.is_empty(),
        "the dashboards query series nothing exports: {missing:?}"
    );

    // Who signed in is nobody's label.
    for scrape in [&gateway, &dispatcher, &agent] {
        assert!(
            !scrape.text.contains(&alice.uid) && !scrape.text.contains('@'),
            "{}",
            scrape.text
        );
    }
}

/// Three dispatcher replicas behind one name, as a Kubernetes headless Service gives them:
/// every agent holds a stream to each, a replica stopped under 200 concurrent sign-ins fails
/// none of them, and a fourth replica added to the name is joined by every agent and used by
/// the gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_agent_reaches_every_dispatcher_replica_and_losing_one_fails_no_sign_in() {
    use passage_tests::{
        cluster::{DISPATCHERS_NAME, DispatcherReplicas},
        dns::DnsServer,
    };
    let free_port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port()
    };
    let dns = DnsServer::start().await;
    let name = format!("{DISPATCHERS_NAME}.");
    let replica = |last: u8| std::net::Ipv4Addr::new(127, 0, 0, last);
    dns.set_addresses(&name, vec![replica(1), replica(2), replica(3)]);
    let mut cluster = Cluster::start(ClusterOptions {
        enrolment: true,
        postgres: true,
        agents: 0,
        dispatcher_replicas: Some(DispatcherReplicas {
            name_server: dns.addr().to_string(),
            agent_port: free_port(),
            api_port: free_port(),
        }),
        ..ClusterOptions::default()
    })
    .await;
    let second = cluster.start_dispatcher_replica("127.0.0.2");
    let mut third = cluster.start_dispatcher_replica("127.0.0.3");
    cluster.enrol_agent().await;
    cluster.enrol_agent().await;
    let group = [("connector_group", passage_tests::slapd::DOMAIN)];
    let both_agents_on = |metrics_url: String| async move {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let scrape = Scrape::of(&metrics_url).await;
            if scrape
                .parsed
                .families
                .contains_key("passage_dispatcher_connected_agents")
                && scrape.value("passage_dispatcher_connected_agents", &group) == 2.0
            {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{metrics_url}: not both agents\n{}",
                scrape.text
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    for replica in [&cluster.dispatcher, &second, &third] {
        both_agents_on(replica.metrics_url.clone()).await;
    }
    // 200 sign-ins at once; the third replica is stopped once it has relayed some of them.
    let users = default_users();
    let sign_ins: Vec<_> = (0..200)
        .map(|i| {
            let user = users[i % users.len()].clone();
            let mut client = cluster.gateway_client();
            tokio::spawn(async move {
                client
                    .sign_in(SignInRequest {
                        username: user.upn.clone(),
                        password: user.password.clone(),
                        client_id: CLIENT_ID.into(),
                        client_ip: String::new(),
                        offline_access: false,
                    })
                    .await
            })
        })
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let scrape = Scrape::of(&third.metrics_url).await;
        if scrape
            .parsed
            .families
            .contains_key("passage_dispatcher_relays")
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the third replica relays nothing"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let stopped = tokio::task::spawn_blocking(move || {
        let clean = third.process.terminate(Duration::from_secs(30));
        (third, clean)
    });
    let mut failed = Vec::new();
    for sign_in in sign_ins {
        if let Err(status) = sign_in.await.unwrap() {
            failed.push(format!("{:?}: {}", status.code(), status.message()));
        }
    }
    assert!(
        failed.is_empty(),
        "{} of 200 failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
    let (_third, clean) = stopped.await.unwrap();
    assert!(clean, "the third replica drained and exited");

    // A fourth replica joins the name: every agent connects to it within the re-resolve
    // interval, and the gateway sends it sign-ins.
    let fourth = cluster.start_dispatcher_replica("127.0.0.4");
    dns.set_addresses(&name, vec![replica(1), replica(2), replica(4)]);
    both_agents_on(fourth.metrics_url.clone()).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let alice = &users[0];
        cluster.sign_in(&alice.upn, &alice.password).await.unwrap();
        let scrape = Scrape::of(&fourth.metrics_url).await;
        if scrape
            .parsed
            .families
            .contains_key("passage_dispatcher_relays")
        {
            assert!(scrape.value("passage_dispatcher_relays", &[("outcome", "answered")]) >= 1.0);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the gateway sends the fourth replica nothing"
        );
    }
}

/// A dispatcher whose store stops answering says NOT_SERVING (so Kubernetes takes it out of its
/// Services and gateways pass it over): revocations and enrolment need the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatcher_without_its_store_is_not_ready() {
    let mut cluster = Cluster::start(ClusterOptions {
        enrolment: true,
        postgres: true,
        agents: 0,
        ..ClusterOptions::default()
    })
    .await;
    let serving = ServingStatus::Serving as i32;
    assert_eq!(cluster.dispatcher_health("").await, serving);
    assert_eq!(
        cluster.dispatcher_health("passage.v1.Dispatcher").await,
        serving
    );
    cluster.postgres.as_mut().expect("postgres").stop_now();
    // Checked every 5 s, each check waiting 2 s at most.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while cluster.dispatcher_health("").await == serving {
        assert!(
            std::time::Instant::now() < deadline,
            "still serving without its store"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        cluster.dispatcher_health("passage.v1.Dispatcher").await,
        ServingStatus::NotServing as i32
    );
    // Not ready is not dead: liveness probes ask a service of their own.
    assert_eq!(cluster.dispatcher_health("liveness").await, serving);
}

/// `passage signin` against a gateway whose certificate it cannot verify (no `--ca-file`: the
/// system's roots know nothing of the services CA) says the TLS handshake failed and what to
/// check, and never asks for a password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passage_signin_says_when_tls_fails() {
    let cluster = Cluster::start(ClusterOptions {
        enrolment: true,
        agents: 0,
        ..ClusterOptions::default()
    })
    .await;
    let (ok, _, stderr) = passage_tests::bins::run_to_end(
        "passage",
        &[
            "signin",
            "--gateway",
            &cluster.gateway.grpc_url,
            "--user",
            "alice@corp.example.com",
        ],
    );
    assert!(!ok);
    assert!(
        stderr.contains("TLS failed: check --ca-file")
            && stderr.to_lowercase().contains("certificate"),
        "{stderr}"
    );
}
