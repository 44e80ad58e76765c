//! Exactly-once records: the first answer to each (client id, operation id), kept until
//! the client reports that it has received it.
//!
//! Every request carries the client's `completed_below_op_id`: all of its operations
//! below that id have been answered, so their records can go. What is kept per client is
//! therefore bounded by what that client has in flight, not by time or traffic. A client
//! that stops talking has its records dropped `SESSION_IDLE_MS_MAX` after it went quiet:
//! after its last request, or after the end of the longest wait it asked for, whichever
//! is later. A call lasts at most its call timeout (`CALL_TIMEOUT_MS_MAX`) plus its wait
//! (`WAIT_MS_MAX`), so a retry always finds its record, and only the clients that asked
//! for long waits have their records kept longer.

use std::collections::BTreeMap;

use engram_proto::limits::{CALL_TIMEOUT_MS_MAX, WAIT_MS_MAX};
use engram_proto::{DataRequest, ErrorCode, MigratedRecord, Response};

use super::{error, WaiterId};

/// How long a silent client's records are kept after it went quiet (its last request,
/// or the end of the wait it asked for): twice the longest call timeout, so a retry sent
/// at the very end of a call, late on the network, still finds its record. Counting
/// from the end of the wait rather than adding the longest wait to every session keeps
/// the records of clients that never wait (most of them) for two minutes, not
/// seventeen; the records of a client that went away are what this bounds.
pub const SESSION_IDLE_MS_MAX: u64 = 2 * CALL_TIMEOUT_MS_MAX;

/// Records a shard holds at most, across clients. Past it, new recorded mutations are
/// refused with `Busy` (retryable) until clients acknowledge theirs: memory stays
/// bounded and no retry ever finds its record silently dropped.
pub const OPERATION_RECORDS_MAX: usize = 1 << 20;

/// Memory charged per record on top of the response's own heap bytes (tree node,
/// response and slot).
pub(super) const RECORD_OVERHEAD_BYTES: u64 = 72;

/// The recorded mutation a request is: the client that sent it and its operation id.
/// Only mutations that carry an operation id have one; their answers are kept for the
/// client's retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    pub client_id: u64,
    pub op_id: u64,
}

impl Origin {
    /// The recorded mutation `request` from `client_id` is; `None` for a read, or a
    /// mutation sent without an operation id.
    pub fn of(client_id: u64, request: &DataRequest) -> Option<Origin> {
        (request.command.is_mutation() && request.op_id != 0).then_some(Origin {
            client_id,
            op_id: request.op_id,
        })
    }
}

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

/// A record with the slot of the key its operation was applied to, so the records of
/// migrating slots can go with them. `None` for a key without a well-formed namespace
/// prefix, which belongs to no slot.
#[derive(Debug, Clone)]
struct Kept {
    record: Record,
    slot: Option<u32>,
}

#[derive(Default)]
struct Session {
    records: BTreeMap<u64, Kept>,
    completed_below_op_id: u64,
    /// When the client went quiet: its last request, or the end of the longest wait one
    /// of its requests asked for, whichever is later.
    quiet_from_ms: u64,
}

#[derive(Default)]
pub struct OperationLog {
    sessions: foldhash::HashMap<u64, Session>,
    records: usize,
    bytes: u64,
}

fn record_bytes(record: &Record) -> u64 {
    match record {
        Record::Done(response) => done_record_bytes(response),
        Record::Parked(_) => RECORD_OVERHEAD_BYTES,
    }
}

/// Memory charged for the record of an answered operation. A popped value is held
/// here until the client acknowledges it, so it counts like any stored value.
pub fn done_record_bytes(response: &Response) -> u64 {
    let heap = match response {
        Response::Error(reply) => reply.message.len() as u64,
        Response::Value { value, .. } => value.len() as u64,
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

    /// What is recorded of an operation that may be parked for up to `wait_ms`, after
    /// dropping the records the client acknowledged with `completed_below_op_id`.
    pub fn lookup(
        &mut self,
        client_id: u64,
        op_id: u64,
        completed_below_op_id: u64,
        now_ms: u64,
        wait_ms: u64,
    ) -> Lookup {
        let session = self.sessions.entry(client_id).or_default();
        session.quiet_from_ms = session.quiet_from_ms.max(now_ms.saturating_add(wait_ms));
        self.acknowledge(client_id, completed_below_op_id);
        let session = self.sessions.entry(client_id).or_default();
        if let Some(kept) = session.records.get(&op_id) {
            return Lookup::Seen(kept.record.clone());
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

    /// Drops the records of `client_id`'s operations below `completed_below_op_id`: the
    /// client has their answers and will never ask again.
    pub fn acknowledge(&mut self, client_id: u64, completed_below_op_id: u64) {
        let session = self.sessions.entry(client_id).or_default();
        if completed_below_op_id <= session.completed_below_op_id {
            return;
        }
        session.completed_below_op_id = completed_below_op_id;
        let kept = session.records.split_off(&completed_below_op_id);
        let dropped = std::mem::replace(&mut session.records, kept);
        self.records -= dropped.len();
        self.bytes -= dropped.values().map(|kept| record_bytes(&kept.record)).sum::<u64>();
    }

    /// The client's acknowledgement mark: every operation below it was answered and seen.
    pub fn completed_below(&self, client_id: u64) -> u64 {
        self.sessions
            .get(&client_id)
            .map_or(0, |session| session.completed_below_op_id)
    }

    /// Copies of the answered operation's record, if it has one (a parked one has not).
    pub fn export_record(&self, client_id: u64, op_id: u64) -> Option<MigratedRecord> {
        let kept = self.sessions.get(&client_id)?.records.get(&op_id)?;
        match (&kept.record, kept.slot) {
            (Record::Done(response), Some(slot)) => Some(MigratedRecord {
                client_id,
                op_id,
                slot,
                response: response.clone(),
            }),
            _ => None,
        }
    }

    /// Records what is known of an operation on a key of `slot`.
    pub fn record(&mut self, client_id: u64, op_id: u64, slot: Option<u32>, record: Record) {
        let session = self.sessions.entry(client_id).or_default();
        self.bytes += record_bytes(&record);
        if let Some(replaced) = session.records.insert(op_id, Kept { record, slot }) {
            self.bytes -= record_bytes(&replaced.record);
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
        let matches = match (session.records.get(&op_id).map(|kept| &kept.record), parked) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(Record::Parked(waiter)), Some(expected)) => *waiter == expected,
            (Some(Record::Done(_)), Some(_)) => false,
        };
        if matches {
            if let Some(kept) = session.records.remove(&op_id) {
                self.records -= 1;
                self.bytes -= record_bytes(&kept.record);
            }
        }
    }

    /// Drops the sessions of clients quiet for longer than `SESSION_IDLE_MS_MAX`.
    pub fn forget_idle(&mut self, now_ms: u64) {
        let (records, bytes) = (&mut self.records, &mut self.bytes);
        self.sessions.retain(|_, session| {
            let keep = session.quiet_from_ms.saturating_add(SESSION_IDLE_MS_MAX) >= now_ms;
            if !keep {
                *records -= session.records.len();
                *bytes -= session
                    .records
                    .values()
                    .map(|kept| record_bytes(&kept.record))
                    .sum::<u64>();
            }
            keep
        });
    }

    /// Copies of the answered operations on keys of the slots `in_slot` accepts.
    pub fn export_slots(&self, in_slot: &impl Fn(u32) -> bool) -> Vec<MigratedRecord> {
        let mut exported = Vec::new();
        for (client_id, session) in &self.sessions {
            for (op_id, kept) in &session.records {
                if let (Record::Done(response), Some(slot)) = (&kept.record, kept.slot) {
                    if in_slot(slot) {
                        exported.push(MigratedRecord {
                            client_id: *client_id,
                            op_id: *op_id,
                            slot,
                            response: response.clone(),
                        });
                    }
                }
            }
        }
        exported
    }

    /// Drops every record (answered or parked) of an operation on a key of those slots.
    pub fn remove_slots(&mut self, in_slot: &impl Fn(u32) -> bool) {
        let (records, bytes) = (&mut self.records, &mut self.bytes);
        for session in self.sessions.values_mut() {
            session.records.retain(|_, kept| {
                let keep = !kept.slot.is_some_and(in_slot);
                if !keep {
                    *records -= 1;
                    *bytes -= record_bytes(&kept.record);
                }
                keep
            });
        }
    }

    /// Whether [`OperationLog::import`] would keep a migrated record: not when this shard
    /// already has one for the operation (its own answer stands), nor when the client
    /// already acknowledged the operation here (nobody will ask for it again).
    pub fn would_import(&self, client_id: u64, op_id: u64) -> bool {
        self.sessions
            .get(&client_id)
            .is_none_or(|session| op_id >= session.completed_below_op_id && !session.records.contains_key(&op_id))
    }

    /// Takes over the answer another shard recorded. The wait its operation asked for is
    /// not known here, so the session counts as quiet only after the longest wait from
    /// now: the record is kept at least as long as a record made here would be.
    pub fn import(&mut self, client_id: u64, op_id: u64, slot: Option<u32>, response: Response, now_ms: u64) {
        if !self.would_import(client_id, op_id) {
            return;
        }
        let session = self.sessions.entry(client_id).or_default();
        session.quiet_from_ms = session.quiet_from_ms.max(now_ms.saturating_add(WAIT_MS_MAX));
        self.record(client_id, op_id, slot, Record::Done(response));
    }
}
