//! The memory barrier SQLite's Thumb-1 code calls on armv6. The armv6 build compiles SQLite
//! to Thumb code (`scripts/zigcc-armv6`: a third smaller), where ARMv6 has no barrier
//! instruction, so the compiler emits calls to `__sync_synchronize` — a libgcc function that
//! neither zig's nor Rust's runtime provides for this target. Rust code is ARM code, where a
//! sequentially consistent fence is ARMv6's CP15 barrier (`dmb` on ARMv7, where this is unused).

#[no_mangle]
pub extern "C" fn __sync_synchronize() {
    std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
}
