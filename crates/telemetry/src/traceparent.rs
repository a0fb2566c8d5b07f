//! The W3C `traceparent` a sign-in carries between processes, and its bridge to OpenTelemetry.

use std::fmt::Write as _;

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use passage_proto::v1::TraceContext;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// A parsed W3C `traceparent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    /// 16-byte trace id.
    pub trace_id: [u8; 16],
    /// 8-byte id of the parent span.
    pub span_id: [u8; 8],
    /// Trace flags (bit 0: sampled).
    pub flags: u8,
}

impl TraceParent {
    /// A new root: random trace id and span id, sampled.
    pub fn new_root() -> Self {
        let mut bytes = [0u8; 24];
        // The system RNG failing is not recoverable anywhere in the process.
        SystemRandom::new()
            .fill(&mut bytes)
            .expect("system random source");
        let mut trace_id = [0u8; 16];
        let mut span_id = [0u8; 8];
        trace_id.copy_from_slice(&bytes[..16]);
        span_id.copy_from_slice(&bytes[16..]);
        Self {
            trace_id,
            span_id,
            flags: 1,
        }
    }

    /// The same trace with a new span id: the context a callee sees as its parent.
    pub fn child(&self) -> Self {
        let mut next = Self::new_root();
        next.trace_id = self.trace_id;
        next.flags = self.flags;
        next
    }

    /// Parses `00-<trace id>-<span id>-<flags>`; `None` for anything malformed or all-zero.
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.trim().split('-');
        let (version, trace, span, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if version != "00" || parts.next().is_some() {
            return None;
        }
        let trace_id: [u8; 16] = hex_decode(trace)?.try_into().ok()?;
        let span_id: [u8; 8] = hex_decode(span)?.try_into().ok()?;
        let flags = *hex_decode(flags)?.first()?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(Self {
            trace_id,
            span_id,
            flags,
        })
    }

    /// Parses the context from a message field; `None` when absent or malformed.
    pub fn from_message(context: Option<&TraceContext>) -> Option<Self> {
        context.and_then(|c| Self::parse(&c.traceparent))
    }

    /// The exported span `span` stands for, when trace export is on and the span is enabled.
    pub fn of_span(span: &Span) -> Option<Self> {
        let context = span.context();
        let span_context = context.span().span_context().clone();
        span_context.is_valid().then(|| Self {
            trace_id: span_context.trace_id().to_bytes(),
            span_id: span_context.span_id().to_bytes(),
            flags: span_context.trace_flags().to_u8(),
        })
    }

    /// This context as an OpenTelemetry parent: a span of another process.
    fn to_otel(self) -> opentelemetry::Context {
        opentelemetry::Context::new().with_remote_span_context(SpanContext::new(
            TraceId::from_bytes(self.trace_id),
            SpanId::from_bytes(self.span_id),
            TraceFlags::new(self.flags),
            true,
            TraceState::default(),
        ))
    }

    /// The trace id of the current span, when traces are exported (a metric's exemplar).
    pub fn current_trace_id() -> Option<String> {
        Self::of_span(&Span::current()).map(|trace| trace.trace_id_hex())
    }

    /// The trace id as 32 lower-case hex characters (what log lines carry).
    pub fn trace_id_hex(&self) -> String {
        hex_encode(&self.trace_id)
    }

    /// This context as a message field.
    pub fn to_message(&self) -> TraceContext {
        TraceContext {
            traceparent: self.to_string(),
            tracestate: String::new(),
        }
    }
}

impl std::fmt::Display for TraceParent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            hex_encode(&self.trace_id),
            hex_encode(&self.span_id),
            self.flags
        )
    }
}

/// Makes `span` the continuation of `parent` (the caller's context, if it sent one), records
/// the span's `trace_id` field, and returns the context to hand to the next hop.
///
/// With trace export on, that is the span's own context, so the callee's span becomes its
/// child in the exported trace. With export off it is a child of `parent` (or a new root), so
/// the processes' log lines for one sign-in still share a trace id. Call it before the span is
/// first entered: a started span's parent can no longer change.
pub fn join_trace(span: &Span, parent: Option<TraceParent>) -> TraceParent {
    if let Some(parent) = parent {
        // Fails only when export is off or the span is filtered out; the fallback covers both.
        let _ = span.set_parent(parent.to_otel());
    }
    let trace = TraceParent::of_span(span)
        .unwrap_or_else(|| parent.map_or_else(TraceParent::new_root, |p| p.child()));
    span.record("trace_id", tracing::field::display(trace.trace_id_hex()));
    trace
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
}

fn hex_decode(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2)
        || !text
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_and_children_share_the_trace() {
        let root = TraceParent::new_root();
        let parsed = TraceParent::parse(&root.to_string()).unwrap();
        assert_eq!(parsed, root);
        let child = root.child();
        assert_eq!(child.trace_id, root.trace_id);
        assert_ne!(child.span_id, root.span_id);
    }

    #[test]
    fn malformed_traceparents_are_rejected() {
        for bad in [
            "",
            "00-abc-def-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert!(TraceParent::parse(bad).is_none(), "{bad}");
        }
        assert!(
            TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").is_some()
        );
    }
}
