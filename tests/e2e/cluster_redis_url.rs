//! `cluster.redis_url` as operators write it: a password and a database
//! number are used, and the URL (a secret) never reaches the logs' settings
//! dump or `/readyz`.

use crate::broker::Mosquitto;
use crate::helpers::{spawn_app_external, unique};
use crate::redis_proc::RedisServer;
use crate::tools::require_tool;

#[actix_web::test]
async fn a_password_and_a_database_in_the_url_are_used() {
    if !require_tool("redis-server") || !require_tool("mosquitto") {
        return;
    }
    let redis = RedisServer::start_with_password(Some("s3cret-pw"));
    let (_broker, mqtt_port) = Mosquitto::on_free_port();
    let prefix = unique("url");
    let url = format!("redis://:s3cret-pw@127.0.0.1:{}/3", redis.port());
    let app = spawn_app_external(
        mqtt_port,
        &format!("[cluster]\nredis_url = \"{url}\"\nkey_prefix = \"{prefix}\"\n"),
    )
    .await;

    let (status, body) = app.get("/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains("s3cret"), "the URL is a secret: {body}");
    let answer = app
        .call(
            "POST",
            "/v1/notifications",
            &[("content-type", "application/json")],
            Some(r#"{"level":"info","message":"into db 3"}"#),
        )
        .await;
    assert_eq!(answer.status, 201, "{:?}", answer.body);
    let id = answer.body["id"].as_str().expect("an id").to_owned();

    // The event is in database 3, under the prefix, with the id answered.
    let client = redis::Client::open(url.as_str()).expect("URL");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("the test connects with the same URL");
    let first: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(format!("{prefix}:events"))
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .expect("XRANGE");
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].0, id);
    let db0 = redis::Client::open(format!("redis://:s3cret-pw@127.0.0.1:{}/0", redis.port()))
        .expect("URL")
        .get_multiplexed_async_connection()
        .await;
    let mut db0 = db0.expect("db 0 connects");
    let len: i64 = redis::cmd("XLEN")
        .arg(format!("{prefix}:events"))
        .query_async(&mut db0)
        .await
        .expect("XLEN");
    assert_eq!(len, 0, "nothing went to database 0");
}
