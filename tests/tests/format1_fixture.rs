//! A repository made by the release before encryption at rest (format 1, plain; see
//! `tests/fixtures/README.md`) keeps working with this build: it opens without any key,
//! lists, shows, restores byte for byte, verifies, and takes new backups that leave it
//! format 1 (readable by that release still).

use std::path::Path;
use std::process::Command;

use tempfile::TempDir;
use tessera_tests::{list_json, restored_sha, sha256_file, tessera, verify};

const GEN1_SHA: &str = "4e01b1b13d7cb7e167a894e56fba101d19f2d74ea1996a6dd8bd2aa0bdac741c";
const GEN2_SHA: &str = "39ee72ba8f18f29d017e206dff7d2658eb0ad59ec49849e5268dd7ea64f142ed";

fn unpack(dir: &Path) {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/format1-repo.tar.gz");
    let st = Command::new("tar")
        .arg("-xzf")
        .arg(&fixture)
        .arg("-C")
        .arg(dir)
        .status()
        .expect("running tar");
    assert!(st.success(), "unpacking {}", fixture.display());
}

fn config_version(repo: &Path) -> (usize, u32) {
    let config = std::fs::read(repo.join("config")).unwrap();
    (
        config.len(),
        u32::from_le_bytes(config[8..12].try_into().unwrap()),
    )
}

#[test]
fn a_format_1_repository_of_the_previous_release_keeps_working() {
    let t = TempDir::new().unwrap();
    unpack(t.path());
    let repo = t.path().join("repo");
    assert_eq!(config_version(&repo), (56, 1), "the fixture is format 1");
    assert_eq!(sha256_file(&t.path().join("disk-gen1.img")), GEN1_SHA);
    assert_eq!(sha256_file(&t.path().join("disk-gen2.img")), GEN2_SHA);

    let listed = list_json(&repo);
    let series: Vec<&str> = listed
        .iter()
        .map(|s| s["series"].as_str().unwrap())
        .collect();
    assert_eq!(series, ["vm1", "vm1", "vm2"]);
    let ids: Vec<String> = listed
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();

    let show = tessera(["--json", "show", repo.to_str().unwrap(), &ids[0]]);
    show.ok();
    let v = show.json();
    assert_eq!(v["encryption"], "none");
    assert_eq!(v["tags"]["owner"], "fixture");
    assert_eq!(v["disks"][0]["name"], "d0");
    let stats = tessera(["--json", "stats", repo.to_str().unwrap()]);
    stats.ok();
    assert_eq!(stats.json()["stats"]["format_version"], 1);
    assert_eq!(stats.json()["stats"]["encryption"], "none");

    for (id, sha) in ids.iter().zip([GEN1_SHA, GEN2_SHA, GEN1_SHA]) {
        assert_eq!(restored_sha(&repo, id, t.path()), sha, "snapshot {id}");
    }
    verify(&repo).ok();

    // Writing keeps the format: a new backup, a forget, a compaction; still format 1.
    let img = t.path().join("disk-gen2.img");
    let out = tessera([
        "backup",
        repo.to_str().unwrap(),
        "--series",
        "vm3",
        &format!("d0={}", img.display()),
    ]);
    out.ok();
    tessera(["forget", repo.to_str().unwrap(), &ids[0]]).ok();
    tessera([
        "compact",
        repo.to_str().unwrap(),
        "--max-unused",
        "0",
        "--grace",
        "0",
    ])
    .ok();
    assert_eq!(config_version(&repo), (56, 1));
    verify(&repo).ok();
    assert_eq!(restored_sha(&repo, "latest@vm3", t.path()), GEN2_SHA);
    assert_eq!(restored_sha(&repo, &ids[2], t.path()), GEN1_SHA);
}
