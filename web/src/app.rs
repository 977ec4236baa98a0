//! Wiring: the socket feeds the observer, user events change the UI state,
//! and every change asks for one animation frame that redraws the view.
//!
//! The page lives as long as the tab, so its DOM listeners are leaked on
//! purpose (`Closure::forget`); only the socket's callbacks, which change
//! on every reconnect, are owned and dropped.
use std::cell::RefCell;
use std::rc::{Rc, Weak};

use crdt_core::{CounterName, DEFAULT_COUNTER};
use wasm_bindgen::{closure::Closure, JsCast, JsValue};
use web_sys::{Element, Event, KeyboardEvent};

use crate::actions;
use crate::observer::{LogKind, Observer};
use crate::routes::{CounterAction, DemoAction};
use crate::socket::{stream_url, subscription, Link, LinkState, Socket};
use crate::token;
use crate::view::{UiState, View, AMOUNTS};

struct App {
    observer: Observer,
    link: Link,
    socket: Option<Socket>,
    ui: UiState,
    view: View,
    frame_pending: bool,
    frame: js_sys::Function,
    /// The prefix the open socket subscribed to.
    subscribed: String,
    /// Grows with every keystroke in the filter: only the last one's timer
    /// resubscribes, so typing a word opens one socket, not one per letter.
    filter_edits: u32,
}

/// How long the filter must stay unchanged before the page resubscribes.
const RESUBSCRIBE_AFTER_MS: i32 = 300;

type Shared = Rc<RefCell<App>>;

/// Builds the page inside `#app` and connects to the gateway. A document
/// without `#app` (a test runner's page, say) is left alone.
pub(crate) fn start() -> Result<(), JsValue> {
    let Some(document) = web_sys::window().and_then(|w| w.document()) else {
        return Ok(());
    };
    let Some(root) = document.get_element_by_id("app") else {
        return Ok(());
    };
    let view = View::build(document, &root)?;
    let default =
        CounterName::new(DEFAULT_COUNTER).map_err(|e| JsValue::from_str(&e.to_string()))?;
    let app: Shared = Rc::new_cyclic(|weak: &Weak<RefCell<App>>| {
        let weak = weak.clone();
        let frame = Closure::<dyn FnMut(f64)>::new(move |_: f64| {
            if let Some(app) = weak.upgrade() {
                draw(&app);
            }
        });
        let frame_fn = frame.as_ref().unchecked_ref::<js_sys::Function>().clone();
        frame.forget();
        RefCell::new(App {
            observer: Observer::new(),
            link: Link::new(),
            socket: None,
            ui: UiState {
                selected: default,
                filter: String::new(),
                amount: AMOUNTS[0],
                status: None,
            },
            view,
            frame_pending: false,
            frame: frame_fn,
            subscribed: String::new(),
            filter_edits: 0,
        })
    });
    listen_to_user(&app)?;
    connect(&app);
    request_frame(&mut app.borrow_mut());
    // Callbacks hold only weak references; this is the one strong one.
    PAGE.with(|page| page.replace(Some(app)));
    Ok(())
}

thread_local! {
    /// The running page, alive as long as the tab.
    static PAGE: RefCell<Option<Shared>> = const { RefCell::new(None) };
}

fn now_ms() -> f64 {
    js_sys::Date::now()
}

/// Asks for one redraw at the next animation frame (coalescing requests).
fn request_frame(app: &mut App) {
    if app.frame_pending {
        return;
    }
    let requested = web_sys::window().map(|w| w.request_animation_frame(&app.frame));
    app.frame_pending = matches!(requested, Some(Ok(_)));
}

fn draw(shared: &Shared) {
    let mut app = shared.borrow_mut();
    app.frame_pending = false;
    let App {
        observer,
        link,
        ui,
        view,
        ..
    } = &mut *app;
    let now = now_ms();
    // Expiries pass with the clock, not with a message.
    observer.tick(now);
    match view.render(observer, ui, link.state(), now) {
        Ok(true) => request_frame(&mut app),
        Ok(false) => {}
        Err(error) => web_sys::console::error_2(&"tally: drawing failed".into(), &error),
    }
}

/// Opens a new socket, replacing (and closing) the old one. Runs from a
/// timer, never from the old socket's own callbacks.
fn connect(shared: &Shared) {
    let prefix = subscription(&shared.borrow().ui.filter);
    let url = match web_sys::window().map(|w| w.location()) {
        Some(location) => stream_url(
            &location.protocol().unwrap_or_default(),
            &location.host().unwrap_or_default(),
            token::page_token().as_deref(),
            &prefix,
        ),
        None => return,
    };
    let mut app = shared.borrow_mut();
    app.subscribed = prefix;
    app.socket = None;
    app.link.connecting();
    let (on_open, on_message, on_close) = (
        Rc::downgrade(shared),
        Rc::downgrade(shared),
        Rc::downgrade(shared),
    );
    let socket = Socket::open(
        &url,
        move || with_app(&on_open, opened),
        move |frame| with_app(&on_message, |app| received(app, frame)),
        move |reason| {
            if let Some(shared) = on_close.upgrade() {
                closed(&shared, &reason);
            }
        },
    );
    match socket {
        Ok(socket) => app.socket = Some(socket),
        Err(error) => {
            drop(app);
            let reason = error.as_string().unwrap_or_else(|| format!("{error:?}"));
            closed(shared, &format!("could not open {url}: {reason}"));
            return;
        }
    }
    request_frame(&mut app);
}

fn with_app(weak: &Weak<RefCell<App>>, f: impl FnOnce(&mut App)) {
    if let Some(shared) = weak.upgrade() {
        let mut app = shared.borrow_mut();
        f(&mut app);
        request_frame(&mut app);
    }
}

fn opened(app: &mut App) {
    app.link.opened();
    app.observer.note(
        now_ms(),
        LogKind::Connection("connected to the gateway".into()),
    );
}

fn received(app: &mut App, frame: Result<Vec<u8>, String>) {
    let now = now_ms();
    match frame {
        Ok(bytes) => {
            // A bad frame is logged by the observer; the stream goes on.
            if app.observer.receive(&bytes, now).is_ok() {
                app.link.received();
            }
        }
        Err(reason) => app.observer.note(now, LogKind::BadMessage(reason)),
    }
}

fn closed(shared: &Shared, reason: &str) {
    let mut app = shared.borrow_mut();
    // Repeated failures while offline say nothing new: log the first of a run.
    let first_failure = app.link.state() == LinkState::Online || app.link.failures() == 0;
    let delay = app.link.closed();
    if first_failure {
        let text = format!(
            "gateway link {reason}; retrying in {}",
            crate::format::duration(f64::from(delay))
        );
        app.observer.note(now_ms(), LogKind::Connection(text));
    }
    request_frame(&mut app);
    drop(app);
    let weak = Rc::downgrade(shared);
    let retry = Closure::once_into_js(move || {
        if let Some(shared) = weak.upgrade() {
            connect(&shared);
        }
    });
    if let Some(window) = web_sys::window() {
        let delay = i32::try_from(delay).unwrap_or(i32::MAX);
        if let Err(error) = window
            .set_timeout_with_callback_and_timeout_and_arguments_0(retry.unchecked_ref(), delay)
        {
            web_sys::console::error_2(&"tally: cannot schedule reconnect".into(), &error);
        }
    }
}

fn listen_to_user(shared: &Shared) -> Result<(), JsValue> {
    let app = shared.borrow();
    let view = &app.view;
    on(shared, &view.increment, "click", |shared, _| {
        write(shared, CounterAction::Increment);
    })?;
    on(shared, &view.decrement, "click", |shared, _| {
        write(shared, CounterAction::Decrement);
    })?;
    on(shared, &view.amount, "change", |shared, _| {
        let mut app = shared.borrow_mut();
        if let Ok(amount) = app.view.amount.value().parse::<u64>() {
            app.ui.amount = amount;
        }
    })?;
    on(shared, &view.filter, "input", |shared, _| {
        let mut app = shared.borrow_mut();
        app.ui.filter = app.view.filter.value();
        app.filter_edits = app.filter_edits.wrapping_add(1);
        let edit = app.filter_edits;
        request_frame(&mut app);
        drop(app);
        after(shared, RESUBSCRIBE_AFTER_MS, move |shared| {
            let stale = {
                let app = shared.borrow();
                app.filter_edits == edit && subscription(&app.ui.filter) != app.subscribed
            };
            if stale {
                connect(shared);
            }
        });
    })?;
    on(shared, &view.filter, "keydown", |shared, event| {
        let enter = event
            .dyn_ref::<KeyboardEvent>()
            .is_some_and(|key| key.key() == "Enter");
        if enter {
            let typed = shared.borrow().view.filter.value();
            follow(shared, typed.trim());
        }
    })?;
    on(shared, &view.counters, "click", |shared, event| {
        if let Some(name) = clicked(event, "[data-name]", "data-name") {
            follow(shared, &name);
        }
    })?;
    on(shared, &view.nodes, "click", |shared, event| {
        let action = clicked(event, "button[data-action]", "data-action");
        let node = clicked(event, "[data-node]", "data-node");
        if let (Some(action), Some(node)) =
            (action.as_deref().and_then(DemoAction::from_verb), node)
        {
            demo(shared, node, action);
        }
    })
}

/// Runs `f` after `delay_ms` if the page is still there.
fn after(shared: &Shared, delay_ms: i32, f: impl FnOnce(&Shared) + 'static) {
    let weak = Rc::downgrade(shared);
    let callback = Closure::once_into_js(move || {
        if let Some(shared) = weak.upgrade() {
            f(&shared);
        }
    });
    if let Some(window) = web_sys::window() {
        let scheduled = window.set_timeout_with_callback_and_timeout_and_arguments_0(
            callback.unchecked_ref(),
            delay_ms,
        );
        if let Err(error) = scheduled {
            web_sys::console::error_2(&"tally: cannot schedule a timer".into(), &error);
        }
    }
}

/// Adds a page-lifetime listener.
fn on(
    shared: &Shared,
    target: &Element,
    event: &str,
    handler: impl Fn(&Shared, &Event) + 'static,
) -> Result<(), JsValue> {
    let weak = Rc::downgrade(shared);
    let listener = Closure::<dyn FnMut(Event)>::new(move |event: Event| {
        if let Some(shared) = weak.upgrade() {
            handler(&shared, &event);
        }
    });
    target.add_event_listener_with_callback(event, listener.as_ref().unchecked_ref())?;
    listener.forget();
    Ok(())
}

/// The attribute of the nearest element around the click that matches `selector`.
fn clicked(event: &Event, selector: &str, attribute: &str) -> Option<String> {
    let target = event.target()?.dyn_into::<Element>().ok()?;
    target.closest(selector).ok()??.get_attribute(attribute)
}

/// Makes the big number follow `name` (if it is a valid counter name).
fn follow(shared: &Shared, name: &str) {
    let mut app = shared.borrow_mut();
    match CounterName::new(name) {
        Ok(name) => {
            app.ui.selected = name;
            app.ui.status = None;
        }
        Err(error) => app.ui.status = Some((false, error.to_string())),
    }
    request_frame(&mut app);
}

fn write(shared: &Shared, action: CounterAction) {
    let (counter, amount) = {
        let app = shared.borrow();
        (app.ui.selected.clone(), app.ui.amount)
    };
    let weak = Rc::downgrade(shared);
    wasm_bindgen_futures::spawn_local(async move {
        let result = actions::write_counter(counter.as_str(), action, amount).await;
        let sign = match action {
            CounterAction::Increment => "+",
            CounterAction::Decrement => "−",
        };
        let (ok, text) = match result {
            Ok(Some(reply)) => (
                true,
                format!(
                    "{counter} {sign}{amount} → {} at {}",
                    crate::format::value(i128::from(reply.value)),
                    reply.node
                ),
            ),
            Ok(None) => (true, format!("{counter} {sign}{amount} accepted")),
            Err(error) => (false, format!("{counter} {sign}{amount} failed: {error}")),
        };
        report(&weak, ok, text);
    });
}

fn demo(shared: &Shared, node: String, action: DemoAction) {
    let weak = Rc::downgrade(shared);
    wasm_bindgen_futures::spawn_local(async move {
        let (ok, text) = match actions::demo(&node, action).await {
            Ok(()) => (true, format!("{} {node}: done", action.verb())),
            Err(error) => (false, format!("{} {node} failed: {error}", action.verb())),
        };
        report(&weak, ok, text);
    });
}

fn report(weak: &Weak<RefCell<App>>, ok: bool, text: String) {
    with_app(weak, |app| {
        app.observer.note(
            now_ms(),
            LogKind::Action {
                ok,
                text: text.clone(),
            },
        );
        app.ui.status = Some((ok, text));
    });
}
