//! Ctrl-C (SIGINT) and SIGTERM during training: the first finishes the epoch under way,
//! saves its checkpoint and stops with the `--resume` command; a second stops at once,
//! leaving the last epoch's checkpoint (every file is replaced atomically, so none is
//! torn).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);

pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}

pub fn install(dir: &Path) {
    let resume = format!("soma train --resume {}", dir.display());
    let installed = ctrlc::set_handler(move || {
        if REQUESTED.swap(true, Ordering::SeqCst) {
            eprintln!("\nstopped; the last finished epoch is kept: continue with: {resume}");
            std::process::exit(130);
        }
        eprintln!(
            "\nstopping at the end of this epoch (press Ctrl-C again to stop now and keep the last finished one)"
        );
    });
    if let Err(e) = installed {
        log::warn!("Ctrl-C will stop training at once, not at an epoch's end: {e}");
    }
}
