//! The crdt-core laws on wasm32 in a real browser
//! (`wasm-pack test --headless --chrome`): the same tests as `wasm.rs`,
//! which `wasm-pack test --node` runs instead of this file.
#![cfg(target_arch = "wasm32")]

#[macro_use]
mod common;

use wasm_bindgen_test::{wasm_bindgen_test, wasm_bindgen_test_configure};

wasm_bindgen_test_configure!(run_in_browser);

common::generated_case_tests!(wasm_bindgen_test);
