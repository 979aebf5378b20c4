//! Model-based test: one image evolves through N generations of random writes, zeroing,
//! growing and shrinking; each generation is backed up. The model is the list of SHA-256
//! digests of the image at each backup. At the end every snapshot must restore to exactly
//! its generation, the catalog must list them in order with the right sizes, and
//! `tessera verify` must find nothing wrong.
//!
//! Knobs: `TESSERA_MODEL_GENERATIONS` (default 12), `TESSERA_SEED`.

use std::fs::{self, OpenOptions};

use rand::Rng;
use tempfile::TempDir;
use tessera_tests::{
    backup_json, env_usize, init_repo, list_json, make_image, mutate, restore, seed, sha256_file,
    snapshot_id, verify, DataGen, Fill, ImageSpec,
};

const MAX_SIZE: u64 = 6 << 20;

struct Generation {
    id: String,
    sha: String,
    size: u64,
}

fn run_model(test: &str, init_args: &[&str]) {
    let generations = env_usize("TESSERA_MODEL_GENERATIONS", 12);
    let mut gen = DataGen::new(seed(test));
    let t = TempDir::new().unwrap();
    let repo = t.path().join("repo");
    init_repo(&repo, init_args);
    let img = t.path().join("img");
    let first_size = gen.rng.gen_range(1..MAX_SIZE / 2);
    make_image(
        &img,
        ImageSpec {
            sparse: gen.rng.gen_bool(0.5),
            ..ImageSpec::mixed(first_size)
        },
        &mut gen,
    );

    let mut model: Vec<Generation> = Vec::new();
    for g in 0..generations {
        if g > 0 {
            evolve(&img, &mut gen, g);
        }
        let size = fs::metadata(&img).unwrap().len();
        let sha = sha256_file(&img);
        let b = backup_json(&repo, "model", &[("disk", &img)]);
        assert_eq!(b["disks"][0]["size"], size, "generation {g}: {b}");
        eprintln!(
            "gen {g:2}: size {size:8}, new chunks {:4}, new raw {:8}, zero blocks {}",
            b["disks"][0]["new_chunks"],
            b["disks"][0]["new_raw_bytes"],
            b["disks"][0]["zero_blocks"]
        );
        model.push(Generation {
            id: snapshot_id(&b),
            sha,
            size,
        });
    }

    let listed = list_json(&repo);
    let ids: Vec<&str> = listed.iter().map(|s| s["id"].as_str().unwrap()).collect();
    let want: Vec<&str> = model.iter().map(|g| g.id.as_str()).collect();
    assert_eq!(ids, want, "list does not show the generations in order");
    for (s, g) in listed.iter().zip(&model) {
        assert_eq!(s["logical_bytes"], g.size);
    }

    for (n, g) in model.iter().enumerate() {
        let out = t.path().join(format!("restore-{n}"));
        restore(&repo, &g.id, &out, false).ok();
        assert_eq!(
            fs::metadata(&out).unwrap().len(),
            g.size,
            "generation {n}: restored size"
        );
        assert_eq!(
            sha256_file(&out),
            g.sha,
            "generation {n} ({}) restored different bytes",
            g.id
        );
        fs::remove_file(&out).unwrap();
    }
    verify(&repo).ok();
}

/// One generation of change: random writes (some zeroing), sometimes a resize.
fn evolve(img: &std::path::Path, gen: &mut DataGen, g: usize) {
    let writes = gen.rng.gen_range(1..24);
    let max_len = if gen.rng.gen_bool(0.3) {
        4096
    } else {
        256 * 1024
    };
    mutate(img, gen, writes, max_len, (3, 3, 4));
    let f = OpenOptions::new().write(true).open(img).unwrap();
    let size = f.metadata().unwrap().len();
    let roll: f64 = gen.rng.gen();
    if roll < 0.15 {
        // Grow: the new tail is a hole, then maybe write data beyond the old end.
        let new = gen.rng.gen_range(size..=MAX_SIZE);
        f.set_len(new).unwrap();
        if new > size && gen.rng.gen_bool(0.7) {
            let off = gen.rng.gen_range(size..new);
            let len = gen.rng.gen_range(1..=(new - off).min(300_000));
            let kind = if gen.rng.gen_bool(0.5) {
                Fill::Text
            } else {
                Fill::Random
            };
            std::os::unix::fs::FileExt::write_all_at(&f, &gen.bytes(kind, len as usize), off)
                .unwrap();
        }
        eprintln!("gen {g:2}: grow {size} -> {new}");
    } else if roll < 0.27 {
        let new = if gen.rng.gen_bool(0.1) {
            0
        } else {
            gen.rng.gen_range(0..=size)
        };
        f.set_len(new).unwrap();
        eprintln!("gen {g:2}: shrink {size} -> {new}");
    } else if roll < 0.30 && size > 0 {
        // Append a few bytes: the last block changes length.
        let extra = gen.rng.gen_range(1..5000);
        std::os::unix::fs::FileExt::write_all_at(&f, &gen.bytes(Fill::Text, extra), size).unwrap();
        eprintln!("gen {g:2}: append {extra}");
    }
    f.sync_all().unwrap();
}

#[test]
fn generations_restore_to_the_model() {
    run_model("model", &[]);
}

#[test]
fn generations_restore_to_the_model_large_blocks_no_compression() {
    run_model(
        "model_128k_none",
        &["--block-size", "128K", "--compression", "none"],
    );
}
