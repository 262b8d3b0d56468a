//! Ctrl-C handling: a process-wide stop flag that the script engine polls between operations and
//! that long native calls poll between steps, so a script stops cleanly at the next safe point.
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

static STOP: AtomicBool = AtomicBool::new(false);
static PRESSES: AtomicUsize = AtomicUsize::new(0);

/// Installs the Ctrl-C handler: the first press asks for a clean stop, a second one exits at once.
pub fn install() {
    let _ = ctrlc::set_handler(|| {
        if PRESSES.fetch_add(1, Ordering::SeqCst) == 0 {
            eprintln!("\ninterrupt: stopping at the next safe point (press Ctrl-C again to abort)");
            STOP.store(true, Ordering::SeqCst);
        } else {
            eprintln!("\ninterrupt: aborted");
            std::process::exit(130);
        }
    });
}

/// Whether a stop was requested.
pub fn requested() -> bool {
    STOP.load(Ordering::Relaxed)
}

/// Requests a stop, as Ctrl-C does (used by tests and by native code that must abort a run).
pub fn request() {
    STOP.store(true, Ordering::SeqCst);
}

/// The error a native call returns when it sees the stop flag; the engine reports it as an
/// interruption, not as a script failure.
pub fn check() -> Result<(), Box<rhai::EvalAltResult>> {
    if requested() {
        Err(terminated())
    } else {
        Ok(())
    }
}

/// The one "stopped by request" error: the engine and `host` report it as an interruption
/// (exit 130), not as a script failure.
pub fn terminated() -> Box<rhai::EvalAltResult> {
    rhai::EvalAltResult::ErrorTerminated("interrupted".into(), rhai::Position::NONE).into()
}
