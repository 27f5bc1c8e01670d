//! A user's own load tool (`compare.load.command`): what it wrote to
//! `$REHEARSE_RESULTS`, read into the same per-endpoint samples as the built-in
//! replay. Three formats:
//!
//! - `samples`: `ENDPOINT,LATENCY_MS,OK` a line (OK: `1`/`0`/`true`/`false`; a first
//!   line that is not a sample is a header and skipped) — the lingua franca any tool
//!   can be made to print;
//! - `k6`: k6's JSON output (`k6 run --out json=FILE`), one object a line: each
//!   `http_req_duration` point is a latency (ms), each `http_req_failed` point an
//!   error or not, under the endpoint `METHOD PATH` of its `name` tag;
//! - `vegeta`: `vegeta encode --to csv` (timestamp, code, latency in ns, bytes out,
//!   bytes in, error, body, attack, seq, method, url, headers): status 0 (no answer)
//!   or 5xx is an error, as in the replay.
//!
//! Endpoints drop the query string, as the replay's do.

use crate::description::LoadFormat;

use super::load::Measured;

/// Why a results file could not be read: where, and what.
#[derive(Debug, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ResultsError {
    pub line: usize,
    pub message: String,
}

/// The samples in a results file in `format`, read as a stream (a long load's k6
/// output runs to gigabytes; only the samples are kept).
pub fn parse(format: LoadFormat, input: impl std::io::BufRead) -> Result<Measured, ResultsError> {
    let mut m = Measured::default();
    match format {
        LoadFormat::Samples => samples(input, &mut m)?,
        LoadFormat::K6 => k6(input, &mut m)?,
        LoadFormat::Vegeta => vegeta(input, &mut m)?,
    }
    if m.requests() == 0 && m.latencies.values().all(Vec::is_empty) {
        return Err(ResultsError { line: 0, message: "the file holds no request".into() });
    }
    Ok(m)
}

fn endpoint(method: &str, path: &str) -> String {
    format!("{} {}", method.to_ascii_uppercase(), path.split('?').next().unwrap_or(path))
}

/// The path of a URL (`http://host:port/a/b?q` → `/a/b?q`); anything else as it is.
fn path_of(url: &str) -> &str {
    match url.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => url,
    }
}

fn records<R: std::io::Read>(input: R) -> csv::Reader<R> {
    csv::ReaderBuilder::new().has_headers(false).flexible(true).from_reader(input)
}

fn samples(input: impl std::io::Read, m: &mut Measured) -> Result<(), ResultsError> {
    for (i, r) in records(input).records().enumerate() {
        let line = i + 1;
        let r = r.map_err(|e| ResultsError { line, message: e.to_string() })?;
        if r.len() == 1 && r[0].trim().is_empty() {
            continue;
        }
        if r.len() != 3 {
            return Err(ResultsError { line, message: format!("{} fields; want ENDPOINT,LATENCY_MS,OK", r.len()) });
        }
        let latency = r[1].trim().parse::<f64>().ok().filter(|l| l.is_finite() && *l >= 0.0);
        let Some(latency) = latency else {
            if line == 1 {
                continue; // a header
            }
            return Err(ResultsError { line, message: format!("`{}` is not a latency in ms", &r[1]) });
        };
        let ok = match r[2].trim() {
            "1" | "true" => true,
            "0" | "false" => false,
            other => return Err(ResultsError { line, message: format!("`{other}` is not OK (1/0, true/false)") }),
        };
        let ep = r[0].trim();
        let ep = match ep.split_once(' ') {
            Some((method, path)) => endpoint(method, path.trim()),
            None => ep.to_string(),
        };
        m.latencies.entry(ep.clone()).or_default().push(latency);
        m.errors.entry(ep).or_default().push(if ok { 0.0 } else { 1.0 });
    }
    Ok(())
}

fn k6(input: impl std::io::BufRead, m: &mut Measured) -> Result<(), ResultsError> {
    #[derive(serde::Deserialize)]
    struct Line {
        #[serde(rename = "type")]
        kind: String,
        metric: String,
        data: serde_json::Value,
    }
    for (i, l) in input.lines().enumerate() {
        let l = l.map_err(|e| ResultsError { line: i + 1, message: e.to_string() })?;
        if l.trim().is_empty() {
            continue;
        }
        let line: Line =
            serde_json::from_str(&l).map_err(|e| ResultsError { line: i + 1, message: format!("not k6 JSON: {e}") })?;
        if line.kind != "Point" || !matches!(line.metric.as_str(), "http_req_duration" | "http_req_failed") {
            continue;
        }
        let tags = &line.data["tags"];
        let (Some(value), Some(method), Some(name)) =
            (line.data["value"].as_f64(), tags["method"].as_str(), tags["name"].as_str().or(tags["url"].as_str()))
        else {
            return Err(ResultsError { line: i + 1, message: "a point without value, method or name".into() });
        };
        let ep = endpoint(method, path_of(name));
        if line.metric == "http_req_duration" {
            m.latencies.entry(ep).or_default().push(value);
        } else {
            m.errors.entry(ep).or_default().push(if value > 0.0 { 1.0 } else { 0.0 });
        }
    }
    Ok(())
}

fn vegeta(input: impl std::io::Read, m: &mut Measured) -> Result<(), ResultsError> {
    for (i, r) in records(input).records().enumerate() {
        let line = i + 1;
        let r = r.map_err(|e| ResultsError { line, message: e.to_string() })?;
        if r.len() < 11 {
            return Err(ResultsError {
                line,
                message: format!("{} fields; vegeta's CSV has 12 (its method and url came with vegeta 12.8)", r.len()),
            });
        }
        let code: u16 =
            r[1].parse().map_err(|_| ResultsError { line, message: format!("`{}` is no status", &r[1]) })?;
        let ns: f64 = r[2].parse().map_err(|_| ResultsError { line, message: format!("`{}` is no latency", &r[2]) })?;
        let ep = endpoint(&r[9], path_of(&r[10]));
        m.latencies.entry(ep.clone()).or_default().push(ns / 1e6);
        m.errors.entry(ep).or_default().push(if code == 0 || code >= 500 { 1.0 } else { 0.0 });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_with_a_header_and_queries_dropped() {
        let m = parse(
            LoadFormat::Samples,
            "endpoint,latency_ms,ok\nGET /products?page=2,12.5,1\nget /products,20,true\n\"POST /orders\",7,0\n"
                .as_bytes(),
        )
        .unwrap();
        assert_eq!(m.latencies["GET /products"], [12.5, 20.0]);
        assert_eq!(m.errors["GET /products"], [0.0, 0.0]);
        assert_eq!(m.errors["POST /orders"], [1.0]);
        let e = parse(LoadFormat::Samples, "GET /a,1,1\nGET /a,fast,1\n".as_bytes()).unwrap_err();
        assert_eq!(e.line, 2, "{e}");
        assert!(parse(LoadFormat::Samples, "endpoint,latency_ms,ok\n".as_bytes()).is_err(), "no request is an error");
    }

    /// Lines as k6 v0.5x writes them with `--out json=FILE` (k6 docs, "JSON" output).
    #[test]
    fn k6_points_by_name_tag() {
        let text = r#"{"type":"Metric","data":{"name":"http_req_duration","type":"trend","contains":"time","thresholds":[],"submetrics":null},"metric":"http_req_duration"}
{"type":"Point","data":{"time":"2026-11-27T11:20:01.1+00:00","value":5.549,"tags":{"expected_response":"true","group":"","method":"GET","name":"http://127.0.0.1:34497/products","proto":"HTTP/1.1","scenario":"default","status":"200","url":"http://127.0.0.1:34497/products"}},"metric":"http_req_duration"}
{"type":"Point","data":{"time":"2026-11-27T11:20:01.1+00:00","value":0,"tags":{"method":"GET","name":"http://127.0.0.1:34497/products","status":"200"}},"metric":"http_req_failed"}
{"type":"Point","data":{"time":"2026-11-27T11:20:01.2+00:00","value":10001.2,"tags":{"method":"GET","name":"http://127.0.0.1:34497/version","status":"0"}},"metric":"http_req_duration"}
{"type":"Point","data":{"time":"2026-11-27T11:20:01.2+00:00","value":1,"tags":{"method":"GET","name":"http://127.0.0.1:34497/version","status":"0"}},"metric":"http_req_failed"}
{"type":"Point","data":{"time":"2026-11-27T11:20:01.2+00:00","value":1,"tags":{"group":""}},"metric":"iterations"}
"#;
        let m = parse(LoadFormat::K6, text.as_bytes()).unwrap();
        assert_eq!(m.latencies["GET /products"], [5.549]);
        assert_eq!(m.errors["GET /products"], [0.0]);
        assert_eq!(m.errors["GET /version"], [1.0]);
        assert!(parse(LoadFormat::K6, "not json\n".as_bytes()).is_err());
    }

    /// `vegeta encode --to csv` lines (vegeta 12.8+: method and url included).
    #[test]
    fn vegeta_csv_in_nanoseconds_with_quoted_errors() {
        let text = "1764242401000000000,200,4500000,0,52,,W10=,,0,GET,http://127.0.0.1:34497/products,\n\
                    1764242401050000000,0,10000000000,0,0,\"Get \"\"http://127.0.0.1:34497/version\"\": timeout, sorry\",,,1,GET,http://127.0.0.1:34497/version,\n\
                    1764242401100000000,503,2000000,0,0,,,,2,GET,http://127.0.0.1:34497/products?x=1,\n";
        let m = parse(LoadFormat::Vegeta, text.as_bytes()).unwrap();
        assert_eq!(m.latencies["GET /products"], [4.5, 2.0]);
        assert_eq!(m.errors["GET /products"], [0.0, 1.0]);
        assert_eq!(m.errors["GET /version"], [1.0]);
        assert_eq!(m.latencies["GET /version"], [10000.0]);
        assert!(parse(LoadFormat::Vegeta, "1,200,3\n".as_bytes()).is_err(), "too few fields");
    }
}
