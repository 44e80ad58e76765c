// Engram patch: multishot socket receives into buffers the ring owns.
//
// Upstream reads a socket with a `recv` system call and, when that finds nothing
// or leaves the caller's buffer unfilled, arms a one-shot poll; a busy connection
// costs a poll and a system call per read. A multishot receive is armed once and
// posts a completion, carrying the bytes in one of the buffers below, each time
// data arrives; reading copies them out and gives the buffer back at once.
//
// The buffers are a "provided buffer ring" (`IORING_REGISTER_PBUF_RING`, Linux
// 5.19; multishot receive, Linux 6.0). When the kernel refuses either, the stream
// keeps upstream's path.

use std::{
    cell::Cell,
    collections::VecDeque,
    io,
    os::unix::io::RawFd,
    ptr::NonNull,
    rc::Rc,
    sync::atomic::{AtomicU16, Ordering},
};

use crate::{iou::cqe::CompletionFlags, uring_sys};

/// Bytes in each provided buffer: one completion carries at most this much.
pub(crate) const PROVIDED_BUFFER_BYTES: usize = 16 * 1024;
/// Buffers in the ring (a power of two, as the kernel requires). While every one
/// holds received bytes that no task has read yet, receives stop with `ENOBUFS`
/// and streams fall back to upstream's path until buffers come back.
pub(crate) const PROVIDED_BUFFER_COUNT: u16 = 256;
/// The buffer group multishot receives select from; one group per ring.
pub(crate) const PROVIDED_BUFFER_GROUP: u16 = 0;
/// Unread completions one receive may hold before it is cancelled, to be armed again
/// once they are read: without this bound a socket whose reader lags would drain
/// into the ring, which no TCP window limits, and take the buffers of all the others.
/// The cancel is issued when the reactor reaps the completion that reaches the bound,
/// so a burst that arrives before then can take more.
pub(crate) const RECEIVED_CHUNKS_MAX: usize = 16;
/// Buffers the kernel must hold for a stream to arm a receive; below this, reads go
/// through upstream's poll and `recv` rather than fail at once with `ENOBUFS`.
const ARM_FREE_BUFFERS_MIN: u16 = 32;

const IORING_REGISTER_PBUF_RING: libc::c_uint = 22;
const IORING_UNREGISTER_PBUF_RING: libc::c_uint = 23;
/// `sqe->ioprio` flag of a receive: keep it armed after each completion.
pub(crate) const IORING_RECV_MULTISHOT: u16 = 1 << 1;
/// Multishot receive is in Linux from 6.0; 6.1 keeps a receive's buffer group when it
/// is retried from io-wq.
const MULTISHOT_RECV_KERNEL: (u32, u32) = (6, 1);

/// `struct io_uring_buf_reg`.
#[repr(C)]
struct BufferRingRegistration {
    ring_addr: u64,
    ring_entries: u32,
    bgid: u16,
    flags: u16,
    resv: [u64; 3],
}

/// `struct io_uring_buf`; the ring's tail overlays `resv` of the first entry.
#[repr(C)]
struct BufferRingEntry {
    addr: u64,
    len: u32,
    bid: u16,
    resv: u16,
}

/// The ring of buffers one io_uring receives into, shared by the ring and the
/// receives that hold its buffers (which may outlive the ring's registration).
pub(crate) struct ProvidedBuffers {
    entries: NonNull<BufferRingEntry>,
    entries_bytes: usize,
    /// The buffers themselves; the kernel writes them, so Rust holds no reference
    /// to them beyond a read of bytes a completion has handed over.
    memory: NonNull<u8>,
    tail: Cell<u16>,
    /// Buffers given to the kernel and not yet handed back by a completion.
    in_kernel: Cell<u16>,
}

impl std::fmt::Debug for ProvidedBuffers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProvidedBuffers")
            .field("tail", &self.tail.get())
            .field("in_kernel", &self.in_kernel.get())
            .finish()
    }
}

impl ProvidedBuffers {
    /// Registers a buffer ring with the io_uring `ring_fd`, all buffers given to it.
    pub(crate) fn register(ring_fd: RawFd) -> io::Result<Rc<Self>> {
        if !kernel_at_least(MULTISHOT_RECV_KERNEL) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "multishot receive needs Linux 6.1",
            ));
        }
        let buffers = Self::allocate()?;
        let registration = BufferRingRegistration {
            ring_addr: buffers.entries.as_ptr() as u64,
            ring_entries: PROVIDED_BUFFER_COUNT as u32,
            bgid: PROVIDED_BUFFER_GROUP,
            flags: 0,
            resv: [0; 3],
        };
        // SAFETY: the registration points at a page-aligned mapping of
        // `PROVIDED_BUFFER_COUNT` entries that lives as long as `buffers`, which the
        // ring keeps until it unregisters (`unregister`).
        let registered = unsafe {
            uring_sys::syscalls::io_uring_register(
                ring_fd,
                IORING_REGISTER_PBUF_RING,
                &registration as *const _ as *const libc::c_void,
                1,
            )
        };
        if registered < 0 {
            return Err(io::Error::last_os_error());
        }
        for id in 0..PROVIDED_BUFFER_COUNT {
            buffers.give_back(id);
        }
        Ok(Rc::new(buffers))
    }

    fn allocate() -> io::Result<Self> {
        let entries_bytes = (PROVIDED_BUFFER_COUNT as usize
            * std::mem::size_of::<BufferRingEntry>())
        .max(page_size());
        // SAFETY: an anonymous private mapping, checked below and unmapped in `drop`.
        let mapped = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                entries_bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if mapped == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a non-zero size; freed with the same layout in `drop`.
        let memory = unsafe { std::alloc::alloc_zeroed(Self::memory_layout()) };
        let Some(memory) = NonNull::new(memory) else {
            // SAFETY: the mapping made above, not registered yet.
            unsafe { libc::munmap(mapped, entries_bytes) };
            return Err(io::Error::from(io::ErrorKind::OutOfMemory));
        };
        Ok(ProvidedBuffers {
            entries: NonNull::new(mapped.cast()).expect("mmap returned null"),
            entries_bytes,
            memory,
            tail: Cell::new(0),
            in_kernel: Cell::new(0),
        })
    }

    fn memory_layout() -> std::alloc::Layout {
        std::alloc::Layout::from_size_align(
            PROVIDED_BUFFER_COUNT as usize * PROVIDED_BUFFER_BYTES,
            page_size(),
        )
        .expect("the buffers' layout")
    }

    /// Whether the kernel holds enough buffers for another stream to arm a receive.
    pub(crate) fn can_arm(&self) -> bool {
        self.in_kernel.get() >= ARM_FREE_BUFFERS_MIN
    }

    /// Takes the ring's buffers away from the kernel; receives still armed then end
    /// with `ENOBUFS`. Called by the owning ring while its descriptor is open. Where
    /// the kernel refuses, the buffers are never freed: it may still write them
    /// while it tears the ring down.
    pub(crate) fn unregister(buffers: &Rc<Self>, ring_fd: RawFd) {
        let registration = BufferRingRegistration {
            ring_addr: 0,
            ring_entries: 0,
            bgid: PROVIDED_BUFFER_GROUP,
            flags: 0,
            resv: [0; 3],
        };
        // SAFETY: plain system call on a descriptor the caller owns.
        let unregistered = unsafe {
            uring_sys::syscalls::io_uring_register(
                ring_fd,
                IORING_UNREGISTER_PBUF_RING,
                &registration as *const _ as *const libc::c_void,
                1,
            )
        };
        if unregistered < 0 {
            log::warn!(
                "could not take the provided buffers back from io_uring ({}): leaking them",
                io::Error::last_os_error()
            );
            std::mem::forget(buffers.clone());
        }
    }

    /// The first `len` received bytes of buffer `id`, which a completion has handed
    /// over: the kernel writes it again only after `give_back`.
    fn bytes(&self, id: u16, len: usize) -> &[u8] {
        assert!(id < PROVIDED_BUFFER_COUNT, "buffer id {id} out of the ring");
        // SAFETY: within the allocation; the kernel no longer writes this buffer.
        unsafe {
            std::slice::from_raw_parts(
                self.memory.as_ptr().add(id as usize * PROVIDED_BUFFER_BYTES),
                len.min(PROVIDED_BUFFER_BYTES),
            )
        }
    }

    /// Notes that a completion handed a buffer over.
    fn taken(&self) {
        self.in_kernel.set(self.in_kernel.get().saturating_sub(1));
    }

    /// Returns buffer `id` to the kernel for a later receive.
    fn give_back(&self, id: u16) {
        assert!(id < PROVIDED_BUFFER_COUNT, "buffer id {id} out of the ring");
        let tail = self.tail.get();
        let slot = (tail & (PROVIDED_BUFFER_COUNT - 1)) as usize;
        // SAFETY: `slot` is within the mapping; the kernel reads an entry only once
        // the tail below covers it, and the tail field (the first entry's `resv`)
        // is written only through the atomic.
        unsafe {
            let entry = self.entries.as_ptr().add(slot);
            (*entry).addr = self.memory.as_ptr().add(id as usize * PROVIDED_BUFFER_BYTES) as u64;
            (*entry).len = PROVIDED_BUFFER_BYTES as u32;
            (*entry).bid = id;
            self.ring_tail().store(tail.wrapping_add(1), Ordering::Release);
        }
        self.tail.set(tail.wrapping_add(1));
        self.in_kernel.set(self.in_kernel.get() + 1);
    }

    fn ring_tail(&self) -> &AtomicU16 {
        // SAFETY: `resv` of the first entry is the ring's tail, 2-byte aligned in
        // the mapping, shared with the kernel, which only reads it.
        unsafe { &*(std::ptr::addr_of_mut!((*self.entries.as_ptr()).resv) as *const AtomicU16) }
    }
}

impl Drop for ProvidedBuffers {
    fn drop(&mut self) {
        // SAFETY: the mapping and allocation made in `allocate`, no longer registered
        // with a ring (the ring unregisters before it closes, and holds an `Rc` until
        // then; where that fails, this never runs).
        unsafe {
            libc::munmap(self.entries.as_ptr().cast(), self.entries_bytes);
            std::alloc::dealloc(self.memory.as_ptr(), Self::memory_layout());
        }
    }
}

/// Why a multishot receive is no longer armed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReceiveEnd {
    /// The peer closed its side: every later read returns 0.
    Closed,
    /// The kernel stopped it without an error (a full completion queue, say): arm
    /// another once the bytes received so far are read.
    Stopped,
    /// Every buffer of the ring held unread bytes: arm another once the bytes
    /// received so far are read and the ring has buffers again, and until then read
    /// as upstream does rather than wait for buffers that other streams hold.
    OutOfBuffers,
    /// The receive failed with this `errno`.
    Failed(i32),
}

/// What a multishot receive has delivered and its reader has not taken yet.
#[derive(Debug)]
pub(crate) struct Received {
    buffers: Rc<ProvidedBuffers>,
    /// Buffer id and byte count of each completion, oldest first.
    chunks: VecDeque<(u16, usize)>,
    /// Bytes of the oldest chunk already read.
    read_from_front: usize,
    end: Option<ReceiveEnd>,
    /// Whether the receive was cancelled for holding `RECEIVED_CHUNKS_MAX` chunks.
    cancelled: bool,
}

impl Received {
    pub(crate) fn new(buffers: Rc<ProvidedBuffers>) -> Self {
        Received {
            buffers,
            chunks: VecDeque::new(),
            read_from_front: 0,
            end: None,
            cancelled: false,
        }
    }

    /// Takes one completion of the receive; true when the receive should be cancelled,
    /// as it holds `RECEIVED_CHUNKS_MAX` unread chunks.
    pub(crate) fn complete(&mut self, result: i32, flags: u32) -> bool {
        let flags_known = CompletionFlags::from_bits_truncate(flags);
        if flags_known.contains(CompletionFlags::BUFFER_SHIFT) {
            let id = (flags >> 16) as u16;
            self.buffers.taken();
            match usize::try_from(result) {
                Ok(len) if len > 0 => self.chunks.push_back((id, len)),
                _ => self.buffers.give_back(id),
            }
        }
        if !flags_known.contains(CompletionFlags::MORE) {
            self.end = Some(match result {
                0 => ReceiveEnd::Closed,
                error if error == -libc::ENOBUFS => ReceiveEnd::OutOfBuffers,
                error if error == -libc::ECANCELED => ReceiveEnd::Stopped,
                error if error < 0 => ReceiveEnd::Failed(-error),
                _ => ReceiveEnd::Stopped,
            });
            return false;
        }
        let cancel = !self.cancelled && self.chunks.len() >= RECEIVED_CHUNKS_MAX;
        self.cancelled |= cancel;
        cancel
    }

    /// Copies received bytes into `into`, oldest first, giving every buffer it
    /// empties back to the kernel; returns how many.
    pub(crate) fn read(&mut self, into: &mut [u8]) -> usize {
        let mut copied = 0;
        while copied < into.len() {
            let Some(&(id, len)) = self.chunks.front() else { break };
            let unread = &self.buffers.bytes(id, len)[self.read_from_front..];
            let n = unread.len().min(into.len() - copied);
            into[copied..copied + n].copy_from_slice(&unread[..n]);
            copied += n;
            self.read_from_front += n;
            if self.read_from_front == len {
                self.chunks.pop_front();
                self.read_from_front = 0;
                self.buffers.give_back(id);
            }
        }
        copied
    }

    /// Copies received bytes into `into` without taking them.
    pub(crate) fn peek(&self, into: &mut [u8]) -> usize {
        let mut copied = 0;
        let mut skip = self.read_from_front;
        for &(id, len) in &self.chunks {
            if copied == into.len() {
                break;
            }
            let unread = &self.buffers.bytes(id, len)[skip..];
            skip = 0;
            let n = unread.len().min(into.len() - copied);
            into[copied..copied + n].copy_from_slice(&unread[..n]);
            copied += n;
        }
        copied
    }

    /// Why the receive ended, once it has and its bytes are all read.
    pub(crate) fn drained_end(&self) -> Option<ReceiveEnd> {
        self.end.filter(|_| self.chunks.is_empty())
    }
}

impl Drop for Received {
    fn drop(&mut self) {
        for (id, _) in self.chunks.drain(..) {
            self.buffers.give_back(id);
        }
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).unwrap_or(4096).max(4096)
}

/// Whether the running kernel's release is at least `(major, minor)`.
fn kernel_at_least(wanted: (u32, u32)) -> bool {
    // SAFETY: `uname` fills the zeroed struct it is given.
    let mut name: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut name) } != 0 {
        return false;
    }
    // SAFETY: `release` is NUL-terminated by `uname`.
    let release = unsafe { std::ffi::CStr::from_ptr(name.release.as_ptr()) };
    let mut numbers = release
        .to_str()
        .unwrap_or("")
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|part| part.parse::<u32>().ok());
    let major = numbers.next().unwrap_or(0);
    let minor = numbers.next().unwrap_or(0);
    (major, minor) >= wanted
}
