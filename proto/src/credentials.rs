//! Credentials per tenant and role: who may connect, in which namespaces, with which
//! rights. A process holds a [`Gate`]: open (no credentials, for development), one shared
//! token with every right (`--auth-token`), or a credentials file ([`Credentials`]). A
//! handshake is admitted by [`Gate::admit`], which returns the session's [`Grant`];
//! each request is then checked against the grant's rights ([`Grant::require`]).
//!
//! A credentials file lists one credential per line, four fields separated by spaces;
//! `#` starts a comment:
//!
//! ```text
//! # name   digest of the token (sha256:hex)   rights                namespaces
//! app-a    sha256:2c26b46b…                   read,write,coordinate app-a,shared
//! ops      sha256:fcde2b2e…                   admin                 *
//! nodes    sha256:baa5a094…                   node                  *
//! ```
//!
//! Only the SHA-256 of each token is stored, so the file does not give the tokens away.
//! Tokens are meant to be random (`engram token` makes one): a digest without salt is
//! then as good as a slow password hash, and lets a Hello be matched in one lookup.
//!
//! Rights: `read` (commands that only read bytes, counters, maps, queues and keys, key
//! listings included), `write` (commands that change them, expiries and deletion
//! included), `coordinate` (every command of locks, semaphores, barriers, latches and
//! futures, waits included), `admin` (node statistics and cluster administration), `node`
//! (what nodes and the control plane say to one another: joins, heartbeats, maps,
//! migration, replication); `all` is every one. Namespaces: `*` for any, else a comma
//! list (`default` is the namespace of clients that name none, native or at the Redis
//! door). The namespace is checked at the handshake of a client connection (and at each
//! `AUTH` of the door); control-plane and peer connections name no tenant's keys.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use sha2::{Digest, Sha256};

use crate::cluster::SharedCredentials;
use crate::error::ErrorCode;
use crate::limits::NAMESPACE_BYTES_MAX;
use crate::message::Family;
pub use crate::rights::{Right, Rights};

/// Most credentials one file may list: each Hello is matched in one lookup, but the file
/// is read whole and kept in every process that checks Hellos.
pub const CREDENTIALS_MAX: usize = 10_000;

/// Largest credentials text read, from a file, etcd or the control plane (about 200
/// bytes for each of `CREDENTIALS_MAX` lines); etcd keeps values up to 1.5 MiB unless
/// told otherwise.
pub const CREDENTIALS_TEXT_BYTES_MAX: u64 = 2 * 1024 * 1024;

// A control plane hands the text to a joining node in one frame with the slot map: half
// a frame leaves the map the other half (a map of every slot in its own range, over a
// thousand shards, takes well under 1 MiB).
const _: () = assert!(CREDENTIALS_TEXT_BYTES_MAX as usize <= crate::limits::FRAME_PAYLOAD_BYTES_MAX / 2);

/// Longest credential name, which logs and refusals show.
pub const CREDENTIAL_NAME_BYTES_MAX: usize = 64;

/// How a token's digest is written in a credentials file: the hash named, then hex.
pub const TOKEN_DIGEST_PREFIX: &str = "sha256:";

const DIGEST_BYTES: usize = 32;

/// The namespaces a credential may name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Namespaces {
    Any,
    Only(Vec<Vec<u8>>),
}

impl Namespaces {
    pub fn allows(&self, namespace: &[u8]) -> bool {
        match self {
            Namespaces::Any => true,
            Namespaces::Only(listed) => listed.iter().any(|allowed| allowed == namespace),
        }
    }

    /// `*`, or a comma list of names.
    pub fn parse(text: &str) -> Result<Namespaces, String> {
        if text == "*" {
            return Ok(Namespaces::Any);
        }
        let listed = text
            .split(',')
            .map(|name| match name {
                "" => Err("an empty namespace name".to_string()),
                "*" => Err("`*` stands alone: it already allows every namespace".to_string()),
                _ if name.len() > NAMESPACE_BYTES_MAX => Err(format!(
                    "namespace of {} bytes exceeds namespace_bytes_max ({NAMESPACE_BYTES_MAX})",
                    name.len()
                )),
                _ => Ok(name.as_bytes().to_vec()),
            })
            .collect::<Result<_, _>>()?;
        Ok(Namespaces::Only(listed))
    }
}

/// One line of a credentials file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credential {
    pub name: String,
    pub rights: Rights,
    pub namespaces: Namespaces,
    digest: [u8; DIGEST_BYTES],
}

/// What a connection was granted at its handshake; after a reload of the credentials
/// the connection takes it again from the new gate ([`Gate::regrant`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    name: Arc<str>,
    rights: Rights,
    /// The presented token's digest, by which a reload finds the credential again.
    digest: [u8; DIGEST_BYTES],
}

impl Grant {
    /// Every right, as an open gate or the shared token grants.
    pub fn everything() -> Grant {
        Grant {
            name: Arc::from("everyone"),
            rights: Rights::ALL,
            digest: [0; DIGEST_BYTES],
        }
    }

    /// The credential's name, for logs and refusals.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn rights(&self) -> Rights {
        self.rights
    }

    /// Whether the grant carries `right`, which `what` (a command's name) needs.
    pub fn require(&self, right: Right, what: &str) -> Result<(), Denial> {
        match self.rights.contains(right) {
            true => Ok(()),
            false => Err(Denial::Right {
                name: self.name.to_string(),
                right,
                what: what.to_string(),
            }),
        }
    }
}

/// Why a token, a namespace or a command was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Denial {
    #[error("credentials refused")]
    UnknownToken,
    #[error("credential `{name}` may not use namespace `{namespace}`")]
    Namespace { name: String, namespace: String },
    #[error("credential `{name}` lacks the {right} right, which {what} needs")]
    Right { name: String, right: Right, what: String },
}

impl Denial {
    /// The wire code: a token nobody holds is `Unauthorized`, a known one asking beyond
    /// its rights `Forbidden`.
    pub fn code(&self) -> ErrorCode {
        match self {
            Denial::UnknownToken => ErrorCode::Unauthorized,
            Denial::Namespace { .. } | Denial::Right { .. } => ErrorCode::Forbidden,
        }
    }
}

/// Why a credentials file could not be used; each names the file, and the line where
/// one is at fault.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("cannot read credentials file {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{origin} is larger than credentials_text_bytes_max ({CREDENTIALS_TEXT_BYTES_MAX})")]
    TooLarge { origin: String },
    #[error("{origin} lists more than credentials_max ({CREDENTIALS_MAX}) credentials")]
    TooMany { origin: String },
    #[error("{origin} lists no credential, so nobody could connect")]
    Empty { origin: String },
    #[error("{origin}:{line}: {reason}")]
    Line {
        origin: String,
        line: usize,
        reason: String,
    },
}

/// How errors name a credentials file.
pub fn file_origin(path: &Path) -> String {
    format!("credentials file {}", path.display())
}

/// The credentials of a file, matched by their tokens' digests. The text they were read
/// from is kept, so a control plane can hand it to its nodes.
#[derive(Clone, Debug)]
pub struct Credentials {
    listed: Vec<Credential>,
    by_digest: HashMap<[u8; DIGEST_BYTES], usize>,
    text: Arc<str>,
    text_digest: u64,
}

impl Credentials {
    /// Reads and parses a credentials file, refusing one above
    /// [`CREDENTIALS_TEXT_BYTES_MAX`] before reading it all.
    pub fn load(path: &Path) -> Result<Credentials, CredentialsError> {
        let read = |source| CredentialsError::Read {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(read)?;
        let mut text = String::new();
        file.take(CREDENTIALS_TEXT_BYTES_MAX + 1)
            .read_to_string(&mut text)
            .map_err(read)?;
        Credentials::parse(&text, &file_origin(path))
    }

    /// Parses text in the credentials file's format; `origin` names where it came from
    /// in errors (a file, an etcd key, the control plane).
    pub fn parse(text: &str, origin: &str) -> Result<Credentials, CredentialsError> {
        if text.len() as u64 > CREDENTIALS_TEXT_BYTES_MAX {
            return Err(CredentialsError::TooLarge {
                origin: origin.to_string(),
            });
        }
        let mut credentials = Credentials {
            listed: Vec::new(),
            by_digest: HashMap::new(),
            text: Arc::from(text),
            text_digest: shared_digest(text),
        };
        for (index, line) in text.lines().enumerate() {
            let at_fault = |reason: String| CredentialsError::Line {
                origin: origin.to_string(),
                line: index + 1,
                reason,
            };
            let content = line.split('#').next().unwrap_or_default().trim();
            if content.is_empty() {
                continue;
            }
            if credentials.listed.len() == CREDENTIALS_MAX {
                return Err(CredentialsError::TooMany {
                    origin: origin.to_string(),
                });
            }
            let credential = parse_line(content).map_err(at_fault)?;
            credentials.add(credential).map_err(at_fault)?;
        }
        if credentials.listed.is_empty() {
            return Err(CredentialsError::Empty {
                origin: origin.to_string(),
            });
        }
        Ok(credentials)
    }

    fn add(&mut self, credential: Credential) -> Result<(), String> {
        if let Some(twin) = self.listed.iter().find(|listed| listed.name == credential.name) {
            return Err(format!("credential `{}` is listed twice", twin.name));
        }
        if let Some(&index) = self.by_digest.get(&credential.digest) {
            return Err(format!(
                "credential `{}` has the token of `{}`: each token must name one credential",
                credential.name, self.listed[index].name
            ));
        }
        self.by_digest.insert(credential.digest, self.listed.len());
        self.listed.push(credential);
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.listed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.listed.is_empty()
    }

    /// The text these credentials were read from, as a control plane hands it to its
    /// nodes.
    pub fn shared(&self) -> SharedCredentials {
        SharedCredentials {
            text: self.text.to_string(),
        }
    }

    /// The credential whose token is `token`. The lookup is by the token's digest, so
    /// its time tells nothing of the token; the digest found is compared again in
    /// constant time, as a stored token would be.
    pub fn find(&self, token: &[u8]) -> Option<&Credential> {
        self.find_digest(&token_digest(token))
    }

    fn find_digest(&self, digest: &[u8; DIGEST_BYTES]) -> Option<&Credential> {
        let credential = &self.listed[*self.by_digest.get(digest)?];
        constant_time_equal(&credential.digest, digest).then_some(credential)
    }
}

/// `name sha256:hex rights namespaces`.
fn parse_line(content: &str) -> Result<Credential, String> {
    let fields: Vec<&str> = content.split_whitespace().collect();
    let [name, digest, rights, namespaces] = fields[..] else {
        return Err(format!(
            "{} fields where a credential has 4: name, sha256:<digest of the token>, rights, namespaces",
            fields.len()
        ));
    };
    check_name(name)?;
    let credential = Credential {
        name: name.to_string(),
        digest: parse_digest(digest)?,
        rights: Rights::parse(rights)?,
        namespaces: Namespaces::parse(namespaces)?,
    };
    if credential.rights.contains(Right::Node) && credential.namespaces != Namespaces::Any {
        return Err(format!(
            "`{name}` has the node right, which forwards every tenant's requests: its namespaces must be `*`"
        ));
    }
    Ok(credential)
}

/// A credential's name as a file can hold it: one field of visible characters, no `#`,
/// at most [`CREDENTIAL_NAME_BYTES_MAX`] bytes.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.len() > CREDENTIAL_NAME_BYTES_MAX {
        return Err(format!(
            "credential name of {} bytes exceeds credential_name_bytes_max ({CREDENTIAL_NAME_BYTES_MAX})",
            name.len()
        ));
    }
    if name.is_empty() || !name.bytes().all(|byte| byte.is_ascii_graphic() && byte != b'#') {
        return Err(format!(
            "credential name `{name}` is not one word of visible characters without `#`"
        ));
    }
    Ok(())
}

fn parse_digest(text: &str) -> Result<[u8; DIGEST_BYTES], String> {
    let malformed = || {
        format!(
            "`{text}` is not {TOKEN_DIGEST_PREFIX} and {} hex digits (the SHA-256 of the token)",
            DIGEST_BYTES * 2
        )
    };
    let hex = text.strip_prefix(TOKEN_DIGEST_PREFIX).ok_or_else(malformed)?;
    if hex.len() != DIGEST_BYTES * 2 || !hex.is_ascii() {
        return Err(malformed());
    }
    let mut digest = [0; DIGEST_BYTES];
    for (byte, pair) in digest.iter_mut().zip(hex.as_bytes().chunks(2)) {
        let pair = std::str::from_utf8(pair).map_err(|_| malformed())?;
        *byte = u8::from_str_radix(pair, 16).map_err(|_| malformed())?;
    }
    Ok(digest)
}

/// Compares without stopping at the first difference, so the time taken does not tell
/// how much of a guess was right.
pub fn constant_time_equal(expected: &[u8], offered: &[u8]) -> bool {
    expected.len() == offered.len()
        && expected
            .iter()
            .zip(offered)
            .fold(0u8, |difference, (a, b)| difference | (a ^ b))
            == 0
}

/// The SHA-256 of a token.
pub fn token_digest(token: &[u8]) -> [u8; DIGEST_BYTES] {
    Sha256::digest(token).into()
}

/// The digest by which a node tells that the control plane's credentials changed. Not a
/// secret (the text lists digests of tokens, never tokens); never 0, which says "none".
pub fn shared_digest(text: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(text.as_bytes()).max(1)
}

/// A credentials file's line for `token`: what `engram token` prints.
pub fn credential_line(name: &str, token: &[u8], rights: Rights, namespaces: &str) -> String {
    let hex: String = token_digest(token).iter().map(|byte| format!("{byte:02x}")).collect();
    format!("{name} {TOKEN_DIGEST_PREFIX}{hex} {rights} {namespaces}")
}

/// Who may connect to a process.
#[derive(Clone, Debug)]
pub enum Gate {
    /// No credentials: every connection has every right (the single-node default, as
    /// Redis without `requirepass`).
    Open,
    /// One token, every right in every namespace (`--auth-token`).
    Token(Vec<u8>),
    /// A credentials file.
    Credentials(Credentials),
}

impl Gate {
    pub fn requires_credentials(&self) -> bool {
        !matches!(self, Gate::Open)
    }

    /// Whether a node presenting `token` to its peers and the control plane would be
    /// admitted by every process that keeps this gate.
    pub fn admit_node(&self, token: &[u8]) -> Result<(), Denial> {
        self.admit(token, Family::Peer, &[], true).map(drop)
    }

    /// Admits whoever presents `token` to speak `family`, in `namespace` for a client:
    /// the grant its requests are checked against. A peer must hold the `node` right; a
    /// control-plane caller `node` (a node) or `admin` (an operator). On a client
    /// connection to a port that `takes_forwarded` requests (a shard's own port), the
    /// `node` right stands for every data right in every namespace: it is a node
    /// forwarding its clients' requests. Anywhere else a node's token has only the rights
    /// it lists.
    pub fn admit(
        &self,
        token: &[u8],
        family: Family,
        namespace: &[u8],
        takes_forwarded: bool,
    ) -> Result<Grant, Denial> {
        // An open gate asks for nothing, so the token is not even hashed.
        match self {
            Gate::Open => Ok(Grant::everything()),
            _ => self.admit_digest(&token_digest(token), family, namespace, takes_forwarded),
        }
    }

    /// What a connection admitted with `grant` may do under this gate, as [`Gate::admit`]
    /// would answer its Hello now: after a reload a revoked token is refused, and a
    /// changed credential's rights apply from the connection's next request.
    pub fn regrant(
        &self,
        grant: &Grant,
        family: Family,
        namespace: &[u8],
        takes_forwarded: bool,
    ) -> Result<Grant, Denial> {
        self.admit_digest(&grant.digest, family, namespace, takes_forwarded)
    }

    fn admit_digest(
        &self,
        digest: &[u8; DIGEST_BYTES],
        family: Family,
        namespace: &[u8],
        takes_forwarded: bool,
    ) -> Result<Grant, Denial> {
        let credential = match self {
            Gate::Open => return Ok(Grant::everything()),
            Gate::Token(expected) if constant_time_equal(&token_digest(expected), digest) => {
                return Ok(Grant {
                    digest: *digest,
                    ..Grant::everything()
                })
            }
            Gate::Token(_) => return Err(Denial::UnknownToken),
            Gate::Credentials(credentials) => credentials.find_digest(digest).ok_or(Denial::UnknownToken)?,
        };
        let mut grant = Grant {
            name: Arc::from(credential.name.as_str()),
            rights: credential.rights,
            digest: *digest,
        };
        match family {
            // A node forwards its clients' requests to the shards that own their keys,
            // in their namespaces; each was checked where it entered the cluster.
            Family::Client if grant.rights.contains(Right::Node) && takes_forwarded => {
                grant.rights = grant.rights.union(Rights::DATA);
                Ok(grant)
            }
            Family::Client if !credential.namespaces.allows(namespace) => Err(Denial::Namespace {
                name: credential.name.clone(),
                namespace: String::from_utf8_lossy(namespace).into_owned(),
            }),
            Family::Client => Ok(grant),
            Family::Peer => grant.require(Right::Node, "the peer protocol").map(|()| grant),
            Family::Control if grant.rights.contains(Right::Admin) => Ok(grant),
            Family::Control => grant
                .require(Right::Node, "the control protocol (or admin)")
                .map(|()| grant),
        }
    }
}

/// A process's gate, which is replaced whole: from its file by `reload` (on SIGHUP), or
/// by `install` with credentials from elsewhere (etcd, the control plane). Credentials
/// that fail to parse leave the previous gate in place.
#[derive(Debug)]
pub struct Gatekeeper {
    gate: RwLock<Arc<Gate>>,
    file: Option<PathBuf>,
    /// Counts the reloads, so a connection sees with one load that its grant may be
    /// out of date.
    generation: AtomicU64,
}

impl Gatekeeper {
    /// A gate from the flags: a credentials file, else a shared token, else open.
    pub fn new(file: Option<&Path>, token: Option<&[u8]>) -> Result<Gatekeeper, CredentialsError> {
        let gate = match (file, token) {
            (Some(path), _) => Gate::Credentials(Credentials::load(path)?),
            (None, Some(token)) => Gate::Token(token.to_vec()),
            (None, None) => Gate::Open,
        };
        Ok(Gatekeeper::holding(gate, file.map(Path::to_path_buf)))
    }

    pub fn open() -> Gatekeeper {
        Gatekeeper::holding(Gate::Open, None)
    }

    /// Credentials read elsewhere than a file of this process (etcd, the control
    /// plane), which [`Gatekeeper::install`] replaces.
    pub fn given(credentials: Credentials) -> Gatekeeper {
        Gatekeeper::holding(Gate::Credentials(credentials), None)
    }

    fn holding(gate: Gate, file: Option<PathBuf>) -> Gatekeeper {
        Gatekeeper {
            gate: RwLock::new(Arc::new(gate)),
            file,
            generation: AtomicU64::new(0),
        }
    }

    /// Replaces the gate with `credentials`: connections follow at their next request,
    /// as after a reload.
    pub fn install(&self, credentials: Credentials) {
        self.swap(Gate::Credentials(credentials));
    }

    /// Installs `credentials` unless they refuse `node_token` as a node: this process
    /// presents it to its peers, who would refuse it too, so such credentials are a
    /// mistake that would cut the process off. Returns how many credentials they list.
    pub fn install_admitting(&self, credentials: Credentials, node_token: &[u8]) -> Result<usize, Denial> {
        let listed = credentials.len();
        let gate = Gate::Credentials(credentials);
        gate.admit_node(node_token)?;
        self.swap(gate);
        Ok(listed)
    }

    fn swap(&self, gate: Gate) {
        *self.gate.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(gate);
        // After the swap: whoever sees the new generation takes the new gate.
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// The credentials text the gate admits by, to hand to nodes; `None` for an open
    /// gate or a shared token, which a node is given by its own flags.
    pub fn shared(&self) -> Option<SharedCredentials> {
        match &*self.gate() {
            Gate::Credentials(credentials) => Some(credentials.shared()),
            Gate::Open | Gate::Token(_) => None,
        }
    }

    /// The digest of [`Gatekeeper::shared`]'s text; 0 when there is none.
    pub fn shared_digest(&self) -> u64 {
        match &*self.gate() {
            Gate::Credentials(credentials) => credentials.text_digest,
            Gate::Open | Gate::Token(_) => 0,
        }
    }

    /// The gate now: a handshake takes it once.
    pub fn gate(&self) -> Arc<Gate> {
        self.gate
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// The credentials file, if the gate reads one.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// Reads the credentials file again; `Ok(None)` without one, else how many
    /// credentials it now lists.
    pub fn reload(&self) -> Result<Option<usize>, CredentialsError> {
        let Some(path) = &self.file else {
            return Ok(None);
        };
        let credentials = Credentials::load(path)?;
        let listed = credentials.len();
        self.install(credentials);
        Ok(Some(listed))
    }

    /// How many reloads took effect: a connection whose grant is of an older generation
    /// has its credential checked again ([`Gate::regrant`]).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests;
