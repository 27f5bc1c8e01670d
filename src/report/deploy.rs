//! A rehearsed deploy in the report's pages: the headline (the worst wait), the limits,
//! the before/during/switch/after table, what each migration file did, the longest
//! waits, and a timeline drawn as inline SVG — the migration's files and the switch as
//! bands, the lock waits as bars, and each endpoint's p99 per second as a line with its
//! errors marked. As with the run's timeline ([`super::timeline`]), all geometry is
//! computed here and the templates only place it, every string autoescaped.

use std::collections::BTreeMap;

use serde::Serialize;

use super::model::DeployReport;
use crate::compare::deploy::Second;

/// Width of the drawing; the page scales it to its column.
const WIDTH: f64 = 960.0;
const PLOT_X: f64 = 150.0;
const PLOT_RIGHT: f64 = WIDTH - 20.0;
const AXIS_Y: f64 = 22.0;
const BAND_TOP: f64 = 30.0;
/// The lock waits' lane.
const WAITS_HEIGHT: f64 = 40.0;
/// Each endpoint's chart.
const CHART_HEIGHT: f64 = 60.0;
const GAP: f64 = 10.0;
/// The most endpoints drawn, and waits drawn (the longest).
const MAX_ENDPOINTS: usize = 8;
const MAX_WAIT_BARS: usize = 200;
const MAX_WAIT_ROWS: usize = 10;

#[derive(Serialize)]
pub(crate) struct DeployView {
    from: String,
    to: String,
    switch: String,
    headline: Option<String>,
    passed: bool,
    stopped: Option<String>,
    sampler: String,
    limits: Vec<LimitRow>,
    windows: Vec<WindowRow>,
    files: Vec<FileRow>,
    /// A static linter's findings, when one is installed.
    lint: Option<LintView>,
    waits: Vec<WaitRow>,
    waits_more: usize,
    chart: Chart,
}

#[derive(Serialize)]
struct LintView {
    tool: String,
    findings: Vec<LintRow>,
    errors: Vec<String>,
}

#[derive(Serialize)]
struct LintRow {
    file: String,
    at: String,
    rule: String,
    message: String,
}

#[derive(Serialize)]
struct LimitRow {
    name: String,
    limit: String,
    measured: String,
    passed: bool,
    reason: String,
}

#[derive(Serialize)]
struct WindowRow {
    window: String,
    span: String,
    endpoint: String,
    requests: usize,
    errors: usize,
    p50: String,
    p99: String,
    max: String,
}

#[derive(Serialize)]
struct FileRow {
    file: String,
    start: String,
    duration: String,
    locks: String,
    wal: String,
    blocked: usize,
    longest_wait: String,
    /// The static linter's rules found in it.
    lint: String,
}

#[derive(Serialize)]
struct WaitRow {
    app: String,
    query: String,
    wanted: String,
    blocked_by: String,
    file: String,
    at: String,
    waited: String,
}

#[derive(Serialize)]
pub(super) struct Chart {
    pub(super) width: f64,
    pub(super) height: f64,
    pub(super) plot_x: f64,
    pub(super) axis_y: f64,
    pub(super) ticks: Vec<Tick>,
    pub(super) bands: Vec<Band>,
    pub(super) waits_y: f64,
    pub(super) waits_height: f64,
    pub(super) waits: Vec<Bar>,
    pub(super) lanes: Vec<Lane>,
    pub(super) caption: String,
}

#[derive(Serialize)]
pub(super) struct Tick {
    pub(super) x: f64,
    pub(super) label: String,
}

#[derive(Serialize)]
pub(super) struct Band {
    pub(super) x: f64,
    pub(super) width: f64,
    pub(super) label: String,
    pub(super) title: String,
    /// `migration` or `switch`.
    pub(super) kind: &'static str,
    /// Where its label sits: a migration's at the foot, the switch's at the head (they
    /// meet when the switch follows the migration at once).
    pub(super) label_y: f64,
}

#[derive(Serialize)]
pub(super) struct Bar {
    pub(super) x: f64,
    pub(super) y: f64,
    pub(super) width: f64,
    pub(super) title: String,
}

#[derive(Serialize)]
pub(super) struct Lane {
    pub(super) label: String,
    pub(super) y: f64,
    pub(super) height: f64,
    /// `x,y x,y …`: the p99 per second.
    pub(super) points: String,
    pub(super) errors: Vec<Dot>,
    pub(super) top: String,
}

#[derive(Serialize)]
pub(super) struct Dot {
    pub(super) x: f64,
    pub(super) y: f64,
    pub(super) title: String,
}

fn secs(ms: u64) -> String {
    format!("{:.1} s", ms as f64 / 1000.0)
}

fn opt_ms(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.0} ms")).unwrap_or_else(|| "–".into())
}

fn bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.0} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

fn round(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

impl DeployView {
    pub(crate) fn new(d: &DeployReport) -> DeployView {
        let limits = d
            .limits
            .iter()
            .map(|l| LimitRow {
                name: l.name.clone(),
                limit: l.limit.clone(),
                measured: l.measured.clone(),
                passed: l.passed,
                reason: l.reason.clone(),
            })
            .collect();
        let windows = d
            .traffic
            .windows
            .iter()
            .flat_map(|w| {
                let span = format!("{}–{}", secs(w.from_ms), secs(w.to_ms));
                w.endpoints.iter().map(move |e| WindowRow {
                    window: w.name.clone(),
                    span: span.clone(),
                    endpoint: e.endpoint.clone(),
                    requests: e.requests,
                    errors: e.errors,
                    p50: opt_ms(e.p50_ms),
                    p99: opt_ms(e.p99_ms),
                    max: opt_ms(e.max_ms),
                })
            })
            .collect();
        let files = d
            .files
            .iter()
            .map(|f| FileRow {
                file: f.file.clone(),
                start: secs(f.start_ms),
                duration: secs(f.duration_ms),
                locks: f
                    .locks
                    .iter()
                    .map(|l| format!("{} on {} {}", l.mode, l.target, secs(l.held_ms)))
                    .collect::<Vec<_>>()
                    .join(", "),
                wal: bytes(f.wal_bytes),
                blocked: f.blocked,
                longest_wait: secs(f.longest_wait_ms),
                lint: d.lint.as_ref().map(|l| l.rules_of(&f.file).join(", ")).unwrap_or_default(),
            })
            .collect();
        let waits = d
            .waits
            .iter()
            .take(MAX_WAIT_ROWS)
            .map(|w| WaitRow {
                app: w.app.clone(),
                query: w.query.chars().take(200).collect(),
                wanted: format!("{} on {}", w.mode, w.target),
                blocked_by: w
                    .blockers
                    .iter()
                    .map(|b| format!("pid {} holding {}", b.pid, b.mode))
                    .collect::<Vec<_>>()
                    .join(", "),
                file: w.file.clone().unwrap_or_default(),
                at: secs(w.first_ms),
                waited: secs(w.waited_ms),
            })
            .collect();
        let sampler = match &d.sampler_error {
            Some(e) => format!("the lock sampler stopped: {e}"),
            None => format!("{} samples of the server's locks, every {} ms", d.samples, d.interval_ms),
        };
        DeployView {
            from: d.from.clone(),
            to: d.to.clone(),
            switch: d.switch.clone(),
            headline: d.headline.clone(),
            passed: d.passed(),
            stopped: d.stopped.clone(),
            sampler,
            limits,
            windows,
            files,
            lint: d.lint.as_ref().map(|l| LintView {
                tool: l.tool.clone(),
                findings: l
                    .findings
                    .iter()
                    .map(|f| LintRow {
                        file: f.file.clone(),
                        at: format!("{}:{}", f.line, f.column),
                        rule: f.rule.clone(),
                        message: match &f.help {
                            Some(h) => format!("{} {h}", f.message),
                            None => f.message.clone(),
                        },
                    })
                    .collect(),
                errors: l.errors.clone(),
            }),
            waits,
            waits_more: d.waits_total.saturating_sub(MAX_WAIT_ROWS),
            chart: chart(d),
        }
    }
}

/// The timeline's geometry.
/// Where `ms` (of `end` ms drawn) falls on the drawing.
pub(super) fn x_of(ms: f64, end: f64) -> f64 {
    round(PLOT_X + (PLOT_RIGHT - PLOT_X) * (ms / end.max(1.0)).clamp(0.0, 1.0))
}

/// The seconds' ticks over `end` ms: at most a dozen.
pub(super) fn ticks(end: f64) -> Vec<Tick> {
    let step = [1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0]
        .into_iter()
        .find(|s| end / 1000.0 / s <= 12.0)
        .unwrap_or(1200.0);
    (0..)
        .map(|i| i as f64 * step)
        .take_while(|s| s * 1000.0 <= end)
        .map(|s| Tick { x: x_of(s * 1000.0, end), label: format!("{s:.0}s") })
        .collect()
}

/// A band from `from_ms` to `to_ms` (at least 2 units wide).
pub(super) fn band(from_ms: u64, to_ms: u64, end: f64, label: String, title: String, kind: &'static str) -> Band {
    let x = x_of(from_ms as f64, end);
    Band { x, width: round((x_of(to_ms as f64, end) - x).max(2.0)), label, title, kind, label_y: 0.0 }
}

/// Each endpoint's p99 per second, on its own scale, in lanes from `y`: the lanes and
/// where the drawing ends below them.
pub(super) fn lanes(seconds: &[Second], end: f64, mut y: f64) -> (Vec<Lane>, f64) {
    let x = |ms: f64| x_of(ms, end);
    let mut per: BTreeMap<&str, Vec<(u64, f64, usize)>> = BTreeMap::new();
    for s in seconds {
        per.entry(s.endpoint.as_str()).or_default().push((s.second, s.p99_ms, s.errors));
    }
    let lanes = per
        .into_iter()
        .take(MAX_ENDPOINTS)
        .map(|(endpoint, points)| {
            let top = points.iter().map(|p| p.1).fold(1.0, f64::max);
            let py = |v: f64| round(y + CHART_HEIGHT - CHART_HEIGHT * (v / top));
            let mid = |s: u64| ((s as f64 + 0.5) * 1000.0).min(end);
            let line =
                points.iter().map(|(s, v, _)| format!("{},{}", x(mid(*s)), py(*v))).collect::<Vec<_>>().join(" ");
            let errors = points
                .iter()
                .filter(|p| p.2 > 0)
                .map(|(s, v, e)| Dot { x: x(mid(*s)), y: py(*v), title: format!("second {s}: {e} error(s)") })
                .collect();
            let lane = Lane {
                label: endpoint.to_string(),
                y: round(y),
                height: CHART_HEIGHT,
                points: line,
                errors,
                top: format!("{top:.0} ms"),
            };
            y += CHART_HEIGHT + GAP;
            lane
        })
        .collect();
    (lanes, round(y))
}

/// A chart of `bands` over the seconds, with no lane of lock waits (a game day's).
pub(super) fn chart_of(end_ms: u64, mut bands: Vec<Band>, seconds: &[Second], caption: String) -> Chart {
    let end = end_ms.max(1) as f64;
    let (lanes, height) = lanes(seconds, end, BAND_TOP);
    // Room for the stepped labels even with no lane (no load ran).
    let height = height.max(BAND_TOP + 4.0 * 11.0 + 4.0);
    // Labels at the foot, stepped up in turn: bands that start together stay legible.
    for (i, b) in bands.iter_mut().filter(|b| !b.label.is_empty()).enumerate() {
        b.label_y = height - 2.0 - 11.0 * (i % 4) as f64;
    }
    Chart {
        width: WIDTH,
        height,
        plot_x: PLOT_X,
        axis_y: AXIS_Y,
        ticks: ticks(end),
        bands,
        waits_y: BAND_TOP,
        waits_height: 0.0,
        waits: Vec::new(),
        lanes,
        caption,
    }
}

fn chart(d: &DeployReport) -> Chart {
    let end = d.marks.end_ms.max(1) as f64;
    let x = |ms: f64| x_of(ms, end);
    let ticks = ticks(end);
    let mut bands: Vec<Band> = d
        .files
        .iter()
        .map(|f| Band {
            x: x(f.start_ms as f64),
            width: round((x((f.start_ms + f.duration_ms) as f64) - x(f.start_ms as f64)).max(2.0)),
            label: f.file.rsplit('/').next().unwrap_or(&f.file).to_string(),
            title: format!("{}: {} from {}", f.file, secs(f.duration_ms), secs(f.start_ms)),
            kind: "migration",
            label_y: 0.0,
        })
        .collect();
    let m = &d.marks;
    if m.switch_end_ms > m.switch_start_ms {
        bands.push(Band {
            x: x(m.switch_start_ms as f64),
            width: round((x(m.switch_end_ms as f64) - x(m.switch_start_ms as f64)).max(2.0)),
            label: format!("switch ({})", d.switch),
            title: format!(
                "the services moved to {} ({}): {}",
                d.to,
                d.switch,
                secs(m.switch_end_ms - m.switch_start_ms)
            ),
            kind: "switch",
            label_y: AXIS_Y + 8.0,
        });
    }
    let waits_y = BAND_TOP;
    let shown: Vec<_> = d.waits.iter().take(MAX_WAIT_BARS).collect();
    let rows = shown.len().clamp(1, 8);
    let bar_h = (WAITS_HEIGHT / rows as f64).clamp(2.0, 10.0);
    let waits = shown
        .iter()
        .enumerate()
        .map(|(i, w)| Bar {
            x: x(w.first_ms as f64),
            y: round(waits_y + (i % rows) as f64 * bar_h),
            width: round((x((w.first_ms + w.waited_ms) as f64) - x(w.first_ms as f64)).max(2.0)),
            title: format!("{} waited {} for {} on {}", w.app, secs(w.waited_ms), w.mode, w.target),
        })
        .collect();
    let (lanes, height) = lanes(&d.traffic.seconds, end, waits_y + WAITS_HEIGHT + GAP);
    for b in bands.iter_mut().filter(|b| b.kind == "migration") {
        b.label_y = height - 2.0;
    }
    Chart {
        width: WIDTH,
        height,
        plot_x: PLOT_X,
        axis_y: AXIS_Y,
        ticks,
        bands,
        waits_y,
        waits_height: WAITS_HEIGHT,
        waits,
        lanes,
        caption: format!("The deploy of {} over {}", d.to, d.from),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::deploy::{EndpointStats, Marks, Second, Traffic, Window};
    use crate::compare::locks::{FileRun, Held, HeldLock, Wait};

    #[test]
    fn the_view_places_files_waits_and_seconds_on_one_axis() {
        let d = DeployReport {
            from: "v2".into(),
            to: "v4".into(),
            switch: "rolling".into(),
            marks: Marks {
                migration_start_ms: 2000,
                migration_end_ms: 4000,
                switch_start_ms: 4000,
                switch_end_ms: 5000,
                end_ms: 10_000,
            },
            traffic: Traffic {
                windows: vec![Window {
                    name: "during".into(),
                    from_ms: 2000,
                    to_ms: 4000,
                    endpoints: vec![EndpointStats {
                        endpoint: "POST /events".into(),
                        requests: 20,
                        errors: 1,
                        p50_ms: Some(30.0),
                        p99_ms: Some(1600.0),
                        max_ms: Some(1650.0),
                    }],
                }],
                seconds: vec![
                    Second { second: 1, endpoint: "POST /events".into(), requests: 20, errors: 0, p99_ms: 40.0 },
                    Second { second: 3, endpoint: "POST /events".into(), requests: 20, errors: 1, p99_ms: 1600.0 },
                ],
                requests: 40,
                longest_during_ms: Some(1650.0),
            },
            files: vec![FileRun {
                file: "migrations/0004_x.sql".into(),
                start_ms: 2000,
                duration_ms: 2000,
                locks: vec![HeldLock { mode: "ShareLock".into(), target: "order_events".into(), held_ms: 1900 }],
                wal_bytes: 48 << 20,
                blocked: 1,
                longest_wait_ms: 1600,
            }],
            waits: vec![Wait {
                pid: 1,
                app: "shop".into(),
                query: "insert".into(),
                mode: "RowExclusiveLock".into(),
                target: "order_events".into(),
                blockers: vec![Held { pid: 9, mode: "ShareLock".into() }],
                by_migration: true,
                file: Some("migrations/0004_x.sql".into()),
                first_ms: 2500,
                waited_ms: 1600,
            }],
            waits_total: 1,
            ..DeployReport::default()
        };
        let v = DeployView::new(&d);
        let c = &v.chart;
        // 10 s over 790 units: the file from 2 s to 4 s, the wait from 2.5 s.
        assert_eq!((c.bands[0].x, c.bands[0].width, c.bands[0].label.as_str()), (308.0, 158.0, "0004_x.sql"));
        assert_eq!(c.bands[1].kind, "switch");
        assert_eq!((c.waits[0].x, c.waits[0].width), (347.5, 126.4));
        assert_eq!(c.lanes[0].points, format!("{},{} {},{}", 268.5, round(c.lanes[0].y + 58.5), 426.5, c.lanes[0].y));
        assert_eq!(c.lanes[0].errors.len(), 1);
        assert_eq!(c.ticks.len(), 11);
        assert_eq!(v.files[0].locks, "ShareLock on order_events 1.9 s");
        assert_eq!(v.files[0].wal, "48.0 MiB");
        assert_eq!(v.waits[0].blocked_by, "pid 9 holding ShareLock");
        assert_eq!(v.windows[0].p99, "1600 ms");
    }
}
