# Sourced by scripts/build-arm and scripts/test-arm: Debian's rustc-web building std itself,
# zig (from the venv build-arm makes) compiling C and linking.
VENV=${TV_ZIG_VENV:-/opt/tinyvisor-zig}
export PATH="$VENV/bin:/usr/bin:$PATH" RUSTC=/usr/bin/rustc CARGO=/usr/bin/cargo RUSTC_BOOTSTRAP=1
# build-std has no "self-contained" musl crt directory; zig supplies crt and libc.
# Panics keep their message but not its file and line (-Zlocation-detail=none: -65 KB on armv6).
FLAGS="-C link-self-contained=no -Zlocation-detail=none"
# On ARM, LLVM's machine outliner moves instruction sequences repeated across functions into
# shared ones (what -Oz does by default on AArch64, not on 32-bit ARM): -126 KB on armv6. It
# gains nothing on x86_64 here, which keeps the default.
ARM_FLAGS="$FLAGS -Cllvm-args=-enable-machine-outliner=always"
export CARGO_TARGET_ARM_UNKNOWN_LINUX_MUSLEABIHF_RUSTFLAGS="$ARM_FLAGS"
export CARGO_TARGET_ARMV7_UNKNOWN_LINUX_MUSLEABIHF_RUSTFLAGS="$ARM_FLAGS"
export CARGO_TARGET_X86_64_UNKNOWN_LINUX_MUSL_RUSTFLAGS="$FLAGS"
# armv6's C compiler builds C (SQLite, ring's C) as Thumb code (the script says why).
export CC_arm_unknown_linux_musleabihf="$PWD/scripts/zigcc-armv6"
# std as the device needs it: no backtrace symbolizer (panic=abort prints the message only)
# and the size-optimised algorithms (-285 KB on armv6).
BUILD_STD=(-Zbuild-std=std,panic_abort -Zbuild-std-features=optimize_for_size)
