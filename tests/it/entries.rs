//! `corsd entries` (DESIGN.md section 12) as a real process on real files:
//! golden files for layout kept after add and remove, refusals that leave
//! the file byte for byte, concurrent adds that all land, and a watching
//! server that never sees a half-written or invalid file while edits land.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use crate::common;
use common::serve::{TestServer, wait_for};

fn corsd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_corsd")).args(args).output().unwrap()
}

fn golden(name: &str) -> String {
    std::fs::read_to_string(common::cases_dir().join("entries").join(name)).unwrap()
}

fn copy_of_policy(dir: &Path) -> String {
    common::write_file(dir, "policy.toml", &golden("policy.toml"))
}

#[test]
fn add_and_remove_keep_comments_order_and_layout() {
    let dir = tempfile::tempdir().unwrap();
    let file = copy_of_policy(dir.path());
    let out = corsd(&[
        "entries",
        "add",
        &file,
        "HTTPS://Partner.Example:443",
        "--note",
        "partner portal",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), golden("after-add.toml"));
    let out = corsd(&["entries", "remove", &file, "https://*.preview.acme.example"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), golden("after-remove.toml"));

    let out = corsd(&["entries", "list", &file, "--json"]);
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        listed,
        serde_json::json!([
            {"origin": "https://app.acme.example", "note": "the SPA", "line": 9},
            {"origin": "http://localhost:3000", "note": "", "line": 14},
            {"origin": "https://partner.example", "note": "partner portal", "line": 17},
        ])
    );
}

#[test]
fn refusals_leave_the_file_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let file = copy_of_policy(dir.path());
    let before = std::fs::read(&file).unwrap();
    for (args, says) in [
        (
            vec!["add", &file, "https://x.example/"],
            "invalid origin `https://x.example/`: remove the trailing \"/\": an origin has no path",
        ),
        (
            vec!["add", &file, "https://*.com"],
            "invalid origin `https://*.com`: `*.com` would cover the public suffix `com`",
        ),
        (
            vec!["add", &file, "HTTPS://APP.acme.example:443"],
            "`https://app.acme.example` is already listed, on line 9: nothing to add",
        ),
        (
            vec!["remove", &file, "https://absent.example"],
            "`https://absent.example` is not listed: nothing to remove",
        ),
    ] {
        let mut full = vec!["entries"];
        full.extend(args.iter().copied());
        let out = corsd(&full);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert_eq!(std::fs::read(&file).unwrap(), before, "{args:?} changed the file");
    }
    // A dry run prints the diff and writes nothing.
    let out = corsd(&["entries", "add", &file, "https://new.example", "--dry-run"]);
    assert_eq!(out.status.code(), Some(0));
    let diff = String::from_utf8_lossy(&out.stdout);
    assert!(
        diff.contains("+[[entries]]\n+origin = \"https://new.example\"\n"),
        "{diff}"
    );
    assert!(diff.starts_with(&format!("--- {file}\n+++ {file}\n")), "{diff}");
    assert_eq!(std::fs::read(&file).unwrap(), before);
}

#[test]
fn concurrent_adds_all_land() {
    let dir = tempfile::tempdir().unwrap();
    let file = copy_of_policy(dir.path());
    let children: Vec<_> = (0..20)
        .map(|i| {
            Command::new(env!("CARGO_BIN_EXE_corsd"))
                .args(["entries", "add", &file, &format!("https://team-{i}.acme.example")])
                .spawn()
                .unwrap()
        })
        .collect();
    for mut child in children {
        assert!(child.wait().unwrap().success());
    }
    let text = std::fs::read_to_string(&file).unwrap();
    for i in 0..20 {
        assert!(
            text.contains(&format!("origin = \"https://team-{i}.acme.example\"")),
            "team-{i} lost:\n{text}"
        );
    }
    let out = corsd(&["validate", &file]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("23 entries"));
    // The edits' temporary files are gone; only the lock file stays.
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let mut names = names;
    names.sort();
    assert_eq!(names, ["policy.toml", "policy.toml.lock"]);
}

/// A server watching the file while 200 edits land: no reload is ever
/// rejected (it never reads half a file), and it ends on the last version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watching_server_never_sees_a_bad_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = copy_of_policy(dir.path());
    let server = TestServer::start_with_file(file.as_ref()).await;
    corsd::reload::spawn(file.clone().into(), server.store.clone()).unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let edits = tokio::task::spawn_blocking({
        let file = file.clone();
        move || {
            for i in 0..201 {
                let (verb, origin) = if i % 2 == 0 {
                    ("add", "https://churn.acme.example")
                } else {
                    ("remove", "https://churn.acme.example")
                };
                let out = corsd(&["entries", verb, &file, origin]);
                assert!(
                    out.status.success(),
                    "edit {i}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    });
    edits.await.unwrap();
    let last = std::fs::read(&file).unwrap();
    let want = corsd::core::Policy::version_of(&last);
    let mut client = server.client().await;
    wait_for(&mut client, Duration::from_secs(2), "the last edit", |r| {
        r.policy.as_ref().unwrap().version == want
    })
    .await;
    use corsd::store::ReloadResult;
    assert_eq!(
        server.store.reload_count(ReloadResult::Invalid),
        0,
        "a reload saw an invalid file"
    );
    assert_eq!(
        server.store.reload_count(ReloadResult::Unreadable),
        0,
        "a reload could not read the file"
    );
    assert!(server.store.reload_count(ReloadResult::Ok) > 0);
    server.stop().await;
}

fn diff_files(old: &str, new: &str, extra: &[&str]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let a = common::write_file(dir.path(), "old.toml", old);
    let b = common::write_file(dir.path(), "new.toml", new);
    let mut args = vec!["diff", a.as_str(), b.as_str()];
    args.extend_from_slice(extra);
    let out = corsd(&args);
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn diff_says_what_a_change_changes() {
    let base = "[[entries]]\norigin = \"https://a.example.com\"\n\n[[entries]]\norigin = \"https://b.example.org\"\n";
    // Reordered, commented, spelled differently: alike.
    let same = "# reordered\n[[entries]]\norigin = \"HTTPS://B.example.org:443\"\n[[entries]]\norigin = \"https://a.example.com\" # a\n";
    assert_eq!(
        diff_files(base, same, &[]),
        (Some(0), "the two policies decide alike\n".to_owned())
    );

    // Added.
    let added = format!("{base}\n[[entries]]\norigin = \"https://c.example.net\"\n");
    let (code, out) = diff_files(base, &added, &[]);
    assert_eq!(code, Some(1));
    assert!(out.contains("entries added:\n  + https://c.example.net\n"), "{out}");
    assert!(
        out.contains("https://c.example.net: deny (origin_not_allowed) -> allow (allowed)"),
        "{out}"
    );

    // Removed.
    let (code, out) = diff_files(&added, base, &[]);
    assert_eq!(code, Some(1));
    assert!(out.contains("entries removed:\n  - https://c.example.net\n"), "{out}");

    // Widened: the exact entry still decides alike, the wildcard allows more.
    let widened =
        "[[entries]]\norigin = \"https://*.example.com\"\n\n[[entries]]\norigin = \"https://b.example.org\"\n";
    let (code, out) = diff_files(
        base,
        widened,
        &["--origin", "https://a.example.com", "--origin", "https://x.example.com"],
    );
    assert_eq!(code, Some(1));
    assert!(
        out.contains("+ https://*.example.com") && out.contains("- https://a.example.com"),
        "{out}"
    );
    assert!(
        out.contains("https://x.example.com: deny (origin_not_allowed) -> allow (allowed)"),
        "{out}"
    );
    assert!(
        !out.contains("https://a.example.com: "),
        "a.example.com decides alike: {out}"
    );

    // A setting: max_age changes the preflight's headers.
    let (code, out) = diff_files(base, &format!("[cors]\nmax_age = 3600\n{base}"), &["--json"]);
    assert_eq!(code, Some(1));
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        json["settings_changed"],
        serde_json::json!([{"setting": "cors.max_age", "old": "600", "new": "3600"}])
    );
    assert_eq!(json["differ"], true);
    assert_eq!(json["verdicts_changed"], serde_json::json!([]));

    // An invalid file: exit 2.
    let (code, _) = diff_files(base, "[[entries]]\norigin = \"https://x.example/\"\n", &[]);
    assert_eq!(code, Some(2));
}

/// Edits killed with SIGKILL at many points never leave a partial file: the
/// file is always a valid policy, the one before the edit or the one after.
#[test]
fn an_edit_killed_at_any_point_leaves_a_whole_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = copy_of_policy(dir.path());
    for i in 0..30u64 {
        let before = std::fs::read_to_string(&file).unwrap();
        let origin = format!("https://killed-{i}.acme.example");
        let mut child = Command::new(env!("CARGO_BIN_EXE_corsd"))
            .args(["entries", "add", &file, &origin])
            .spawn()
            .unwrap();
        // From at once to after the edit is likely done, in 0.4 ms steps.
        std::thread::sleep(Duration::from_micros(i * 400));
        let _ = child.kill();
        let _ = child.wait();
        let after = std::fs::read_to_string(&file).unwrap();
        let added = after.contains(&format!("origin = \"{origin}\""));
        assert!(
            after == before || (added && after.starts_with(before.trim_end())),
            "edit {i} left:\n{after}"
        );
        let out = corsd(&["validate", &file]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "edit {i}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// An edit through symlinks (a ConfigMap-like `..data` layout, a link to a
/// file elsewhere) edits the real file: every link stays a link, the lock
/// and the temporary file are beside the real file, and two paths to one
/// file take one lock. A dangling link is exit 2, nothing created.
#[test]
fn edits_through_symlinks_change_the_real_file() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("..2026_12_02")).unwrap();
    common::write_file(&d.join("..2026_12_02"), "policy.toml", &golden("policy.toml"));
    symlink("..2026_12_02", d.join("..data")).unwrap();
    symlink("..data/policy.toml", d.join("policy.toml")).unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    symlink(d.join("policy.toml"), elsewhere.path().join("corsd.toml")).unwrap();

    let via_link = d.join("policy.toml");
    let out = corsd(&["entries", "add", via_link.to_str().unwrap(), "https://one.example"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let via_other = elsewhere.path().join("corsd.toml");
    let out = corsd(&["entries", "add", via_other.to_str().unwrap(), "https://two.example"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));

    for link in [d.join("policy.toml"), d.join("..data"), via_other.clone()] {
        assert!(
            std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink(),
            "{} is no longer a link",
            link.display()
        );
    }
    let real = std::fs::read_to_string(d.join("..2026_12_02/policy.toml")).unwrap();
    assert!(
        real.contains("https://one.example") && real.contains("https://two.example"),
        "{real}"
    );
    // One lock, beside the real file, whichever path was edited.
    assert!(d.join("..2026_12_02/policy.toml.lock").exists());
    assert!(!d.join("policy.toml.lock").exists());
    assert!(!elsewhere.path().join("corsd.toml.lock").exists());
    let strays: Vec<_> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.contains("corsd-edit"))
        .collect();
    assert!(strays.is_empty(), "{strays:?}");

    // A dangling link: exit 2, says so, creates nothing.
    symlink("..data/gone.toml", d.join("gone.toml")).unwrap();
    let out = corsd(&[
        "entries",
        "add",
        d.join("gone.toml").to_str().unwrap(),
        "https://x.example",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("a dangling symlink"));
    assert!(!d.join("..2026_12_02/gone.toml").exists());
    assert!(!d.join("gone.toml.lock").exists() && !d.join("..2026_12_02/gone.toml.lock").exists());
}

/// A dry run writes nothing: not even a lock file.
#[test]
fn a_dry_run_creates_no_lock_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = copy_of_policy(dir.path());
    let out = corsd(&["entries", "add", &file, "https://dry.example", "--dry-run"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["policy.toml"]);
}
