//! corsd's etcd client against a real etcd: a prefix read at one revision,
//! writes in transactions on `mod_revision`, a watch from a revision, and a
//! watch refused after compaction.

use corsd::etcd::Etcd;
use corsd::etcd::pb::event::EventType;

use crate::common::etcd::{cluster, etcd_binary};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_writes_and_watches_a_prefix() {
    let Some(binary) = etcd_binary() else { return };
    let members = cluster(&binary, 1).await;
    let etcd = Etcd::new(&[members[0].client_url.clone()], "/corsd/tenants/").unwrap();
    let other = Etcd::new(&[members[0].client_url.clone()], "/elsewhere/").unwrap();

    let (start, none) = etcd.read_all().await.unwrap();
    assert!(none.is_empty());
    // Create: only if absent.
    let created = etcd.put_if("acme", b"# acme\n", 0).await.unwrap().expect("created");
    assert!(created > start);
    assert_eq!(etcd.put_if("acme", b"# again\n", 0).await.unwrap(), None, "exists");
    other.put_if("acme", b"# not ours\n", 0).await.unwrap().unwrap();
    // Replace: only at the revision read.
    let replaced = etcd.put_if("acme", b"# acme v2\n", created).await.unwrap().unwrap();
    assert_eq!(etcd.put_if("acme", b"# stale\n", created).await.unwrap(), None, "stale");
    for i in 0..1500 {
        etcd.put_if(&format!("t{i:04}"), b"# t\n", 0).await.unwrap().unwrap();
    }
    let (revision, all) = etcd.read_all().await.unwrap();
    assert_eq!(all.len(), 1501, "paged past the 1000 of one range");
    let acme = all.iter().find(|s| s.name == "acme").unwrap();
    assert_eq!(
        (acme.text.as_slice(), acme.mod_revision),
        (&b"# acme v2\n"[..], replaced)
    );
    assert_eq!(etcd.get("acme").await.unwrap().unwrap().mod_revision, replaced);

    // A watch from the next revision sees what follows, in order.
    let mut watch = etcd.watch(revision + 1).await.unwrap();
    let first = watch.message().await.unwrap().unwrap();
    assert!(first.created, "{first:?}");
    etcd.put_if("beta", b"# beta\n", 0).await.unwrap().unwrap();
    let deleted = etcd.delete_if("acme", replaced).await.unwrap().unwrap();
    let mut events = Vec::new();
    while events.len() < 2 {
        let response = watch.message().await.unwrap().unwrap();
        events.extend(response.events);
    }
    assert_eq!(events[0].r#type(), EventType::Put);
    assert_eq!(events[0].kv.as_ref().unwrap().key, b"/corsd/tenants/beta");
    assert_eq!(events[1].r#type(), EventType::Delete);
    assert_eq!(events[1].kv.as_ref().unwrap().mod_revision, deleted);

    // After compaction a watch from an older revision is cancelled with
    // the compacted revision: the caller must read everything again.
    etcd.compact(deleted).await.unwrap();
    let mut stale = etcd.watch(revision).await.unwrap();
    let mut cancelled = None;
    while let Some(response) = stale.message().await.unwrap() {
        if response.canceled {
            cancelled = Some(response);
            break;
        }
    }
    let cancelled = cancelled.expect("a cancelled watch");
    assert_eq!(cancelled.compact_revision, deleted, "{cancelled:?}");
}
