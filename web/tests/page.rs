//! The page itself in headless Chromium: `start()` builds the DOM, draws
//! on the next animation frame and reacts to the user. No gateway runs
//! here, so the page must show itself offline and keep retrying.
#![cfg(target_arch = "wasm32")]

use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use wasm_bindgen_test::{wasm_bindgen_test, wasm_bindgen_test_configure};
use web_sys::{Document, Event, HtmlInputElement, KeyboardEvent, KeyboardEventInit};

wasm_bindgen_test_configure!(run_in_browser);

fn document() -> Document {
    web_sys::window()
        .and_then(|w| w.document())
        .expect("a browser document")
}

fn text(selector: &str) -> String {
    document()
        .query_selector(selector)
        .expect("valid selector")
        .and_then(|e| e.text_content())
        .unwrap_or_else(|| panic!("{selector} is missing"))
}

/// Lets timers and animation frames run.
async fn pause(ms: i32) {
    let promise = js_sys::Promise::new(&mut |resolve, _| {
        let window = web_sys::window().expect("window");
        window
            .set_timeout_with_callback_and_timeout_and_arguments_0(&resolve, ms)
            .expect("timer");
    });
    JsFuture::from(promise).await.expect("timer fires");
}

#[wasm_bindgen_test]
async fn page_draws_offline_and_follows_a_typed_counter() -> Result<(), JsValue> {
    let document = document();
    let app = document.create_element("div")?;
    app.set_id("app");
    document.body().expect("body").append_child(&app)?;
    tally_web::start()?;
    pause(200).await;

    assert_eq!(text(".counter-name"), "default");
    assert_eq!(text(".big"), "0");
    assert_eq!(text(".counters"), "no counters yet");
    let link = text(".badge.link");
    assert!(
        link.starts_with("offline") || link == "connecting…",
        "link badge says {link:?}"
    );

    let filter: HtmlInputElement = document
        .query_selector(".filter")?
        .expect("filter box")
        .dyn_into()?;
    filter.set_value("page/home");
    filter.dispatch_event(&Event::new("input")?)?;
    let init = KeyboardEventInit::new();
    init.set_key("Enter");
    let enter = KeyboardEvent::new_with_keyboard_event_init_dict("keydown", &init)?;
    filter.dispatch_event(&enter)?;
    pause(100).await;
    assert_eq!(text(".counter-name"), "page/home");
    assert!(text(".hint").starts_with("never written"));
    Ok(())
}
