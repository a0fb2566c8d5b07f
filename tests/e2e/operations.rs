//! What operators rely on: health and reflection on every gRPC server, one trace id across
//! the three processes' logs, and no password in any log.

use passage_proto::v1::SignInRequest;
use passage_tests::{Cluster, ClusterOptions, cluster::CLIENT_ID, slapd::default_users};
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
        assert!(
            services.iter().any(|s| s == "grpc.health.v1.Health"),
            "{url} reflects {services:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_id_follows_a_sign_in_and_no_password_is_logged() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let alice = default_users().remove(0);
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut request = tonic::Request::new(SignInRequest {
        username: alice.upn.clone(),
        password: alice.password.clone(),
        client_id: CLIENT_ID.into(),
        client_ip: String::new(),
    });
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-00f067aa0ba902b7-01")
            .parse()
            .unwrap(),
    );
    cluster
        .gateway_client()
        .sign_in(request)
        .await
        .expect("sign-in");
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
