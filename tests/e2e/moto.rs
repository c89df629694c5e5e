//! A private S3-compatible server for the object-store tests: moto's server
//! mode (`pip install 'moto[server]'`), on a free port, in memory, stopped
//! with the test.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::{free_port, unique, PORT_ATTEMPTS, WAIT};
use crate::tools::{installed, require_tool, tail};

pub struct Moto {
    child: Child,
    port: u16,
    log: std::path::PathBuf,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

impl Moto {
    /// A running server, or `None` (after a loud SKIPPED line) when moto is
    /// not installed and `EDGEBUS_REQUIRE_TOOLS` is unset.
    pub async fn start_if_installed() -> Option<Self> {
        if !require_tool("moto_server") {
            return None;
        }
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port();
            let log = std::env::temp_dir().join(unique("moto") + ".log");
            let file = std::fs::File::create(&log).expect("moto log");
            let child = Command::new(installed("moto_server"))
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(file.try_clone().expect("log handle"))
                .stderr(file)
                .spawn()
                .expect("moto_server starts");
            let mut moto = Self { child, port, log };
            if moto.wait_ready().await {
                return Some(moto);
            }
            eprintln!(
                "moto_server did not start on {port}:\n{}",
                tail(&moto.log, 20)
            );
        }
        panic!("moto_server could not listen on {PORT_ATTEMPTS} free ports");
    }

    /// Answering, and still the process we started.
    async fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + WAIT * 3;
        let client = awc::Client::default();
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if let Ok(resp) = client.get(self.url("/")).send().await {
                if resp.status().is_success() && matches!(self.child.try_wait(), Ok(None)) {
                    return true;
                }
            }
            actix_web::rt::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.endpoint())
    }

    /// Creates `bucket`.
    pub async fn create_bucket(&self, bucket: &str) {
        let resp = awc::Client::default()
            .put(self.url(&format!("/{bucket}")))
            .send()
            .await
            .expect("create bucket");
        assert!(
            resp.status().is_success(),
            "create bucket: {}",
            resp.status()
        );
    }

    /// An object's bytes, or `None` when it is absent. Read with boto3
    /// (which moto's package brings), signed as any S3 client signs: moto
    /// refuses anonymous reads.
    pub fn object(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        let out = self.boto3(&format!(
            "try:\n    sys.stdout.buffer.write(s3.get_object(Bucket='{bucket}', Key='{key}')['Body'].read())\n\
             except s3.exceptions.NoSuchKey:\n    sys.exit(3)\n"
        ));
        match out.status.code() {
            Some(0) => Some(out.stdout),
            Some(3) => None,
            _ => panic!("reading {key}: {}", String::from_utf8_lossy(&out.stderr)),
        }
    }

    /// The keys under `prefix`.
    pub fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let out = self.boto3(&format!(
            "for o in s3.list_objects_v2(Bucket='{bucket}', Prefix='{prefix}').get('Contents', []):\n    print(o['Key'])\n"
        ));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn boto3(&self, body: &str) -> std::process::Output {
        let script = format!(
            "import sys, boto3\n\
             s3 = boto3.client('s3', endpoint_url='{}', aws_access_key_id='test', \
             aws_secret_access_key='test', region_name='us-east-1')\n{body}",
            self.endpoint()
        );
        Command::new("python3")
            .args(["-c", &script])
            .output()
            .expect("python3 runs")
    }
}
