//! Exactly-once records: the first answer to each (client id, operation id), kept until
//! the client reports that it has received it.
//!
//! Every request carries the client's `completed_below_op_id`: all of its operations
//! below that id have been answered, so their records can go. What is kept per client is
//! therefore bounded by what that client has in flight, not by time or traffic. A client
//! that stops talking has its records dropped after `SESSION_IDLE_MS_MAX`, which is
//! longer than any client may keep retrying one call (`CALL_TIMEOUT_MS_MAX`), so a
//! retry always finds its record.

use std::collections::BTreeMap;

use engram_proto::limits::CALL_TIMEOUT_MS_MAX;
use engram_proto::{ErrorCode, Response};

use super::{error, WaiterId};

/// How long a silent client's records are kept.
pub const SESSION_IDLE_MS_MAX: u64 = 2 * CALL_TIMEOUT_MS_MAX;

/// Records a shard holds at most, across clients. Past it, new recorded mutations are
/// refused with `Busy` (retryable) until clients acknowledge theirs: memory stays
/// bounded and no retry ever finds its record silently dropped.
pub const OPERATION_RECORDS_MAX: usize = 1 << 20;

/// Memory charged per record on top of the response's own heap bytes.
const RECORD_OVERHEAD_BYTES: u64 = 64;

/// What is known of one operation.
#[derive(Debug, Clone)]
pub enum Record {
    /// Answered; a retry gets this answer.
    Done(Response),
    /// Parked at the shard (a blocking wait); a retry re-attaches to the same waiter.
    Parked(WaiterId),
}

/// The result of looking an operation up.
pub enum Lookup {
    /// Not seen before: apply it.
    New,
    /// Seen: answer (or keep waiting) as the record says.
    Seen(Record),
    /// Refused before applying (stale id, or too many records).
    Refused(Response),
}

#[derive(Default)]
struct Session {
    records: BTreeMap<u64, Record>,
    completed_below_op_id: u64,
    last_seen_ms: u64,
}

#[derive(Default)]
pub struct OperationLog {
    sessions: foldhash::HashMap<u64, Session>,
    records: usize,
    bytes: u64,
}

fn record_bytes(record: &Record) -> u64 {
    let heap = match record {
        Record::Done(Response::Error(reply)) => reply.message.len() as u64,
        _ => 0,
    };
    RECORD_OVERHEAD_BYTES + heap
}

impl OperationLog {
    pub fn records(&self) -> usize {
        self.records
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// What is recorded of an operation, after dropping the records the client
    /// acknowledged with `completed_below_op_id`.
    pub fn lookup(&mut self, client_id: u64, op_id: u64, completed_below_op_id: u64, now_ms: u64) -> Lookup {
        let session = self.sessions.entry(client_id).or_default();
        session.last_seen_ms = session.last_seen_ms.max(now_ms);
        if completed_below_op_id > session.completed_below_op_id {
            session.completed_below_op_id = completed_below_op_id;
            let kept = session.records.split_off(&completed_below_op_id);
            let dropped = std::mem::replace(&mut session.records, kept);
            self.records -= dropped.len();
            self.bytes -= dropped.values().map(record_bytes).sum::<u64>();
        }
        if let Some(record) = session.records.get(&op_id) {
            return Lookup::Seen(record.clone());
        }
        if op_id < session.completed_below_op_id {
            // The client said it already has this answer; applying it again would be
            // the double apply this log exists to prevent.
            return Lookup::Refused(error(
                ErrorCode::InvalidArgument,
                format!("operation {op_id} was already completed (client completed below {completed_below_op_id})"),
            ));
        }
        if self.records >= OPERATION_RECORDS_MAX {
            return Lookup::Refused(error(
                ErrorCode::Busy,
                format!("shard holds operation_records_max ({OPERATION_RECORDS_MAX}) unacknowledged operations"),
            ));
        }
        Lookup::New
    }

    pub fn record(&mut self, client_id: u64, op_id: u64, record: Record) {
        let session = self.sessions.entry(client_id).or_default();
        self.bytes += record_bytes(&record);
        if let Some(replaced) = session.records.insert(op_id, record) {
            self.bytes -= record_bytes(&replaced);
        } else {
            self.records += 1;
        }
    }

    /// Forgets one operation's record, so a retry applies it afresh: used when what it
    /// did was taken back (its answer could not be delivered, or its wait was
    /// cancelled). `parked` restricts this to a record still parked on that waiter.
    pub fn forget(&mut self, client_id: u64, op_id: u64, parked: Option<WaiterId>) {
        let Some(session) = self.sessions.get_mut(&client_id) else {
            return;
        };
        let matches = match (session.records.get(&op_id), parked) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(Record::Parked(waiter)), Some(expected)) => *waiter == expected,
            (Some(Record::Done(_)), Some(_)) => false,
        };
        if matches {
            if let Some(record) = session.records.remove(&op_id) {
                self.records -= 1;
                self.bytes -= record_bytes(&record);
            }
        }
    }

    /// Drops the sessions of clients silent for longer than `SESSION_IDLE_MS_MAX`.
    pub fn forget_idle(&mut self, now_ms: u64) {
        let (records, bytes) = (&mut self.records, &mut self.bytes);
        self.sessions.retain(|_, session| {
            let keep = session.last_seen_ms.saturating_add(SESSION_IDLE_MS_MAX) >= now_ms;
            if !keep {
                *records -= session.records.len();
                *bytes -= session.records.values().map(record_bytes).sum::<u64>();
            }
            keep
        });
    }
}
