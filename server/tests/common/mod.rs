//! Helpers shared by the server's integration tests that run glommio executors on
//! threads of their own.

/// The message of a panic caught on a test's thread, to name it in the test's failure.
pub fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|text| text.to_string()))
        .unwrap_or_else(|| "a panic without a message".into())
}
