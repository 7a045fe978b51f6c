//! Signals and bounded waits for child processes.

use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// Sends `signal` (`TERM`, `HUP`, `KILL`, `STOP`, ...) to process `pid`; false
/// if it could not be sent (the process is gone).
pub fn signal(pid: u32, signal: &str) -> bool {
    Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success())
}

/// Waits up to `wait` for `child` to exit; None if it is still running.
pub fn wait_exit(child: &mut Child, wait: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + wait;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends SIGTERM and waits up to `wait` for the exit; kills the process (and
/// returns None) if it does not stop by then.
pub fn terminate(child: &mut Child, wait: Duration) -> Option<ExitStatus> {
    signal(child.id(), "TERM");
    let status = wait_exit(child, wait);
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    status
}
