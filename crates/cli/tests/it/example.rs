//! The example configuration in the repository runs: `serve` starts with it, takes a
//! message, stores it and delivers it to the file destination.

use std::process::Command;
use std::time::{Duration, Instant};

use causeway_testkit::corpus;
use causeway_testkit::process::Child;

/// A port that was free a moment ago (the OS does not hand it out again at once).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn example_config_runs() {
    let dir = tempfile::tempdir().unwrap();
    let example =
        std::fs::read_to_string(corpus::workspace_root().join("causeway.example.toml")).unwrap();
    let (mllp, admin) = (free_port(), free_port());
    let config = example
        .replace("127.0.0.1:2575", &format!("127.0.0.1:{mllp}"))
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{admin}"));
    let path = dir.path().join("causeway.toml");
    std::fs::write(&path, config).unwrap();

    let check = Command::new(env!("CARGO_BIN_EXE_causeway"))
        .args(["config", "check", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );

    let mut serve = Child::spawn_in(
        env!("CARGO_BIN_EXE_causeway"),
        &["serve", "--config", path.to_str().unwrap()],
        dir.path(),
    );
    serve.wait_for_line(true, Duration::from_secs(20), |l| {
        l.contains("causeway: ready")
    });
    let msg = corpus::dir().join("hapi__ADT_A01__1.hl7");
    let send = Command::new(env!("CARGO_BIN_EXE_causeway"))
        .args([
            "send",
            "--to",
            &format!("127.0.0.1:{mllp}"),
            msg.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        send.status.success(),
        "{}",
        String::from_utf8_lossy(&send.stdout)
    );

    let archive = dir.path().join("causeway-data/archive");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let files: Vec<_> = std::fs::read_dir(&archive)
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                    .collect()
            })
            .unwrap_or_default();
        if let Some(file) = files.first() {
            let written = std::fs::read(file.path()).unwrap();
            assert!(
                written.starts_with(b"MSH|^~\\&|system1|W|system2|UHN|"),
                "archived bytes differ"
            );
            break;
        }
        assert!(Instant::now() < deadline, "nothing was archived");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(serve.terminate(Duration::from_secs(30)).success());
}
