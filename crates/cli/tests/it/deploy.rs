//! What can be checked of `deploy/` and the `Dockerfile` without a cluster or a container
//! engine: the Kubernetes manifests agree with each other and with the code
//! (`deploy/check.py`, PyYAML), their configuration passes `causeway config check`, and
//! the binary runs with nothing but the libraries `ldd` lists, in an empty chroot, as in
//! the distroless image the Dockerfile builds: it answers `--version`, and `serve` on
//! PostgreSQL gets ready.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use causeway_testkit::process::{Child, python};

use crate::support::{WAIT, http_get};

const BIN: &str = env!("CARGO_BIN_EXE_causeway");

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// What the distroless `cc` image provides besides the binary.
const IMAGE_LIBRARIES: &[&str] = &[
    "linux-vdso.so.1",
    "ld-linux-x86-64.so.2",
    "libc.so.6",
    "libm.so.6",
    "libgcc_s.so.1",
    "libpthread.so.0",
    "libdl.so.2",
    "librt.so.1",
];

#[test]
fn kubernetes_manifests_check_out() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("causeway.toml");
    let out = Command::new(python())
        .arg(root().join("deploy/check.py"))
        .arg("--write-config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "deploy/check.py:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The ConfigMap's configuration, with the Secret's variables set as the pod sets them.
    let out = Command::new(BIN)
        .args(["config", "check", config.to_str().unwrap()])
        .env(
            "DATABASE_URL",
            "postgres://causeway:pw@postgres:5432/causeway",
        )
        .env("CAUSEWAY_ADMIN_TOKEN", "0123456789abcdef0123")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    // Without the Secret the node refuses to start, naming the variable.
    let out = Command::new(BIN)
        .args(["config", "check", config.to_str().unwrap()])
        .env_remove("DATABASE_URL")
        .env("CAUSEWAY_ADMIN_TOKEN", "0123456789abcdef0123")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("DATABASE_URL"));
}

/// The libraries `ldd` lists for the binary: (name, path), the vDSO without a path.
fn libraries(bin: &str) -> Vec<(String, Option<PathBuf>)> {
    let out = Command::new("ldd").arg(bin).output().expect("ldd");
    assert!(out.status.success(), "ldd {bin}: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let name = l.split_whitespace().next()?;
            let path = match l.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next().map(PathBuf::from),
                None if name.starts_with('/') => Some(PathBuf::from(name)),
                None => None,
            };
            let base = Path::new(name).file_name()?.to_string_lossy().into_owned();
            Some((base, path))
        })
        .collect()
}

#[test]
fn image_binary_runs_with_only_its_libraries() {
    let libs = libraries(BIN);
    for (name, _) in &libs {
        assert!(
            IMAGE_LIBRARIES.contains(&name.as_str()),
            "the binary needs {name}, which the distroless cc image does not have"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let jail = dir.path();
    for (_, path) in &libs {
        let Some(path) = path else { continue };
        let to = jail.join(path.strip_prefix("/").unwrap());
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(path, &to).unwrap();
    }
    std::fs::copy(BIN, jail.join("causeway")).unwrap();
    let entries: Vec<_> = walk(jail);
    assert!(entries.len() <= libs.len() + 1, "{entries:?}");

    let out = Command::new("chroot")
        .arg(jail)
        .args(["/causeway", "--version"])
        .output()
        .expect("chroot (the tests run as root)");
    assert!(
        out.status.success(),
        "causeway --version in an empty chroot: {out:?}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("causeway "));

    // serve on PostgreSQL: the database by IP address (no resolv.conf, no /etc at all).
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let schema = format!("cw_chroot_{}", std::process::id());
    std::fs::write(
        jail.join("causeway.toml"),
        format!(
            "[store]\npostgres = \"${{DATABASE_URL}}\"\nschema = \"{schema}\"\nnode_id = \"jail\"\n\n\
             [admin]\nbind = \"127.0.0.1:0\"\n\n[[channel]]\nname = \"main\"\n\n\
             [channel.source]\nbind = \"127.0.0.1:0\"\n\n[[channel.destination]]\n\
             name = \"out\"\ntype = \"file\"\ndirectory = \"/out\"\nfilename = \"{{id}}.hl7\"\n"
        ),
    )
    .unwrap();
    // An empty environment too, as in the image (`env -i` needs chroot's full path).
    let chroot = std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|d| Path::new(d).join("chroot"))
        .find(|p| p.exists())
        .expect("chroot on PATH");
    let mut serve = Child::spawn(
        "env",
        &[
            "-i",
            &format!("DATABASE_URL={url}"),
            chroot.to_str().unwrap(),
            jail.to_str().unwrap(),
            "/causeway",
            "serve",
            "--config",
            "/causeway.toml",
        ],
    );
    let line = serve.wait_for_line(true, WAIT, |l| l.starts_with("causeway: admin API on"));
    let admin = line
        .split("http://")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .unwrap()
        .to_owned();
    let admin: std::net::SocketAddr = admin.parse().unwrap();
    let ready = causeway_testkit::e2e::wait_until(WAIT, || {
        (http_get(admin, "/readyz").ok()?.0 == 200).then_some(())
    });
    let status = serve.terminate(Duration::from_secs(40));
    let _ = Command::new("psql")
        .args([
            &url,
            "-q",
            "-c",
            &format!("DROP SCHEMA IF EXISTS {schema} CASCADE"),
        ])
        .output();
    assert!(
        ready.is_some(),
        "/readyz of serve in the chroot:\n{}",
        serve.stderr_lines().join("\n")
    );
    assert!(status.success(), "{status}");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
