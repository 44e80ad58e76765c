//! Which control-plane process to ask next, sans I/O. A node (its join and every
//! heartbeat) and an operator (`engram_client::admin`, the `engram cluster` CLI) are given
//! several control addresses (`--control A,B,C`), of which one leads and the others are
//! standbys answering `NotLeader`, naming the leader when they know it.
//!
//! [`ControlAddresses`] keeps the list and the leader last learned; a [`Round`] is one
//! bounded series of attempts to reach the leader, fed what each address did
//! ([`Outcome`]):
//! - a round starts at the leader last learned, else at the next listed address;
//! - `NotLeader` naming a leader: that address next, listed or not;
//! - `NotLeader` naming nobody (an election is under way), or an address that cannot be
//!   reached: the next listed address;
//! - every address is tried at most once per round, so standbys that still name a leader
//!   that died (until its lease lapses) cannot send a round in circles, and a round tries
//!   at most the listed addresses plus [`UNLISTED_ATTEMPTS_PER_ROUND_MAX`] others.
//!
//! Nothing here touches the network or a clock: the caller performs each exchange (with
//! its own timeout) and says how it went.

/// Most control addresses a node or operator may be given: a control plane runs a few
/// processes (three or five), so a longer list is a mistake.
pub const CONTROL_ADDRESSES_MAX: usize = 16;

/// Most addresses outside the list one round tries: leaders standbys named (a leader
/// advertised under a name the list does not use). Bounds a round whatever standbys say.
pub const UNLISTED_ATTEMPTS_PER_ROUND_MAX: usize = 2;

/// Why a list of control addresses is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlAddressesError {
    #[error("no control address given")]
    Empty,
    #[error("a control address is blank (in {list:?})")]
    Blank { list: String },
    #[error("{count} control addresses given, over control_addresses_max ({limit})")]
    TooMany { count: usize, limit: usize },
}

/// The control addresses a node or operator was given, and the leader last learned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlAddresses {
    listed: Vec<String>,
    /// The leader as last learned: it answered as leader, or a standby named it.
    leader: Option<String>,
    /// Where a round that knows no leader starts in `listed`: after the last listed
    /// address that failed to lead.
    cursor: usize,
}

/// What one exchange with one address came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It answered as the leader (with an answer or an error of its own): the round ends.
    Leader,
    /// A standby, naming the leader it knows of.
    NotLeader { leader: Option<String> },
    /// No answer: refused, broken or timed out.
    Unreachable,
}

impl ControlAddresses {
    /// `addresses` in the order given, duplicates dropped; at least one, at most
    /// [`CONTROL_ADDRESSES_MAX`], none blank.
    pub fn new<S: AsRef<str>>(addresses: &[S]) -> Result<ControlAddresses, ControlAddressesError> {
        let mut listed: Vec<String> = Vec::with_capacity(addresses.len());
        for address in addresses {
            let address = address.as_ref().trim();
            if address.is_empty() {
                let list: Vec<&str> = addresses.iter().map(AsRef::as_ref).collect();
                return Err(ControlAddressesError::Blank { list: list.join(",") });
            }
            if !listed.iter().any(|known| known == address) {
                listed.push(address.to_string());
            }
        }
        if listed.is_empty() {
            return Err(ControlAddressesError::Empty);
        }
        if listed.len() > CONTROL_ADDRESSES_MAX {
            return Err(ControlAddressesError::TooMany {
                count: listed.len(),
                limit: CONTROL_ADDRESSES_MAX,
            });
        }
        Ok(ControlAddresses {
            listed,
            leader: None,
            cursor: 0,
        })
    }

    /// One address, unchecked: a blank one fails when it is dialled, as any bad address.
    pub fn one(address: impl Into<String>) -> ControlAddresses {
        ControlAddresses {
            listed: vec![address.into()],
            leader: None,
            cursor: 0,
        }
    }

    /// `A,B,C`, as `--control` takes it.
    pub fn parse(list: &str) -> Result<ControlAddresses, ControlAddressesError> {
        ControlAddresses::new(&list.split(',').collect::<Vec<_>>())
    }

    /// The addresses given, in order.
    pub fn listed(&self) -> &[String] {
        &self.listed
    }

    /// The leader last learned, if any.
    pub fn leader(&self) -> Option<&str> {
        self.leader.as_deref()
    }

    /// `address` answered as the leader outside a round (a survey of every address).
    pub fn learn_leader(&mut self, address: &str) {
        self.leader = Some(address.to_string());
    }

    /// The address a round tries first.
    pub fn first(&self) -> &str {
        self.leader.as_deref().unwrap_or(&self.listed[self.cursor])
    }

    /// Starts a round of attempts to reach the leader; [`Round::finish`] gives the list
    /// back with what the round learned.
    pub fn round(self) -> Round {
        let first = self.first().to_string();
        Round {
            addresses: self,
            current: Some(first),
            tried: Vec::new(),
            reached: false,
        }
    }

    fn is_listed(&self, address: &str) -> bool {
        self.listed.iter().any(|listed| listed == address)
    }

    /// `listed`, joined as `--control` takes it.
    pub fn describe(&self) -> String {
        self.listed.join(",")
    }
}

/// One bounded series of attempts to reach the leader.
#[derive(Debug, Clone)]
pub struct Round {
    addresses: ControlAddresses,
    /// The address to try now; `None` once the round is over.
    current: Option<String>,
    /// Every address tried so far, in order.
    tried: Vec<String>,
    reached: bool,
}

impl Round {
    /// The address to try now; `None` once a leader answered or nothing is left to try.
    pub fn address(&self) -> Option<&str> {
        self.current.as_deref()
    }

    /// Whether a leader answered in this round.
    pub fn reached_leader(&self) -> bool {
        self.reached
    }

    /// The addresses tried so far, in order.
    pub fn tried(&self) -> &[String] {
        &self.tried
    }

    /// Records what the current address did, and picks the next one.
    pub fn record(&mut self, outcome: Outcome) {
        let Some(address) = self.current.take() else {
            return;
        };
        if let Some(index) = self.addresses.listed.iter().position(|listed| *listed == address) {
            // The next round that knows no leader starts after this one, unless it leads.
            self.addresses.cursor = match outcome {
                Outcome::Leader => index,
                _ => (index + 1) % self.addresses.listed.len(),
            };
        }
        self.tried.push(address.clone());
        match outcome {
            Outcome::Leader => {
                self.addresses.leader = Some(address);
                self.reached = true;
            }
            Outcome::NotLeader { leader: Some(named) } if !self.was_tried(&named) => {
                self.addresses.leader = Some(named.clone());
                self.current = self.within_bounds(named);
            }
            Outcome::NotLeader { .. } | Outcome::Unreachable => {
                if self.addresses.leader.as_deref() == Some(address.as_str())
                    || self
                        .addresses
                        .leader
                        .as_deref()
                        .is_some_and(|leader| self.was_tried(leader))
                {
                    self.addresses.leader = None;
                }
                self.current = self.next_listed();
            }
        }
    }

    /// Gives the list back, with the leader this round learned (or forgot).
    pub fn finish(self) -> ControlAddresses {
        self.addresses
    }

    fn was_tried(&self, address: &str) -> bool {
        self.tried.iter().any(|tried| tried == address)
    }

    /// `address`, unless it is outside the list and the round already tried its share
    /// of such addresses.
    fn within_bounds(&self, address: String) -> Option<String> {
        if self.addresses.is_listed(&address) {
            return Some(address);
        }
        let unlisted = self
            .tried
            .iter()
            .filter(|tried| !self.addresses.is_listed(tried))
            .count();
        match unlisted < UNLISTED_ATTEMPTS_PER_ROUND_MAX {
            true => Some(address),
            false => self.next_listed(),
        }
    }

    /// The first listed address from the cursor on that this round has not tried.
    fn next_listed(&self) -> Option<String> {
        let listed = &self.addresses.listed;
        (0..listed.len())
            .map(|offset| &listed[(self.addresses.cursor + offset) % listed.len()])
            .find(|address| !self.was_tried(address))
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn abc() -> ControlAddresses {
        ControlAddresses::parse("a:1,b:1,c:1").unwrap()
    }

    fn not_leader(leader: &str) -> Outcome {
        Outcome::NotLeader {
            leader: Some(leader.to_string()),
        }
    }

    /// Feeds `outcomes` to a round of `addresses`, one per address it asks for; returns
    /// the addresses it tried and the list it gives back.
    fn run(addresses: ControlAddresses, outcomes: &[(&str, Outcome)]) -> (Round, ControlAddresses) {
        let mut round = addresses.round();
        for (expected, outcome) in outcomes {
            assert_eq!(round.address(), Some(*expected), "tried so far: {:?}", round.tried());
            round.record(outcome.clone());
        }
        let finished = round.clone().finish();
        (round, finished)
    }

    #[test]
    fn lists_are_parsed_trimmed_and_deduplicated_and_bad_ones_refused() {
        let addresses = ControlAddresses::parse(" a:1 ,b:1,a:1").unwrap();
        assert_eq!(addresses.listed(), ["a:1", "b:1"]);
        assert_eq!(addresses.describe(), "a:1,b:1");
        assert_eq!(addresses.first(), "a:1");
        assert!(matches!(
            ControlAddresses::parse("a:1,,b:1"),
            Err(ControlAddressesError::Blank { .. })
        ));
        assert_eq!(ControlAddresses::new::<&str>(&[]), Err(ControlAddressesError::Empty));
        let many: Vec<String> = (0..=CONTROL_ADDRESSES_MAX).map(|port| format!("h:{port}")).collect();
        let error = ControlAddresses::new(&many).unwrap_err();
        assert!(error.to_string().contains("control_addresses_max"), "{error}");
    }

    #[test]
    fn a_round_starts_at_the_first_address_and_ends_where_the_leader_answers() {
        let (round, addresses) = run(abc(), &[("a:1", Outcome::Leader)]);
        assert!(round.reached_leader());
        assert_eq!(round.address(), None);
        assert_eq!(addresses.leader(), Some("a:1"));
        // The next round goes straight to it.
        assert_eq!(addresses.round().address(), Some("a:1"));
    }

    #[test]
    fn a_standby_naming_the_leader_sends_the_round_there() {
        let (round, addresses) = run(abc(), &[("a:1", not_leader("c:1")), ("c:1", Outcome::Leader)]);
        assert!(round.reached_leader());
        assert_eq!(round.tried(), ["a:1", "c:1"]);
        assert_eq!(addresses.leader(), Some("c:1"));
    }

    #[test]
    fn no_leader_named_or_no_answer_moves_on_to_the_next_listed_address() {
        let (round, _) = run(
            abc(),
            &[
                ("a:1", Outcome::NotLeader { leader: None }),
                ("b:1", Outcome::Unreachable),
                ("c:1", Outcome::Leader),
            ],
        );
        assert!(round.reached_leader());
    }

    #[test]
    fn a_leader_outside_the_list_is_followed_and_remembered() {
        let (round, addresses) = run(abc(), &[("a:1", not_leader("z:9")), ("z:9", Outcome::Leader)]);
        assert!(round.reached_leader());
        assert_eq!(addresses.leader(), Some("z:9"));
        assert_eq!(addresses.round().address(), Some("z:9"));
    }

    /// The leader was killed: it cannot be reached, and the standbys still name it until
    /// its lease lapses. Each address is tried once, and the round gives up.
    #[test]
    fn standbys_naming_a_dead_leader_do_not_send_the_round_in_circles() {
        let (_, known) = run(abc(), &[("a:1", Outcome::Leader)]);
        let (round, addresses) = run(
            known,
            &[
                ("a:1", Outcome::Unreachable),
                ("b:1", not_leader("a:1")),
                ("c:1", not_leader("a:1")),
            ],
        );
        assert!(!round.reached_leader());
        assert_eq!(round.address(), None, "every address was tried once");
        assert_eq!(addresses.leader(), None, "the dead leader is forgotten");
        // Once a standby took over, the next round finds it.
        let (round, addresses) = run(
            addresses,
            &[
                ("a:1", Outcome::Unreachable),
                ("b:1", not_leader("c:1")),
                ("c:1", Outcome::Leader),
            ],
        );
        assert!(round.reached_leader());
        assert_eq!(addresses.leader(), Some("c:1"));
    }

    #[test]
    fn a_round_that_finds_no_leader_starts_the_next_one_further_down_the_list() {
        let (round, addresses) = run(
            abc(),
            &[
                ("a:1", Outcome::Unreachable),
                ("b:1", Outcome::Unreachable),
                ("c:1", Outcome::NotLeader { leader: None }),
            ],
        );
        assert!(!round.reached_leader());
        assert_eq!(round.address(), None);
        assert_eq!(addresses.round().address(), Some("a:1"), "after c comes a again");
        let (_, addresses) = run(abc(), &[("a:1", Outcome::Unreachable), ("b:1", Outcome::Leader)]);
        let (_, addresses) = run(
            addresses,
            &[("b:1", Outcome::Unreachable), ("c:1", Outcome::Unreachable)],
        );
        assert_eq!(addresses.round().address(), Some("a:1"));
    }

    #[test]
    fn leaders_outside_the_list_are_tried_a_bounded_number_of_times_per_round() {
        let (round, _) = run(
            ControlAddresses::parse("a:1").unwrap(),
            &[
                ("a:1", not_leader("x:1")),
                ("x:1", not_leader("y:1")),
                ("y:1", not_leader("z:1")),
            ],
        );
        assert_eq!(round.tried().len(), 1 + UNLISTED_ATTEMPTS_PER_ROUND_MAX);
        assert_eq!(round.address(), None, "z:1 is one unlisted address too many");
    }

    #[test]
    fn a_leader_that_turns_out_to_be_a_standby_is_forgotten() {
        let (_, known) = run(abc(), &[("a:1", not_leader("b:1")), ("b:1", Outcome::Leader)]);
        let (round, addresses) = run(
            known,
            &[
                ("b:1", Outcome::NotLeader { leader: None }),
                ("c:1", Outcome::Unreachable),
                ("a:1", Outcome::Unreachable),
            ],
        );
        assert!(!round.reached_leader());
        assert_eq!(round.address(), None);
        assert_eq!(addresses.leader(), None);
    }
}
