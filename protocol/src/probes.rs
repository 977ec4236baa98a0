//! Liveness, readiness and draining, the same on every process:
//!
//! - `GET /health`: the process is alive (an orchestrator restarts it when not);
//! - `GET /ready`: it should get traffic now (a load balancer or gateway
//!   stops sending when not);
//! - [`DRAINING_HEADER`] on a node's answers while it drains before a
//!   graceful stop, so a gateway stops sending at once, before its next
//!   readiness check.
//!
//! Probes carry no API token (a kubelet has none), so both answers say no
//! more than "up" or "ready" and, for a node, its id.

/// Liveness and readiness routes, answered without a token.
pub const PROBE_PATHS: [&str; 2] = ["/health", "/ready"];

/// The readiness route.
pub const READY_PATH: &str = "/ready";

/// Set (to `true`) on every answer of a node that is draining.
pub const DRAINING_HEADER: &str = "x-tally-draining";
