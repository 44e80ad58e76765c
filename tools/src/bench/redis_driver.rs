//! The Redis driver: a hand-written RESP2 client on a tokio `TcpStream`. A pipeline of N
//! is N commands in one write, then N replies read back, as `redis-benchmark -P N`.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::bench::error::BenchError;
use crate::bench::keys::{write_key, COUNTER_KEY_PREFIX, KEY_PREFIX};
use crate::bench::lane::LanePlan;
use crate::bench::resp::{encode_command, parse_reply, Reply, RespError, BULK_BYTES_MAX, REPLY_LINE_BYTES_MAX};
use crate::bench::stats::LaneStats;
use crate::bench::workload::{Operation, Workload};

/// Starting size of a connection's read buffer: a pipeline of small replies fits.
const READ_BUFFER_BYTES_INITIAL: usize = 64 * 1024;
/// The read buffer grows only to hold one whole reply, which the parser bounds.
const READ_BUFFER_BYTES_MAX: usize = BULK_BYTES_MAX + REPLY_LINE_BYTES_MAX + 2;

/// One reply, copied out of the read buffer (its text stays readable until the next read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyKind {
    Simple,
    Error,
    Integer,
    Bulk,
    Null,
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("closed")]
    Closed,
    #[error(transparent)]
    Protocol(#[from] RespError),
}

/// Buffers a stream of replies; parses in place, compacting instead of allocating.
#[derive(Debug)]
pub struct ReplyReader {
    buffer: Vec<u8>,
    start: usize,
    end: usize,
    /// Where the last reply sat in `buffer`, for [`ReplyReader::last_text`].
    last: (usize, usize),
}

impl Default for ReplyReader {
    fn default() -> Self {
        ReplyReader {
            buffer: vec![0; READ_BUFFER_BYTES_INITIAL],
            start: 0,
            end: 0,
            last: (0, 0),
        }
    }
}

impl ReplyReader {
    pub async fn read_reply<R: AsyncRead + Unpin>(&mut self, stream: &mut R) -> Result<ReplyKind, ReadError> {
        loop {
            if let Some((reply, used)) = parse_reply(&self.buffer[self.start..self.end])? {
                let kind = match reply {
                    Reply::Simple(_) => ReplyKind::Simple,
                    Reply::Error(_) => ReplyKind::Error,
                    Reply::Integer(_) => ReplyKind::Integer,
                    Reply::Bulk(_) => ReplyKind::Bulk,
                    Reply::Null => ReplyKind::Null,
                };
                self.last = (self.start, self.start + used);
                self.start += used;
                return Ok(kind);
            }
            self.fill(stream).await?;
        }
    }

    /// The last reply as text, CRLF and type byte removed (for error messages).
    pub fn last_text(&self) -> String {
        let (start, end) = self.last;
        let line = &self.buffer[start..end];
        String::from_utf8_lossy(line.get(1..line.len().saturating_sub(2)).unwrap_or_default()).into_owned()
    }

    async fn fill<R: AsyncRead + Unpin>(&mut self, stream: &mut R) -> Result<(), ReadError> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        if self.end == self.buffer.len() {
            if self.start > 0 {
                self.buffer.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else {
                // One reply fills the buffer: the parser bounds replies, so this stops.
                let grown = (self.buffer.len() * 2).min(READ_BUFFER_BYTES_MAX);
                assert!(grown > self.buffer.len(), "a bounded reply always fits");
                self.buffer.resize(grown, 0);
            }
        }
        let read = stream.read(&mut self.buffer[self.end..]).await?;
        if read == 0 {
            return Err(ReadError::Closed);
        }
        self.end += read;
        Ok(())
    }
}

/// What a reply means for the request it answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// A GET of a key that does not exist: a success, counted apart.
    Miss,
    /// An error reply, or a reply of the wrong type for the command.
    Failure,
}

pub fn classify(operation: Operation, reply: ReplyKind) -> Outcome {
    match (operation, reply) {
        (Operation::Get, ReplyKind::Bulk) | (Operation::Set, ReplyKind::Simple) => Outcome::Success,
        (Operation::Incr, ReplyKind::Integer) => Outcome::Success,
        (Operation::Get, ReplyKind::Null) => Outcome::Miss,
        _ => Outcome::Failure,
    }
}

/// One RESP connection and the buffers it reuses for every batch.
#[derive(Debug)]
pub struct RedisConnection {
    address: String,
    stream: TcpStream,
    out: Vec<u8>,
    replies: ReplyReader,
    key: Vec<u8>,
    value: Vec<u8>,
    batch: Vec<Operation>,
}

impl RedisConnection {
    pub async fn connect(address: &str, value_bytes: usize, pipeline: usize) -> Result<RedisConnection, BenchError> {
        let stream = TcpStream::connect(address)
            .await
            .map_err(|source| BenchError::Connect {
                address: address.to_owned(),
                source,
            })?;
        // Small requests must not wait for Nagle's algorithm.
        stream.set_nodelay(true).map_err(|source| BenchError::Connect {
            address: address.to_owned(),
            source,
        })?;
        Ok(RedisConnection {
            address: address.to_owned(),
            stream,
            out: Vec::with_capacity(pipeline * (value_bytes + 64)),
            replies: ReplyReader::default(),
            key: Vec::with_capacity(32),
            value: vec![b'v'; value_bytes],
            batch: Vec::with_capacity(pipeline),
        })
    }

    pub async fn run_lane(&mut self, mut plan: LanePlan) -> Result<LaneStats, BenchError> {
        let mut stats = LaneStats::default();
        loop {
            let now = Instant::now();
            let size = plan.next_batch_size(now, &stats);
            if size == 0 {
                break;
            }
            let intended = plan.send_time(now).await;
            self.out.clear();
            self.batch.clear();
            for (operation, index) in plan.source.batch(size) {
                match operation {
                    Operation::Get => {
                        write_key(&mut self.key, KEY_PREFIX, index);
                        encode_command(&mut self.out, &[b"GET", &self.key]);
                    }
                    Operation::Set => {
                        write_key(&mut self.key, KEY_PREFIX, index);
                        encode_command(&mut self.out, &[b"SET", &self.key, &self.value]);
                    }
                    Operation::Incr => {
                        write_key(&mut self.key, COUNTER_KEY_PREFIX, index);
                        encode_command(&mut self.out, &[b"INCR", &self.key]);
                    }
                    // Settings refuse these workloads for redis:// already.
                    Operation::LockAcquire | Operation::LockRelease | Operation::BarrierWait => {
                        return Err(BenchError::EngramOnly {
                            workload: if operation == Operation::BarrierWait {
                                Workload::Barrier.name()
                            } else {
                                Workload::Lock.name()
                            },
                            target: format!("redis://{}", self.address),
                        })
                    }
                }
                self.batch.push(operation);
            }
            if self.batch.is_empty() {
                break;
            }
            self.stream
                .write_all(&self.out)
                .await
                .map_err(|source| self.failed(source))?;
            let measured = plan.measures(intended);
            for index in 0..self.batch.len() {
                let operation = self.batch[index];
                let reply = match self.replies.read_reply(&mut self.stream).await {
                    Ok(reply) => reply,
                    Err(ReadError::Io(source)) => return Err(self.failed(source)),
                    Err(ReadError::Closed) => {
                        return Err(BenchError::Closed {
                            address: self.address.clone(),
                        })
                    }
                    Err(ReadError::Protocol(error)) => {
                        return Err(BenchError::Protocol {
                            address: self.address.clone(),
                            reason: error.to_string(),
                        })
                    }
                };
                if !measured {
                    continue;
                }
                match classify(operation, reply) {
                    Outcome::Success => stats.record_success(intended.elapsed(), false),
                    Outcome::Miss => stats.record_success(intended.elapsed(), true),
                    Outcome::Failure => {
                        stats.record_error(|| format!("{operation:?}: {:?} {}", reply, self.replies.last_text()))
                    }
                }
            }
            if measured {
                plan.progress.add(self.batch.len() as u64);
            }
        }
        Ok(stats)
    }

    fn failed(&self, source: std::io::Error) -> BenchError {
        BenchError::Connection {
            address: self.address.clone(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn replies_cut_into_tiny_reads_come_out_whole() {
        let stream: &[u8] = b"+OK\r\n$5\r\nhello\r\n$-1\r\n:7\r\n-ERR wrong kind\r\n";
        // A reader that hands out 3 bytes at a time exercises every partial state.
        let mut reader = tokio_test_reader(stream, 3);
        let mut replies = ReplyReader {
            buffer: vec![0; 4],
            ..ReplyReader::default()
        };
        let mut kinds = Vec::new();
        for _ in 0..5 {
            kinds.push(replies.read_reply(&mut reader).await.unwrap());
        }
        assert_eq!(
            kinds,
            [
                ReplyKind::Simple,
                ReplyKind::Bulk,
                ReplyKind::Null,
                ReplyKind::Integer,
                ReplyKind::Error
            ]
        );
        assert_eq!(replies.last_text(), "ERR wrong kind");
        assert!(matches!(replies.read_reply(&mut reader).await, Err(ReadError::Closed)));
    }

    #[tokio::test]
    async fn a_bad_stream_is_a_protocol_error() {
        let mut reader: &[u8] = b"!nope\r\n";
        let result = ReplyReader::default().read_reply(&mut reader).await;
        assert!(matches!(result, Err(ReadError::Protocol(RespError::UnknownType(b'!')))));
    }

    #[test]
    fn replies_are_matched_to_their_commands() {
        assert_eq!(classify(Operation::Get, ReplyKind::Bulk), Outcome::Success);
        assert_eq!(classify(Operation::Get, ReplyKind::Null), Outcome::Miss);
        assert_eq!(classify(Operation::Set, ReplyKind::Simple), Outcome::Success);
        assert_eq!(classify(Operation::Incr, ReplyKind::Integer), Outcome::Success);
        assert_eq!(classify(Operation::Incr, ReplyKind::Error), Outcome::Failure);
        assert_eq!(classify(Operation::Set, ReplyKind::Null), Outcome::Failure);
    }

    /// An `AsyncRead` over `data` that returns at most `chunk` bytes per read.
    fn tokio_test_reader(data: &'static [u8], chunk: usize) -> impl AsyncRead + Unpin {
        let (mut writer, reader) = tokio::io::duplex(chunk);
        tokio::spawn(async move {
            for piece in data.chunks(chunk) {
                writer.write_all(piece).await.unwrap();
            }
        });
        reader
    }
}
