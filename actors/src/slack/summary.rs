//! The periodic fleet summary: a readable table of the active devices, as the
//! seed bridge posted it, capped so a large fleet stays within Slack's
//! message size ("…and N more"). Pure.

use std::fmt::Write as _;

use crate::devices::DeviceView;

/// Summary text budget, below Slack's 40,000-character truncation with room
/// for escaping.
pub const MAX_SUMMARY_CHARS: usize = 30_000;

/// `None` when there is no active device: no summary is sent then.
pub fn render_summary(devices: &[DeviceView], max_chars: usize) -> Option<String> {
    if devices.is_empty() {
        return None;
    }
    let width = devices
        .iter()
        .map(|d| d.device_id.as_str().len())
        .max()
        .unwrap_or(0)
        .clamp(6, 64);
    let noun = if devices.len() == 1 {
        "device"
    } else {
        "devices"
    };
    let mut text = format!(
        ":bar_chart: Metrics summary: {} active {noun}\n```\n{:<width$}  {:>6}  {:>6}  {:>6}  {:>6}\n",
        devices.len(),
        "DEVICE",
        "CPU",
        "RAM",
        "DISK",
        "GPU",
    );
    let closing = "```";
    let mut row = String::new();
    for (i, d) in devices.iter().enumerate() {
        let m = &d.metrics;
        row.clear();
        let gpu = m.gpu_percent.map_or_else(|| "-".to_owned(), percent);
        let _ = writeln!(
            row,
            "{:<width$}  {:>6}  {:>6}  {:>6}  {:>6}",
            d.device_id.as_str(),
            percent(m.cpu_percent),
            percent(m.mem_percent),
            percent(m.disk_percent),
            gpu,
        );
        let left = devices.len() - i;
        // Keep room for the "…and N more" line and the closing fence.
        let tail = format!("…and {left} more\n").len() + closing.len();
        if text.len() + row.len() + tail > max_chars {
            let _ = writeln!(text, "…and {left} more");
            break;
        }
        text.push_str(&row);
    }
    text.push_str(closing);
    Some(text)
}

fn percent(v: f64) -> String {
    format!("{v:.1}%")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::MetricsFrame;

    fn view(id: &str, cpu: f64, gpu: Option<f64>) -> DeviceView {
        let gpu = gpu
            .map(|g| format!(r#","gpu_percent":{g}"#))
            .unwrap_or_default();
        let json = format!(
            r#"{{"device_id":"{id}","timestamp":1,"cpu_percent":{cpu},"mem_percent":40,"disk_percent":70.25{gpu}}}"#
        );
        let metrics = MetricsFrame::parse(id, json.as_bytes(), 4096).unwrap();
        DeviceView {
            device_id: metrics.device_id.clone(),
            last_seen: 0,
            active: true,
            metrics,
        }
    }

    #[test]
    fn no_active_device_means_no_summary() {
        assert_eq!(render_summary(&[], MAX_SUMMARY_CHARS), None);
    }

    #[test]
    fn the_summary_is_an_aligned_table() {
        let text = render_summary(
            &[view("d1", 12.5, None), view("gpu-box-7", 99.0, Some(33.3))],
            MAX_SUMMARY_CHARS,
        )
        .unwrap();
        let expected = "\
:bar_chart: Metrics summary: 2 active devices
```
DEVICE        CPU     RAM    DISK     GPU
d1          12.5%   40.0%   70.2%       -
gpu-box-7   99.0%   40.0%   70.2%   33.3%
```";
        assert_eq!(text, expected);
    }

    #[test]
    fn a_large_fleet_is_cut_with_a_count_of_the_rest() {
        let devices: Vec<DeviceView> = (0..5_000)
            .map(|i| view(&format!("device-{i:05}"), 50.0, None))
            .collect();
        let text = render_summary(&devices, MAX_SUMMARY_CHARS).unwrap();
        assert!(text.len() <= MAX_SUMMARY_CHARS, "{}", text.len());
        assert!(text.ends_with("```"));
        let more = text
            .lines()
            .find_map(|l| l.strip_prefix("…and ")?.strip_suffix(" more"))
            .unwrap();
        let shown = text.lines().filter(|l| l.starts_with("device-")).count();
        assert_eq!(shown + more.parse::<usize>().unwrap(), 5_000);
    }
}
