//! Compiles the wire contracts with protox (pure Rust, no `protoc`) and generates tonic code.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["agent.proto", "cluster.proto", "csi.proto"];
    for f in files {
        println!("cargo:rerun-if-changed=proto/{f}");
    }
    // Unimplemented by default: a service gaining an RPC does not break the fakes tests keep of it.
    tonic_prost_build::configure().generate_default_stubs(true).compile_fds(protox::compile(["agent.proto", "csi.proto"], ["proto"])?)?;
    // The scheduler answers a request that does not decode with INVALID_ARGUMENT (the CSI and
    // agent services keep tonic's INTERNAL: their callers have conventions of their own).
    tonic_prost_build::configure().generate_default_stubs(true).codec_path("crate::codec::InvalidArgumentCodec").compile_fds(protox::compile(["cluster.proto"], ["proto"])?)?;
    Ok(())
}
