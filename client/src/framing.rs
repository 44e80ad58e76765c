//! Reading whole frames from a byte stream into one reusable buffer.

use engram_proto::{split_frame, FrameHeader, Split};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::error::ConnectionError;
use crate::limits::{READ_BUFFER_BYTES_INITIAL, READ_BUFFER_BYTES_RETAINED_MAX};

/// Buffers a stream and hands out one validated frame at a time. The buffer only grows to
/// the size `split_frame` asks for, which it computes from a header it has already checked
/// against `FRAME_PAYLOAD_BYTES_MAX`, so a peer cannot make it allocate more.
pub struct FrameReader {
    buffer: Vec<u8>,
    /// Start of the bytes not yet handed out.
    start: usize,
    /// End of the bytes read from the stream.
    end: usize,
}

impl Default for FrameReader {
    fn default() -> Self {
        FrameReader {
            buffer: vec![0; READ_BUFFER_BYTES_INITIAL],
            start: 0,
            end: 0,
        }
    }
}

impl FrameReader {
    /// The next frame's header and payload, or `None` when the peer closed the stream
    /// between frames. The payload borrows the buffer until the next call.
    pub async fn next_frame<R: AsyncRead + Unpin>(
        &mut self,
        stream: &mut R,
    ) -> Result<Option<(FrameHeader, &[u8])>, ConnectionError> {
        loop {
            let frame_bytes =
                match split_frame(&self.buffer[self.start..self.end]).map_err(ConnectionError::Protocol)? {
                    Split::Frame { header, payload } => {
                        let frame_start = self.start;
                        self.start += payload.end;
                        let payload = frame_start + payload.start..frame_start + payload.end;
                        return Ok(Some((header, &self.buffer[payload])));
                    }
                    Split::Incomplete { frame_bytes } => frame_bytes,
                };
            self.make_room(frame_bytes);
            let read = stream.read(&mut self.buffer[self.end..]).await?;
            if read == 0 {
                return if self.start == self.end {
                    Ok(None)
                } else {
                    Err(ConnectionError::Truncated)
                };
            }
            self.end += read;
        }
    }

    /// Ensures the buffer can hold a frame of `frame_bytes` starting at `start`.
    fn make_room(&mut self, frame_bytes: usize) {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            if self.buffer.len() > READ_BUFFER_BYTES_RETAINED_MAX && frame_bytes <= READ_BUFFER_BYTES_INITIAL {
                self.buffer = vec![0; READ_BUFFER_BYTES_INITIAL];
            }
        }
        if self.start + frame_bytes > self.buffer.len() {
            self.buffer.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if frame_bytes > self.buffer.len() {
            self.buffer.resize(frame_bytes, 0);
        }
        // A full buffer would make `read` return 0 and look like a closed stream; the
        // frame is bigger than what is buffered, so there is always room here.
        debug_assert!(self.end < self.buffer.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use engram_proto::{encode_message, FrameKind, Response};

    fn frame(request_id: u64, value: Vec<u8>) -> Vec<u8> {
        let mut out = Vec::new();
        encode_message(
            FrameKind::Response,
            request_id,
            0,
            &Response::Value { value, version: 1 },
            &mut out,
        )
        .unwrap();
        out
    }

    #[tokio::test]
    async fn frames_split_across_reads_and_larger_than_the_buffer() {
        let mut stream = Vec::new();
        stream.extend(frame(1, b"small".to_vec()));
        stream.extend(frame(2, vec![7; READ_BUFFER_BYTES_INITIAL * 3]));
        stream.extend(frame(3, b"after".to_vec()));
        let (mut client, mut server) = tokio::io::duplex(1000);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            server.write_all(&stream).await.unwrap();
        });
        let mut reader = FrameReader::default();
        let mut seen = Vec::new();
        while let Some((header, payload)) = reader.next_frame(&mut client).await.unwrap() {
            let response: Response = engram_proto::decode_payload(payload).unwrap();
            let Response::Value { value, .. } = response else {
                panic!("{response:?}")
            };
            seen.push((header.request_id, value.len()));
        }
        writer.await.unwrap();
        assert_eq!(seen, vec![(1, 5), (2, READ_BUFFER_BYTES_INITIAL * 3), (3, 5)]);
    }

    #[tokio::test]
    async fn close_inside_a_frame_is_an_error_and_garbage_is_refused() {
        let whole = frame(1, b"x".to_vec());
        let mut reader = FrameReader::default();
        let mut cut: &[u8] = &whole[..whole.len() - 1];
        assert!(matches!(
            reader.next_frame(&mut cut).await,
            Err(ConnectionError::Truncated)
        ));
        let mut reader = FrameReader::default();
        let mut garbage: &[u8] = &[0xAB; 64];
        assert!(matches!(
            reader.next_frame(&mut garbage).await,
            Err(ConnectionError::Protocol(_))
        ));
    }
}
