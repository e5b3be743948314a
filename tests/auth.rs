//! Authentication hardening (PROTOCOL.md section 6): tokens of unknown
//! users and revoked tokens are refused on REST and at CONNECT, logout
//! and logout-all revoke at once and close the connections, token errors
//! say what is wrong without the JWT library's words, and logins and
//! registrations are throttled per username and per client address (with
//! `Retry-After`), the client address read from `X-Forwarded-For` only
//! behind a trusted proxy. In cluster mode every server is two nodes and
//! requests alternate between them, so each check also crosses nodes.

mod common;

use common::*;
use herald::stomp::{Command, Frame};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

fn now_secs() -> u64 {
    (now_ms() / 1000) as u64
}

/// A token signed with the test servers' secret, with these claims.
fn sign(claims: &Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .expect("sign a token")
}

/// Logs `user` in again: another token of the same user.
async fn login_again(api: &Api, user: &TestUser) -> String {
    let r = api.login(&user.username, &user.password).await;
    r.expect(200, "login")["token"]
        .as_str()
        .expect("token")
        .to_string()
}

/// `GET /users/me` with `token` on every node; asserts `status`.
async fn me_everywhere(api: &Api, server: &TestServer, token: &str, status: u16, what: &str) {
    for _ in server.ports() {
        let r = api.get(&format!("{API}/users/me"), Some(token)).await;
        if status == 200 {
            r.expect(200, what);
        } else {
            r.expect_error(status, "unauthenticated", what);
        }
    }
}

/// CONNECTs with `token` on `port`; asserts an ERROR frame with a
/// `message` header, then the close. Returns the message.
async fn connect_refused(port: u16, token: &str) -> String {
    let mut c = Stomp::open(port).await;
    let auth = format!("Bearer {token}");
    let f = c.send_connect(&[("Authorization", auth.as_str())]).await;
    assert_eq!(f.command, Command::Error, "CONNECT must be refused: {f:?}");
    let message = f
        .header("message")
        .expect("an ERROR frame has a message header")
        .to_string();
    assert!(
        c.wait_closed(WAIT).await,
        "the connection closes after ERROR"
    );
    message
}

/// Waits for the ERROR frame a revocation sends, then the close.
async fn expect_revoked(c: &mut Stomp, what: &str) {
    let f = c.recv_error(WAIT).await;
    assert_eq!(f.header("message"), Some("token revoked"), "{what}: {f:?}");
    assert!(c.wait_closed(WAIT).await, "{what}: closed after the ERROR");
}

/// A SUBSCRIBE with a receipt is answered: the connection is alive.
async fn assert_alive(c: &mut Stomp, what: &str) {
    let f: Frame = c
        .subscribe_frame("/user/queue/message", "alive", "auto")
        .await;
    assert_eq!(f.command, Command::Receipt, "{what}: {f:?}");
}

#[tokio::test]
async fn tokens_of_unknown_users_are_refused() {
    let s = TestServer::start(&[]);
    let _g = s.log_guard();
    let api = s.api();
    let bob = api.new_user().await;
    // A validly signed token for a user id nobody has.
    let ghost = u64::from(rand::random::<u32>()) + 1;
    let token = sign(&json!({
        "sub": ghost.to_string(),
        "exp": now_secs() + 3600,
        "iat": now_secs(),
        "jti": "1",
    }));
    me_everywhere(&api, &s, &token, 401, "a token of an unknown user").await;
    let send = send_req_user(&bob.user_id, "from nobody", &unique("c"));
    let r = api
        .post(&format!("{API}/messages"), Some(&token), &send)
        .await;
    r.expect_error(401, "unauthenticated", "a send of an unknown user");
    for port in s.ports() {
        let message = connect_refused(port, &token).await;
        assert!(message.contains("authentication failed"), "{message}");
    }
    assert!(
        api.sync_all(&bob).await.is_empty(),
        "nothing reached the recipient"
    );
}

#[tokio::test]
async fn logout_revokes_the_token_at_once_and_closes_its_connections() {
    let s = TestServer::start(&[]);
    let _g = s.log_guard();
    let api = s.api();
    let alice = api.new_user().await;
    let second = login_again(&api, &alice).await;
    // Every node has checked both tokens (and cached what it found).
    me_everywhere(&api, &s, &alice.token, 200, "before logout").await;
    me_everywhere(&api, &s, &second, 200, "before logout").await;
    let mut revoked = Vec::new();
    for port in s.ports() {
        revoked.push(Stomp::connect(port, &alice.token).await);
    }
    let last = *s.ports().last().expect("a port");
    let mut kept = Stomp::connect(last, &second).await;

    api.post_empty(&format!("{API}/auth/logout"), Some(&alice.token))
        .await
        .expect(204, "logout");

    for c in &mut revoked {
        expect_revoked(c, "a connection of the revoked token").await;
    }
    me_everywhere(&api, &s, &alice.token, 401, "the revoked token").await;
    for port in s.ports() {
        let message = connect_refused(port, &alice.token).await;
        assert!(message.contains("token revoked"), "{message}");
    }
    let r = api
        .post_empty(&format!("{API}/auth/logout"), Some(&alice.token))
        .await;
    r.expect_error(401, "unauthenticated", "a second logout of the token");
    // The user's other token is untouched.
    me_everywhere(&api, &s, &second, 200, "the other token").await;
    assert_alive(&mut kept, "the other token's connection").await;
    Stomp::connect(s.port(), &second).await.disconnect().await;
}

#[tokio::test]
async fn logout_all_revokes_every_earlier_token_and_a_new_login_works() {
    let s = TestServer::start(&[]);
    let _g = s.log_guard();
    let api = s.api();
    let alice = api.new_user().await;
    let bob = api.new_user().await;
    let second = login_again(&api, &alice).await;
    let ports = s.ports();
    let mut open = vec![
        Stomp::connect(ports[0], &alice.token).await,
        Stomp::connect(*ports.last().expect("a port"), &second).await,
    ];
    let mut bobs = Stomp::connect(ports[0], &bob.token).await;
    me_everywhere(&api, &s, &alice.token, 200, "before logout-all").await;

    api.post_empty(&format!("{API}/auth/logout-all"), Some(&second))
        .await
        .expect(204, "logout-all");

    for c in &mut open {
        expect_revoked(c, "a connection of an earlier token").await;
    }
    for token in [&alice.token, &second] {
        me_everywhere(&api, &s, token, 401, "an earlier token").await;
        connect_refused(ports[0], token).await;
    }
    // Issued after the logout-all (within the same second): valid.
    let fresh = login_again(&api, &alice).await;
    me_everywhere(&api, &s, &fresh, 200, "a token issued after logout-all").await;
    for port in ports {
        Stomp::connect(port, &fresh).await.disconnect().await;
    }
    // Other users are untouched.
    assert_alive(&mut bobs, "another user's connection").await;
    me_everywhere(&api, &s, &bob.token, 200, "another user's token").await;
}

#[tokio::test]
async fn token_errors_are_clean_and_nbf_is_honoured() {
    let s = TestServer::start(&[]);
    let _g = s.log_guard();
    let api = s.api();
    let alice = api.new_user().await;
    let now = now_secs();
    let claims = |extra: Value| {
        let mut c = json!({"sub": alice.user_id, "exp": now + 3600, "iat": now, "jti": "1"});
        if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
            c.extend(extra.clone());
        }
        c
    };
    // The same claims are fine without `nbf` (token number 1 is alice's).
    me_everywhere(&api, &s, &sign(&claims(json!({}))), 200, "control").await;

    let early = sign(&claims(json!({"nbf": now + 3600})));
    let r = api.get(&format!("{API}/users/me"), Some(&early)).await;
    r.expect_error(401, "unauthenticated", "nbf in the future");
    assert_eq!(
        r.body["message"],
        json!("token not yet valid"),
        "{}",
        r.text
    );
    let message = connect_refused(s.port(), &early).await;
    assert!(message.contains("token not yet valid"), "{message}");

    let expired = sign(&claims(json!({"exp": now - 3600, "iat": now - 7200})));
    let r = api.get(&format!("{API}/users/me"), Some(&expired)).await;
    r.expect_error(401, "unauthenticated", "expired");
    assert_eq!(r.body["message"], json!("token expired"), "{}", r.text);

    // `alg: none`, unsigned: refused without the library's words.
    use base64::Engine;
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let unsigned = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&claims(json!({})))
    );
    for bad in [unsigned.as_str(), "not.a.token", "garbage"] {
        let r = api.get(&format!("{API}/users/me"), Some(bad)).await;
        r.expect_error(401, "unauthenticated", "a bad token");
        assert_eq!(r.body["message"], json!("invalid token"), "{}", r.text);
        let message = connect_refused(s.port(), bad).await;
        assert_eq!(message, "authentication failed: invalid token");
    }
}

#[tokio::test]
async fn failed_logins_are_throttled_per_username() {
    let s = TestServer::start(&[("HERALD_LOGIN_MAX_FAILURES", "5")]);
    let _g = s.log_guard();
    let api = s.api();
    let alice = api.new_user().await;
    for i in 0..5 {
        api.login(&alice.username, "wrong-password")
            .await
            .expect_error(401, "unauthenticated", &format!("wrong password {i}"));
    }
    let r = api.login(&alice.username, "wrong-password").await;
    r.expect_error(429, "rate_limited", "the sixth wrong password");
    let wait = r.retry_after();
    assert!(wait <= 900, "within the 15-minute window, got {wait}");
    // Refused unchecked while throttled: the right password too, and the
    // username in any case.
    let r = api.login(&alice.username, &alice.password).await;
    r.expect_error(429, "rate_limited", "the right password while throttled");
    r.retry_after();
    let shouted = alice.username.to_ascii_uppercase();
    api.login(&shouted, &alice.password).await.expect_error(
        429,
        "rate_limited",
        "the username in capitals",
    );
    // Tokens issued before still work, and other usernames log in.
    me_everywhere(&api, &s, &alice.token, 200, "an earlier token").await;
    let bob = api.new_user().await;
    login_again(&api, &bob).await;
}

#[tokio::test]
async fn a_success_resets_the_username_count() {
    let s = TestServer::start(&[("HERALD_LOGIN_MAX_FAILURES", "3")]);
    let _g = s.log_guard();
    let api = s.api();
    let alice = api.new_user().await;
    // Six failures in all, never three in a row: no 429.
    for round in 0..3 {
        for _ in 0..2 {
            api.login(&alice.username, "wrong-password")
                .await
                .expect_error(401, "unauthenticated", &format!("round {round}"));
        }
        login_again(&api, &alice).await;
    }
}

#[tokio::test]
async fn failed_logins_are_throttled_per_address() {
    let s = TestServer::start(&[("HERALD_LOGIN_MAX_FAILURES", "100")]);
    let _g = s.log_guard();
    let api = s.api();
    let alice = api.new_user().await;
    for i in 0..20 {
        api.login(&unique("ghost"), "wrong-password")
            .await
            .expect_error(401, "unauthenticated", &format!("failure {i}"));
    }
    let r = api.login(&unique("ghost"), "wrong-password").await;
    r.expect_error(429, "rate_limited", "the 21st failure from one address");
    assert!(r.retry_after() <= 900);
    // Every username from that address, the right password too.
    let r = api.login(&alice.username, &alice.password).await;
    r.expect_error(
        429,
        "rate_limited",
        "a real user from the throttled address",
    );
}

#[tokio::test]
async fn registrations_are_throttled_per_address() {
    let s = TestServer::start(&[("HERALD_REGISTRATIONS_PER_HOUR", "2")]);
    let _g = s.log_guard();
    let api = s.api();
    for i in 0..2 {
        api.register(&unique("r"), "password123", "R")
            .await
            .expect(201, &format!("registration {i}"));
    }
    let r = api.register(&unique("r"), "password123", "R").await;
    r.expect_error(429, "rate_limited", "the third registration in an hour");
    let wait = r.retry_after();
    assert!(
        (3000..=3600).contains(&wait),
        "until the hour passes, got {wait}"
    );
}

async fn register_from(api: &Api, forwarded_for: &str) -> Resp {
    let body = json!({"username": unique("x"), "password": "password123", "nickname": "X"});
    api.post_with_headers(
        &format!("{API}/auth/register"),
        None,
        &body,
        &[("x-forwarded-for", forwarded_for)],
    )
    .await
}

#[tokio::test]
async fn forwarded_for_counts_only_from_a_trusted_proxy() {
    let trusting = TestServer::start(&[
        ("HERALD_REGISTRATIONS_PER_HOUR", "1"),
        ("HERALD_TRUSTED_PROXIES", "10.0.0.0/8, 127.0.0.1/32"),
    ]);
    let _g = trusting.log_guard();
    let api = trusting.api();
    register_from(&api, "198.51.100.7")
        .await
        .expect(201, "the first from .7");
    register_from(&api, "198.51.100.7").await.expect_error(
        429,
        "rate_limited",
        "the second from .7",
    );
    register_from(&api, "198.51.100.8")
        .await
        .expect(201, "another client behind the proxy");
    // What the client wrote itself, left of what the proxy added, proves
    // nothing; trusted proxies in the chain are skipped.
    register_from(&api, "203.0.113.1, 198.51.100.8")
        .await
        .expect_error(429, "rate_limited", "a spoofed entry");
    register_from(&api, "198.51.100.8, 10.1.2.3")
        .await
        .expect_error(429, "rate_limited", "behind two proxies");

    let direct = TestServer::start(&[("HERALD_REGISTRATIONS_PER_HOUR", "1")]);
    let _g2 = direct.log_guard();
    let api = direct.api();
    register_from(&api, "198.51.100.7")
        .await
        .expect(201, "the first from 127.0.0.1");
    register_from(&api, "198.51.100.9").await.expect_error(
        429,
        "rate_limited",
        "X-Forwarded-For without a trusted proxy",
    );
}

#[tokio::test]
async fn after_a_logout_the_other_tokens_connections_still_receive() {
    let s = TestServer::start(&[]);
    let _g = s.log_guard();
    let api = s.api();
    let alice = api.new_user().await;
    let bob = api.new_user().await;
    let second = login_again(&api, &alice).await;
    let mut gone = Stomp::connect(s.port(), &alice.token).await;
    let mut stays = Stomp::connect(*s.ports().last().expect("a port"), &second).await;
    stays.subscribe("/user/queue/message", "m", "auto").await;
    api.post_empty(&format!("{API}/auth/logout"), Some(&alice.token))
        .await
        .expect(204, "logout");
    expect_revoked(&mut gone, "the revoked connection").await;
    api.send_to_user(&bob, &alice.user_id, "still here?").await;
    let m = stays.recv_json_on("m", WAIT).await;
    assert_eq!(m["content"], json!("still here?"));
}
