use super::*;
use crate::degradation::trace::SplitMix64;
use proptest::prelude::*;

/// Fixtures; where each comes from is in tests/fixtures/promtext/SOURCE.
const DOCS_EXAMPLE: &str = include_str!("../../tests/fixtures/promtext/prometheus_docs_example.txt");
const TRAIN_004: &str = include_str!("../../tests/fixtures/promtext/train_prometheus_client_0.0.4.txt");
const TRAIN_OM: &str = include_str!("../../tests/fixtures/promtext/train_prometheus_client_openmetrics.txt");

fn sample(name: &str, labels: &[(&str, &str)], value: f64, timestamp_ms: Option<i64>) -> Sample {
    Sample {
        name: name.into(),
        labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        value,
        timestamp_ms,
    }
}

fn one(text: &str) -> Sample {
    let expo = parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
    assert_eq!(expo.samples.len(), 1, "{text:?}");
    expo.samples.into_iter().next().unwrap()
}

fn err(text: &str) -> PromTextError {
    match parse(text) {
        Ok(expo) => panic!("{text:?} parsed: {expo:?}"),
        Err(e) => e,
    }
}

fn values<'a>(expo: &'a Exposition, name: &'a str) -> impl Iterator<Item = f64> + 'a {
    expo.samples.iter().filter(move |s| s.name == name).map(|s| s.value)
}

// ---- the public fixtures ----

#[test]
fn docs_example_as_published_stops_at_the_line_without_a_value() {
    let line = DOCS_EXAMPLE.lines().position(|l| l.starts_with("{\"my.dotted.metric\"")).unwrap() + 1;
    assert_eq!(line, 10);
    let e = err(DOCS_EXAMPLE);
    assert_eq!(e, PromTextError::MissingValue { line, name: "my.dotted.metric".into() });
    assert_eq!(e.line(), Some(10));
    assert!(e.to_string().starts_with("line 10: "), "{e}");
}

#[test]
fn docs_example_parses_with_that_line_given_a_value() {
    let text = DOCS_EXAMPLE.replace(
        "{\"my.dotted.metric\", \"error.message\"=\"Not Found\"}\n",
        "{\"my.dotted.metric\", \"error.message\"=\"Not Found\"} 1\n",
    );
    let expo = parse(&text).unwrap();
    assert_eq!(expo.samples.len(), 2 + 1 + 1 + 1 + 1 + 8 + 7);
    assert_eq!(expo.types.get("http_requests_total"), Some(&MetricType::Counter));
    assert_eq!(expo.types.get("http_request_duration_seconds"), Some(&MetricType::Histogram));
    assert_eq!(expo.types.get("rpc_duration_seconds"), Some(&MetricType::Summary));
    assert_eq!(expo.types.len(), 3);
    assert_eq!(
        expo.samples[0],
        sample("http_requests_total", &[("method", "post"), ("code", "200")], 1027.0, Some(1395066363000))
    );
    assert_eq!(expo.samples[1].value, 3.0);
    assert_eq!(
        expo.samples[2],
        sample(
            "msdos_file_access_time_seconds",
            &[("path", r"C:\DIR\FILE.TXT"), ("error", "Cannot find file:\n\"FILE.TXT\"")],
            1.458255915e9,
            None
        )
    );
    assert_eq!(expo.samples[3], sample("my.dotted.metric", &[("error.message", "Not Found")], 1.0, None));
    assert_eq!(expo.samples[4], sample("metric_without_timestamp_and_labels", &[], 12.47, None));
    assert_eq!(
        expo.samples[5],
        sample("something_weird", &[("problem", "division by zero")], f64::INFINITY, Some(-3982045))
    );
    assert_eq!(expo.samples[6].labels, vec![("le".to_string(), "0.05".to_string())]);
    assert_eq!(values(&expo, "rpc_duration_seconds_sum").collect::<Vec<_>>(), vec![1.7560473e7]);

    assert_eq!(
        step_reading(&expo, "http_request_duration_seconds"),
        Ok(StepReading::Durations { count: 144320.0, sum_seconds: 53423.0 })
    );
    assert_eq!(
        step_reading(&expo, "rpc_duration_seconds"),
        Ok(StepReading::Durations { count: 2693.0, sum_seconds: 1.7560473e7 })
    );
    // A counter by either name, summed over its two label sets.
    assert_eq!(step_reading(&expo, "http_requests_total"), Ok(StepReading::Steps { count: 1030.0 }));
    assert_eq!(step_reading(&expo, "http_requests"), Ok(StepReading::Steps { count: 1030.0 }));
    // Untyped, a single value: it could be a gauge.
    assert_eq!(
        step_reading(&expo, "metric_without_timestamp_and_labels"),
        Err(PromTextError::WrongType {
            metric: "metric_without_timestamp_and_labels".into(),
            found: MetricType::Unknown
        })
    );
}

#[test]
fn prometheus_client_text_004() {
    let expo = parse(TRAIN_004).unwrap();
    assert_eq!(expo.types.get("train_step_seconds"), Some(&MetricType::Histogram));
    assert_eq!(expo.types.get("train_steps_total"), Some(&MetricType::Counter));
    assert_eq!(expo.types.get("train_steps_created"), Some(&MetricType::Gauge));
    assert_eq!(expo.types.get("data_load_seconds"), Some(&MetricType::Summary));
    assert_eq!(expo.types.get("python_info"), Some(&MetricType::Gauge));
    let info = expo.samples.iter().find(|s| s.name == "python_info").unwrap();
    assert_eq!(info.labels.len(), 5);
    assert_eq!(values(&expo, "train_step_seconds_bucket").count(), 9);
    assert!(expo.samples.iter().all(|s| s.timestamp_ms.is_none()));

    let Ok(StepReading::Durations { count, sum_seconds }) = step_reading(&expo, "train_step_seconds") else {
        panic!("{:?}", step_reading(&expo, "train_step_seconds"));
    };
    assert_eq!(count, 1200.0);
    assert!((sum_seconds - 499.62104430708996).abs() < 1e-9);
    assert!(matches!(
        step_reading(&expo, "data_load_seconds"),
        Ok(StepReading::Durations { count: 1200.0, .. })
    ));
    // 0.0.4 from prometheus_client types the counter as `train_steps_total`; both names work,
    // and `train_steps_created` is not counted.
    assert_eq!(step_reading(&expo, "train_steps"), Ok(StepReading::Steps { count: 1200.0 }));
    assert_eq!(step_reading(&expo, "train_steps_total"), Ok(StepReading::Steps { count: 1200.0 }));
    assert_eq!(step_reading(&expo, "train_tokens"), Ok(StepReading::Steps { count: 2.0 * 2.4576e6 }));
    let e = step_reading(&expo, "train_loss").unwrap_err();
    assert_eq!(e, PromTextError::WrongType { metric: "train_loss".into(), found: MetricType::Gauge });
    assert!(e.to_string().contains("a histogram or summary of step seconds, or a counter of steps"), "{e}");
    let e = step_reading(&expo, "train_step_time").unwrap_err();
    assert_eq!(e, PromTextError::MetricAbsent { metric: "train_step_time".into() });
    assert!(e.to_string().contains("a histogram or summary of step seconds, or a counter of steps"), "{e}");
}

#[test]
fn prometheus_client_openmetrics() {
    assert_eq!(last_line(TRAIN_OM), "# EOF");
    let expo = parse(TRAIN_OM).unwrap();
    assert_eq!(expo.types.get("train_steps"), Some(&MetricType::Counter));
    assert_eq!(expo.types.get("python_gc_objects_collected"), Some(&MetricType::Counter));
    // The bucket with an exemplar keeps its value; the exemplar is skipped.
    let bucket = expo
        .samples
        .iter()
        .find(|s| s.name == "train_step_seconds_bucket" && s.labels[0].1 == "0.5")
        .unwrap();
    assert_eq!(bucket.value, 976.0);
    assert_eq!(bucket.timestamp_ms, None);
    assert_eq!(bucket.labels.len(), 1);
    assert_eq!(values(&expo, "train_step_seconds_created").count(), 1);

    assert!(matches!(
        step_reading(&expo, "train_step_seconds"),
        Ok(StepReading::Durations { count: 1200.0, .. })
    ));
    assert_eq!(step_reading(&expo, "train_steps"), Ok(StepReading::Steps { count: 1200.0 }));
    assert_eq!(step_reading(&expo, "train_steps_total"), Ok(StepReading::Steps { count: 1200.0 }));
    assert_eq!(step_reading(&expo, "train_tokens_total"), Ok(StepReading::Steps { count: 2.0 * 2.4576e6 }));

    // The two formats carry the same samples (bar the process metrics sampled at each call).
    let a = parse(TRAIN_004).unwrap();
    let names = |e: &Exposition| {
        let mut v: Vec<String> = e.samples.iter().map(|s| s.name.clone()).collect();
        v.sort();
        v
    };
    assert_eq!(names(&a), names(&expo));
}

// ---- lines and tokens ----

#[test]
fn comments_blank_lines_and_crlf() {
    let text = "# just a comment\r\n\r\n  # HELP foo Some help, with # and \\\\ and \\n.\r\n\
                # TYPE foo gauge\r\n# UNIT foo seconds\r\n#\r\n  \t \r\nfoo 1\r\n";
    let expo = parse(text).unwrap();
    assert_eq!(expo.samples, vec![sample("foo", &[], 1.0, None)]);
    assert_eq!(expo.types.get("foo"), Some(&MetricType::Gauge));
    assert_eq!(parse("").unwrap(), Exposition::default());
    assert_eq!(parse("\n\n").unwrap(), Exposition::default());
    // No final newline.
    assert_eq!(one("foo 2").value, 2.0);
}

#[test]
fn every_type_keyword() {
    let text = "# TYPE a counter\n# TYPE b gauge\n# TYPE c histogram\n# TYPE d gaugehistogram\n\
                # TYPE e summary\n# TYPE f info\n# TYPE g stateset\n# TYPE h unknown\n# TYPE i untyped\n\
                # TYPE j\tcounter \n";
    let expo = parse(text).unwrap();
    let got: Vec<MetricType> = expo.types.values().copied().collect();
    use MetricType::*;
    assert_eq!(
        got,
        vec![Counter, Gauge, Histogram, GaugeHistogram, Summary, Info, StateSet, Unknown, Unknown, Counter]
    );
    // The same type twice is fine; a different one is not.
    assert!(parse("# TYPE a counter\n# TYPE a counter\n").is_ok());
    let e = err("# TYPE a counter\n\n# TYPE a gauge\n");
    assert_eq!(e.line(), Some(3));
    assert!(e.to_string().contains("earlier line typed counter"), "{e}");
}

#[test]
fn bad_comment_lines() {
    assert_eq!(
        err("foo 1\n# TYPE foo bogus\n"),
        PromTextError::InvalidType { line: 2, word: "bogus".into() }
    );
    assert_eq!(err("# TYPE Counter\n").line(), Some(1)); // no type word
    assert_eq!(err("# TYPE foo counter extra\n").line(), Some(1));
    assert_eq!(err("# HELP\n").line(), Some(1));
    assert_eq!(
        err("# TYPE 1foo counter\n"),
        PromTextError::InvalidMetricName { line: 1, name: "1foo".into() }
    );
    assert_eq!(err("# HELP foo-bar help\n").line(), Some(1));
    assert_eq!(err("# UNIT \"foo\n"), PromTextError::UnterminatedQuote { line: 1 });
    // Quoted names on TYPE lines.
    let expo = parse("# TYPE \"my metric\" counter\n{\"my metric\"} 3\n").unwrap();
    assert_eq!(expo.types.get("my metric"), Some(&MetricType::Counter));
    assert_eq!(step_reading(&expo, "my metric"), Ok(StepReading::Steps { count: 3.0 }));
    // Lower-case keywords and other words are comments.
    assert!(parse("# type foo bogus\n# help\n#TYPEfoo\n").unwrap().types.is_empty());
}

#[test]
fn label_escapes_and_awkward_values() {
    let s = one(r#"m{a="x\"y",b="back\\slash",c="new\nline",d="a,b}c=d",e="",f="\t\q"} 1"#);
    assert_eq!(
        s.labels,
        vec![
            ("a".into(), "x\"y".into()),
            ("b".into(), "back\\slash".into()),
            ("c".into(), "new\nline".into()),
            ("d".into(), "a,b}c=d".into()),
            ("e".into(), "".into()),
            ("f".into(), "\\t\\q".into()),
        ]
    );
    // Trailing comma, blanks around tokens, an empty set.
    assert_eq!(one("m{ a = \"1\" , b=\"2\", } 5").labels.len(), 2);
    assert_eq!(one("m{} 5").labels, vec![]);
    // A trailing comma needs a label before it.
    assert_eq!(err("m{,} 5"), PromTextError::InvalidLabelName { line: 1, name: "".into() });
    assert_eq!(one("m{a=\"#\"} 5 # {trace=\"x\"} 1").labels[0].1, "#");
    assert_eq!(one("m{a=\"ünï\u{1F600}\"} 5").labels[0].1, "ünï\u{1F600}");
    assert_eq!(one("a:b_c:d 5").name, "a:b_c:d");
    assert_eq!(one("m{\"quoted.label\"=\"v\"} 5").labels[0].0, "quoted.label");
}

#[test]
fn sample_values() {
    assert!(one("m NaN").value.is_nan());
    assert_eq!(one("m +Inf").value, f64::INFINITY);
    assert_eq!(one("m -Inf").value, f64::NEG_INFINITY);
    assert_eq!(one("m Inf").value, f64::INFINITY);
    assert_eq!(one("m 1.5e-3").value, 1.5e-3);
    assert_eq!(one("m -2E+2").value, -200.0);
    assert_eq!(one("m .5").value, 0.5);
    assert_eq!(one("m 0").value, 0.0);
    assert_eq!(one("m\t\t7").value, 7.0);
    assert_eq!(err("m abc"), PromTextError::InvalidValue { line: 1, value: "abc".into() });
    assert_eq!(err("m 1,5"), PromTextError::InvalidValue { line: 1, value: "1,5".into() });
    assert_eq!(err("m 0x10").line(), Some(1));
}

#[test]
fn timestamps() {
    // 0.0.4: integer milliseconds.
    assert_eq!(one("m 1 1395066363000").timestamp_ms, Some(1395066363000));
    assert_eq!(one("m 1 -5").timestamp_ms, Some(-5));
    // A fraction or exponent means seconds, in either format.
    assert_eq!(one("m 1 1520879607.789").timestamp_ms, Some(1520879607789));
    assert_eq!(one("m 1 1.5e9").timestamp_ms, Some(1_500_000_000_000));
    // OpenMetrics (the text ends in # EOF): integers are seconds.
    let expo = parse("m 1 1520879607\nn 2 1520879607.5\n# EOF\n").unwrap();
    assert_eq!(expo.samples[0].timestamp_ms, Some(1520879607000));
    assert_eq!(expo.samples[1].timestamp_ms, Some(1520879607500));
    assert_eq!(err("m 1 12ab"), PromTextError::InvalidTimestamp { line: 1, value: "12ab".into() });
    assert_eq!(err("m 1 NaN").line(), Some(1));
    assert_eq!(err("m 1 1e300").line(), Some(1));
    assert_eq!(err("m 1 99999999999999999999").line(), Some(1));
    assert_eq!(err("m 1 9223372036854775807\n# EOF").line(), Some(1));
    assert_eq!(err("m 1 2 3").line(), Some(1));
}

#[test]
fn exemplars_are_skipped() {
    let text = "# TYPE h histogram\n\
                h_bucket{le=\"1\"} 3 # {trace_id=\"oHg5SJYRHA0\"} 0.5 1520879607.789\n\
                h_bucket{le=\"+Inf\"} 4 1520879608 # {} 9\n\
                h_count 4\nh_sum 5.5\n# EOF\n";
    let expo = parse(text).unwrap();
    assert_eq!(expo.samples[0], sample("h_bucket", &[("le", "1")], 3.0, None));
    assert_eq!(expo.samples[1].timestamp_ms, Some(1520879608000));
    assert_eq!(step_reading(&expo, "h"), Ok(StepReading::Durations { count: 4.0, sum_seconds: 5.5 }));
}

#[test]
fn eof_ends_the_text() {
    assert_eq!(parse("a 1\n# EOF\n\n").unwrap().samples.len(), 1);
    assert_eq!(parse("a 1\n# EOF").unwrap().samples.len(), 1);
    assert_eq!(parse("a 1\r\n# EOF\r\n").unwrap().samples.len(), 1);
    // Blanks between '#' and 'EOF' still mark OpenMetrics text (integer timestamps are seconds).
    assert_eq!(parse("a 1 2\n#EOF\n").unwrap().samples[0].timestamp_ms, Some(2000));
    assert_eq!(parse("a 1 2\n#  EOF \n").unwrap().samples[0].timestamp_ms, Some(2000));
    let e = err("a 1\n# EOF\nb 2\n# EOF\n");
    assert_eq!(e.line(), Some(3));
    assert!(e.to_string().contains("after the '# EOF' on line 2"), "{e}");
}

#[test]
fn rejected_lines_name_their_line() {
    let cases: &[(&str, PromTextError)] = &[
        ("ok 1\nm\n", PromTextError::MissingValue { line: 2, name: "m".into() }),
        ("m{a=\"b\"}\n", PromTextError::MissingValue { line: 1, name: "m".into() }),
        ("m # {a=\"b\"} 1\n", PromTextError::MissingValue { line: 1, name: "m".into() }),
        ("\n\nm{a=\"b\" 1\n", PromTextError::UnterminatedLabelSet { line: 3 }),
        ("m{a=\"b\",\n", PromTextError::UnterminatedLabelSet { line: 1 }),
        ("m{a=\n", PromTextError::UnterminatedLabelSet { line: 1 }),
        ("m{a\n", PromTextError::UnterminatedLabelSet { line: 1 }),
        ("m{a=\"b} 1\n", PromTextError::UnterminatedQuote { line: 1 }),
        ("m{a=\"b\\\"} 1\n", PromTextError::UnterminatedQuote { line: 1 }),
        ("m{a=\"b\\", PromTextError::UnterminatedQuote { line: 1 }),
        ("1m 1\n", PromTextError::InvalidMetricName { line: 1, name: "1m".into() }),
        ("m-x 1\n", PromTextError::InvalidMetricName { line: 1, name: "m-x".into() }),
        ("m.x{} 1\n", PromTextError::InvalidMetricName { line: 1, name: "m.x{}".into() }),
        ("=1 1\n", PromTextError::InvalidMetricName { line: 1, name: "=1".into() }),
        ("m{1a=\"b\"} 1\n", PromTextError::InvalidLabelName { line: 1, name: "1a".into() }),
        ("m{a-b=\"c\"} 1\n", PromTextError::InvalidLabelName { line: 1, name: "a-b".into() }),
        ("m{=\"c\"} 1\n", PromTextError::InvalidLabelName { line: 1, name: "".into() }),
        ("m{\"\"=\"c\"} 1\n", PromTextError::InvalidLabelName { line: 1, name: "".into() }),
        ("m x\n", PromTextError::InvalidValue { line: 1, value: "x".into() }),
    ];
    for (text, want) in cases {
        let got = err(text);
        assert_eq!(&got, want, "{text:?}");
        assert!(got.to_string().starts_with(&format!("line {}: ", want.line().unwrap())), "{got}");
    }
    // Errors without a fixed shape still name the line.
    for (text, line) in [
        ("m{a=b} 1", 1),
        ("m{a=\"1\",a=\"2\"} 1", 1),
        ("m{a=\"1\" b=\"2\"} 1", 1),
        ("m{\"x\"} 1", 1),
        ("{a=\"b\"} 1", 1),
        ("{} 1", 1),
        ("{\"a\", \"b\"} 1", 1),
        ("\n\n\n\nm{a=\"b\"}} 1", 5),
    ] {
        assert_eq!(err(text).line(), Some(line), "{text:?}: {}", err(text));
    }
}

#[test]
fn size_limits() {
    let long = format!("m{{a=\"{}\"}} 1\n", "x".repeat(MAX_LINE_BYTES));
    let e = err(&format!("ok 1\n{long}"));
    assert!(matches!(e, PromTextError::LineTooLong { line: 2, .. }), "{e}");
    // Exactly at the limit is fine (the \r of a CRLF does not count).
    let at = format!("m{{a=\"{}\"}} 1", "x".repeat(MAX_LINE_BYTES - 9));
    assert_eq!(at.len(), MAX_LINE_BYTES);
    assert!(parse(&format!("{at}\r\n")).is_ok());

    let big = "# padding\n".repeat(MAX_TEXT_BYTES / 10 + 1);
    assert_eq!(err(&big), PromTextError::TooLarge { size: big.len(), limit: MAX_TEXT_BYTES });
    assert_eq!(err(&big).line(), None);
}

// ---- step_reading ----

#[test]
fn step_reading_rules() {
    let expo = parse(
        "# TYPE steps counter\nsteps{rank=\"0\"} 10\nsteps{rank=\"1\"} 12\n\
         untyped_hist_count{a=\"1\"} 3\nuntyped_hist_count{a=\"2\"} 4\nuntyped_hist_sum{a=\"1\"} 1.5\n\
         untyped_hist_sum{a=\"2\"} 2\n\
         only_count_count 3\n\
         untyped_total 7\n\
         # TYPE g gauge\ng 1\n\
         # TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\n\
         # TYPE s summary\n\
         # TYPE i info\ni_info{v=\"1\"} 1\n\
         # TYPE gh gaugehistogram\ngh_gcount 1\ngh_gsum 1\n",
    )
    .unwrap();
    // A 0.0.4 counter without the _total suffix, by either name.
    assert_eq!(step_reading(&expo, "steps"), Ok(StepReading::Steps { count: 22.0 }));
    assert_eq!(step_reading(&expo, "steps_total"), Ok(StepReading::Steps { count: 22.0 }));
    assert_eq!(
        step_reading(&expo, "untyped_hist"),
        Ok(StepReading::Durations { count: 7.0, sum_seconds: 3.5 })
    );
    assert_eq!(
        step_reading(&expo, "only_count"),
        Err(PromTextError::WrongType { metric: "only_count".into(), found: MetricType::Unknown })
    );
    assert_eq!(step_reading(&expo, "untyped"), Ok(StepReading::Steps { count: 7.0 }));
    assert_eq!(step_reading(&expo, "untyped_total"), Ok(StepReading::Steps { count: 7.0 }));
    assert_eq!(
        step_reading(&expo, "g"),
        Err(PromTextError::WrongType { metric: "g".into(), found: MetricType::Gauge })
    );
    assert_eq!(
        step_reading(&expo, "h"),
        Err(PromTextError::Incomplete {
            metric: "h".into(),
            found: MetricType::Histogram,
            missing: "h_count".into()
        })
    );
    assert_eq!(
        step_reading(&expo, "s"),
        Err(PromTextError::Incomplete {
            metric: "s".into(),
            found: MetricType::Summary,
            missing: "s_count".into()
        })
    );
    assert!(matches!(
        step_reading(&expo, "i"),
        Err(PromTextError::WrongType { found: MetricType::Info, .. })
    ));
    assert!(matches!(
        step_reading(&expo, "gh"),
        Err(PromTextError::WrongType { found: MetricType::GaugeHistogram, .. })
    ));
    assert_eq!(step_reading(&expo, "nope"), Err(PromTextError::MetricAbsent { metric: "nope".into() }));
    assert_eq!(step_reading(&expo, ""), Err(PromTextError::MetricAbsent { metric: "".into() }));
    assert_eq!(step_reading(&expo, "_total"), Err(PromTextError::MetricAbsent { metric: "_total".into() }));
    for e in [
        step_reading(&expo, "g").unwrap_err(),
        step_reading(&expo, "h").unwrap_err(),
        step_reading(&expo, "nope").unwrap_err(),
    ] {
        assert!(
            e.to_string()
                .contains("devheal needs a histogram or summary of step seconds, or a counter of steps")
        );
        assert_eq!(e.line(), None);
    }
    // A text with both `c` and `c_total` samples counts only `c_total`.
    let expo = parse("# TYPE c counter\nc 5\nc_total 5\n").unwrap();
    assert_eq!(step_reading(&expo, "c"), Ok(StepReading::Steps { count: 5.0 }));
    // `_total` leads only to a counter: a histogram `h` is not read as `h_total`.
    let expo = parse("# TYPE h histogram\nh_count 2\nh_sum 1\n").unwrap();
    assert_eq!(step_reading(&expo, "h_total"), Err(PromTextError::MetricAbsent { metric: "h_total".into() }));
    // A typed counter without samples.
    let expo = parse("# TYPE c counter\n").unwrap();
    assert!(matches!(step_reading(&expo, "c"), Err(PromTextError::Incomplete { .. })));
}

// ---- never panics ----

/// Pieces of exposition text, so that generated inputs reach every branch of the parser.
const FRAGMENTS: &[&str] = &[
    "# HELP ",
    "# TYPE ",
    "# UNIT ",
    "# EOF",
    "#",
    " ",
    "\t",
    "\n",
    "\r\n",
    "\r",
    "m",
    "m_total",
    "m_count",
    "m_sum",
    "m_bucket",
    ":",
    "_",
    "1",
    "{",
    "}",
    "=",
    ",",
    "\"",
    "\\",
    "\\\"",
    "\\n",
    "\\\\",
    "le",
    "=\"",
    "\"}",
    "NaN",
    "+Inf",
    "-Inf",
    "1e9",
    "1.5",
    "-",
    "+",
    ".",
    "e",
    "1395066363000",
    "1520879607.789",
    "99999999999999999999",
    "counter",
    "gauge",
    "histogram",
    "summary",
    "untyped",
    "unknown",
    "info",
    " # {",
    "ü",
    "\u{1F600}",
    "\0",
];

fn check(text: &str) {
    if let Ok(expo) = parse(text) {
        for name in ["m", "m_total", "m_count", "m_sum", ""] {
            let _ = step_reading(&expo, name);
        }
        for s in &expo.samples {
            let _ = step_reading(&expo, &s.name);
        }
        for name in expo.types.keys() {
            let _ = step_reading(&expo, name);
        }
    }
}

proptest! {
    #[test]
    fn never_panics_on_fragments(pieces in proptest::collection::vec(proptest::sample::select(FRAGMENTS), 0..40)) {
        check(&pieces.concat());
    }

    #[test]
    fn never_panics_on_any_string(text in any::<String>()) {
        check(&text);
    }
}

/// Deterministic mutations of the real fixtures: each round replaces, inserts or deletes a few
/// characters (from the fragments, or any char) at random places.
#[test]
fn never_panics_on_mutated_fixtures() {
    let mut rng = SplitMix64::new(0x5eed_f9a7_5e00);
    for base in [DOCS_EXAMPLE, TRAIN_004, TRAIN_OM] {
        let chars: Vec<char> = base.chars().collect();
        for _ in 0..300 {
            let mut text = chars.clone();
            let edits = 1 + rng.next_u64() % 6;
            for _ in 0..edits {
                let at = (rng.next_u64() % (text.len() as u64 + 1)) as usize;
                let piece: Vec<char> = if rng.next_u64().is_multiple_of(4) {
                    vec![char::from_u32((rng.next_u64() % 0x11_0000) as u32).unwrap_or('\u{FFFD}')]
                } else {
                    FRAGMENTS[(rng.next_u64() % FRAGMENTS.len() as u64) as usize].chars().collect()
                };
                match rng.next_u64() % 3 {
                    0 => {
                        let end = (at + piece.len()).min(text.len());
                        text.splice(at..end, piece);
                    }
                    1 => {
                        text.splice(at..at, piece);
                    }
                    _ => {
                        let end = (at + 1 + (rng.next_u64() % 8) as usize).min(text.len());
                        text.drain(at.min(end)..end);
                    }
                }
            }
            let text: String = text.into_iter().collect();
            check(&text);
            // Truncations too: a scrape cut off mid-line.
            let cut = text.char_indices().nth((rng.next_u64() % (text.len() as u64 + 1)) as usize);
            if let Some((i, _)) = cut {
                check(&text[..i]);
            }
        }
    }
}
