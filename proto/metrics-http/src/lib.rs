//! The smallest HTTP/1.1 responder Prometheus needs: `GET /metrics` answers 200 with
//! the text exposition format, anything else 404, one request per connection.
//!
//! It runs on a plain std thread, never on a shard's executor: a scrape must not take
//! a core away from requests, and a slow or hostile scraper only ever stalls this one
//! thread. Every read is bounded in bytes and in time, so no input can make it hold
//! memory or hang; malformed input gets a 400 and the connection closes.
//!
//! A responder serves for the life of the process, unless its owner stops it
//! ([`Responder::stop`]): engramd's in-process nodes do when they stop, so their port is
//! free again.
//!
//! [`Access`] says who may scrape: over TLS when the process serves TLS (its own
//! certificate, reloaded with it), and only with `Authorization: Bearer <token>` when it
//! has a metrics token (others get 401).
//!
//! A crate of its own, at the bottom of the dependency graph with nothing but
//! `prometheus` and `engram-tls` (and `libc`, to stop it) under it, so that engramd
//! (glommio) and engram-control (tokio) share it without either pulling in the other's
//! runtime.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use engram_tls::rustls::ServerConnection;
use engram_tls::{ServerTls, SyncStream};
use prometheus::{Encoder, Registry, TextEncoder};

/// Path of the one resource served.
pub const METRICS_PATH: &str = "/metrics";
/// Content type of the Prometheus text exposition format.
pub const CONTENT_TYPE: &str = prometheus::TEXT_FORMAT;
/// Longest request head (request line and headers) read before the request is refused;
/// a scrape's head is a few hundred bytes.
pub const REQUEST_HEAD_BYTES_MAX: usize = 8 * 1024;
/// Longest a client may take to send its whole request head. Connections are served one
/// at a time, so this also bounds how long one silent client delays the next scrape.
pub const REQUEST_TIMEOUT_MS: u64 = 2_000;
/// Longest one write of the answer may block on a client that does not read.
pub const WRITE_TIMEOUT_MS: u64 = 5_000;
/// Longest metrics token a flag may give.
pub const METRICS_TOKEN_BYTES_MAX: usize = 1024;
/// Pause after a failed accept (out of file descriptors and the like), so the thread
/// does not spin while the condition lasts.
pub const ACCEPT_RETRY_MS: u64 = 50;

/// Who may scrape, and how.
#[derive(Clone, Debug, Default)]
pub struct Access {
    /// Serve over TLS with this configuration (a reload of it reaches the next scrape).
    pub tls: Option<ServerTls>,
    /// Answer only requests that carry `Authorization: Bearer <token>`.
    pub token: Option<Vec<u8>>,
}

type Connection = SyncStream<ServerConnection>;

/// Checks a metrics token as a flag gives it: visible characters only (it travels in
/// a header and is compared exactly), at most `METRICS_TOKEN_BYTES_MAX` bytes.
pub fn parse_token(token: &str) -> Result<String, String> {
    if token.is_empty() || token.len() > METRICS_TOKEN_BYTES_MAX {
        return Err(format!(
            "a metrics token is 1 to metrics_token_bytes_max ({METRICS_TOKEN_BYTES_MAX}) bytes"
        ));
    }
    if !token.bytes().all(|byte| byte.is_ascii_graphic()) {
        return Err("a metrics token is visible ASCII characters, without spaces".into());
    }
    Ok(token.to_string())
}

/// Binds the metrics listener; done before anything else starts, so a taken port fails
/// fast with the address in the error.
pub fn bind(address: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(address)
}

/// Serves `GET /metrics` on `listener` from a thread of its own, until the returned
/// [`Responder`] is stopped (for the life of the process when it never is). `render`
/// produces the body of each scrape; `access` says who may ask for it.
pub fn spawn<Render>(listener: TcpListener, render: Render, access: Access) -> io::Result<Responder>
where
    Render: Fn() -> Vec<u8> + Send + 'static,
{
    // The responder keeps a handle to the socket so that it can wake the thread's
    // blocking accept when it stops.
    let waker = listener.try_clone()?;
    let stopping = Arc::new(AtomicBool::new(false));
    let thread_stopping = stopping.clone();
    let thread = std::thread::Builder::new()
        .name("metrics-http".into())
        .spawn(move || serve(&listener, &render, &access, &thread_stopping))?;
    Ok(Responder {
        waker,
        stopping,
        thread,
    })
}

/// A running responder. Dropping it leaves the thread serving for the life of the
/// process; [`Responder::close`] or [`Responder::stop`] end it.
pub struct Responder {
    /// A duplicate of the served socket, shut down to wake the thread's accept.
    waker: TcpListener,
    stopping: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl Responder {
    /// Stops accepting scrapes; the thread ends once the scrape it may be answering is
    /// done (bounded by [`REQUEST_TIMEOUT_MS`] and [`WRITE_TIMEOUT_MS`]). Never waits.
    pub fn close(self) {
        self.signal();
    }

    /// Stops accepting scrapes and waits for the thread to end, after which the port is
    /// free.
    pub fn stop(self) {
        self.signal();
        // The thread only returns; a panic there has nothing more to tell.
        let _ = self.thread.join();
    }

    fn signal(&self) {
        self.stopping.store(true, Relaxed);
        // On Linux, shutting a listening socket down makes an accept blocked on it
        // return at once (EINVAL), and every later one too, so the thread sees the flag.
        let _ = shutdown_listener(&self.waker);
    }
}

fn shutdown_listener(listener: &TcpListener) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: shutdown(2) on a descriptor this listener owns; it touches no memory.
    if unsafe { libc::shutdown(listener.as_raw_fd(), libc::SHUT_RDWR) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Accepts and answers connections one after another, until `stopping` is set.
fn serve(listener: &TcpListener, render: &dyn Fn() -> Vec<u8>, access: &Access, stopping: &AtomicBool) {
    while !stopping.load(Relaxed) {
        match listener.accept() {
            // A failed exchange concerns only that client.
            Ok((stream, _)) => drop(answer(stream, render, access)),
            Err(_) if stopping.load(Relaxed) => return,
            Err(_) => std::thread::sleep(Duration::from_millis(ACCEPT_RETRY_MS)),
        }
    }
}

/// The text exposition of everything registered in `registry`.
pub fn render_registry(registry: &Registry) -> Vec<u8> {
    let mut body = Vec::new();
    // Encoding only fails on metrics that could not have been registered, or on a
    // failing writer, which a Vec is not; a partial body is still worth serving.
    let _ = TextEncoder::new().encode(&registry.gather(), &mut body);
    body
}

/// What a request head asks for.
#[derive(Debug, PartialEq, Eq)]
enum Asked {
    /// `GET /metrics`, with the bearer token it carries, if any.
    Metrics {
        token: Option<Vec<u8>>,
    },
    SomethingElse,
    Malformed,
}

fn answer(socket: TcpStream, render: &dyn Fn() -> Vec<u8>, access: &Access) -> io::Result<()> {
    socket.set_write_timeout(Some(Duration::from_millis(WRITE_TIMEOUT_MS)))?;
    let mut stream = match &access.tls {
        None => SyncStream::Plain(socket),
        Some(tls) => SyncStream::tls(ServerConnection::new(tls.config()).map_err(io::Error::other)?, socket),
    };
    let asked = match read_head(&mut stream)? {
        Some(head) => parse_head(&head),
        None => {
            return respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "text/plain",
                b"request head too large\n",
            )
        }
    };
    match asked {
        Asked::Metrics { token } if !authorized(access.token.as_deref(), token.as_deref()) => {
            let head = head(
                "401 Unauthorized",
                "text/plain",
                b"\r\nWWW-Authenticate: Bearer realm=\"engram\"",
            );
            respond_with(
                &mut stream,
                &head,
                b"a metrics token is required: Authorization: Bearer <token>\n",
            )
        }
        Asked::Metrics { .. } => respond(&mut stream, "200 OK", CONTENT_TYPE, &render()),
        Asked::SomethingElse => respond(
            &mut stream,
            "404 Not Found",
            "text/plain",
            b"only GET /metrics is served\n",
        ),
        Asked::Malformed => respond(&mut stream, "400 Bad Request", "text/plain", b"malformed request\n"),
    }
}

/// Reads up to the blank line ending the head; `None` when the head exceeds
/// [`REQUEST_HEAD_BYTES_MAX`]. The deadline covers the whole head, not each read, so a
/// client trickling a byte at a time cannot hold the thread.
fn read_head(stream: &mut Connection) -> io::Result<Option<Vec<u8>>> {
    let deadline = Instant::now() + Duration::from_millis(REQUEST_TIMEOUT_MS);
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let read = read_by(stream, &mut chunk, deadline)?;
        if read == 0 {
            // The client stopped sending: answer what arrived, which without its blank
            // line parses as whatever its request line says.
            return Ok(Some(head));
        }
        head.extend_from_slice(&chunk[..read]);
        if head_ends(&head) {
            return Ok(Some(head));
        }
        if head.len() > REQUEST_HEAD_BYTES_MAX {
            return Ok(None);
        }
    }
}

/// Reads what arrives before `deadline`. Under TLS the records are taken in by hand,
/// the deadline checked before each read of the socket: rustls' own read goes on
/// reading until a record is whole, each read with the socket's timeout afresh, so a
/// client sending a byte now and then could hold the thread far past the deadline.
fn read_by(stream: &mut Connection, buffer: &mut [u8], deadline: Instant) -> io::Result<usize> {
    let tls = match stream {
        SyncStream::Plain(socket) => {
            socket.set_read_timeout(Some(time_left(deadline)?))?;
            return socket.read(buffer);
        }
        SyncStream::Tls(tls) => tls,
    };
    loop {
        match tls.conn.reader().read(buffer) {
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
            read => return read,
        }
        while tls.conn.wants_write() {
            tls.conn.write_tls(&mut tls.sock)?;
        }
        tls.sock.set_read_timeout(Some(time_left(deadline)?))?;
        if tls.conn.read_tls(&mut tls.sock)? == 0 {
            return Ok(0);
        }
        tls.conn.process_new_packets().map_err(io::Error::other)?;
    }
}

/// The time until `deadline`, or `TimedOut` once it passed.
fn time_left(deadline: Instant) -> io::Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::ErrorKind::TimedOut.into());
    }
    Ok(left)
}

fn head_ends(head: &[u8]) -> bool {
    head.windows(4).any(|window| window == b"\r\n\r\n") || head.windows(2).any(|window| window == b"\n\n")
}

fn parse_head(head: &[u8]) -> Asked {
    let line_end = head.iter().position(|&byte| byte == b'\n').unwrap_or(head.len());
    let Ok(request_line) = std::str::from_utf8(&head[..line_end]) else {
        return Asked::Malformed;
    };
    let mut parts = request_line.split_ascii_whitespace();
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Asked::Malformed;
    };
    if !version.starts_with("HTTP/1.") {
        return Asked::Malformed;
    }
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    if method == "GET" && path == METRICS_PATH {
        Asked::Metrics {
            token: bearer_token(headers_of(&head[line_end..])),
        }
    } else {
        Asked::SomethingElse
    }
}

/// The header lines of a head, up to the blank line that ends them.
fn headers_of(after_request_line: &[u8]) -> &[u8] {
    let blank_line = (0..after_request_line.len()).find(|&at| {
        let rest = &after_request_line[at..];
        rest.starts_with(b"\n\n") || rest.starts_with(b"\n\r\n")
    });
    &after_request_line[..blank_line.unwrap_or(after_request_line.len())]
}

/// The token of an `Authorization: Bearer <token>` header among `headers`.
fn bearer_token(headers: &[u8]) -> Option<Vec<u8>> {
    headers.split(|&byte| byte == b'\n').find_map(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let colon = line.iter().position(|&byte| byte == b':')?;
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if !name.trim_ascii().eq_ignore_ascii_case(b"authorization") || value.len() < 7 {
            return None;
        }
        let (scheme, token) = value.split_at(7);
        scheme
            .eq_ignore_ascii_case(b"bearer ")
            .then(|| token.trim_ascii().to_vec())
    })
}

/// Whether a request carrying `given` may scrape: always without a required token,
/// else only with an equal one, compared in time independent of where they differ.
fn authorized(required: Option<&[u8]>, given: Option<&[u8]>) -> bool {
    let Some(required) = required else {
        return true;
    };
    let given = given.unwrap_or_default();
    let differences = required
        .iter()
        .zip(given)
        .fold(0u8, |differences, (left, right)| differences | (left ^ right));
    given.len() == required.len() && differences == 0
}

fn respond(stream: &mut Connection, status: &str, content_type: &str, body: &[u8]) -> io::Result<()> {
    respond_with(stream, &head(status, content_type, b""), body)
}

/// A response head's status line and its headers but the length; `extra` holds further
/// header lines, each after a CRLF.
fn head(status: &str, content_type: &str, extra: &[u8]) -> Vec<u8> {
    let mut head = format!("HTTP/1.1 {status}\r\nContent-Type: {content_type}").into_bytes();
    head.extend_from_slice(extra);
    head
}

fn respond_with(stream: &mut Connection, head: &[u8], body: &[u8]) -> io::Result<()> {
    stream.write_all(head)?;
    let rest = format!("\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    stream.write_all(rest.as_bytes())?;
    stream.write_all(body)?;
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start() -> SocketAddr {
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let address = listener.local_addr().unwrap();
        // Left serving, as engram-control's responder is.
        let _serving = spawn(listener, || b"engram_up 1\n".to_vec(), Access::default()).unwrap();
        address
    }

    fn exchange(address: SocketAddr, request: &[u8]) -> String {
        let mut stream = TcpStream::connect(address).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        stream.write_all(request).unwrap();
        // Half-closing tells the server the request is complete even without its blank line.
        stream.shutdown(std::net::Shutdown::Write).unwrap();
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        String::from_utf8_lossy(&answer).into_owned()
    }

    #[test]
    fn metrics_are_served_and_nothing_else() {
        let address = start();
        let answer = exchange(address, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(
            answer.contains("Content-Type: text/plain; version=0.0.4\r\n"),
            "{answer}"
        );
        assert!(answer.contains("Content-Length: 12\r\n"), "{answer}");
        assert!(answer.ends_with("\r\n\r\nengram_up 1\n"), "{answer}");
        assert!(exchange(address, b"GET /metrics?name[]=x HTTP/1.0\n\n").starts_with("HTTP/1.1 200 "));
        for request in [
            &b"GET / HTTP/1.1\r\n\r\n"[..],
            b"POST /metrics HTTP/1.1\r\n\r\n",
            b"GET /metricsx HTTP/1.1\r\n\r\n",
        ] {
            assert!(exchange(address, request).starts_with("HTTP/1.1 404 "));
        }
    }

    #[test]
    fn bad_input_is_refused_and_the_server_keeps_serving() {
        let address = start();
        for request in [
            &b"\xff\xfe\x00garbage\r\n\r\n"[..],
            b"GET\r\n\r\n",
            b"GET /metrics SPDY/3\r\n\r\n",
            b"",
        ] {
            assert!(exchange(address, request).starts_with("HTTP/1.1 400 "));
        }
        // One byte over, so the server has read all of it when it answers (closing with
        // unread bytes would reset the connection before the answer is read).
        let oversized = vec![b'a'; REQUEST_HEAD_BYTES_MAX + 1];
        assert!(exchange(address, &oversized).starts_with("HTTP/1.1 431 "));
        // A client that sends part of a head and then nothing is dropped at the deadline.
        let silent = TcpStream::connect(address).unwrap();
        (&silent).write_all(b"GET /metr").unwrap();
        let answer = exchange(address, b"GET /metrics HTTP/1.1\r\n\r\n");
        assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
        drop(silent);
    }

    #[test]
    fn a_stopped_responder_frees_its_port() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let address = listener.local_addr().unwrap();
        let responder = spawn(listener, || b"engram_up 1\n".to_vec(), Access::default()).unwrap();
        assert!(exchange(address, b"GET /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 200 "));
        responder.stop();
        let refused = TcpStream::connect(address).map(drop).unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::ConnectionRefused, "{refused}");
        bind(address).expect("the port is free again");
    }

    fn start_with(access: Access) -> SocketAddr {
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let address = listener.local_addr().unwrap();
        let _serving = spawn(listener, || b"engram_up 1\n".to_vec(), access).unwrap();
        address
    }

    #[test]
    fn with_a_token_only_requests_carrying_it_are_answered() {
        let address = start_with(Access {
            tls: None,
            token: Some(b"s3cret".to_vec()),
        });
        for request in [
            &b"GET /metrics HTTP/1.1\r\n\r\n"[..],
            b"GET /metrics HTTP/1.1\r\nAuthorization: Bearer wrong!\r\n\r\n",
            b"GET /metrics HTTP/1.1\r\nAuthorization: Bearer s3cre\r\n\r\n",
            b"GET /metrics HTTP/1.1\r\nAuthorization: Basic s3cret\r\n\r\n",
        ] {
            let answer = exchange(address, request);
            assert!(answer.starts_with("HTTP/1.1 401 "), "{answer}");
            assert!(answer.contains("WWW-Authenticate: Bearer"), "{answer}");
            assert!(!answer.contains("engram_up"), "{answer}");
        }
        let answer = exchange(
            address,
            b"GET /metrics HTTP/1.1\r\nauthorization:  bearer s3cret \r\n\r\n",
        );
        assert!(answer.ends_with("engram_up 1\n"), "{answer}");
    }

    #[test]
    fn with_tls_a_scrape_is_served_under_the_certificate() {
        use engram_tls::rustls::{ClientConnection, StreamOwned};
        let dir = std::env::temp_dir().join(format!("engram-metrics-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = engram_tls::test_ca::TestCa::new(&dir, "metrics");
        let issued = ca.issue("node", &["127.0.0.1"]);
        let files = engram_tls::ServerTlsFiles {
            cert: issued.cert,
            key: issued.key,
            client_ca: None,
        };
        let tls = engram_tls::ServerTls::load(files).unwrap();
        let address = start_with(Access {
            tls: Some(tls),
            token: None,
        });
        let client = engram_tls::ClientTls::trusting(&ca.ca_path()).unwrap();
        let name = engram_tls::server_name(&address.to_string()).unwrap();
        let connection = ClientConnection::new(client.config(), name).unwrap();
        let socket = TcpStream::connect(address).unwrap();
        socket.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut stream = StreamOwned::new(connection, socket);
        stream.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with("HTTP/1.1 200 ") && answer.ends_with("engram_up 1\n"),
            "{answer}"
        );
        // A plain scrape gets no metrics.
        assert!(!exchange(address, b"GET /metrics HTTP/1.1\r\n\r\n").contains("engram_up"));
    }

    #[test]
    fn registries_render_in_text_format() {
        let registry = Registry::new();
        let counter = prometheus::IntCounter::new("engram_test_total", "A test counter.").unwrap();
        registry.register(Box::new(counter.clone())).unwrap();
        counter.inc_by(3);
        let text = String::from_utf8(render_registry(&registry)).unwrap();
        assert!(text.contains("# HELP engram_test_total A test counter.\n"), "{text}");
        assert!(text.contains("# TYPE engram_test_total counter\n"), "{text}");
        assert!(text.contains("engram_test_total 3\n"), "{text}");
    }
}
