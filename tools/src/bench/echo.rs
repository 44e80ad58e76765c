//! The latency floor: a raw TCP ping-pong client (`tcp-echo://`) and the echo server it
//! talks to (`engram-bench echo-server`).

use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use tokio::time::Instant;

use crate::bench::error::BenchError;
use crate::bench::lane::LanePlan;
use crate::bench::stats::LaneStats;

/// Read size of the echo server; one read takes a whole small message.
const ECHO_BUFFER_BYTES: usize = 64 * 1024;

/// Accepts connections forever, one task each, echoing every byte back.
pub async fn serve(listener: TcpListener) -> Result<(), BenchError> {
    serve_spinning(listener, Duration::ZERO).await
}

/// As [`serve`], but each connection polls for its next message for `spin` (non-blocking
/// reads, yielding in between) before it waits for readiness.
pub async fn serve_spinning(listener: TcpListener, spin: Duration) -> Result<(), BenchError> {
    loop {
        let (stream, _) = listener.accept().await.map_err(BenchError::EchoServer)?;
        // Small messages must not wait for Nagle's algorithm, or the floor is 40 ms.
        let _ = stream.set_nodelay(true);
        tokio::spawn(echo(stream, spin));
    }
}

async fn echo(mut stream: TcpStream, spin: Duration) {
    let mut buffer = vec![0; ECHO_BUFFER_BYTES];
    loop {
        let mut polled = None;
        if !spin.is_zero() {
            let started = std::time::Instant::now();
            while started.elapsed() < spin {
                match stream.try_read(&mut buffer) {
                    Ok(read) => {
                        polled = Some(read);
                        break;
                    }
                    Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => tokio::task::yield_now().await,
                    Err(_) => return,
                }
            }
        }
        let read = match polled {
            Some(read) => read,
            None => match stream.read(&mut buffer).await {
                Ok(read) => read,
                Err(_) => return,
            },
        };
        if read == 0 || stream.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}

/// One ping-pong connection: sends `value_bytes` bytes, waits for as many back.
#[derive(Debug)]
pub struct EchoConnection {
    address: String,
    stream: TcpStream,
    message: Vec<u8>,
    reply: Vec<u8>,
    /// How long to poll for the reply (non-blocking reads, yielding in between) before
    /// waiting for readiness.
    spin: Duration,
}

impl EchoConnection {
    pub async fn connect(address: &str, value_bytes: usize, spin: Duration) -> Result<EchoConnection, BenchError> {
        let connect_error = |source| BenchError::Connect {
            address: address.to_owned(),
            source,
        };
        let stream = TcpStream::connect(address).await.map_err(connect_error)?;
        stream.set_nodelay(true).map_err(connect_error)?;
        Ok(EchoConnection {
            address: address.to_owned(),
            stream,
            message: vec![b'e'; value_bytes],
            reply: vec![0; value_bytes],
            spin,
        })
    }

    pub async fn run_lane(&mut self, mut plan: LanePlan) -> Result<LaneStats, BenchError> {
        debug_assert_eq!(plan.pipeline, 1, "the echo target is ping-pong only");
        let mut stats = LaneStats::default();
        loop {
            let now = Instant::now();
            if plan.next_batch_size(now, &stats) == 0 {
                break;
            }
            let intended = plan.send_time(now).await;
            // The source only paces the loop here; there is no key.
            let _ = plan.source.next_request();
            let failed = |source| BenchError::Connection {
                address: self.address.clone(),
                source,
            };
            self.stream.write_all(&self.message).await.map_err(failed)?;
            let mut received = 0;
            if !self.spin.is_zero() {
                let started = std::time::Instant::now();
                while received < self.reply.len() && started.elapsed() < self.spin {
                    match self.stream.try_read(&mut self.reply[received..]) {
                        Ok(0) => {
                            return Err(BenchError::Closed {
                                address: self.address.clone(),
                            })
                        }
                        Ok(read) => received += read,
                        Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => tokio::task::yield_now().await,
                        Err(source) => return Err(failed(source)),
                    }
                }
            }
            match self.stream.read_exact(&mut self.reply[received..]).await {
                Ok(_) => {}
                Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => {
                    return Err(BenchError::Closed {
                        address: self.address.clone(),
                    })
                }
                Err(source) => return Err(failed(source)),
            }
            if plan.measures(intended) {
                stats.record_success(intended.elapsed(), false);
                plan.progress.add(1);
            }
        }
        Ok(stats)
    }
}
