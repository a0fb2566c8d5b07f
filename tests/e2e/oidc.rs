//! Passage as an OpenID Connect provider, driven by a real OIDC client library
//! (`openidconnect`) against the real binaries in production trust (enrolled agent, TLS, the
//! store sealed with the key-encryption key) and a real slapd: discovery, the sign-in page,
//! PKCE, code exchange, ID token validation, refresh rotation and reuse detection, code replay,
//! revocation, introspection, userinfo, logout, signing key rotation across replicas; and no
//! password, secret, code or refresh token in any log or in the store.

use std::{future::Future, path::PathBuf, pin::Pin};

use hyper::body::Bytes;
use openidconnect::{
    AccessToken, AuthorizationCode, ClientId, ClientSecret, CsrfToken, IntrospectionUrl, IssuerUrl,
    Nonce, OAuth2TokenResponse, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, RefreshToken,
    RequestTokenError, RevocationUrl, Scope, TokenIntrospectionResponse, TokenResponse,
    core::{
        CoreAuthenticationFlow, CoreClient, CoreErrorResponseType, CoreProviderMetadata,
        CoreRevocableToken,
    },
};
use passage_tests::{
    Cluster, ClusterOptions,
    slapd::default_users,
    web::{FormBrowser, Page, query, send},
};

const WEB_APP: &str = "webapp";
const WEB_APP_REDIRECT: &str = "https://app.example.com/callback";
const WEB_APP_BYE: &str = "https://app.example.com/bye";
const SPA: &str = "spa";
const SPA_REDIRECT: &str = "http://localhost:9/spa/callback";

type HttpFuture =
    Pin<Box<dyn Future<Output = Result<openidconnect::HttpResponse, std::io::Error>> + Send>>;

/// The OIDC library's HTTP client: ours, trusting the test services CA.
fn http_client(ca: PathBuf) -> impl Fn(openidconnect::HttpRequest) -> HttpFuture {
    move |request: openidconnect::HttpRequest| {
        let ca = ca.clone();
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let request = hyper::Request::from_parts(parts, Bytes::from(body));
            send(request, Some(&ca))
                .await
                .map_err(std::io::Error::other)
        }) as HttpFuture
    }
}

struct Provider {
    cluster: Cluster,
    secret: String,
    ca: PathBuf,
}

async fn provider() -> Provider {
    provider_with("").await
}

/// A provider whose gateway has `extra` configuration lines.
async fn provider_with(extra: &str) -> Provider {
    let secret = passage_oidc::client::generate_secret();
    let hash = passage_oidc::client::hash_secret(&secret).unwrap();
    let clients = format!(
        "\n[[clients]]\nid = \"{WEB_APP}\"\nname = \"Web app\"\nredirect_uris = [\"{WEB_APP_REDIRECT}\"]\n\
         post_logout_redirect_uris = [\"{WEB_APP_BYE}\"]\nsecret_hash = \"{hash}\"\n\
         \n[[clients]]\nid = \"{SPA}\"\nname = \"Single-page app\"\nredirect_uris = [\"{SPA_REDIRECT}\"]\n"
    );
    let cluster = Cluster::start_enrolled(ClusterOptions {
        gateway_store_key: true,
        debug_logs: true,
        trace_export: true,
        gateway_config: format!("oidc = {{ signing_keys_reload_s = 1 }}\n{extra}"),
        gateway_clients: clients,
        ..ClusterOptions::default()
    })
    .await;
    let ca = cluster.services_ca_file();
    Provider {
        cluster,
        secret,
        ca,
    }
}

impl Provider {
    fn issuer(&self) -> &str {
        &self.cluster.gateway.issuer
    }

    async fn client(
        &self,
    ) -> openidconnect::core::CoreClient<
        openidconnect::EndpointSet,
        openidconnect::EndpointNotSet,
        openidconnect::EndpointSet,
        openidconnect::EndpointSet,
        openidconnect::EndpointMaybeSet,
        openidconnect::EndpointMaybeSet,
    > {
        let http = http_client(self.ca.clone());
        let metadata = CoreProviderMetadata::discover_async(
            IssuerUrl::new(self.issuer().to_owned()).unwrap(),
            &http,
        )
        .await
        .expect("discovery");
        CoreClient::from_provider_metadata(
            metadata,
            ClientId::new(WEB_APP.into()),
            Some(ClientSecret::new(self.secret.clone())),
        )
        .set_redirect_uri(RedirectUrl::new(WEB_APP_REDIRECT.into()).unwrap())
        .set_revocation_url(RevocationUrl::new(format!("{}/revoke", self.issuer())).unwrap())
        .set_introspection_url(
            IntrospectionUrl::new(format!("{}/introspect", self.issuer())).unwrap(),
        )
    }

    /// The user at the sign-in page: the page, then the answer to posting the credentials.
    async fn sign_in_page(
        &self,
        browser: &mut FormBrowser,
        authorize_url: &str,
        username: &str,
        password: &str,
    ) -> Page {
        let page = browser.get(authorize_url).await;
        assert_eq!(page.status, 200, "{}", page.body);
        let mut fields = page.hidden_inputs();
        fields.push(("username".into(), username.into()));
        fields.push(("password".into(), password.into()));
        browser
            .post_form(&format!("{}/authorize", self.issuer()), &fields)
            .await
    }
}

fn is_invalid_grant<RE: std::error::Error + 'static>(
    result: &Result<
        impl std::fmt::Debug,
        RequestTokenError<RE, openidconnect::StandardErrorResponse<CoreErrorResponseType>>,
    >,
) -> bool {
    matches!(result, Err(RequestTokenError::ServerResponse(err))
        if *err.error() == CoreErrorResponseType::InvalidGrant)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_real_client_signs_in_refreshes_revokes_and_logs_out() {
    let provider = provider().await;
    let client = provider.client().await;
    let http = http_client(provider.ca.clone());
    let alice = &default_users()[0];
    let mut browser = FormBrowser::trusting(provider.ca.clone());

    let begin = || {
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let (url, state, nonce) = client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .add_scope(Scope::new("profile".into()))
            .add_scope(Scope::new("email".into()))
            .add_scope(Scope::new("offline_access".into()))
            .set_pkce_challenge(challenge)
            .url();
        (url.to_string(), state, nonce, verifier)
    };

    // A wrong password: the page says so, and no code leaves.
    let (url, state, nonce, verifier) = begin();
    let wrong = provider
        .sign_in_page(&mut browser, &url, &alice.upn, "not-the-password")
        .await;
    assert_eq!(wrong.status, 200);
    assert!(wrong.location().is_none());
    assert!(wrong.body.contains("id=\"error\""), "{}", wrong.body);
    assert!(!wrong.body.contains("not-the-password"));

    // The right one: back to the application with a code, the state and the issuer.
    let answer = provider
        .sign_in_page(&mut browser, &url, &alice.upn, &alice.password)
        .await;
    assert_eq!(answer.status, 303, "{}", answer.body);
    let location = answer.location().unwrap().to_owned();
    assert!(location.starts_with(WEB_APP_REDIRECT), "{location}");
    let params = query(&location);
    assert_eq!(params["state"], *state.secret());
    assert_eq!(params["iss"], provider.issuer());
    let code = params["code"].clone();

    // A wrong PKCE verifier does not redeem it... but it spends it, so it is checked on its
    // own code further down. Here: the right verifier.
    let tokens = client
        .exchange_code(AuthorizationCode::new(code.clone()))
        .unwrap()
        .set_pkce_verifier(verifier)
        .request_async(&http)
        .await
        .expect("code exchange");
    let id_token = tokens.id_token().expect("an ID token");
    let claims = id_token
        .claims(&client.id_token_verifier(), &nonce)
        .expect("the library verifies the ID token");
    assert_eq!(
        claims.email().map(|e| e.as_str()),
        Some(alice.mail.as_str())
    );
    assert!(claims.auth_time().is_some());
    let first_refresh = tokens.refresh_token().expect("offline_access").clone();

    // The same code again: refused, and what it gave is revoked.
    let replay = client
        .exchange_code(AuthorizationCode::new(code))
        .unwrap()
        .set_pkce_verifier(PkceCodeVerifier::new("x".repeat(43)))
        .request_async(&http)
        .await;
    assert!(is_invalid_grant(&replay), "{replay:?}");
    let after_replay = client
        .exchange_refresh_token(&first_refresh)
        .unwrap()
        .request_async(&http)
        .await;
    assert!(is_invalid_grant(&after_replay), "{after_replay:?}");

    // A fresh sign-in; userinfo and introspection of its access token.
    let (url, state, nonce, verifier) = begin();
    let answer = provider
        .sign_in_page(&mut browser, &url, &alice.upn, &alice.password)
        .await;
    let params = query(answer.location().expect("a redirect"));
    assert_eq!(params["state"], *state.secret());
    let tokens = client
        .exchange_code(AuthorizationCode::new(params["code"].clone()))
        .unwrap()
        .set_pkce_verifier(verifier)
        .request_async(&http)
        .await
        .unwrap();
    let subject = tokens
        .id_token()
        .unwrap()
        .claims(&client.id_token_verifier(), &nonce)
        .unwrap()
        .subject()
        .clone();
    let userinfo: openidconnect::core::CoreUserInfoClaims = client
        .user_info(tokens.access_token().clone(), Some(subject.clone()))
        .unwrap()
        .request_async(&http)
        .await
        .expect("userinfo");
    assert_eq!(
        userinfo.email().map(|e| e.as_str()),
        Some(alice.mail.as_str())
    );
    let introspected = client
        .introspect(tokens.access_token())
        .request_async(&http)
        .await
        .unwrap();
    assert!(introspected.active());
    assert_eq!(introspected.sub(), Some(subject.as_str()));

    // Rotation: each refresh gives a new refresh token; the old one used again revokes the
    // whole family, the newest included.
    let r1 = tokens.refresh_token().unwrap().clone();
    let rotated = client
        .exchange_refresh_token(&r1)
        .unwrap()
        .request_async(&http)
        .await
        .expect("refresh");
    let r2 = rotated
        .refresh_token()
        .expect("a new refresh token")
        .clone();
    assert_ne!(r1.secret(), r2.secret());
    assert!(rotated.id_token().is_some());
    let as_access = |token: &RefreshToken| AccessToken::new(token.secret().clone());
    assert!(
        client
            .introspect(&as_access(&r2))
            .request_async(&http)
            .await
            .unwrap()
            .active()
    );
    // The spent token again, asking for more than its grant: still caught as a reuse (not
    // refused for its scope first), and the family is revoked.
    let reuse = client
        .exchange_refresh_token(&r1)
        .unwrap()
        .add_scope(Scope::new("phone".into()))
        .request_async(&http)
        .await;
    assert!(is_invalid_grant(&reuse), "{reuse:?}");
    let reuse = client
        .exchange_refresh_token(&r1)
        .unwrap()
        .request_async(&http)
        .await;
    assert!(is_invalid_grant(&reuse), "{reuse:?}");
    let r2_after = client
        .exchange_refresh_token(&r2)
        .unwrap()
        .request_async(&http)
        .await;
    assert!(is_invalid_grant(&r2_after), "{r2_after:?}");
    assert!(
        !client
            .introspect(&as_access(&r2))
            .request_async(&http)
            .await
            .unwrap()
            .active()
    );

    // Revocation (RFC 7009) of a live refresh token.
    let (url, _, _, verifier) = begin();
    let answer = provider
        .sign_in_page(&mut browser, &url, &alice.upn, &alice.password)
        .await;
    let code = query(answer.location().unwrap())["code"].clone();
    // A wrong verifier first: refused (and the code is spent).
    let wrong_verifier = client
        .exchange_code(AuthorizationCode::new(code))
        .unwrap()
        .set_pkce_verifier(PkceCodeVerifier::new("y".repeat(43)))
        .request_async(&http)
        .await;
    assert!(is_invalid_grant(&wrong_verifier), "{wrong_verifier:?}");
    drop(verifier);
    let (url, _, nonce, verifier) = begin();
    let answer = provider
        .sign_in_page(&mut browser, &url, &alice.upn, &alice.password)
        .await;
    let tokens = client
        .exchange_code(AuthorizationCode::new(
            query(answer.location().unwrap())["code"].clone(),
        ))
        .unwrap()
        .set_pkce_verifier(verifier)
        .request_async(&http)
        .await
        .unwrap();
    let live = tokens.refresh_token().unwrap().clone();
    client
        .revoke_token(CoreRevocableToken::from(live.clone()))
        .unwrap()
        .request_async(&http)
        .await
        .expect("revocation");
    let revoked = client
        .exchange_refresh_token(&live)
        .unwrap()
        .request_async(&http)
        .await;
    assert!(is_invalid_grant(&revoked), "{revoked:?}");
    // An access token cannot be revoked, and the client is told so (RFC 7009 §2.2.1).
    let access = client
        .revoke_token(CoreRevocableToken::from(tokens.access_token().clone()))
        .unwrap()
        .request_async(&http)
        .await;
    match &access {
        Err(RequestTokenError::ServerResponse(answer)) => {
            assert_eq!(answer.error().as_ref(), "unsupported_token_type")
        }
        other => panic!("an access token's revocation must be refused: {other:?}"),
    }

    // RP-initiated logout: back to the registered page with the state; the user's refresh
    // tokens for the application end.
    let (url, _, nonce2, verifier) = begin();
    let answer = provider
        .sign_in_page(&mut browser, &url, &alice.upn, &alice.password)
        .await;
    let tokens = client
        .exchange_code(AuthorizationCode::new(
            query(answer.location().unwrap())["code"].clone(),
        ))
        .unwrap()
        .set_pkce_verifier(verifier)
        .request_async(&http)
        .await
        .unwrap();
    let id_token = tokens.id_token().unwrap();
    id_token
        .claims(&client.id_token_verifier(), &nonce2)
        .unwrap();
    let _ = nonce;
    let logout_url = format!(
        "{}/logout?{}",
        provider.issuer(),
        form_urlencoded::Serializer::new(String::new())
            .append_pair("id_token_hint", &id_token.to_string())
            .append_pair("post_logout_redirect_uri", WEB_APP_BYE)
            .append_pair("state", "bye-1")
            .finish()
    );
    let bye = browser.get(&logout_url).await;
    assert_eq!(bye.status, 303, "{}", bye.body);
    assert_eq!(
        bye.location(),
        Some(format!("{WEB_APP_BYE}?state=bye-1").as_str())
    );
    let after_logout = client
        .exchange_refresh_token(tokens.refresh_token().unwrap())
        .unwrap()
        .request_async(&http)
        .await;
    assert!(is_invalid_grant(&after_logout), "{after_logout:?}");
    // An unregistered place to go after logout is refused.
    let elsewhere = browser
        .get(&format!(
            "{}/logout?{}",
            provider.issuer(),
            form_urlencoded::Serializer::new(String::new())
                .append_pair("id_token_hint", &id_token.to_string())
                .append_pair("post_logout_redirect_uri", "https://evil.example.net/")
                .finish()
        ))
        .await;
    assert_eq!(elsewhere.status, 400);
    assert!(elsewhere.location().is_none());

    // No password, client secret or refresh token in any log (debug level, stdout too), and
    // none of them, nor a code, in the store's file.
    let cluster = &provider.cluster;
    // The browser sign-ins' spans reached the collector.
    let collector = cluster.collector.as_ref().expect("trace export is on");
    collector
        .wait_for(std::time::Duration::from_secs(15), |spans| {
            spans
                .iter()
                .filter(|s| s.service == "passage-gateway" && s.name == "sign_in")
                .count()
                >= 6
        })
        .await;
    let mut outputs = cluster.gateway.process.output();
    outputs.push_str(&cluster.dispatcher.process.output());
    outputs.push_str(&collector.dump());
    let store = cluster.sqlite_store_bytes();
    for secret in [
        alice.password.as_str(),
        provider.secret.as_str(),
        first_refresh.secret().as_str(),
        r1.secret().as_str(),
        r2.secret().as_str(),
        live.secret().as_str(),
    ] {
        assert!(!outputs.contains(secret), "a secret in a log");
        assert!(
            !store.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "a secret in the store"
        );
    }
    assert!(
        !store
            .windows(alice.mail.len())
            .any(|w| w == alice.mail.as_bytes()),
        "what a code or refresh token grants is sealed in the store"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_authorization_requests_and_forms_are_refused() {
    let provider = provider().await;
    let issuer = provider.issuer().to_owned();
    let alice = &default_users()[0];
    let mut browser = FormBrowser::trusting(provider.ca.clone());
    let authorize = |pairs: &[(&str, &str)]| {
        format!(
            "{issuer}/authorize?{}",
            form_urlencoded::Serializer::new(String::new())
                .extend_pairs(pairs)
                .finish()
        )
    };
    let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

    // Discovery and the JWKS are readable from any web page (CORS), and complete.
    let discovery = browser
        .get(&format!("{issuer}/.well-known/openid-configuration"))
        .await;
    assert_eq!(discovery.header("access-control-allow-origin"), Some("*"));
    let document: serde_json::Value = serde_json::from_str(&discovery.body).unwrap();
    for field in [
        "authorization_endpoint",
        "token_endpoint",
        "userinfo_endpoint",
        "revocation_endpoint",
        "introspection_endpoint",
        "end_session_endpoint",
        "jwks_uri",
    ] {
        assert!(
            document[field].as_str().unwrap().starts_with(&issuer),
            "{field}: {document}"
        );
    }
    assert_eq!(
        document["response_types_supported"],
        serde_json::json!(["code"])
    );
    assert_eq!(
        document["code_challenge_methods_supported"],
        serde_json::json!(["S256"])
    );
    let jwks = browser
        .get(&format!("{issuer}/.well-known/jwks.json"))
        .await;
    assert_eq!(jwks.header("access-control-allow-origin"), Some("*"));

    // An unregistered redirect URI: Passage's own page, never a redirect there.
    let page = browser
        .get(&authorize(&[
            ("response_type", "code"),
            ("client_id", WEB_APP),
            ("redirect_uri", "https://evil.example.net/cb"),
            ("scope", "openid"),
        ]))
        .await;
    assert_eq!(page.status, 400);
    assert!(page.location().is_none());

    // A public client without PKCE: sent back with invalid_request and its state.
    let page = browser
        .get(&authorize(&[
            ("response_type", "code"),
            ("client_id", SPA),
            ("redirect_uri", SPA_REDIRECT),
            ("scope", "openid"),
            ("state", "s-1"),
        ]))
        .await;
    assert_eq!(page.status, 303);
    let params = query(page.location().unwrap());
    assert_eq!(params["error"], "invalid_request");
    assert_eq!(params["state"], "s-1");

    // The implicit flow does not exist.
    let page = browser
        .get(&authorize(&[
            ("response_type", "id_token"),
            ("client_id", SPA),
            ("redirect_uri", SPA_REDIRECT),
            ("scope", "openid"),
            ("code_challenge", challenge),
            ("code_challenge_method", "S256"),
        ]))
        .await;
    assert_eq!(
        query(page.location().unwrap())["error"],
        "unsupported_response_type"
    );

    // A good request: the page's headers keep it out of frames, caches and other origins.
    let good = authorize(&[
        ("response_type", "code"),
        ("client_id", SPA),
        ("redirect_uri", SPA_REDIRECT),
        ("scope", "openid"),
        ("state", "s-2"),
        ("code_challenge", challenge),
        ("code_challenge_method", "S256"),
    ]);
    let page = browser.get(&good).await;
    assert_eq!(page.status, 200);
    let csp = page.header("content-security-policy").unwrap();
    assert!(
        csp.contains("frame-ancestors 'none'") && csp.contains("default-src 'none'"),
        "{csp}"
    );
    assert!(
        csp.contains("form-action 'self' http://localhost:9"),
        "{csp}"
    );
    assert_eq!(page.header("x-frame-options"), Some("DENY"));
    assert_eq!(page.header("cache-control"), Some("no-store"));
    let cookie = page.header("set-cookie").unwrap();
    assert!(
        cookie.starts_with("__Host-passage-csrf=")
            && cookie.contains("Secure")
            && cookie.contains("HttpOnly")
            && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert!(
        page.body.contains("<label for=\"username\""),
        "{}",
        page.body
    );

    // Posted without the CSRF cookie (from another site): refused, nothing checked.
    let mut fields = page.hidden_inputs();
    fields.push(("username".into(), alice.upn.clone()));
    fields.push(("password".into(), alice.password.clone()));
    let mut stranger = FormBrowser::trusting(provider.ca.clone());
    let refused = stranger
        .post_form(&format!("{issuer}/authorize"), &fields)
        .await;
    assert_eq!(refused.status, 403);
    assert!(refused.location().is_none());

    // The page never says whether a user exists: an unknown user and a wrong password read
    // the same.
    let error_text = |page: &Page| {
        let start = page.body.find("id=\"error\"").expect("an error");
        let end = page.body[start..].find("</p>").unwrap() + start;
        page.body[start..end].to_owned()
    };
    let unknown = provider
        .sign_in_page(&mut browser, &good, "nobody@corp.example.com", "whatever-1")
        .await;
    let wrong = provider
        .sign_in_page(&mut browser, &good, &alice.upn, "whatever-1")
        .await;
    assert_eq!(error_text(&unknown), error_text(&wrong));
    // Nor does a user the directory has locked: the directory says "locked" whatever the
    // password typed, which would tell that the account exists.
    let bob = &default_users()[1];
    provider.cluster.slapd.lock(bob);
    let locked = provider
        .sign_in_page(&mut browser, &good, &bob.upn, "whatever-1")
        .await;
    assert_eq!(error_text(&locked), error_text(&unknown));
    let store = passage_store::Store::open(&provider.cluster.store_url())
        .await
        .unwrap();
    let log = passage_tests::signin_log::logged(&store, &bob.upn, 1).await;
    assert_eq!(
        log.first().map(|entry| entry.error_code.as_str()),
        Some(passage_error_codes::ErrorCode::AccountLocked.as_str()),
        "the sign-in log keeps what the directory said: {log:?}"
    );

    // The code goes to the public client only with the right verifier.
    let answer = provider
        .sign_in_page(&mut browser, &good, &alice.upn, &alice.password)
        .await;
    let code = query(answer.location().unwrap())["code"].clone();
    let token = |verifier: &str| {
        let fields = vec![
            ("grant_type".to_owned(), "authorization_code".to_owned()),
            ("code".to_owned(), code.clone()),
            ("redirect_uri".to_owned(), SPA_REDIRECT.to_owned()),
            ("client_id".to_owned(), SPA.to_owned()),
            ("code_verifier".to_owned(), verifier.to_owned()),
        ];
        let mut browser = FormBrowser::trusting(provider.ca.clone());
        let issuer = issuer.clone();
        async move { browser.post_form(&format!("{issuer}/token"), &fields).await }
    };
    let ok = token("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk").await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(ok.header("cache-control"), Some("no-store"));
    let body: serde_json::Value = serde_json::from_str(&ok.body).unwrap();
    assert_eq!(body["token_type"], "Bearer");
    // No offline_access asked: no refresh token.
    assert!(body.get("refresh_token").is_none(), "{body}");

    // A public client cannot introspect (its id is no secret).
    let mut stranger = FormBrowser::trusting(provider.ca.clone());
    let introspection = stranger
        .post_form(
            &format!("{issuer}/introspect"),
            &[
                ("client_id".into(), SPA.into()),
                (
                    "token".into(),
                    body["access_token"].as_str().unwrap().into(),
                ),
            ],
        )
        .await;
    assert_eq!(introspection.status, 401, "{}", introspection.body);

    // The single-page application's origin may call the token endpoint from its page; others
    // may not.
    let preflight = |origin: &'static str| {
        let ca = provider.ca.clone();
        let url = format!("{issuer}/token");
        async move {
            let request = hyper::Request::options(url)
                .header("origin", origin)
                .header("access-control-request-method", "POST")
                .body(Bytes::new())
                .unwrap();
            send(request, Some(&ca)).await.unwrap()
        }
    };
    let allowed = preflight("http://localhost:9").await;
    assert_eq!(allowed.status(), 204);
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "http://localhost:9"
    );
    assert_eq!(preflight("https://evil.example.net").await.status(), 403);
}

#[tokio::test(flavor = "multi_thread")]
async fn rotated_keys_stay_published_until_their_tokens_expire() {
    // Tokens live 4 s here, so that the old key's time comes within the test.
    let provider = provider_with("token_lifetime_s = 4\n").await;
    let cluster = &provider.cluster;
    let alice = &default_users()[0];
    let issuer = provider.issuer().to_owned();
    let jwks = || async {
        passage_gateway::client::fetch_jwks(&issuer, Some(&provider.ca))
            .await
            .unwrap()
    };
    let before = cluster.sign_in(&alice.upn, &alice.password).await.unwrap();
    let old_kid = jsonwebtoken::decode_header(&before.access_token)
        .unwrap()
        .kid
        .unwrap();
    assert_eq!(jwks().await.keys.len(), 1);

    // A second replica signs with the same key set.
    let (replica, _) = cluster.start_gateway_replica("second").await;
    let replica_jwks = passage_gateway::client::fetch_jwks(&replica.issuer, Some(&provider.ca))
        .await
        .unwrap();
    assert_eq!(replica_jwks.keys, jwks().await.keys);

    let (ok, stdout, stderr) = cluster.store_cli("keys", &["rotate"]);
    assert!(ok, "{stdout}{stderr}");
    // Every replica publishes the new key at once, before any signs with it (they read the
    // keys for signing only every signing_keys_reload_s).
    let replica_jwks = passage_gateway::client::fetch_jwks(&replica.issuer, Some(&provider.ca))
        .await
        .unwrap();
    assert_eq!(
        replica_jwks.keys.len(),
        2,
        "the replica publishes both keys"
    );
    assert_eq!(jwks().await.keys, replica_jwks.keys);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let after = loop {
        let tokens = cluster.sign_in(&alice.upn, &alice.password).await.unwrap();
        let kid = jsonwebtoken::decode_header(&tokens.access_token)
            .unwrap()
            .kid
            .unwrap();
        if kid != old_kid {
            break tokens;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the new key does not sign"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let published = jwks().await;
    for token in [&before.access_token, &after.access_token] {
        passage_tokens::verify_access_token(
            token,
            &published,
            &issuer,
            passage_tests::cluster::CLIENT_ID,
        )
        .expect("tokens of both keys verify");
    }
    let (ok, listed, _) = cluster.store_cli("keys", &["list"]);
    assert!(
        ok && listed.contains("signing") && listed.contains("retired"),
        "{listed}"
    );

    // Once every token the old key signed has expired, it leaves the JWKS — not before.
    let expires =
        jsonwebtoken::dangerous::insecure_decode_claims::<serde_json::Value>(&before.access_token)
            .unwrap()["exp"]
            .as_i64()
            .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while jwks().await.keys.len() != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the old key stayed published"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(
        passage_pki::unix_now() >= expires,
        "the old key left the JWKS before its tokens expired"
    );
    let published = jwks().await;
    assert!(
        passage_tokens::verify_access_token(
            &before.access_token,
            &published,
            &issuer,
            passage_tests::cluster::CLIENT_ID
        )
        .is_err()
    );
    passage_tokens::verify_access_token(
        &after.access_token,
        &published,
        &issuer,
        passage_tests::cluster::CLIENT_ID,
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_policy_asks_the_browser_for_the_second_factor() {
    let files = tempfile::tempdir().unwrap();
    let policies = files.path().join("policies.yaml");
    std::fs::write(
        &policies,
        "policies:\n  - name: mfa-in-browsers\n    conditions:\n      client_types: [browser]\n    grant: require_mfa\n",
    )
    .unwrap();
    let provider = provider_with(&format!("policies_file = \"{}\"\n", policies.display())).await;
    let cluster = &provider.cluster;
    let alice = &default_users()[0];

    // The administrator enrols alice; the test reads the secret from the store with its key.
    let (ok, _, stderr) = cluster.store_cli("mfa", &["enrol", "--user", &alice.upn]);
    assert!(ok, "{stderr}");
    let store = passage_store::Store::open(&cluster.store_url())
        .await
        .unwrap()
        .with_key_protection(passage_store::KeyProtection::Encrypted(
            passage_store::KeyEncryptionKey::from_file(std::path::Path::new(
                &cluster.store_key_file(),
            ))
            .unwrap(),
        ));
    let enrolment = store
        .mfa_enrolment("default", &alice.upn.to_lowercase())
        .await
        .unwrap()
        .expect("an enrolment");
    let secret = passage_mfa::TotpSecret::from_bytes(enrolment.secret.expose().to_vec()).unwrap();
    let now = || passage_pki::unix_now() as u64;
    let first = passage_mfa::totp_code(&secret, now());
    let (ok, _, stderr) =
        cluster.store_cli("mfa", &["confirm", "--user", &alice.upn, "--code", &first]);
    assert!(ok, "{stderr}");

    let client = provider.client().await;
    let http = http_client(provider.ca.clone());
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (url, state, nonce) = client
        .authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        )
        .set_pkce_challenge(challenge)
        .url();
    let mut browser = FormBrowser::trusting(provider.ca.clone());
    // The password leads to the second page, not to the application.
    let page = provider
        .sign_in_page(&mut browser, url.as_str(), &alice.upn, &alice.password)
        .await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.location().is_none());
    assert!(page.body.contains("id=\"code\""), "{}", page.body);
    let mfa_url = format!("{}/mfa", provider.issuer());
    let post_code = |page: &Page, code: &str| {
        let mut fields = page.hidden_inputs();
        fields.push(("code".into(), code.into()));
        fields
    };
    // A wrong code: asked again, with the error.
    let fields = post_code(&page, "000000");
    let again = browser.post_form(&mfa_url, &fields).await;
    assert_eq!(again.status, 200);
    assert!(
        again.body.contains("id=\"error\"") && again.body.contains("id=\"code\""),
        "{}",
        again.body
    );
    // The code of the next time step (the confirming code's step is spent).
    let fields = post_code(&again, &passage_mfa::totp_code(&secret, now() + 30));
    let done = browser.post_form(&mfa_url, &fields).await;
    assert_eq!(done.status, 303, "{}", done.body);
    let params = query(done.location().unwrap());
    assert_eq!(params["state"], *state.secret());
    let tokens = client
        .exchange_code(AuthorizationCode::new(params["code"].clone()))
        .unwrap()
        .set_pkce_verifier(verifier)
        .request_async(&http)
        .await
        .unwrap();
    let claims = tokens
        .id_token()
        .unwrap()
        .claims(&client.id_token_verifier(), &nonce)
        .unwrap();
    let methods: Vec<&str> = claims
        .auth_method_refs()
        .unwrap()
        .iter()
        .map(|m| m.as_str())
        .collect();
    assert_eq!(methods, ["pwd", "otp"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_clients_get_the_same_refresh_token_lifecycle() {
    use passage_error_codes::ErrorCode;
    use passage_proto::v1::{RefreshRequest, SignInRequest};
    use passage_tests::cluster::CLIENT_ID;

    let provider = provider().await;
    let cluster = &provider.cluster;
    let alice = &default_users()[0];
    let mut gateway = cluster.gateway_client();
    let signed = gateway
        .sign_in(SignInRequest {
            username: alice.upn.clone(),
            password: alice.password.clone(),
            client_id: CLIENT_ID.into(),
            client_ip: String::new(),
            offline_access: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!signed.refresh_token.is_empty());
    let refresh_as = |token: &str, client: &str, secret: &str| {
        let mut gateway = cluster.gateway_client();
        let request = RefreshRequest {
            refresh_token: token.to_owned(),
            client_id: client.to_owned(),
            client_secret: secret.to_owned(),
        };
        async move { gateway.refresh(request).await.map(|r| r.into_inner()) }
    };
    let refresh = |token: &str, client: &str| refresh_as(token, client, "");
    // A confidential application proves itself first; then it cannot use another's token
    // either (and does not spend it).
    let unproven = refresh(&signed.refresh_token, WEB_APP).await.unwrap_err();
    assert_eq!(
        ErrorCode::of(&unproven),
        Some(ErrorCode::ClientAuthenticationFailed)
    );
    let other = refresh_as(&signed.refresh_token, WEB_APP, &provider.secret)
        .await
        .unwrap_err();
    assert_eq!(ErrorCode::of(&other), Some(ErrorCode::RefreshTokenInvalid));
    let rotated = refresh(&signed.refresh_token, CLIENT_ID).await.unwrap();
    assert_ne!(rotated.refresh_token, signed.refresh_token);
    let claims = passage_tokens::verify_id_token(
        &rotated.id_token,
        &passage_gateway::client::fetch_jwks(provider.issuer(), Some(&provider.ca))
            .await
            .unwrap(),
        provider.issuer(),
        CLIENT_ID,
    )
    .unwrap();
    assert_eq!(claims.upn, alice.upn);
    // The spent token again: refused, and the family with it.
    let reuse = refresh(&signed.refresh_token, CLIENT_ID).await.unwrap_err();
    assert_eq!(ErrorCode::of(&reuse), Some(ErrorCode::RefreshTokenInvalid));
    let after = refresh(&rotated.refresh_token, CLIENT_ID)
        .await
        .unwrap_err();
    assert_eq!(ErrorCode::of(&after), Some(ErrorCode::RefreshTokenInvalid));
    // An administrator revokes the user's refresh tokens.
    let again = gateway
        .sign_in(SignInRequest {
            username: alice.upn.clone(),
            password: alice.password.clone(),
            client_id: CLIENT_ID.into(),
            client_ip: String::new(),
            offline_access: true,
        })
        .await
        .unwrap()
        .into_inner();
    let (ok, stdout, stderr) =
        cluster.store_cli("tokens", &["revoke", "--user", &alice.upn.to_uppercase()]);
    assert!(
        ok && stdout.contains("revoked 1 refresh token"),
        "{stdout}{stderr}"
    );
    let revoked = refresh(&again.refresh_token, CLIENT_ID).await.unwrap_err();
    assert_eq!(
        ErrorCode::of(&revoked),
        Some(ErrorCode::RefreshTokenInvalid)
    );
    // Without offline_access, no refresh token.
    let plain = cluster.sign_in(&alice.upn, &alice.password).await.unwrap();
    assert!(plain.refresh_token.is_empty());
}
