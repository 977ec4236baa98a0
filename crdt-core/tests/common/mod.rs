//! Test code shared by the native property tests (`tests/laws.rs`) and the
//! wasm32 tests (`tests/wasm.rs`, `tests/wasm_browser.rs`), so every
//! platform checks exactly the same laws.
//!
//! Each test binary uses a different part of it.
#![allow(dead_code)]

pub mod assertions;
pub mod keyed;
pub mod laws;
pub mod lifecycle;
pub mod model;
pub mod pinned;
pub mod scenario;
pub mod suite;
pub mod xorshift;

/// Declares one test per [`suite`] function, under the given test attribute
/// (`test` natively, `wasm_bindgen_test` on wasm32).
macro_rules! generated_case_tests {
    ($attr:meta) => {
        #[$attr]
        fn map_laws_hold_on_generated_cases() {
            common::suite::map_laws_hold_on_generated_cases();
        }
        #[$attr]
        fn pn_counter_laws_hold_on_generated_cases() {
            common::suite::pn_counter_laws_hold_on_generated_cases();
        }
        #[$attr]
        fn wire_round_trips_on_generated_cases() {
            common::suite::wire_round_trips_on_generated_cases();
        }
        #[$attr]
        fn decoding_garbage_never_panics_on_generated_cases() {
            common::suite::decoding_garbage_never_panics_on_generated_cases();
        }
        #[$attr]
        fn names_and_actors_are_validated() {
            common::suite::names_and_actors_are_validated();
        }
        #[$attr]
        fn overflow_is_refused_without_change() {
            common::suite::overflow_is_refused_without_change();
        }
        #[$attr]
        fn no_counter_can_be_frozen() {
            common::suite::no_counter_can_be_frozen();
        }
        #[$attr]
        fn counters_stay_writable_on_generated_cases() {
            common::suite::counters_stay_writable_on_generated_cases();
        }
        #[$attr]
        fn hostile_totals_never_panic_on_generated_cases() {
            common::suite::hostile_totals_never_panic_on_generated_cases();
        }
        #[$attr]
        fn lifecycle_merge_laws_hold_on_generated_cases() {
            common::suite::lifecycle_merge_laws_hold_on_generated_cases();
        }
        #[$attr]
        fn removals_are_observed_remove_on_generated_cases() {
            common::suite::removals_are_observed_remove_on_generated_cases();
        }
        #[$attr]
        fn keyed_merge_laws_hold_on_generated_cases() {
            common::suite::keyed_merge_laws_hold_on_generated_cases();
        }
        #[$attr]
        fn each_keyed_write_counts_once_on_generated_cases() {
            common::suite::each_keyed_write_counts_once_on_generated_cases();
        }
        #[$attr]
        fn replicas_agree_with_the_model_on_generated_cases() {
            common::suite::replicas_agree_with_the_model_on_generated_cases();
        }
        #[$attr]
        fn pinned_digests_and_encodings_match() {
            common::pinned::check_pinned_values();
        }
    };
}
pub(crate) use generated_case_tests;
