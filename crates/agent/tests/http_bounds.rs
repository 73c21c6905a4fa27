//! The agent's HTTP server holds no connection a client leaves open: a connection that sends
//! no request is closed once the header timeout passes, connections over the cap are closed at
//! once, and the endpoint answers again as soon as the idle ones are gone. (Found by trying it:
//! 5,000 half-open connections were all still held after 25 s.)

mod common;

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{ChannelPublisher, http, test_config};
use devheal_agent::run::start;
use devheal_agent::serve::ServeLimits;
use tokio::sync::mpsc;

/// Whether the server closed `stream` (a read ends) within `within`.
fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    stream.set_read_timeout(Some(within)).expect("timeout");
    let mut buf = [0u8; 64];
    match stream.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => true,
        Err(e) => !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_surplus_connections_are_closed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(dir.path(), "node-h");
    config.http_limits = ServeLimits {
        max_connections: 8,
        header_timeout: Duration::from_millis(500),
        connection_timeout: Duration::from_secs(3),
    };
    let (statuses, _rx) = mpsc::unbounded_channel();
    let (events, _erx) = mpsc::unbounded_channel();
    let agent = start(config, ChannelPublisher { statuses, events }).await.expect("agent starts");
    let addr: SocketAddr = agent.metrics_addr.expect("served");

    let checks = tokio::task::spawn_blocking(move || {
        // Eight connections that never send a request fill the server.
        let mut idle: Vec<TcpStream> = (0..8).map(|_| TcpStream::connect(addr).expect("connect")).collect();
        std::thread::sleep(Duration::from_millis(100));
        // A ninth is over the cap: closed at once.
        let mut surplus = TcpStream::connect(addr).expect("connect");
        let surplus_closed = closed_within(&mut surplus, Duration::from_millis(300));
        // The idle ones are closed once the header timeout (0.5 s) has passed.
        let started = Instant::now();
        let idle_closed = idle.iter_mut().all(|s| closed_within(s, Duration::from_secs(3)));
        let took = started.elapsed();
        // Room again: the endpoint answers.
        let (code, _) = http(addr, "GET", "/healthz");
        (surplus_closed, idle_closed, took, code)
    })
    .await
    .expect("join");
    let (surplus_closed, idle_closed, took, code) = checks;
    assert!(surplus_closed, "a connection over the cap must be closed at once");
    assert!(idle_closed, "idle connections must be closed after the header timeout");
    assert!(took < Duration::from_secs(2), "closed after {took:?}");
    assert!(code == 200 || code == 503, "the endpoint answers again: {code}");
    agent.stop().await;
}
