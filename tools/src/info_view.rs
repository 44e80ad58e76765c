//! Node info for people (an aligned table) and for programs (JSON: the wire type as
//! serde renders it, with engram-proto's `serde` feature).

use engram_client::NodeInfo;

pub fn to_json(info: &NodeInfo) -> Result<String, serde_json::Error> {
    serde_json::to_string_pretty(info)
}

pub fn to_table(info: &NodeInfo) -> String {
    let mut out = format!(
        "node         {}\nversion      {}\nuptime       {}\nmap epoch    {}\nconnections  {}\n",
        info.node_id,
        info.server_version,
        duration_text(info.uptime_ms),
        info.map_epoch,
        info.connections
    );
    let header = [
        "shard",
        "address",
        "keys",
        "memory used/limit",
        "connections",
        "operations",
    ];
    let rows: Vec<[String; 6]> = info
        .shards
        .iter()
        .map(|shard| {
            [
                shard.shard_id.to_string(),
                shard.address.clone(),
                shard.keys.to_string(),
                format!(
                    "{} / {}",
                    bytes_text(shard.memory_used_bytes),
                    match shard.memory_limit_bytes {
                        0 => "unlimited".to_string(),
                        limit => bytes_text(limit),
                    }
                ),
                shard.connections.to_string(),
                shard.operations_total.to_string(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    out.push('\n');
    push_row(&mut out, &header.map(String::from), &widths);
    for row in &rows {
        push_row(&mut out, row, &widths);
    }
    out
}

fn push_row(out: &mut String, cells: &[String; 6], widths: &[usize; 6]) {
    let line: Vec<String> = cells
        .iter()
        .zip(widths)
        .map(|(cell, width)| format!("{cell:<width$}"))
        .collect();
    out.push_str(line.join("  ").trim_end());
    out.push('\n');
}

/// `1d 2h 3m 4s`, leaving out leading zero units.
fn duration_text(milliseconds: u64) -> String {
    let seconds = milliseconds / 1_000;
    let (days, hours, minutes, seconds) = (seconds / 86_400, seconds / 3_600 % 24, seconds / 60 % 60, seconds % 60);
    match (days, hours, minutes) {
        (0, 0, 0) => format!("{seconds}s"),
        (0, 0, _) => format!("{minutes}m {seconds}s"),
        (0, _, _) => format!("{hours}h {minutes}m {seconds}s"),
        _ => format!("{days}d {hours}h {minutes}m {seconds}s"),
    }
}

/// Binary units with one decimal (`1.5 GiB`); plain bytes below a KiB.
fn bytes_text(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut scaled = bytes as f64 / 1024.0;
    let mut unit = 0;
    while scaled >= 1024.0 && unit + 1 < UNITS.len() {
        scaled /= 1024.0;
        unit += 1;
    }
    format!("{scaled:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use engram_client::ShardInfo;

    use super::*;

    fn sample() -> NodeInfo {
        NodeInfo {
            node_id: 7,
            server_version: "0.1.0".into(),
            uptime_ms: 3_723_000,
            map_epoch: 4,
            connections: 12,
            shards: vec![ShardInfo {
                shard_id: 0,
                address: "127.0.0.1:7401".into(),
                keys: 1_000,
                memory_used_bytes: 1_572_864,
                memory_limit_bytes: 1 << 30,
                connections: 3,
                operations_total: 42,
            }],
        }
    }

    #[test]
    fn table_shows_node_and_shard_lines() {
        let table = to_table(&sample());
        assert!(table.contains("node         7\n"), "{table}");
        assert!(table.contains("uptime       1h 2m 3s\n"), "{table}");
        let shard_line = table.lines().last().unwrap();
        for cell in ["0", "127.0.0.1:7401", "1000", "1.5 MiB / 1.0 GiB", "3", "42"] {
            assert!(shard_line.contains(cell), "{shard_line:?} lacks {cell}");
        }
    }

    #[test]
    fn json_has_the_wire_fields_by_their_names() {
        let json: serde_json::Value = serde_json::from_str(&to_json(&sample()).unwrap()).unwrap();
        assert_eq!(
            field_names(&json),
            field_names(&serde_json::json!({
                "node_id": 0, "server_version": 0, "uptime_ms": 0, "map_epoch": 0, "connections": 0, "shards": 0
            }))
        );
        assert_eq!(
            field_names(&json["shards"][0]),
            field_names(&serde_json::json!({
                "shard_id": 0, "address": 0, "keys": 0, "memory_used_bytes": 0, "memory_limit_bytes": 0,
                "connections": 0, "operations_total": 0
            }))
        );
        assert_eq!(json["node_id"], 7);
        assert_eq!(json["shards"][0]["keys"], 1_000);
        assert_eq!(json["shards"][0]["memory_limit_bytes"], 1u64 << 30);
        assert_eq!(json["shards"][0]["address"], "127.0.0.1:7401");
    }

    fn field_names(object: &serde_json::Value) -> Vec<&str> {
        let mut names: Vec<&str> = object
            .as_object()
            .expect("an object")
            .keys()
            .map(String::as_str)
            .collect();
        names.sort_unstable();
        names
    }

    #[test]
    fn units_read_naturally() {
        assert_eq!(bytes_text(0), "0 B");
        assert_eq!(bytes_text(1023), "1023 B");
        assert_eq!(bytes_text(1024), "1.0 KiB");
        assert_eq!(bytes_text(u64::MAX), "16384.0 PiB");
        assert_eq!(duration_text(999), "0s");
        assert_eq!(duration_text(61_000), "1m 1s");
        assert_eq!(duration_text(90_061_000), "1d 1h 1m 1s");
    }
}
