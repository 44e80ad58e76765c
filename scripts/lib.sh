# Shared by the scripts: sourced, not run.

# The directory cargo builds into: CARGO_TARGET_DIR, a build.target-dir setting, or the
# workspace's target/. Asked of cargo itself, so every way of setting it is honoured.
cargo_target_dir() {
    local metadata
    metadata=$(cargo metadata --format-version 1 --no-deps --offline 2>/dev/null || cargo metadata --format-version 1 --no-deps)
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p' <<<"$metadata"
}
