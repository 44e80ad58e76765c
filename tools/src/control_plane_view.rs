//! The control plane as `engram cluster status` shows it: each address given, what it
//! answered (leader, standby naming a leader, unreachable), and where the leader keeps
//! the state (a file, or etcd with each endpoint's health), as text or JSON.

use engram_client::admin::{ControlProcess, EtcdEndpointStatus, ProcessRole, StateStoreStatus};
use serde::Serialize;

/// The control plane, from [`engram_client::admin::Admin::processes`] and the leader's
/// [`engram_client::admin::Admin::control_plane`].
#[derive(Debug, Serialize)]
pub struct ControlPlaneView {
    /// The address that answered as leader; `None` when none did.
    pub leader: Option<String>,
    pub processes: Vec<ProcessView>,
    /// Where the leader keeps the state (`kind`: `file` or `etcd`); `None` without a
    /// leader, or from a leader older than the `ControlPlane` request.
    pub store: Option<StateStoreStatus>,
}

/// One control-plane process.
#[derive(Debug, Serialize)]
pub struct ProcessView {
    pub address: String,
    /// `leader`, `standby` or `unreachable`.
    pub role: &'static str,
    /// Given with --control; false for a leader only a standby named.
    pub listed: bool,
    /// The leader a standby names (`None` when it knows none, and for other roles).
    pub names_leader: Option<String>,
    /// Why it is unreachable; empty otherwise.
    pub error: String,
}

impl ControlPlaneView {
    pub fn new(processes: &[ControlProcess], store: Option<StateStoreStatus>) -> ControlPlaneView {
        let mut view = ControlPlaneView {
            leader: None,
            processes: Vec::with_capacity(processes.len()),
            store: None,
        };
        for process in processes {
            let (role, names_leader, error) = match &process.role {
                ProcessRole::Leader(_) => {
                    if view.leader.is_none() {
                        view.leader = Some(process.address.clone());
                    }
                    ("leader", None, String::new())
                }
                ProcessRole::Standby { leader } => ("standby", leader.clone(), String::new()),
                ProcessRole::Unreachable(error) => ("unreachable", None, error.to_string()),
            };
            view.processes.push(ProcessView {
                address: process.address.clone(),
                role,
                listed: process.listed,
                names_leader,
                error,
            });
        }
        if view.leader.is_some() {
            view.store = store;
        }
        view
    }

    /// What each address did, for the error `status` ends with when none leads.
    pub fn each_role(&self) -> Vec<String> {
        self.processes
            .iter()
            .map(|process| format!("{} {}", process.address, process.role_text()))
            .collect()
    }

    pub fn to_table(&self) -> String {
        let mut text = match (&self.leader, &self.store) {
            (Some(leader), Some(store)) => format!("control plane: leader {leader}; {}\n", store_text(store)),
            (Some(leader), None) => format!(
                "control plane: leader {leader}; where it keeps the state is not known (an older engram-control)\n"
            ),
            (None, _) => "control plane: no leader\n".to_string(),
        };
        for process in &self.processes {
            text.push_str(&format!("  {:<22} {}\n", process.address, process.role_text()));
        }
        if let Some(StateStoreStatus::Etcd { endpoints, .. }) = &self.store {
            for endpoint in endpoints {
                text.push_str(&format!(
                    "  etcd {:<28} {}\n",
                    endpoint.endpoint,
                    endpoint_text(endpoint)
                ));
            }
        }
        text
    }
}

impl ProcessView {
    fn role_text(&self) -> String {
        match (self.role, &self.names_leader) {
            ("leader", _) if !self.listed => "leader (named by a standby; not in --control)".to_string(),
            ("standby", Some(leader)) => format!("standby (names {leader} as leader)"),
            ("standby", None) => "standby (knows no leader: an election is under way)".to_string(),
            ("unreachable", _) => format!("unreachable: {}", self.error),
            (role, _) => role.to_string(),
        }
    }
}

fn store_text(store: &StateStoreStatus) -> String {
    match store {
        StateStoreStatus::File { path } => format!("state in the file {path} (one process, no etcd)"),
        StateStoreStatus::Etcd { prefix, endpoints } => {
            let healthy = endpoints.iter().filter(|endpoint| endpoint.healthy).count();
            format!(
                "state in etcd under {prefix} ({healthy} of {} endpoints healthy)",
                endpoints.len()
            )
        }
    }
}

fn endpoint_text(endpoint: &EtcdEndpointStatus) -> String {
    if !endpoint.healthy {
        return format!("unhealthy: {}", endpoint.error);
    }
    let role = if endpoint.raft_leader {
        "raft leader"
    } else {
        "follower"
    };
    format!(
        "healthy  v{}  {role}  term {}  db {} bytes",
        endpoint.version, endpoint.raft_term, endpoint.db_size_bytes
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use engram_client::admin::{AdminError, ClusterStatus};
    use engram_proto::SlotMap;

    use super::*;

    fn endpoint(endpoint: &str, healthy: bool) -> EtcdEndpointStatus {
        EtcdEndpointStatus {
            endpoint: endpoint.into(),
            healthy,
            error: if healthy {
                String::new()
            } else {
                "no answer within 1000 ms".into()
            },
            version: if healthy { "3.5.16".into() } else { String::new() },
            db_size_bytes: if healthy { 20_480 } else { 0 },
            raft_leader: healthy,
            raft_term: if healthy { 2 } else { 0 },
        }
    }

    fn process(address: &str, role: ProcessRole) -> ControlProcess {
        ControlProcess {
            address: address.into(),
            listed: true,
            role,
        }
    }

    /// A leader on etcd with one healthy and one silent endpoint, a standby naming it,
    /// an address that does not answer.
    pub(crate) fn sample() -> ControlPlaneView {
        let store = StateStoreStatus::Etcd {
            prefix: "/engram/blue".into(),
            endpoints: vec![
                endpoint("http://10.0.0.9:2379", true),
                endpoint("http://10.0.0.8:2379", false),
            ],
        };
        let processes = [
            leader("10.0.0.1:7300"),
            process(
                "10.0.0.2:7300",
                ProcessRole::Standby {
                    leader: Some("10.0.0.1:7300".into()),
                },
            ),
            process(
                "10.0.0.3:7300",
                ProcessRole::Unreachable(AdminError::NoLeader {
                    attempts: vec!["refused".into()],
                }),
            ),
        ];
        ControlPlaneView::new(&processes, Some(store))
    }

    fn leader(address: &str) -> ControlProcess {
        let status = ClusterStatus {
            map: SlotMap {
                epoch: 7,
                shards: Vec::new(),
                ranges: Vec::new(),
                version_floor: 0,
                backups: Vec::new(),
            },
            nodes: Vec::new(),
            migrations: Vec::new(),
            migrations_completed: 0,
            slots_moved_total: 0,
            bytes_moved_total: 0,
            migration_milliseconds_total: 0,
            last_error: String::new(),
            replicas: 0,
            under_replicated_slots: 0,
            slots_filling: 0,
            failovers_total: 0,
        };
        process(address, ProcessRole::Leader(Box::new(status)))
    }

    #[test]
    fn the_table_shows_each_role_the_leader_and_each_etcd_endpoint() {
        let table = sample().to_table();
        assert!(
            table.starts_with(
                "control plane: leader 10.0.0.1:7300; state in etcd under /engram/blue (1 of 2 endpoints healthy)\n"
            ),
            "{table}"
        );
        let line = |address: &str| table.lines().find(|line| line.contains(address)).unwrap().to_string();
        assert!(line("10.0.0.1:7300 ").trim_end().ends_with("leader"), "{table}");
        assert!(
            line("10.0.0.2:7300").contains("standby (names 10.0.0.1:7300 as leader)"),
            "{table}"
        );
        assert!(line("10.0.0.3:7300").contains("unreachable: "), "{table}");
        assert!(
            line("10.0.0.9:2379").contains("healthy  v3.5.16  raft leader"),
            "{table}"
        );
        assert!(
            line("10.0.0.8:2379").contains("unhealthy: no answer within 1000 ms"),
            "{table}"
        );
    }

    #[test]
    fn a_file_store_says_so_and_no_leader_says_what_each_address_did() {
        let store = StateStoreStatus::File {
            path: "/data/state".into(),
        };
        let view = ControlPlaneView::new(&[leader("127.0.0.1:7300")], Some(store));
        assert!(view
            .to_table()
            .contains("state in the file /data/state (one process, no etcd)"));
        let older = ControlPlaneView::new(&[leader("127.0.0.1:7300")], None);
        assert!(older.to_table().contains("not known (an older engram-control)"));
        let standby = process("10.0.0.2:7300", ProcessRole::Standby { leader: None });
        let none = ControlPlaneView::new(&[standby], Some(StateStoreStatus::File { path: "x".into() }));
        assert_eq!(none.store, None, "no store without a leader");
        assert_eq!(none.leader, None);
        assert!(none.to_table().starts_with("control plane: no leader"));
        assert_eq!(
            none.each_role(),
            ["10.0.0.2:7300 standby (knows no leader: an election is under way)"]
        );
    }

    #[test]
    fn the_json_view_names_roles_and_endpoints() {
        let json = serde_json::to_value(sample()).unwrap();
        assert_eq!(json["leader"], "10.0.0.1:7300");
        let roles: Vec<&str> = json["processes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|process| process["role"].as_str().unwrap())
            .collect();
        assert_eq!(roles, ["leader", "standby", "unreachable"]);
        assert_eq!(json["processes"][1]["names_leader"], "10.0.0.1:7300");
        assert_eq!(json["processes"][0]["listed"], true);
        assert_eq!(json["store"]["kind"], "etcd");
        assert_eq!(json["store"]["prefix"], "/engram/blue");
        assert_eq!(json["store"]["endpoints"][0]["healthy"], true);
        assert_eq!(json["store"]["endpoints"][0]["raft_leader"], true);
        assert_eq!(json["store"]["endpoints"][1]["healthy"], false);
        assert_eq!(json["store"]["endpoints"][1]["error"], "no answer within 1000 ms");
    }
}
