//! Network namespaces for tests: separate sites joined by veth links, or a loopback of a
//! test's own (so a process can take its default ports, 2575 and 8080, without meeting
//! anything else on the machine). Needs root and `ip` (iproute2); `scripts/test` installs it.

use std::process::{Command, Output};

use crate::process::Child;

/// Runs `ip ARGS`, panicking with its output when it fails.
///
/// # Panics
/// When `ip` cannot be run or fails.
pub fn ip(args: &[&str]) -> Output {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("run ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A network namespace with its loopback up, deleted (with its veth links) on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

/// Namespace names: `cwn-<pid of the test process>-<tag>`.
const PREFIX: &str = "cwn-";

impl Netns {
    /// A new namespace named after this process and `tag` (keep it short: a few letters).
    /// First deletes namespaces left by test processes that were killed before their drops
    /// ran.
    ///
    /// # Panics
    /// When `ip netns add` fails (not root, no iproute2).
    pub fn new(tag: &str) -> Netns {
        sweep_stale();
        let name = format!("{PREFIX}{}-{tag}", std::process::id());
        ip(&["netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// Its name, for `ip -n NAME ...` and `ip link ... netns NAME`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n NAME ARGS`, panicking when it fails.
    pub fn ip(&self, args: &[&str]) -> Output {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// Starts `program args` inside, as a child process killed on drop.
    pub fn spawn(&self, program: &str, args: &[&str]) -> Child {
        let mut all = vec!["netns", "exec", self.name.as_str(), program];
        all.extend_from_slice(args);
        Child::spawn("ip", &all)
    }

    /// Runs `program args` inside and returns its output, whatever its status.
    ///
    /// # Panics
    /// When `ip` cannot be run at all.
    pub fn output(&self, program: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args)
            .output()
            .expect("run ip netns exec")
    }

    /// Runs `program args` inside, panicking when it fails.
    pub fn run(&self, program: &str, args: &[&str]) -> Output {
        let out = self.output(program, args);
        assert!(
            out.status.success(),
            "in {}: {program} {}: {}",
            self.name,
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Deletes the namespaces of test processes that no longer run.
fn sweep_stale() {
    let Ok(list) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&list.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if !std::path::Path::new("/proc").join(pid).exists() {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}
