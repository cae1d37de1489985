//! End-to-end tests of the `manta` command: real processes, real files.
#![allow(missing_docs)]
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers fail the test by panicking

mod cli;
mod cluster;
mod flood;
mod hardening;
mod serve_cluster;
mod train;
mod tune;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const DEADLINE: Duration = Duration::from_secs(30);

pub fn manta() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_manta"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"));
    c
}

/// A running `manta` process whose output lines (stdout and stderr) arrive
/// on a channel.
pub struct Running {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

/// A process a test started never outlives it (a test that fails, or
/// forgets, would otherwise leave a `manta node` running).
impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Running {
    pub fn start(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("manta binary starts");
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().expect("piped stdout");
        let err = child.stderr.take().expect("piped stderr");
        for stream in [
            Box::new(out) as Box<dyn std::io::Read + Send>,
            Box::new(err),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits (bounded) for an output line containing `needle`.
    pub fn wait_for(&mut self, needle: &str) -> String {
        self.try_wait_for(needle).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`Running::wait_for`], but a line seen earlier counts too.
    /// stdout and stderr are read by separate threads, so a line printed on
    /// one before a line on the other may still arrive after it.
    pub fn wait_for_seen(&mut self, needle: &str) -> String {
        match self.seen.iter().find(|l| l.contains(needle)) {
            Some(line) => line.clone(),
            None => self.wait_for(needle),
        }
    }

    /// [`Running::wait_for`] that returns the failure (after killing the
    /// process) instead of panicking, so a test can add other processes'
    /// output to it.
    pub fn try_wait_for(&mut self, needle: &str) -> Result<String, String> {
        let end = Instant::now() + DEADLINE;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return Ok(line);
                    }
                }
                Err(e) => {
                    let _ = self.child.kill();
                    let why = match e {
                        mpsc::RecvTimeoutError::Timeout => format!("within {DEADLINE:?}"),
                        mpsc::RecvTimeoutError::Disconnected => {
                            "before the process closed its output".to_owned()
                        }
                    };
                    return Err(format!(
                        "no line containing `{needle}` {why}; saw:\n{}",
                        self.seen.join("\n")
                    ));
                }
            }
        }
    }

    /// Every output line so far, without waiting.
    pub fn drain(&mut self) -> String {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
        self.seen.join("\n")
    }

    /// Waits (bounded) for the process to exit: its output pipes close when
    /// it does, which ends the reader threads and disconnects the channel.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let end = Instant::now() + DEADLINE;
        loop {
            match self
                .lines
                .recv_timeout(end.saturating_duration_since(Instant::now()))
            {
                Ok(line) => self.seen.push(line),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = self.child.kill();
                    panic!(
                        "manta did not exit within {DEADLINE:?}; saw:\n{}",
                        self.seen.join("\n")
                    );
                }
            }
        }
        self.child.wait().expect("wait for manta")
    }

    pub fn output(&self) -> String {
        self.seen.join("\n")
    }
}

/// A scratch directory removed on drop.
pub struct Scratch(pub std::path::PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("manta-it-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&p).expect("temp dir");
        Self(p)
    }

    pub fn file(&self, name: &str, text: &str) -> std::path::PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).expect("write temp file");
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
