//! memfd segments: creation with the size sealed, adoption of received
//! descriptors, write seals and shared mappings.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::OnceLock;

use crate::Error;

/// `MFD_NOEXEC_SEAL` (Linux 6.3): the memfd can never be made executable.
const MFD_NOEXEC_SEAL: libc::c_uint = 0x0008;
/// MADV_POPULATE_WRITE (Linux 5.14).
const MADV_POPULATE_WRITE: libc::c_int = 23;
/// The smallest writable mapping populated: a smaller one takes few faults.
const POPULATE_MIN: u64 = 1 << 20;
/// The seals every segment carries from birth: its size never changes.
pub const SIZE_SEALS: i32 = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW;

pub(crate) fn errno(what: impl std::fmt::Display) -> Error {
    Error::new(format!("{what}: {}", io::Error::last_os_error()))
}

/// A fresh sealable memfd of size 0:
/// `memfd_create(MFD_CLOEXEC | MFD_ALLOW_SEALING | MFD_NOEXEC_SEAL)`, retried
/// without `MFD_NOEXEC_SEAL` on kernels before 6.3.
fn memfd(name: &str) -> Result<OwnedFd, Error> {
    let mut mem_name: String = name.chars().filter(|&c| c != '\0').collect();
    if mem_name.len() > 249 {
        let mut cut = 249;
        while !mem_name.is_char_boundary(cut) {
            cut -= 1;
        }
        mem_name.truncate(cut);
    }
    if mem_name.is_empty() {
        mem_name = "pipehost".into();
    }
    let cname = CString::new(mem_name).expect("NUL bytes were removed");
    let flags = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
    // SAFETY: cname is a valid NUL-terminated string.
    let mut fd = unsafe { libc::memfd_create(cname.as_ptr(), flags | MFD_NOEXEC_SEAL) };
    if fd < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
        // SAFETY: as above.
        fd = unsafe { libc::memfd_create(cname.as_ptr(), flags) };
    }
    if fd < 0 {
        return Err(errno("memfd_create"));
    }
    // SAFETY: fd was just returned by memfd_create and is owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// One memfd segment. Owns its descriptor.
#[derive(Debug)]
pub struct Segment {
    fd: OwnedFd,
    size: u64,
    name: String,
}

impl Segment {
    /// Creates a sealable memfd of `size` bytes and seals its size at once:
    /// `memfd_create(MFD_CLOEXEC | MFD_ALLOW_SEALING | MFD_NOEXEC_SEAL)` (retried
    /// without `MFD_NOEXEC_SEAL` on kernels before 6.3), `ftruncate`,
    /// `F_ADD_SEALS(F_SEAL_SHRINK | F_SEAL_GROW)`.
    pub fn create(name: &str, size: u64) -> Result<Segment, Error> {
        let fd = memfd(name).map_err(|e| e.context(format!("create segment {name:?}")))?;
        let len = libc::off_t::try_from(size).map_err(|_| {
            Error::new(format!("create segment {name:?}: size {size} is too large"))
        })?;
        // SAFETY: plain syscalls on an fd we own.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), len) } != 0 {
            return Err(errno(format!(
                "create segment {name:?}: ftruncate to {size} bytes"
            )));
        }
        if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, SIZE_SEALS) } != 0 {
            return Err(errno(format!("create segment {name:?}: sealing its size")));
        }
        Ok(Segment {
            fd,
            size,
            name: name.to_string(),
        })
    }

    /// Adopts a received descriptor: it must be a sealable memfd (a regular
    /// file with seals) that already carries `F_SEAL_SHRINK | F_SEAL_GROW`.
    /// Its size comes from `fstat`. On error the descriptor is closed.
    pub fn open(fd: OwnedFd) -> Result<Segment, Error> {
        let raw = fd.as_raw_fd();
        // SAFETY: fstat fills a plain struct; fd is valid.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstat(raw, &mut st) } != 0 {
            return Err(errno(format!("open segment fd {raw}: fstat")));
        }
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(Error::new(format!(
                "open segment fd {raw}: not a memfd (not a regular file, mode {:#o})",
                st.st_mode & libc::S_IFMT
            )));
        }
        let seals = get_seals(fd.as_fd()).map_err(|e| {
            Error::new(format!(
                "open segment fd {raw}: not a sealable memfd (F_GET_SEALS: {e})"
            ))
        })?;
        if seals & SIZE_SEALS != SIZE_SEALS {
            return Err(Error::new(format!(
                "open segment fd {raw}: size is not sealed (seals {}; need shrink,grow)",
                seal_string(seals)
            )));
        }
        let name = std::fs::read_link(format!("/proc/self/fd/{raw}"))
            .ok()
            .and_then(|l| {
                let l = l.to_string_lossy().into_owned();
                l.strip_prefix("/memfd:")
                    .map(|n| n.trim_end_matches(" (deleted)").to_string())
            })
            .unwrap_or_else(|| format!("fd {raw}"));
        Ok(Segment {
            fd,
            size: st.st_size as u64,
            name,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    /// The size in bytes, fixed for the segment's whole life.
    pub fn size(&self) -> u64 {
        self.size
    }
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The current `F_GET_SEALS` bit set.
    pub fn seals(&self) -> Result<i32, Error> {
        get_seals(self.fd.as_fd())
            .map_err(|e| Error::new(format!("segment {:?}: F_GET_SEALS: {e}", self.name)))
    }

    /// Adds `F_SEAL_WRITE | F_SEAL_SEAL` (a no-op when already write-sealed).
    /// Fails (EBUSY) while any process holds a writable shared mapping.
    pub fn seal_write(&self) -> Result<(), Error> {
        let seals = self.seals()?;
        if seals & libc::F_SEAL_WRITE != 0 {
            return Ok(());
        }
        // SAFETY: plain fcntl on an fd we own.
        if unsafe {
            libc::fcntl(
                self.fd.as_raw_fd(),
                libc::F_ADD_SEALS,
                libc::F_SEAL_WRITE | libc::F_SEAL_SEAL,
            )
        } != 0
        {
            return Err(errno(format!("seal segment {:?}", self.name)));
        }
        Ok(())
    }

    /// Maps the segment shared and read-only, for a consumer. Refuses a
    /// segment without `F_SEAL_WRITE`: only that seal makes the bytes
    /// immutable for every process (docs/protocol.md, "Hand-off").
    pub fn map_ro(&self) -> Result<Mapping, Error> {
        let seals = self.seals()?;
        if seals & libc::F_SEAL_WRITE == 0 {
            return Err(Error::new(format!(
                "map segment {:?} read-only: segment is not write-sealed (seals {})",
                self.name,
                seal_string(seals)
            )));
        }
        self.mmap(libc::PROT_READ)
    }

    /// Maps the segment shared and writable, for its producer; asks for
    /// transparent huge pages where the system's shmem setting allows them.
    pub fn map_rw(&self) -> Result<Mapping, Error> {
        let seals = self.seals()?;
        if seals & (libc::F_SEAL_WRITE | libc::F_SEAL_FUTURE_WRITE) != 0 {
            return Err(Error::new(format!(
                "map segment {:?} read-write: it is write-sealed; map it read-only",
                self.name
            )));
        }
        let m = self.mmap(libc::PROT_READ | libc::PROT_WRITE)?;
        if m.len > 0 && huge_pages() {
            // Advice only. SAFETY: the range is our own fresh mapping.
            unsafe { libc::madvise(m.ptr.cast(), m.len, libc::MADV_HUGEPAGE) };
        }
        if self.size >= POPULATE_MIN {
            self.populate(&m);
        }
        Ok(m)
    }

    /// Makes every page of a fresh writable mapping present now: fallocate
    /// for the pages the segment lacks (none when the host prefaulted it,
    /// which fstat tells), then madvise(MADV_POPULATE_WRITE), instead of a
    /// page fault per 4 KiB page as the stage first writes each (as the Go
    /// SDK's `shm.Mapping.Populate`). Best effort: an older kernel, or
    /// memory too short, leaves the pages to the faults.
    fn populate(&self, m: &Mapping) {
        let fd = self.fd.as_raw_fd();
        let len = i64::try_from(self.size).unwrap_or(i64::MAX);
        // SAFETY: fstat writes into a zeroed stat we own; fallocate and
        // madvise act on our own fd and our own fresh mapping.
        unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            if libc::fstat(fd, &mut st) == 0 && st.st_blocks.saturating_mul(512) < len {
                libc::fallocate(fd, 0, 0, len);
            }
            libc::madvise(m.ptr.cast(), m.len, MADV_POPULATE_WRITE);
        }
    }

    fn mmap(&self, prot: i32) -> Result<Mapping, Error> {
        let writable = prot & libc::PROT_WRITE != 0;
        if self.size == 0 {
            // mmap refuses length 0: an empty segment is an empty view.
            return Ok(Mapping {
                ptr: std::ptr::NonNull::<u64>::dangling().as_ptr().cast(),
                len: 0,
                writable,
            });
        }
        let len = usize::try_from(self.size).map_err(|_| {
            Error::new(format!(
                "map segment {:?}: size {} does not fit in memory",
                self.name, self.size
            ))
        })?;
        // SAFETY: a fresh shared mapping of an fd we own; the size is sealed,
        // so the mapping can never fault with SIGBUS.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                self.fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            let what = if writable { "read-write" } else { "read-only" };
            return Err(errno(format!(
                "map segment {:?} {what} ({} bytes)",
                self.name, self.size
            )));
        }
        Ok(Mapping {
            ptr: p.cast(),
            len,
            writable,
        })
    }
}

fn get_seals(fd: BorrowedFd<'_>) -> io::Result<i32> {
    // SAFETY: plain fcntl.
    let s = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
    if s < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(s)
    }
}

/// Renders a seal bit set for messages, e.g. "shrink,grow,write".
pub fn seal_string(mut seals: i32) -> String {
    let names = [
        (libc::F_SEAL_SEAL, "seal"),
        (libc::F_SEAL_SHRINK, "shrink"),
        (libc::F_SEAL_GROW, "grow"),
        (libc::F_SEAL_WRITE, "write"),
        (libc::F_SEAL_FUTURE_WRITE, "future-write"),
        (0x0020, "exec"),
    ];
    let mut parts = Vec::new();
    for (bit, name) in names {
        if seals & bit != 0 {
            parts.push(name.to_string());
            seals &= !bit;
        }
    }
    if seals != 0 {
        parts.push(format!("{seals:#x}"));
    }
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(",")
    }
}

fn huge_pages() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/shmem_enabled")
            .map(|s| shmem_thp_allows(&s))
            .unwrap_or(false)
    })
}

/// Reads the shmem_enabled format, where the active value is bracketed:
/// "always within_size advise [never] deny force".
fn shmem_thp_allows(s: &str) -> bool {
    let Some((_, rest)) = s.split_once('[') else {
        return false;
    };
    let Some((mode, _)) = rest.split_once(']') else {
        return false;
    };
    matches!(mode, "always" | "within_size" | "advise" | "force")
}

/// A shared mapping of a whole segment, unmapped on drop.
#[derive(Debug)]
pub struct Mapping {
    ptr: *mut u8,
    len: usize,
    writable: bool,
}

// SAFETY: the mapping is plain shared memory; access is governed by the
// borrows handed out (`bytes`, `bytes_mut`).
unsafe impl Send for Mapping {}
unsafe impl Sync for Mapping {}

impl Mapping {
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn writable(&self) -> bool {
        self.writable
    }
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }
    /// The mapped bytes.
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: ptr..ptr+len is mapped for the life of self.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
    /// The mapped bytes, writable.
    ///
    /// # Panics
    /// If the mapping is read-only.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        assert!(self.writable, "shm: bytes_mut on a read-only mapping");
        // SAFETY: as above, and &mut self makes the borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: ptr/len came from our own mmap and are unmapped once.
            unsafe { libc::munmap(self.ptr.cast(), self.len) };
        }
    }
}

/// Builds a segment whose size is not known in advance (an Arrow IPC file,
/// a blob) by appending to a memfd with `write(2)`: the bytes go straight
/// into the segment's shared pages, and no writable mapping ever exists.
/// [`Writer::finish`] seals the size and returns the [`Segment`].
#[derive(Debug)]
pub struct Writer {
    file: std::fs::File,
    name: String,
    len: u64,
}

impl Writer {
    /// Starts an empty segment that grows as it is written.
    pub fn new(name: &str) -> Result<Writer, Error> {
        let fd = memfd(name).map_err(|e| e.context(format!("segment writer {name:?}")))?;
        Ok(Writer {
            file: std::fs::File::from(fd),
            name: name.to_string(),
            len: 0,
        })
    }

    /// The number of bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Seals the size (`F_SEAL_SHRINK | F_SEAL_GROW`) and hands the segment
    /// over; nothing can be appended after this.
    pub fn finish(self) -> Result<Segment, Error> {
        let fd = OwnedFd::from(self.file);
        // SAFETY: plain fcntl on an fd we own.
        if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, SIZE_SEALS) } != 0 {
            return Err(errno(format!(
                "segment writer {:?}: sealing its size",
                self.name
            )));
        }
        let mut seg = Segment::open(fd)?;
        seg.name = self.name;
        Ok(seg)
    }
}

impl io::Write for Writer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
