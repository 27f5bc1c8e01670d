//! The timeline on the HTML page: a Gantt chart of the run's steps, one row per
//! resource, drawn as inline SVG by `templates/report.html.tera`.
//!
//! All geometry is computed here, in SVG user units of a fixed-width drawing that the
//! page scales to its column; the template only places what it is given, so every
//! string in the drawing goes through tera's autoescaping like the rest of the page.
//!
//! It has to stay readable for a run of hundreds of steps: at most [`MAX_ROWS`]
//! resources get a row (every resource with a failed step first, then the earliest),
//! the rest are counted under the chart and listed in the steps table. Labels longer
//! than a row has room for are shortened in the middle, where ids differ least, and
//! each row and bar carries its full text as a tooltip (`<title>`).

use std::collections::HashMap;

use serde::Serialize;

use super::model::{RunReport, StepTiming};
use super::text::duration;

/// Resources with a row of their own; more would make rows too thin to read.
pub(crate) const MAX_ROWS: usize = 40;

/// Width of the drawing; the page scales it to its column.
const WIDTH: f64 = 960.0;
/// The row labels' column, and the gap after it.
const LABEL_WIDTH: f64 = 208.0;
const PLOT_X: f64 = LABEL_WIDTH + 12.0;
/// Room right of the plot for the last tick's label and a failure mark.
const PLOT_RIGHT: f64 = WIDTH - 28.0;
const AXIS_HEIGHT: f64 = 24.0;
const ROW_HEIGHT: f64 = 18.0;
const BAR_HEIGHT: f64 = 12.0;
/// A step too short to see still gets a sliver.
const MIN_BAR: f64 = 2.0;
/// Labels are 11px monospace (about 6.6 units a character); bar text 10px.
const LABEL_CHARS: usize = 30;
const BAR_CHAR_WIDTH: f64 = 6.2;
/// The longest tooltip text; details can be whole error messages.
const TITLE_CHARS: usize = 300;
/// At most this many ticks on the axis (about 90 units apart).
const MAX_TICKS: u64 = 8;

#[derive(Debug, Serialize)]
pub(crate) struct Timeline {
    pub(crate) width: f64,
    pub(crate) height: f64,
    pub(crate) label_width: f64,
    pub(crate) plot_x: f64,
    pub(crate) plot_right: f64,
    pub(crate) axis_y: f64,
    pub(crate) row_height: f64,
    pub(crate) bar_height: f64,
    /// What the chart shows, for screen readers.
    pub(crate) caption: String,
    pub(crate) ticks: Vec<Tick>,
    /// The run's phases, in a lane above the resources.
    pub(crate) phases: Option<Row>,
    pub(crate) rows: Vec<Row>,
    pub(crate) resources: usize,
    pub(crate) hidden_resources: usize,
    pub(crate) steps: usize,
    pub(crate) failed_steps: usize,
}

#[derive(Debug, Serialize)]
pub(crate) struct Tick {
    pub(crate) x: f64,
    pub(crate) label: String,
}

#[derive(Debug, Serialize)]
pub(crate) struct Row {
    /// Top of the row's band, the bars' top, and the label's baseline.
    pub(crate) y: f64,
    pub(crate) bar_y: f64,
    pub(crate) text_y: f64,
    /// The label as shown (shortened) and in full.
    pub(crate) label: String,
    pub(crate) name: String,
    pub(crate) failed: bool,
    pub(crate) bars: Vec<Bar>,
}

#[derive(Debug, Serialize)]
pub(crate) struct Bar {
    pub(crate) x: f64,
    pub(crate) width: f64,
    pub(crate) ok: bool,
    /// The action, drawn inside the bar when it fits.
    pub(crate) text: Option<String>,
    pub(crate) title: String,
}

/// The timeline of `report`'s steps; `None` when it has none.
pub(crate) fn timeline(report: &RunReport) -> Option<Timeline> {
    if report.steps.is_empty() {
        return None;
    }
    let span = report
        .steps
        .iter()
        .map(|s| s.start_ms + s.duration_ms)
        .chain(report.phases.iter().map(|p| p.start_ms + p.duration_ms))
        .max()
        .unwrap_or(0)
        .max(1);
    let scale = Scale { span_ms: span };

    let groups = by_resource(&report.steps);
    let resources = groups.len();
    let shown = pick_rows(&groups);

    let phases: Vec<Bar> = report
        .phases
        .iter()
        .filter(|p| p.duration_ms > 0)
        .map(|p| {
            let ok = p.status.is_ok();
            let title = format!(
                "phase {}: from +{} for {}, {}",
                p.phase,
                duration(p.start_ms),
                duration(p.duration_ms),
                p.status.as_str()
            );
            scale.bar(p.start_ms, p.duration_ms, ok, &p.phase, title)
        })
        .collect();
    let has_phases = !phases.is_empty();
    let first_row = AXIS_HEIGHT + if has_phases { ROW_HEIGHT + 4.0 } else { 0.0 };
    let row_at = |y: f64, name: &str, failed: bool, bars: Vec<Bar>| Row {
        y,
        bar_y: y + (ROW_HEIGHT - BAR_HEIGHT) / 2.0,
        text_y: y + ROW_HEIGHT / 2.0 + 4.0,
        label: shorten(name, LABEL_CHARS),
        name: name.to_string(),
        failed,
        bars,
    };
    let phases = has_phases.then(|| {
        let failed = phases.iter().any(|b| !b.ok);
        row_at(AXIS_HEIGHT, "phases", failed, phases)
    });

    let rows: Vec<Row> = shown
        .iter()
        .enumerate()
        .map(|(i, g)| {
            let bars =
                g.steps.iter().map(|s| scale.bar(s.start_ms, s.duration_ms, s.ok, &s.action, step_title(s))).collect();
            row_at(first_row + i as f64 * ROW_HEIGHT, g.resource, g.failed(), bars)
        })
        .collect();

    let steps = report.steps.len();
    let failed_steps = report.steps.iter().filter(|s| !s.ok).count();
    let mut caption = format!(
        "Timeline of {steps} step{} on {resources} resource{} over {}",
        if steps == 1 { "" } else { "s" },
        if resources == 1 { "" } else { "s" },
        duration(span)
    );
    if failed_steps > 0 {
        caption.push_str(&format!(", {failed_steps} failed"));
    }
    Some(Timeline {
        width: WIDTH,
        height: first_row + rows.len() as f64 * ROW_HEIGHT + 4.0,
        label_width: LABEL_WIDTH,
        plot_x: PLOT_X,
        plot_right: PLOT_RIGHT,
        axis_y: AXIS_HEIGHT,
        row_height: ROW_HEIGHT,
        bar_height: BAR_HEIGHT,
        caption,
        ticks: scale.ticks(),
        phases,
        hidden_resources: resources - rows.len(),
        rows,
        resources,
        steps,
        failed_steps,
    })
}

/// Milliseconds since the run started to x in the drawing.
struct Scale {
    span_ms: u64,
}

impl Scale {
    fn x(&self, ms: u64) -> f64 {
        PLOT_X + (PLOT_RIGHT - PLOT_X) * ms.min(self.span_ms) as f64 / self.span_ms as f64
    }

    fn bar(&self, start_ms: u64, duration_ms: u64, ok: bool, text: &str, title: String) -> Bar {
        let x = self.x(start_ms);
        let width = (self.x(start_ms + duration_ms) - x).max(MIN_BAR).min(PLOT_RIGHT - x).max(0.0);
        let fits = width >= text.chars().count() as f64 * BAR_CHAR_WIDTH + 6.0;
        Bar { x: round(x), width: round(width), ok, text: fits.then(|| text.to_string()), title }
    }

    /// Ticks at a round number of seconds, from 0 to the end of the run.
    fn ticks(&self) -> Vec<Tick> {
        const STEPS_MS: [u64; 16] = [
            100, 200, 500, 1_000, 2_000, 5_000, 10_000, 15_000, 30_000, 60_000, 120_000, 300_000, 600_000, 900_000,
            1_800_000, 3_600_000,
        ];
        let step = STEPS_MS
            .into_iter()
            .find(|s| self.span_ms / s < MAX_TICKS)
            .unwrap_or_else(|| self.span_ms.div_ceil((MAX_TICKS - 1) * 3_600_000) * 3_600_000);
        (0..=self.span_ms / step)
            .map(|i| {
                let ms = i * step;
                let label =
                    if step < 1_000 { format!("{:.1}s", ms as f64 / 1000.0) } else { format!("{}s", ms / 1000) };
                Tick { x: round(self.x(ms)), label }
            })
            .collect()
    }
}

fn round(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

/// The steps of one resource, in the order they ran.
struct Group<'a> {
    resource: &'a str,
    first_ms: u64,
    steps: Vec<&'a StepTiming>,
}

impl Group<'_> {
    fn failed(&self) -> bool {
        self.steps.iter().any(|s| !s.ok)
    }
}

/// Steps grouped by resource, groups in the order their first step started.
fn by_resource(steps: &[StepTiming]) -> Vec<Group<'_>> {
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut groups: Vec<Group> = Vec::new();
    for s in steps {
        let i = *index.entry(&s.resource).or_insert_with(|| {
            groups.push(Group { resource: &s.resource, first_ms: s.start_ms, steps: Vec::new() });
            groups.len() - 1
        });
        let g = &mut groups[i];
        g.first_ms = g.first_ms.min(s.start_ms);
        g.steps.push(s);
    }
    for g in &mut groups {
        g.steps.sort_by_key(|s| s.start_ms);
    }
    groups.sort_by_key(|g| g.first_ms);
    groups
}

/// At most [`MAX_ROWS`] groups, in their order: those with a failed step first, then
/// the earliest.
fn pick_rows<'g, 'a>(groups: &'g [Group<'a>]) -> Vec<&'g Group<'a>> {
    if groups.len() <= MAX_ROWS {
        return groups.iter().collect();
    }
    let mut keep = vec![false; groups.len()];
    let failed_first =
        (0..groups.len()).filter(|&i| groups[i].failed()).chain((0..groups.len()).filter(|&i| !groups[i].failed()));
    for i in failed_first.take(MAX_ROWS) {
        keep[i] = true;
    }
    groups.iter().zip(keep).filter(|(_, k)| *k).map(|(g, _)| g).collect()
}

fn step_title(s: &StepTiming) -> String {
    let mut title = format!(
        "{} {} ({}): from +{} for {}, {}",
        s.resource,
        s.action,
        s.kind,
        duration(s.start_ms),
        duration(s.duration_ms),
        if s.ok { "ok" } else { "failed" }
    );
    if let Some(d) = &s.detail {
        title.push_str(": ");
        title.push_str(d);
    }
    shorten(&title, TITLE_CHARS)
}

/// `s` in at most `max` characters, shortened in the middle with `...` (ASCII, so no
/// font is needed for it).
fn shorten(s: &str, max: usize) -> String {
    let n = s.chars().count();
    if n <= max {
        return s.to_string();
    }
    let keep = max.saturating_sub(3);
    let head = keep.div_ceil(2);
    let tail = keep - head;
    let start: String = s.chars().take(head).collect();
    let end: String = s.chars().skip(n - tail).collect();
    format!("{start}...{end}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(resource: &str, action: &str, start_ms: u64, duration_ms: u64, ok: bool) -> StepTiming {
        StepTiming {
            resource: resource.into(),
            kind: "local-postgres".into(),
            action: action.into(),
            start_ms,
            duration_ms,
            ok,
            detail: None,
        }
    }

    #[test]
    fn shorten_keeps_both_ends() {
        assert_eq!(shorten("database.db", 30), "database.db");
        let long = "service.checkout-worker-with-a-very-long-name.17";
        let short = shorten(long, 20);
        assert_eq!(short.chars().count(), 20);
        assert!(short.starts_with("service.") && short.ends_with("name.17") && short.contains("..."), "{short}");
    }

    #[test]
    fn ticks_are_round_seconds_within_the_plot() {
        for (span, first, second) in
            [(900, "0.0s", "0.2s"), (19_000, "0s", "5s"), (95_000, "0s", "15s"), (3_700_000, "0s", "600s")]
        {
            let ticks = Scale { span_ms: span }.ticks();
            assert_eq!((ticks[0].label.as_str(), ticks[1].label.as_str()), (first, second), "span {span}");
            assert_eq!(ticks[0].x, PLOT_X);
            assert!(ticks.len() as u64 <= MAX_TICKS, "span {span}: {} ticks", ticks.len());
            assert!(ticks.iter().all(|t| t.x >= PLOT_X && t.x <= PLOT_RIGHT), "span {span}");
        }
    }

    #[test]
    fn bars_are_placed_by_time_and_never_leave_the_plot() {
        let s = Scale { span_ms: 10_000 };
        let half = s.bar(5_000, 5_000, true, "restore", String::new());
        assert_eq!(half.x, round(PLOT_X + (PLOT_RIGHT - PLOT_X) / 2.0));
        assert_eq!(round(half.x + half.width), round(PLOT_RIGHT));
        assert_eq!(half.text.as_deref(), Some("restore"));
        let blip = s.bar(10_000, 0, false, "health", String::new());
        assert!(blip.x + blip.width <= PLOT_RIGHT + 0.05 && blip.text.is_none());
        let short = s.bar(0, 1, true, "create", String::new());
        assert_eq!(short.width, MIN_BAR);
    }

    #[test]
    fn many_resources_keep_every_failure_and_cap_the_rows() {
        let mut r = crate::report::tests::passed();
        r.steps = (0..250u64).map(|i| step(&format!("service.web.{i}"), "start", i * 100, 500, i % 97 != 96)).collect();
        r.steps.push(step("service.web.3", "health", 40_000, 1_000, true));
        let t = timeline(&r).unwrap();
        assert_eq!(t.rows.len(), MAX_ROWS);
        assert_eq!((t.resources, t.hidden_resources, t.steps, t.failed_steps), (250, 250 - MAX_ROWS, 251, 2));
        let failed: Vec<&str> = t.rows.iter().filter(|r| r.failed).map(|r| r.name.as_str()).collect();
        assert_eq!(failed, ["service.web.96", "service.web.193"]);
        // Rows stay in the order their resources started, one row apart.
        assert_eq!(t.rows[0].name, "service.web.0");
        assert!(t.rows.windows(2).all(|w| w[1].y - w[0].y == ROW_HEIGHT));
        assert_eq!(t.rows[3].bars.len(), 2, "a resource's steps share its row");
        assert!(t.height <= AXIS_HEIGHT + (MAX_ROWS + 2) as f64 * ROW_HEIGHT);
        assert!(t.caption.contains("251 steps on 250 resources") && t.caption.ends_with("2 failed"), "{}", t.caption);
    }

    #[test]
    fn no_steps_no_timeline() {
        let mut r = crate::report::tests::passed();
        r.steps.clear();
        assert!(timeline(&r).is_none());
    }
}
