//! `GET /metrics` of `tessera serve` (SPEC.md §26.7): Prometheus text that a real parser
//! (prometheus_client) reads, with the figures `list` shows, only for the series the token
//! covers; a backup token is refused, no token is refused.

use std::path::Path;

use tessera_tests::remote::Transport;
use tessera_tests::sinks::{parse_metrics, Sample};
use tessera_tests::{
    backup_json, init_repo, list_json, make_image, seed, start_serve_args, token_add, DataGen,
    ImageSpec,
};

const MIB: u64 = 1 << 20;

fn value(samples: &[Sample], name: &str, series: Option<&str>) -> Option<f64> {
    samples
        .iter()
        .find(|s| s.name == name && s.labels.get("series").map(String::as_str) == series)
        .map(|s| s.value)
}

#[test]
fn metrics_show_the_catalog_of_the_series_a_token_covers() {
    let work = tempfile::tempdir().unwrap();
    let repo = work.path().join("repo");
    init_repo(&repo, &[]);
    let mut gen = DataGen::new(seed("serve_metrics"));
    let image = work.path().join("disk.img");
    for (series, size) in [("web", 4 * MIB), ("web", 6 * MIB), ("db", 2 * MIB)] {
        make_image(&image, ImageSpec::mixed(size), &mut gen);
        backup_json(&repo, series, &[("disk", image.as_path())]);
    }
    let tokens = work.path().join("tokens");
    let admin = token_add(&tokens, "admin", "*", "ops", None);
    let web_reader = token_add(&tokens, "read", "web", "web-reader", None);
    let backup = token_add(&tokens, "backup", "web", "web-backup", None);
    let served = start_serve_args(&repo, &["--tokens".as_ref(), tokens.as_os_str()]);
    let get =
        |token: Option<&str>| Transport::Http.request(&served.url, "GET", "/metrics", token, b"");

    let (status, page) = get(Some(&admin));
    assert_eq!(status, 200, "{page}");
    let samples = parse_metrics(&page);
    assert!(samples.iter().all(|s| s.kind == "gauge"), "{page}");
    let listed = list_json(&repo);
    assert_eq!(
        value(&samples, "tessera_repository_snapshots", None),
        Some(listed.len() as f64)
    );
    for series in ["web", "db"] {
        let mine: Vec<_> = listed.iter().filter(|s| s["series"] == series).collect();
        let newest = mine
            .iter()
            .max_by_key(|s| s["time_us"].as_i64().unwrap())
            .unwrap();
        assert_eq!(
            value(&samples, "tessera_series_snapshots", Some(series)),
            Some(mine.len() as f64)
        );
        let t = value(
            &samples,
            "tessera_series_last_snapshot_timestamp_seconds",
            Some(series),
        )
        .unwrap();
        assert!(
            (t - newest["time_us"].as_f64().unwrap() / 1e6).abs() < 1e-3,
            "{series}: {t}"
        );
        assert_eq!(
            value(
                &samples,
                "tessera_series_last_snapshot_logical_bytes",
                Some(series)
            ),
            newest["logical_bytes"].as_f64()
        );
        assert_eq!(
            value(&samples, "tessera_series_damaged_snapshots", Some(series)),
            Some(0.0)
        );
    }

    // A read token limited to `web` sees `web` only.
    let (status, page) = get(Some(&web_reader));
    assert_eq!(status, 200, "{page}");
    let samples = parse_metrics(&page);
    assert_eq!(
        value(&samples, "tessera_repository_snapshots", None),
        Some(2.0)
    );
    assert!(
        value(&samples, "tessera_series_snapshots", Some("db")).is_none(),
        "{page}"
    );
    assert!(!page.contains("\"db\""), "{page}");

    // A backup token and no token are refused.
    assert_eq!(get(Some(&backup)).0, 403);
    assert_eq!(get(None).0, 401);
    drop(served);
    assert!(Path::new(&repo).exists());
}
