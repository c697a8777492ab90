//! With a proxy configured, push services are reached through it by host
//! name (HTTP CONNECT), as firewalled networks need; no-proxy hosts directly.

mod harness;
mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use harness::spawn_app_with;
use serde_json::json;
use support::emulator::{EmuVendor, Emulator};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// A minimal CONNECT proxy that records each CONNECT target and tunnels it.
async fn connect_proxy() -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let (client, _) = listener.accept().await.unwrap();
            let log = log.clone();
            tokio::spawn(async move {
                let mut client = BufReader::new(client);
                let mut request_line = String::new();
                client.read_line(&mut request_line).await.unwrap();
                loop {
                    let mut header = String::new();
                    client.read_line(&mut header).await.unwrap();
                    if header == "\r\n" || header.is_empty() {
                        break;
                    }
                }
                let mut parts = request_line.split_whitespace();
                let (method, target) = (
                    parts.next().unwrap_or(""),
                    parts.next().unwrap_or("").to_string(),
                );
                log.lock().unwrap().push(format!("{method} {target}"));
                if method != "CONNECT" {
                    let _ = client
                        .get_mut()
                        .write_all(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
                        .await;
                    return;
                }
                // The proxy, not Herald, resolves the name.
                let mut upstream = TcpStream::connect(&target).await.unwrap();
                client
                    .get_mut()
                    .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
                    .await
                    .unwrap();
                let mut client = client.into_inner();
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
    });
    (port, seen)
}

#[tokio::test]
async fn pushes_go_through_the_proxy_by_host_name() {
    let emu = Emulator::start().await;
    let (proxy_port, seen) = connect_proxy().await;
    let app = spawn_app_with(emu.ca_file(), |s| {
        s.proxy = Some(format!("http://127.0.0.1:{proxy_port}"))
    })
    .await;
    let acme = app.create_app("acme").await;
    app.subscribe(
        &acme,
        "bo",
        emu.subscriber(EmuVendor::Fcm).subscription_json(),
    )
    .await;
    let id = app
        .send_ok(
            &acme,
            json!({"to": {"user": "bo"}, "title": "via proxy", "body": "b"}),
        )
        .await;
    assert_eq!(
        app.settled(&acme, &id, Duration::from_secs(15)).await["delivered"],
        1
    );
    assert_eq!(
        *seen.lock().unwrap(),
        vec![format!("CONNECT localhost:{}", emu.port())]
    );
}

#[tokio::test]
async fn no_proxy_hosts_are_reached_directly() {
    let emu = Emulator::start().await;
    let (proxy_port, seen) = connect_proxy().await;
    let app = spawn_app_with(emu.ca_file(), |s| {
        s.proxy = Some(format!("http://127.0.0.1:{proxy_port}"));
        s.no_proxy = Some("localhost".into());
    })
    .await;
    let acme = app.create_app("acme").await;
    app.subscribe(
        &acme,
        "bo",
        emu.subscriber(EmuVendor::Fcm).subscription_json(),
    )
    .await;
    let id = app
        .send_ok(
            &acme,
            json!({"to": {"user": "bo"}, "title": "direct", "body": "b"}),
        )
        .await;
    assert_eq!(
        app.settled(&acme, &id, Duration::from_secs(15)).await["delivered"],
        1
    );
    assert!(
        seen.lock().unwrap().is_empty(),
        "the proxy saw {:?}",
        seen.lock().unwrap()
    );
}
