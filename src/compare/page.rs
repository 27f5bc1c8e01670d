//! `compare.html`: one self-contained page (no scripts, fonts or requests) with the
//! baseline and the candidate side by side — each endpoint's latency distribution as an
//! inline SVG box plot on one scale, error rates, migration times, every metric's
//! verdict and interval. Rendered by `templates/compare.html.tera`, autoescaped.

use serde_json::{json, Value};

const TEMPLATE: &str = include_str!("../../templates/compare.html.tera");

/// The quantile `q` (0..1) of sorted `v` (nearest rank).
fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v[((v.len() - 1) as f64 * q).round() as usize]
}

/// A box of one side's samples on a 400-wide scale up to `max`.
fn boxed(label: &str, samples: &[f64], max: f64, fill: &str) -> Value {
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    let x = |q: f64| 400.0 * quantile(&v, q) / max.max(f64::MIN_POSITIVE);
    json!({
        "label": label, "n": v.len(), "fill": fill,
        "p50": quantile(&v, 0.5), "p95": quantile(&v, 0.95),
        "x_min": x(0.0), "x_p25": x(0.25), "x_p50": x(0.5), "x_max": x(0.99),
        "w_box": (x(0.75) - x(0.25)).max(1.0),
    })
}

/// Each database: its size on both sides, and the statements of the load side by side
/// (matched by text; at most 20, the candidate's costliest first).
fn databases(c: &Value) -> Vec<Value> {
    use super::database::{side_by_side, Measured, Statement};
    let of = |side: &str| -> std::collections::BTreeMap<String, Measured> {
        serde_json::from_value(c[side]["databases"].clone()).unwrap_or_default()
    };
    let (b, k) = (of("baseline"), of("candidate"));
    let mut names: Vec<&String> = b.keys().chain(k.keys()).collect();
    names.sort();
    names.dedup();
    let none = Measured::default();
    let mib = |m: &Measured| m.size_bytes.map(|s| format!("{:.1} MiB", s as f64 / 1048576.0));
    let cell = |s: Option<&Statement>| s.map(|s| json!({"calls": s.calls, "mean_ms": s.mean_ms}));
    names
        .into_iter()
        .map(|n| {
            let (mb, mk) = (b.get(n).unwrap_or(&none), k.get(n).unwrap_or(&none));
            let rows: Vec<Value> = side_by_side(&mb.statements, &mk.statements, 20)
                .into_iter()
                .map(|(q, x, y)| json!({"query": q, "baseline": cell(x), "candidate": cell(y)}))
                .collect();
            let notes: Vec<&String> = [&mb.note, &mk.note].into_iter().flatten().collect();
            json!({"name": n, "size": [mib(mb), mib(mk)], "statements": rows, "notes": notes})
        })
        .collect()
}

/// A compared deploy's rows: each endpoint during the migration on the candidate's copy
/// and on the baseline twin, over the same span (`null` when not a deploy).
fn deploy(d: &Value) -> Value {
    if d.is_null() {
        return Value::Null;
    }
    let during = |traffic: &Value| -> serde_json::Map<String, Value> {
        let w = traffic["windows"].as_array().and_then(|ws| ws.iter().find(|w| w["name"] == "during"));
        w.and_then(|w| w["endpoints"].as_array())
            .map(|es| es.iter().filter_map(|e| Some((e["endpoint"].as_str()?.to_string(), e.clone()))).collect())
            .unwrap_or_default()
    };
    let (cand, twin) = (during(&d["traffic"]), during(&d["twin"]["traffic"]));
    let mut endpoints: Vec<&String> = cand.keys().chain(twin.keys()).collect();
    endpoints.sort();
    endpoints.dedup();
    let cell = |m: &serde_json::Map<String, Value>, e: &str| {
        let x = m.get(e).cloned().unwrap_or(Value::Null);
        let ms = |k: &str| x[k].as_f64().map(|v| format!("{v:.0} ms")).unwrap_or_else(|| "–".into());
        json!({ "requests": x["requests"], "errors": x["errors"], "p99": ms("p99_ms") })
    };
    let rows: Vec<Value> = endpoints
        .iter()
        .map(|e| json!({ "endpoint": e, "candidate": cell(&cand, e), "twin": cell(&twin, e) }))
        .collect();
    let marks = &d["marks"];
    let span = match (marks["migration_start_ms"].as_u64(), marks["migration_end_ms"].as_u64()) {
        (Some(a), Some(b)) => format!("{:.1}–{:.1} s", a as f64 / 1000.0, b as f64 / 1000.0),
        _ => String::new(),
    };
    json!({
        "from": d["from"], "to": d["to"], "headline": d["headline"], "span": span, "rows": rows,
        "gone": d["twin"]["gone"], "twin": !d["twin"].is_null(),
    })
}

/// The page for a comparison (compare.json's value).
pub fn render(c: &Value) -> String {
    let empty = json!({});
    let lat = |side: &str| c[side]["measured"]["latencies"].as_object().cloned().unwrap_or_default();
    let (bl, cl) = (lat("baseline"), lat("candidate"));
    let mut endpoints: Vec<&String> = bl.keys().chain(cl.keys()).collect();
    endpoints.sort();
    endpoints.dedup();
    let samples = |m: &serde_json::Map<String, Value>, e: &str| -> Vec<f64> {
        m.get(e).and_then(Value::as_array).map(|a| a.iter().filter_map(Value::as_f64).collect()).unwrap_or_default()
    };
    let verdict_of = |name: &str| {
        c["verdicts"].as_array().and_then(|vs| vs.iter().find(|v| v["metric"] == name)).unwrap_or(&empty).clone()
    };
    let latency: Vec<Value> = endpoints
        .iter()
        .map(|e| {
            let (b, k) = (samples(&bl, e), samples(&cl, e));
            let mut all: Vec<f64> = b.iter().chain(&k).copied().collect();
            all.sort_by(f64::total_cmp);
            let max = quantile(&all, 0.99).max(1.0);
            let v = verdict_of(&format!("latency {e}"));
            json!({
                "endpoint": e,
                "classification": v["classification"].as_str().unwrap_or("NoData"),
                "boxes": [boxed("baseline", &b, max, "#ddf4ff"), boxed("candidate", &k, max, "#fff8c5")],
            })
        })
        .collect();
    let side = |key: &str, label: &str| {
        let s = &c[key];
        let requests: usize = s["measured"]["errors"]
            .as_object()
            .map_or(0, |m| m.values().filter_map(Value::as_array).map(Vec::len).sum());
        let migration: Vec<String> = s["migration_ms"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_f64).map(|ms| format!("{:.0} ms", ms)).collect())
            .unwrap_or_default();
        json!({
            "label": label, "release": s["release"], "run_id": s["run_id"], "verdict": s["verdict"],
            "reason": s["reason"], "requests": requests, "migration": migration.join(", "),
        })
    };
    let mut ctx = tera::Context::new();
    let score = &c["score"];
    ctx.insert("outcome", score["outcome"].as_str().unwrap_or("fail"));
    ctx.insert("score", &score["score"]);
    ctx.insert("passed", &score["passed"]);
    ctx.insert("judged", &score["judged"]);
    for key in ["environment", "baseline", "candidate", "settings", "load", "reason", "verdicts", "schema_version"] {
        ctx.insert(key, &c[key]);
    }
    ctx.insert("sides", &[side("baseline", "Baseline"), side("candidate", "Candidate")]);
    ctx.insert("latency", &latency);
    ctx.insert("databases", &databases(c));
    ctx.insert("deploy", &deploy(&c["candidate"]["deploy"]));
    let mut tera = tera::Tera::default();
    tera.autoescape_on(vec![".html"]);
    tera.add_raw_template("compare.html", TEMPLATE).and_then(|()| tera.render("compare.html", &ctx)).unwrap_or_else(
        |e| {
            let why = crate::description::template::TemplateError::from(e).to_string();
            format!(
                "<!doctype html><meta charset=utf-8><title>compare</title><p>the page could not be drawn: {}</p>",
                why.replace('<', "&lt;")
            )
        },
    )
}
