//! Draws the cluster picture on two canvases: the topology (nodes on a
//! ring, links between them, gossip travelling in and writes rippling out,
//! partitioned links cut) and the chart (the cluster's writes/s and each
//! node's value of the default counter over the last minutes).
//!
//! The geometry and the history are in [`crate::picture`]; this only paints.
//! The view calls [`Picture::render`] from its animation frame, so drawing
//! is throttled to the display's rate whatever the message rate.
use wasm_bindgen::{JsCast, JsValue};
use web_sys::{CanvasRenderingContext2d, Document, Element, HtmlCanvasElement};

use crate::format;
use crate::observer::{Health, Observer};
use crate::picture::{plot, ring, value_range, Area, Series, HISTORY_MS};

/// A colour per node, by its position in the id order.
const PALETTE: [&str; 6] = [
    "#5b8def", "#e5a50a", "#c061cb", "#2ec27e", "#f66151", "#62a0ea",
];
const NODE_RADIUS: f64 = 14.0;

/// The two canvases and their 2D contexts.
pub(crate) struct Picture {
    topology: Canvas,
    chart: Canvas,
    drawn_revision: Option<u64>,
}

struct Canvas {
    element: HtmlCanvasElement,
    context: CanvasRenderingContext2d,
}

impl Canvas {
    fn build(document: &Document, parent: &Element, class: &str) -> Result<Canvas, JsValue> {
        let element: HtmlCanvasElement = document.create_element("canvas")?.dyn_into()?;
        element.set_class_name(class);
        element.set_attribute("role", "img")?;
        parent.append_child(&element)?;
        let context = element
            .get_context("2d")?
            .ok_or_else(|| JsValue::from_str("no 2d canvas context"))?
            .dyn_into()?;
        Ok(Canvas { element, context })
    }

    /// Matches the backing store to the displayed size (sharp on high-DPI
    /// phones) and clears it; returns the drawing area in CSS pixels.
    fn begin(&self) -> Result<Area, JsValue> {
        let ratio = web_sys::window().map_or(1.0, |w| w.device_pixel_ratio());
        let (width, height) = (
            f64::from(self.element.client_width().max(1)),
            f64::from(self.element.client_height().max(1)),
        );
        let (pixels_w, pixels_h) = ((width * ratio) as u32, (height * ratio) as u32);
        if self.element.width() != pixels_w || self.element.height() != pixels_h {
            self.element.set_width(pixels_w);
            self.element.set_height(pixels_h);
        }
        self.context
            .set_transform(ratio, 0.0, 0.0, ratio, 0.0, 0.0)?;
        self.context.clear_rect(0.0, 0.0, width, height);
        Ok(Area {
            x: 0.0,
            y: 0.0,
            width,
            height,
        })
    }
}

impl Picture {
    /// Adds both canvases to `parent`.
    pub(crate) fn build(document: &Document, parent: &Element) -> Result<Picture, JsValue> {
        Ok(Picture {
            topology: Canvas::build(document, parent, "topology")?,
            chart: Canvas::build(document, parent, "chart")?,
            drawn_revision: None,
        })
    }

    /// Redraws when the observer changed or a pulse is running; returns
    /// whether another frame is needed (a pulse is still moving).
    pub(crate) fn render(&mut self, observer: &Observer, now_ms: f64) -> Result<bool, JsValue> {
        let animating = observer.timeline().animating(now_ms);
        if !animating && self.drawn_revision == Some(observer.revision()) {
            return Ok(false);
        }
        self.draw_topology(observer, now_ms)?;
        self.draw_chart(observer, now_ms)?;
        self.drawn_revision = Some(observer.revision());
        Ok(animating)
    }

    fn draw_topology(&self, observer: &Observer, now_ms: f64) -> Result<(), JsValue> {
        let canvas = &self.topology;
        let area = canvas.begin()?;
        let ctx = &canvas.context;
        let nodes: Vec<_> = observer.nodes().collect();
        let places = ring(nodes.len(), area);
        // What the picture says, for screen readers and tests.
        let described: Vec<String> = (nodes.iter())
            .map(|node| format!("{} {}", node.id(), node.health().label()))
            .collect();
        canvas
            .element
            .set_attribute("aria-label", &format!("cluster: {}", described.join(", ")))?;
        let cut = |health: Health| matches!(health, Health::Partitioned | Health::Unhealthy);
        // Links: every pair gossips; a link to a cut-off node is drawn broken.
        for (i, a) in nodes.iter().enumerate() {
            for (j, b) in nodes.iter().enumerate().skip(i + 1) {
                let broken = cut(a.health()) || cut(b.health());
                let dash = js_sys::Array::new();
                if broken {
                    dash.push(&JsValue::from_f64(4.0));
                    dash.push(&JsValue::from_f64(6.0));
                }
                ctx.set_line_dash(&dash)?;
                ctx.set_stroke_style_str(if broken { "#7a3b3b" } else { "#343a4a" });
                ctx.set_line_width(1.5);
                ctx.begin_path();
                ctx.move_to(places[i].0, places[i].1);
                ctx.line_to(places[j].0, places[j].1);
                ctx.stroke();
            }
        }
        ctx.set_line_dash(&js_sys::Array::new())?;
        // Pulses: gossip travels in from the peers that could have sent it;
        // a client write ripples out of the node.
        let index = |id: &str| nodes.iter().position(|node| node.id() == id);
        for (pulse, progress) in observer.timeline().pulses(now_ms) {
            let Some(to) = index(&pulse.node) else {
                continue;
            };
            let (tx, ty) = places[to];
            if pulse.gossip {
                ctx.set_fill_style_str("#2ec27e");
                for (from, peer) in nodes.iter().enumerate() {
                    if from == to || cut(peer.health()) {
                        continue;
                    }
                    let (fx, fy) = places[from];
                    let (x, y) = (fx + (tx - fx) * progress, fy + (ty - fy) * progress);
                    ctx.begin_path();
                    ctx.arc(x, y, 4.0, 0.0, std::f64::consts::TAU)?;
                    ctx.fill();
                }
            } else {
                ctx.set_global_alpha(1.0 - progress);
                ctx.set_stroke_style_str("#5b8def");
                ctx.set_line_width(2.0);
                ctx.begin_path();
                let radius = NODE_RADIUS + 18.0 * progress;
                ctx.arc(tx, ty, radius, 0.0, std::f64::consts::TAU)?;
                ctx.stroke();
                ctx.set_global_alpha(1.0);
            }
        }
        // Nodes, coloured by health, with their default-counter value.
        ctx.set_font("12px system-ui, sans-serif");
        ctx.set_text_align("center");
        for (node, (x, y)) in nodes.iter().zip(&places) {
            let fill = match node.health() {
                Health::Healthy => "#2ec27e",
                Health::Partitioned => "#e5a50a",
                Health::Unhealthy => "#c01c28",
                Health::Unknown => "#6b7080",
            };
            ctx.set_fill_style_str(fill);
            ctx.begin_path();
            ctx.arc(*x, *y, NODE_RADIUS, 0.0, std::f64::consts::TAU)?;
            ctx.fill();
            ctx.set_fill_style_str("#e6e8ef");
            ctx.fill_text(node.id(), *x, y + NODE_RADIUS + 14.0)?;
            let label = match node.health() {
                Health::Healthy => format::value(node.value(crdt_core::DEFAULT_COUNTER)),
                other => other.label().to_owned(),
            };
            ctx.set_fill_style_str("#8b90a0");
            ctx.fill_text(&label, *x, y - NODE_RADIUS - 6.0)?;
        }
        Ok(())
    }

    fn draw_chart(&self, observer: &Observer, now_ms: f64) -> Result<(), JsValue> {
        let canvas = &self.chart;
        let area = canvas.begin()?;
        let ctx = &canvas.context;
        let timeline = observer.timeline();
        let half = (area.height - 36.0).max(20.0) / 2.0;
        let top = Area {
            x: area.x + 8.0,
            y: area.y + 18.0,
            width: area.width - 16.0,
            height: half - 8.0,
        };
        let bottom = Area {
            y: top.y + half + 18.0,
            ..top
        };
        ctx.set_font("11px system-ui, sans-serif");
        ctx.set_text_align("left");
        let rate = timeline.writes_per_second.last().unwrap_or(0.0);
        self.panel(
            top,
            &format!("writes/s · now {rate:.0}"),
            &[(&timeline.writes_per_second, "#5b8def")],
            now_ms,
        )?;
        let lines: Vec<(&Series, &str)> = (timeline.values.values())
            .zip(PALETTE.iter().cycle())
            .map(|(series, colour)| (series, *colour))
            .collect();
        let minutes = HISTORY_MS / 60_000.0;
        self.panel(
            bottom,
            &format!("each node's value of default · last {minutes:.0} min"),
            &lines,
            now_ms,
        )
    }

    fn panel(
        &self,
        area: Area,
        title: &str,
        lines: &[(&Series, &str)],
        now_ms: f64,
    ) -> Result<(), JsValue> {
        let ctx = &self.chart.context;
        let range = value_range(lines.iter().map(|(series, _)| *series));
        ctx.set_fill_style_str("#8b90a0");
        ctx.fill_text(title, area.x, area.y - 6.0)?;
        ctx.set_text_align("right");
        ctx.fill_text(
            &format::value(range.1.round() as i128),
            area.x + area.width,
            area.y - 6.0,
        )?;
        ctx.set_text_align("left");
        ctx.set_stroke_style_str("#262a36");
        ctx.set_line_width(1.0);
        ctx.stroke_rect(area.x, area.y, area.width, area.height);
        for (series, colour) in lines {
            let points = plot(series, area, range, now_ms);
            if points.is_empty() {
                continue;
            }
            ctx.set_stroke_style_str(colour);
            ctx.set_line_width(1.5);
            ctx.begin_path();
            ctx.move_to(points[0].0, points[0].1);
            for (x, y) in &points[1..] {
                ctx.line_to(*x, *y);
            }
            // A lone sample still shows as a dot.
            if points.len() == 1 {
                ctx.line_to(points[0].0 + 1.0, points[0].1);
            }
            ctx.stroke();
        }
        Ok(())
    }
}
