//! Child processes for end-to-end tests: the `causeway` binary and the Python peers.
//!
//! A [`Child`] is killed when dropped, so a failing test leaves no process behind (and shows
//! the tail of what the process printed). Its
//! stdout and stderr lines are collected by background threads and can be waited for with
//! a deadline ([`Child::wait_for_line`]), never with an unbounded read.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// The Python with python-hl7: `$CAUSEWAY_PYTHON`, else `<workspace>/.venv/bin/python`.
///
/// # Panics
/// When neither exists: run `./scripts/test`, which creates the venv.
pub fn python() -> PathBuf {
    let path = std::env::var_os("CAUSEWAY_PYTHON").map_or_else(
        || crate::corpus::workspace_root().join(".venv/bin/python"),
        PathBuf::from,
    );
    assert!(
        path.exists(),
        "no Python with python-hl7 at {}: run ./scripts/test (it creates .venv) or set CAUSEWAY_PYTHON",
        path.display()
    );
    path
}

/// A script of `crates/testkit/python/`.
pub fn python_peer(script: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("python")
        .join(script)
}

/// Lines seen so far on both streams, and whether the process has closed them.
#[derive(Debug, Default)]
struct Output {
    stdout: Vec<String>,
    stderr: Vec<String>,
    closed: usize,
}

/// A running child process, killed on drop.
#[derive(Debug)]
pub struct Child {
    child: std::process::Child,
    output: Arc<(Mutex<Output>, Condvar)>,
    name: String,
}

impl Child {
    /// Starts `program` with `args`, stdin closed.
    ///
    /// # Panics
    /// When the program cannot be started.
    pub fn spawn(program: impl Into<PathBuf>, args: &[&str]) -> Child {
        Child::spawn_in(program, args, std::path::Path::new("."))
    }

    /// Like [`Child::spawn`], with `dir` as the working directory.
    ///
    /// # Panics
    /// When the program cannot be started.
    pub fn spawn_in(program: impl Into<PathBuf>, args: &[&str], dir: &std::path::Path) -> Child {
        Child::spawn_with(program.into(), args, dir, &[])
    }

    /// Like [`Child::spawn`], with these environment variables set as well.
    ///
    /// # Panics
    /// When the program cannot be started.
    pub fn spawn_env(program: impl Into<PathBuf>, args: &[&str], env: &[(&str, &str)]) -> Child {
        Child::spawn_with(program.into(), args, std::path::Path::new("."), env)
    }

    fn spawn_with(
        program: PathBuf,
        args: &[&str],
        dir: &std::path::Path,
        env: &[(&str, &str)],
    ) -> Child {
        let name = program
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut child = Command::new(&program)
            .args(args)
            .envs(env.iter().copied())
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        let output = Arc::new((Mutex::new(Output::default()), Condvar::new()));
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        for (stream, is_err) in [
            (Box::new(stdout) as Box<dyn std::io::Read + Send>, false),
            (Box::new(stderr), true),
        ] {
            let output = output.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    let (lock, cvar) = &*output;
                    let mut out = lock.lock().expect("output lock");
                    if is_err {
                        out.stderr.push(line)
                    } else {
                        out.stdout.push(line)
                    }
                    cvar.notify_all();
                }
                let (lock, cvar) = &*output;
                lock.lock().expect("output lock").closed += 1;
                cvar.notify_all();
            });
        }
        Child {
            child,
            output,
            name,
        }
    }

    /// Waits until a line of stdout (or stderr, with `stderr`) satisfies `pred`, and returns
    /// it.
    ///
    /// # Panics
    /// After `timeout`, or when the process closed its output first, with everything it
    /// printed: the test failure then shows what the child said.
    pub fn wait_for_line(
        &self,
        stderr: bool,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + timeout;
        let (lock, cvar) = &*self.output;
        let mut out = lock.lock().expect("output lock");
        loop {
            let lines = if stderr { &out.stderr } else { &out.stdout };
            if let Some(line) = lines.iter().find(|l| pred(l)) {
                return line.clone();
            }
            let now = Instant::now();
            if now >= deadline || out.closed == 2 {
                panic!(
                    "{}: expected line not seen ({}).\nstdout:\n{}\nstderr:\n{}",
                    self.name,
                    if out.closed == 2 {
                        "process closed its output"
                    } else {
                        "timed out"
                    },
                    out.stdout.join("\n"),
                    out.stderr.join("\n")
                );
            }
            out = cvar
                .wait_timeout(out, deadline - now)
                .expect("output lock")
                .0;
        }
    }

    /// Lines of stdout so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.output.0.lock().expect("output lock").stdout.clone()
    }

    /// Lines of stderr so far.
    pub fn stderr_lines(&self) -> Vec<String> {
        self.output.0.lock().expect("output lock").stderr.clone()
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit status.
    ///
    /// # Panics
    /// When the process does not exit in time.
    pub fn terminate(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {timeout:?} of SIGTERM",
                self.name
            );
            // Synchronous helper, no runtime to block.
            #[allow(clippy::disallowed_methods)]
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// How many of a child's last output lines a failing test shows.
const TAIL_ON_PANIC: usize = 200;

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A test failed while this process ran: what it said is often the reason.
        if std::thread::panicking() {
            let out = self.output.0.lock().unwrap_or_else(|e| e.into_inner());
            for (stream, lines) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
                if lines.is_empty() {
                    continue;
                }
                let skip = lines.len().saturating_sub(TAIL_ON_PANIC);
                eprintln!(
                    "--- {} {stream} (pid {}, last {} of {} lines) ---\n{}",
                    self.name,
                    self.child.id(),
                    lines.len() - skip,
                    lines.len(),
                    lines[skip..].join("\n")
                );
            }
        }
    }
}
