//! Rights: what a credential may do, and so what each command needs. Apart from the
//! credentials that grant them, since every family's commands name the right they need.

use std::fmt;

/// One thing a credential may be allowed to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Right {
    Read,
    Write,
    Coordinate,
    Admin,
    Node,
}

impl Right {
    pub const ALL: [Right; 5] = [Right::Read, Right::Write, Right::Coordinate, Right::Admin, Right::Node];

    /// The word a credentials file and a refusal use.
    pub fn name(self) -> &'static str {
        match self {
            Right::Read => "read",
            Right::Write => "write",
            Right::Coordinate => "coordinate",
            Right::Admin => "admin",
            Right::Node => "node",
        }
    }

    const fn bit(self) -> u8 {
        1 << self as u8
    }
}

impl fmt::Display for Right {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of rights.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rights(u8);

impl Rights {
    pub const NONE: Rights = Rights(0);
    /// What data commands need.
    pub const DATA: Rights = Rights::NONE
        .with(Right::Read)
        .with(Right::Write)
        .with(Right::Coordinate);
    pub const ALL: Rights = Rights::DATA.with(Right::Admin).with(Right::Node);

    pub const fn with(self, right: Right) -> Rights {
        Rights(self.0 | right.bit())
    }

    pub const fn union(self, other: Rights) -> Rights {
        Rights(self.0 | other.0)
    }

    pub fn contains(self, right: Right) -> bool {
        self.0 & right.bit() != 0
    }

    /// `read,write`, or `all`.
    pub fn parse(text: &str) -> Result<Rights, String> {
        text.split(',').try_fold(Rights::NONE, |rights, word| match word {
            "all" => Ok(Rights::ALL),
            _ => Right::ALL
                .into_iter()
                .find(|right| right.name() == word)
                .map(|right| rights.with(right))
                .ok_or_else(|| format!("unknown right `{word}` (rights: read, write, coordinate, admin, node, all)")),
        })
    }
}

impl fmt::Display for Rights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = Right::ALL
            .into_iter()
            .filter(|right| self.contains(*right))
            .map(Right::name)
            .collect();
        f.write_str(&names.join(","))
    }
}
