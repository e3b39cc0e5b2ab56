//! A server process owned by a test: its own temp dir, its output in a log file, stopped
//! (SIGKILL) when dropped, with helpers for fault injection (kill -9, SIGSTOP/SIGCONT, restart).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A running server process and the temp dir it owns.
#[derive(Debug)]
pub struct ServerProcess {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    child: Option<Child>,
    dir: tempfile::TempDir,
    log: PathBuf,
}

impl ServerProcess {
    /// A new temp dir for a server called `name` (nothing started yet).
    ///
    /// # Panics
    /// When the temp dir cannot be created.
    pub fn prepare(name: &str, program: impl Into<PathBuf>) -> Self {
        let dir = tempfile::Builder::new()
            .prefix(&format!("waypost-{name}-"))
            .tempdir()
            .expect("create temp dir");
        let log = dir.path().join(format!("{name}.log"));
        ServerProcess {
            name: name.to_owned(),
            program: program.into(),
            args: Vec::new(),
            envs: Vec::new(),
            child: None,
            dir,
            log,
        }
    }

    /// Sets the arguments used by [`start`](Self::start) and [`restart`](Self::restart).
    pub fn args<I, S>(&mut self, args: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args = args.into_iter().map(Into::into).collect();
        self
    }

    /// Adds an environment variable for the process.
    pub fn env(&mut self, key: &str, value: &str) -> &mut Self {
        self.envs.push((key.to_owned(), value.to_owned()));
        self
    }

    /// The server's own temp dir.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Starts the process (output appended to the log in the temp dir).
    ///
    /// # Errors
    /// When the program cannot be spawned.
    pub fn start(&mut self) -> Result<(), String> {
        let out = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| format!("open log: {e}"))?;
        let err = out.try_clone().map_err(|e| format!("log: {e}"))?;
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", self.program.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Kills the process with SIGKILL and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends a signal by name (`STOP`, `CONT`, `TERM`, …) with `kill(1)`.
    ///
    /// # Errors
    /// When the process is not running or `kill` fails.
    pub fn signal(&self, signal: &str) -> Result<(), String> {
        let pid = self
            .pid()
            .ok_or_else(|| format!("{} is not running", self.name))?;
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .map_err(|e| format!("kill -{signal}: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("kill -{signal} {pid} failed: {status}"))
        }
    }

    /// Starts the process again with the same program, arguments and temp dir.
    ///
    /// # Errors
    /// As [`start`](Self::start).
    pub fn restart(&mut self) -> Result<(), String> {
        self.kill();
        self.start()
    }

    /// The last `max` bytes of the server's log, for failure messages.
    pub fn log_tail(&self, max: usize) -> String {
        let text = std::fs::read(&self.log).unwrap_or_default();
        let start = text.len().saturating_sub(max);
        String::from_utf8_lossy(&text[start..]).into_owned()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_ref() {
            // A stopped process must be continued to die cleanly; harmless otherwise.
            let _ = Command::new("kill")
                .arg("-CONT")
                .arg(c.id().to_string())
                .stderr(Stdio::null())
                .status();
        }
        self.kill();
    }
}
