//! # tally-web
//!
//! The browser page: it streams the gateway's `/ws`, keeps an **observer
//! replica** of the cluster (its own merge of every node's state and deltas,
//! plus each node's own view) and draws it: the converged value, one card per
//! node with its lag and health, the busiest counters and an activity log.
//!
//! Layout, following the data:
//! - [`socket`] — the WebSocket link and its retry schedule;
//! - [`observer`] — the model, pure Rust (no DOM), tested natively and in the browser;
//! - [`picture`] — the topology view's and the chart's geometry and history, pure Rust;
//! - [`routes`] — the gateway routes the buttons call;
//! - [`token`] — the API token of a page opened as `/#token=TOKEN`;
//! - [`format`] — numbers and durations as the page writes them;
//! - `actions` (wasm) — the `fetch` calls behind the buttons;
//! - `view` (wasm) — the DOM, redrawn at most once per animation frame;
//! - `app` (wasm) — the wiring, started by `#[wasm_bindgen(start)]`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod format;
pub mod observer;
pub mod picture;
pub mod routes;
pub mod socket;
pub mod token;

#[cfg(target_arch = "wasm32")]
mod actions;
#[cfg(target_arch = "wasm32")]
mod app;
#[cfg(target_arch = "wasm32")]
mod canvas;
#[cfg(target_arch = "wasm32")]
mod view;

/// Entry point: runs when the page loads the module.
#[cfg(target_arch = "wasm32")]
#[wasm_bindgen::prelude::wasm_bindgen(start)]
pub fn start() -> Result<(), wasm_bindgen::JsValue> {
    app::start()
}
