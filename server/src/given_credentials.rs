//! Credentials a node takes from its control plane (started with `--node-token` and
//! `--control`, no credentials file or shared token): the control plane hands its own
//! over with the join, and each heartbeat's answer carries their digest, on a change of
//! which the node asks for them again and installs them. Open connections follow at their
//! next request, as after a SIGHUP reload of a file.
//!
//! Credentials that do not parse, or that would refuse the node's own token as a node
//! (every peer would then refuse it too), leave the previous ones admitting.

use std::cell::Cell;
use std::sync::Arc;

use engram_proto::credentials::{shared_digest, Credentials};
use engram_proto::{ControlRequest, ControlResponse, Gatekeeper, SharedCredentials};

use crate::error::ServerError;
use crate::peering::ControlLink;
use crate::throttle::Throttle;

/// How errors name the credentials.
const ORIGIN: &str = "the control plane's credentials";
/// How often a failure to take the control plane's credentials is logged while it lasts
/// (the heartbeat tries again twice a second).
const PROBLEM_LOG_INTERVAL_MS: u64 = 60_000;

/// The gate of a node whose credentials come from the control plane, and the token the
/// node presents, which every credentials installed must keep admitting.
pub struct GivenCredentials {
    gatekeeper: Arc<Gatekeeper>,
    node_token: Vec<u8>,
    /// The digest of credentials last refused, not asked for again (nor logged again)
    /// until the control plane's change.
    refused_digest: Cell<u64>,
    problem_logged: Throttle,
}

impl GivenCredentials {
    /// The gate from the credentials a join brought; a control plane that shares none
    /// (it admits anyone, or by one shared token) cannot start such a node.
    pub fn from_join(shared: Option<SharedCredentials>, node_token: &str) -> Result<GivenCredentials, ServerError> {
        let shared = shared.ok_or(ServerError::NoSharedCredentials)?;
        let credentials = Credentials::parse(&shared.text, ORIGIN)?;
        let listed = credentials.len();
        let gatekeeper = Gatekeeper::given(credentials);
        gatekeeper
            .gate()
            .admit_node(node_token.as_bytes())
            .map_err(|denial| ServerError::NodeTokenRefused {
                by: ORIGIN.to_string(),
                reason: denial.to_string(),
            })?;
        tracing::info!(listed, "credentials taken from the control plane");
        Ok(GivenCredentials {
            gatekeeper: Arc::new(gatekeeper),
            node_token: node_token.as_bytes().to_vec(),
            refused_digest: Cell::new(0),
            problem_logged: Throttle::new(PROBLEM_LOG_INTERVAL_MS),
        })
    }

    pub fn gatekeeper(&self) -> &Arc<Gatekeeper> {
        &self.gatekeeper
    }

    /// After a heartbeat answered with `digest`: fetches and installs the control
    /// plane's credentials when they are not the ones the node holds. A failure keeps
    /// the credentials the node has, and the next heartbeat tries again; it never fails
    /// the heartbeat, which has done its work.
    pub fn follow(&self, digest: u64, link: &mut ControlLink) {
        if digest == 0 {
            self.problem("the control plane shares no credentials any more");
            return;
        }
        if digest == self.gatekeeper.shared_digest() || digest == self.refused_digest.get() {
            return;
        }
        let shared = match link.call(ControlRequest::GetCredentials) {
            Ok(ControlResponse::Credentials(shared)) => shared,
            Ok(other) => return self.problem(&format!("the control plane answered {}", other.name())),
            Err(error) => return self.problem(&error.to_string()),
        };
        let installed = Credentials::parse(&shared.text, ORIGIN)
            .map_err(|error| error.to_string())
            .and_then(|credentials| {
                self.gatekeeper
                    .install_admitting(credentials, &self.node_token)
                    .map_err(|denial| format!("they do not admit --node-token as a node: {denial}"))
            });
        match installed {
            Ok(listed) => tracing::info!(listed, "the control plane's credentials changed; installed"),
            Err(reason) => {
                self.refused_digest.set(shared_digest(&shared.text));
                tracing::error!(%reason, "the control plane's credentials refused; the previous ones still admit");
            }
        }
    }

    fn problem(&self, reason: &str) {
        if self.problem_logged.allows() {
            tracing::warn!(%reason, "cannot take the control plane's credentials; the previous ones still admit");
        }
    }
}
