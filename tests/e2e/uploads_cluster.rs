//! Uploads in cluster mode: two instances sharing one bucket (moto), one
//! Redis stream and one broker. An upload to either instance is one event
//! that clients of every instance see, and the bucket decides for both.

use crate::broker::Mosquitto;
use crate::helpers::{unique, WsClient};
use crate::moto::Moto;
use crate::node::Node;
use crate::redis_proc::RedisServer;
use crate::tools::require_tool;
use crate::uploads::{put, sha256};

#[actix_web::test]
async fn an_upload_to_one_instance_is_an_event_on_every_instance_and_stored_once() {
    if !require_tool("mosquitto") || !require_tool("redis-server") {
        return;
    }
    let Some(moto) = Moto::start_if_installed().await else {
        return;
    };
    let bucket = unique("cluster-uploads").to_ascii_lowercase();
    moto.create_bucket(&bucket).await;
    let (_broker, mqtt_port) = Mosquitto::on_free_port();
    let redis = RedisServer::start();
    let endpoint = moto.endpoint();
    let env = [
        ("EDGEBUS__UPLOADS__STORE", "s3"),
        ("EDGEBUS__UPLOADS__S3__BUCKET", bucket.as_str()),
        ("EDGEBUS__UPLOADS__S3__ENDPOINT", endpoint.as_str()),
        ("EDGEBUS__UPLOADS__S3__ACCESS_KEY_ID", "test"),
        ("EDGEBUS__UPLOADS__S3__SECRET_ACCESS_KEY", "test"),
        ("EDGEBUS__UPLOADS__S3__ALLOW_HTTP", "true"),
    ];
    let a = Node::cluster(mqtt_port, &redis.url(), "up-a", &env).await;
    let b = Node::cluster(mqtt_port, &redis.url(), "up-b", &env).await;
    let mut on_b = WsClient::connect(&format!(
        "ws://127.0.0.1:{}/v1/ws?topic=uploads%2F%23",
        b.port()
    ))
    .await;
    on_b.snapshot().await;

    let body = b"cluster episode".to_vec();
    let sha = sha256(&body);
    let header = [("X-Content-SHA256", sha.as_str())];
    let stored = put(a.port(), "lab-01/ep.tar.zst", &header, body.clone()).await;
    assert_eq!(stored.status, 201, "{stored:?}");
    let again = put(b.port(), "lab-01/ep.tar.zst", &header, body.clone()).await;
    assert_eq!(again.status, 200, "the bucket is shared: {again:?}");

    let first = on_b.next_event().await;
    assert_eq!(first["event"], "upload.stored");
    assert_eq!(first["topic"], "uploads/lab-01");
    assert!(
        first["id"].as_str().is_some_and(|id| id.contains('-')),
        "a stream entry id: {first}"
    );
    let second = on_b.next_event().await;
    assert_eq!(second["event"], "upload.duplicate");
    assert_eq!(second["payload"]["sha256"], sha.as_str());
    assert_eq!(moto.object(&bucket, "lab-01/ep.tar.zst"), Some(body));
}
