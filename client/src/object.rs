//! What every coordination object handle holds (the client, the key, an optional call
//! timeout) and the one way it sends a command for its key.

use std::time::Duration;

use engram_proto::{Command, Response};

use crate::client::Client;
use crate::error::Error;

#[derive(Clone, Debug)]
pub(crate) struct Object {
    client: Client,
    key: Vec<u8>,
    timeout: Option<Duration>,
}

impl Object {
    pub fn new(client: Client, key: Vec<u8>) -> Object {
        Object {
            client,
            key,
            timeout: None,
        }
    }

    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// The key, owned, for a command.
    pub fn key_vec(&self) -> Vec<u8> {
        self.key.clone()
    }

    pub fn with_timeout(&self, timeout: Duration) -> Object {
        Object {
            timeout: Some(timeout),
            ..self.clone()
        }
    }

    /// Sends `command` for this key. Whether it is a mutation (and so keeps one operation
    /// id across retries) is the protocol's call, not each handle's; the call's timeout
    /// already includes the command's wait.
    pub async fn call(&self, command: Command) -> Result<Response, Error> {
        let mutation = command.is_mutation();
        self.client
            .call_with(Some(&self.key), command, mutation, self.timeout)
            .await
    }
}
