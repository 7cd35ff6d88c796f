//! Image locking compatible with QEMU's: QEMU takes OFD byte-range locks on
//! the image file at offsets 100 + permission bit ("lock bytes") and
//! 200 + permission bit ("shared bytes"). A writer locks the WRITE permission
//! byte and unshares nothing it may conflict with; we take the same bytes so
//! each side refuses the other with the same message.

use super::HostFile;
use crate::error::{Error, ErrorKind, Result};

const PERM_CONSISTENT_READ: u64 = 0;
const PERM_WRITE: u64 = 1;
const PERM_RESIZE: u64 = 3;
const LOCK_BASE: u64 = 100;
const SHARED_BASE: u64 = 200;

/// How an image is being used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// `-U`: take no locks, share everything.
    None,
    /// Reading: consistent read, and refuse other writers.
    Read,
    /// Writing: write + resize, and refuse other writers.
    Write,
}

fn perm_name(p: u64) -> &'static str {
    match p {
        PERM_CONSISTENT_READ => "consistent read",
        PERM_WRITE => "write",
        PERM_RESIZE => "resize",
        _ => "write unchanged",
    }
}

fn ofd_lock(f: &HostFile, start: u64, exclusive: bool) -> std::io::Result<()> {
    // SAFETY: zeroed flock is a valid value; all fields are plain integers.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = if exclusive {
        libc::F_WRLCK
    } else {
        libc::F_RDLCK
    } as i16;
    fl.l_whence = libc::SEEK_SET as i16;
    fl.l_start = start as libc::off_t;
    fl.l_len = 1;
    // SAFETY: F_OFD_SETLK with a pointer to a live flock struct.
    let r = unsafe { libc::fcntl(f.raw_fd(), libc::F_OFD_SETLK, &mut fl) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Would another holder's lock on byte `start` conflict with a shared lock?
fn ofd_test(f: &HostFile, start: u64) -> std::io::Result<bool> {
    // SAFETY: zeroed flock is a valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as i16;
    fl.l_whence = libc::SEEK_SET as i16;
    fl.l_start = start as libc::off_t;
    fl.l_len = 1;
    // SAFETY: F_OFD_GETLK with a pointer to a live flock struct.
    let r = unsafe { libc::fcntl(f.raw_fd(), libc::F_OFD_GETLK, &mut fl) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(fl.l_type != libc::F_UNLCK as i16)
}

/// Attempts before a conflict is reported, and the first pause between
/// them (doubling): about 150 ms in all.
const LOCK_ATTEMPTS: u32 = 5;
const LOCK_PAUSE_MS: u64 = 10;

impl HostFile {
    /// Take QEMU-compatible locks. The messages are qemu-img's.
    ///
    /// A conflict is retried briefly before it is reported: a child another
    /// thread of this process is spawning shares our open files (and with
    /// them the OFD locks of images closed meanwhile) until it execs, so a
    /// just-closed image can look locked for a moment. A real holder still
    /// gets qemu-img's refusal, a little later.
    pub fn lock(&self, mode: LockMode) -> Result<()> {
        let mut pause = LOCK_PAUSE_MS;
        for _ in 1..LOCK_ATTEMPTS {
            match self.lock_once(mode) {
                Err(e) if e.kind() == ErrorKind::Locked => {
                    std::thread::sleep(std::time::Duration::from_millis(pause));
                    pause *= 2;
                }
                r => return r,
            }
        }
        self.lock_once(mode)
    }

    fn lock_once(&self, mode: LockMode) -> Result<()> {
        let (perms, unshared): (&[u64], &[u64]) = match mode {
            LockMode::None => return Ok(()),
            // A reader needs consistent reads and does not share write.
            LockMode::Read => (&[PERM_CONSISTENT_READ], &[PERM_WRITE]),
            LockMode::Write => (
                &[PERM_CONSISTENT_READ, PERM_WRITE, PERM_RESIZE],
                &[PERM_WRITE, PERM_RESIZE],
            ),
        };
        let fail = |what: String| {
            Error::new(
                ErrorKind::Locked,
                format!(
                    "{what}\nIs another process using the image [{}]?",
                    self.path().display()
                ),
            )
        };
        // Take our locks, then test for conflicts as QEMU does: a permission
        // we want must not be unshared by another holder, and a permission
        // we unshare must not be held by another.
        for &p in perms {
            if ofd_lock(self, LOCK_BASE + p, false).is_err()
                || ofd_test(self, SHARED_BASE + p).unwrap_or(false)
            {
                return Err(fail(format!("Failed to get \"{}\" lock", perm_name(p))));
            }
        }
        for &p in unshared {
            if ofd_lock(self, SHARED_BASE + p, false).is_err()
                || ofd_test(self, LOCK_BASE + p).unwrap_or(false)
            {
                return Err(fail(format!(
                    "Failed to get shared \"{}\" lock",
                    perm_name(p)
                )));
            }
        }
        Ok(())
    }
}
