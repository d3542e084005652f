//! Process logs on stderr as hclog JSON lines, which the host reads and
//! keeps for failure reports:
//! `{"@level":"info","@message":"…","@module":"plugin","@timestamp":"…"}`.
//! `@message` is always a string.
//!
//! Stage code usually logs through [`RunContext::info`](crate::RunContext::info)
//! and friends instead, which attributes lines to the stage in the run log.

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

/// Writes one hclog JSON line at `level` ("trace", "debug", "info", "warn",
/// "error") to stderr.
pub fn write(level: &str, message: &str) {
    let line = format_line(level, message, SystemTime::now());
    // One write call per line, so lines from several threads stay whole.
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

pub fn info(message: &str) {
    write("info", message);
}
pub fn warn(message: &str) {
    write("warn", message);
}
pub fn error(message: &str) {
    write("error", message);
}
pub fn debug(message: &str) {
    write("debug", message);
}

pub(crate) fn format_line(level: &str, message: &str, now: SystemTime) -> String {
    let mut s = String::with_capacity(message.len() + 96);
    s.push_str("{\"@level\":");
    json_string(&mut s, level);
    s.push_str(",\"@message\":");
    json_string(&mut s, message);
    s.push_str(",\"@module\":\"plugin\",\"@timestamp\":");
    json_string(&mut s, &timestamp(now));
    s.push_str("}\n");
    s
}

/// Appends `v` as a JSON string literal.
pub(crate) fn json_string(out: &mut String, v: &str) {
    out.push('"');
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{2028}' || c == '\u{2029}' => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// RFC 3339 with microseconds in UTC, hclog's layout: 2006-01-02T15:04:05.000000Z.
fn timestamp(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, day) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_micros()
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_utc_rfc3339() {
        let t = UNIX_EPOCH + Duration::from_micros(951_782_400_123_456); // 2000-02-29
        assert_eq!(timestamp(t), "2000-02-29T00:00:00.123456Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(timestamp(t), "2023-11-14T22:13:20.000000Z");
    }

    #[test]
    fn lines_are_json_with_a_string_message() {
        let line = format_line("warn", "a \"quoted\"\nline\u{1}", UNIX_EPOCH);
        let v: serde_json::Value = serde_json::from_str(line.trim_end()).unwrap();
        assert_eq!(v["@level"], "warn");
        assert_eq!(v["@message"], "a \"quoted\"\nline\u{1}");
        assert_eq!(v["@timestamp"], "1970-01-01T00:00:00.000000Z");
        assert!(line.ends_with("}\n") && line.matches('\n').count() == 1);
    }
}
