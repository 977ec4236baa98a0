//! The crdt-core laws on wasm32 under Node.js (`wasm-pack test --node`),
//! on the same deterministic cases native runs, plus the pinned digests.
//!
//! No `run_in_browser` here: `wasm-pack test --chrome` skips this file and
//! runs `wasm_browser.rs`, which holds the same tests configured for the browser.
#![cfg(target_arch = "wasm32")]

#[macro_use]
mod common;

use wasm_bindgen_test::wasm_bindgen_test;

common::generated_case_tests!(wasm_bindgen_test);
