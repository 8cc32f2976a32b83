//! Aligned text tables for the CLI.

/// Render rows under headers, columns padded to their widest cell.
pub fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        out.trim_end().to_string()
    };
    let mut out = line(headers.to_vec());
    out.push('\n');
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
        out.push('\n');
    }
    out
}

/// A time in milliseconds since the epoch (as the API gives them), for people: relative
/// to `now_ms` within a week ("in 59m", "3m ago", "2d 4h ago"), else a UTC date-time.
/// (UTC, not local time: asking the system for the local offset is not sound in a
/// multi-threaded process, and a labelled UTC time cannot be misread.)
pub fn when(ms: u64, now_ms: u64) -> String {
    const WEEK_MS: u64 = 7 * 24 * 3600 * 1000;
    let (ahead, delta) = if ms >= now_ms {
        (true, ms - now_ms)
    } else {
        (false, now_ms - ms)
    };
    if delta >= WEEK_MS {
        return utc(ms);
    }
    let secs = delta / 1000;
    let span = match secs {
        0 => return "now".to_string(),
        1..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m", secs / 60),
        3600..=86_399 => two_units(secs / 3600, "h", secs % 3600 / 60, "m"),
        _ => two_units(secs / 86_400, "d", secs % 86_400 / 3600, "h"),
    };
    if ahead {
        format!("in {span}")
    } else {
        format!("{span} ago")
    }
}

fn two_units(big: u64, big_unit: &str, small: u64, small_unit: &str) -> String {
    if small == 0 {
        format!("{big}{big_unit}")
    } else {
        format!("{big}{big_unit} {small}{small_unit}")
    }
}

/// `2026-12-01 14:03 UTC`.
fn utc(ms: u64) -> String {
    let secs = i64::try_from(ms / 1000).unwrap_or(i64::MAX);
    match time::OffsetDateTime::from_unix_timestamp(secs) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02} UTC",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute()
        ),
        Err(_) => format!("{ms} ms"),
    }
}

/// A JSON time in milliseconds for a table cell: [`when`] now, `none` when absent
/// (`null`), the value as it is when it is not a number.
pub fn when_value(v: &serde_json::Value, none: &str) -> String {
    match v {
        serde_json::Value::Null => none.to_string(),
        v => match v.as_u64() {
            Some(ms) => when(ms, glory_protocol::now_ms()),
            None => v.to_string(),
        },
    }
}

/// Whether `text` holds a run of 13 digits: a raw epoch time in milliseconds, which
/// tables must not show.
pub fn has_raw_epoch_ms(text: &str) -> bool {
    text.split(|c: char| !c.is_ascii_digit())
        .any(|run| run.len() == 13)
}

#[cfg(test)]
mod tests {
    use super::when;

    const NOW: u64 = 1_796_290_015_859;

    #[test]
    fn times_read_as_relative_spans_or_utc_dates() {
        assert_eq!(when(NOW, NOW), "now");
        assert_eq!(when(NOW + 59 * 60_000 + 59_000, NOW), "in 59m");
        assert_eq!(when(NOW - 3 * 60_000 - 10_000, NOW), "3m ago");
        assert_eq!(when(NOW - 42_000, NOW), "42s ago");
        assert_eq!(when(NOW + 3_600_000, NOW), "in 1h");
        assert_eq!(when(NOW + 2 * 3_600_000 + 5 * 60_000, NOW), "in 2h 5m");
        assert_eq!(when(NOW - (2 * 24 + 4) * 3_600_000, NOW), "2d 4h ago");
        // A week or more away: the date (NOW is 2026-12-03 09:26:55 UTC).
        assert_eq!(when(NOW + 30 * 86_400_000, NOW), "2027-01-02 09:26 UTC");
        assert_eq!(when(0, NOW), "1970-01-01 00:00 UTC");
        assert!(!super::has_raw_epoch_ms(&when(NOW, NOW)));
    }

    #[test]
    fn raw_epoch_milliseconds_are_spotted() {
        assert!(super::has_raw_epoch_ms("expires_ms 1796290015859"));
        assert!(!super::has_raw_epoch_ms(
            "in 59m  2026-12-31 15:26 UTC  n-1a2b3c4d5e6f"
        ));
    }

    #[test]
    fn columns_line_up() {
        let out = super::render(
            &["ID", "STATE"],
            &[
                vec!["n-1".into(), "up".into()],
                vec!["n-long".into(), "down".into()],
            ],
        );
        assert_eq!(out, "ID      STATE\nn-1     up\nn-long  down\n");
    }
}
