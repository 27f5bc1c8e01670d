//! The proxy between a client and an echo server on loopback, on tokio's paused clock:
//! the delays it adds are read from the clock, not waited for.

use super::*;

/// An echo server on a free port of 127.0.0.1: what it reads it writes back, and it
/// ends its side when the client ends its own.
async fn echo() -> SocketAddr {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            s.set_nodelay(true).unwrap();
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                tokio::io::copy(&mut r, &mut w).await.ok();
                w.shutdown().await.ok();
            });
        }
    });
    addr
}

/// A proxy in front of an echo server, and a connection through it.
async fn connected() -> (FaultProxy, TcpStream) {
    let proxy = FaultProxy::start(echo().await, 7).await.unwrap();
    let s = TcpStream::connect(proxy.addr()).await.unwrap();
    // Each piece leaves as written (a delayed acknowledgement would add 40 ms of real
    // time to each exchange).
    s.set_nodelay(true).unwrap();
    (proxy, s)
}

/// Sends `msg` and reads its echo.
async fn ping(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    s.write_all(msg).await?;
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back).await?;
    Ok(back)
}

/// Writes `sent` in pieces of `piece` bytes, ends its side, and reads everything that
/// comes back until the other end ends too, at the same time.
async fn send_and_read_back(s: &mut TcpStream, sent: &[u8], piece: usize) -> Vec<u8> {
    let (mut r, mut w) = s.split();
    let writing = async {
        for part in sent.chunks(piece) {
            w.write_all(part).await.unwrap();
        }
        w.shutdown().await.unwrap();
    };
    let mut got = Vec::new();
    let ((), read) = tokio::join!(writing, r.read_to_end(&mut got));
    read.unwrap();
    got
}

#[tokio::test(start_paused = true)]
async fn without_a_fault_it_copies_both_ways_and_passes_the_end_on() {
    let (_proxy, mut s) = connected().await;
    // A megabyte each way, in pieces of every size, back in order.
    let sent: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let begun = Instant::now();
    let got = send_and_read_back(&mut s, &sent, 7_919).await;
    // The server's end came back through the proxy as the end of the stream.
    assert_eq!(got.len(), sent.len());
    assert!(got == sent, "the bytes came back changed");
    assert!(begun.elapsed() < Duration::from_millis(1), "no time added: {:?}", begun.elapsed());
}

#[tokio::test(start_paused = true)]
async fn faults_set_and_cleared_during_a_transfer_keep_every_byte_in_order() {
    // With no fault the bytes go through a pipe in the kernel, under one through this
    // process: every switch between the two, each way, drains the one before. A fault
    // is set before each piece written, in turn; the echo is read every second piece,
    // so half the switches find bytes on their way.
    let (proxy, mut s) = connected().await;
    let sent: Vec<u8> = (0..2_000_000u32).map(|i| (i % 241) as u8).collect();
    let mut got = Vec::new();
    let (mut unread, mut piece) = (0, vec![0u8; 0]);
    for (i, part) in sent.chunks(20_011).enumerate() {
        proxy.set(match i % 5 {
            0 => Fault::Latency { delay: Duration::from_millis(2), jitter: Duration::from_millis(1) },
            2 => Fault::Bandwidth { bytes_per_sec: 50_000_000 },
            4 => Fault::Latency { delay: Duration::ZERO, jitter: Duration::ZERO },
            _ => Fault::None,
        });
        s.write_all(part).await.unwrap();
        unread += part.len();
        if i % 2 == 1 {
            piece.resize(unread, 0);
            s.read_exact(&mut piece).await.unwrap();
            got.extend_from_slice(&piece);
            unread = 0;
        }
    }
    proxy.set(Fault::None);
    s.shutdown().await.unwrap();
    s.read_to_end(&mut got).await.unwrap();
    assert_eq!(got.len(), sent.len());
    assert!(got == sent, "the bytes came back changed or out of order");
}

#[tokio::test(start_paused = true)]
async fn latency_delays_each_way_with_its_jitter_and_keeps_the_order() {
    let (proxy, mut s) = connected().await;
    assert_eq!(ping(&mut s, b"before").await.unwrap(), b"before");
    let (delay, jitter) = (Duration::from_millis(100), Duration::from_millis(20));
    proxy.set(Fault::Latency { delay, jitter });
    // The fault reaches an open connection at its next chunk: one exchange to see it.
    let mut times = Vec::new();
    for i in 0..20u8 {
        let begun = Instant::now();
        assert_eq!(ping(&mut s, &[i; 10]).await.unwrap(), vec![i; 10]);
        times.push(begun.elapsed());
    }
    for t in &times {
        // Once each way: 200 ms, and at most 40 ms of jitter on top.
        assert!(*t >= 2 * delay && *t <= 2 * (delay + jitter) + Duration::from_millis(1), "{t:?}");
    }
    assert!(times.iter().any(|t| *t > 2 * delay + Duration::from_millis(5)), "no jitter drawn: {times:?}");
    // Many chunks in flight come back in the order sent.
    let sent: Vec<u8> = (0..200u8).collect();
    for b in &sent {
        s.write_all(&[*b]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let mut back = vec![0u8; sent.len()];
    s.read_exact(&mut back).await.unwrap();
    assert_eq!(back, sent);
    // Ended: no time added.
    proxy.set(Fault::None);
    let begun = Instant::now();
    ping(&mut s, b"after").await.unwrap();
    ping(&mut s, b"after").await.unwrap();
    assert!(begun.elapsed() < Duration::from_millis(1), "{:?}", begun.elapsed());
}

#[tokio::test(start_paused = true)]
async fn a_reset_resets_open_connections_and_new_ones_until_it_ends() {
    let (proxy, mut open) = connected().await;
    assert_eq!(ping(&mut open, b"hello").await.unwrap(), b"hello");
    proxy.set(Fault::Reset);
    let mut buf = [0u8; 8];
    let err = open.read(&mut buf).await.expect_err("the open connection is reset");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
    // A new connection is accepted, then reset.
    let mut new = TcpStream::connect(proxy.addr()).await.unwrap();
    let r = new.read(&mut buf).await;
    assert!(r.as_ref().is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset), "{r:?}");
    proxy.set(Fault::None);
    let mut again = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(ping(&mut again, b"again").await.unwrap(), b"again");
}

#[tokio::test(start_paused = true)]
async fn a_blackhole_holds_the_traffic_and_it_resumes_where_it_stopped() {
    let (proxy, mut open) = connected().await;
    assert_eq!(ping(&mut open, b"one").await.unwrap(), b"one");
    proxy.set(Fault::Blackhole);
    open.write_all(b"two").await.unwrap();
    let mut held = TcpStream::connect(proxy.addr()).await.unwrap();
    held.write_all(b"three").await.unwrap();
    // Nothing comes back for a minute.
    let mut buf = [0u8; 5];
    let begun = Instant::now();
    assert!(tokio::time::timeout(Duration::from_secs(60), open.read(&mut buf)).await.is_err());
    assert!(tokio::time::timeout(Duration::from_secs(1), held.read(&mut buf)).await.is_err());
    assert!(begun.elapsed() >= Duration::from_secs(61));
    // Lifted: what waited arrives, on the open connection and the one held unanswered.
    proxy.set(Fault::None);
    let mut two = [0u8; 3];
    open.read_exact(&mut two).await.unwrap();
    assert_eq!(&two, b"two");
    held.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"three");
}

#[tokio::test(start_paused = true)]
async fn a_bandwidth_limit_paces_each_way() {
    let (proxy, mut s) = connected().await;
    proxy.set(Fault::Bandwidth { bytes_per_sec: 50_000 });
    let begun = Instant::now();
    let sent = vec![5u8; 100_000];
    assert_eq!(send_and_read_back(&mut s, &sent, sent.len()).await, sent);
    // 100 kB at 50 kB/s each way, the two ways overlapping: about 2 s, not 4.
    let took = begun.elapsed();
    assert!(took >= Duration::from_millis(1_900) && took <= Duration::from_millis(2_500), "{took:?}");
}

#[tokio::test(start_paused = true)]
async fn an_upstream_that_refuses_resets_the_client_and_a_stopped_proxy_refuses() {
    // A port nothing listens on (bound, then closed).
    let gone = TcpListener::bind(("127.0.0.1", 0)).await.unwrap().local_addr().unwrap();
    let proxy = FaultProxy::start(gone, 1).await.unwrap();
    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    let mut buf = [0u8; 1];
    let r = s.read(&mut buf).await;
    assert!(r.as_ref().is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset), "{r:?}");
    let addr = proxy.addr();
    proxy.stop();
    // The abort lands when the runtime next runs the task.
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert!(TcpStream::connect(addr).await.is_err(), "a stopped proxy still listens");
}

/// A server on a free port of 127.0.0.1 that answers each connection with `name` and
/// closes it.
async fn named(name: &'static [u8]) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            s.write_all(name).await.ok();
            s.shutdown().await.ok();
        }
    });
    (addr, task)
}

/// Who answered a new connection through `proxy`: empty when the proxy refused it.
async fn answered(proxy: &FaultProxy) -> Vec<u8> {
    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).await.ok();
    got
}

#[tokio::test]
async fn balanced_connections_go_in_turn_and_around_an_instance_that_is_down() {
    let (a, _a) = named(b"a").await;
    let (b, b_task) = named(b"b").await;
    let proxy = FaultProxy::start_balanced(vec![a, b], 3).await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(answered(&proxy).await);
    }
    assert_eq!(seen, [b"a".to_vec(), b"b".to_vec(), b"a".to_vec(), b"b".to_vec()], "in turn");
    // `b` down (its port refuses): every connection reaches `a`.
    b_task.abort();
    assert!(b_task.await.unwrap_err().is_cancelled());
    tokio::time::sleep(Duration::from_millis(20)).await;
    for _ in 0..4 {
        assert_eq!(answered(&proxy).await, b"a", "around the instance that is down");
    }
    // Another instance in its place: in turn again.
    let (c, _c) = named(b"c").await;
    proxy.set_upstreams(vec![a, c]);
    assert_eq!(proxy.upstreams(), [a, c]);
    let mut seen: Vec<Vec<u8>> = Vec::new();
    for _ in 0..4 {
        seen.push(answered(&proxy).await);
    }
    assert_eq!(seen.iter().filter(|s| s.as_slice() == b"c").count(), 2, "{seen:?}");
    // None up: the connection is refused (reset), not held.
    proxy.set_upstreams(vec![b]);
    assert!(answered(&proxy).await.is_empty());
}
