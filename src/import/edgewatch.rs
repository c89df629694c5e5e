//! `edgebus import edgewatch [--env-file PATH]`: the EdgeWatch bridge's
//! settings, read as its pydantic-settings read them, printed as the
//! equivalent edgebus TOML.
//!
//! Read like `BackendSettings()`: the process environment over the `.env`
//! file (python-dotenv syntax), names case-insensitive, unknown names
//! ignored; every value validated by the bridge's rule (pydantic's lax
//! reading of a string, then `ge`/`le`), so a value the bridge refused
//! stops the import with a line naming the variable. [`to_toml`] is pure.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::Path;

use edgebus_actors::lax::{self, LaxInt};

/// A variable the bridge would have refused, or that edgebus cannot take.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("`{var}` = {value:?}: {rule}")]
pub struct ImportError {
    pub var: &'static str,
    pub value: String,
    pub rule: String,
}

fn refuse(var: &'static str, value: &str, rule: impl Into<String>) -> ImportError {
    ImportError {
        var,
        value: value.to_owned(),
        rule: rule.into(),
    }
}

/// The bridge's variables by lower-case name (pydantic-settings matches
/// names case-insensitively).
pub type Vars = HashMap<String, String>;

/// `.env` (if `file` is `None`, the one in the working directory when there
/// is one), then `env` over it.
pub fn read_vars(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> std::io::Result<Vars> {
    let env: Vec<(String, String)> = env.into_iter().collect();
    let text = match file {
        Some(path) => Some(std::fs::read_to_string(path)?),
        None => match std::fs::read_to_string(".env") {
            Ok(text) => Some(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        },
    };
    let mut vars = Vars::new();
    if let Some(text) = text {
        let lookup: HashMap<&str, &str> =
            env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        for (name, value) in parse_dotenv(&text, &lookup) {
            vars.insert(name.to_lowercase(), value);
        }
    }
    for (name, value) in env {
        vars.insert(name.to_lowercase(), value);
    }
    Ok(vars)
}

/// python-dotenv's `KEY=value` lines: `export` prefixes, `#` comments
/// (inline ones after a space, outside quotes), single quotes (literal),
/// double quotes (with `\n`, `\t`, `\"`, `\\` escapes), and `${NAME}` /
/// `${NAME:-default}` expanded outside single quotes from earlier lines,
/// then `env`.
pub fn parse_dotenv(text: &str, env: &HashMap<&str, &str>) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((name, raw)) = line.split_once('=') else {
            continue;
        };
        let name = name.trim();
        if name.is_empty() {
            continue;
        }
        let raw = raw.trim_start();
        let (value, expand) = if let Some(rest) = raw.strip_prefix('\'') {
            (rest.split('\'').next().unwrap_or("").to_owned(), false)
        } else if let Some(rest) = raw.strip_prefix('"') {
            (unescape_double(rest), true)
        } else {
            let end = raw.find(" #").or_else(|| raw.find("\t#"));
            (raw[..end.unwrap_or(raw.len())].trim_end().to_owned(), true)
        };
        let value = if expand {
            expand_vars(&value, |n| {
                out.iter()
                    .rev()
                    .find(|(k, _)| k == n)
                    .map(|(_, v)| v.clone())
                    .or_else(|| env.get(n).map(|v| (*v).to_owned()))
            })
        } else {
            value
        };
        out.push((name.to_owned(), value));
    }
    out
}

/// A double-quoted value up to its closing quote.
fn unescape_double(rest: &str) -> String {
    let mut out = String::new();
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => break,
            '\\' => match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some('r') => out.push('\r'),
                Some(other) => out.push(other),
                None => out.push('\\'),
            },
            c => out.push(c),
        }
    }
    out
}

fn expand_vars(value: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        let Some(len) = rest[start..].find('}') else {
            break;
        };
        out.push_str(&rest[..start]);
        let inner = &rest[start + 2..start + len];
        let (name, default) = match inner.split_once(":-") {
            Some((n, d)) => (n, d),
            None => (inner, ""),
        };
        out.push_str(&lookup(name).unwrap_or_else(|| default.to_owned()));
        rest = &rest[start + len + 1..];
    }
    out.push_str(rest);
    out
}

/// An int field of the bridge's model within `min..=max`.
fn int(
    vars: &Vars,
    var: &'static str,
    default: u64,
    min: u64,
    max: u64,
) -> Result<u64, ImportError> {
    let Some(text) = vars.get(&var.to_lowercase()) else {
        return Ok(default);
    };
    let range = if max == u64::MAX {
        format!("must be an integer of at least {min}")
    } else {
        format!("must be an integer from {min} to {max}")
    };
    match lax::int_from_str(text) {
        LaxInt::Value(v) if (min..=max).contains(&v) => Ok(v),
        _ => Err(refuse(var, text, range)),
    }
}

fn text<'a>(vars: &'a Vars, var: &str) -> Option<&'a str> {
    vars.get(&var.to_lowercase()).map(String::as_str)
}

/// A TOML basic string.
fn toml_str(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `host:port` for a socket address (IPv6 in brackets).
fn host_port(ip: IpAddr, port: u64) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    }
}

/// The bridge's settings as edgebus TOML, or the first variable the bridge
/// (or edgebus) would refuse.
pub fn to_toml(vars: &Vars) -> Result<String, ImportError> {
    // MQTT: the bridge always connected over TLS (it passed an SSL context
    // whatever the port).
    let broker = text(vars, "MQTT_BROKER").unwrap_or("");
    if broker.is_empty() {
        return Err(refuse(
            "MQTT_BROKER",
            broker,
            "is empty: the bridge had no broker to connect to; set the broker's host name",
        ));
    }
    if broker.contains(['/', '@', ' ']) || broker.contains("://") {
        return Err(refuse(
            "MQTT_BROKER",
            broker,
            "must be a host name or an IP address",
        ));
    }
    let port = int(vars, "MQTT_PORT", 8883, 1, 65535)?;
    let host = match broker.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => format!("[{v6}]"),
        _ => broker.to_owned(),
    };
    let topic = text(vars, "TOPIC").unwrap_or("devices/+/metrics");
    if edgebus_actors::topic::TopicFilter::parse(topic).is_err() {
        return Err(refuse("TOPIC", topic, "must be an MQTT topic filter"));
    }
    let backoff_min = int(vars, "MQTT_BACKOFF_MIN", 1, 1, u64::MAX)?;
    let backoff_max = int(vars, "MQTT_BACKOFF_MAX", 60, 1, u64::MAX)?;
    if backoff_max < backoff_min {
        return Err(refuse(
            "MQTT_BACKOFF_MAX",
            &backoff_max.to_string(),
            format!("must be at least MQTT_BACKOFF_MIN ({backoff_min}) for edgebus"),
        ));
    }
    let ca_cert = text(vars, "CA_CERT").filter(|s| !s.is_empty());
    let client_cert = text(vars, "CLIENT_CERT").filter(|s| !s.is_empty());
    let client_key = text(vars, "CLIENT_KEY").filter(|s| !s.is_empty());

    // WebSocket.
    let ws_host = text(vars, "WS_HOST").unwrap_or("0.0.0.0");
    let ws_ip = match ws_host {
        // `serve(host="")` listened on every interface.
        "" => IpAddr::from([0, 0, 0, 0]),
        "localhost" => IpAddr::from([127, 0, 0, 1]),
        other => other.parse::<IpAddr>().map_err(|_| {
            refuse(
                "WS_HOST",
                other,
                "must be an IP address (or localhost) for edgebus's listener",
            )
        })?,
    };
    let ws_port = int(vars, "WS_PORT", 6789, 1, 65535)?;
    let token = text(vars, "WS_AUTH_TOKEN").unwrap_or("");

    // App.
    let prune = int(vars, "PRUNE_SECONDS", 30, 0, u64::MAX)?;
    let threshold = match text(vars, "CPU_ALERT_TH") {
        None => 90.0,
        Some(t) => lax::float_from_str(t)
            .filter(|v| (0.0..=100.0).contains(v))
            .ok_or_else(|| refuse("CPU_ALERT_TH", t, "must be a number from 0 to 100"))?,
    };
    let webhook = text(vars, "SLACK_WEBHOOK_URL").unwrap_or("");
    let is_http = webhook.starts_with("https://") || webhook.starts_with("http://");
    if !(webhook.is_empty() || is_http) {
        return Err(refuse(
            "SLACK_WEBHOOK_URL",
            "[redacted]",
            "must be an http(s):// URL (edgebus posts to nothing else)",
        ));
    }
    let summary = int(vars, "SUMMARY_INTERVAL", 60, 1, u64::MAX)?;
    let max_payload = int(
        vars,
        "MAX_PAYLOAD_BYTES",
        16 * 1024,
        64,
        crate::settings::MAX_PAYLOAD_LIMIT as u64,
    )?;
    let max_devices = int(vars, "MAX_DEVICES", 1000, 1, u64::MAX)?;
    let cooldown = int(vars, "ALERT_COOLDOWN", 60, 0, u64::MAX)?;
    let log_level = text(vars, "LOG_LEVEL").unwrap_or("INFO");
    let rust_log = match log_level.to_uppercase().as_str() {
        "DEBUG" => "debug",
        "INFO" => "info",
        "WARNING" | "WARN" => "warn",
        "ERROR" | "CRITICAL" | "FATAL" => "error",
        "NOTSET" => "debug",
        _ => {
            return Err(refuse(
                "LOG_LEVEL",
                log_level,
                "must be DEBUG, INFO, WARNING, ERROR or CRITICAL (Python's logging refused anything else)",
            ))
        }
    };

    let mut t = String::new();
    t.push_str("# edgebus configuration imported from the EdgeWatch bridge's settings\n");
    t.push_str("# (`edgebus import edgewatch`). Run: edgebus --config THIS_FILE\n");
    let _ = writeln!(
        t,
        "# LOG_LEVEL={log_level} has no setting here: start edgebus with RUST_LOG={rust_log}."
    );
    t.push_str("\n[mqtt]\nmode = \"external\"\n");
    let _ = writeln!(
        t,
        "url = {}   # MQTT_BROKER, MQTT_PORT: the bridge always used TLS",
        toml_str(&format!("mqtts://{host}:{port}"))
    );
    let _ = writeln!(t, "topics = [{}]   # TOPIC", toml_str(topic));
    if topic != edgebus_actors::families::METRICS_FILTER {
        t.push_str(
            "# TOPIC differs from devices/+/metrics: edgebus reads metrics frames only on\n\
             # devices/{device_id}/metrics; anything else is an event of its own topic.\n",
        );
    }
    if let Some(ca) = ca_cert {
        let _ = writeln!(t, "ca_cert = {}   # CA_CERT", toml_str(ca));
    }
    match (client_cert, client_key) {
        (Some(cert), Some(key)) => {
            let _ = writeln!(t, "client_cert = {}   # CLIENT_CERT", toml_str(cert));
            let _ = writeln!(t, "client_key = {}   # CLIENT_KEY", toml_str(key));
        }
        (None, None) => {}
        _ => t.push_str(
            "# CLIENT_CERT and CLIENT_KEY: only one is set, so the bridge used neither; nor does edgebus.\n",
        ),
    }
    let _ = writeln!(
        t,
        "backoff_min_seconds = {backoff_min}   # MQTT_BACKOFF_MIN"
    );
    let _ = writeln!(
        t,
        "backoff_max_seconds = {backoff_max}   # MQTT_BACKOFF_MAX"
    );
    let _ = writeln!(t, "max_payload_bytes = {max_payload}   # MAX_PAYLOAD_BYTES");

    t.push_str("\n[registry]\n");
    if prune == 0 {
        t.push_str(
            "active_window_seconds = 1   # PRUNE_SECONDS=0: edgebus's shortest window is 1 s\n",
        );
    } else {
        let _ = writeln!(t, "active_window_seconds = {prune}   # PRUNE_SECONDS");
    }
    let _ = writeln!(t, "max_devices = {max_devices}   # MAX_DEVICES");

    t.push_str("\n[alerts]\n");
    let _ = writeln!(t, "cooldown_seconds = {cooldown}   # ALERT_COOLDOWN");
    let _ = writeln!(
        t,
        "rules = [{{ name = \"cpu_high\", field = \"cpu_percent\", above = {threshold:?} }}]   # CPU_ALERT_TH (inclusive, as the bridge's)"
    );

    t.push_str("\n[slack]\n");
    let _ = writeln!(
        t,
        "webhook_url = {}   # SLACK_WEBHOOK_URL{}",
        toml_str(webhook),
        if webhook.is_empty() {
            ": Slack off"
        } else {
            ""
        }
    );
    let _ = writeln!(
        t,
        "summary_interval_seconds = {summary}   # SUMMARY_INTERVAL"
    );

    t.push_str("\n[compat.edgewatch]\nenabled = true\n");
    let _ = writeln!(
        t,
        "bind = {}   # WS_HOST, WS_PORT",
        toml_str(&host_port(ws_ip, ws_port))
    );
    let _ = writeln!(
        t,
        "token = {}   # WS_AUTH_TOKEN{}",
        toml_str(token),
        if token.is_empty() {
            ": empty, so any dashboard that reaches `bind` reads every device"
        } else {
            ""
        }
    );
    t.push_str("lax_frames = true   # what the bridge's model coerced (\"42.5\", 1700000000.0, true) is accepted and counted\n");
    t.push_str(
        "device_id_from_payload = false   # the bridge filed a frame under its payload's device_id whatever the\n\
         # topic said; true does the same, and lets any publisher speak for any device\n",
    );
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vars {
        pairs
            .iter()
            .map(|(k, v)| (k.to_lowercase(), (*v).to_owned()))
            .collect()
    }

    fn load(toml: &str) -> crate::settings::Settings {
        crate::settings::Settings::from_toml(toml)
            .unwrap_or_else(|e| panic!("the printed config must load: {e}\n{toml}"))
    }

    #[test]
    fn the_bridges_defaults_become_a_config_edgebus_loads() {
        let toml = to_toml(&vars(&[("MQTT_BROKER", "broker.example")])).unwrap();
        let s = load(&toml);
        assert_eq!(s.mqtt.url.host, "broker.example");
        assert_eq!(s.mqtt.url.port, 8883);
        assert!(s.mqtt.url.tls);
        assert_eq!(s.mqtt.topic_strings(), vec!["devices/+/metrics"]);
        assert_eq!(s.registry.active_window.as_secs(), 30);
        assert_eq!(s.alerts.rules[0].above, Some(90.0));
        let ew = &s.compat.edgewatch;
        assert!(ew.enabled && ew.lax_frames && !ew.device_id_from_payload);
        assert_eq!(ew.bind, "0.0.0.0:6789".parse().unwrap());
        assert!(ew.token.is_empty());
        assert!(toml.contains("RUST_LOG=info"), "{toml}");
    }

    #[test]
    fn every_variable_lands_on_its_edgebus_setting() {
        let toml = to_toml(&vars(&[
            ("mqtt_broker", "10.0.0.5"),
            ("MQTT_PORT", "1883"),
            ("TOPIC", "devices/+/metrics"),
            ("CA_CERT", "/etc/ca.pem"),
            ("CLIENT_CERT", "/etc/c.pem"),
            ("CLIENT_KEY", "/etc/k.pem"),
            ("MQTT_BACKOFF_MIN", "2"),
            ("MQTT_BACKOFF_MAX", "1_0"),
            ("WS_HOST", "127.0.0.1"),
            ("WS_PORT", "7000"),
            ("WS_AUTH_TOKEN", "t\"o\\k"),
            ("PRUNE_SECONDS", "45"),
            ("CPU_ALERT_TH", "85.5"),
            ("SLACK_WEBHOOK_URL", "https://hooks.example/x"),
            ("SUMMARY_INTERVAL", "120"),
            ("MAX_PAYLOAD_BYTES", "4096"),
            ("MAX_DEVICES", "50"),
            ("ALERT_COOLDOWN", "0"),
            ("LOG_LEVEL", "warning"),
        ]))
        .unwrap();
        let s = load(&toml);
        assert_eq!(s.mqtt.url.host, "10.0.0.5");
        assert_eq!(s.mqtt.url.port, 1883);
        assert!(s.mqtt.url.tls);
        assert_eq!(s.mqtt.backoff_min.as_secs(), 2);
        assert_eq!(s.mqtt.backoff_max.as_secs(), 10);
        assert_eq!(s.mqtt.max_payload_bytes, 4096);
        assert_eq!(s.registry.active_window.as_secs(), 45);
        assert_eq!(s.registry.max_devices, 50);
        assert_eq!(s.alerts.rules[0].above, Some(85.5));
        assert_eq!(s.slack.summary_interval.as_secs(), 120);
        assert_eq!(s.slack.webhook_url.expose(), "https://hooks.example/x");
        let ew = &s.compat.edgewatch;
        assert_eq!(ew.bind, "127.0.0.1:7000".parse().unwrap());
        assert_eq!(ew.token.expose(), "t\"o\\k");
        assert!(toml.contains("ca_cert = \"/etc/ca.pem\""), "{toml}");
        assert!(toml.contains("client_key = \"/etc/k.pem\""), "{toml}");
        assert!(toml.contains("RUST_LOG=warn"), "{toml}");
    }

    #[test]
    fn values_the_bridge_refused_name_their_variable() {
        for (var, value) in [
            ("MQTT_PORT", "abc"),
            ("MQTT_PORT", "0"),
            ("MQTT_PORT", "70000"),
            ("WS_PORT", "6789.5"),
            ("CPU_ALERT_TH", "200"),
            ("CPU_ALERT_TH", "nan"),
            ("PRUNE_SECONDS", "-1"),
            ("SUMMARY_INTERVAL", "0"),
            ("MAX_PAYLOAD_BYTES", "10"),
            ("MAX_DEVICES", "0"),
            ("ALERT_COOLDOWN", "-5"),
            ("MQTT_BACKOFF_MIN", "0"),
            ("LOG_LEVEL", "LOUD"),
            ("WS_HOST", "dashboards.example"),
            ("TOPIC", "a/#/b"),
        ] {
            let err = to_toml(&vars(&[("MQTT_BROKER", "b"), (var, value)])).unwrap_err();
            assert_eq!(err.var, var, "{value}: {err}");
            assert!(err.to_string().starts_with(&format!("`{var}`")), "{err}");
        }
        assert_eq!(to_toml(&vars(&[])).unwrap_err().var, "MQTT_BROKER");
        let err = to_toml(&vars(&[
            ("MQTT_BROKER", "b"),
            ("MQTT_BACKOFF_MIN", "30"),
            ("MQTT_BACKOFF_MAX", "10"),
        ]))
        .unwrap_err();
        assert_eq!(err.var, "MQTT_BACKOFF_MAX");
    }

    #[test]
    fn edge_values_keep_the_bridges_meaning() {
        let toml = to_toml(&vars(&[
            ("MQTT_BROKER", "::1"),
            ("PRUNE_SECONDS", "0"),
            ("WS_HOST", ""),
            ("CLIENT_CERT", "/c.pem"),
        ]))
        .unwrap();
        let s = load(&toml);
        assert_eq!(s.mqtt.url.host, "::1");
        assert_eq!(s.registry.active_window.as_secs(), 1);
        assert_eq!(s.compat.edgewatch.bind, "0.0.0.0:6789".parse().unwrap());
        assert!(
            s.mqtt.client_cert.is_empty(),
            "a lone CLIENT_CERT was ignored"
        );
        assert!(toml.contains("only one is set"), "{toml}");
    }

    #[test]
    fn dotenv_lines_read_as_python_dotenv_reads_them() {
        let env: HashMap<&str, &str> = [("HOME_BROKER", "from-env")].into_iter().collect();
        let text = "# comment\n\
                    export MQTT_BROKER=broker.local  # inline\n\
                    WS_AUTH_TOKEN='lit#eral ${X}'\n\
                    SLACK_WEBHOOK_URL=\"https://h/\\\"q\\\"\"\n\
                    A=${HOME_BROKER}\n\
                    B=${MQTT_BROKER}:${NOPE:-1883}\n\
                    novalue\n\
                    \n";
        let parsed: HashMap<String, String> = parse_dotenv(text, &env).into_iter().collect();
        assert_eq!(parsed["MQTT_BROKER"], "broker.local");
        assert_eq!(parsed["WS_AUTH_TOKEN"], "lit#eral ${X}");
        assert_eq!(parsed["SLACK_WEBHOOK_URL"], "https://h/\"q\"");
        assert_eq!(parsed["A"], "from-env");
        assert_eq!(parsed["B"], "broker.local:1883");
        assert_eq!(parsed.len(), 5);
    }

    #[test]
    fn the_environment_wins_over_the_file_whatever_the_case() {
        let dir = std::env::temp_dir().join(format!("edgebus-import-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bridge.env");
        std::fs::write(&path, "MQTT_BROKER=file\nws_port=7001\n").unwrap();
        let vars = read_vars(Some(&path), [("mqtt_broker".to_owned(), "env".to_owned())]).unwrap();
        assert_eq!(vars["mqtt_broker"], "env");
        assert_eq!(vars["ws_port"], "7001");
        assert!(read_vars(Some(&dir.join("missing.env")), []).is_err());
    }
}
