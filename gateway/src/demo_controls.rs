//! What the demo supervisor lends the gateway: its hands on the node
//! processes. (The routes that use them are in `demo`.)
use futures_util::future::BoxFuture;

/// What the demo supervisor can do to its nodes; `node` is the node's id.
/// An `Err` carries a message for the user (e.g. "node-2 is already down").
pub trait DemoControls: Send + Sync {
    /// Kills the node's process (abruptly: that is the point of the demo).
    fn crash<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<(), String>>;
    /// Starts the node again with its data directory.
    fn restart<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<(), String>>;
}
