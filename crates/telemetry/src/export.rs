//! The process-wide subscriber with, when the `OTEL_*` environment asks for it, an
//! OpenTelemetry layer exporting spans over OTLP/gRPC.

use std::path::PathBuf;

use opentelemetry::{KeyValue, trace::TracerProvider as _};
use opentelemetry_otlp::{SpanExporter, WithTonicConfig as _};
use opentelemetry_sdk::{Resource, trace::SdkTracerProvider};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};
use tracing_subscriber::{Registry, layer::SubscriberExt as _, util::SubscriberInitExt as _};

/// Why the telemetry settings cannot be used. The process should refuse to start: an operator
/// who asked for traces wants to know at once that none will arrive.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// An `OTEL_*` variable holds a value Passage does not support.
    #[error("{variable}={value}: {reason}")]
    Unsupported {
        /// The variable.
        variable: &'static str,
        /// Its value.
        value: String,
        /// What to do instead.
        reason: &'static str,
    },
    /// A certificate or key file named by an `OTEL_*` variable cannot be read.
    #[error("{variable}: cannot read {}: {source}", path.display())]
    File {
        /// The variable.
        variable: &'static str,
        /// The file it names.
        path: PathBuf,
        /// The read error.
        source: std::io::Error,
    },
    /// The exporter could not be built from the settings.
    #[error("the OTLP trace exporter: {0}")]
    Exporter(String),
}

/// The installed telemetry. Dropping it flushes the spans not yet exported and stops the
/// exporter, so keep it alive for the life of `main`.
#[must_use = "dropping it stops the trace export"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are being exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        let Some(provider) = self.provider.take() else {
            return;
        };
        // The exporter's connection is driven by this runtime: let its other workers run while
        // this one waits for the last batch.
        let shutdown = move || provider.shutdown();
        let result = match tokio::runtime::Handle::try_current() {
            Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(shutdown)
            }
            _ => shutdown(),
        };
        if let Err(err) = result {
            eprintln!("trace export did not shut down cleanly: {err}");
        }
    }
}

/// Installs the process-wide subscriber once: logs to stderr filtered by `RUST_LOG` (else
/// `default_filter`), and — when `OTEL_EXPORTER_OTLP_ENDPOINT`,
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_TRACES_EXPORTER=otlp` is set — the same
/// spans exported over OTLP/gRPC as `service` (unless `OTEL_SERVICE_NAME` names it otherwise).
///
/// Call it from inside the Tokio runtime: the exporter's connection runs on it. A second call
/// (the all-in-one demo, tests) keeps the first subscriber and exports nothing more.
pub fn init(
    service: &str,
    version: &str,
    default_filter: &str,
) -> Result<Telemetry, TelemetryError> {
    let env: Env<'_> = &process_env;
    let provider = if export_wanted(env)? {
        Some(provider(env, service, version)?)
    } else {
        None
    };
    // One global filter decides for the log and the export alike: per-layer filters lost
    // spans under load in our tests. With export on and no `RUST_LOG`, it keeps `info`, so
    // the quiet demo still exports its sign-in spans.
    let mut filter = match &provider {
        Some(_) if std::env::var_os("RUST_LOG").is_none() => super::env_filter("info"),
        _ => super::env_filter(default_filter),
    };
    if provider.is_some() {
        // The exporter's own transport must not trace itself into a loop.
        for directive in [
            "h2=info",
            "hyper=info",
            "hyper_util=info",
            "tower=info",
            "tonic=info",
        ] {
            filter = filter.add_directive(directive.parse().expect("a valid directive"));
        }
    }
    let otel = provider
        .as_ref()
        .map(|provider| tracing_opentelemetry::layer().with_tracer(provider.tracer("passage")));
    let installed = Registry::default()
        .with(filter)
        .with(super::log_layer())
        .with(otel)
        .try_init()
        .is_ok();
    Ok(Telemetry {
        provider: provider.filter(|_| installed),
    })
}

/// Reads a variable; unit tests pass their own.
type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

fn var(env: Env<'_>, name: &str) -> Option<String> {
    env(name).filter(|v| !v.trim().is_empty())
}

/// The traces variable if set, else the general one (the OTLP exporter specification's rule).
fn otlp_var(
    env: Env<'_>,
    traces: &'static str,
    general: &'static str,
) -> Option<(&'static str, String)> {
    var(env, traces)
        .map(|v| (traces, v))
        .or_else(|| var(env, general).map(|v| (general, v)))
}

fn export_wanted(env: Env<'_>) -> Result<bool, TelemetryError> {
    if var(env, "OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return Ok(false);
    }
    if let Some(exporters) = var(env, "OTEL_TRACES_EXPORTER") {
        let mut otlp = false;
        for exporter in exporters.split(',').map(str::trim) {
            match exporter {
                "otlp" => otlp = true,
                "none" => return Ok(false),
                _ => {
                    return Err(TelemetryError::Unsupported {
                        variable: "OTEL_TRACES_EXPORTER",
                        value: exporters.clone(),
                        reason: "Passage exports traces over OTLP only: use `otlp` (with an OpenTelemetry Collector for other backends) or `none`",
                    });
                }
            }
        }
        return Ok(otlp);
    }
    Ok(otlp_var(
        env,
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    )
    .is_some())
}

fn provider(
    env: Env<'_>,
    service: &str,
    version: &str,
) -> Result<SdkTracerProvider, TelemetryError> {
    if let Some((variable, value)) = otlp_var(
        env,
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ) && value != "grpc"
    {
        return Err(TelemetryError::Unsupported {
            variable,
            value,
            reason: "Passage exports OTLP over gRPC: use `grpc` and the collector's gRPC port (usually 4317)",
        });
    }
    let mut exporter = SpanExporter::builder().with_tonic();
    if let Some(tls) = tls_config(env)? {
        exporter = exporter.with_tls_config(tls);
    }
    let exporter = exporter
        .build()
        .map_err(|err| TelemetryError::Exporter(err.to_string()))?;

    let mut resource = Resource::builder();
    // The standard variables win over the built-in name.
    let named = var(env, "OTEL_SERVICE_NAME").is_some()
        || var(env, "OTEL_RESOURCE_ATTRIBUTES").is_some_and(|v| v.contains("service.name="));
    if !named {
        resource = resource.with_service_name(service.to_owned());
    }
    let resource = resource
        .with_attribute(KeyValue::new("service.version", version.to_owned()))
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// TLS towards the collector. Passage trusts no system roots: an `https` endpoint needs
/// `OTEL_EXPORTER_OTLP_CERTIFICATE` (the collector's CA); a client certificate and key are
/// optional.
fn tls_config(env: Env<'_>) -> Result<Option<ClientTlsConfig>, TelemetryError> {
    let endpoint = otlp_var(
        env,
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    );
    let insecure = otlp_var(
        env,
        "OTEL_EXPORTER_OTLP_TRACES_INSECURE",
        "OTEL_EXPORTER_OTLP_INSECURE",
    )
    .is_some_and(|(_, v)| v.eq_ignore_ascii_case("true"));
    // A scheme-less endpoint means TLS unless insecure; no endpoint means http://localhost:4317.
    let https = endpoint
        .as_ref()
        .is_some_and(|(_, url)| url.starts_with("https://") || (!url.contains("://") && !insecure));
    let ca = otlp_var(
        env,
        "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
        "OTEL_EXPORTER_OTLP_CERTIFICATE",
    );
    let Some((ca_variable, ca_path)) = ca else {
        return match endpoint {
            Some((variable, value)) if https => Err(TelemetryError::Unsupported {
                variable,
                value,
                reason: "a TLS collector endpoint needs OTEL_EXPORTER_OTLP_CERTIFICATE, the PEM file of the CA that signed the collector's certificate",
            }),
            _ => Ok(None),
        };
    };
    let mut tls =
        ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca_variable, &ca_path)?));
    let certificate = otlp_var(
        env,
        "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE",
        "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
    );
    let key = otlp_var(
        env,
        "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY",
        "OTEL_EXPORTER_OTLP_CLIENT_KEY",
    );
    match (certificate, key) {
        (Some((cert_variable, cert_path)), Some((key_variable, key_path))) => {
            tls = tls.identity(Identity::from_pem(
                read(cert_variable, &cert_path)?,
                read(key_variable, &key_path)?,
            ));
        }
        (None, None) => {}
        (Some((variable, value)), None) | (None, Some((variable, value))) => {
            return Err(TelemetryError::Unsupported {
                variable,
                value,
                reason: "a client certificate needs both OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE and OTEL_EXPORTER_OTLP_CLIENT_KEY",
            });
        }
    }
    Ok(Some(tls))
}

fn read(variable: &'static str, path: &str) -> Result<Vec<u8>, TelemetryError> {
    std::fs::read(path).map_err(|source| TelemetryError::File {
        variable,
        path: path.into(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            pairs
                .iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| (*value).to_owned())
        }
    }

    #[test]
    fn export_is_on_only_when_asked_for() {
        let cases: &[(&'static [(&str, &str)], bool)] = &[
            (&[], false),
            (&[("OTEL_EXPORTER_OTLP_ENDPOINT", "")], false),
            (
                &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317")],
                true,
            ),
            (
                &[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c:4317")],
                true,
            ),
            (&[("OTEL_TRACES_EXPORTER", "otlp")], true),
            (
                &[
                    ("OTEL_TRACES_EXPORTER", "none"),
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
                ],
                false,
            ),
            (
                &[
                    ("OTEL_SDK_DISABLED", "true"),
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
                ],
                false,
            ),
        ];
        for (pairs, expected) in cases {
            let env = env_of(pairs);
            assert_eq!(export_wanted(&env).unwrap(), *expected, "{pairs:?}");
        }
    }

    #[test]
    fn unsupported_settings_are_named() {
        let env = env_of(&[("OTEL_TRACES_EXPORTER", "zipkin")]);
        let err = export_wanted(&env).unwrap_err().to_string();
        assert!(err.starts_with("OTEL_TRACES_EXPORTER=zipkin: "), "{err}");

        let env = env_of(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ]);
        let err = provider(&env, "s", "1").unwrap_err().to_string();
        assert!(
            err.starts_with("OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf: "),
            "{err}"
        );
    }

    #[test]
    fn a_tls_endpoint_needs_a_ca_file() {
        let env = env_of(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4317")]);
        let err = tls_config(&env).unwrap_err().to_string();
        assert!(err.contains("OTEL_EXPORTER_OTLP_CERTIFICATE"), "{err}");
        let env = env_of(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317")]);
        assert!(tls_config(&env).is_err(), "scheme-less means TLS");
        let env = env_of(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317"),
            ("OTEL_EXPORTER_OTLP_INSECURE", "true"),
        ]);
        assert!(tls_config(&env).unwrap().is_none());
        let env = env_of(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317")]);
        assert!(tls_config(&env).unwrap().is_none());

        let env = env_of(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4317"),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/nonexistent/ca.pem"),
        ]);
        let err = tls_config(&env).unwrap_err().to_string();
        assert!(
            err.starts_with("OTEL_EXPORTER_OTLP_CERTIFICATE: cannot read /nonexistent/ca.pem"),
            "{err}"
        );
    }

    #[test]
    fn a_client_certificate_needs_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "not checked until the handshake").unwrap();
        let ca = ca.to_str().unwrap().to_owned();
        let env = move |name: &str| match name {
            "OTEL_EXPORTER_OTLP_ENDPOINT" => Some("https://collector:4317".to_owned()),
            "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE" => Some(ca.clone()),
            "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE" => Some("/etc/client.pem".to_owned()),
            _ => None,
        };
        let err = tls_config(&env).unwrap_err().to_string();
        assert!(err.contains("OTEL_EXPORTER_OTLP_CLIENT_KEY"), "{err}");
    }
}
