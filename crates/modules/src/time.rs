//! `time`: XEP-0202 Entity Time (Prosody's `mod_time`), and the XEP-0082 DateTime formatter
//! other modules reuse (delay stamps, archives).

use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use canto_core::{IqHandler, IqRequest, IqTarget, Module, ModuleCtx, Spec};
use canto_stanza::{IqType, StanzaError, ns};
use canto_xml::Element;

use crate::expect_payload;

/// The module.
pub struct Time;

const SPECS: &[Spec] = &[
    Spec {
        id: "XEP-0202",
        version: "2.0",
        title: "Entity Time",
    },
    Spec {
        id: "XEP-0082",
        version: "1.1.1",
        title: "XMPP Date and Time Profiles",
    },
];

impl Module for Time {
    fn name(&self) -> &'static str {
        "time"
    }

    fn specs(&self) -> &'static [Spec] {
        SPECS
    }

    fn load(&self, ctx: &mut ModuleCtx<'_>) -> Result<(), String> {
        // XEP-0202 §4: support is advertised as the `urn:xmpp:time` disco feature.
        ctx.add_feature(ns::TIME);
        ctx.hook_iq(IqTarget::Host, IqType::Get, ns::TIME, Arc::new(TimeGet))?;
        Ok(())
    }
}

/// Answers `<time xmlns='urn:xmpp:time'/>` gets addressed to the server.
struct TimeGet;

#[async_trait]
impl IqHandler for TimeGet {
    async fn handle(&self, req: IqRequest<'_>) -> Result<Option<Element>, StanzaError> {
        expect_payload(&req, "time")?;
        // XEP-0202 §2: <tzo/> is the offset from UTC in XEP-0082 TZD form and <utc/> the time
        // in UTC as an XEP-0082 DateTime. The server keeps and reports UTC, so the offset is
        // "+00:00" (which also does not reveal where the machine is).
        Ok(Some(
            Element::new("time", ns::TIME)
                .with_child(Element::new("tzo", ns::TIME).with_text("+00:00"))
                .with_child(
                    Element::new("utc", ns::TIME).with_text(xep0082_datetime(SystemTime::now())),
                ),
        ))
    }
}

pub use canto_stanza::datetime::xep0082_datetime;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{HOST, get, result_xml, server};
    use canto_stanza::datetime::civil_from_days;
    use std::time::Duration;
    use std::time::UNIX_EPOCH;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn known_timestamps() {
        assert_eq!(xep0082_datetime(at(0)), "1970-01-01T00:00:00Z");
        assert_eq!(xep0082_datetime(at(951_782_400)), "2000-02-29T00:00:00Z");
        assert_eq!(xep0082_datetime(at(1_700_000_000)), "2023-11-14T22:13:20Z");
        assert_eq!(xep0082_datetime(at(86_399)), "1970-01-01T23:59:59Z");
        assert_eq!(xep0082_datetime(at(951_868_799)), "2000-02-29T23:59:59Z");
        assert_eq!(xep0082_datetime(at(951_868_800)), "2000-03-01T00:00:00Z");
        assert_eq!(xep0082_datetime(at(4_107_542_400)), "2100-03-01T00:00:00Z");
        assert_eq!(
            xep0082_datetime(at(253_402_300_799)),
            "9999-12-31T23:59:59Z"
        );
        // Fractions of a second are dropped.
        assert_eq!(
            xep0082_datetime(at(1_700_000_000) + Duration::from_millis(999)),
            "2023-11-14T22:13:20Z"
        );
    }

    #[test]
    fn before_the_epoch() {
        let before = |d: Duration| UNIX_EPOCH.checked_sub(d).unwrap_or(UNIX_EPOCH);
        assert_eq!(
            xep0082_datetime(before(Duration::from_secs(1))),
            "1969-12-31T23:59:59Z"
        );
        assert_eq!(
            xep0082_datetime(before(Duration::from_millis(500))),
            "1969-12-31T23:59:59Z"
        );
        // 1900 was not a leap year: 1900-02-28 is followed by 1900-03-01.
        assert_eq!(
            xep0082_datetime(before(Duration::from_secs(2_203_891_200))),
            "1900-03-01T00:00:00Z"
        );
    }

    /// Walks day by day from 1970 in both directions, checking every date against a naive
    /// calendar.
    #[test]
    fn every_day_for_four_hundred_years_each_way() {
        fn leap(y: i64) -> bool {
            (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
        }
        fn month_len(y: i64, m: i64) -> i64 {
            match m {
                2 if leap(y) => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            }
        }
        let span = 146_097;
        let (mut y, mut m, mut d) = (1970, 1, 1);
        for days in 0..=span {
            assert_eq!(civil_from_days(days), (y, m, d), "day {days}");
            d += 1;
            if d > month_len(y, m) {
                d = 1;
                m += 1;
                if m > 12 {
                    m = 1;
                    y += 1;
                }
            }
        }
        let (mut y, mut m, mut d) = (1970, 1, 1);
        for days in (-span..=0).rev() {
            assert_eq!(civil_from_days(days), (y, m, d), "day {days}");
            d -= 1;
            if d == 0 {
                m -= 1;
                if m == 0 {
                    m = 12;
                    y -= 1;
                }
                d = month_len(y, m);
            }
        }
    }

    /// Days from 1970-01-01 to a date, by counting whole years and months: the inverse used to
    /// read a timestamp back.
    fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
        let leap = |y: i64| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
        let mut days = 0;
        for year in 1970..y {
            days += if leap(year) { 366 } else { 365 };
        }
        let lengths = [
            31,
            if leap(y) { 29 } else { 28 },
            31,
            30,
            31,
            30,
            31,
            31,
            30,
            31,
            30,
            31,
        ];
        for len in lengths.iter().take(usize::try_from(m - 1).unwrap_or(0)) {
            days += len;
        }
        days + d - 1
    }

    /// Parses `CCYY-MM-DDThh:mm:ssZ` into seconds since the epoch.
    fn parse_datetime(s: &str) -> Option<i64> {
        let b = s.as_bytes();
        if b.len() != 20
            || b[4] != b'-'
            || b[7] != b'-'
            || b[10] != b'T'
            || b[13] != b':'
            || b[16] != b':'
            || b[19] != b'Z'
        {
            return None;
        }
        let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
        let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
        let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
        if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 59 {
            return None;
        }
        Some(days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + sec)
    }

    #[test]
    fn formatted_timestamps_parse_back() {
        for secs in [
            0,
            59,
            951_782_400,
            1_700_000_000,
            1_709_251_199,
            4_102_444_800,
        ] {
            assert_eq!(
                parse_datetime(&xep0082_datetime(at(secs))),
                i64::try_from(secs).ok()
            );
        }
    }

    fn now_secs() -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .ok()
            .and_then(|d| i64::try_from(d.as_secs()).ok())
            .unwrap_or(0)
    }

    #[tokio::test]
    async fn time_answers_utc_now() {
        let s = server(&["time"]).await;
        let before = now_secs();
        let got = get(
            &s,
            IqTarget::Host,
            "alice@example.test/a",
            HOST,
            Element::new("time", ns::TIME),
        )
        .await;
        let after = now_secs();
        let Some(Ok(Some(el))) = got else {
            panic!("{}", result_xml(got));
        };
        assert!(el.is("time", ns::TIME));
        let names: Vec<&str> = el.children().map(|c| c.name()).collect();
        assert_eq!(names, ["tzo", "utc"]);
        assert_eq!(
            el.get_child("tzo", ns::TIME).map(|e| e.text()).as_deref(),
            Some("+00:00")
        );
        let utc = el
            .get_child("utc", ns::TIME)
            .map(|e| e.text())
            .unwrap_or_default();
        let parsed = parse_datetime(&utc);
        assert!(
            parsed.is_some_and(|t| (before..=after).contains(&t)),
            "{utc} not within {before}..={after}"
        );
    }

    #[tokio::test]
    async fn time_feature_and_no_set() {
        let s = server(&["time"]).await;
        assert_eq!(s.modules().features(), [ns::TIME.to_string()]);
        assert!(
            s.modules()
                .iq_handler(IqTarget::Host, IqType::Set, ns::TIME)
                .is_none()
        );
    }
}
