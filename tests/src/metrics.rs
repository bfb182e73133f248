//! Metrics scraping: the Prometheus text format parsed, and a running ward's metrics read
//! from its admin server.

use std::time::{Duration, Instant};

use crate::WAIT;
use crate::raw_http::admin_get;

/// One sample of a Prometheus text exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// Parses the Prometheus/OpenMetrics text format (comments skipped). Panics on a line it
/// cannot read: the exposition must be well formed.
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("metric line without a value: {line:?}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|e| panic!("bad metric value in {line:?}: {e}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series.to_owned(), Vec::new()),
            Some((name, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("unterminated labels: {line:?}"));
                let mut labels = Vec::new();
                let mut rest = body;
                while !rest.is_empty() {
                    let (k, after) = rest
                        .split_once("=\"")
                        .unwrap_or_else(|| panic!("bad label in {line:?}"));
                    // Values here never contain an escaped quote.
                    let end = after
                        .find('"')
                        .unwrap_or_else(|| panic!("bad label value in {line:?}"));
                    labels.push((k.to_owned(), after[..end].replace("\\\\", "\\")));
                    rest = after[end + 1..].trim_start_matches(',');
                }
                (name.to_owned(), labels)
            }
        };
        out.push(Sample { name, labels, value });
    }
    out
}

/// The metrics of a running ward, from its admin server.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub text: String,
    pub samples: Vec<Sample>,
}

impl Metrics {
    /// `GET /metrics` on the admin server at 127.0.0.1:`admin_port`.
    pub fn scrape(admin_port: u16) -> Metrics {
        let resp = admin_get(admin_port, "/metrics");
        assert_eq!(resp.status, 200, "/metrics: {}", resp.text());
        let text = resp.text();
        Metrics {
            samples: parse_metrics(&text),
            text,
        }
    }

    /// The sum of every sample named `name` whose labels include all of `labels`; `None` when
    /// no sample matches.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let matching: Vec<f64> = self
            .samples
            .iter()
            .filter(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.iter().any(|(sk, sv)| sk == k && sv == v))
            })
            .map(|s| s.value)
            .collect();
        (!matching.is_empty()).then(|| matching.iter().sum())
    }

    /// Like [`Metrics::get`], 0 when absent.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }
}

/// Scrapes until `pred` accepts the metrics (at most [`WAIT`]); returns the accepted scrape.
pub fn wait_metrics(admin_port: u16, what: &str, pred: impl Fn(&Metrics) -> bool) -> Metrics {
    let deadline = Instant::now() + WAIT;
    loop {
        let m = Metrics::scrape(admin_port);
        if pred(&m) {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "metrics never showed {what} within {WAIT:?}:\n{}",
            m.text
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}
