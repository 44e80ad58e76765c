//! Redis replies in the order their commands came. A Redis client matches replies to
//! commands by position, while the answers of a pipeline arrive in any order (one waits
//! at a lock, one comes from another node): each request takes a numbered place, and
//! what is answered is written only once every place before it is.

use std::collections::VecDeque;

use engram_proto::resp::{ReplyWriter, RespVersion};
use engram_proto::Response;

use super::reply::{self, Fold, Folded, Shape};

/// One place in line.
#[derive(Debug)]
enum Place {
    /// A request whose answer has not come.
    Waiting(Shape),
    Answered(Shape, Response),
    /// A reply, or the start of one (an array header), that needs no answer.
    Ready(Vec<u8>),
    /// The reply that folds the parts before it.
    FoldEnd(Fold),
}

impl Place {
    fn is_ready(&self) -> bool {
        !matches!(self, Place::Waiting(_))
    }
}

/// The places of one connection's replies.
#[derive(Debug, Default)]
pub struct ReplyOrder {
    version: RespVersion,
    /// The number of the place at the front of `places`.
    front: u64,
    places: VecDeque<Place>,
    folded: Folded,
}

impl ReplyOrder {
    pub fn version(&self) -> RespVersion {
        self.version
    }

    /// Replies from the next one written on are in `version` (`HELLO` switches it).
    pub fn set_version(&mut self, version: RespVersion) {
        self.version = version;
    }

    /// The number the next place will take (a request's id in the outbox).
    pub fn next_number(&self) -> u64 {
        self.front + self.places.len() as u64
    }

    /// The first place whose reply is not written yet; every request numbered below it
    /// was answered.
    #[cfg(test)]
    pub fn front(&self) -> u64 {
        self.front
    }

    /// Takes the next place for a request whose answer is written as `shape`; its number.
    pub fn wait_for(&mut self, shape: Shape) -> u64 {
        self.places.push_back(Place::Waiting(shape));
        self.next_number() - 1
    }

    /// A reply the door made itself, written after every reply before it.
    pub fn ready(&mut self, reply: Vec<u8>, out: &mut Vec<u8>) {
        if self.places.is_empty() {
            out.extend_from_slice(&reply);
        } else {
            self.places.push_back(Place::Ready(reply));
        }
    }

    /// Closes the parts just taken with the reply that folds them.
    pub fn fold_end(&mut self, fold: Fold, out: &mut Vec<u8>) {
        self.places.push_back(Place::FoldEnd(fold));
        self.write_ready(out);
    }

    /// The answer of place `number`; writes every reply now due into `out`. The answer
    /// is copied only when it must wait for an earlier one. An answer for no waiting
    /// place (one given twice) is dropped.
    pub fn answer(&mut self, number: u64, response: &Response, out: &mut Vec<u8>) {
        let Some(index) = number.checked_sub(self.front) else {
            return;
        };
        let Some(place) = self.places.get_mut(index as usize) else {
            return;
        };
        let Place::Waiting(shape) = place else { return };
        if index > 0 {
            let shape = std::mem::replace(shape, Shape::Ok);
            *place = Place::Answered(shape, response.clone());
            return;
        }
        let Some(Place::Waiting(shape)) = self.places.pop_front() else {
            return;
        };
        self.front += 1;
        self.write_answer(shape, response, out);
        self.write_ready(out);
    }

    fn write_answer(&mut self, shape: Shape, response: &Response, out: &mut Vec<u8>) {
        match shape {
            Shape::Part(fold) => self.folded.add(fold, response),
            shape => reply::write(&shape, response, &mut ReplyWriter::new(out, self.version)),
        }
    }

    fn write_ready(&mut self, out: &mut Vec<u8>) {
        while self.places.front().is_some_and(Place::is_ready) {
            let Some(place) = self.places.pop_front() else { break };
            self.front += 1;
            match place {
                Place::Answered(shape, response) => self.write_answer(shape, &response, out),
                Place::Ready(bytes) => out.extend_from_slice(&bytes),
                Place::FoldEnd(fold) => {
                    std::mem::take(&mut self.folded).finish(fold, &mut ReplyWriter::new(out, self.version))
                }
                Place::Waiting(_) => unreachable!("only ready places are taken"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str) -> Response {
        Response::Value {
            value: text.as_bytes().to_vec(),
            version: 1,
        }
    }

    #[test]
    fn replies_leave_in_the_order_their_commands_came() {
        let mut order = ReplyOrder::default();
        let mut out = Vec::new();
        let slow = order.wait_for(Shape::ValueOrNil);
        let fast = order.wait_for(Shape::ValueOrNil);
        order.ready(b"+PONG\r\n".to_vec(), &mut out);
        order.answer(fast, &value("b"), &mut out);
        assert!(out.is_empty(), "nothing passes the first reply");
        order.answer(slow, &value("a"), &mut out);
        assert_eq!(out, b"$1\r\na\r\n$1\r\nb\r\n+PONG\r\n");
        assert_eq!(order.front(), order.next_number());
        // With nothing in line, a reply the door makes goes straight out.
        out.clear();
        order.ready(b"+OK\r\n".to_vec(), &mut out);
        assert_eq!(out, b"+OK\r\n");
    }

    #[test]
    fn parts_fold_into_one_reply_whatever_order_they_are_answered_in() {
        let mut order = ReplyOrder::default();
        let mut out = Vec::new();
        let parts: Vec<u64> = (0..3)
            .map(|_| order.wait_for(Shape::Part(Fold::CountExisting)))
            .collect();
        order.fold_end(Fold::CountExisting, &mut out);
        let after = order.wait_for(Shape::ValueOrNil);
        order.answer(after, &Response::Missing, &mut out);
        for (number, existed) in parts.into_iter().rev().zip([true, false, true]) {
            order.answer(number, &Response::Deleted { existed }, &mut out);
        }
        assert_eq!(out, b":2\r\n$-1\r\n");
        // An answer given twice, or for no place, changes nothing.
        order.answer(0, &Response::Missing, &mut out);
        order.answer(99, &Response::Missing, &mut out);
        assert_eq!(out, b":2\r\n$-1\r\n");
    }
}
