//! Driving the built `soma` binary from integration tests: a temporary directory per test,
//! one run of the command and what it did, and the adapters it lists.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use serde_json::Value;

/// A fresh directory under the system temp dir, removed on drop (kept, and named, when the
/// test failed, so that what the command left can be looked at).
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(test: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let p = std::env::temp_dir().join(format!(
            "soma-{}-{test}-{}-{}-{nanos}",
            env!("CARGO_CRATE_NAME"),
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// `self/name` as a string, for command-line arguments.
    pub fn arg(&self, name: &str) -> String {
        self.join(name).to_str().unwrap().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("kept the failed test's directory {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// What one run of the binary did.
pub struct Ran {
    pub args: String,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    /// Asserts exit status 0 and returns self.
    pub fn ok(self) -> Ran {
        assert_eq!(
            self.code,
            Some(0),
            "soma {} failed\n--- stdout\n{}\n--- stderr\n{}",
            self.args,
            self.stdout,
            self.stderr
        );
        self
    }

    /// Panics with `what`, the command and its output.
    pub fn fail(&self, what: &str) -> ! {
        panic!(
            "soma {}: {what}\n--- stdout\n{}\n--- stderr\n{}",
            self.args, self.stdout, self.stderr
        )
    }

    /// stdout parsed as one JSON document.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "soma {}: stdout is not one JSON document ({e}):\n{}",
                self.args, self.stdout
            )
        })
    }

    /// The non-blank lines of stderr, less the driver's own noise: Mesa's EGL prints
    /// `error: XDG_RUNTIME_DIR is invalid or not set` when wgpu probes the GL backend
    /// without a desktop session, which is not soma's output.
    pub fn stderr_lines(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.contains("XDG_RUNTIME_DIR"))
            .collect()
    }
}

/// Runs `soma ARGS` in `cwd` (so that a default `runs/` would land in the test directory,
/// never in the repository), with logging at its default level.
pub fn soma_in<S: AsRef<str>>(cwd: &Path, args: &[S]) -> Ran {
    soma_in_env(cwd, args, &[])
}

/// [`soma_in`] with these environment variables set as well.
pub fn soma_in_env<S: AsRef<str>>(cwd: &Path, args: &[S], vars: &[(&str, &str)]) -> Ran {
    let args: Vec<&str> = args.iter().map(|a| a.as_ref()).collect();
    let out: Output = Command::new(env!("CARGO_BIN_EXE_soma"))
        .args(&args)
        .current_dir(cwd)
        .env_remove("RUST_LOG")
        .envs(vars.iter().copied())
        .output()
        .expect("cannot start the soma binary");
    Ran {
        args: args.join(" "),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

pub fn soma<S: AsRef<str>>(dir: &TempDir, args: &[S]) -> Ran {
    soma_in(&dir.0, args)
}

/// Adapter names that `soma devices --json` lists (asked once per test binary).
pub fn adapters() -> &'static Vec<String> {
    static ADAPTERS: OnceLock<Vec<String>> = OnceLock::new();
    ADAPTERS.get_or_init(|| {
        let ran = soma_in(&std::env::temp_dir(), &["devices", "--json"]).ok();
        let doc = ran.json();
        doc["adapters"]
            .as_array()
            .unwrap_or_else(|| panic!("devices --json: no 'adapters' array:\n{}", ran.stdout))
            .iter()
            .map(|a| {
                a["name"]
                    .as_str()
                    .expect("adapter without a name")
                    .to_string()
            })
            .collect()
    })
}

/// A file's text, or a panic naming it.
pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}
