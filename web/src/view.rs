//! Draws the observer on the page with plain DOM calls.
//!
//! The skeleton is built once; each frame only rewrites the text and
//! classes that changed, so a busy cluster costs one pass per animation
//! frame, not one per message. User-supplied names only ever go through
//! `textContent` and attributes, never HTML.
use std::collections::BTreeMap;

use crdt_core::CounterName;
use wasm_bindgen::{JsCast, JsValue};
use web_sys::{Document, Element, HtmlElement, HtmlInputElement, HtmlSelectElement};

use crate::canvas::Picture;
use crate::format;
use crate::observer::{Convergence, Health, NodeView, Observer, Tone, Update, FADE_MS};
use crate::routes::DemoAction;
use crate::socket::LinkState;

/// Amounts the +/− buttons offer.
pub(crate) const AMOUNTS: [u64; 5] = [1, 5, 10, 100, 1000];
/// Rows in the busiest-counters list.
const BUSIEST_ROWS: usize = 20;
/// The busiest list scans the whole keyspace, so it is redrawn at most this often.
const LIST_REFRESH_MS: f64 = 250.0;

/// What the user chose, as opposed to what the cluster holds.
pub(crate) struct UiState {
    /// The counter the big number follows.
    pub(crate) selected: CounterName,
    /// Text that filters the busiest list.
    pub(crate) filter: String,
    /// The +/− amount.
    pub(crate) amount: u64,
    /// The last button's outcome: `(ok, text)`.
    pub(crate) status: Option<(bool, String)>,
}

/// The page's elements that change, and what was last drawn into them.
pub(crate) struct View {
    document: Document,
    link: Element,
    convergence: Element,
    counter_name: Element,
    big_value: HtmlElement,
    counter_hint: Element,
    pub(crate) amount: HtmlSelectElement,
    pub(crate) increment: Element,
    pub(crate) decrement: Element,
    status: Element,
    pub(crate) nodes: Element,
    no_nodes: HtmlElement,
    cards: BTreeMap<String, Card>,
    pub(crate) filter: HtmlInputElement,
    pub(crate) counters: Element,
    log: Element,
    picture: Picture,
    drawn: Drawn,
}

/// What the last frame drew, to skip unchanged work.
#[derive(Default)]
struct Drawn {
    value: Option<(CounterName, i128)>,
    list: Option<(u64, String, CounterName)>,
    list_at_ms: f64,
    log_version: Option<u64>,
    /// The busiest list shows a countdown to an expiry.
    list_countdown: bool,
    /// The list or the selected counter shows one: redraw with the clock.
    countdown: bool,
}

struct Card {
    root: HtmlElement,
    health: Element,
    value: Element,
    lag: Element,
    meta: Element,
    controls: HtmlElement,
    buttons: Vec<(DemoAction, Element)>,
    drawn_health: Option<Health>,
    seen_updates: u64,
}

impl View {
    /// Builds the page inside `root` (replacing its loading text).
    pub(crate) fn build(document: Document, root: &Element) -> Result<View, JsValue> {
        root.set_text_content(None);
        let dom = Dom(&document);

        let header = dom.child(root, "header", "top")?;
        let brand = dom.child(&header, "div", "brand")?;
        dom.text(&brand, "span", "logo", "Tally")?;
        dom.text(
            &brand,
            "span",
            "tagline",
            "gossip-replicated counters, live",
        )?;
        let badges = dom.child(&header, "div", "badges")?;
        let convergence = dom.child(&badges, "span", "badge")?;
        let link = dom.child(&badges, "span", "badge link")?;

        let hero = dom.child(root, "section", "card hero")?;
        let counter_name = dom.child(&hero, "div", "counter-name")?;
        let big_value: HtmlElement = dom.child(&hero, "div", "big")?.dyn_into()?;
        let counter_hint = dom.child(&hero, "div", "hint")?;
        let controls = dom.child(&hero, "div", "controls")?;
        let decrement = dom.text(&controls, "button", "btn minus", "−")?;
        let amount: HtmlSelectElement = dom.child(&controls, "select", "amount")?.dyn_into()?;
        amount.set_attribute("aria-label", "amount")?;
        for value in AMOUNTS {
            let option = dom.text(&amount, "option", "", &value.to_string())?;
            option.set_attribute("value", &value.to_string())?;
        }
        let increment = dom.text(&controls, "button", "btn plus", "+")?;
        let status = dom.child(&hero, "div", "status")?;

        dom.text(root, "h2", "section-title", "Cluster")?;
        let cluster = dom.child(root, "section", "card picture")?;
        let picture = Picture::build(&document, &cluster)?;

        dom.text(root, "h2", "section-title", "Nodes")?;
        let nodes = dom.child(root, "section", "nodes")?;
        let no_nodes: HtmlElement = dom
            .text(&nodes, "p", "empty", "waiting for the gateway's node list…")?
            .dyn_into()?;

        let split = dom.child(root, "section", "split")?;
        let busiest = dom.child(&split, "div", "card")?;
        dom.text(&busiest, "h2", "", "Busiest counters")?;
        let filter: HtmlInputElement = dom.child(&busiest, "input", "filter")?.dyn_into()?;
        filter.set_placeholder("prefix filter… (Enter follows a name)");
        filter.set_attribute("aria-label", "filter counters")?;
        let counters = dom.child(&busiest, "ol", "counters")?;
        let activity = dom.child(&split, "div", "card")?;
        dom.text(&activity, "h2", "", "Activity")?;
        let log = dom.child(&activity, "ol", "log")?;

        Ok(View {
            document,
            link,
            convergence,
            counter_name,
            big_value,
            counter_hint,
            amount,
            increment,
            decrement,
            status,
            nodes,
            no_nodes,
            cards: BTreeMap::new(),
            filter,
            counters,
            log,
            picture,
            drawn: Drawn::default(),
        })
    }

    /// Draws one frame. Returns true when part of it was held back
    /// (the busiest list is rate-limited) and another frame is needed.
    pub(crate) fn render(
        &mut self,
        observer: &Observer,
        ui: &UiState,
        link: LinkState,
        now_ms: f64,
    ) -> Result<bool, JsValue> {
        self.render_link(link)?;
        // Offline, the last known agreement may no longer hold: don't claim it.
        let convergence = (link == LinkState::Online).then(|| observer.convergence());
        self.render_convergence(convergence);
        self.drawn.countdown = false;
        self.render_counter(observer, ui)?;
        self.render_nodes(observer, ui.selected.as_str())?;
        let list_pending = self.render_counters(observer, ui, now_ms)?;
        self.drawn.countdown |= self.drawn.list_countdown;
        self.render_log(observer)?;
        let moving = self.picture.render(observer, now_ms)?;
        // Fades and countdowns move with the clock, not with messages.
        let clocked = observer.is_fading() || self.drawn.countdown;
        Ok(list_pending || moving || clocked)
    }

    fn render_link(&self, link: LinkState) -> Result<(), JsValue> {
        let (class, text) = match link {
            LinkState::Online => ("badge link online", "● live".to_owned()),
            LinkState::Connecting => ("badge link connecting", "connecting…".to_owned()),
            LinkState::Offline { retry_in_ms } => (
                "badge link offline",
                format!(
                    "offline · retrying in {}",
                    format::duration(f64::from(retry_in_ms))
                ),
            ),
        };
        set_class(&self.link, class);
        set_text(&self.link, &text);
        if let Some(body) = self.document.body() {
            let offline = !matches!(link, LinkState::Online);
            body.class_list().toggle_with_force("offline", offline)?;
        }
        Ok(())
    }

    fn render_convergence(&self, convergence: Option<Convergence>) {
        let (class, text) = match convergence {
            Some(Convergence::Converged) => ("badge good", "converged ✓".to_owned()),
            Some(Convergence::Diverged { behind, healthy }) => (
                "badge warn",
                format!("diverged · {behind}/{healthy} behind"),
            ),
            Some(Convergence::NoHealthyNodes) => ("badge", "no healthy nodes".to_owned()),
            None => ("badge", "waiting for data".to_owned()),
        };
        set_class(&self.convergence, class);
        set_text(&self.convergence, &text);
    }

    fn render_counter(&mut self, observer: &Observer, ui: &UiState) -> Result<(), JsValue> {
        let name = &ui.selected;
        let known = observer.known_value(name.as_str());
        let value = known.unwrap_or(0);
        // The page holds only the counters its filter follows: a counter
        // outside it is unknown ("—"), one inside it and absent is 0.
        let followed = observer
            .following()
            .is_none_or(|prefix| name.as_str().starts_with(prefix));
        set_text(&self.counter_name, name.as_str());
        let gone = observer.gone_why(name.as_str());
        let shown = match known {
            None if !followed || gone.is_some() => "—".to_owned(),
            _ => format::value(value),
        };
        set_text(&self.big_value, &shown);
        self.big_value
            .class_list()
            .toggle_with_force("gone", gone.is_some())?;
        let hint = match (observer.merged().get(name.as_str()), gone) {
            (None, _) if !followed => format!(
                "outside the filter \"{}\" — clear it to follow this counter",
                observer.following().unwrap_or_default()
            ),
            (None, _) => "never written — press + to create it".to_owned(),
            (Some(_), Some(why)) => {
                format!("{} — press + to start it again from zero", why.label())
            }
            (Some(counter), None) => {
                let agreeing = observer
                    .nodes()
                    .filter(|n| n.knows(name.as_str()) && n.value(name.as_str()) == value)
                    .count();
                let expires_in = observer.expires_in_ms(name.as_str());
                self.drawn.countdown |= expires_in.is_some();
                let expiry = match expires_in {
                    Some(left) => format!(" · expires in {}", format::countdown(left)),
                    None => String::new(),
                };
                format!(
                    "{} · {agreeing}/{} nodes show this value{expiry}",
                    format::count(counter.actors(), "actor", "actors"),
                    observer.nodes().len()
                )
            }
        };
        set_text(&self.counter_hint, &hint);
        let changed = self
            .drawn
            .value
            .as_ref()
            .is_some_and(|(drawn, old)| drawn == name && *old != value);
        if changed {
            restart_animation(&self.big_value, "bump")?;
        }
        self.drawn.value = Some((name.clone(), value));
        match &ui.status {
            Some((ok, text)) => {
                set_class(&self.status, if *ok { "status ok" } else { "status error" });
                set_text(&self.status, text);
            }
            None => set_text(&self.status, ""),
        }
        Ok(())
    }

    fn render_nodes(&mut self, observer: &Observer, counter: &str) -> Result<(), JsValue> {
        self.cards.retain(|id, card| {
            let keep = observer.node(id).is_some();
            if !keep {
                card.root.remove();
            }
            keep
        });
        for node in observer.nodes() {
            if !self.cards.contains_key(node.id()) {
                let card = Card::build(&Dom(&self.document), &self.nodes, node.id())?;
                self.cards.insert(node.id().to_owned(), card);
            }
            if let Some(card) = self.cards.get_mut(node.id()) {
                card.render(observer, node, counter)?;
            }
        }
        self.no_nodes.set_hidden(!self.cards.is_empty());
        Ok(())
    }

    fn render_counters(
        &mut self,
        observer: &Observer,
        ui: &UiState,
        now_ms: f64,
    ) -> Result<bool, JsValue> {
        let key = (observer.revision(), ui.filter.clone(), ui.selected.clone());
        // Fading rows and countdowns change with the clock alone.
        let clocked = observer.is_fading() || self.drawn.list_countdown;
        if self.drawn.list.as_ref() == Some(&key) && !clocked {
            return Ok(false);
        }
        // Typing in the filter or clicking a row must answer at once; only
        // cluster traffic is rate-limited.
        let user_changed = self
            .drawn
            .list
            .as_ref()
            .is_none_or(|(_, filter, selected)| *filter != key.1 || *selected != key.2);
        if !user_changed && now_ms - self.drawn.list_at_ms < LIST_REFRESH_MS {
            return Ok(true);
        }
        let dom = Dom(&self.document);
        self.counters.set_text_content(None);
        let rows = observer.busiest(&ui.filter, BUSIEST_ROWS);
        self.drawn.list_countdown = rows.iter().any(|row| row.expires_in_ms.is_some());
        if rows.is_empty() {
            dom.text(&self.counters, "li", "empty", "no counters yet")?;
        }
        for row in rows {
            let selected = row.name == ui.selected;
            let class = match (selected, row.leaving.is_some()) {
                (true, true) => "row selected leaving",
                (true, false) => "row selected",
                (false, true) => "row leaving",
                (false, false) => "row",
            };
            let item = dom.child(&self.counters, "li", class)?;
            item.set_attribute("data-name", row.name.as_str())?;
            item.set_attribute("title", "follow this counter")?;
            if let Some(leaving) = row.leaving {
                // The list is rebuilt while the row fades: each copy
                // resumes the fade where the last one was.
                item.set_attribute(
                    "style",
                    &format!(
                        "animation-duration: {FADE_MS}ms; animation-delay: -{:.0}ms",
                        leaving.elapsed_ms
                    ),
                )?;
            }
            dom.text(&item, "span", "row-name", row.name.as_str())?;
            let mut recent = match (row.per_second, row.recent_changes) {
                (Some(rate), _) => format!("{rate:.1}/s"),
                (None, 0) => String::new(),
                (None, n) => format!("{n}×"),
            };
            if let Some(left) = row.expires_in_ms {
                let countdown = format!("expires in {}", format::countdown(left));
                recent = match recent.is_empty() {
                    true => countdown,
                    false => format!("{recent} · {countdown}"),
                };
            }
            if let Some(leaving) = row.leaving {
                recent = leaving.why.label().to_owned();
            }
            dom.text(&item, "span", "row-rate", &recent)?;
            dom.text(&item, "span", "row-value", &format::value(row.value))?;
        }
        self.drawn.list = Some(key);
        self.drawn.list_at_ms = now_ms;
        Ok(false)
    }

    fn render_log(&mut self, observer: &Observer) -> Result<(), JsValue> {
        let version = observer.log_version();
        if self.drawn.log_version == Some(version) {
            return Ok(());
        }
        let dom = Dom(&self.document);
        self.log.set_text_content(None);
        for entry in observer.log() {
            let class = match entry.kind.tone() {
                Tone::Info => "info",
                Tone::Local => "local",
                Tone::Gossip => "gossip",
                Tone::Good => "good",
                Tone::Error => "error",
            };
            let item = dom.child(&self.log, "li", class)?;
            dom.text(&item, "time", "", &clock(entry.at_ms))?;
            dom.text(&item, "span", "", &entry.kind.to_string())?;
        }
        self.drawn.log_version = Some(version);
        Ok(())
    }
}

impl Card {
    fn build(dom: &Dom<'_>, parent: &Element, id: &str) -> Result<Card, JsValue> {
        let root: HtmlElement = dom.child(parent, "div", "card node")?.dyn_into()?;
        root.set_attribute("data-node", id)?;
        let top = dom.child(&root, "div", "node-top")?;
        dom.text(&top, "span", "node-id", id)?;
        let health = dom.child(&top, "span", "pill")?;
        let value = dom.child(&root, "div", "node-value")?;
        let lag = dom.child(&root, "div", "node-lag")?;
        let meta = dom.child(&root, "div", "node-meta")?;
        let controls: HtmlElement = dom.child(&root, "div", "node-controls")?.dyn_into()?;
        let mut buttons = Vec::with_capacity(DemoAction::ALL.len());
        for action in DemoAction::ALL {
            let button = dom.text(&controls, "button", "btn small", action.verb())?;
            button.set_attribute("data-action", action.verb())?;
            buttons.push((action, button));
        }
        Ok(Card {
            root,
            health,
            value,
            lag,
            meta,
            controls,
            buttons,
            drawn_health: None,
            seen_updates: 0,
        })
    }

    fn render(
        &mut self,
        observer: &Observer,
        node: &NodeView,
        counter: &str,
    ) -> Result<(), JsValue> {
        if self.drawn_health != Some(node.health()) {
            let classes = self.root.class_list();
            for health in [
                Health::Healthy,
                Health::Unhealthy,
                Health::Partitioned,
                Health::Unknown,
            ] {
                classes.remove_1(health.label())?;
            }
            classes.add_1(node.health().label())?;
            set_text(&self.health, node.health().label());
            set_class(&self.health, &format!("pill {}", node.health().label()));
            self.render_controls(node.health())?;
            self.drawn_health = Some(node.health());
        }
        let value = match node.knows(counter) {
            true => format::value(node.value(counter)),
            false => "—".to_owned(),
        };
        set_text(&self.value, &value);
        let lag = observer.lag(node, counter);
        set_text(&self.lag, &format::lag(lag.value_behind, lag.in_sync));
        set_class(
            &self.lag,
            if lag.in_sync {
                "node-lag sync"
            } else {
                "node-lag behind"
            },
        );
        let addr = if node.http_addr().is_empty() {
            "?"
        } else {
            node.http_addr()
        };
        let meta = match node.summary() {
            Some(summary) => format!(
                "{addr} · {} from clients · {} by gossip",
                summary.local_changes, summary.gossip_changes
            ),
            None => addr.to_owned(),
        };
        set_text(&self.meta, &meta);
        self.controls.set_hidden(!observer.controls());
        if node.updates() != self.seen_updates {
            self.seen_updates = node.updates();
            let flash = match node.last_update() {
                Some(Update::Gossip) => "flash-gossip",
                Some(Update::LocalWrite) => "flash-local",
                None => "flash-state",
            };
            for class in ["flash-gossip", "flash-local", "flash-state"] {
                self.root.class_list().remove_1(class)?;
            }
            restart_animation(&self.root, flash)?;
        }
        Ok(())
    }
}

impl Card {
    /// Shows the two actions that make sense now: heal a partitioned node,
    /// partition the others; restart an unhealthy node, crash the others.
    fn render_controls(&self, health: Health) -> Result<(), JsValue> {
        for (action, button) in &self.buttons {
            let wanted = match action {
                DemoAction::Heal => health == Health::Partitioned,
                DemoAction::Partition => health != Health::Partitioned,
                DemoAction::Restart => health == Health::Unhealthy,
                DemoAction::Crash => health != Health::Unhealthy,
            };
            button.toggle_attribute_with_force("hidden", !wanted)?;
        }
        Ok(())
    }
}

/// Element creation, shortened.
struct Dom<'a>(&'a Document);

impl Dom<'_> {
    /// Appends a new `<tag class=…>` to `parent`.
    fn child(&self, parent: &Element, tag: &str, class: &str) -> Result<Element, JsValue> {
        let element = self.0.create_element(tag)?;
        if !class.is_empty() {
            element.set_class_name(class);
        }
        parent.append_child(&element)?;
        Ok(element)
    }

    /// Appends a new `<tag class=…>text</tag>` to `parent`.
    fn text(
        &self,
        parent: &Element,
        tag: &str,
        class: &str,
        text: &str,
    ) -> Result<Element, JsValue> {
        let element = self.child(parent, tag, class)?;
        element.set_text_content(Some(text));
        Ok(element)
    }
}

/// Writes text only when it differs, so unchanged frames touch no DOM.
fn set_text(element: &Element, text: &str) {
    if element.text_content().as_deref() != Some(text) {
        element.set_text_content(Some(text));
    }
}

fn set_class(element: &Element, class: &str) {
    if element.class_name() != class {
        element.set_class_name(class);
    }
}

/// Replays a CSS animation: remove the class, force a style flush, add it back.
fn restart_animation(element: &HtmlElement, class: &str) -> Result<(), JsValue> {
    element.class_list().remove_1(class)?;
    let _ = element.offset_width();
    element.class_list().add_1(class)
}

/// `14:03:07.123` in the browser's time zone.
fn clock(at_ms: f64) -> String {
    let date = js_sys::Date::new(&JsValue::from_f64(at_ms));
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        date.get_hours(),
        date.get_minutes(),
        date.get_seconds(),
        date.get_milliseconds()
    )
}
