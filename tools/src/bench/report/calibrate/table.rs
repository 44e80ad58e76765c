//! The table `tools/calibrate.sh` prints: per shape, each tool's median figures, the
//! ratio of the two with its range, whether they agree, and how far each tool's own
//! figure strayed from redis-server's count.

use std::io::{self, Write};

use crate::bench::report::calibrate::{Report, Settings, ShapeSummary, ToolSummary};

/// `-` where a figure is missing.
const ABSENT: &str = "-";

pub fn write(out: &mut impl Write, report: &Report, settings: &Settings) -> io::Result<()> {
    writeln!(
        out,
        "engram-bench against redis-benchmark: redis-server {} on core {}, load on core {}, {} connections, {} interleaved rounds",
        report.redis_version, settings.server_core, settings.load_core, report.connections, report.rounds
    )?;
    writeln!(
        out,
        "each tool: its own figure, (the rate redis-server counted), redis-server busy / tool busy; medians"
    )?;
    writeln!(
        out,
        "largest deviation: of a tool's own figure from redis-server's count, over its runs"
    )?;
    row(
        out,
        &[
            "shape",
            "redis-benchmark",
            "engram-bench",
            "ratio median (min-max)",
            "±10%",
            "largest deviation",
        ]
        .map(String::from),
    )?;
    for (shape, summary) in report.shapes.iter() {
        row(out, &cells(shape, summary))?;
    }
    Ok(())
}

fn row(out: &mut impl Write, cells: &[String; 6]) -> io::Result<()> {
    let [shape, redis_benchmark, engram_bench, ratio, agree, deviation] = cells;
    writeln!(
        out,
        "{shape:<16} {redis_benchmark:>30} {engram_bench:>30} {ratio:>24} {agree:>8} {deviation:>20}"
    )
}

fn cells(shape: &str, summary: &ShapeSummary) -> [String; 6] {
    [
        shape.to_owned(),
        tool_cell(&summary.redis_benchmark),
        tool_cell(&summary.engram_bench),
        format!(
            "{} ({}-{})",
            thousandths(summary.ratio_median),
            thousandths(summary.ratio_min),
            thousandths(summary.ratio_max)
        ),
        match summary.within_ten_percent {
            Some(true) => "yes".into(),
            Some(false) => "no".into(),
            None => ABSENT.into(),
        },
        format!(
            "{} / {}",
            percent(summary.redis_benchmark.largest_deviation_from_server),
            percent(summary.engram_bench.largest_deviation_from_server)
        ),
    ]
}

/// `RATE (SERVER RATE) SERVER BUSY/TOOL BUSY`.
fn tool_cell(tool: &ToolSummary) -> String {
    format!(
        "{} ({}) {}/{}",
        whole(tool.rate_median),
        whole(tool.server_rate_median),
        percent(tool.server_busy_median),
        percent(tool.load_busy_median)
    )
}

fn whole(value: Option<f64>) -> String {
    value.map_or_else(|| ABSENT.to_owned(), |value| value.floor().to_string())
}

fn thousandths(value: Option<f64>) -> String {
    value.map_or_else(
        || ABSENT.to_owned(),
        |value| ((value * 1000.0).round() / 1000.0).to_string(),
    )
}

/// A fraction as a percentage to one decimal place: `95.3%`, `95%`.
fn percent(value: Option<f64>) -> String {
    value.map_or_else(
        || ABSENT.to_owned(),
        |value| format!("{}%", (value * 1000.0).round() / 10.0),
    )
}
