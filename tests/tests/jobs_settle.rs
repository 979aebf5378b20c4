//! A run killed between its hooks (SPEC.md §26.3): the before-hook took something (a
//! hypervisor snapshot), the backup was killed with `kill -9` while reading its source, and
//! the after-hook never ran. The next holder of the job's lock settles the record as
//! `interrupted` and runs the after-hook it owed, once, with `TESSERA_OUTCOME=failure`.

use std::path::Path;
use std::time::Duration;

use tessera_tests::sinks::{
    history, job_run_args, job_run_ok, poll_until, record_files, script, toml_str,
};
use tessera_tests::{init_repo, make_image, seed, tessera_cmd, DataGen, ImageSpec};

const MIB: u64 = 1 << 20;

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn a_run_killed_during_its_backup_gets_its_after_hook_when_settled() {
    let t = tempfile::tempdir().unwrap();
    let w = t.path();
    let (repo, state) = (w.join("repo"), w.join("state"));
    init_repo(&repo, &[]);
    // The source is an NBD server that never says a word (a listener nobody accepts on):
    // the backup waits for its greeting.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nbd = format!("nbd://{}/disk", silent.local_addr().unwrap());
    let (took, released) = (w.join("took"), w.join("released"));
    let before = script(
        w,
        "before.sh",
        &format!("echo snapshot >> {}", took.display()),
    );
    let after = script(
        w,
        "after.sh",
        &format!("echo \"$TESSERA_OUTCOME\" >> {}", released.display()),
    );
    let file = w.join("vm1.toml");
    let write_job = |source: &str| {
        std::fs::write(
            &file,
            format!(
                "[repository]\nlocation = {}\n[backup]\n[[backup.disk]]\nname = \"d\"\nsource = {}\n[hooks.before]\ncommand = [{}]\n[hooks.after]\ncommand = [{}]\n",
                toml_str(&repo),
                toml_str(source),
                toml_str(&before),
                toml_str(&after)
            ),
        )
        .unwrap();
    };
    write_job(&nbd);
    let mut child = tessera_cmd(job_run_args(&file, &state, &[]))
        .spawn()
        .unwrap();
    // Killed once the record says the backup step runs (the before-hook is done).
    let in_backup = poll_until(Duration::from_secs(20), || {
        record_files(&state, "vm1")
            .first()
            .is_some_and(|(_, r)| r["step"] == "backup")
    });
    assert!(in_backup, "the run never reached its backup step");
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(lines(&took), ["snapshot"]);
    assert!(
        lines(&released).is_empty(),
        "the after-hook ran before the kill"
    );

    // The next run settles the killed one: its after-hook runs, told the run failed.
    let image = w.join("disk.raw");
    make_image(
        &image,
        ImageSpec::mixed(MIB),
        &mut DataGen::new(seed("jobs_settle")),
    );
    write_job(image.to_str().unwrap());
    job_run_ok(&file, &state, &[]);
    assert_eq!(lines(&took), ["snapshot", "snapshot"]);
    assert_eq!(
        lines(&released),
        ["failure", "success"],
        "the owed after-hook, then this run's"
    );
    let runs = history("vm1", &state);
    assert_eq!(runs.len(), 2);
    let killed = &runs[1];
    assert_eq!(killed["outcome"], "interrupted", "{killed:#}");
    let hooks: Vec<&str> = killed["hooks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["phase"].as_str().unwrap())
        .collect();
    assert_eq!(hooks, ["before", "after"], "{killed:#}");

    // Settled once: a third run does not run the owed hook again.
    job_run_ok(&file, &state, &[]);
    assert_eq!(lines(&released), ["failure", "success", "success"]);
}
