//! Links the device builds (static musl) with `link/hot-text.ld`, which gathers the code an idle
//! tinyvisor runs at the front of the text: a static binary's idle memory is mostly its own code
//! pages, mapped 64 KiB around each page touched, so scattered idle code made almost the whole
//! text resident (`scripts/profile-hot-text` makes the script and says more). Other builds
//! link as they always did. `TV_HOT_TEXT=none` turns it off (the profile's own build).

fn main() {
    println!("cargo:rerun-if-changed=link/hot-text.ld");
    println!("cargo:rerun-if-env-changed=TV_HOT_TEXT");
    let target = std::env::var("TARGET").unwrap_or_default();
    let device = target.ends_with("-linux-musl") || target.ends_with("-linux-musleabihf");
    let off = std::env::var("TV_HOT_TEXT").is_ok_and(|v| v == "none");
    if device && !off {
        let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
        println!("cargo:rustc-link-arg-bins=-Wl,-T,{dir}/link/hot-text.ld");
    }
}
