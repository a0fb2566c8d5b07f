//! Readiness: whether this gateway can serve sign-ins now — a dispatcher answers its health
//! check, and the store (when there is one) answers a query. `/readyz` and the gRPC health
//! status follow it, so Kubernetes stops sending sign-ins to a gateway that can serve none;
//! `/healthz` stays liveness (the process answers).

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use passage_store::Store;

use tonic_health::{
    ServingStatus,
    pb::{HealthCheckRequest, health_client::HealthClient},
    server::HealthReporter,
};

use crate::{dispatchers::Dispatchers, signin::GatewayService};

/// How long one check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether the gateway is ready, and if not, why.
#[derive(Debug, Default)]
pub struct Readiness {
    /// `None`: ready; otherwise what is missing.
    not_ready: Mutex<Option<String>>,
}

impl Readiness {
    /// Ready until a check says otherwise.
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// `Ok` when ready, else why not.
    pub fn state(&self) -> Result<(), String> {
        match &*self.not_ready.lock().unwrap_or_else(|p| p.into_inner()) {
            None => Ok(()),
            Some(why) => Err(why.clone()),
        }
    }

    /// Checks the dispatcher replicas and `store` every `every` until `stop`, and
    /// reports the result in `reporter` (the `Gateway` service and the server as a whole).
    pub fn watch(
        self: &Arc<Self>,
        dispatchers: Arc<Dispatchers>,
        store: Option<Store>,
        reporter: HealthReporter,
        every: Duration,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let readiness = Arc::clone(self);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticks.tick() => {}
                    _ = stop.wait_for(|stop| *stop) => return,
                }
                let now = check(&dispatchers, store.as_ref()).await.err();
                let changed = {
                    let mut state = readiness
                        .not_ready
                        .lock()
                        .unwrap_or_else(|p| p.into_inner());
                    let changed = *state != now;
                    *state = now.clone();
                    changed
                };
                if !changed || *stop.borrow() {
                    continue;
                }
                let status = match &now {
                    None => {
                        tracing::info!("ready: a dispatcher and the store answer");
                        ServingStatus::Serving
                    }
                    Some(why) => {
                        tracing::warn!(reason = %why, "not ready");
                        ServingStatus::NotServing
                    }
                };
                if status == ServingStatus::Serving {
                    reporter.set_serving::<passage_proto::v1::gateway_server::GatewayServer<GatewayService>>().await;
                } else {
                    reporter.set_not_serving::<passage_proto::v1::gateway_server::GatewayServer<GatewayService>>().await;
                }
                reporter.set_service_status("", status).await;
            }
        });
    }
}

/// One check of what a sign-in needs: a dispatcher replica serving (any one: sign-ins go to
/// the others), and the store.
async fn check(dispatchers: &Dispatchers, store: Option<&Store>) -> Result<(), String> {
    let mut why = String::from("no dispatcher replica");
    for replica in dispatchers.all() {
        let answer = tokio::time::timeout(
            CHECK_TIMEOUT,
            HealthClient::new(replica.channel()).check(HealthCheckRequest {
                service: String::new(),
            }),
        )
        .await;
        why = match answer {
            Ok(Ok(response)) if response.get_ref().status == ServingStatus::Serving as i32 => {
                why.clear();
                break;
            }
            Ok(Ok(_)) => "the dispatcher is not serving".into(),
            Ok(Err(status)) => format!("the dispatcher does not answer: {}", status.message()),
            Err(_) => "the dispatcher does not answer in time".into(),
        };
    }
    if !why.is_empty() {
        return Err(why);
    }
    if let Some(store) = store {
        match tokio::time::timeout(CHECK_TIMEOUT, store.ping()).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => return Err(format!("the store does not answer: {err}")),
            Err(_) => return Err("the store does not answer in time".into()),
        }
    }
    Ok(())
}
