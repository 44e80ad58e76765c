//! The latency floor: a raw TCP ping-pong client (`tcp-echo://`) and the echo server it
//! talks to (`engram-bench echo-server`).

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
    loop {
        let (stream, _) = listener.accept().await.map_err(BenchError::EchoServer)?;
        // Small messages must not wait for Nagle's algorithm, or the floor is 40 ms.
        let _ = stream.set_nodelay(true);
        tokio::spawn(echo(stream));
    }
}

async fn echo(mut stream: TcpStream) {
    let mut buffer = vec![0; ECHO_BUFFER_BYTES];
    loop {
        let read = match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        if stream.write_all(&buffer[..read]).await.is_err() {
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
}

impl EchoConnection {
    pub async fn connect(address: &str, value_bytes: usize) -> Result<EchoConnection, BenchError> {
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
            match self.stream.read_exact(&mut self.reply).await {
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
