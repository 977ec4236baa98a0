//! The buttons' HTTP calls to the gateway, with `fetch` (carrying the
//! page's API token, if it was opened with one: see [`crate::token`]).
use serde::{Deserialize, Serialize};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{Request, RequestInit, Response};

use crate::routes::{counter_path, demo_path, CounterAction, DemoAction};
use crate::token;

/// Why a button press did not work.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ActionError {
    /// The request never got an answer (gateway down, network gone).
    #[error("gateway unreachable: {0}")]
    Network(String),
    /// The request body could not be built (an amount beyond 2^53).
    #[error("cannot encode the request: {0}")]
    Encode(String),
    /// The gateway answered with an error status.
    #[error("{message} (HTTP {status})")]
    Rejected {
        /// The HTTP status.
        status: u16,
        /// The `error` field of the answer, or the status text.
        message: String,
    },
}

#[derive(Serialize)]
struct AmountBody {
    amount: u64,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: String,
}

/// A successful write's answer: the value at the node that took it.
#[derive(Debug, Deserialize)]
pub(crate) struct WriteReply {
    pub(crate) value: i64,
    pub(crate) node: String,
}

/// Increments or decrements `counter` by `amount`. `Ok(None)` when the
/// gateway accepted the write but its answer was not the usual JSON.
pub(crate) async fn write_counter(
    counter: &str,
    action: CounterAction,
    amount: u64,
) -> Result<Option<WriteReply>, ActionError> {
    let body = serde_wasm_bindgen::to_value(&AmountBody { amount })
        .map_err(JsValue::from)
        .and_then(|value| js_sys::JSON::stringify(&value).map(JsValue::from))
        .map_err(|e| ActionError::Encode(describe(&e)))?;
    let response = post(&counter_path(counter, action), Some(&body)).await?;
    Ok(read_json::<WriteReply>(&response).await)
}

/// Asks the gateway to partition, heal, crash or restart `node` (demo mode).
pub(crate) async fn demo(node: &str, action: DemoAction) -> Result<(), ActionError> {
    post(&demo_path(node, action), None).await.map(drop)
}

async fn post(path: &str, json_body: Option<&JsValue>) -> Result<Response, ActionError> {
    let network = |e: JsValue| ActionError::Network(describe(&e));
    let init = RequestInit::new();
    init.set_method("POST");
    if let Some(body) = json_body {
        init.set_body(body);
    }
    let request = Request::new_with_str_and_init(path, &init).map_err(network)?;
    if json_body.is_some() {
        request
            .headers()
            .set("Content-Type", "application/json")
            .map_err(network)?;
    }
    if let Some(token) = token::page_token() {
        request
            .headers()
            .set("Authorization", &token::authorization(&token))
            .map_err(network)?;
    }
    let window = web_sys::window().ok_or_else(|| ActionError::Network("no window".into()))?;
    let response: Response = JsFuture::from(window.fetch_with_request(&request))
        .await
        .and_then(JsCast::dyn_into)
        .map_err(network)?;
    if response.ok() {
        Ok(response)
    } else {
        Err(rejected(&response).await)
    }
}

async fn rejected(response: &Response) -> ActionError {
    let message = match read_json::<ErrorBody>(response).await {
        Some(body) => body.error,
        None if !response.status_text().is_empty() => response.status_text(),
        None => "request failed".to_owned(),
    };
    ActionError::Rejected {
        status: response.status(),
        message,
    }
}

async fn read_json<T: for<'de> Deserialize<'de>>(response: &Response) -> Option<T> {
    let promise = response.json().ok()?;
    let value = JsFuture::from(promise).await.ok()?;
    serde_wasm_bindgen::from_value(value).ok()
}

/// A JS exception as text (`TypeError: Failed to fetch` → `Failed to fetch`).
fn describe(error: &JsValue) -> String {
    if let Some(error) = error.dyn_ref::<js_sys::Error>() {
        return String::from(error.message());
    }
    error.as_string().unwrap_or_else(|| format!("{error:?}"))
}
