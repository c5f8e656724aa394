//! A run directory's life on disk. A run is written in `DIR.partial` and renamed to `DIR`
//! when it finishes, so a directory without the suffix always holds a finished run. The
//! process that writes a `.partial` directory holds an exclusive advisory lock
//! (`flock`) on its `.soma-lock` file for its whole life: a second `train` on the same
//! directory is refused with the PID of the first, and a lock left by a killed process is
//! released by the kernel, so it never blocks.
//!
//! Extending a finished run (`--resume DIR --epochs MORE`) never writes into `DIR`: its
//! files are copied into a fresh `DIR.partial` (staged under another name and renamed, so
//! the `.partial` directory is whole or absent), the extension trains there, and only a
//! finished extension replaces `DIR`. A kill at any point leaves the finished model intact.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use soma::{Error, Result};

/// The lock file of a run directory.
pub const LOCK_FILE: &str = ".soma-lock";

/// The files of a run, in the order an extension copies them (the checkpoint first: a
/// `.partial` directory is resumable once its checkpoint is there).
const RUN_FILES: [&str; 4] = [
    "checkpoint.safetensors",
    "metrics.jsonl",
    "curves.svg",
    "config.json",
];

/// `dir` with `suffix` appended to its last component.
pub fn with_suffix(dir: &Path, suffix: &str) -> PathBuf {
    let mut s = dir.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// The unfinished form of run directory `dir`.
pub fn partial(dir: &Path) -> PathBuf {
    with_suffix(dir, ".partial")
}

/// An exclusive lock on a run directory, held until dropped (or the process dies).
pub struct RunLock {
    _file: File,
}

impl RunLock {
    /// `dir`'s lock file, opened (and made if missing) for locking, with its path.
    fn open(dir: &Path) -> Result<(File, PathBuf)> {
        let path = dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        Ok((file, path))
    }

    /// Takes the lock of `dir`, or says which process holds it.
    pub fn take(dir: &Path) -> Result<RunLock> {
        let (mut file, path) = RunLock::open(dir)?;
        match file.try_lock() {
            Ok(()) => {
                // The holder's PID, for the message a second process prints.
                let pid = format!("{}\n", std::process::id());
                file.set_len(0)
                    .and_then(|_| file.write_all(pid.as_bytes()))
                    .map_err(|e| Error::io(&path, e))?;
                Ok(RunLock { _file: file })
            }
            Err(TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                let holder = match text.trim().parse::<u32>() {
                    Ok(pid) => format!("PID {pid}"),
                    Err(_) => "a process that has not written its PID yet".into(),
                };
                Err(Error::io(
                    dir,
                    std::io::Error::new(
                        std::io::ErrorKind::WouldBlock,
                        format!("in use by another soma process ({holder}); wait for it to finish or stop it"),
                    ),
                ))
            }
            Err(TryLockError::Error(e)) => Err(Error::io(&path, e)),
        }
    }

    /// The error `take` would give if another process holds the lock of `dir`; `None` when
    /// none does. Creates nothing (`dir` may be a directory soma did not make).
    fn held(dir: &Path) -> Option<Error> {
        let file = File::open(dir.join(LOCK_FILE)).ok()?;
        match file.try_lock() {
            Ok(()) => None,
            Err(_) => RunLock::take(dir).err(),
        }
    }

    /// Waits for the lock of `dir` (used only for the short swap of an extension).
    fn wait(dir: &Path) -> Result<RunLock> {
        let (file, path) = RunLock::open(dir)?;
        file.lock().map_err(|e| Error::io(&path, e))?;
        Ok(RunLock { _file: file })
    }
}

/// How a run directory came to be written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// A new run.
    Fresh,
    /// An unfinished run continued from its checkpoint.
    Continue,
    /// An unfinished run killed before its first checkpoint: it starts again from its
    /// `config.json`, as it started the first time.
    Restart,
    /// A finished run trained further, in a copy.
    Extend,
}

/// A run directory being written, locked for this process.
pub struct RunDir {
    /// Where the finished run lives.
    pub final_dir: PathBuf,
    /// Where it is written until it finishes (`final_dir` + `.partial`).
    pub work: PathBuf,
    pub start: Start,
    _lock: RunLock,
}

impl RunDir {
    /// A new run that will finish as `final_dir`.
    pub fn create(final_dir: PathBuf) -> Result<RunDir> {
        if final_dir.exists() {
            return Err(Error::Config(format!(
                "run directory {} already exists; choose another --out (or extend it with --resume {})",
                final_dir.display(),
                final_dir.display()
            )));
        }
        let work = partial(&final_dir);
        let unfinished = |work: &Path| {
            RunLock::held(work).unwrap_or_else(|| {
                Error::Config(format!(
                    "{} exists (an unfinished run): continue it with --resume {} or remove it",
                    work.display(),
                    work.display()
                ))
            })
        };
        if work.exists() && !only_debris(&work) {
            return Err(unfinished(&work));
        }
        if work.exists() {
            // A run killed before it wrote its config.json: nothing to resume, and nothing
            // of the user's in it.
            let _ = fs::remove_dir_all(&work);
        }
        if let Some(parent) = work.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        // Exclusive: of two runs started at once with the same --out, one gets here first.
        match fs::create_dir(&work) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(unfinished(&work))
            }
            Err(e) => return Err(Error::io(&work, e)),
        }
        let lock = RunLock::take(&work)?;
        Ok(RunDir {
            final_dir,
            work,
            start: Start::Fresh,
            _lock: lock,
        })
    }

    /// A new run under the first of `names` that is free, taken atomically: two runs
    /// started at once never share a name (the default `runs/<timestamp>` names of two runs
    /// started within the same second race for the same first name).
    pub fn create_first_free(names: impl Iterator<Item = PathBuf>) -> Result<RunDir> {
        for name in names.take(10_000) {
            let taken = |n: &Path| n.exists() || partial(n).exists();
            if taken(&name) {
                continue;
            }
            match RunDir::create(name.clone()) {
                Ok(dir) => return Ok(dir),
                // Another run took it in the meantime: the next name.
                Err(_) if taken(&name) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Error::Config(
            "no free run directory name under runs/; pass --out".into(),
        ))
    }

    /// Continues `dir`: an unfinished `X.partial` where it stopped, or a finished `X` in a
    /// fresh copy `X.partial`.
    pub fn resume(dir: &Path) -> Result<RunDir> {
        check_resumable(dir)?;
        let text = dir.to_string_lossy();
        if let Some(stem) = text.strip_suffix(".partial") {
            let lock = RunLock::take(dir)?;
            remove_orphans(dir);
            let start = if dir.join("checkpoint.safetensors").is_file() {
                Start::Continue
            } else {
                Start::Restart
            };
            return Ok(RunDir {
                final_dir: PathBuf::from(stem),
                work: dir.to_path_buf(),
                start,
                _lock: lock,
            });
        }
        // A finished run: copied into DIR.partial, which the extension writes.
        let work = partial(dir);
        let unfinished = |work: &Path| {
            RunLock::held(work).unwrap_or_else(|| {
                Error::Config(format!(
                    "{} exists (an unfinished extension of {}): continue it with --resume {} or remove it",
                    work.display(),
                    dir.display(),
                    work.display()
                ))
            })
        };
        if work.exists() {
            return Err(unfinished(&work));
        }
        // The finished directory's own lock makes the staging below exclusive.
        let guard = RunLock::take(dir)?;
        if work.exists() {
            return Err(unfinished(&work));
        }
        let staging = with_suffix(dir, ".partial.staging");
        if staging.exists() {
            fs::remove_dir_all(&staging).map_err(|e| Error::io(&staging, e))?;
        }
        fs::create_dir(&staging).map_err(|e| Error::io(&staging, e))?;
        // The lock taken on the staging directory moves with it in the rename below.
        let lock = RunLock::take(&staging)?;
        let copy = || -> std::io::Result<()> {
            for name in RUN_FILES {
                let from = dir.join(name);
                if from.is_file() {
                    let to = staging.join(name);
                    fs::copy(&from, &to)?;
                    File::open(&to)?.sync_all()?;
                }
            }
            fs::rename(&staging, &work)?;
            sync_parent(&work);
            Ok(())
        };
        if let Err(e) = copy() {
            let _ = fs::remove_dir_all(&staging);
            let _ = fs::remove_file(dir.join(LOCK_FILE));
            return Err(Error::io(&work, e));
        }
        // The finished run keeps only its own files (removed while still held: a process
        // that opened it before then finds it locked, one that opens it after finds the
        // extension's `.partial` directory).
        let _ = fs::remove_file(dir.join(LOCK_FILE));
        drop(guard);
        Ok(RunDir {
            final_dir: dir.to_path_buf(),
            work,
            start: Start::Extend,
            _lock: lock,
        })
    }

    /// Renames the finished run into place: `X.partial` becomes `X`. An extension replaces
    /// the run it extended: `X` is moved aside to `X.replaced`, `X.partial` becomes `X`, and
    /// `X.replaced` is removed; a kill between the two renames leaves the old run in
    /// `X.replaced` and the new one, finished, in `X.partial` (`--resume X.partial` renames
    /// it into place).
    pub fn finish(self) -> Result<PathBuf> {
        let fin = &self.final_dir;
        // A finished run holds only its own files: the lock file goes first (still held
        // through its open descriptor until this process ends), so that a kill at any
        // moment of the renames below never leaves it in the finished directory. A process
        // that opens the lock file after this, in the instant before the rename, finds a
        // directory about to move and fails on its first write; nothing is lost.
        let _ = fs::remove_file(self.work.join(LOCK_FILE));
        if fin.exists() {
            let guard = RunLock::wait(fin)?;
            let aside = with_suffix(fin, ".replaced");
            if aside.exists() {
                fs::remove_dir_all(&aside).map_err(|e| Error::io(&aside, e))?;
            }
            fs::rename(fin, &aside).map_err(|e| Error::io(fin, e))?;
            fs::rename(&self.work, fin).map_err(|e| Error::io(fin, e))?;
            sync_parent(fin);
            fs::remove_dir_all(&aside).map_err(|e| Error::io(&aside, e))?;
            drop(guard);
        } else {
            fs::rename(&self.work, fin).map_err(|e| Error::io(fin, e))?;
            sync_parent(fin);
        }
        Ok(self.final_dir)
    }

    /// After a failure: a new run that never wrote a checkpoint leaves nothing behind; any
    /// other keeps its `.partial` directory for `--resume`.
    pub fn abandon(self) -> Option<PathBuf> {
        // A shadow log tells why a run stopped: kept, with the run, even before a checkpoint.
        let empty = !self.work.join("checkpoint.safetensors").exists()
            && !self.work.join("shadow.jsonl").exists();
        if self.start == Start::Fresh && empty {
            let _ = fs::remove_dir_all(&self.work);
            None
        } else {
            Some(self.work)
        }
    }
}

/// Checks that `dir` is a run `--resume` can continue: a directory with a `config.json`
/// (and a checkpoint, unless it is an unfinished `.partial` one).
pub fn check_resumable(dir: &Path) -> Result<()> {
    let text = dir.to_string_lossy();
    let not_a_run = |why: String| {
        Err(Error::Config(format!(
            "--resume {}: {why}; --resume takes a run directory written by soma train",
            dir.display()
        )))
    };
    if !dir.is_dir() {
        return not_a_run("not a directory".into());
    }
    let partial = text.strip_suffix(".partial");
    if !dir.join("config.json").is_file() {
        return not_a_run(match partial {
            Some(stem) => format!(
                "it has no config.json (a run killed as it started: start it again with --out {stem})"
            ),
            None => "it has no config.json".into(),
        });
    }
    if partial.is_none() && !dir.join("checkpoint.safetensors").is_file() {
        return not_a_run("it has no checkpoint.safetensors".into());
    }
    Ok(())
}

/// Whether `dir` holds nothing but what soma leaves while it starts a run (its lock file,
/// temporary files), and nobody holds its lock.
fn only_debris(dir: &Path) -> bool {
    let Ok(entries) = fs::read_dir(dir) else {
        return false;
    };
    let debris = entries.into_iter().all(|e| {
        e.is_ok_and(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name == LOCK_FILE || (name.starts_with('.') && name.contains(".tmp-"))
        })
    });
    debris && RunLock::held(dir).is_none()
}

/// Removes the temporary files that a killed process left in `dir` (`.NAME.tmp-PID-N`, see
/// `soma::fs::write_atomic`). Called with the directory's lock held, so no live writer owns
/// them.
fn remove_orphans(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') && name.contains(".tmp-") {
            let _ = fs::remove_file(e.path());
        }
    }
}

/// Makes a rename in `path`'s directory durable (best effort).
fn sync_parent(path: &Path) {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if let Ok(d) = File::open(parent) {
        let _ = d.sync_all();
    }
}
