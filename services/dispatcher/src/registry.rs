//! The registry of live agent streams at this dispatcher replica.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use dashmap::DashMap;
use passage_proto::v1::{ConnectResponse, ValidationAnswer, ValidationTask, connect_response};
use tokio::sync::{mpsc, oneshot};
use tonic::Status;

/// What an agent said about itself in its hello.
#[derive(Debug, Clone)]
pub struct AgentIdentity {
    /// Agent id.
    pub agent_id: String,
    /// Tenant.
    pub tenant: String,
    /// Connector group.
    pub connector_group: String,
    /// Software version.
    pub version: String,
    /// Host name.
    pub hostname: String,
    /// Sealing key (SPKI DER).
    pub public_key_der: Vec<u8>,
    /// Hybrid sealing key (`pk_M | pk_X`), empty if none.
    pub hybrid_public_key: Vec<u8>,
    /// Concurrent validations it accepts.
    pub capacity: u32,
    /// Serial of the certificate it connected with (none in plaintext development mode).
    pub cert_serial: Option<String>,
    /// The certificate it connected with, DER (none in plaintext development mode).
    pub certificate_der: Option<Vec<u8>>,
    /// The directory lockout policy it reported in its hello: (threshold, window in seconds);
    /// (0, _) when none is known, a window of 0 when failures are remembered until a success.
    pub directory_lockout: (u32, u32),
}

/// Why a task could not be handed to an agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DispatchError {
    /// The stream is gone or draining.
    Gone,
    /// The stream's send buffer is full.
    Full,
}

/// One agent's live stream.
pub struct AgentConnection {
    /// Who the agent is.
    pub identity: AgentIdentity,
    /// Distinguishes this stream from an earlier one of the same agent.
    pub connection_id: u64,
    outbound: mpsc::Sender<Result<ConnectResponse, Status>>,
    pending: Mutex<HashMap<u64, oneshot::Sender<ValidationAnswer>>>,
    next_request_id: AtomicU64,
    in_flight: AtomicU32,
    /// The directory lockout policy last reported: threshold in the high half, window in the
    /// low half, so the two are always read together.
    directory_lockout: AtomicU64,
    /// Directory servers answering (high half) of those configured (low half), as last
    /// reported; 0 of 0 until a heartbeat says.
    directory_health: AtomicU64,
    draining: AtomicBool,
    closed: AtomicBool,
    last_seen: Mutex<Instant>,
}

impl std::fmt::Debug for AgentConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentConnection")
            .field("agent_id", &self.identity.agent_id)
            .field("connection_id", &self.connection_id)
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

/// A task handed to an agent; dropping it before the answer forgets the request.
pub struct PendingAnswer {
    connection: Arc<AgentConnection>,
    request_id: u64,
    receiver: Option<oneshot::Receiver<ValidationAnswer>>,
}

impl PendingAnswer {
    /// Waits for the answer; `None` when the stream was lost first.
    pub async fn answer(mut self) -> Option<ValidationAnswer> {
        let receiver = self.receiver.take()?;
        receiver.await.ok()
    }
}

impl Drop for PendingAnswer {
    fn drop(&mut self) {
        self.connection.forget(self.request_id);
    }
}

impl AgentConnection {
    /// A connection sending through `outbound`.
    pub fn new(
        identity: AgentIdentity,
        connection_id: u64,
        outbound: mpsc::Sender<Result<ConnectResponse, Status>>,
    ) -> Self {
        let (threshold, window) = identity.directory_lockout;
        Self {
            identity,
            connection_id,
            outbound,
            pending: Mutex::new(HashMap::new()),
            next_request_id: AtomicU64::new(1),
            in_flight: AtomicU32::new(0),
            directory_lockout: AtomicU64::new(u64::from(threshold) << 32 | u64::from(window)),
            directory_health: AtomicU64::new(0),
            draining: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            last_seen: Mutex::new(Instant::now()),
        }
    }

    /// The directory lockout policy the agent last reported: (threshold, window in seconds).
    pub fn directory_lockout(&self) -> (u32, u32) {
        let packed = self.directory_lockout.load(Ordering::Relaxed);
        ((packed >> 32) as u32, packed as u32)
    }

    /// Records the policy a heartbeat reported.
    pub fn set_directory_lockout(&self, threshold: u32, window_s: u32) {
        self.directory_lockout.store(
            u64::from(threshold) << 32 | u64::from(window_s),
            Ordering::Relaxed,
        );
    }

    /// Records the directory health a heartbeat reported.
    pub fn set_directory_health(&self, servers_up: u32, servers_total: u32) {
        self.directory_health.store(
            u64::from(servers_up) << 32 | u64::from(servers_total),
            Ordering::Relaxed,
        );
    }

    /// Whether the agent's directory answers, as last reported (assumed until a heartbeat
    /// says none of its servers does).
    pub fn directory_reachable(&self) -> bool {
        let packed = self.directory_health.load(Ordering::Relaxed);
        let (up, total) = ((packed >> 32) as u32, packed as u32);
        total == 0 || up > 0
    }

    /// What a metrics scrape shows of this agent.
    pub fn sample(&self) -> passage_metrics::dispatcher::AgentSample {
        let packed = self.directory_health.load(Ordering::Relaxed);
        passage_metrics::dispatcher::AgentSample {
            agent_id: self.identity.agent_id.clone(),
            tenant: self.identity.tenant.clone(),
            connector_group: self.identity.connector_group.clone(),
            version: self.identity.version.clone(),
            in_flight: self.in_flight(),
            capacity: self.identity.capacity,
            certificate_not_after: self
                .identity
                .certificate_der
                .as_deref()
                .and_then(|der| passage_pki::CertifiedAgent::parse(der).ok())
                .map(|certified| certified.not_after),
            directory_servers: ((packed >> 32) as u32, packed as u32),
        }
    }

    /// Validations sent and not yet answered.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Whether new work may be sent: open, not draining, heard from recently.
    pub fn is_healthy(&self, liveness: Duration) -> bool {
        !self.closed.load(Ordering::Relaxed)
            && !self.draining.load(Ordering::Relaxed)
            && self
                .last_seen
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .elapsed()
                < liveness
    }

    /// Whether the agent is at its advertised capacity.
    pub fn is_full(&self) -> bool {
        self.in_flight() >= self.identity.capacity
    }

    /// How long ago the agent was last heard from.
    pub fn silent_for(&self) -> Duration {
        self.last_seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
    }

    /// Records that the agent was heard from.
    pub fn touch(&self) {
        *self.last_seen.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    /// Sends `task` (its request id is assigned here) and returns a handle on the answer.
    pub fn dispatch(
        self: &Arc<Self>,
        mut task: ValidationTask,
    ) -> Result<PendingAnswer, DispatchError> {
        if self.closed.load(Ordering::Relaxed) || self.draining.load(Ordering::Relaxed) {
            return Err(DispatchError::Gone);
        }
        let request_id = self.next_request_id.fetch_add(1, Ordering::Relaxed);
        task.request_id = request_id;
        let (sender, receiver) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(request_id, sender);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        let pending = PendingAnswer {
            connection: Arc::clone(self),
            request_id,
            receiver: Some(receiver),
        };
        let message = ConnectResponse {
            message: Some(connect_response::Message::Task(task)),
        };
        match self.outbound.try_send(Ok(message)) {
            Ok(()) => Ok(pending),
            Err(mpsc::error::TrySendError::Full(_)) => Err(DispatchError::Full),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(DispatchError::Gone),
        }
    }

    /// Delivers an answer from the agent; false when nobody waits for it (late or unknown id).
    pub fn complete(&self, answer: ValidationAnswer) -> bool {
        let waiter = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&answer.request_id);
        match waiter {
            Some(waiter) => {
                self.in_flight.fetch_sub(1, Ordering::Relaxed);
                waiter.send(answer).is_ok()
            }
            None => false,
        }
    }

    fn forget(&self, request_id: u64) {
        if self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&request_id)
            .is_some()
        {
            self.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Marks the stream closed and fails every waiter (they see the stream as lost).
    pub fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        let waiters = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        self.in_flight
            .fetch_sub(waiters.len() as u32, Ordering::Relaxed);
    }

    /// Sends `message` on the stream (waiting for room); false if the stream is gone.
    pub async fn send(&self, message: ConnectResponse) -> bool {
        self.outbound.send(Ok(message)).await.is_ok()
    }

    /// Ends the stream at once with `status` (revocation): waiters fail, the agent is told why.
    pub fn terminate(&self, status: Status) {
        self.close();
        let _ = self.outbound.try_send(Err(status));
    }

    /// Asks the agent to stop sending work here; in-flight work still completes.
    pub async fn drain(&self, reason: &str) {
        self.draining.store(true, Ordering::Relaxed);
        let message = ConnectResponse {
            message: Some(connect_response::Message::Drain(passage_proto::v1::Drain {
                reason: reason.to_owned(),
            })),
        };
        let _ = self.outbound.send(Ok(message)).await;
    }
}

/// All live agent streams at this replica, by agent id.
#[derive(Default)]
pub struct AgentRegistry {
    agents: DashMap<String, Arc<AgentConnection>>,
    next_connection_id: AtomicU64,
}

impl AgentRegistry {
    /// A fresh connection id.
    pub fn next_connection_id(&self) -> u64 {
        self.next_connection_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers `connection`, replacing an older stream of the same agent and ending it: a
    /// stream no longer in the registry would otherwise live on unseen by revocation, and its
    /// agent would never learn it serves nothing.
    pub fn register(&self, connection: Arc<AgentConnection>) {
        if let Some(old) = self
            .agents
            .insert(connection.identity.agent_id.clone(), connection)
        {
            old.terminate(Status::aborted(
                "a newer stream of this agent replaced this one",
            ));
        }
    }

    /// Removes the agent's stream if it is still `connection_id`, and fails its waiters.
    pub fn unregister(&self, agent_id: &str, connection_id: u64) {
        if let Some((_, connection)) = self
            .agents
            .remove_if(agent_id, |_, c| c.connection_id == connection_id)
        {
            connection.close();
        }
    }

    /// The live stream of `agent_id`.
    pub fn get(&self, agent_id: &str) -> Option<Arc<AgentConnection>> {
        self.agents.get(agent_id).map(|c| Arc::clone(&c))
    }

    /// Healthy agents of a tenant's connector group.
    pub fn healthy(
        &self,
        tenant: &str,
        connector_group: &str,
        liveness: Duration,
    ) -> Vec<Arc<AgentConnection>> {
        self.agents
            .iter()
            .filter(|c| {
                c.identity.tenant == tenant
                    && c.identity.connector_group == connector_group
                    && c.is_healthy(liveness)
            })
            .map(|c| Arc::clone(&c))
            .collect()
    }

    /// Removes and terminates the stream of `agent_id` with `status`; true if there was one.
    pub fn cut(&self, agent_id: &str, status: Status) -> bool {
        match self.agents.remove(agent_id) {
            Some((_, connection)) => {
                connection.terminate(status);
                true
            }
            None => false,
        }
    }

    /// Like [`AgentRegistry::cut`], but only if the agent's stream is still `connection_id`.
    pub fn cut_connection(&self, agent_id: &str, connection_id: u64, status: Status) -> bool {
        match self
            .agents
            .remove_if(agent_id, |_, c| c.connection_id == connection_id)
        {
            Some((_, connection)) => {
                connection.terminate(status);
                true
            }
            None => false,
        }
    }

    /// Every connection, for draining.
    pub fn all(&self) -> Vec<Arc<AgentConnection>> {
        self.agents.iter().map(|c| Arc::clone(&c)).collect()
    }

    /// Number of live streams.
    pub fn len(&self) -> usize {
        self.agents.len()
    }

    /// Whether no agent is connected.
    pub fn is_empty(&self) -> bool {
        self.agents.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connection(
        registry: &AgentRegistry,
        id: &str,
    ) -> (
        Arc<AgentConnection>,
        mpsc::Receiver<Result<ConnectResponse, Status>>,
    ) {
        let (tx, rx) = mpsc::channel(8);
        let identity = AgentIdentity {
            agent_id: id.into(),
            tenant: "default".into(),
            connector_group: "corp".into(),
            version: "test".into(),
            hostname: "host".into(),
            public_key_der: vec![],
            hybrid_public_key: vec![],
            capacity: 2,
            cert_serial: None,
            certificate_der: None,
            directory_lockout: (0, 0),
        };
        (
            Arc::new(AgentConnection::new(
                identity,
                registry.next_connection_id(),
                tx,
            )),
            rx,
        )
    }

    #[tokio::test]
    async fn answers_reach_their_waiter_and_in_flight_is_counted() {
        let registry = AgentRegistry::default();
        let (conn, mut rx) = connection(&registry, "a");
        registry.register(Arc::clone(&conn));
        let pending = conn.dispatch(ValidationTask::default()).unwrap();
        assert_eq!(conn.in_flight(), 1);
        let Some(Ok(ConnectResponse {
            message: Some(connect_response::Message::Task(task)),
        })) = rx.recv().await
        else {
            panic!("task not sent");
        };
        assert!(conn.complete(ValidationAnswer {
            request_id: task.request_id,
            retryable: true,
            ..Default::default()
        }));
        assert!(pending.answer().await.unwrap().retryable);
        assert_eq!(conn.in_flight(), 0);
        // A second answer for the same id finds nobody.
        assert!(!conn.complete(ValidationAnswer {
            request_id: task.request_id,
            ..Default::default()
        }));
    }

    #[tokio::test]
    async fn closing_fails_waiters_as_lost() {
        let registry = AgentRegistry::default();
        let (conn, _rx) = connection(&registry, "a");
        registry.register(Arc::clone(&conn));
        let pending = conn.dispatch(ValidationTask::default()).unwrap();
        registry.unregister("a", conn.connection_id);
        assert!(pending.answer().await.is_none());
        assert_eq!(conn.in_flight(), 0);
        assert!(registry.is_empty());
        assert_eq!(
            conn.dispatch(ValidationTask::default()).err(),
            Some(DispatchError::Gone)
        );
    }

    #[tokio::test]
    async fn a_newer_stream_is_not_removed_by_the_older_ones_end() {
        let registry = AgentRegistry::default();
        let (old, mut old_rx) = connection(&registry, "a");
        let (new, _rx2) = connection(&registry, "a");
        registry.register(Arc::clone(&old));
        registry.register(Arc::clone(&new));
        registry.unregister("a", old.connection_id);
        assert_eq!(registry.get("a").unwrap().connection_id, new.connection_id);
        assert!(!old.is_healthy(Duration::from_secs(60)));
        // The replaced stream was ended, so its agent knows.
        let mut ended = false;
        while let Ok(message) = old_rx.try_recv() {
            ended |= message.is_err();
        }
        assert!(ended, "the replaced stream is ended with a status");
    }

    #[tokio::test]
    async fn dropped_waiter_releases_in_flight() {
        let registry = AgentRegistry::default();
        let (conn, _rx) = connection(&registry, "a");
        drop(conn.dispatch(ValidationTask::default()).unwrap());
        assert_eq!(conn.in_flight(), 0);
    }
}
