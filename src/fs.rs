//! File helpers shared by everything that writes a user-visible file (checkpoints, metrics,
//! curves, predictions, the tuner's cache): writes that a crash leaves whole or not at all.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Replaces `path` with `bytes` so that a reader sees the old file or the new one, never a
/// mix: writes `.{file}.tmp-{pid}-{n}` in the same directory, syncs it, renames it over
/// `path`, then syncs the directory (best effort). On any error the temporary file is
/// removed and the old file is untouched. An existing file's permissions are kept.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let invalid = |what: &str| {
        Error::io(
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidInput, what.to_string()),
        )
    };
    let file_name = path
        .file_name()
        .ok_or_else(|| invalid("not a file path"))?
        .to_string_lossy()
        .into_owned();
    let dir: PathBuf = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(".{file_name}.tmp-{}-{n}", std::process::id()));

    let write = || -> std::io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(bytes)?;
        if let Ok(old) = fs::metadata(path) {
            if old.is_file() {
                // Best effort: keep the old file's mode.
                let _ = f.set_permissions(old.permissions());
            }
        }
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)
    };
    if let Err(e) = write() {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    // Make the rename durable; not every platform can open a directory.
    if let Ok(d) = File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Writes `bytes` where a user asked for an output, without destroying anything that is not
/// an output: `-` is standard output (a closed pipe ends quietly, as Unix tools do); a FIFO
/// or a character device is written through, never replaced; a symlink is followed and its
/// target written (a dangling one is refused); a regular file or a new path is replaced
/// atomically ([`write_atomic`]). Refused: any of the `protected` files (the input, the
/// model), a path inside a run directory (one holding `config.json` beside a checkpoint or
/// `metrics.jsonl`, or an unfinished `.partial` one), a directory, and any other kind of
/// file.
pub fn write_output(path: &Path, bytes: &[u8], protected: &[&Path]) -> Result<()> {
    if path.as_os_str() == "-" {
        return write_through(std::io::stdout().lock(), bytes).map_err(|e| Error::io(path, e));
    }
    let refuse = |why: String| {
        Error::io(
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidInput, why),
        )
    };
    let link = fs::symlink_metadata(path).ok();
    // A symlink stays: what it points to is the output.
    let target: PathBuf = match &link {
        Some(m) if m.file_type().is_symlink() => fs::canonicalize(path).map_err(|_| {
            refuse("a symlink whose target does not exist; not replacing the link".into())
        })?,
        Some(_) | None => path.to_path_buf(),
    };
    let meta = fs::metadata(&target).ok();
    if let Some(m) = &meta {
        let same = |p: &Path| {
            fs::canonicalize(p)
                .ok()
                .zip(fs::canonicalize(&target).ok())
                .is_some_and(|(a, b)| a == b)
        };
        if let Some(p) = protected.iter().find(|p| same(p)) {
            return Err(refuse(format!(
                "it is {}, which this command reads; write elsewhere",
                p.display()
            )));
        }
        if m.is_dir() {
            return Err(refuse("a directory".into()));
        }
        if !m.is_file() {
            #[cfg(unix)]
            {
                use std::os::unix::fs::FileTypeExt;
                let t = m.file_type();
                if t.is_fifo() || t.is_char_device() {
                    return OpenOptions::new()
                        .write(true)
                        .open(&target)
                        .and_then(|f| write_through(f, bytes))
                        .map_err(|e| Error::io(&target, e));
                }
            }
            return Err(refuse(
                "not a regular file, a FIFO or a character device; not replacing it".into(),
            ));
        }
    }
    let dir = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let has = |name: &str| dir.join(name).is_file();
    let partial = dir.extension().is_some_and(|e| e == "partial");
    let run_dir =
        has("config.json") && (has("checkpoint.safetensors") || has("metrics.jsonl") || partial);
    if run_dir {
        return Err(refuse(format!(
            "{} is a run directory; soma does not write other files into one",
            dir.display()
        )));
    }
    write_atomic(&target, bytes)
}

/// Writes all of `bytes` to a stream; a reader that went away (a closed pipe) ends the
/// write quietly, as Unix tools do.
fn write_through(mut w: impl Write, bytes: &[u8]) -> std::io::Result<()> {
    match w.write_all(bytes).and_then(|_| w.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// A scratch directory for unit tests, shared by the modules that write files.
#[cfg(test)]
pub(crate) mod testdir {
    use std::fs;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU64, Ordering};

    static DIR_COUNTER: AtomicU64 = AtomicU64::new(0);

    /// A fresh directory under the system temp dir, removed on drop.
    pub(crate) struct TempDir(PathBuf);

    impl TempDir {
        pub(crate) fn new() -> TempDir {
            let n = DIR_COUNTER.fetch_add(1, Ordering::Relaxed);
            let p = std::env::temp_dir().join(format!("soma-test-{}-{n}", std::process::id()));
            let _ = fs::remove_dir_all(&p);
            fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
        pub(crate) fn join(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }
        pub(crate) fn entries(&self) -> Vec<String> {
            let mut v: Vec<String> = fs::read_dir(&self.0)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let _ = fs::set_permissions(&self.0, fs::Permissions::from_mode(0o755));
            }
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testdir::TempDir;
    use super::*;

    #[test]
    fn write_atomic_replaces_and_leaves_no_temp() {
        let dir = TempDir::new();
        let path = dir.join("a.bin");
        write_atomic(&path, b"first").unwrap();
        write_atomic(&path, b"second").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"second");
        assert_eq!(dir.entries(), vec!["a.bin".to_string()]);
    }

    #[test]
    fn write_atomic_failure_keeps_old_file() {
        let dir = TempDir::new();

        // The target is a directory: the rename fails after the temp file was written.
        let target = dir.join("target");
        fs::create_dir(&target).unwrap();
        fs::write(target.join("inside"), b"keep").unwrap();
        match write_atomic(&target, b"new") {
            Err(Error::Io { .. }) => {}
            other => panic!("expected an I/O error, got {other:?}"),
        }
        assert!(target.is_dir());
        assert_eq!(fs::read(target.join("inside")).unwrap(), b"keep");
        assert_eq!(dir.entries(), vec!["target".to_string()]);

        // The parent is a file: nothing can be created.
        let file = dir.join("plain");
        fs::write(&file, b"old").unwrap();
        write_atomic(&file.join("child"), b"new").unwrap_err();
        assert_eq!(fs::read(&file).unwrap(), b"old");

        // A read-only directory (meaningless for root, who may write anyway).
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let ro = dir.join("ro");
            fs::create_dir(&ro).unwrap();
            let old = ro.join("model.safetensors");
            fs::write(&old, b"old contents").unwrap();
            fs::set_permissions(&ro, fs::Permissions::from_mode(0o555)).unwrap();
            let probe = ro.join("probe");
            let writable = fs::write(&probe, b"x").is_ok();
            let _ = fs::remove_file(&probe);
            if writable {
                eprintln!("skipping the read-only directory case: running with root rights");
            } else {
                write_atomic(&old, b"new contents").unwrap_err();
                assert_eq!(fs::read(&old).unwrap(), b"old contents");
                let names: Vec<_> = fs::read_dir(&ro)
                    .unwrap()
                    .map(|e| e.unwrap().file_name())
                    .collect();
                assert_eq!(names.len(), 1, "{names:?}");
            }
            fs::set_permissions(&ro, fs::Permissions::from_mode(0o755)).unwrap();
        }
    }

    #[cfg(unix)]
    #[test]
    fn write_atomic_keeps_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let dir = TempDir::new();
        let path = dir.join("p.bin");
        fs::write(&path, b"old").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        write_atomic(&path, b"new").unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o640
        );
    }
}
