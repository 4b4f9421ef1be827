//! Listeners: `server.max_connections` bounds the connections a worker
//! serves (and the buffers they hold): past it, a new client waits in the
//! listen backlog until a connection closes, and is then served.
//! `server.ops_bind` moves `/metrics` and `/config` to a listener of their
//! own.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use tempfile::TempDir;

use crate::helpers::{spawn_app_with, Child};

const GET: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n";

/// Sends a keep-alive request; whether a response started within `wait`.
fn answered(stream: &mut TcpStream, wait: Duration) -> bool {
    stream.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 12];
    match stream.read(&mut buf) {
        Ok(n) => n > 0 && buf.starts_with(b"HTTP/1.1 200"),
        Err(_) => false,
    }
}

#[tokio::test]
async fn a_worker_at_max_connections_serves_the_next_client_once_one_closes() {
    let data = TempDir::new().unwrap();
    let child = Child::start(
        data.path(),
        &[
            ("TROUPE__SERVER__WORKERS", "1"),
            ("TROUPE__SERVER__MAX_CONNECTIONS", "1"),
        ],
    )
    .await;
    let addr = child.address.trim_start_matches("http://").to_owned();
    // The readiness probe's connection may linger briefly.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let first = tokio::task::spawn_blocking(move || {
        let mut first = TcpStream::connect(&addr).unwrap();
        first.write_all(GET).unwrap();
        assert!(
            answered(&mut first, Duration::from_secs(5)),
            "the first client is served"
        );
        let mut second = TcpStream::connect(&addr).unwrap();
        second.write_all(GET).unwrap();
        let early = answered(&mut second, Duration::from_millis(500));
        drop(first);
        let later = answered(&mut second, Duration::from_secs(5));
        (early, later)
    });
    let (early, later) = first.await.unwrap();
    assert!(
        !early,
        "a second connection was served past max_connections = 1"
    );
    assert!(
        later,
        "the second client was not served once the first closed"
    );
}

#[actix_rt::test]
async fn an_operations_listener_takes_metrics_and_config_off_the_main_port() {
    let app = spawn_app_with(TempDir::new().unwrap(), |s| {
        s.server.ops_bind = "127.0.0.1:0".into();
    })
    .await;
    let ops = app.ops_address.clone().expect("an operations listener");
    let status = |base: String, path: &'static str| {
        let client = app.client.clone();
        async move {
            client
                .get(format!("{base}{path}"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let main = app.address.clone();
    // (path, status on the operations port, status on the main port)
    let expected = [
        ("/metrics", 200, 404),
        ("/config", 200, 404),
        ("/%6detrics", 200, 404),
        ("/%63onfig", 200, 404),
        ("/healthz", 200, 200),
        ("/readyz", 200, 200),
        ("/v1/accounts/a", 404, 404),
        ("/openapi.json", 404, 200),
        ("/docs/", 404, 200),
        ("/v1/actors", 404, 200),
    ];
    for (path, on_ops, on_main) in expected {
        assert_eq!(
            status(ops.clone(), path).await,
            on_ops,
            "{path} on the operations port"
        );
        assert_eq!(
            status(main.clone(), path).await,
            on_main,
            "{path} on the main port"
        );
    }
}

/// The operations listener on the main port's number, another loopback
/// address: the split goes by the whole address, not the port.
#[actix_rt::test]
async fn an_operations_listener_on_the_same_port_of_another_address_is_still_apart() {
    let port = crate::helpers::free_port();
    let app = spawn_app_with(TempDir::new().unwrap(), move |s| {
        s.server.port = port;
        s.server.ops_bind = format!("127.0.0.2:{port}");
    })
    .await;
    let status =
        |host: &str, path: &str| app.client.get(format!("http://{host}:{port}{path}")).send();
    let on_main = status("127.0.0.1", "/metrics").await.unwrap().status();
    let on_ops = status("127.0.0.2", "/metrics").await.unwrap().status();
    assert_eq!(on_main.as_u16(), 404, "/metrics on the main address");
    assert_eq!(on_ops.as_u16(), 200, "/metrics on the operations address");
    let ledger = status("127.0.0.2", "/v1/actors").await.unwrap().status();
    assert_eq!(ledger.as_u16(), 404, "the API on the operations address");
}
