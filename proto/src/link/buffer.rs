//! A stream's read buffer, handed out one validated frame at a time: what every reader of
//! frames (a link, a server's connection loop) reads into.
//!
//! The buffer grows only to the size `split_frame` asks for, which it computes from a
//! header it has already checked against `FRAME_PAYLOAD_BYTES_MAX`, so a peer cannot
//! make it allocate more by claiming a large frame; with a growth step it grows by at
//! most that per read, so memory follows the bytes that actually arrive.

use crate::codec::{split_frame, Split};
use crate::error::ProtocolError;
use crate::frame::{FrameHeader, FRAME_HEADER_BYTES};
use crate::limits::{HELLO_PAYLOAD_BYTES_MAX, LINK_READ_BUFFER_BYTES_INITIAL, LINK_READ_BUFFER_BYTES_RETAINED_MAX};
use crate::link::LinkError;

/// How a [`FrameBuffer`] sizes itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameBufferSizes {
    /// Size of a new buffer, and what an idle buffer shrinks back to.
    pub initial_bytes: usize,
    /// Most the buffer grows by per read for a frame larger than it; `usize::MAX` grows
    /// to the whole frame at once (one read can then take all of it).
    pub growth_bytes_max: usize,
    /// An idle buffer larger than this is shrunk back to `initial_bytes`.
    pub retained_bytes_max: usize,
}

impl FrameBufferSizes {
    /// A link's: small, grown to a large frame at once, kept up to a quarter MiB.
    pub const LINK: FrameBufferSizes = FrameBufferSizes {
        initial_bytes: LINK_READ_BUFFER_BYTES_INITIAL,
        growth_bytes_max: usize::MAX,
        retained_bytes_max: LINK_READ_BUFFER_BYTES_RETAINED_MAX,
    };

    /// `chunk_bytes` to start with, grown and kept by the same step.
    pub const fn chunked(chunk_bytes: usize) -> FrameBufferSizes {
        FrameBufferSizes {
            initial_bytes: chunk_bytes,
            growth_bytes_max: chunk_bytes,
            retained_bytes_max: chunk_bytes,
        }
    }
}

/// Bytes read from a stream, not yet handed out as frames.
pub struct FrameBuffer {
    buffer: Vec<u8>,
    /// Start of the bytes not yet handed out.
    start: usize,
    /// End of the bytes read from the stream.
    end: usize,
    /// Bytes the frame at `start` needs in all, as far as its validated header says
    /// (just the header's until one is whole).
    wanted: usize,
    sizes: FrameBufferSizes,
    /// Refuses a frame claiming more before its bytes are waited for: a handshake's
    /// Hello is small, whatever the frame limit.
    hello_only: bool,
}

impl FrameBuffer {
    pub fn new(sizes: FrameBufferSizes) -> FrameBuffer {
        FrameBuffer {
            buffer: vec![0; sizes.initial_bytes.max(FRAME_HEADER_BYTES)],
            start: 0,
            end: 0,
            wanted: FRAME_HEADER_BYTES,
            sizes,
            hello_only: false,
        }
    }

    /// A buffer for a connection whose Hello is not accepted yet: it holds one frame of
    /// at most `HELLO_PAYLOAD_BYTES_MAX` (a longer claim is refused as soon as its header
    /// arrives), until [`FrameBuffer::open`] lifts the limit.
    pub fn for_handshake() -> FrameBuffer {
        let mut buffer = FrameBuffer::new(FrameBufferSizes::chunked(FRAME_HEADER_BYTES + HELLO_PAYLOAD_BYTES_MAX));
        buffer.hello_only = true;
        buffer
    }

    /// The handshake is done: frames up to the protocol's limit, read with `sizes`.
    pub fn open(&mut self, sizes: FrameBufferSizes) {
        self.hello_only = false;
        self.sizes = sizes;
    }

    /// The next whole frame's header (validated) and payload, or `None` until
    /// more bytes arrive. The payload borrows the buffer until the next call. An error
    /// means framing is lost: nothing later on the stream can be trusted.
    pub fn next_frame(&mut self) -> Result<Option<(FrameHeader, &[u8])>, ProtocolError> {
        let split = split_frame(&self.buffer[self.start..self.end])?;
        let frame_bytes = match &split {
            Split::Incomplete { frame_bytes } => *frame_bytes,
            Split::Frame { payload, .. } => payload.end,
        };
        if self.hello_only && frame_bytes > FRAME_HEADER_BYTES + HELLO_PAYLOAD_BYTES_MAX {
            return Err(ProtocolError::HelloTooLarge {
                length: (frame_bytes - FRAME_HEADER_BYTES) as u64,
            });
        }
        match split {
            Split::Incomplete { frame_bytes } => {
                self.wanted = frame_bytes;
                Ok(None)
            }
            Split::Frame { header, payload } => {
                let frame_start = self.start;
                self.start += payload.end;
                self.wanted = FRAME_HEADER_BYTES;
                Ok(Some((
                    header,
                    &self.buffer[frame_start + payload.start..frame_start + payload.end],
                )))
            }
        }
    }

    /// The payloads of the whole frames buffered after the ones handed out, without
    /// handing them out: a look ahead, for work that can start before each frame's turn
    /// (loading what they will read into the cache). Stops at the first frame that is
    /// not whole or whose header is refused; [`FrameBuffer::next_frame`] reports that
    /// when its turn comes.
    pub fn whole_frames_ahead(&self) -> impl Iterator<Item = &[u8]> {
        let mut rest = &self.buffer[self.start..self.end];
        std::iter::from_fn(move || match split_frame(rest) {
            Ok(Split::Frame { payload, .. }) => {
                let frame = &rest[payload.clone()];
                rest = &rest[payload.end..];
                Some(frame)
            }
            _ => None,
        })
    }

    /// Where the next read goes: never empty, so a read of 0 bytes always means the end
    /// of the stream. Call [`FrameBuffer::filled`] with what the read took.
    pub fn read_buffer(&mut self) -> &mut [u8] {
        self.make_room();
        &mut self.buffer[self.end..]
    }

    /// Counts `bytes` read into [`FrameBuffer::read_buffer`].
    pub fn filled(&mut self, bytes: usize) {
        debug_assert!(self.end + bytes <= self.buffer.len(), "read past the read buffer");
        self.end = (self.end + bytes).min(self.buffer.len());
    }

    /// Bytes read but not handed out: a partial frame, or frames not asked for yet.
    pub fn buffered_bytes(&self) -> usize {
        self.end - self.start
    }

    /// Why the stream's end is an error: a close between frames, or inside one.
    pub fn end_of_stream(&self) -> LinkError {
        match self.buffered_bytes() {
            0 => LinkError::Closed,
            buffered_bytes => LinkError::Truncated { buffered_bytes },
        }
    }

    /// Moves what is buffered to the front, and sizes the buffer for the frame being read.
    fn make_room(&mut self) {
        let buffered = self.end - self.start;
        if buffered == 0 {
            self.start = 0;
            self.end = 0;
            if self.buffer.len() > self.sizes.retained_bytes_max {
                self.buffer = vec![0; self.sizes.initial_bytes.max(FRAME_HEADER_BYTES)];
            }
        }
        if self.start > 0 {
            // At most one partial frame: a read then always gets the rest of the buffer.
            self.buffer.copy_within(self.start..self.end, 0);
            self.start = 0;
            self.end = buffered;
        }
        // At least one byte of room, so a read never looks like the end of the stream.
        let step = buffered.saturating_add(self.sizes.growth_bytes_max.max(1));
        let target = self.wanted.max(buffered + 1).min(step);
        if target > self.buffer.len() {
            self.buffer.resize(target, 0);
        }
    }
}
