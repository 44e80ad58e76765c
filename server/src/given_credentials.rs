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

use engram_proto::credentials::Credentials;
use engram_proto::link::CallError;
use engram_proto::{ControlRequest, ControlResponse, Gatekeeper, SharedCredentials};

use crate::error::ServerError;
use crate::peering::ControlLink;

/// How errors name the credentials.
const ORIGIN: &str = "the control plane's credentials";

/// The gate of a node whose credentials come from the control plane, and the token the
/// node presents, which every credentials installed must keep admitting.
pub struct GivenCredentials {
    gatekeeper: Arc<Gatekeeper>,
    node_token: Vec<u8>,
    /// The digest of credentials last refused, not asked for again (nor logged again)
    /// until the control plane's change.
    refused_digest: Cell<u64>,
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
        })
    }

    pub fn gatekeeper(&self) -> &Arc<Gatekeeper> {
        &self.gatekeeper
    }

    /// After a heartbeat answered with `digest`: fetches and installs the control
    /// plane's credentials when they are not the ones the node holds.
    pub fn follow(&self, digest: u64, link: &mut ControlLink) -> Result<(), CallError> {
        if digest == 0 || digest == self.gatekeeper.shared_digest() || digest == self.refused_digest.get() {
            return Ok(());
        }
        let shared = match link.call(ControlRequest::GetCredentials)? {
            ControlResponse::Credentials(shared) => shared,
            other => {
                tracing::warn!(
                    answer = other.name(),
                    "the control plane did not hand over its credentials"
                );
                return Ok(());
            }
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
                self.refused_digest.set(shared.digest);
                tracing::error!(%reason, "the control plane's credentials refused; the previous ones still admit");
            }
        }
        Ok(())
    }
}
