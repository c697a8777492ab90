//! A new user's first start, and the command line's admin tasks, run as the
//! real binary in an empty directory.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

fn herald(dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_herald"));
    c.current_dir(dir)
        .env(
            "HERALD_STATIC_DIR",
            concat!(env!("CARGO_MANIFEST_DIR"), "/static"),
        )
        .env("HERALD_LOG", "warn");
    for (k, _) in std::env::vars()
        .filter(|(k, _)| k.starts_with("HERALD_") && k != "HERALD_STATIC_DIR" && k != "HERALD_LOG")
    {
        c.env_remove(k);
    }
    c
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `serve`, returns the first stdout line (if any) once healthy, then stops it.
fn serve_once(dir: &Path) -> Option<String> {
    let port = free_port();
    let mut child = herald(dir)
        .arg("serve")
        .env("HERALD_BIND", format!("127.0.0.1:{port}"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut healthy = false;
    for _ in 0..200 {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            use std::io::{Read, Write};
            s.write_all(b"GET /healthz HTTP/1.0\r\n\r\n").unwrap();
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            healthy = out.starts_with("HTTP/1.0 200") || out.starts_with("HTTP/1.1 200");
            if healthy {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // SIGTERM, as a service manager would send.
    Command::new("kill")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert!(healthy, "herald answered /healthz");
    assert!(
        status.success() || status.code().is_none(),
        "clean shutdown on SIGTERM: {status:?}"
    );
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    (!first.is_empty()).then_some(first)
}

#[test]
fn the_first_start_creates_database_keys_and_shows_the_admin_token_once() {
    let dir = tempfile::tempdir().unwrap();
    let first = serve_once(dir.path()).expect("the admin token is printed on first start");
    let token = first.trim().rsplit(' ').next().unwrap().to_string();
    assert!(token.starts_with("ha_"), "{first}");
    assert!(
        dir.path().join("data/herald.db").exists(),
        "SQLite database under ./data"
    );
    assert!(
        dir.path().join("keys/master.key").exists(),
        "master key under ./keys"
    );
    let stored = std::fs::read_to_string(dir.path().join("keys/admin-token")).unwrap();
    assert_eq!(stored.trim(), token);
    use std::os::unix::fs::PermissionsExt;
    for f in ["keys/admin-token", "keys/master.key"] {
        assert_eq!(
            std::fs::metadata(dir.path().join(f))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600,
            "{f}"
        );
    }
    assert_eq!(serve_once(dir.path()), None, "the token is shown only once");
}

fn run(dir: &Path, args: &[&str]) -> String {
    let out = herald(dir).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "herald {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_command_line_creates_and_lists_apps_and_shows_and_clears_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let created = run(
        dir.path(),
        &[
            "app",
            "create",
            "--name",
            "expenses",
            "--contact",
            "mailto:ops@example.com",
        ],
    );
    let field = |name: &str| {
        created
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap()
            .split_whitespace()
            .nth(if name == "api key:" { 2 } else { 1 })
            .unwrap()
            .to_string()
    };
    let id = field("id:");
    assert!(field("api key:").starts_with("hk_"), "{created}");
    let listed = run(dir.path(), &["app", "list"]);
    assert!(
        listed.contains(&id)
            && listed.contains("expenses")
            && listed.contains("vapid public key: B"),
        "{listed}"
    );
    assert!(!listed.contains("hk_"), "the API key is not listed");
    let shown = run(dir.path(), &["queue", "show"]);
    assert!(shown.starts_with(&format!("{:>8}", "id")), "{shown}");
    assert!(run(dir.path(), &["queue", "clear", "--app", &id]).contains("removed 0"));
    let bad = herald(dir.path())
        .args([
            "app",
            "create",
            "--name",
            "x",
            "--contact",
            "ops@example.com",
        ])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("contact"),
        "the error names the field"
    );
}
