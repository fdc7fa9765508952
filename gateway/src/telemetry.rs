//! Logs and, with the cargo feature `otlp`, OpenTelemetry traces over OTLP/HTTP.
//!
//! [`init`] installs the process's `tracing` subscriber: the log lines (`RUST_LOG`, default
//! `info`; text or JSON) and, when built with `--features otlp` and an endpoint is configured
//! ([`OtlpSettings::from_env`]), a second layer that exports hark's spans as OpenTelemetry
//! traces:
//!
//! - `call` (one per call, a root span): `call_sid`, `stream_sid`;
//! - `turn` (one per caller turn, a child of `call`, see `server/observer.rs`);
//! - `provider_request` (one per provider HTTP request or WebSocket, a child of `call`, see
//!   `hark_engine::io`).
//!
//! Spans are batched and sent as protobuf (`http/protobuf`) to `POST <endpoint>/v1/traces` by
//! the OpenTelemetry SDK's batch processor on its own thread, through reqwest (rustls on ring,
//! like every other client of hark) on a one-thread tokio runtime of its own, so an export
//! never waits on a call worker and a call worker never waits on an export. Warnings and
//! errors logged by hark inside those spans go with them as span events; nothing else is
//! exported (no log lines at `info`, no spans of dependencies).
//!
//! Without the feature the same functions exist: [`init`] starts the logs only, and
//! [`flush`] and [`shutdown`] do nothing.

use crate::config::LogFormat;

/// The traces endpoint variable (used as is: the full URL of the collector's traces
/// endpoint).
pub const TRACES_ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
/// The base endpoint variable (`/v1/traces` is appended).
pub const ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// The service name variable (`service.name` of the exported traces).
pub const SERVICE_NAME_VAR: &str = "OTEL_SERVICE_NAME";
/// `service.name` when [`SERVICE_NAME_VAR`] is unset or empty.
pub const DEFAULT_SERVICE_NAME: &str = "hark";

/// Where traces go: read from the standard OpenTelemetry variables by
/// [`OtlpSettings::from_env`], or built by a program (or test) of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpSettings {
    /// The full URL the exporter posts to, e.g. `http://127.0.0.1:4318/v1/traces`.
    pub traces_endpoint: String,
    /// The `service.name` resource attribute.
    pub service_name: String,
}

impl OtlpSettings {
    /// From the environment: see [`OtlpSettings::from_lookup`].
    pub fn from_env() -> Option<OtlpSettings> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// From `lookup` (a variable's value): [`TRACES_ENDPOINT_VAR`] as is, else
    /// [`ENDPOINT_VAR`] with `/v1/traces` appended (as the OTLP specification says); the
    /// service name from [`SERVICE_NAME_VAR`], else [`DEFAULT_SERVICE_NAME`]. `None` (no
    /// traces) when neither endpoint is set to a non-empty value.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Option<OtlpSettings> {
        let set = |k: &str| {
            lookup(k)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let traces_endpoint = match set(TRACES_ENDPOINT_VAR) {
            Some(url) => url,
            None => {
                let base = set(ENDPOINT_VAR)?;
                format!("{}/v1/traces", base.trim_end_matches('/'))
            }
        };
        Some(OtlpSettings {
            traces_endpoint,
            service_name: set(SERVICE_NAME_VAR).unwrap_or_else(|| DEFAULT_SERVICE_NAME.into()),
        })
    }
}

/// Why traces could not be started (the logs are started anyway).
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// An endpoint is set but this `hark` was built without the `otlp` feature.
    #[error(
        "{TRACES_ENDPOINT_VAR}/{ENDPOINT_VAR} is set but this hark was built without the `otlp` \
         feature: no traces (build with `cargo build --release --features otlp`)"
    )]
    NotBuilt,
    /// The exporter could not be built (a malformed endpoint URL, the HTTP client, the
    /// exporter's runtime).
    #[error("OTLP exporter: {0}")]
    Exporter(String),
    /// A subscriber was already installed in this process: neither logs nor traces changed.
    #[error("a tracing subscriber is already installed")]
    AlreadyInstalled,
}

/// Starts the logs (`RUST_LOG`, default `info`; text with ANSI colours on a terminal, or
/// JSON) and, when `otlp` is given and the feature `otlp` is built, the trace export.
///
/// # Errors
/// [`TelemetryError::AlreadyInstalled`] when a subscriber is already installed (a second call
/// changes nothing); [`TelemetryError::NotBuilt`] or [`TelemetryError::Exporter`] when traces
/// were asked for but cannot be sent (the logs are started all the same).
pub fn init(format: LogFormat, otlp: Option<&OtlpSettings>) -> Result<(), TelemetryError> {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let fmt = tracing_subscriber::fmt::layer().with_ansi(ansi);
    let fmt = match format {
        LogFormat::Json => fmt
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_filter(filter)
            .boxed(),
        LogFormat::Text => fmt.with_filter(filter).boxed(),
    };
    let (traces, problem) = match otlp {
        None => (None, None),
        Some(s) => match otlp::layer(s) {
            Ok(l) => (Some(l), None),
            Err(e) => (None, Some(e)),
        },
    };
    tracing_subscriber::registry()
        .with(traces)
        .with(fmt)
        .try_init()
        .map_err(|_| TelemetryError::AlreadyInstalled)?;
    match problem {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Sends the spans that ended and are not yet exported, waiting for the export (at most the
/// exporter's timeout, 10 s). Blocks the thread: from async code run it with
/// `tokio::task::spawn_blocking`. Does nothing without traces.
pub fn flush() {
    otlp::flush();
}

/// [`flush`], then stops the export (spans that end later are dropped). For the end of the
/// process. Blocks as [`flush`] does.
pub fn shutdown() {
    otlp::shutdown();
}

/// The OpenTelemetry layer and its provider (feature `otlp`).
#[cfg(feature = "otlp")]
mod otlp {
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::OnceLock;

    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
    use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing_subscriber::Layer;

    use super::{OtlpSettings, TelemetryError};

    /// The provider of the installed layer (for [`flush`] and [`shutdown`]).
    static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();
    /// The exporter's tokio runtime (one worker thread, never dropped).
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();

    /// The exported layer, boxed for the registry.
    pub(super) type TraceLayer =
        Box<dyn Layer<tracing_subscriber::Registry> + Send + Sync + 'static>;

    /// reqwest on the exporter's own runtime: the SDK's batch thread polls exports with a
    /// plain executor, which has no tokio reactor for reqwest's connections.
    #[derive(Debug)]
    struct OnRuntime {
        client: reqwest::Client,
        runtime: tokio::runtime::Handle,
    }

    impl HttpClient for OnRuntime {
        fn send_bytes<'a, 'b>(
            &'a self,
            request: Request<Bytes>,
        ) -> Pin<Box<dyn Future<Output = Result<Response<Bytes>, HttpError>> + Send + 'b>>
        where
            'a: 'b,
            Self: 'b,
        {
            let client = self.client.clone();
            let task = self
                .runtime
                .spawn(async move { client.send_bytes(request).await });
            Box::pin(async move { task.await.map_err(|e| Box::new(e) as HttpError)? })
        }
    }

    /// hark's spans at `info` and above, and its warnings and errors (as span events).
    fn exported(meta: &tracing::Metadata<'_>) -> bool {
        let ours =
            meta.target().starts_with("hark_gateway") || meta.target().starts_with("hark_engine");
        let level = *meta.level();
        ours && if meta.is_span() {
            level <= tracing::Level::INFO
        } else {
            level <= tracing::Level::WARN
        }
    }

    pub(super) fn layer(s: &OtlpSettings) -> Result<TraceLayer, TelemetryError> {
        let err = |e: &dyn std::fmt::Display| TelemetryError::Exporter(e.to_string());
        let runtime = match RUNTIME.get() {
            Some(rt) => rt,
            None => {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .thread_name("hark-otlp")
                    .enable_all()
                    .build()
                    .map_err(|e| err(&e))?;
                RUNTIME.get_or_init(|| rt)
            }
        };
        // rustls on ring, as for every other client of hark (no OpenSSL, no aws-lc).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .connect_timeout(std::time::Duration::from_secs(5))
            .user_agent(concat!("hark/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| err(&e))?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(&s.traces_endpoint)
            .with_http_client(OnRuntime {
                client,
                runtime: runtime.handle().clone(),
            })
            .build()
            .map_err(|e| err(&e))?;
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(s.service_name.clone())
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("hark");
        // One subscriber per process: a provider is kept only for the first layer.
        let _ = PROVIDER.set(provider);
        let filter = tracing_subscriber::filter::filter_fn(exported);
        Ok(tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_filter(filter)
            .boxed())
    }

    pub(super) fn flush() {
        if let Some(p) = PROVIDER.get()
            && let Err(e) = p.force_flush()
        {
            tracing::warn!(error = %e, "cannot send the last traces");
        }
    }

    pub(super) fn shutdown() {
        if let Some(p) = PROVIDER.get()
            && let Err(e) = p.shutdown()
        {
            tracing::warn!(error = %e, "cannot send the last traces");
        }
    }
}

/// Without the feature `otlp`: no layer, nothing to flush.
#[cfg(not(feature = "otlp"))]
mod otlp {
    use super::{OtlpSettings, TelemetryError};

    /// Never built: the type of the absent layer.
    pub(super) type TraceLayer = tracing_subscriber::layer::Identity;

    pub(super) fn layer(_: &OtlpSettings) -> Result<TraceLayer, TelemetryError> {
        Err(TelemetryError::NotBuilt)
    }

    pub(super) fn flush() {}

    pub(super) fn shutdown() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(vars: &[(&str, &str)]) -> Option<OtlpSettings> {
        OtlpSettings::from_lookup(|k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn traces_are_on_only_with_an_endpoint() {
        assert_eq!(from(&[]), None);
        assert_eq!(from(&[(ENDPOINT_VAR, " ")]), None);
        assert_eq!(from(&[(SERVICE_NAME_VAR, "x")]), None);
    }

    #[test]
    fn the_base_endpoint_gets_the_traces_path_and_the_traces_endpoint_is_taken_as_is() {
        let s = from(&[(ENDPOINT_VAR, "http://collector:4318/")]).unwrap();
        assert_eq!(s.traces_endpoint, "http://collector:4318/v1/traces");
        assert_eq!(s.service_name, "hark");
        let s = from(&[
            (ENDPOINT_VAR, "http://collector:4318"),
            (TRACES_ENDPOINT_VAR, "https://x.example/otlp/traces"),
            (SERVICE_NAME_VAR, "hark-eu"),
        ])
        .unwrap();
        assert_eq!(s.traces_endpoint, "https://x.example/otlp/traces");
        assert_eq!(s.service_name, "hark-eu");
    }
}
