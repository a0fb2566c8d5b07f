//! The agent's outbound streams: one per dispatcher address, reconnecting forever.

use std::{
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use passage_proto::v1::{
    AgentHello, ConnectRequest, Heartbeat, agent_tunnel_client::AgentTunnelClient, connect_request,
    connect_response,
};
use tokio::{
    sync::{Semaphore, mpsc, watch},
    task::JoinSet,
};
use tokio_stream::wrappers::ReceiverStream;

use passage_transport::ClientIdentity;

use crate::{AgentConfig, Validator, state::AgentState};

/// Reconnect delays: from `INITIAL_BACKOFF`, doubling up to `MAX_BACKOFF`, with full jitter.
const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A stream that lived this long resets the backoff.
const STABLE_AFTER: Duration = Duration::from_secs(30);

/// Why a stream ended.
#[derive(Debug)]
enum StreamEnd {
    /// The dispatcher asked us to leave; reconnect promptly (to another replica, usually).
    Drained,
    /// The agent is shutting down.
    Shutdown,
}

/// Runs one stream per dispatcher in `config` until `shutdown` resolves; in-flight validations
/// finish before a stream closes.
pub async fn run(
    config: AgentConfig,
    state: AgentState,
    validator: Arc<Validator>,
    shutdown: impl Future<Output = ()> + Send,
) {
    let (stop_tx, stop_rx) = watch::channel(false);
    let capacity = Arc::new(Semaphore::new(config.capacity as usize));
    // Once enrolled, the certificate says who the agent is; the configuration only helps
    // before enrolment (development mode).
    let (tenant, connector_group) = match &state.certificate {
        Some((_, certified)) => {
            let id = &certified.identity;
            if id.tenant != config.tenant || id.connector_group != config.connector_group {
                tracing::warn!(
                    certificate_tenant = %id.tenant,
                    certificate_group = %id.connector_group,
                    "the configuration names another tenant or connector group than the certificate; the certificate wins"
                );
            }
            (id.tenant.clone(), id.connector_group.clone())
        }
        None => (config.tenant.clone(), config.connector_group.clone()),
    };
    let link = Arc::new(Link {
        hello: AgentHello {
            agent_id: state.agent_id.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            tenant,
            connector_group,
            capacity: config.capacity,
            public_key_der: state.key.public_key_der().to_vec(),
            hostname: hostname(),
        },
        identity: state.client_identity(),
        config,
        validator,
        capacity,
    });
    let mut streams = JoinSet::new();
    for url in link.config.dispatchers.clone() {
        streams.spawn(keep_connected(url, Arc::clone(&link), stop_rx.clone()));
    }
    shutdown.await;
    tracing::info!("agent shutting down; finishing in-flight validations");
    let _ = stop_tx.send(true);
    while streams.join_next().await.is_some() {}
}

/// What every stream of this agent shares.
struct Link {
    config: AgentConfig,
    hello: AgentHello,
    identity: Option<ClientIdentity>,
    validator: Arc<Validator>,
    capacity: Arc<Semaphore>,
}

async fn keep_connected(url: String, link: Arc<Link>, mut stop: watch::Receiver<bool>) {
    let mut backoff = INITIAL_BACKOFF;
    loop {
        let started = Instant::now();
        let result = session(&url, &link, stop.clone()).await;
        match result {
            Ok(StreamEnd::Shutdown) => return,
            Ok(StreamEnd::Drained) => {
                tracing::info!(dispatcher = %url, "dispatcher drained this stream; reconnecting");
                backoff = INITIAL_BACKOFF;
            }
            Err(err) => {
                if started.elapsed() > STABLE_AFTER {
                    backoff = INITIAL_BACKOFF;
                }
                tracing::warn!(dispatcher = %url, error = %err, retry_in_ms = backoff.as_millis() as u64, "stream to dispatcher ended");
            }
        }
        let delay = jitter(backoff);
        backoff = (backoff * 2).min(MAX_BACKOFF);
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = stopped(&mut stop) => return,
        }
    }
}

/// A uniformly random delay in [d/2, d] ("equal jitter"), so agents do not reconnect in lockstep.
fn jitter(d: Duration) -> Duration {
    let mut bytes = [0u8; 4];
    let fraction = match SystemRandom::new().fill(&mut bytes) {
        Ok(()) => f64::from(u32::from_le_bytes(bytes)) / f64::from(u32::MAX),
        Err(_) => 1.0,
    };
    d.mul_f64(0.5 + fraction / 2.0)
}

async fn session(
    url: &str,
    link: &Link,
    mut stop: watch::Receiver<bool>,
) -> Result<StreamEnd, String> {
    let Link {
        config,
        hello,
        identity,
        validator,
        capacity,
    } = link;
    let channel = tokio::select! {
        result = crate::dial(config, url, identity.as_ref()) => result?,
        () = stopped(&mut stop) => return Ok(StreamEnd::Shutdown),
    };
    let mut client = AgentTunnelClient::new(channel);
    let (outbound, receiver) = mpsc::channel::<ConnectRequest>(config.capacity as usize + 16);
    outbound
        .send(ConnectRequest {
            message: Some(connect_request::Message::Hello(hello.clone())),
        })
        .await
        .map_err(|_| "stream closed before hello".to_owned())?;
    let mut inbound = client
        .connect(ReceiverStream::new(receiver))
        .await
        .map_err(|status| format!("dispatcher refused the stream: {}", status.message()))?
        .into_inner();

    let welcome = match inbound
        .message()
        .await
        .map_err(|s| s.message().to_owned())?
    {
        Some(passage_proto::v1::ConnectResponse {
            message: Some(connect_response::Message::Welcome(welcome)),
        }) => welcome,
        _ => return Err("dispatcher did not welcome the agent".into()),
    };
    let heartbeat_every = match welcome.heartbeat_interval_ms {
        0 => config.heartbeat_interval(),
        ms => Duration::from_millis(u64::from(ms)),
    };
    tracing::info!(dispatcher = %url, dispatcher_id = %welcome.dispatcher_id, "connected to dispatcher");

    let mut tasks = JoinSet::new();
    let mut heartbeat = tokio::time::interval(heartbeat_every);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let end = loop {
        tokio::select! {
            message = inbound.message() => {
                let message = match message {
                    Ok(Some(message)) => message,
                    Ok(None) => break Err("dispatcher closed the stream".to_owned()),
                    Err(status) => break Err(format!("stream error: {}", status.message())),
                };
                match message.message {
                    Some(connect_response::Message::Task(task)) => {
                        let outbound = outbound.clone();
                        let validator = Arc::clone(validator);
                        let Ok(permit) = Arc::clone(capacity).try_acquire_owned() else {
                            let answer = passage_proto::v1::ValidationAnswer {
                                request_id: task.request_id,
                                error: passage_proto::v1::AgentError::Overloaded as i32,
                                detail: "agent at capacity".into(),
                                ..Default::default()
                            };
                            let _ = outbound.send(ConnectRequest { message: Some(connect_request::Message::Answer(answer)) }).await;
                            continue;
                        };
                        tasks.spawn(async move {
                            let answer = validator.validate(task).await;
                            drop(permit);
                            let _ = outbound
                                .send(ConnectRequest { message: Some(connect_request::Message::Answer(answer)) })
                                .await;
                        });
                    }
                    Some(connect_response::Message::Drain(drain)) => {
                        tracing::info!(reason = %drain.reason, "dispatcher asked to drain");
                        break Ok(StreamEnd::Drained);
                    }
                    Some(connect_response::Message::Welcome(_)) | None => {}
                }
            }
            _ = heartbeat.tick() => {
                let in_flight = config.capacity.saturating_sub(capacity.available_permits() as u32);
                let beat = ConnectRequest { message: Some(connect_request::Message::Heartbeat(Heartbeat { in_flight })) };
                if outbound.send(beat).await.is_err() {
                    break Err("stream closed".to_owned());
                }
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            () = stopped(&mut stop) => break Ok(StreamEnd::Shutdown),
        }
    };
    // Answer what we already accepted before closing our side (drain and shutdown).
    while tasks.join_next().await.is_some() {}
    drop(outbound);
    end
}

/// Resolves once `stop` says so (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// This host's name, for operators.
pub fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_half_and_whole() {
        for _ in 0..1000 {
            let d = jitter(Duration::from_millis(1000));
            assert!(
                d >= Duration::from_millis(500) && d <= Duration::from_millis(1000),
                "{d:?}"
            );
        }
    }
}
