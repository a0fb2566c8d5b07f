//! Compiles `passage/v1/*.proto` with protox (pure Rust, so no `protoc` to install) and
//! generates the tonic client and server code plus a descriptor set for server reflection.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "passage/v1/common.proto",
        "passage/v1/tunnel.proto",
        "passage/v1/dispatcher.proto",
        "passage/v1/gateway.proto",
        "passage/v1/enrolment.proto",
        "passage/v1/admin.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["."])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("passage_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // `AgentTunnel.Connect` would clash with the generated `connect` constructor; clients
        // are built from a `Channel` with `new` instead.
        .build_transport(false)
        // Messages holding passwords, tokens, codes or secrets get a hand-written, redacting
        // Debug (src/lib.rs).
        .skip_debug([
            "passage.v1.SignInRequest",
            "passage.v1.PasswordPayload",
            "passage.v1.SignInResponse",
            "passage.v1.CompleteMfaRequest",
            "passage.v1.CompleteMfaResponse",
            "passage.v1.RefreshRequest",
            "passage.v1.RefreshResponse",
            "passage.v1.EnrolRequest",
            "passage.v1.ChangePasswordRequest",
            "passage.v1.ChangePasswordResponse",
        ])
        .compile_fds(descriptors)?;
    Ok(())
}
