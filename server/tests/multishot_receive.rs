//! Tests of the multishot receive that Engram's glommio patch gives a TCP stream
//! (vendor/README.md): the kernel receives into a ring of buffers shared by all of a
//! reactor's sockets, a read copies out of them, and a stream falls back to polling
//! and `recv` once the ring runs out. A mistake here loses, repeats or reorders bytes,
//! misses the end of a stream, or keeps a dropped connection open.
//!
//! Every test runs its sides on threads of their own and fails through a watchdog
//! rather than hang when a read is never woken.

mod common;

use common::panic_text;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::panic::AssertUnwindSafe;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use engram_server::runtime::SHARD_IO_MEMORY_BYTES;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::{LocalExecutorBuilder, Placement};

/// Hang detector, not a timing criterion: a healthy run takes a small fraction of it.
const WATCHDOG_SECONDS: u64 = 60;
/// More than the ring's buffers hold (256 of 16 KiB), so that a reader that does not
/// keep up runs the ring dry.
const LARGE_TRANSFER_BYTES: usize = 12 * 1024 * 1024;
/// The sizes of the reader's successive buffers: smaller than, equal to and larger
/// than one provided buffer, and not dividing it.
const READ_SIZES_BYTES: [usize; 6] = [1, 7, 1_000, 16 * 1024, 40_000, 100_003];
/// How long the lagging readers let the ring fill before they read.
const FALL_BEHIND_MILLIS: u64 = 300;
/// Connections whose reader lags: together their receives' bounds (16 completions
/// each) exceed the ring's 256 buffers.
const LAGGING_CONNECTIONS: usize = 24;
/// What each lagging connection sends: more than its receive's bound holds.
const LAGGING_BYTES: usize = 1024 * 1024;
/// Round trips of the connection that keeps talking while another hogs the ring.
const ROUND_TRIPS: u64 = 2_000;

/// The byte at `offset` of every transfer, so that a lost, repeated or reordered byte
/// shows where it happened.
fn pattern(offset: usize) -> u8 {
    (offset.wrapping_mul(31) ^ (offset >> 11)) as u8
}

/// Runs `serve` on a glommio executor configured as a shard is and `peer` on a plain
/// thread, given the executor's listening address; fails on a panic in either and
/// when both have not finished within the watchdog.
fn run<S, F>(test: &str, serve: S, peer: impl FnOnce(SocketAddr) + Send + 'static)
where
    S: FnOnce(glommio::net::TcpListener) -> F + Send + 'static,
    F: std::future::Future<Output = ()>,
{
    let (done, finished) = mpsc::channel();
    let (address_sender, address) = mpsc::channel();
    let server_done = done.clone();
    std::thread::spawn(move || {
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let executor = LocalExecutorBuilder::new(Placement::Unbound)
                .name("server")
                .io_memory(SHARD_IO_MEMORY_BYTES)
                .make()
                .expect("an executor (io_uring and a memlock limit are needed)");
            executor.run(async move {
                let listener = glommio::net::TcpListener::bind("127.0.0.1:0").expect("bind");
                address_sender
                    .send(listener.local_addr().expect("address"))
                    .expect("test waits");
                serve(listener).await;
            });
        }));
        let _ = server_done.send(("server", outcome.err().map(|panic| panic_text(&*panic))));
    });
    std::thread::spawn(move || {
        let outcome =
            std::panic::catch_unwind(AssertUnwindSafe(|| peer(address.recv().expect("the server's address"))));
        let _ = done.send(("peer", outcome.err().map(|panic| panic_text(&*panic))));
    });
    let deadline = Instant::now() + Duration::from_secs(WATCHDOG_SECONDS);
    for _ in 0..2 {
        match finished.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok((_, None)) => {}
            Ok((side, Some(panic))) => panic!("{test}: the {side} failed: {panic}"),
            Err(_) => panic!("{test}: not finished in {WATCHDOG_SECONDS} s: a read was never woken"),
        }
    }
}

/// Writes `bytes` of the pattern in writes of uneven sizes.
fn send_pattern(stream: &mut std::net::TcpStream, bytes: usize) {
    let mut offset = 0;
    let mut write = 0;
    while offset < bytes {
        let len = (1 + write * 7919 % 65_536).min(bytes - offset);
        let chunk: Vec<u8> = (offset..offset + len).map(pattern).collect();
        stream.write_all(&chunk).expect("send");
        offset += len;
        write += 1;
    }
}

/// Reads the pattern until the peer closes, in reads of every size of
/// `READ_SIZES_BYTES` in turn; returns how many bytes came.
async fn receive_pattern(stream: &mut glommio::net::TcpStream) -> usize {
    let mut offset = 0;
    let mut buffer = vec![0; *READ_SIZES_BYTES.iter().max().unwrap()];
    for read in 0.. {
        let size = READ_SIZES_BYTES[read % READ_SIZES_BYTES.len()];
        let got = stream.read(&mut buffer[..size]).await.expect("read");
        if got == 0 {
            break;
        }
        for (index, byte) in buffer[..got].iter().enumerate() {
            assert_eq!(*byte, pattern(offset + index), "byte {} of the stream", offset + index);
        }
        offset += got;
    }
    offset
}

/// Whether this kernel receives multishot into provided buffers (Linux 6.1 on).
fn kernel_receives_multishot() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("the kernel's release");
    let mut numbers = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|part| part.parse::<u32>().unwrap_or(0));
    (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0)) >= (6, 1)
}

/// Sends `LARGE_TRANSFER_BYTES` of the pattern over one connection to an executor
/// that receives through the ring or not, and checks every byte it reads.
fn transfer_test(test: &str, receive_through_ring: bool) {
    run(
        test,
        move |listener| async move {
            glommio::net::set_receive_through_ring(receive_through_ring);
            let mut stream = listener.accept().await.expect("accept");
            assert_eq!(
                stream.receives_through_ring(),
                receive_through_ring && kernel_receives_multishot(),
                "a multishot receive is armed exactly where it is on and the kernel has it"
            );
            assert_eq!(receive_pattern(&mut stream).await, LARGE_TRANSFER_BYTES);
        },
        |address| {
            let mut stream = std::net::TcpStream::connect(address).expect("connect");
            send_pattern(&mut stream, LARGE_TRANSFER_BYTES);
        },
    );
}

#[test]
fn bytes_arrive_complete_and_in_order_through_reads_of_every_size() {
    transfer_test("reads of every size", true);
}

/// The lagging connections' unread bytes take more buffers than the ring has: each
/// receive is cancelled at its bound, streams that cannot arm one read the socket
/// directly, and nothing is lost, reordered or kept: a later stream arms again.
#[test]
fn connections_get_every_byte_after_readers_that_lag_hold_the_ring() {
    run(
        "readers that lag",
        |listener| async move {
            let mut talker = listener.accept().await.expect("accept the talker");
            let mut bulk = Vec::new();
            for _ in 0..LAGGING_CONNECTIONS {
                bulk.push(listener.accept().await.expect("accept a bulk sender"));
            }
            let talking = glommio::spawn_local(async move {
                let mut request = [0; 8];
                for round in 0..ROUND_TRIPS {
                    talker.read_exact(&mut request).await.expect("request");
                    assert_eq!(u64::from_le_bytes(request), round, "requests arrive in order");
                    talker.write_all(&request).await.expect("answer");
                }
            });
            glommio::timer::sleep(Duration::from_millis(FALL_BEHIND_MILLIS)).await;
            let mut received = vec![0; LAGGING_BYTES];
            for stream in &mut bulk {
                stream.read_exact(&mut received).await.expect("a bulk stream");
                for (index, byte) in received.iter().enumerate() {
                    assert_eq!(*byte, pattern(index), "byte {index} of a bulk stream");
                }
            }
            talking.await;
            drop(bulk);
            let later = listener.accept().await.expect("accept the last");
            assert_eq!(
                later.receives_through_ring(),
                kernel_receives_multishot(),
                "every buffer came back: a later stream arms a receive"
            );
        },
        |address| {
            let mut talker = std::net::TcpStream::connect(address).expect("connect");
            talker.set_nodelay(true).expect("nodelay");
            let sending: Vec<_> = (0..LAGGING_CONNECTIONS)
                .map(|_| {
                    let mut bulk = std::net::TcpStream::connect(address).expect("connect");
                    std::thread::spawn(move || send_pattern(&mut bulk, LAGGING_BYTES))
                })
                .collect();
            let mut answer = [0; 8];
            for round in 0..ROUND_TRIPS {
                talker.write_all(&round.to_le_bytes()).expect("request");
                talker.read_exact(&mut answer).expect("answer");
                assert_eq!(u64::from_le_bytes(answer), round);
            }
            for sender in sending {
                sender.join().expect("a bulk sender");
            }
            let _later = std::net::TcpStream::connect(address).expect("connect the last");
        },
    );
}

#[test]
fn a_stream_whose_peer_closed_reads_to_its_end_then_zero_every_time() {
    const SENT_BYTES: usize = 100_000;
    run(
        "end of stream",
        |listener| async move {
            let mut stream = listener.accept().await.expect("accept");
            assert_eq!(receive_pattern(&mut stream).await, SENT_BYTES);
            let mut buffer = [0; 16];
            for _ in 0..3 {
                assert_eq!(stream.read(&mut buffer).await.expect("read at the end"), 0);
            }
        },
        |address| {
            let mut stream = std::net::TcpStream::connect(address).expect("connect");
            send_pattern(&mut stream, SENT_BYTES);
            stream.shutdown(Shutdown::Write).expect("close the sending side");
        },
    );
}

#[test]
fn a_peek_returns_bytes_the_ring_received_and_leaves_them_to_be_read() {
    run(
        "peek",
        |listener| async move {
            let mut stream = listener.accept().await.expect("accept");
            let mut first = [0; 5];
            stream.read_exact(&mut first).await.expect("first read");
            assert_eq!(&first, b"hello");
            let mut peeked = [0; 6];
            let mut got = 0;
            while got < peeked.len() {
                got = stream.peek(&mut peeked).await.expect("peek");
            }
            assert_eq!(&peeked, b" world");
            let mut rest = [0; 6];
            stream.read_exact(&mut rest).await.expect("read after the peek");
            assert_eq!(&rest, b" world", "the peek took nothing");
        },
        |address| {
            let mut stream = std::net::TcpStream::connect(address).expect("connect");
            stream.set_nodelay(true).expect("nodelay");
            stream.write_all(b"hello").expect("send");
            std::thread::sleep(Duration::from_millis(50));
            stream.write_all(b" world").expect("send");
            let mut end = [0; 1];
            assert_eq!(stream.read(&mut end).expect("the server closes"), 0);
        },
    );
}

/// A receive armed on a socket holds the kernel's reference to it: dropping the
/// stream must cancel the receive, or the connection stays open.
#[test]
fn dropping_a_stream_with_unread_bytes_closes_the_connection() {
    const CONNECTIONS: usize = 300;
    run(
        "drop with unread bytes",
        |listener| async move {
            for _ in 0..CONNECTIONS {
                let mut stream = listener.accept().await.expect("accept");
                let mut first = [0; 1];
                stream.read_exact(&mut first).await.expect("first byte");
                glommio::timer::sleep(Duration::from_millis(1)).await;
                drop(stream);
            }
            let mut stream = listener.accept().await.expect("accept the last");
            assert_eq!(
                stream.receives_through_ring(),
                kernel_receives_multishot(),
                "the dropped streams gave their buffers back: a later stream arms a receive"
            );
            assert_eq!(receive_pattern(&mut stream).await, LARGE_TRANSFER_BYTES);
        },
        |address| {
            for _ in 0..CONNECTIONS {
                let mut stream = std::net::TcpStream::connect(address).expect("connect");
                stream.write_all(&[pattern(0)]).expect("first byte");
                stream.write_all(&[7; 20_000]).expect("bytes never read");
                let mut buffer = [0; 16];
                match stream.read(&mut buffer) {
                    Ok(0) => {}
                    Ok(got) => panic!("the server sent {got} bytes"),
                    Err(error) => assert_eq!(
                        error.kind(),
                        std::io::ErrorKind::ConnectionReset,
                        "a server closing with unread bytes resets"
                    ),
                }
            }
            let mut stream = std::net::TcpStream::connect(address).expect("connect");
            send_pattern(&mut stream, LARGE_TRANSFER_BYTES);
        },
    );
}

/// engramd turns ring receives off on a shard that spins (`--spin-us`), whose
/// connections poll their sockets with reads of their own.
#[test]
fn an_executor_that_turns_ring_receives_off_reads_its_sockets_directly() {
    transfer_test("ring receives off", false);
}

/// Whether a stream accepted on an executor that engramd's runtime starts with `spin`
/// receives through the ring.
fn accepted_receives_through_ring(spin: Duration) -> bool {
    let (answer, answered) = mpsc::channel();
    let executor = engram_server::runtime::Executor::spawn("shard", 0, spin, move || async move {
        let listener = glommio::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("address");
        let connecting = std::thread::spawn(move || std::net::TcpStream::connect(address).expect("connect"));
        let stream = listener.accept().await.expect("accept");
        answer.send(stream.receives_through_ring()).expect("test waits");
        drop(connecting.join());
    })
    .expect("an executor (io_uring and a memlock limit are needed)");
    let receives = answered
        .recv_timeout(Duration::from_secs(WATCHDOG_SECONDS))
        .expect("the executor accepts a local connection");
    executor.join().expect("the executor ends");
    receives
}

/// A shard that spins (`--spin-us`) reads its sockets itself, so engramd's runtime
/// starts it with ring receives off; one that parks at once keeps them.
#[test]
fn engramd_turns_ring_receives_off_exactly_on_shards_that_spin() {
    assert!(
        !accepted_receives_through_ring(Duration::from_micros(50)),
        "a spinning shard arms no receive"
    );
    assert_eq!(
        accepted_receives_through_ring(Duration::ZERO),
        kernel_receives_multishot(),
        "a shard that parks at once receives through the ring where the kernel can"
    );
}
