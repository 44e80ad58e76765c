//! The raw facts a benchmark script leaves next to its engram-bench results, and the
//! readers of the raw lines among them.
//!
//! A facts file holds `KEY=VALUE` lines, the value being the rest of its line verbatim,
//! so that a script saves a `/proc/PID/stat` line or a line of a tool's output as it is,
//! with no quoting and no arithmetic: every number is taken out of it here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::de::DeserializeOwned;

use crate::bench::report::error::ReportError;

/// The `KEY=VALUE` lines of one facts file.
#[derive(Debug, Clone)]
pub struct Facts {
    path: PathBuf,
    values: BTreeMap<String, String>,
}

impl Facts {
    pub fn read(path: &Path) -> Result<Facts, ReportError> {
        Facts::parse(path, &read_text(path)?)
    }

    /// Empty lines are skipped; a key written twice keeps its last value, so a script
    /// may append a correction.
    pub fn parse(path: &Path, text: &str) -> Result<Facts, ReportError> {
        let mut values = BTreeMap::new();
        for (index, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let (key, value) = line.split_once('=').ok_or_else(|| ReportError::Line {
                path: path.display().to_string(),
                line: index + 1,
            })?;
            values.insert(key.trim().to_owned(), value.trim().to_owned());
        }
        Ok(Facts {
            path: path.to_owned(),
            values,
        })
    }

    pub fn text(&self, key: &str) -> Result<&str, ReportError> {
        self.optional_text(key).ok_or_else(|| ReportError::NoFact {
            path: self.path.display().to_string(),
            key: key.to_owned(),
        })
    }

    pub fn optional_text(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    /// The value of `key` parsed as a `T`, described as `expected` if it is not one.
    pub fn number<T: FromStr>(&self, key: &str, expected: &'static str) -> Result<T, ReportError> {
        self.read_with(key, expected, |value| value.parse().ok())
    }

    /// The value of `key` through `read`, which returns `None` for a value it cannot use.
    pub fn read_with<T>(
        &self,
        key: &str,
        expected: &'static str,
        read: impl FnOnce(&str) -> Option<T>,
    ) -> Result<T, ReportError> {
        let value = self.text(key)?;
        read(value).ok_or_else(|| self.bad(key, value, expected))
    }

    /// How far a counter moved between the lines `before` and `after`, each read by `read`.
    pub fn delta(
        &self,
        before: &str,
        after: &str,
        expected: &'static str,
        read: impl Fn(&str) -> Option<u64>,
    ) -> Result<u64, ReportError> {
        let start = self.read_with(before, expected, &read)?;
        let end = self.read_with(after, expected, &read)?;
        end.checked_sub(start).ok_or_else(|| ReportError::Backwards {
            path: self.path.display().to_string(),
            before: before.to_owned(),
            after: after.to_owned(),
        })
    }

    /// Seconds from the clock reading `started` to `ended` (each `date +%s.%N`).
    pub fn seconds_between(&self, started: &str, ended: &str) -> Result<f64, ReportError> {
        let start: f64 = self.number(started, "a clock reading in seconds")?;
        let end: f64 = self.number(ended, "a clock reading in seconds")?;
        if end >= start {
            Ok(end - start)
        } else {
            Err(ReportError::Backwards {
                path: self.path.display().to_string(),
                before: started.to_owned(),
                after: ended.to_owned(),
            })
        }
    }

    fn bad(&self, key: &str, value: &str, expected: &'static str) -> ReportError {
        ReportError::BadFact {
            path: self.path.display().to_string(),
            key: key.to_owned(),
            value: value.to_owned(),
            expected,
        }
    }
}

/// Where the run is and what it ran on, as the report's header shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Machine {
    /// UTC, `2026-11-28T00:18:00Z`.
    pub started_at: String,
    pub ended_at: String,
    /// `uname -srm`.
    pub uname: String,
    pub cpus: u32,
    /// The first `model name` of `/proc/cpuinfo`; empty where there is none.
    pub cpu_model: String,
    /// The first three fields of `/proc/loadavg`, read at the end.
    pub load_average: String,
}

impl Machine {
    /// From `started_at`, `ended_at`, `uname`, `cpus`, `cpu_model_line` (the raw
    /// `/proc/cpuinfo` line, optional) and `loadavg` (the raw `/proc/loadavg` line).
    pub fn from_facts(facts: &Facts) -> Result<Machine, ReportError> {
        let cpu_model = facts
            .optional_text("cpu_model_line")
            .and_then(|line| line.split_once(':'))
            .map(|(_, model)| model.trim().to_owned())
            .unwrap_or_default();
        let load_average = facts.read_with("loadavg", "a /proc/loadavg line", |line| {
            let fields: Vec<&str> = line.split_whitespace().take(3).collect();
            (fields.len() == 3).then(|| fields.join(" "))
        })?;
        Ok(Machine {
            started_at: facts.text("started_at")?.to_owned(),
            ended_at: facts.text("ended_at")?.to_owned(),
            uname: facts.text("uname")?.to_owned(),
            cpus: facts.number("cpus", "a number of CPUs")?,
            cpu_model,
            load_average,
        })
    }

    /// `uname, N CPUs, model`: the `machine` field of the JSON reports.
    pub fn description(&self) -> String {
        format!("{}, {} CPUs, {}", self.uname, self.cpus, self.cpu_model)
    }

    /// The time of day of `ended_at`, `00:18:00Z`.
    pub fn ended_time_of_day(&self) -> &str {
        self.ended_at
            .split_once('T')
            .map_or(self.ended_at.as_str(), |(_, time)| time)
    }
}

/// The fields of a `/proc/PID/stat` line after the command name, which is in brackets
/// and may hold spaces: field N of proc(5) is at index N - 3.
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().collect())
}

/// Field `field` of proc(5) as a number.
fn stat_field(stat: &str, field: usize) -> Option<u64> {
    stat_fields(stat)?.get(field - 3)?.parse().ok()
}

fn stat_sum(stat: &str, first_field: usize) -> Option<u64> {
    Some(stat_field(stat, first_field)? + stat_field(stat, first_field + 1)?)
}

/// CPU time of the process itself, user and system (utime + stime), in clock ticks.
pub fn process_cpu_ticks(stat: &str) -> Option<u64> {
    stat_sum(stat, 14)
}

/// CPU time of the process itself in the kernel (stime), in clock ticks.
pub fn process_system_ticks(stat: &str) -> Option<u64> {
    stat_field(stat, 15)
}

/// CPU time of the children the process has waited for (cutime + cstime), in clock ticks.
pub fn children_cpu_ticks(stat: &str) -> Option<u64> {
    stat_sum(stat, 16)
}

/// The resident set of a `VmRSS:   12060 kB` line of `/proc/PID/status`, in KiB.
pub fn vm_rss_kib(line: &str) -> Option<u64> {
    let rest = line.trim().strip_prefix("VmRSS:")?;
    rest.trim().strip_suffix("kB")?.trim().parse().ok()
}

/// The value of a `NAME:VALUE` counter line (Redis `INFO`).
pub fn counter_line(line: &str, name: &str) -> Option<u64> {
    line.trim().strip_prefix(name)?.strip_prefix(':')?.trim().parse().ok()
}

pub fn read_text(path: &Path) -> Result<String, ReportError> {
    std::fs::read_to_string(path).map_err(|source| ReportError::Read {
        path: path.display().to_string(),
        source,
    })
}

pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T, ReportError> {
    serde_json::from_str(&read_text(path)?).map_err(|source| ReportError::Json {
        path: path.display().to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(text: &str) -> Facts {
        Facts::parse(Path::new("run.facts"), text).unwrap()
    }

    #[test]
    fn values_are_the_rest_of_the_line() {
        let facts = facts("a=1\n\nstat=12 (engram bench) S 1 = 2\nb = x y \na=2\n");
        assert_eq!(facts.text("stat").unwrap(), "12 (engram bench) S 1 = 2");
        assert_eq!(facts.text("b").unwrap(), "x y");
        assert_eq!(facts.number::<u32>("a", "a count").unwrap(), 2, "the last value counts");
        let missing = facts.text("c").unwrap_err().to_string();
        assert!(missing.contains("run.facts has no c= line"), "{missing}");
        let bad = facts.number::<u32>("b", "a count").unwrap_err().to_string();
        assert!(bad.contains("b=\"x y\" is not a count"), "{bad}");
        let line = Facts::parse(Path::new("f"), "a=1\nnonsense\n").unwrap_err().to_string();
        assert!(line.contains("line 2"), "{line}");
    }

    /// A `/proc/PID/stat` line whose command name holds a space and a bracket, with
    /// utime 150, stime 50, cutime 7, cstime 3.
    const STAT: &str = "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 500 0 0 0 150 50 7 3 20 0 1 0 100 0 0";

    #[test]
    fn cpu_ticks_come_from_the_fields_after_the_name() {
        assert_eq!(process_cpu_ticks(STAT), Some(200));
        assert_eq!(children_cpu_ticks(STAT), Some(10));
        assert_eq!(process_system_ticks(STAT), Some(50));
        assert_eq!(process_cpu_ticks("4242 (short) S 1"), None);
        assert_eq!(process_cpu_ticks("no brackets"), None);
    }

    #[test]
    fn deltas_refuse_a_counter_that_went_backwards() {
        let later = STAT.replace(" 150 50 ", " 250 75 ");
        let facts = facts(&format!("before={STAT}\nafter={later}\nstarted=10.25\nended=12.75\n"));
        assert_eq!(facts.delta("before", "after", "stat", process_cpu_ticks).unwrap(), 125);
        let backwards = facts.delta("after", "before", "stat", process_cpu_ticks).unwrap_err();
        assert!(matches!(backwards, ReportError::Backwards { .. }), "{backwards}");
        assert_eq!(facts.seconds_between("started", "ended").unwrap(), 2.5);
        assert!(facts.seconds_between("ended", "started").is_err());
    }

    #[test]
    fn raw_lines_give_their_numbers() {
        assert_eq!(vm_rss_kib("VmRSS:\t   12060 kB"), Some(12060));
        assert_eq!(vm_rss_kib("VmHWM:\t   12060 kB"), None);
        assert_eq!(
            counter_line("total_commands_processed:20002\r", "total_commands_processed"),
            Some(20002)
        );
        assert_eq!(
            counter_line("total_connections_received:3", "total_commands_processed"),
            None
        );
    }

    #[test]
    fn machine_comes_from_raw_lines() {
        let machine = Machine::from_facts(&facts(
            "started_at=2026-11-28T00:18:00Z\nended_at=2026-11-28T00:31:07Z\nuname=Linux 6.18 x86_64\ncpus=2\n\
             cpu_model_line=model name\t: AMD EPYC\nloadavg=1.40 1.45 1.50 2/300 4242\n",
        ))
        .unwrap();
        assert_eq!(machine.description(), "Linux 6.18 x86_64, 2 CPUs, AMD EPYC");
        assert_eq!(machine.load_average, "1.40 1.45 1.50");
        assert_eq!(machine.ended_time_of_day(), "00:31:07Z");
    }
}
