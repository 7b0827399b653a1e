//! Compiles the wire contracts with protox (pure Rust, no `protoc`) and generates tonic code.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["agent.proto", "cluster.proto", "csi.proto"];
    for f in files {
        println!("cargo:rerun-if-changed=proto/{f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    // Unimplemented by default: a service gaining an RPC does not break the fakes tests keep of it.
    tonic_prost_build::configure().generate_default_stubs(true).compile_fds(fds)?;
    Ok(())
}
