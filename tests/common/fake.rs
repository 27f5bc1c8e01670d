//! A service on loopback that the server calls (a webhook's receiver, GitHub's API):
//! each request read whole, kept, and answered by the test's closure; one request per
//! connection (`Connection: close`).

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};

/// One request received, and the status it was answered.
#[derive(Clone, Debug)]
pub struct Got {
    pub method: String,
    pub path: String,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub status: u16,
}

impl Got {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// An answer: status, extra headers, JSON body.
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn json(status: u16, body: serde_json::Value) -> Reply {
        Reply { status, headers: Vec::new(), body: body.to_string() }
    }
}

type Answerer = Box<dyn FnMut(&Got) -> Reply + Send>;

pub struct Fake {
    pub addr: SocketAddr,
    got: Arc<Mutex<Vec<Got>>>,
}

impl Fake {
    /// Listens on a free port of 127.0.0.1; `answer` decides each reply.
    pub fn start(answer: impl FnMut(&Got) -> Reply + Send + 'static) -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let got: Arc<Mutex<Vec<Got>>> = Arc::default();
        let answer: Arc<Mutex<Answerer>> = Arc::new(Mutex::new(Box::new(answer)));
        let kept = got.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let (kept, answer) = (kept.clone(), answer.clone());
                std::thread::spawn(move || {
                    let Some((raw, head)) = crate::emulator::read_request(&mut stream) else { return };
                    let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                    let original = String::from_utf8_lossy(&raw[..head_end]).into_owned();
                    let first = original.lines().next().unwrap_or_default().to_string();
                    let mut parts = first.split_whitespace();
                    let (method, path) =
                        (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("").to_string());
                    let headers = head
                        .lines()
                        .skip(1)
                        .filter_map(|l| l.split_once(':'))
                        .map(|(k, _)| k.trim().to_string())
                        .zip(
                            original
                                .lines()
                                .skip(1)
                                .filter_map(|l| l.split_once(':'))
                                .map(|(_, v)| v.trim().to_string()),
                        )
                        .collect();
                    let mut g = Got { method, path, headers, body: raw[head_end..].to_vec(), status: 0 };
                    let reply = (answer.lock().unwrap())(&g);
                    g.status = reply.status;
                    kept.lock().unwrap().push(g);
                    let mut out = format!(
                        "HTTP/1.1 {} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
                        reply.status,
                        reply.body.len()
                    );
                    for (k, v) in &reply.headers {
                        out.push_str(&format!("{k}: {v}\r\n"));
                    }
                    out.push_str("\r\n");
                    out.push_str(&reply.body);
                    let _ = stream.write_all(out.as_bytes());
                });
            }
        });
        Fake { addr, got }
    }

    /// What was received so far.
    pub fn got(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}
