//! A job whose repository is a `tessera serve` server (SPEC.md §26.1): backups go into the
//! local staging repository, which keeps the job's retention and verify, and are pushed to a
//! real `tessera serve` with a `backup` token — one that can neither read nor prune there.
//! VHD images made by qemu-img are the source; the server's copies restore byte for byte.

use std::path::Path;

use tessera_tests::qemu::{convert_to_raw, qemu_img};
use tessera_tests::sinks::{job_run, job_run_ok, toml_str};
use tessera_tests::{
    init_repo, list_json, make_image, restored_sha, seed, sha256_file, start_serve_args, tessera,
    token_add, token_file_named, DataGen, ImageSpec,
};

const MIB: u64 = 1 << 20;

/// `qemu-img convert -O vpc RAW VHD` (a dynamic VHD made by qemu-img, of the raw image's
/// exact size); returns the SHA-256 of qemu-img's own reading of it.
fn to_vhd(raw: &Path, vhd: &Path) -> String {
    let _ = std::fs::remove_file(vhd);
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "vpc",
        "-o",
        "subformat=dynamic,force_size=on",
        raw.to_str().unwrap(),
        vhd.to_str().unwrap(),
    ]);
    let oracle = vhd.with_extension("oracle.raw");
    convert_to_raw(vhd, "vpc", &oracle);
    let digest = sha256_file(&oracle);
    assert_eq!(
        digest,
        sha256_file(raw),
        "qemu-img's VHD holds the raw image"
    );
    digest
}

#[test]
fn a_job_on_a_server_backs_up_through_staging_and_pushes_every_snapshot() {
    let t = tempfile::tempdir().unwrap();
    let w = t.path();
    let (server_repo, staging, state) = (w.join("server"), w.join("staging"), w.join("state"));
    init_repo(&server_repo, &[]);
    init_repo(&staging, &[]);
    let tokens = w.join("tokens");
    let backup = token_add(&tokens, "backup", "vm*", "pve1", None);
    let token = token_file_named(w, "backup.token", &backup);
    let served = start_serve_args(
        &server_repo,
        &[
            "--tokens".as_ref(),
            tokens.as_os_str(),
            "--min-publish-interval".as_ref(),
            "0".as_ref(),
        ],
    );
    let (raw, vhd) = (w.join("disk.raw"), w.join("disk.vhd"));
    let mut gen = DataGen::new(seed("jobs_server"));
    make_image(&raw, ImageSpec::mixed(8 * MIB), &mut gen);
    let mut digest = to_vhd(&raw, &vhd);
    let file = w.join("vm1.toml");
    let job = format!(
        "[repository]\nlocation = {}\nstaging = {}\ntoken-file = {}\n\n[backup]\nformat = \"vhd\"\n[[backup.disk]]\nname = \"xvda\"\nsource = {}\n\n[retention]\nkeep-last = 1\n\n[verify]\nfull-every = \"1d\"\n",
        toml_str(&served.url),
        toml_str(&staging),
        toml_str(&token),
        toml_str(&vhd)
    );
    std::fs::write(&file, job).unwrap();
    let checked = tessera([
        "--json".as_ref(),
        "job".as_ref(),
        "check".as_ref(),
        file.as_os_str(),
    ]);
    checked.ok();
    let checked = checked.json();
    assert_eq!(checked["server"], served.url.as_str(), "{checked:#}");
    assert_eq!(
        checked["repository"],
        staging.to_str().unwrap(),
        "{checked:#}"
    );

    let mut digests = Vec::new();
    for round in 0..2 {
        if round > 0 {
            make_image(&raw, ImageSpec::mixed(8 * MIB), &mut gen);
            digest = to_vhd(&raw, &vhd);
        }
        digests.push(digest.clone());
        let r = job_run_ok(&file, &state, &[]);
        assert_eq!(r["outcome"], "success", "{r:#}");
        assert_eq!(r["sync"][0]["to"], served.url.as_str(), "{r:#}");
        assert_eq!(r["sync"][0]["snapshots_copied"], 1, "{r:#}");
        // The staging repository is verified: in full first, then not due within a day.
        if round == 0 {
            assert_eq!(r["verify"]["kind"], "full", "{r:#}");
            // The job's verify wrote the ledger: a verify that skips what was verified
            // within a day reads nothing.
            let v = tessera([
                "--json".as_ref(),
                "verify".as_ref(),
                staging.as_os_str(),
                "--skip-verified-within".as_ref(),
                "1d".as_ref(),
            ]);
            v.ok();
            let v = v.json();
            assert_eq!(v["report"]["objects_read"], 0, "{v:#}");
            assert!(
                v["report"]["objects_skipped_recently_verified"].as_u64() > Some(0),
                "{v:#}"
            );
        } else {
            assert!(r["verify"].is_null(), "{r:#}");
        }
    }
    // The staging repository keeps the job's retention; the server keeps every push.
    assert_eq!(list_json(&staging).len(), 1);
    let on_server = list_json(&server_repo);
    assert_eq!(on_server.len(), 2, "{on_server:#?}");
    for (snapshot, digest) in on_server.iter().zip(&digests) {
        let id = snapshot["id"].as_str().unwrap();
        assert_eq!(
            &restored_sha(&server_repo, &format!("{id}:xvda"), w),
            digest
        );
    }

    // A server repository without staging or token is refused by job check, naming the key.
    let bad = w.join("bad.toml");
    std::fs::write(
        &bad,
        format!(
            "[repository]\nlocation = {}\n[backup]\n[[backup.disk]]\nname = \"a\"\nsource = \"/x\"\n",
            toml_str(&served.url)
        ),
    )
    .unwrap();
    let out = tessera(["job".as_ref(), "check".as_ref(), bad.as_os_str()]);
    out.expect_code(2)
        .stderr_has("[repository].location")
        .stderr_has("staging");
    let (out, _) = job_run(&bad, &state, &[]);
    out.expect_code(2);
}
