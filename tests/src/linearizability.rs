//! A linearizability checker for recorded histories, written independently of the server so
//! that it can judge the server's behaviour instead of restating it.
//!
//! A history is a list of [`Operation`]s: who invoked what, when it was invoked, and either
//! when it returned and what it answered, or [`Outcome::Unknown`] (a timeout, a dropped
//! connection, a crashed client: the operation may have taken effect at any moment after its
//! invocation, or never). The history is linearizable when there is a total order of the
//! operations that (1) respects real time: an operation that returned before another was
//! invoked comes first, (2) replays through a sequential [`Model`] reproducing every recorded
//! answer, and (3) contains every returned operation, while unknown operations may be left
//! out.
//!
//! # Algorithm
//!
//! Wing & Gong's depth-first search as refined by Lowe ("Testing for linearizability", 2017),
//! the formulation Knossos and Porcupine use:
//! - Every returned operation contributes a *call* entry at its invocation time and a
//!   *return* entry at its completion time; all entries go into one doubly linked list sorted
//!   by time. At equal times calls come first, so operations whose timestamps touch count as
//!   concurrent: the clock cannot tell which came first, and a false alarm is worse than a
//!   slightly weaker check.
//! - The search walks the list from the front. A call entry is a candidate linearization
//!   point: if the model accepts the operation in the current state, the operation is
//!   *lifted* (its call and return entries are unlinked), the old state is pushed, and the
//!   walk restarts from the front. Reaching a return entry means that operation's deadline
//!   passed without it being linearized, so the search *unlifts* the most recent choice
//!   (relinking its entries exactly where they were, dancing-links style) and tries the next
//!   call after it.
//! - A cache of (set of linearized operations as a bitset, model state) prunes the search:
//!   two paths that linearized the same operations and reached the same state have the same
//!   future, so only the first is explored. This is what makes the search practical: with at
//!   most `c` operations in flight at once the work is roughly proportional to the history
//!   length times `2^c` times the number of distinct states, instead of factorial.
//! - An unknown operation has a call entry and no return entry: nothing forces it to be
//!   linearized, and the search succeeds as soon as the walk runs off the end of the list,
//!   which means every returned operation has been lifted. At each step the unknown
//!   candidates are tried only after every returned candidate failed, so an uncertain effect
//!   is placed right where some answer needs it rather than early and then undone by long
//!   backtracking. Unknown operations the model calls read-only ([`Model::is_read_only`])
//!   are dropped up front: they cannot affect anything, and keeping them would only double
//!   the cache per such operation.
//!
//! # Limits
//!
//! - The search is exponential in the worst case (checking linearizability is NP-complete).
//!   It is bounded by [`STATES_EXPLORED_MAX`] cached states (about `n / 8` bytes of bitset
//!   plus a state each), beyond which the verdict is [`Verdict::Unknown`] rather than a guess.
//!   Keep histories per key ([`check_per_key`]) and concurrency bounded (a handful of clients
//!   per key) and the search stays linear-ish.
//! - An unknown-outcome operation that changes state stays pending until the end of the
//!   history, so each one can double the states an exhaustive search (the one proving a
//!   violation) visits. A few dozen per key are fine when the history is linearizable; a
//!   violating history with many of them may come back [`Verdict::Unknown`].
//! - Timestamps are only as good as the recorder: an invocation must be stamped before the
//!   request leaves, a completion after the answer arrives. [`HistoryRecorder`] does that
//!   with one monotonic clock shared by every task of the process; histories from several
//!   processes would need a common clock and are not supported.
//! - An operation that certainly had no effect (the server refused it) must be left out of
//!   the history ([`HistoryRecorder::discard`]); recording it as returned would demand that
//!   it took effect, and recording it as unknown only weakens the check.
//! - Models are per key: the checker knows nothing of multi-key operations.

use std::collections::{BTreeMap, HashSet};
use std::fmt::{self, Debug};
use std::hash::Hash;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

/// Most (linearized set, state) pairs one [`check`] caches before answering
/// [`Verdict::Unknown`]. A linearizable history with bounded concurrency needs little more
/// than one state per operation; the budget is for the exhaustive search that proves a
/// violation, and bounds memory at a few hundred megabytes for a history of thousands of
/// operations.
pub const STATES_EXPLORED_MAX: usize = 1_000_000;

/// How an operation ended, as far as the client could tell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome<O> {
    /// The answer arrived at `completed_ns` (same clock as the invocation).
    Returned { completed_ns: u64, output: O },
    /// No answer (timeout, lost connection, crash): the operation may have taken effect at
    /// any moment after its invocation, or never, and its answer constrains nothing.
    Unknown,
}

/// One operation of a history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation<I, O> {
    /// Only for diagnostics: the checker does not require a client's operations to be
    /// sequential.
    pub client: u64,
    pub invoked_ns: u64,
    pub input: I,
    pub outcome: Outcome<O>,
}

impl<I, O> Operation<I, O> {
    /// An operation that returned `output`.
    pub fn returned(client: u64, invoked_ns: u64, completed_ns: u64, input: I, output: O) -> Self {
        Operation {
            client,
            invoked_ns,
            input,
            outcome: Outcome::Returned { completed_ns, output },
        }
    }

    /// An operation whose outcome is unknown.
    pub fn unknown(client: u64, invoked_ns: u64, input: I) -> Self {
        Operation {
            client,
            invoked_ns,
            input,
            outcome: Outcome::Unknown,
        }
    }

    pub fn completed_ns(&self) -> Option<u64> {
        match self.outcome {
            Outcome::Returned { completed_ns, .. } => Some(completed_ns),
            Outcome::Unknown => None,
        }
    }

    pub fn output(&self) -> Option<&O> {
        match &self.outcome {
            Outcome::Returned { output, .. } => Some(output),
            Outcome::Unknown => None,
        }
    }
}

/// An operation on the object named by a key, as [`check_per_key`] and [`HistoryRecorder`]
/// use them.
pub type KeyedOperation<K, I, O> = (K, Operation<I, O>);

/// A sequential specification of one object.
pub trait Model {
    type State: Clone + Eq + Hash + Debug;
    type Input: Debug;
    type Output: Debug;

    fn init(&self) -> Self::State;

    /// The state after applying `input` to `state`, or `None` when the operation cannot
    /// happen there: when `output` is given and differs from what the specification answers
    /// (`output` is `None` for an operation whose outcome is unknown, which matches any
    /// answer).
    fn step(&self, state: &Self::State, input: &Self::Input, output: Option<&Self::Output>) -> Option<Self::State>;

    /// True when `input` never changes the state, so an unknown-outcome instance can be
    /// dropped from the history. Defaults to false, which is always correct, only slower.
    fn is_read_only(&self, _input: &Self::Input) -> bool {
        false
    }
}

/// The answer of a check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    NotLinearizable {
        /// Indices into the checked history: first the operation whose completion the
        /// deepest search attempt could not get past, then the other operations that were
        /// pending (invoked, not linearized) at that point, none of which could go next.
        stuck_operations: Vec<usize>,
        /// Names those operations, the model state they met and the operations linearized
        /// just before, for the failure message.
        reason: String,
    },
    /// The search gave up after caching `states_explored` states (see
    /// [`STATES_EXPLORED_MAX`]); the history may or may not be linearizable.
    Unknown {
        states_explored: usize,
    },
}

impl Verdict {
    pub fn is_linearizable(&self) -> bool {
        matches!(self, Verdict::Linearizable)
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Linearizable => formatter.write_str("linearizable"),
            Verdict::NotLinearizable { reason, .. } => write!(formatter, "not linearizable: {reason}"),
            Verdict::Unknown { states_explored } => {
                write!(
                    formatter,
                    "unknown: search budget exhausted after {states_explored} states"
                )
            }
        }
    }
}

/// Checks `history` against `model` with the default budget [`STATES_EXPLORED_MAX`].
///
/// Panics when an operation completes before it was invoked: that is a recording bug, not a
/// property of the system under test.
pub fn check<M: Model>(model: &M, history: &[Operation<M::Input, M::Output>]) -> Verdict {
    check_with_budget(model, history, STATES_EXPLORED_MAX)
}

/// [`check`] with an explicit bound on cached states.
pub fn check_with_budget<M: Model>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
    states_explored_max: usize,
) -> Verdict {
    let indexed: Vec<IndexedOperation<M::Input, M::Output>> = history.iter().enumerate().collect();
    search(model, &indexed, states_explored_max)
}

/// Checks each key's operations separately (linearizability is compositional: a history is
/// linearizable exactly when every object's sub-history is), returning one verdict per key
/// in key order. Indices in the verdicts refer to positions in `history`.
pub fn check_per_key<K: Ord + Clone, M: Model>(
    model: &M,
    history: &[KeyedOperation<K, M::Input, M::Output>],
) -> Vec<(K, Verdict)> {
    let mut by_key: BTreeMap<&K, Vec<_>> = BTreeMap::new();
    for (index, (key, operation)) in history.iter().enumerate() {
        by_key.entry(key).or_default().push((index, operation));
    }
    by_key
        .into_iter()
        .map(|(key, operations)| (key.clone(), search(model, &operations, STATES_EXPLORED_MAX)))
        .collect()
}

/// The first key whose verdict is not [`Verdict::Linearizable`], formatted for a panic
/// message; `None` when every key passed.
pub fn first_failure<K: Debug>(verdicts: &[(K, Verdict)]) -> Option<String> {
    verdicts
        .iter()
        .find(|(_, verdict)| !verdict.is_linearizable())
        .map(|(key, verdict)| format!("key {key:?}: {verdict}"))
}

/// An operation with its index in the caller's history, which failure messages report.
type IndexedOperation<'history, I, O> = (usize, &'history Operation<I, O>);

/// Node numbers of the sentinels of [`EntryList`]; entries are numbered from 1.
const HEAD: usize = 0;

/// The time-ordered call/return entries as a doubly linked list over arrays, so lifting and
/// unlifting an operation are a few index writes and unlifting restores the exact position.
struct EntryList {
    next: Vec<usize>,
    previous: Vec<usize>,
    /// The operation (index into the searched slice) of each entry node.
    operation: Vec<usize>,
    /// For a call node, its return node; `None` for return nodes and for calls of unknown
    /// operations (which have no return).
    return_of_call: Vec<Option<usize>>,
    is_call: Vec<bool>,
    tail: usize,
}

impl EntryList {
    fn new<I, O>(operations: &[&Operation<I, O>]) -> EntryList {
        // (time, calls before returns at equal times, operation, is call)
        let mut events: Vec<(u64, u8, usize, bool)> = Vec::with_capacity(operations.len() * 2);
        for (operation_index, operation) in operations.iter().enumerate() {
            events.push((operation.invoked_ns, 0, operation_index, true));
            if let Some(completed_ns) = operation.completed_ns() {
                assert!(
                    completed_ns >= operation.invoked_ns,
                    "operation of client {} completed at {completed_ns} ns before its invocation at {} ns",
                    operation.client,
                    operation.invoked_ns
                );
                events.push((completed_ns, 1, operation_index, false));
            }
        }
        events.sort_unstable();

        let node_count = events.len() + 2;
        let tail = node_count - 1;
        let mut list = EntryList {
            next: (1..=node_count).collect(),
            previous: (0..node_count).map(|node| node.wrapping_sub(1)).collect(),
            operation: vec![usize::MAX; node_count],
            return_of_call: vec![None; node_count],
            is_call: vec![false; node_count],
            tail,
        };
        let mut call_node_of_operation = vec![usize::MAX; operations.len()];
        for (position, &(_, _, operation_index, is_call)) in events.iter().enumerate() {
            let node = position + 1;
            list.operation[node] = operation_index;
            list.is_call[node] = is_call;
            if is_call {
                call_node_of_operation[operation_index] = node;
            } else {
                // The call sorts first (its time is not later, and calls win ties).
                list.return_of_call[call_node_of_operation[operation_index]] = Some(node);
            }
        }
        list
    }

    fn first(&self) -> usize {
        self.next[HEAD]
    }

    fn unlink(&mut self, node: usize) {
        let (previous, next) = (self.previous[node], self.next[node]);
        self.next[previous] = next;
        self.previous[next] = previous;
    }

    /// Valid only in the reverse order of `unlink`s, which the depth-first search guarantees.
    fn relink(&mut self, node: usize) {
        let (previous, next) = (self.previous[node], self.next[node]);
        self.next[previous] = node;
        self.previous[next] = node;
    }

    fn lift(&mut self, call: usize) {
        self.unlink(call);
        if let Some(return_node) = self.return_of_call[call] {
            self.unlink(return_node);
        }
    }

    fn unlift(&mut self, call: usize) {
        if let Some(return_node) = self.return_of_call[call] {
            self.relink(return_node);
        }
        self.relink(call);
    }
}

struct BitSet {
    words: Vec<u64>,
}

impl BitSet {
    fn new(bits: usize) -> BitSet {
        BitSet {
            words: vec![0; bits.div_ceil(64)],
        }
    }

    fn insert(&mut self, bit: usize) {
        self.words[bit / 64] |= 1 << (bit % 64);
    }

    fn remove(&mut self, bit: usize) {
        self.words[bit / 64] &= !(1 << (bit % 64));
    }
}

/// What the deepest failed attempt looked like, for the failure message.
struct DeepestAttempt<S> {
    linearized_count: usize,
    stuck: usize,
    pending: Vec<usize>,
    state: S,
    recent_linearized: Vec<usize>,
}

/// How many of the operations linearized before the stuck point the failure message shows.
const RECENT_LINEARIZED_SHOWN: usize = 8;

fn search<M: Model>(
    model: &M,
    operations: &[IndexedOperation<M::Input, M::Output>],
    states_explored_max: usize,
) -> Verdict {
    let kept: Vec<IndexedOperation<M::Input, M::Output>> = operations
        .iter()
        .copied()
        .filter(|(_, operation)| operation.completed_ns().is_some() || !model.is_read_only(&operation.input))
        .collect();
    let searched: Vec<&Operation<M::Input, M::Output>> = kept.iter().map(|&(_, operation)| operation).collect();

    let mut entries = EntryList::new(&searched);
    let mut linearized = BitSet::new(searched.len());
    let mut cache: HashSet<(Box<[u64]>, M::State)> = HashSet::new();
    let mut choices: Vec<Choice<M::State>> = Vec::new();
    let mut state = model.init();
    let mut deepest: Option<DeepestAttempt<M::State>> = None;
    let mut node = entries.first();
    let mut pass = Pass::Returned;

    loop {
        if node == entries.tail {
            // No return entry is left pending: every returned operation is linearized, and
            // unknown ones need not be. (The unknown pass never gets here: it stops at the
            // return entry that ended the returned pass.)
            debug_assert!(pass == Pass::Returned);
            return Verdict::Linearizable;
        }
        let operation_index = entries.operation[node];
        if entries.is_call[node] {
            let operation = searched[operation_index];
            let in_this_pass = operation.completed_ns().is_some() == (pass == Pass::Returned);
            if in_this_pass {
                if let Some(next_state) = model.step(&state, &operation.input, operation.output()) {
                    linearized.insert(operation_index);
                    if cache.insert((linearized.words.clone().into_boxed_slice(), next_state.clone())) {
                        if cache.len() > states_explored_max {
                            return Verdict::Unknown {
                                states_explored: cache.len(),
                            };
                        }
                        choices.push(Choice {
                            call: node,
                            pass,
                            state_before: std::mem::replace(&mut state, next_state),
                        });
                        entries.lift(node);
                        node = entries.first();
                        pass = Pass::Returned;
                        continue;
                    }
                    linearized.remove(operation_index);
                }
            }
            node = entries.next[node];
        } else if pass == Pass::Returned {
            // Every returned candidate failed here; the unknown ones get their turn only now,
            // so that their effect is tried as late as possible, right where some answer
            // needs it, instead of early and then undone by long backtracking.
            pass = Pass::Unknown;
            node = entries.first();
        } else {
            // This operation's completion came and no candidate could go before it in this
            // state, so the last choice was wrong.
            if deepest
                .as_ref()
                .is_none_or(|attempt| choices.len() > attempt.linearized_count)
            {
                deepest = Some(describe_attempt(&entries, &choices, node, &state));
            }
            let Some(choice) = choices.pop() else {
                let attempt = deepest.expect("recorded just above");
                return not_linearizable(&kept, &searched, attempt);
            };
            state = choice.state_before;
            pass = choice.pass;
            linearized.remove(entries.operation[choice.call]);
            entries.unlift(choice.call);
            node = entries.next[choice.call];
        }
    }
}

/// Which candidates a walk of the entry list is trying: returned operations first, then
/// unknown-outcome ones.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pass {
    Returned,
    Unknown,
}

/// One linearized operation on the search stack.
struct Choice<S> {
    call: usize,
    /// Where to resume among the candidates when this choice is undone.
    pass: Pass,
    state_before: S,
}

fn describe_attempt<S: Clone>(
    entries: &EntryList,
    choices: &[Choice<S>],
    stuck_node: usize,
    state: &S,
) -> DeepestAttempt<S> {
    let mut pending = Vec::new();
    let mut node = entries.first();
    while node != stuck_node {
        if entries.is_call[node] && entries.operation[node] != entries.operation[stuck_node] {
            pending.push(entries.operation[node]);
        }
        node = entries.next[node];
    }
    let recent_start = choices.len().saturating_sub(RECENT_LINEARIZED_SHOWN);
    DeepestAttempt {
        linearized_count: choices.len(),
        stuck: entries.operation[stuck_node],
        pending,
        state: state.clone(),
        recent_linearized: choices[recent_start..]
            .iter()
            .map(|choice| entries.operation[choice.call])
            .collect(),
    }
}

fn not_linearizable<I: Debug, O: Debug, S: Debug>(
    kept: &[IndexedOperation<I, O>],
    searched: &[&Operation<I, O>],
    attempt: DeepestAttempt<S>,
) -> Verdict {
    let describe = |searched_index: usize| describe_operation(kept[searched_index].0, searched[searched_index]);
    let mut reason = format!(
        "at most {} of {} operations linearize; then {} cannot take effect before it returns, in state {:?}",
        attempt.linearized_count,
        searched.len(),
        describe(attempt.stuck),
        attempt.state
    );
    let others: Vec<String> = attempt.pending.iter().map(|&index| describe(index)).collect();
    if !others.is_empty() {
        reason.push_str(&format!("; nor can any other pending operation: {}", others.join(", ")));
    }
    if !attempt.recent_linearized.is_empty() {
        let recent: Vec<String> = attempt.recent_linearized.iter().map(|&index| describe(index)).collect();
        reason.push_str(&format!("; last linearized, in order: {}", recent.join(", ")));
    }
    let mut stuck_operations = vec![kept[attempt.stuck].0];
    stuck_operations.extend(attempt.pending.iter().map(|&index| kept[index].0));
    Verdict::NotLinearizable {
        stuck_operations,
        reason,
    }
}

fn describe_operation<I: Debug, O: Debug>(history_index: usize, operation: &Operation<I, O>) -> String {
    match &operation.outcome {
        Outcome::Returned { completed_ns, output } => format!(
            "#{history_index} (client {}, {}..{} ns, {:?} -> {output:?})",
            operation.client, operation.invoked_ns, completed_ns, operation.input
        ),
        Outcome::Unknown => format!(
            "#{history_index} (client {}, {}.. ns, {:?} -> unknown)",
            operation.client, operation.invoked_ns, operation.input
        ),
    }
}

/// A counter: `Add` answers the new value, `Get` the current one; a missing counter reads 0.
#[derive(Clone, Copy, Debug, Default)]
pub struct CounterModel;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum CounterInput {
    Add { delta: i64 },
    Get,
}

impl Model for CounterModel {
    type State = i64;
    type Input = CounterInput;
    type Output = i64;

    fn init(&self) -> i64 {
        0
    }

    fn step(&self, state: &i64, input: &CounterInput, output: Option<&i64>) -> Option<i64> {
        let next = match input {
            // An overflowing add would be refused by the server, so it cannot be in a history
            // as having taken effect.
            CounterInput::Add { delta } => state.checked_add(*delta)?,
            CounterInput::Get => *state,
        };
        match output {
            Some(answer) if *answer != next => None,
            _ => Some(next),
        }
    }

    fn is_read_only(&self, input: &CounterInput) -> bool {
        matches!(input, CounterInput::Get)
    }
}

/// A register of bytes: `Set` answers [`RegisterOutput::Written`], `Get` the current value,
/// `None` before the first `Set`.
#[derive(Clone, Copy, Debug, Default)]
pub struct RegisterModel;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RegisterInput {
    Set { value: Vec<u8> },
    Get,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RegisterOutput {
    Written,
    Value(Option<Vec<u8>>),
}

impl Model for RegisterModel {
    type State = Option<Vec<u8>>;
    type Input = RegisterInput;
    type Output = RegisterOutput;

    fn init(&self) -> Option<Vec<u8>> {
        None
    }

    fn step(
        &self,
        state: &Option<Vec<u8>>,
        input: &RegisterInput,
        output: Option<&RegisterOutput>,
    ) -> Option<Option<Vec<u8>>> {
        // A mismatched answer kind (a Set answering a value) is reported as a violation
        // naming the operation rather than panicking mid-search.
        match (input, output) {
            (RegisterInput::Set { value }, None | Some(RegisterOutput::Written)) => Some(Some(value.clone())),
            (RegisterInput::Get, None) => Some(state.clone()),
            (RegisterInput::Get, Some(RegisterOutput::Value(read))) if read == state => Some(state.clone()),
            _ => None,
        }
    }

    fn is_read_only(&self, input: &RegisterInput) -> bool {
        matches!(input, RegisterInput::Get)
    }
}

/// Records a keyed history from any number of threads or tokio tasks, with one monotonic
/// clock for all of them. Share it behind an `Arc`; its lock is held only to push or fill
/// one entry, never across an await.
pub struct HistoryRecorder<K, I, O> {
    origin: Instant,
    /// `None` marks a discarded operation; slots are never removed so tokens stay valid.
    operations: Mutex<Vec<Option<KeyedOperation<K, I, O>>>>,
}

/// Names one invoked operation of a [`HistoryRecorder`]. Dropping it without
/// [`HistoryRecorder::complete`] or [`HistoryRecorder::discard`] leaves the outcome unknown,
/// which is what a task that was cancelled or timed out should leave.
#[derive(Debug)]
pub struct InvocationToken {
    slot: usize,
}

impl<K, I, O> Default for HistoryRecorder<K, I, O> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K, I, O> HistoryRecorder<K, I, O> {
    pub fn new() -> Self {
        HistoryRecorder {
            origin: Instant::now(),
            operations: Mutex::new(Vec::new()),
        }
    }

    /// Nanoseconds since the recorder was created.
    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Stamps an invocation; call it before the request is sent. The stamp is taken under the
    /// lock, so waiting for the lock only moves it earlier than the send, which is safe.
    pub fn invoke(&self, client: u64, key: K, input: I) -> InvocationToken {
        let mut operations = self.lock();
        let invoked_ns = self.now_ns();
        operations.push(Some((key, Operation::unknown(client, invoked_ns, input))));
        InvocationToken {
            slot: operations.len() - 1,
        }
    }

    /// Stamps the completion; call it after the answer arrived (waiting for the lock only
    /// moves the stamp later, which is safe).
    pub fn complete(&self, token: InvocationToken, output: O) {
        let mut operations = self.lock();
        let completed_ns = self.now_ns();
        if let Some((_, operation)) = &mut operations[token.slot] {
            operation.outcome = Outcome::Returned { completed_ns, output };
        }
    }

    /// Removes an operation that certainly had no effect (the server refused it), so it
    /// constrains nothing. Only for definite refusals: when in doubt, drop the token instead.
    pub fn discard(&self, token: InvocationToken) {
        self.lock()[token.slot] = None;
    }

    /// The recorded operations so far, in invocation order, without discarded ones.
    pub fn history(&self) -> Vec<KeyedOperation<K, I, O>>
    where
        K: Clone,
        I: Clone,
        O: Clone,
    {
        self.lock().iter().flatten().cloned().collect()
    }

    /// The recorded operations, consuming the recorder.
    pub fn into_history(self) -> Vec<KeyedOperation<K, I, O>> {
        self.operations
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner)
            .into_iter()
            .flatten()
            .collect()
    }

    pub fn len(&self) -> usize {
        self.lock().iter().flatten().count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A panicking recording task must not take the whole history down with it: the data
    /// is a plain list, consistent after any single push or fill.
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Option<KeyedOperation<K, I, O>>>> {
        self.operations.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn add(client: u64, invoked: u64, completed: u64, delta: i64, output: i64) -> Operation<CounterInput, i64> {
        Operation::returned(client, invoked, completed, CounterInput::Add { delta }, output)
    }

    fn get(client: u64, invoked: u64, completed: u64, output: i64) -> Operation<CounterInput, i64> {
        Operation::returned(client, invoked, completed, CounterInput::Get, output)
    }

    fn set(client: u64, invoked: u64, completed: u64, value: &[u8]) -> Operation<RegisterInput, RegisterOutput> {
        Operation::returned(
            client,
            invoked,
            completed,
            RegisterInput::Set { value: value.to_vec() },
            RegisterOutput::Written,
        )
    }

    fn read(
        client: u64,
        invoked: u64,
        completed: u64,
        value: Option<&[u8]>,
    ) -> Operation<RegisterInput, RegisterOutput> {
        Operation::returned(
            client,
            invoked,
            completed,
            RegisterInput::Get,
            RegisterOutput::Value(value.map(<[u8]>::to_vec)),
        )
    }

    fn assert_linearizable<M: Model>(model: &M, history: &[Operation<M::Input, M::Output>]) {
        let verdict = check(model, history);
        assert!(verdict.is_linearizable(), "{verdict}\nhistory: {history:#?}");
    }

    fn assert_violation<M: Model>(model: &M, history: &[Operation<M::Input, M::Output>]) -> Vec<usize> {
        match check(model, history) {
            Verdict::NotLinearizable {
                stuck_operations,
                reason,
            } => {
                assert!(reason.contains(&format!("#{}", stuck_operations[0])), "{reason}");
                stuck_operations
            }
            other => panic!("expected a violation, got {other}\nhistory: {history:#?}"),
        }
    }

    #[test]
    fn empty_history_is_linearizable() {
        assert_linearizable(&CounterModel, &[]);
        assert_linearizable(&RegisterModel, &[]);
    }

    #[test]
    fn missing_counter_reads_zero_and_missing_register_reads_none() {
        assert_linearizable(&CounterModel, &[get(0, 0, 1, 0)]);
        assert_linearizable(&RegisterModel, &[read(0, 0, 1, None)]);
        assert_violation(&CounterModel, &[get(0, 0, 1, 1)]);
    }

    #[test]
    fn concurrent_read_may_see_old_or_new_value() {
        for seen in [None, Some(&b"a"[..])] {
            assert_linearizable(&RegisterModel, &[set(0, 0, 10, b"a"), read(1, 5, 15, seen)]);
        }
        for seen in [0, 3] {
            assert_linearizable(&CounterModel, &[add(0, 0, 10, 3, 3), get(1, 5, 15, seen)]);
        }
    }

    #[test]
    fn order_among_concurrent_operations_is_found_by_backtracking() {
        // Only the order 2, 1, 0 explains the answers, though invocation order is 0, 1, 2.
        let history = [add(0, 0, 100, 1, 6), add(1, 1, 100, 2, 5), add(2, 2, 100, 3, 3)];
        assert_linearizable(&CounterModel, &history);
    }

    #[test]
    fn touching_timestamps_count_as_concurrent() {
        // The read was stamped in the same nanosecond the write returned: the clock cannot
        // order them, so the old value is allowed.
        assert_linearizable(&RegisterModel, &[set(0, 0, 10, b"a"), read(1, 10, 20, None)]);
    }

    #[test]
    fn stale_read_after_completed_write_is_rejected() {
        let stuck = assert_violation(&RegisterModel, &[set(0, 0, 10, b"a"), read(1, 11, 20, None)]);
        assert_eq!(stuck[0], 1);
        assert_violation(&CounterModel, &[add(0, 0, 10, 1, 1), get(1, 20, 30, 0)]);
    }

    #[test]
    fn lost_update_is_rejected() {
        let stuck = assert_violation(&CounterModel, &[add(0, 0, 10, 1, 1), add(1, 5, 15, 1, 1)]);
        stuck.iter().for_each(|index| assert!(*index < 2));
    }

    #[test]
    fn read_of_a_value_never_written_is_rejected() {
        assert_violation(&RegisterModel, &[set(0, 0, 10, b"a"), read(1, 5, 15, Some(b"b"))]);
        assert_violation(
            &CounterModel,
            &[add(0, 0, 10, 2, 2), add(1, 0, 10, 2, 4), get(2, 0, 20, 3)],
        );
    }

    #[test]
    fn read_going_back_in_time_is_rejected() {
        // Sequential writes, then reads seeing the newer value and then the older one.
        assert_violation(
            &RegisterModel,
            &[
                set(0, 0, 10, b"a"),
                set(0, 20, 30, b"b"),
                read(1, 40, 50, Some(b"b")),
                read(1, 60, 70, Some(b"a")),
            ],
        );
        // A write concurrent with both reads may be seen by the first, but then the second,
        // invoked after the first returned, must not see the older value.
        assert_violation(
            &RegisterModel,
            &[
                set(0, 0, 10, b"a"),
                set(0, 20, 100, b"b"),
                read(1, 30, 40, Some(b"b")),
                read(2, 50, 60, Some(b"a")),
            ],
        );
        assert_linearizable(
            &RegisterModel,
            &[
                set(0, 0, 10, b"a"),
                set(0, 20, 100, b"b"),
                read(1, 30, 40, Some(b"a")),
                read(2, 50, 60, Some(b"b")),
            ],
        );
    }

    #[test]
    fn unknown_add_may_or_may_not_take_effect() {
        let unknown = Operation::unknown(0, 0, CounterInput::Add { delta: 5 });
        assert_linearizable(&CounterModel, &[unknown.clone(), get(1, 10, 20, 5)]);
        assert_linearizable(&CounterModel, &[unknown.clone(), get(1, 10, 20, 0)]);
        // It may take effect late, long after any timeout.
        assert_linearizable(
            &CounterModel,
            &[unknown.clone(), get(1, 10, 20, 0), get(1, 1_000, 1_010, 5)],
        );
        assert_linearizable(
            &CounterModel,
            &[unknown.clone(), add(1, 10, 20, 1, 1), add(1, 30, 40, 1, 7)],
        );
        // But once, and not before its invocation.
        assert_violation(&CounterModel, &[unknown.clone(), get(1, 10, 20, 5), get(1, 30, 40, 0)]);
        assert_violation(
            &CounterModel,
            &[
                get(1, 0, 5, 5),
                Operation::unknown(0, 10, CounterInput::Add { delta: 5 }),
            ],
        );
        assert_violation(&CounterModel, &[unknown, get(1, 10, 20, 10)]);
    }

    #[test]
    fn unknown_reads_constrain_nothing() {
        let history = [Operation::unknown(0, 0, CounterInput::Get), get(1, 10, 20, 0)];
        assert_linearizable(&CounterModel, &history);
        let history = [Operation::unknown(0, 0, RegisterInput::Get), read(1, 10, 20, None)];
        assert_linearizable(&RegisterModel, &history);
    }

    #[test]
    fn unknown_set_may_appear_later() {
        let unknown = Operation::unknown(0, 0, RegisterInput::Set { value: b"x".to_vec() });
        assert_linearizable(
            &RegisterModel,
            &[unknown.clone(), set(1, 10, 20, b"a"), read(2, 30, 40, Some(b"x"))],
        );
        // Not before its invocation, though.
        let late = Operation::unknown(0, 10, RegisterInput::Set { value: b"x".to_vec() });
        assert_violation(&RegisterModel, &[set(1, 0, 5, b"a"), read(2, 6, 8, Some(b"x")), late]);
    }

    #[test]
    fn mismatched_answer_kind_is_a_violation() {
        let history = [Operation::returned(
            0,
            0,
            1,
            RegisterInput::Get,
            RegisterOutput::Written,
        )];
        assert_violation(&RegisterModel, &history);
    }

    #[test]
    fn budget_exhaustion_answers_unknown() {
        // Eight concurrent adds of 1 answering 1..=7 and 100: the order is found for seven, and
        // only exhausting the alternatives proves the eighth impossible.
        let history: Vec<_> = (0..8)
            .map(|client| add(client, 0, 100, 1, if client < 7 { client as i64 + 1 } else { 100 }))
            .collect();
        assert!(matches!(
            check_with_budget(&CounterModel, &history, 3),
            Verdict::Unknown { .. }
        ));
        assert!(matches!(
            check(&CounterModel, &history),
            Verdict::NotLinearizable { .. }
        ));
    }

    #[test]
    fn violations_are_reported_per_key_with_history_indices() {
        let history = vec![
            ("a", add(0, 0, 10, 1, 1)),
            ("b", add(0, 0, 10, 1, 1)),
            ("a", add(1, 20, 30, 1, 2)),
            ("b", get(1, 20, 30, 0)),
        ];
        let verdicts = check_per_key(&CounterModel, &history);
        assert_eq!(verdicts.len(), 2);
        assert_eq!(verdicts[0], ("a", Verdict::Linearizable));
        match &verdicts[1].1 {
            Verdict::NotLinearizable { stuck_operations, .. } => assert_eq!(stuck_operations[0], 3),
            other => panic!("{other}"),
        }
        let failure = first_failure(&verdicts).expect("key b fails");
        assert!(failure.starts_with("key \"b\""), "{failure}");
    }

    #[test]
    fn recorder_keeps_unfinished_operations_as_unknown_and_drops_discarded_ones() {
        let recorder: HistoryRecorder<&str, CounterInput, i64> = HistoryRecorder::new();
        let first = recorder.invoke(0, "k", CounterInput::Add { delta: 1 });
        let refused = recorder.invoke(1, "k", CounterInput::Add { delta: 9 });
        let _abandoned = recorder.invoke(2, "k", CounterInput::Add { delta: 5 });
        recorder.complete(first, 1);
        recorder.discard(refused);
        let history = recorder.history();
        assert_eq!(history.len(), 2);
        assert!(matches!(history[0].1.outcome, Outcome::Returned { output: 1, .. }));
        assert_eq!(history[1].1.outcome, Outcome::Unknown);
        assert!(history[0].1.invoked_ns <= history[1].1.invoked_ns);
        assert!(first_failure(&check_per_key(&CounterModel, &history)).is_none());
    }

    #[test]
    fn recorder_works_across_tokio_tasks() {
        let recorder = std::sync::Arc::new(HistoryRecorder::<u8, CounterInput, i64>::new());
        let counter = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(0));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let tasks: Vec<_> = (0..4u64)
                .map(|client| {
                    let (recorder, counter) = (recorder.clone(), counter.clone());
                    tokio::spawn(async move {
                        for _ in 0..50 {
                            let token = recorder.invoke(client, 0, CounterInput::Add { delta: 1 });
                            let value = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                            tokio::task::yield_now().await;
                            recorder.complete(token, value);
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await.expect("task");
            }
        });
        let history = recorder.history();
        assert_eq!(history.len(), 200);
        assert!(first_failure(&check_per_key(&CounterModel, &history)).is_none());
    }

    /// What one client does next, in units of 16 ns (so that points, offset by the client
    /// number, never collide).
    #[derive(Clone, Debug)]
    struct Step<I> {
        input: I,
        gap: u64,
        duration: u64,
        /// Where in its interval the operation takes effect.
        point_percent: u64,
        unknown: bool,
    }

    /// One generated operation before its answer is known: the client's interval and a
    /// linearization point inside it.
    #[derive(Clone, Debug)]
    struct Planned<I> {
        client: u64,
        invoked_ns: u64,
        point_ns: u64,
        completed_ns: u64,
        input: I,
        unknown: bool,
    }

    /// Builds a history that is linearizable by construction: each client issues operations
    /// one after another with random gaps and durations, each operation takes effect at a
    /// random point of its interval, and answers come from replaying the model in point
    /// order. Points are distinct (client number in the low digits), so the order is total.
    fn plan<I: Clone>(per_client: &[Vec<Step<I>>]) -> Vec<Planned<I>> {
        let mut planned = Vec::new();
        for (client, steps) in per_client.iter().enumerate() {
            let mut time = 0u64;
            for Step {
                input,
                gap,
                duration,
                point_percent,
                unknown,
            } in steps
            {
                let invoked_ns = (time + gap) * 16;
                let completed_ns = invoked_ns + duration * 16;
                let point_ns = invoked_ns + (duration * 16) * point_percent / 100 + client as u64;
                let point_ns = point_ns.min(completed_ns);
                planned.push(Planned {
                    client: client as u64,
                    invoked_ns,
                    point_ns,
                    completed_ns,
                    input: input.clone(),
                    unknown: *unknown,
                });
                time = completed_ns / 16 + 1;
            }
        }
        planned
    }

    fn replay<M: Model>(
        model: &M,
        mut planned: Vec<Planned<M::Input>>,
        answer: impl Fn(&M::State, &M::Input) -> M::Output,
    ) -> Vec<Operation<M::Input, M::Output>>
    where
        M::Input: Clone,
    {
        planned.sort_by_key(|operation| (operation.point_ns, operation.client));
        let mut state = model.init();
        let mut history = Vec::new();
        for operation in planned {
            let output = answer(&state, &operation.input);
            state = model
                .step(&state, &operation.input, Some(&output))
                .expect("the answer comes from the model");
            history.push(if operation.unknown {
                Operation::unknown(operation.client, operation.invoked_ns, operation.input)
            } else {
                Operation::returned(
                    operation.client,
                    operation.invoked_ns,
                    operation.completed_ns,
                    operation.input,
                    output,
                )
            });
        }
        // The checker must not depend on the order operations are listed in.
        history.sort_by_key(|operation| (operation.client, operation.invoked_ns));
        history
    }

    fn counter_answer(state: &i64, input: &CounterInput) -> i64 {
        match input {
            CounterInput::Add { delta } => state + delta,
            CounterInput::Get => *state,
        }
    }

    fn register_answer(state: &Option<Vec<u8>>, input: &RegisterInput) -> RegisterOutput {
        match input {
            RegisterInput::Set { .. } => RegisterOutput::Written,
            RegisterInput::Get => RegisterOutput::Value(state.clone()),
        }
    }

    fn counter_input() -> impl Strategy<Value = CounterInput> {
        prop_oneof![
            (-3i64..=3).prop_map(|delta| CounterInput::Add { delta }),
            Just(CounterInput::Get)
        ]
    }

    fn register_input() -> impl Strategy<Value = RegisterInput> {
        prop_oneof![
            (0u8..4).prop_map(|byte| RegisterInput::Set { value: vec![byte] }),
            Just(RegisterInput::Get)
        ]
    }

    fn schedule<I: Debug>(
        input: impl Strategy<Value = I>,
        clients: usize,
        per_client: usize,
    ) -> impl Strategy<Value = Vec<Vec<Step<I>>>> {
        let operation = (input, 0u64..20, 0u64..40, 0u64..=100, proptest::bool::weighted(0.1)).prop_map(
            |(input, gap, duration, point_percent, unknown)| Step {
                input,
                gap,
                duration,
                point_percent,
                unknown,
            },
        );
        proptest::collection::vec(proptest::collection::vec(operation, 0..=per_client), 1..=clients)
    }

    /// Every order of `operations` that respects real time, with unknown operations
    /// optionally left out, replayed through the model: the definition, for small histories.
    fn brute_force<M: Model>(model: &M, operations: &[Operation<M::Input, M::Output>]) -> bool {
        fn extend<M: Model>(
            model: &M,
            operations: &[Operation<M::Input, M::Output>],
            used: &mut Vec<bool>,
            state: &M::State,
        ) -> bool {
            let all_returned_used = operations
                .iter()
                .zip(used.iter())
                .all(|(operation, used)| *used || operation.completed_ns().is_none());
            if all_returned_used {
                return true;
            }
            for candidate in 0..operations.len() {
                if used[candidate] {
                    continue;
                }
                // Anything that returned strictly before the candidate's invocation must
                // already be placed.
                let blocked = operations.iter().zip(used.iter()).any(|(other, used)| {
                    !used
                        && other
                            .completed_ns()
                            .is_some_and(|completed| completed < operations[candidate].invoked_ns)
                });
                if blocked {
                    continue;
                }
                let operation = &operations[candidate];
                if let Some(next) = model.step(state, &operation.input, operation.output()) {
                    used[candidate] = true;
                    let found = extend(model, operations, used, &next);
                    used[candidate] = false;
                    if found {
                        return true;
                    }
                }
            }
            false
        }
        extend(model, operations, &mut vec![false; operations.len()], &model.init())
    }

    fn arbitrary_counter_operation() -> impl Strategy<Value = Operation<CounterInput, i64>> {
        (
            0u64..3,
            0u64..30,
            0u64..30,
            counter_input(),
            -2i64..6,
            proptest::bool::weighted(0.2),
        )
            .prop_map(|(client, invoked, duration, input, output, unknown)| {
                if unknown {
                    Operation::unknown(client, invoked, input)
                } else {
                    Operation::returned(client, invoked, invoked + duration, input, output)
                }
            })
    }

    fn arbitrary_register_operation() -> impl Strategy<Value = Operation<RegisterInput, RegisterOutput>> {
        let output = prop_oneof![
            Just(RegisterOutput::Written),
            proptest::option::of(0u8..3).prop_map(|byte| RegisterOutput::Value(byte.map(|byte| vec![byte])))
        ];
        (
            0u64..3,
            0u64..30,
            0u64..30,
            register_input(),
            output,
            proptest::bool::weighted(0.2),
        )
            .prop_map(|(client, invoked, duration, input, output, unknown)| {
                if unknown {
                    Operation::unknown(client, invoked, input)
                } else {
                    Operation::returned(client, invoked, invoked + duration, input, output)
                }
            })
    }

    proptest! {
        #[test]
        fn generated_counter_histories_are_linearizable(per_client in schedule(counter_input(), 6, 12)) {
            let history = replay(&CounterModel, plan(&per_client), counter_answer);
            let verdict = check(&CounterModel, &history);
            prop_assert!(verdict.is_linearizable(), "{}", verdict);
        }

        #[test]
        fn generated_register_histories_are_linearizable(per_client in schedule(register_input(), 6, 12)) {
            let history = replay(&RegisterModel, plan(&per_client), register_answer);
            let verdict = check(&RegisterModel, &history);
            prop_assert!(verdict.is_linearizable(), "{}", verdict);
        }

        /// Unknown adds whose effect never happened are also accepted.
        #[test]
        fn unknown_adds_without_effect_are_accepted(
            per_client in schedule(counter_input(), 4, 10),
            phantoms in proptest::collection::vec((0u64..400, 1i64..5), 0..4),
        ) {
            let mut history = replay(&CounterModel, plan(&per_client), counter_answer);
            for (invoked, delta) in phantoms {
                history.push(Operation::unknown(9, invoked * 16, CounterInput::Add { delta }));
            }
            let verdict = check(&CounterModel, &history);
            prop_assert!(verdict.is_linearizable(), "{}", verdict);
        }

        /// With only positive deltas, a read beyond the total was never the counter's value.
        #[test]
        fn a_read_beyond_every_reachable_value_is_rejected(
            per_client in schedule((1i64..4).prop_map(|delta| CounterInput::Add { delta }), 4, 10),
            read_at in 0u64..400,
        ) {
            let mut history = replay(&CounterModel, plan(&per_client), counter_answer);
            let total: i64 = history.iter().map(|operation| match operation.input {
                CounterInput::Add { delta } => delta,
                CounterInput::Get => 0,
            }).sum();
            history.push(get(9, read_at * 16, read_at * 16 + 5, total + 1));
            let verdict = check(&CounterModel, &history);
            prop_assert!(matches!(verdict, Verdict::NotLinearizable { .. }), "{}", verdict);
        }

        #[test]
        fn counter_agrees_with_brute_force(history in proptest::collection::vec(arbitrary_counter_operation(), 0..7)) {
            let expected = brute_force(&CounterModel, &history);
            let verdict = check(&CounterModel, &history);
            prop_assert_eq!(verdict.is_linearizable(), expected, "{}", verdict);
        }

        #[test]
        fn register_agrees_with_brute_force(history in proptest::collection::vec(arbitrary_register_operation(), 0..7)) {
            let expected = brute_force(&RegisterModel, &history);
            let verdict = check(&RegisterModel, &history);
            prop_assert_eq!(verdict.is_linearizable(), expected, "{}", verdict);
        }
    }

    /// Eight clients, 250 operations each, on one key: the size of a migration test's
    /// history. Checks that the search stays near-linear (no time assertion: the shared CI
    /// machine's speed varies, but a regression to exponential search would not finish).
    #[test]
    fn long_history_from_eight_clients_checks_quickly() {
        use rand::{Rng, SeedableRng};
        let mut random = rand::rngs::StdRng::seed_from_u64(7);
        let mut per_client_counter = Vec::new();
        let mut per_client_register = Vec::new();
        for _ in 0..8 {
            let mut counter_operations = Vec::new();
            let mut register_operations = Vec::new();
            for _ in 0..250 {
                let (gap, duration, point_percent) = (
                    random.random_range(0..20),
                    random.random_range(0..60),
                    random.random_range(0..=100),
                );
                let unknown = random.random_bool(0.02);
                let counter_input = if random.random_bool(0.5) {
                    CounterInput::Add {
                        delta: random.random_range(-2..=3),
                    }
                } else {
                    CounterInput::Get
                };
                counter_operations.push(Step {
                    input: counter_input,
                    gap,
                    duration,
                    point_percent,
                    unknown,
                });
                let register_input = if random.random_bool(0.4) {
                    RegisterInput::Set {
                        value: vec![random.random_range(0..3)],
                    }
                } else {
                    RegisterInput::Get
                };
                register_operations.push(Step {
                    input: register_input,
                    gap,
                    duration,
                    point_percent,
                    unknown,
                });
            }
            per_client_counter.push(counter_operations);
            per_client_register.push(register_operations);
        }
        let counter_history = replay(&CounterModel, plan(&per_client_counter), counter_answer);
        assert_eq!(counter_history.len(), 2000);
        assert_linearizable(&CounterModel, &counter_history);
        let register_history = replay(&RegisterModel, plan(&per_client_register), register_answer);
        assert_linearizable(&RegisterModel, &register_history);

        // And a violation in the middle is found, not lost in the search. (Without unknown
        // outcomes: each would double the exhaustive search that proves the violation.)
        for operations in &mut per_client_counter {
            operations.iter_mut().for_each(|step| step.unknown = false);
        }
        let mut broken = replay(&CounterModel, plan(&per_client_counter), counter_answer);
        let middle = broken
            .iter()
            .position(|operation| operation.invoked_ns > 1_000 * 16 && operation.output().is_some())
            .expect("an operation in the middle");
        if let Outcome::Returned { output, .. } = &mut broken[middle].outcome {
            *output += 1_000;
        }
        assert!(matches!(check(&CounterModel, &broken), Verdict::NotLinearizable { .. }));
    }
}
