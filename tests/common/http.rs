//! HTTP for the tests of `rehearse serve`: one request a connection (HTTP/1.1,
//! `Connection: close`), read to its end; and the server itself, started on a free port.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Stdio};

use serde_json::Value;

use super::Sandbox;

/// A running server; stopped (SIGINT, then waited for) when dropped.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), nix::sys::signal::SIGINT);
        let _ = self.child.wait();
    }
}

/// Starts `rehearse serve` with `config` (YAML, `{envs}` replaced by the environments
/// directory) and waits for the address it says it listens on.
pub fn start_server(sb: &Sandbox, envs: &Path, config: &str) -> Server {
    let file = sb.dir.path().join("serve.yaml");
    start_server_as(sb.cmd(), &file, envs, config)
}

/// The same with `cmd` (its environment: a replica's state directory, an emulator's
/// endpoint), the configuration written to `file`.
pub fn start_server_as(mut cmd: std::process::Command, file: &Path, envs: &Path, config: &str) -> Server {
    std::fs::write(file, config.replace("{envs}", &envs.display().to_string())).unwrap();
    let mut child = cmd
        .args(["serve", "--config"])
        .arg(file)
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("rehearse serve: listening on http://")
        .unwrap_or_else(|| panic!("the server said {line:?}"))
        .parse()
        .unwrap();
    // The rest of what it says goes to the test's output.
    std::thread::spawn(move || {
        for l in err.lines().map_while(Result::ok) {
            eprintln!("serve: {l}");
        }
    });
    Server { child, addr }
}

pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request over `stream`, read to its end.
pub fn exchange(mut stream: TcpStream, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Answer {
    let host = stream.peer_addr().map(|a| a.to_string()).unwrap_or_else(|_| "localhost".into());
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    if !body.is_empty() {
        req.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    req.push_str(body);
    stream.write_all(req.as_bytes()).unwrap();
    // The head, then the body by its Content-Length (a server may keep the connection
    // open whatever the request said), else to the end.
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let status = line.split(' ').nth(1).unwrap_or_else(|| panic!("no status line: {line:?}")).parse().unwrap();
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        // `Name: value`; chromedriver writes no space after the colon.
        if let Some((n, v)) = l.split_once(':') {
            headers.push((n.trim().to_string(), v.trim().to_string()));
        }
    }
    let length = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.parse::<usize>().unwrap());
    let mut raw = Vec::new();
    match length {
        Some(n) => {
            raw.resize(n, 0);
            reader.read_exact(&mut raw).unwrap();
        }
        None => {
            reader.read_to_end(&mut raw).unwrap();
        }
    }
    let body = String::from_utf8_lossy(&raw).into_owned();
    Answer { status, headers, body }
}

pub fn http(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Answer {
    exchange(TcpStream::connect(addr).unwrap(), method, path, headers, body)
}
