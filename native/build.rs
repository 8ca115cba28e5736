//! Records the versions of the network stack from Cargo.lock, for `_transport.STACK` (logged at
//! start-up and shown by the bench).
fn main() {
    println!("cargo:rerun-if-changed=Cargo.lock");
    let lock = std::fs::read_to_string("Cargo.lock").unwrap_or_default();
    let mut found = Vec::new();
    for name in ["tonic", "hyper", "h2", "tokio", "rustls", "pyo3"] {
        let marker = format!("name = \"{name}\"\nversion = \"");
        if let Some(at) = lock.find(&marker) {
            let rest = &lock[at + marker.len()..];
            let version = rest.split('"').next().unwrap_or("?");
            found.push(format!("{name} {version}"));
        }
    }
    println!("cargo:rustc-env=MIMO_TRANSPORT_STACK={}", found.join(", "));
}
