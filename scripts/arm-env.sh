# Sourced by scripts/build-arm and scripts/test-arm: Debian's rustc-web building std itself,
# zig (from the venv build-arm makes) compiling C and linking.
VENV=${TV_ZIG_VENV:-/opt/tinyvisor-zig}
export PATH="$VENV/bin:/usr/bin:$PATH" RUSTC=/usr/bin/rustc CARGO=/usr/bin/cargo RUSTC_BOOTSTRAP=1
# build-std has no "self-contained" musl crt directory; zig supplies crt and libc.
export CARGO_TARGET_ARM_UNKNOWN_LINUX_MUSLEABIHF_RUSTFLAGS="-C link-self-contained=no"
export CARGO_TARGET_ARMV7_UNKNOWN_LINUX_MUSLEABIHF_RUSTFLAGS="-C link-self-contained=no"
export CARGO_TARGET_X86_64_UNKNOWN_LINUX_MUSL_RUSTFLAGS="-C link-self-contained=no"
