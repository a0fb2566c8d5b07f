//! `passage policy what-if` and `passage admin what-if`: what the conditional-access policies
//! decide for a sign-in, and why — from a policy file, or from the set a gateway has in force.

use std::path::Path;

use passage_policy::{ClientType, PolicySet, SignInFacts};
use passage_proto::v1::{WhatIfRequest, gateway_admin_client::GatewayAdminClient};

/// The sign-in to ask about.
#[derive(clap::Args)]
pub struct WhatIfArgs {
    /// The user's userPrincipalName.
    #[arg(long)]
    user: String,
    /// The user's groups, comma-separated, as the directory reports them.
    #[arg(long, value_delimiter = ',')]
    groups: Vec<String>,
    /// The application (client id).
    #[arg(long)]
    app: String,
    /// The client IP (none: no address reported).
    #[arg(long)]
    ip: Option<std::net::IpAddr>,
    /// The network is unfamiliar for the user (never signed in from successfully).
    #[arg(long)]
    unfamiliar: bool,
    /// The client type: grpc or browser.
    #[arg(long, default_value = "grpc")]
    client_type: String,
}

fn client_type(text: &str) -> Result<ClientType, String> {
    match text {
        "grpc" => Ok(ClientType::Grpc),
        "browser" => Ok(ClientType::Browser),
        other => Err(format!(
            "--client-type must be grpc or browser, not {other:?}"
        )),
    }
}

/// `passage policy what-if --policies FILE ...`: prints every policy, whether it applied and
/// why, and the result.
pub fn what_if_file(policies: &Path, args: &WhatIfArgs) -> Result<(), String> {
    let set = PolicySet::load(policies).map_err(|e| e.to_string())?;
    let evaluation = set.evaluate(&SignInFacts {
        user: &args.user,
        groups: &args.groups,
        application: &args.app,
        client_ip: args.ip.map(|ip| ip.to_canonical()),
        unfamiliar_location: args.unfamiliar,
        client_type: client_type(&args.client_type)?,
    });
    println!("policy set {}", set.content_hash());
    println!("{}", evaluation.explain());
    Ok(())
}

/// `passage admin what-if --gateway URL ...`: the same question to a gateway's policy set in
/// force (`GatewayAdmin.WhatIf`).
pub async fn what_if_remote(
    gateway: &crate::Gateway<'_>,
    token: &str,
    args: &WhatIfArgs,
) -> Result<(), String> {
    client_type(&args.client_type)?;
    let mut request = tonic::Request::new(WhatIfRequest {
        user: args.user.clone(),
        groups: args.groups.clone(),
        application: args.app.clone(),
        client_ip: args.ip.map(|ip| ip.to_string()).unwrap_or_default(),
        unfamiliar_location: args.unfamiliar,
        client_type: args.client_type.clone(),
    });
    let bearer = format!("Bearer {}", token.trim())
        .parse()
        .map_err(|_| "the token file does not hold a token")?;
    request.metadata_mut().insert("authorization", bearer);
    let answer = GatewayAdminClient::new(gateway.channel().await?)
        .what_if(request)
        .await
        .map_err(|status| format!("what-if failed: {}", status.message()))?
        .into_inner();
    println!("policy set {}", answer.policy_set);
    println!("{}", answer.explanation);
    Ok(())
}
