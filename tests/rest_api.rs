//! REST API contract tests against the real server binary.

mod common;

use std::collections::HashSet;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

static SERVER: OnceLock<TestServer> = OnceLock::new();

fn server() -> (&'static TestServer, LogGuard) {
    let s = TestServer::shared(&SERVER, &[]);
    (s, s.log_guard())
}

fn msgs(body: &Value) -> Vec<Value> {
    body["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("messages must be an array: {body}"))
        .clone()
}

fn seqs(list: &[Value]) -> Vec<i64> {
    list.iter().map(|m| m["seq"].as_i64().unwrap()).collect()
}

fn contents(list: &[Value]) -> Vec<String> {
    list.iter()
        .map(|m| m["content"].as_str().unwrap().to_string())
        .collect()
}

async fn unread_total(api: &Api, u: &TestUser) -> i64 {
    let r = api
        .get(&format!("{API}/messages/unread"), Some(&u.token))
        .await;
    r.expect(200, "GET /messages/unread")["total"]
        .as_i64()
        .expect("total must be a number")
}

/// Sends `n` texts `"{prefix}{i}"` from `from` to `to`, each one once the
/// previous is readable by both; returns the acks.
async fn send_n(api: &Api, from: &TestUser, to: &TestUser, prefix: &str, n: usize) -> Vec<Value> {
    let mut acks = Vec::new();
    for i in 1..=n {
        let ack = api
            .send_to_user(from, &to.user_id, &format!("{prefix}{i}"))
            .await;
        visible(api, &[from, to], &ack).await;
        acks.push(ack);
    }
    acks
}

/// Waits until the message of `ack` is readable by every user in `users`.
async fn visible(api: &Api, users: &[&TestUser], ack: &Value) {
    let mid = ack["messageId"].as_str().expect("messageId");
    for u in users {
        api.wait_visible(u, mid).await;
    }
}

// ---------------------------------------------------------------------------
// auth
// ---------------------------------------------------------------------------

#[tokio::test]
async fn register_creates_user_and_rejects_duplicates() {
    let (srv, _g) = server();
    let api = srv.api();
    let name = unique("reg");
    let r = api.register(&name, "password123", "Reggie").await;
    let body = r.expect(201, "register").clone();
    assert_id(&body["userId"], "userId");
    assert_eq!(body["username"], json!(name));
    assert_eq!(body["nickname"], json!("Reggie"));
    assert!(
        !r.text.to_lowercase().contains("password"),
        "register answer must not echo password data: {}",
        r.text
    );

    let dup = api.register(&name, "another-password", "Other").await;
    dup.expect_error(409, "conflict", "duplicate register");
}

#[tokio::test]
async fn register_rejects_each_invalid_field() {
    let (srv, _g) = server();
    let api = srv.api();
    let good_name = unique("ok");
    let cases: Vec<(&str, String, String, String)> = vec![
        (
            "short username",
            "ab".into(),
            "password123".into(),
            "N".into(),
        ),
        (
            "long username",
            "a".repeat(33),
            "password123".into(),
            "N".into(),
        ),
        (
            "bad username char",
            format!("bad name{}", &good_name[2..8]),
            "password123".into(),
            "N".into(),
        ),
        (
            "bad username char !",
            format!("bad!{}", &good_name[2..8]),
            "password123".into(),
            "N".into(),
        ),
        (
            "short password",
            good_name.clone(),
            "1234567".into(),
            "N".into(),
        ),
        (
            "long password",
            good_name.clone(),
            "p".repeat(129),
            "N".into(),
        ),
        (
            "empty nickname",
            good_name.clone(),
            "password123".into(),
            String::new(),
        ),
        (
            "long nickname",
            good_name.clone(),
            "password123".into(),
            "n".repeat(65),
        ),
    ];
    for (what, u, p, n) in &cases {
        let r = api.register(u, p, n).await;
        r.expect_error(400, "invalid_argument", what);
    }
    // Boundaries are accepted: 32-char username, 8-char password, 1-char nickname.
    let mut edge = unique("e");
    while edge.len() < 32 {
        edge.push('x');
    }
    edge.truncate(32);
    let r = api.register(&edge, "12345678", "N").await;
    r.expect(201, "register at the limits");
    // None of the rejected attempts created the good username.
    let r = api.register(&good_name, "password123", "N").await;
    r.expect(201, "register after rejected attempts");
}

#[tokio::test]
async fn register_with_malformed_json_is_400_json() {
    let (srv, _g) = server();
    let api = srv.api();
    let r = api
        .post_raw(
            &format!("{API}/auth/register"),
            None,
            "{\"username\": \"abc\",",
        )
        .await;
    r.expect_error(400, "invalid_argument", "malformed JSON");
    let r = api
        .post_raw(&format!("{API}/auth/register"), None, "[1,2,3]")
        .await;
    r.expect_error(400, "invalid_argument", "JSON of the wrong shape");
    let r = api
        .post(
            &format!("{API}/auth/register"),
            None,
            &json!({"username": unique("m")}),
        )
        .await;
    r.expect_error(400, "invalid_argument", "missing fields");
}

#[tokio::test]
async fn login_issues_token_and_rejects_bad_credentials() {
    let (srv, _g) = server();
    let api = srv.api();
    let name = unique("lg");
    let reg = api.register(&name, "password123", "Lg").await;
    let uid = assert_id(&reg.expect(201, "register")["userId"], "userId");

    let before = now_ms();
    let r = api.login(&name, "password123").await;
    let body = r.expect(200, "login").clone();
    assert_eq!(body["userId"].as_str(), Some(uid.as_str()));
    let token = body["token"].as_str().expect("token string");
    assert!(token.len() > 20, "token looks too short: {token}");
    let exp = body["expiresAt"].as_i64().expect("expiresAt number");
    assert!(
        exp > before + 60_000,
        "expiresAt {exp} must be in the future (now {before})"
    );

    let me = api.get(&format!("{API}/users/me"), Some(token)).await;
    assert_eq!(
        me.expect(200, "me with fresh token")["userId"].as_str(),
        Some(uid.as_str())
    );

    api.login(&name, "wrong-password")
        .await
        .expect_error(401, "unauthenticated", "wrong password");
    api.login(&unique("nobody"), "password123")
        .await
        .expect_error(401, "unauthenticated", "unknown user");
}

#[tokio::test]
async fn missing_or_bad_token_is_401_json() {
    let (srv, _g) = server();
    let api = srv.api();
    api.get(&format!("{API}/users/me"), None)
        .await
        .expect_error(401, "unauthenticated", "no token");
    api.get(&format!("{API}/users/me"), Some("garbage"))
        .await
        .expect_error(401, "unauthenticated", "garbage token");
    // Well-formed JWT signed with another secret.
    let forged = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjMiLCJleHAiOjk5OTk5OTk5OTl9.\
                  c2lnbmF0dXJlLWJ5LWFub3RoZXIta2V5LW5vdC12YWxpZA";
    api.get(&format!("{API}/users/me"), Some(forged))
        .await
        .expect_error(401, "unauthenticated", "forged token");
    api.get(&format!("{API}/sessions"), None)
        .await
        .expect_error(401, "unauthenticated", "sessions without token");
    api.post(
        &format!("{API}/messages"),
        None,
        &send_req_user("1", "x", "c-1"),
    )
    .await
    .expect_error(401, "unauthenticated", "send without token");
}

// ---------------------------------------------------------------------------
// users and presence
// ---------------------------------------------------------------------------

#[tokio::test]
async fn users_me_and_public_profiles() {
    let (srv, _g) = server();
    let api = srv.api();
    let a = api.new_user().await;
    let b = api.new_user().await;
    let me = api.get(&format!("{API}/users/me"), Some(&a.token)).await;
    let me = me.expect(200, "me");
    assert_eq!(me["userId"].as_str(), Some(a.user_id.as_str()));
    assert_eq!(me["username"].as_str(), Some(a.username.as_str()));
    assert_eq!(me["nickname"].as_str(), Some(a.nickname.as_str()));

    let other = api
        .get(&format!("{API}/users/{}", b.user_id), Some(&a.token))
        .await;
    let text = other.text.to_lowercase();
    let other = other.expect(200, "profile of b");
    assert_eq!(other["userId"].as_str(), Some(b.user_id.as_str()));
    assert_eq!(other["username"].as_str(), Some(b.username.as_str()));
    assert_eq!(other["nickname"].as_str(), Some(b.nickname.as_str()));
    assert!(!text.contains("password"), "profile leaks password data");

    api.get(&format!("{API}/users/1"), Some(&a.token))
        .await
        .expect_error(404, "not_found", "unknown user id");
    api.get(&format!("{API}/users/abc"), Some(&a.token))
        .await
        .expect_error(400, "invalid_argument", "non-numeric user id");
}

fn presence_of<'a>(body: &'a Value, uid: &str) -> &'a Value {
    body.as_array()
        .unwrap_or_else(|| panic!("presence must be an array: {body}"))
        .iter()
        .find(|p| p["userId"].as_str() == Some(uid))
        .unwrap_or_else(|| panic!("no presence entry for {uid}: {body}"))
}

#[tokio::test]
async fn presence_follows_websocket_connections() {
    let (srv, _g) = server();
    let api = srv.api();
    let a = api.new_user().await;
    let watcher = api.new_user().await;
    let never = api.new_user().await;
    let path = format!("{API}/presence?userIds={},{}", a.user_id, never.user_id);

    let r = api.get(&path, Some(&watcher.token)).await;
    let body = r.expect(200, "presence").clone();
    assert_eq!(body.as_array().map(Vec::len), Some(2), "{body}");
    for uid in [&a.user_id, &never.user_id] {
        let p = presence_of(&body, uid);
        assert_eq!(p["online"], json!(false), "{p}");
        assert!(p["lastSeenAt"].is_null(), "never-seen user: {p}");
    }

    // Two devices: online while either is connected.
    let mut d1 = srv.stomp(&a.token).await;
    let mut d2 = srv.stomp(&a.token).await;
    api.poll_until(&path, Some(&watcher.token), WAIT, |r| {
        r.status == 200 && presence_of(&r.body, &a.user_id)["online"] == json!(true)
    })
    .await;
    d1.disconnect().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = api.get(&path, Some(&watcher.token)).await;
    assert_eq!(
        presence_of(r.expect(200, "presence"), &a.user_id)["online"],
        json!(true),
        "still online while the second device is connected"
    );
    let before = now_ms();
    d2.disconnect().await;
    let r = api
        .poll_until(&path, Some(&watcher.token), WAIT, |r| {
            r.status == 200 && presence_of(&r.body, &a.user_id)["online"] == json!(false)
        })
        .await;
    let p = presence_of(&r.body, &a.user_id);
    let seen = p["lastSeenAt"]
        .as_i64()
        .unwrap_or_else(|| panic!("lastSeenAt must be set after disconnect: {p}"));
    assert!(
        seen >= before - 1_000 && seen <= now_ms() + 1_000,
        "lastSeenAt {seen} should be about when the last device left ({before})"
    );
    let n = presence_of(&r.body, &never.user_id);
    assert!(n["lastSeenAt"].is_null(), "{n}");
}

#[tokio::test]
async fn presence_validates_the_id_list() {
    let (srv, _g) = server();
    let api = srv.api();
    let u = api.new_user().await;
    api.get(&format!("{API}/presence?userIds="), Some(&u.token))
        .await
        .expect_error(400, "invalid_argument", "0 ids");
    let many: Vec<String> = (1..=101).map(|i| (1_000_000 + i).to_string()).collect();
    api.get(
        &format!("{API}/presence?userIds={}", many.join(",")),
        Some(&u.token),
    )
    .await
    .expect_error(400, "invalid_argument", "101 ids");
    api.get(&format!("{API}/presence?userIds=abc"), Some(&u.token))
        .await
        .expect_error(400, "invalid_argument", "non-numeric id");
    // 100 ids is fine.
    let mut hundred: Vec<String> = (1..=99).map(|i| (1_000_000 + i).to_string()).collect();
    hundred.push(u.user_id.clone());
    let r = api
        .get(
            &format!("{API}/presence?userIds={}", hundred.join(",")),
            Some(&u.token),
        )
        .await;
    r.expect(200, "100 ids");
}

// ---------------------------------------------------------------------------
// groups
// ---------------------------------------------------------------------------

fn member_ids(group: &Value) -> HashSet<String> {
    group["memberIds"]
        .as_array()
        .unwrap_or_else(|| panic!("memberIds must be an array: {group}"))
        .iter()
        .map(|m| assert_id(m, "memberIds[]"))
        .collect()
}

#[tokio::test]
async fn groups_membership_and_permissions() {
    let (srv, _g) = server();
    let api = srv.api();
    let users = api.new_users(3).await;
    let (owner, b, c) = (&users[0], &users[1], &users[2]);

    let name = unique("grp");
    let g = api.create_group(owner, &name, &[b]).await;
    let gid = assert_id(&g["groupId"], "groupId");
    assert_id(&g["sessionId"], "sessionId");
    assert_eq!(g["name"].as_str(), Some(name.as_str()));
    assert_eq!(g["ownerId"].as_str(), Some(owner.user_id.as_str()));
    let m = member_ids(&g);
    assert_eq!(
        m,
        HashSet::from([owner.user_id.clone(), b.user_id.clone()]),
        "creator must be a member: {g}"
    );

    let gp = format!("{API}/groups/{gid}");
    let got = api.get(&gp, Some(&b.token)).await;
    assert_eq!(got.expect(200, "member reads group")["groupId"], json!(gid));
    api.get(&gp, Some(&c.token))
        .await
        .expect_error(403, "forbidden", "non-member reads group");

    let add = format!("{gp}/members");
    api.post(&add, Some(&b.token), &json!({"userIds": [c.user_id]}))
        .await
        .expect_error(403, "forbidden", "non-owner adds member");
    let r = api
        .post(&add, Some(&owner.token), &json!({"userIds": [c.user_id]}))
        .await;
    let g2 = r.expect(200, "owner adds member").clone();
    assert!(member_ids(&g2).contains(&c.user_id), "{g2}");
    api.get(&gp, Some(&c.token))
        .await
        .expect(200, "new member reads group");

    api.delete(&format!("{gp}/members/{}", c.user_id), Some(&b.token))
        .await
        .expect_error(403, "forbidden", "non-owner removes another member");
    let r = api
        .delete(&format!("{gp}/members/{}", c.user_id), Some(&owner.token))
        .await;
    assert_eq!(r.status, 204, "owner removes member: {}", r.text);
    api.get(&gp, Some(&c.token))
        .await
        .expect_error(403, "forbidden", "removed member reads group");

    let r = api
        .delete(&format!("{gp}/members/{}", b.user_id), Some(&b.token))
        .await;
    assert_eq!(r.status, 204, "member leaves: {}", r.text);
    api.get(&gp, Some(&b.token)).await.expect_error(
        403,
        "forbidden",
        "member who left reads group",
    );
    let left = api.get(&gp, Some(&owner.token)).await;
    assert_eq!(
        member_ids(left.expect(200, "owner reads group")),
        HashSet::from([owner.user_id.clone()])
    );

    api.get(&format!("{API}/groups/1"), Some(&owner.token))
        .await
        .expect_error(404, "not_found", "unknown group");
    api.post(
        &format!("{API}/groups/1/members"),
        Some(&owner.token),
        &json!({"userIds": [c.user_id]}),
    )
    .await
    .expect_error(404, "not_found", "add to unknown group");
    api.post(
        &format!("{API}/groups"),
        Some(&owner.token),
        &json!({"name": "x", "memberIds": ["1"]}),
    )
    .await
    .expect_error(404, "not_found", "group with unknown member");
}

// ---------------------------------------------------------------------------
// sending
// ---------------------------------------------------------------------------

#[tokio::test]
async fn send_returns_send_ack_and_is_idempotent() {
    let (srv, _g) = server();
    let api = srv.api();
    let a = api.new_user().await;
    let b = api.new_user().await;
    let cmid = unique("idem");
    let req = send_req_user(&b.user_id, "hello idempotent", &cmid);
    let r1 = api.send(&a, &req).await;
    let ack1 = r1.expect(202, "first send").clone();
    let mid = assert_send_ack(&ack1, &cmid);

    let r2 = api.send(&a, &req).await;
    let ack2 = r2.expect(202, "repeat send").clone();
    assert_eq!(ack2["messageId"].as_str(), Some(mid.as_str()), "{ack2}");
    assert_eq!(ack2["sessionId"], ack1["sessionId"]);
    // Same key, different content: still the original.
    let mut changed = req.clone();
    changed["content"] = json!("something else");
    let r3 = api.send(&a, &changed).await;
    assert_eq!(
        r3.expect(202, "repeat with other content")["messageId"].as_str(),
        Some(mid.as_str())
    );

    visible(&api, &[&b], &ack1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sid = ack1["sessionId"].as_str().unwrap();
    let p = api
        .get(
            &format!("{API}/messages/pull?sessionId={sid}&size=50"),
            Some(&b.token),
        )
        .await;
    let list = msgs(p.expect(200, "pull"));
    assert_eq!(list.len(), 1, "exactly one message stored: {list:?}");
    assert_eq!(list[0]["messageId"].as_str(), Some(mid.as_str()));
    assert_eq!(list[0]["content"], json!("hello idempotent"));
    assert_message_vo(&list[0]);

    // The same clientMessageId from another sender is a different message.
    let c = api.new_user().await;
    let rc = api
        .send(&c, &send_req_user(&b.user_id, "other", &cmid))
        .await;
    let other = assert_send_ack(rc.expect(202, "other sender, same cmid"), &cmid);
    assert_ne!(other, mid);
}

#[tokio::test]
async fn send_rejections_follow_the_contract() {
    let (srv, _g) = server();
    let api = srv.api();
    let users = api.new_users(3).await;
    let (a, b, c) = (&users[0], &users[1], &users[2]);

    let r = api
        .send(a, &send_req_user(&a.user_id, "me", &unique("c")))
        .await;
    assert!(
        (r.status == 403 && r.body["code"] == "forbidden")
            || (r.status == 400 && r.body["code"] == "invalid_argument"),
        "sending to oneself must be rejected with 403/400, got {} {}",
        r.status,
        r.text
    );

    let g = api.create_group(b, &unique("g"), &[c]).await;
    let gid = g["groupId"].as_str().unwrap();
    api.send(a, &send_req_group(gid, "not a member", &unique("c")))
        .await
        .expect_error(403, "forbidden", "send to a group one is not in");
    api.send(a, &send_req_group("1", "no group", &unique("c")))
        .await
        .expect_error(404, "not_found", "send to an unknown group");
    api.send(a, &send_req_user("1", "nobody", &unique("c")))
        .await
        .expect_error(404, "not_found", "send to an unknown user");
    api.send(a, &send_req_user("abc", "bad id", &unique("c")))
        .await
        .expect_error(400, "invalid_argument", "non-numeric toUserId");

    let big = "x".repeat(65_537);
    api.send(a, &send_req_user(&b.user_id, &big, &unique("c")))
        .await
        .expect_error(413, "payload_too_large", "content of 65537 bytes");
    // Exactly the limit is fine (bytes, not chars).
    let max = "y".repeat(65_536);
    let big_ack = api
        .send(a, &send_req_user(&b.user_id, &max, &unique("c")))
        .await
        .expect(202, "content of 65536 bytes")
        .clone();
    let multibyte = "é".repeat(32_769); // 65538 bytes, 32769 chars
    api.send(a, &send_req_user(&b.user_id, &multibyte, &unique("c")))
        .await
        .expect_error(413, "payload_too_large", "content over the limit in bytes");

    let mut both = send_req_user(&b.user_id, "both", &unique("c"));
    both["groupId"] = json!(gid);
    api.send(a, &both)
        .await
        .expect_error(400, "invalid_argument", "toUserId and groupId");
    let mut neither = send_req_user(&b.user_id, "neither", &unique("c"));
    neither.as_object_mut().unwrap().remove("toUserId");
    api.send(a, &neither)
        .await
        .expect_error(400, "invalid_argument", "no target");
    api.send(a, &send_req_user(&b.user_id, "", &unique("c")))
        .await
        .expect_error(400, "invalid_argument", "empty content");
    api.send(a, &send_req_user(&b.user_id, "x", ""))
        .await
        .expect_error(400, "invalid_argument", "empty clientMessageId");
    api.send(a, &send_req_user(&b.user_id, "x", &"k".repeat(65)))
        .await
        .expect_error(400, "invalid_argument", "65-char clientMessageId");
    let mut bad_type = send_req_user(&b.user_id, "x", &unique("c"));
    bad_type["messageType"] = json!(9);
    api.send(a, &bad_type)
        .await
        .expect_error(400, "invalid_argument", "messageType 9");
    api.post_raw(&format!("{API}/messages"), Some(&a.token), "{nope")
        .await
        .expect_error(400, "invalid_argument", "malformed JSON");

    // Nothing of the above reached b except the one accepted message.
    visible(&api, &[b], &big_ack).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let list = api.sync_all(b).await;
    assert_eq!(list.len(), 1, "only the 65536-byte message was stored");
    assert_eq!(list[0]["content"].as_str().map(str::len), Some(65_536));
}

#[tokio::test]
async fn adjusted_timestamp_replaces_skewed_client_clocks() {
    let (srv, _g) = server();
    let api = srv.api();
    let a = api.new_user().await;
    let b = api.new_user().await;
    let now = now_ms();
    let mut ok = send_req_user(&b.user_id, "near", &unique("c"));
    ok["clientTimestamp"] = json!(now - 5_000);
    let mut skewed = send_req_user(&b.user_id, "far", &unique("c"));
    skewed["clientTimestamp"] = json!(now - 3_600_000);
    let k1 = api.send(&a, &ok).await.expect(202, "near").clone();
    visible(&api, &[&b], &k1).await;
    let k2 = api.send(&a, &skewed).await.expect(202, "far").clone();
    visible(&api, &[&b], &k2).await;
    let list = api.sync_all(&b).await;
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["clientTimestamp"], json!(now - 5_000));
    assert_eq!(list[0]["adjustedTimestamp"], json!(now - 5_000));
    assert_eq!(list[1]["clientTimestamp"], json!(now - 3_600_000));
    assert_eq!(
        list[1]["adjustedTimestamp"], list[1]["serverTimestamp"],
        "a client clock an hour off is replaced by server time: {}",
        list[1]
    );
}

// ---------------------------------------------------------------------------
// reading
// ---------------------------------------------------------------------------

#[tokio::test]
async fn pull_pages_in_seq_order_and_marks_read() {
    let (srv, _g) = server();
    let api = srv.api();
    let a = api.new_user().await;
    let b = api.new_user().await;
    let acks = send_n(&api, &a, &b, "p", 5).await;
    let sid = acks[0]["sessionId"].as_str().unwrap().to_string();
    assert!(acks.iter().all(|k| k["sessionId"].as_str() == Some(&sid)));
    assert_eq!(unread_total(&api, &b).await, 5);

    let base = format!("{API}/messages/pull?sessionId={sid}");
    let r = api.get(&format!("{base}&size=2"), Some(&b.token)).await;
    let body = r.expect(200, "pull page 1").clone();
    let page = msgs(&body);
    assert_eq!(seqs(&page), vec![1, 2]);
    assert_eq!(contents(&page), vec!["p1", "p2"]);
    assert_eq!(body["hasMore"], json!(true));
    for m in &page {
        assert_message_vo(m);
        assert_eq!(m["status"], json!("read"), "pull marks read by default");
        assert_eq!(m["sessionId"].as_str(), Some(sid.as_str()));
        assert_eq!(m["senderId"].as_str(), Some(a.user_id.as_str()));
        assert_eq!(m["toUserId"].as_str(), Some(b.user_id.as_str()));
        assert_eq!(m["sessionType"], json!("single"));
    }
    assert_eq!(page[0]["messageId"], acks[0]["messageId"]);
    assert_eq!(unread_total(&api, &b).await, 3, "2 of 5 read by the pull");

    let last = page[1]["messageId"].as_str().unwrap();
    let r = api
        .get(
            &format!("{base}&size=2&lastMessageId={last}"),
            Some(&b.token),
        )
        .await;
    let body = r.expect(200, "pull page 2").clone();
    let page = msgs(&body);
    assert_eq!(seqs(&page), vec![3, 4]);
    assert_eq!(body["hasMore"], json!(true));

    let last = page[1]["messageId"].as_str().unwrap();
    let r = api
        .get(
            &format!("{base}&size=2&lastMessageId={last}"),
            Some(&b.token),
        )
        .await;
    let body = r.expect(200, "pull page 3").clone();
    assert_eq!(seqs(&msgs(&body)), vec![5]);
    assert_eq!(body["hasMore"], json!(false));
    assert_eq!(unread_total(&api, &b).await, 0);

    // Default size (20) from the start returns everything.
    let r = api.get(&base, Some(&b.token)).await;
    let body = r.expect(200, "pull all").clone();
    assert_eq!(seqs(&msgs(&body)), vec![1, 2, 3, 4, 5]);
    assert_eq!(body["hasMore"], json!(false));

    // The sender sees the same session with its own copies, already read.
    let r = api.get(&base, Some(&a.token)).await;
    let mine = msgs(r.expect(200, "sender pull"));
    assert_eq!(seqs(&mine), vec![1, 2, 3, 4, 5]);
    assert!(mine.iter().all(|m| m["status"] == "read"), "{mine:?}");

    for bad in ["size=0", "size=201", "size=abc"] {
        api.get(&format!("{base}&{bad}"), Some(&b.token))
            .await
            .expect_error(400, "invalid_argument", bad);
    }
    api.get(&format!("{API}/messages/pull"), Some(&b.token))
        .await
        .expect_error(400, "invalid_argument", "pull without sessionId");
}

#[tokio::test]
async fn pull_with_mark_read_false_marks_delivered() {
    let (srv, _g) = server();
    let api = srv.api();
    let a = api.new_user().await;
    let b = api.new_user().await;
    let acks = send_n(&api, &a, &b, "d", 2).await;
    let sid = acks[0]["sessionId"].as_str().unwrap();

    let before = api.sync_all(&b).await;
    assert!(
        before.iter().all(|m| m["status"] == "pending"),
        "{before:?}"
    );

    let r = api
        .get(
            &format!("{API}/messages/pull?sessionId={sid}&markRead=false"),
            Some(&b.token),
        )
        .await;
    let page = msgs(r.expect(200, "pull markRead=false"));
    assert_eq!(page.len(), 2);
    assert!(page.iter().all(|m| m["status"] == "delivered"), "{page:?}");
    assert_eq!(unread_total(&api, &b).await, 2, "delivered is still unread");
    let after = api.sync_all(&b).await;
    assert!(
        after.iter().all(|m| m["status"] == "delivered"),
        "{after:?}"
    );
}

#[tokio::test]
async fn unread_is_oldest_first_with_total() {
    let (srv, _g) = server();
    let api = srv.api();
    let users = api.new_users(3).await;
    let (a1, a2, b) = (&users[0], &users[1], &users[2]);
    for (from, text) in [(a1, "u1"), (a2, "u2"), (a1, "u3")] {
        let k = api.send_to_user(from, &b.user_id, text).await;
        visible(&api, &[b], &k).await;
    }

    let r = api
        .get(&format!("{API}/messages/unread"), Some(&b.token))
        .await;
    let body = r.expect(200, "unread").clone();
    assert_eq!(body["total"], json!(3));
    let list = msgs(&body);
    assert_eq!(contents(&list), vec!["u1", "u2", "u3"], "oldest first");
    for m in &list {
        assert_message_vo(m);
        assert_ne!(m["status"], json!("read"));
    }

    let r = api
        .get(&format!("{API}/messages/unread?limit=2"), Some(&b.token))
        .await;
    let body = r.expect(200, "unread limit 2").clone();
    assert_eq!(body["total"], json!(3), "total counts all unread");
    assert_eq!(contents(&msgs(&body)), vec!["u1", "u2"]);

    for bad in ["limit=0", "limit=501"] {
        api.get(&format!("{API}/messages/unread?{bad}"), Some(&b.token))
            .await
            .expect_error(400, "invalid_argument", bad);
    }
    // The sender's own copies are read, so they are not unread.
    assert_eq!(unread_total(&api, a1).await, 0);
}

#[tokio::test]
async fn sync_pages_by_inbox_seq_and_includes_own_sends() {
    let (srv, _g) = server();
    let api = srv.api();
    let a = api.new_user().await;
    let b = api.new_user().await;
    let acks = send_n(&api, &a, &b, "s", 3).await;

    let r = api
        .get(
            &format!("{API}/inbox/sync?afterInboxSeq=0&limit=2"),
            Some(&b.token),
        )
        .await;
    let body = r.expect(200, "sync 1").clone();
    let page = msgs(&body);
    assert_eq!(page.len(), 2);
    let inbox: Vec<i64> = page
        .iter()
        .map(|m| m["inboxSeq"].as_i64().unwrap())
        .collect();
    assert_eq!(inbox, vec![1, 2], "inboxSeq starts at 1, gap-free");
    assert_eq!(body["hasMore"], json!(true));
    assert_eq!(body["lastInboxSeq"], json!(2));
    assert_eq!(page[0]["messageId"], acks[0]["messageId"]);

    let r = api
        .get(
            &format!("{API}/inbox/sync?afterInboxSeq=2&limit=2"),
            Some(&b.token),
        )
        .await;
    let body = r.expect(200, "sync 2").clone();
    let page = msgs(&body);
    assert_eq!(page.len(), 1);
    assert_eq!(page[0]["inboxSeq"], json!(3));
    assert_eq!(page[0]["content"], json!("s3"));
    assert_eq!(body["hasMore"], json!(false));
    assert_eq!(body["lastInboxSeq"], json!(3));

    let r = api
        .get(&format!("{API}/inbox/sync?afterInboxSeq=3"), Some(&b.token))
        .await;
    let body = r.expect(200, "sync at the end").clone();
    assert!(msgs(&body).is_empty());
    assert_eq!(body["hasMore"], json!(false));
    assert_eq!(body["lastInboxSeq"], json!(3), "cursor stays put");

    // The sender's own copies, already read.
    let mine = api.sync_all(&a).await;
    assert_eq!(contents(&mine), vec!["s1", "s2", "s3"]);
    let inbox: Vec<i64> = mine
        .iter()
        .map(|m| m["inboxSeq"].as_i64().unwrap())
        .collect();
    assert_eq!(inbox, vec![1, 2, 3]);
    for (m, k) in mine.iter().zip(&acks) {
        assert_eq!(m["status"], json!("read"), "{m}");
        assert_eq!(m["messageId"], k["messageId"]);
        assert_eq!(m["senderId"].as_str(), Some(a.user_id.as_str()));
    }

    for bad in ["afterInboxSeq=-1", "limit=0", "limit=501"] {
        api.get(&format!("{API}/inbox/sync?{bad}"), Some(&b.token))
            .await
            .expect_error(400, "invalid_argument", bad);
    }
}

// ---------------------------------------------------------------------------
// acks and read marks
// ---------------------------------------------------------------------------

async fn ack(api: &Api, u: &TestUser, ids: &[&str], ack_type: &str) -> Resp {
    api.post(
        &format!("{API}/messages/ack"),
        Some(&u.token),
        &json!({"messageIds": ids, "ackType": ack_type}),
    )
    .await
}

#[tokio::test]
async fn ack_changes_only_the_callers_entries() {
    let (srv, _g) = server();
    let api = srv.api();
    let users = api.new_users(3).await;
    let (a, b, c) = (&users[0], &users[1], &users[2]);
    let acks = send_n(&api, a, b, "k", 2).await;
    let ids: Vec<&str> = acks
        .iter()
        .map(|k| k["messageId"].as_str().unwrap())
        .collect();

    let r = ack(&api, c, &ids, "received").await;
    assert_eq!(r.expect(200, "stranger acks")["updated"], json!(0));
    let r = ack(&api, a, &ids, "read").await;
    assert_eq!(
        r.expect(200, "sender acks own (already read)")["updated"],
        json!(0)
    );
    let statuses: Vec<Value> = api
        .sync_all(b)
        .await
        .iter()
        .map(|m| m["status"].clone())
        .collect();
    assert_eq!(statuses, vec![json!("pending"), json!("pending")]);

    let r = ack(&api, b, &ids, "received").await;
    assert_eq!(r.expect(200, "b acks received")["updated"], json!(2));
    let r = ack(&api, b, &ids, "received").await;
    assert_eq!(r.expect(200, "b acks received again")["updated"], json!(0));
    assert_eq!(unread_total(&api, b).await, 2);
    let r = ack(&api, b, &ids[..1], "read").await;
    assert_eq!(r.expect(200, "b reads one")["updated"], json!(1));
    let r = ack(&api, b, &ids, "received").await;
    assert_eq!(
        r.expect(200, "received after read")["updated"],
        json!(0),
        "status never goes back"
    );
    let statuses: Vec<Value> = api
        .sync_all(b)
        .await
        .iter()
        .map(|m| m["status"].clone())
        .collect();
    assert_eq!(statuses, vec![json!("read"), json!("delivered")]);
    assert_eq!(unread_total(&api, b).await, 1);

    ack(&api, b, &ids, "seen")
        .await
        .expect_error(400, "invalid_argument", "bad ackType");
    ack(&api, b, &[], "read")
        .await
        .expect_error(400, "invalid_argument", "no ids");
    let many: Vec<String> = (0..501).map(|i| (1_000 + i).to_string()).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    ack(&api, b, &many, "read")
        .await
        .expect_error(400, "invalid_argument", "501 ids");
}

#[tokio::test]
async fn mark_read_up_to_seq_and_all() {
    let (srv, _g) = server();
    let api = srv.api();
    let users = api.new_users(3).await;
    let (a, b, c) = (&users[0], &users[1], &users[2]);
    let acks = send_n(&api, a, b, "mr", 4).await;
    let sid = acks[0]["sessionId"].as_str().unwrap();
    let path = format!("{API}/messages/mark-read");

    let r = api
        .post(
            &path,
            Some(&b.token),
            &json!({"sessionId": sid, "upToSeq": 2}),
        )
        .await;
    assert_eq!(r.expect(200, "mark-read upToSeq 2")["updated"], json!(2));
    let r = api
        .get(&format!("{API}/messages/unread"), Some(&b.token))
        .await;
    let body = r.expect(200, "unread").clone();
    assert_eq!(body["total"], json!(2));
    assert_eq!(seqs(&msgs(&body)), vec![3, 4]);

    let r = api
        .post(&path, Some(&b.token), &json!({"sessionId": sid}))
        .await;
    assert_eq!(r.expect(200, "mark-read all")["updated"], json!(2));
    assert_eq!(unread_total(&api, b).await, 0);
    let r = api
        .post(&path, Some(&b.token), &json!({"sessionId": sid}))
        .await;
    assert_eq!(r.expect(200, "mark-read again")["updated"], json!(0));

    api.post(&path, Some(&c.token), &json!({"sessionId": sid}))
        .await
        .expect_error(403, "forbidden", "non-member marks read");
}

// ---------------------------------------------------------------------------
// sessions and history
// ---------------------------------------------------------------------------

fn sessions_of(body: &Value) -> Vec<Value> {
    body.as_array()
        .unwrap_or_else(|| panic!("sessions must be an array: {body}"))
        .clone()
}

#[tokio::test]
async fn sessions_are_listed_most_recent_first() {
    let (srv, _g) = server();
    let api = srv.api();
    let users = api.new_users(3).await;
    let (a, b, c) = (&users[0], &users[1], &users[2]);
    let s1 = api.send_to_user(a, &b.user_id, "single-1").await;
    let gname = unique("room");
    let g = api.create_group(c, &gname, &[b]).await;
    let gid = g["groupId"].as_str().unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let g1 = api.send_to_group(c, gid, "group-1").await;
    visible(&api, &[a, b], &s1).await;
    visible(&api, &[b], &g1).await;

    let r = api.get(&format!("{API}/sessions"), Some(&b.token)).await;
    let list = sessions_of(r.expect(200, "sessions"));
    assert_eq!(list.len(), 2, "{list:?}");
    let (grp, single) = (&list[0], &list[1]);
    assert_eq!(grp["sessionId"], g1["sessionId"]);
    assert_eq!(grp["sessionType"], json!("group"));
    assert_eq!(grp["groupId"].as_str(), Some(gid));
    assert_eq!(grp["name"].as_str(), Some(gname.as_str()));
    assert_eq!(grp["unreadCount"], json!(1));
    assert_eq!(grp["lastMessage"]["messageId"], g1["messageId"]);
    assert_eq!(grp["lastMessage"]["content"], json!("group-1"));
    assert_eq!(single["sessionId"], s1["sessionId"]);
    assert_eq!(single["sessionType"], json!("single"));
    assert_eq!(single["peerId"].as_str(), Some(a.user_id.as_str()));
    assert_eq!(single["unreadCount"], json!(1));
    assert_eq!(single["lastMessage"]["content"], json!("single-1"));
    for s in &list {
        assert_id(&s["sessionId"], "sessionId");
        assert!(s["updatedAt"].is_i64(), "{s}");
        assert_message_vo(&s["lastMessage"]);
    }
    assert!(list[0]["updatedAt"].as_i64() >= list[1]["updatedAt"].as_i64());

    tokio::time::sleep(Duration::from_millis(5)).await;
    let s2 = api.send_to_user(a, &b.user_id, "single-2").await;
    visible(&api, &[a, b], &s2).await;
    let r = api.get(&format!("{API}/sessions"), Some(&b.token)).await;
    let list = sessions_of(r.expect(200, "sessions again"));
    assert_eq!(list[0]["sessionId"], s1["sessionId"], "{list:?}");
    assert_eq!(list[0]["unreadCount"], json!(2));
    assert_eq!(list[0]["lastMessage"]["messageId"], s2["messageId"]);
    assert_eq!(list[1]["sessionId"], g1["sessionId"]);

    // The sender's view: unread 0 for its own messages, peer is b.
    let r = api.get(&format!("{API}/sessions"), Some(&a.token)).await;
    let mine = sessions_of(r.expect(200, "sender sessions"));
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0]["peerId"].as_str(), Some(b.user_id.as_str()));
    assert_eq!(mine[0]["unreadCount"], json!(0));
}

#[tokio::test]
async fn history_pages_backwards_with_before_seq() {
    let (srv, _g) = server();
    let api = srv.api();
    let a = api.new_user().await;
    let b = api.new_user().await;
    let acks = send_n(&api, &a, &b, "h", 5).await;
    let sid = acks[0]["sessionId"].as_str().unwrap();
    let base = format!("{API}/sessions/{sid}/messages");

    let r = api.get(&format!("{base}?limit=2"), Some(&b.token)).await;
    let body = r.expect(200, "history latest").clone();
    assert_eq!(seqs(&msgs(&body)), vec![4, 5], "latest page, ascending");
    assert_eq!(body["hasMore"], json!(true));
    let r = api
        .get(&format!("{base}?beforeSeq=4&limit=2"), Some(&b.token))
        .await;
    let body = r.expect(200, "history before 4").clone();
    assert_eq!(seqs(&msgs(&body)), vec![2, 3]);
    assert_eq!(body["hasMore"], json!(true));
    let r = api
        .get(&format!("{base}?beforeSeq=2&limit=2"), Some(&b.token))
        .await;
    let body = r.expect(200, "history before 2").clone();
    assert_eq!(seqs(&msgs(&body)), vec![1]);
    assert_eq!(body["hasMore"], json!(false));
    let r = api.get(&base, Some(&a.token)).await;
    let body = r.expect(200, "history default").clone();
    assert_eq!(contents(&msgs(&body)), vec!["h1", "h2", "h3", "h4", "h5"]);
    assert_eq!(body["hasMore"], json!(false));
    for bad in ["limit=0", "limit=201"] {
        api.get(&format!("{base}?{bad}"), Some(&b.token))
            .await
            .expect_error(400, "invalid_argument", bad);
    }
}

#[tokio::test]
async fn non_members_cannot_pull_or_read_history() {
    let (srv, _g) = server();
    let api = srv.api();
    let users = api.new_users(3).await;
    let (a, b, c) = (&users[0], &users[1], &users[2]);
    let k = api.send_to_user(a, &b.user_id, "private").await;
    let sid = k["sessionId"].as_str().unwrap();
    api.get(
        &format!("{API}/messages/pull?sessionId={sid}"),
        Some(&c.token),
    )
    .await
    .expect_error(403, "forbidden", "stranger pulls");
    api.get(&format!("{API}/sessions/{sid}/messages"), Some(&c.token))
        .await
        .expect_error(403, "forbidden", "stranger reads history");
    let g = api.create_group(a, &unique("g"), &[b]).await;
    let gsid = g["sessionId"].as_str().unwrap();
    api.send_to_group(a, g["groupId"].as_str().unwrap(), "group secret")
        .await;
    api.get(&format!("{API}/sessions/{gsid}/messages"), Some(&c.token))
        .await
        .expect_error(403, "forbidden", "stranger reads group history");
    api.get(&format!("{API}/messages/pull?sessionId=1"), Some(&c.token))
        .await
        .expect_error(404, "not_found", "unknown session");
    // Nothing leaked into the stranger's inbox either.
    assert!(api.sync_all(c).await.is_empty());
}

// ---------------------------------------------------------------------------
// recall
// ---------------------------------------------------------------------------

#[tokio::test]
async fn recall_by_sender_notifies_online_recipient() {
    let (srv, _g) = server();
    let api = srv.api();
    let users = api.new_users(3).await;
    let (a, b, c) = (&users[0], &users[1], &users[2]);
    let mut ws = srv.stomp(&b.token).await;
    ws.subscribe("/user/queue/message", "m", "auto").await;

    let k = api.send_to_user(a, &b.user_id, "oops").await;
    let mid = k["messageId"].as_str().unwrap();
    let pushed = ws.recv_json_on("m", WAIT).await;
    assert_eq!(pushed["type"], json!("message"));
    assert_eq!(pushed["messageId"].as_str(), Some(mid));

    let path = format!("{API}/messages/{mid}/recall");
    api.post_empty(&path, Some(&c.token))
        .await
        .expect_error(403, "forbidden", "stranger recalls");
    api.post_empty(&path, Some(&b.token))
        .await
        .expect_error(403, "forbidden", "recipient recalls");
    api.post_empty(&format!("{API}/messages/1/recall"), Some(&a.token))
        .await
        .expect_error(404, "not_found", "recall unknown message");

    let r = api.post_empty(&path, Some(&a.token)).await;
    let vo = r.expect(200, "sender recalls").clone();
    assert_message_vo(&vo);
    assert_eq!(vo["messageId"].as_str(), Some(mid));
    assert_eq!(vo["isRecalled"], json!(true));

    let f = ws.recv_message_on("m", WAIT).await;
    assert_eq!(f.header("message-id"), Some(mid));
    let ev = body_json(&f);
    assert_eq!(ev["type"], json!("recall"), "{ev}");
    assert_eq!(ev["messageId"].as_str(), Some(mid));
    assert_eq!(ev["isRecalled"], json!(true));

    let list = api.sync_all(b).await;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["isRecalled"], json!(true));
    ws.disconnect().await;
}

// ---------------------------------------------------------------------------
// strict JSON types and the spec (issue 21, items 6 and 7)
// ---------------------------------------------------------------------------

/// Asserts a `400 invalid_argument` whose message contains every one of
/// `words`; returns the message.
#[track_caller]
fn refused(r: &Resp, what: &str, words: &[&str]) -> String {
    r.expect_error(400, "invalid_argument", what);
    let message = r.body["message"].as_str().unwrap_or_default().to_string();
    for w in words {
        assert!(message.contains(w), "{what}: {w:?} not in {message:?}");
    }
    message
}

#[tokio::test]
async fn json_number_ids_are_refused() {
    let (srv, _g) = server();
    let api = srv.api();
    let users = api.new_users(2).await;
    let (a, b) = (&users[0], &users[1]);
    let b_id: u64 = b.user_id.parse().unwrap();
    let mut req = send_req_user(&b.user_id, "as a number", &unique("c"));
    req["toUserId"] = json!(b_id);
    let r = api.send(a, &req).await;
    refused(&r, "toUserId as a JSON number", &["string", "not a number"]);

    let r = api
        .post(
            &format!("{API}/groups"),
            Some(&a.token),
            &json!({"name": "numbers", "memberIds": [b_id]}),
        )
        .await;
    refused(&r, "memberIds holding a JSON number", &["string"]);

    let ack = api.send_to_user(a, &b.user_id, "ack me").await;
    let mid: u64 = ack["messageId"].as_str().unwrap().parse().unwrap();
    let r = api
        .post(
            &format!("{API}/messages/ack"),
            Some(&b.token),
            &json!({"messageIds": [mid], "ackType": "read"}),
        )
        .await;
    refused(&r, "messageIds holding a JSON number", &["string"]);
    let sid: u64 = ack["sessionId"].as_str().unwrap().parse().unwrap();
    let r = api
        .post(
            &format!("{API}/messages/mark-read"),
            Some(&b.token),
            &json!({"sessionId": sid}),
        )
        .await;
    refused(&r, "sessionId as a JSON number", &["string"]);

    // Nothing was sent by the refused request.
    let list = api
        .wait_visible(b, ack["messageId"].as_str().unwrap())
        .await;
    let contents: Vec<&str> = list.iter().filter_map(|m| m["content"].as_str()).collect();
    assert_eq!(contents, ["ack me"]);
}

#[tokio::test]
async fn non_string_names_and_contents_are_refused() {
    let (srv, _g) = server();
    let api = srv.api();
    let users = api.new_users(2).await;
    let (a, b) = (&users[0], &users[1]);
    for name in [json!(false), json!(42), json!(null), json!(["g"])] {
        let r = api
            .post(
                &format!("{API}/groups"),
                Some(&a.token),
                &json!({"name": name, "memberIds": [b.user_id]}),
            )
            .await;
        refused(&r, &format!("group name {name}"), &["name"]);
    }
    for content in [json!(42), json!(true), json!({"text": "hi"})] {
        let mut req = send_req_user(&b.user_id, "x", &unique("c"));
        req["content"] = content.clone();
        let r = api.send(a, &req).await;
        refused(&r, &format!("content {content}"), &["content", "string"]);
    }
    let mut req = send_req_user(&b.user_id, "x", &unique("c"));
    req["clientMessageId"] = json!(7);
    refused(
        &api.send(a, &req).await,
        "numeric clientMessageId",
        &["string"],
    );
    let r = api
        .post(
            &format!("{API}/auth/register"),
            None,
            &json!({"username": unique("n"), "password": "password123", "nickname": false}),
        )
        .await;
    refused(&r, "boolean nickname", &["nickname"]);
    // None of it reached b.
    assert!(api.sync_all(b).await.is_empty(), "nothing was sent to b");
    let groups = api.get(&format!("{API}/sessions"), Some(&b.token)).await;
    assert_eq!(groups.expect(200, "sessions"), &json!([]));
}

#[tokio::test]
async fn leading_zero_ids_are_refused_in_paths_as_in_bodies() {
    let (srv, _g) = server();
    let api = srv.api();
    let users = api.new_users(2).await;
    let (a, b) = (&users[0], &users[1]);
    let g = api.create_group(a, &unique("g"), &[b]).await;
    let gid = g["groupId"].as_str().unwrap();
    let padded = format!("0{gid}");

    let r = api
        .get(&format!("{API}/groups/{padded}"), Some(&a.token))
        .await;
    let in_path = refused(&r, "a path id with a leading zero", &["leading zeros"]);
    let r = api
        .send(a, &send_req_group(&padded, "padded", &unique("c")))
        .await;
    let in_body = refused(&r, "a body id with a leading zero", &["leading zeros"]);
    let rule = "a positive 64-bit decimal id without leading zeros";
    assert!(
        in_path.contains(rule) && in_body.contains(rule),
        "{in_path} / {in_body}"
    );

    let r = api
        .delete(
            &format!("{API}/groups/{gid}/members/0{}", b.user_id),
            Some(&a.token),
        )
        .await;
    refused(&r, "a padded member id", &["leading zeros"]);
    let r = api
        .get(&format!("{API}/users/00{}", b.user_id), Some(&a.token))
        .await;
    refused(&r, "a padded user id", &["leading zeros"]);
    // The group is untouched.
    let r = api
        .get(&format!("{API}/groups/{gid}"), Some(&a.token))
        .await;
    assert_eq!(
        r.expect(200, "the group")["memberIds"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );
}

#[tokio::test]
async fn zero_as_an_id_is_refused_with_an_accurate_message() {
    let (srv, _g) = server();
    let api = srv.api();
    let users = api.new_users(2).await;
    let (a, b) = (&users[0], &users[1]);
    let words = ["positive", "without leading zeros"];
    let r = api.get(&format!("{API}/users/0"), Some(&a.token)).await;
    let message = refused(&r, "GET /users/0", &words);
    assert!(
        !message.contains("must be a string of decimal digits"),
        "\"0\" is a string of decimal digits: {message}"
    );
    refused(
        &api.send(a, &send_req_user("0", "zero", &unique("c"))).await,
        "toUserId \"0\"",
        &words,
    );
    let r = api
        .get(
            &format!("{API}/presence?userIds={},0", b.user_id),
            Some(&a.token),
        )
        .await;
    refused(&r, "a presence list with 0", &words);
}

/// The served spec, parsed.
async fn served_spec(api: &Api) -> serde_yaml::Value {
    let r = api.get("/openapi.yaml", None).await;
    r.expect(200, "GET /openapi.yaml");
    serde_yaml::from_str(&r.text).expect("openapi.yaml must be YAML")
}

/// The value at `keys` in `spec`, which must be there.
#[track_caller]
fn at<'a>(spec: &'a serde_yaml::Value, keys: &[&str]) -> &'a serde_yaml::Value {
    let mut v = spec;
    for key in keys {
        v = &v[*key];
        assert!(!v.is_null(), "{keys:?}: no {key:?} in the spec");
    }
    v
}

#[tokio::test]
async fn served_spec_declares_nullable_fields_and_rules() {
    let (srv, _g) = server();
    let spec = served_spec(&srv.api()).await;
    let field = |schema: &str, field: &str, rule: &str| {
        at(
            &spec,
            &["components", "schemas", schema, "properties", field, rule],
        )
        .clone()
    };
    for (schema, name) in [
        ("PresenceVo", "lastSeenAt"),
        ("MessageVo", "toUserId"),
        ("MessageVo", "groupId"),
        ("SessionVo", "peerId"),
        ("SessionVo", "groupId"),
        ("SessionVo", "lastMessage"),
        ("SendReq", "toUserId"),
    ] {
        let nullable = field(schema, name, "nullable");
        assert_eq!(
            nullable.as_bool(),
            Some(true),
            "{schema}.{name} must be nullable"
        );
    }
    let id = "^[1-9][0-9]{0,18}$";
    assert_eq!(
        field("RegisterReq", "username", "pattern").as_str(),
        Some("^[A-Za-z0-9_.-]{3,32}$")
    );
    assert_eq!(field("SendReq", "groupId", "pattern").as_str(), Some(id));
    assert_eq!(
        field("AckReq", "messageIds", "items")["pattern"].as_str(),
        Some(id)
    );
    assert_eq!(
        field("RegisterReq", "password", "minLength").as_u64(),
        Some(8)
    );
    assert_eq!(
        field("RegisterReq", "password", "maxLength").as_u64(),
        Some(128)
    );
    assert_eq!(
        field("SendReq", "messageType", "minimum").as_f64(),
        Some(1.0)
    );
    assert_eq!(
        field("SendReq", "messageType", "maximum").as_f64(),
        Some(5.0)
    );
    assert_eq!(
        field("SendReq", "clientMessageId", "maxLength").as_u64(),
        Some(64)
    );
    assert_eq!(
        field("AckReq", "messageIds", "maxItems").as_u64(),
        Some(500)
    );
    // Exactly one of `toUserId` and `groupId`.
    let one_of = at(&spec, &["components", "schemas", "SendReq", "oneOf"]);
    let required: Vec<&str> = one_of
        .as_sequence()
        .map(|branches| {
            branches
                .iter()
                .filter_map(|b| b["required"][0].as_str())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(required, ["toUserId", "groupId"]);
    let ack_types = field("AckReq", "ackType", "enum");
    let ack_types: Vec<&str> = ack_types
        .as_sequence()
        .map(|s| s.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    assert_eq!(ack_types, ["received", "read"]);

    // A path id, a query bound, and the error bodies of an operation.
    let get_group = at(&spec, &["paths", "/groups/{groupId}", "get"]);
    assert_eq!(
        get_group["parameters"][0]["schema"]["pattern"].as_str(),
        Some(id)
    );
    for status in ["400", "401", "403", "404", "503"] {
        let content = at(get_group, &["responses", status, "content"]);
        let schema = content
            .as_mapping()
            .and_then(|m| m.values().next())
            .map(|media| &media["schema"]["$ref"]);
        assert_eq!(
            schema.and_then(|s| s.as_str()),
            Some("#/components/schemas/ErrorBody"),
            "{status}"
        );
    }
    let pull = at(&spec, &["paths", "/messages/pull", "get", "parameters"]);
    let size = pull
        .as_sequence()
        .and_then(|ps| ps.iter().find(|p| p["name"].as_str() == Some("size")))
        .expect("pull has a size parameter");
    assert_eq!(size["schema"]["maximum"].as_f64(), Some(200.0));
}

// ---------------------------------------------------------------------------
// operations endpoints
// ---------------------------------------------------------------------------

#[tokio::test]
async fn health_ready_metrics_and_docs() {
    let (srv, _g) = server();
    let api = srv.api();
    api.get("/healthz", None).await.expect(200, "healthz");
    api.get("/readyz", None).await.expect(200, "readyz");

    let a = api.new_user().await;
    let b = api.new_user().await;
    api.send_to_user(&a, &b.user_id, "count me").await;
    let m = api.get("/metrics", None).await;
    m.expect(200, "metrics");
    let line = m
        .text
        .lines()
        .find(|l| l.starts_with("herald_messages_sent_total"))
        .unwrap_or_else(|| panic!("no herald_messages_sent_total sample in:\n{}", m.text));
    let value: f64 = line
        .split_whitespace()
        .last()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("bad sample line {line:?}"));
    assert!(value >= 1.0, "{line}");

    let o = api.get("/openapi.yaml", None).await;
    o.expect(200, "openapi.yaml");
    assert!(o.text.contains("openapi"), "not an OpenAPI document");
    assert!(
        o.text.contains("/messages/pull"),
        "spec lacks /messages/pull"
    );
    assert!(o.text.contains("/api/v1"), "spec lacks the /api/v1 base");
    api.get("/docs", None).await.expect(200, "docs");
    let missing = api
        .get(&format!("{API}/no-such-route"), Some(&a.token))
        .await;
    missing.expect_error(404, "not_found", "unknown route");
}

// ---------------------------------------------------------------------------
// servers with special settings
// ---------------------------------------------------------------------------

static LIMITED: OnceLock<TestServer> = OnceLock::new();

fn limited_server() -> (&'static TestServer, LogGuard) {
    let s = TestServer::shared(
        &LIMITED,
        &[
            ("HERALD_SEND_RATE_PER_SEC", "1"),
            ("HERALD_SEND_BURST", "3"),
            ("HERALD_RECALL_WINDOW_MS", "500"),
        ],
    );
    (s, s.log_guard())
}

#[tokio::test]
async fn send_rate_limit_answers_429() {
    let (srv, _g) = limited_server();
    let api = srv.api();
    let a = api.new_user().await;
    let b = api.new_user().await;
    // Sends one at a time until one is refused: the burst (3) passes, and
    // no more than the bucket refilled (1/s) while they were answered (a
    // cluster answers a send in tens to hundreds of ms).
    let started = Instant::now();
    let mut accepted = 0;
    loop {
        let r = api
            .send(&a, &send_req_user(&b.user_id, "burst", &unique("c")))
            .await;
        if r.status == 429 {
            r.expect_error(429, "rate_limited", "over the burst");
            // One send refills in a second (1/s).
            assert_eq!(r.retry_after(), 1, "Retry-After of the send limit");
            break;
        }
        r.expect(202, "within the burst");
        accepted += 1;
        assert_within_refill(accepted, 3, started);
    }
    assert!(accepted >= 3, "the burst of 3 passes; only {accepted} did");
    // Per user: another sender is not affected.
    let c = api.new_user().await;
    api.send(&c, &send_req_user(&b.user_id, "other user", &unique("c")))
        .await
        .expect(202, "another user's bucket");
    // The bucket refills (1/s).
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    api.send(&a, &send_req_user(&b.user_id, "refilled", &unique("c")))
        .await
        .expect(202, "after refill");
}

#[tokio::test]
async fn recall_after_the_window_is_refused() {
    let (srv, _g) = limited_server();
    let api = srv.api();
    let a = api.new_user().await;
    let b = api.new_user().await;
    let k = api.send_to_user(&a, &b.user_id, "too late").await;
    let mid = k["messageId"].as_str().unwrap();
    visible(&api, &[&b], &k).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let r = api
        .post_empty(&format!("{API}/messages/{mid}/recall"), Some(&a.token))
        .await;
    assert!(
        matches!(r.status, 400 | 403 | 409),
        "recall after recallWindowMs must be refused, got {} {}",
        r.status,
        r.text
    );
    assert!(r.body["code"].is_string(), "{}", r.text);
    let list = api.sync_all(&b).await;
    assert_eq!(list[0]["isRecalled"], json!(false));
}

static HTTP_LIMITED: OnceLock<TestServer> = OnceLock::new();

#[tokio::test]
async fn http_rate_limit_answers_429_json() {
    let s = TestServer::shared(&HTTP_LIMITED, &[("HERALD_HTTP_RATE_PER_SEC", "5")]);
    let _g = s.log_guard();
    let api = s.api();
    let name = unique("rl");
    api.register(&name, "password123", "R")
        .await
        .expect(201, "register");
    let login = api.login(&name, "password123").await;
    let token = login.expect(200, "login")["token"]
        .as_str()
        .unwrap()
        .to_string();
    let mut limited = None;
    for _ in 0..40 {
        let r = api.get(&format!("{API}/users/me"), Some(&token)).await;
        if r.status == 429 {
            limited = Some(r);
            break;
        }
        r.expect(200, "me");
    }
    let r = limited.expect("40 quick requests at 5/s must hit the limit");
    r.expect_error(429, "rate_limited", "http rate limit");
    assert_eq!(r.retry_after(), 1, "Retry-After of the REST rate limit");
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    api.get(&format!("{API}/users/me"), Some(&token))
        .await
        .expect(200, "after the window");
}

static SHORT_TOKENS: OnceLock<TestServer> = OnceLock::new();

#[tokio::test]
async fn expired_tokens_are_rejected() {
    let s = TestServer::shared(&SHORT_TOKENS, &[("HERALD_JWT_TTL_SECS", "1")]);
    let _g = s.log_guard();
    let api = s.api();
    let before = now_ms();
    let u = api.new_user().await;
    let l = api.login(&u.username, &u.password).await;
    let exp = l.expect(200, "login")["expiresAt"].as_i64().unwrap();
    assert!(
        exp > before && exp <= now_ms() + 2_000,
        "expiresAt {exp} should be ~1 s after login ({before})"
    );
    api.get(&format!("{API}/users/me"), Some(&u.token))
        .await
        .expect(200, "fresh token");
    // The server allows 5 s of clock-skew leeway past `expiresAt`.
    let wait = (exp + 6_000 - now_ms()).max(0) as u64;
    tokio::time::sleep(Duration::from_millis(wait)).await;
    api.get(&format!("{API}/users/me"), Some(&u.token))
        .await
        .expect_error(401, "unauthenticated", "expired token");
    let mut c = Stomp::open(s.port()).await;
    let auth = format!("Bearer {}", u.token);
    let f = c.send_connect(&[("Authorization", auth.as_str())]).await;
    assert_eq!(f.command, herald::stomp::Command::Error, "{f:?}");
    assert!(c.wait_closed(WAIT).await);
}
