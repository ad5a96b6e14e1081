//! One behavioural suite run against every backend, plus SQLite-specific tests
//! (persistence across reopen, two processes sharing one file).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use canto_storage::testing::TestDatabase;
use canto_storage::{
    ArchiveItem, ArchiveQuery, Backend, Credentials, HashAlgo, ItemQuery, NewArchiveItem,
    PubsubItem, PubsubSubscription, ScramKeys, SqliteBackend, Storage, StorageError,
};

/// A unique, not yet existing path below the system temp dir (with a missing parent
/// directory, to exercise its creation). Removed by [`TempDb`]'s drop.
struct TempDb {
    dir: PathBuf,
    path: PathBuf,
}

impl TempDb {
    fn new(name: &str) -> TempDb {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir = std::env::temp_dir().join(format!(
            "canto-storage-test-{name}-{}-{nanos}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let path = dir.join("nested").join("canto.sqlite");
        TempDb { dir, path }
    }

    fn backend(&self) -> Backend {
        Backend::Sqlite {
            path: self.path.clone(),
        }
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Cheap, distinct, well-formed credentials (no key derivation).
fn creds(n: u32) -> Credentials {
    let b = n.to_be_bytes();
    let fill = |len: usize, tag: u8| -> Vec<u8> {
        (0..len)
            .map(|i| b[i % 4] ^ tag.wrapping_add(i as u8))
            .collect()
    };
    Credentials {
        sha1: ScramKeys {
            salt: fill(16, 1),
            iterations: 4096 + n,
            stored_key: fill(20, 2),
            server_key: fill(20, 3),
        },
        sha256: ScramKeys {
            salt: fill(16, 4),
            iterations: u32::MAX - n,
            stored_key: fill(32, 5),
            server_key: fill(32, 6),
        },
    }
}

async fn run_suite(s: Storage, label: &str) {
    accounts(&s).await;
    import(&s, label).await;
    key_value(&s).await;
    map(&s).await;
    archive(&s).await;
    archive_limit_and_delete(&s).await;
    archive_append_many(&s).await;
    delete_cascades(&s).await;
    pubsub(&s).await;
}

async fn accounts(s: &Storage) {
    let a = &s.accounts;
    let real = Credentials::from_password("pencil", 16);
    assert!(!a.exists("h.example", "juliet").await.expect("exists"));
    assert_eq!(
        a.credentials("h.example", "juliet").await.expect("creds"),
        None
    );
    a.create("h.example", "juliet", &real)
        .await
        .expect("create");
    assert!(a.exists("h.example", "juliet").await.expect("exists"));
    let stored = a
        .credentials("h.example", "juliet")
        .await
        .expect("creds")
        .expect("present");
    assert_eq!(stored, real);
    assert!(stored.sha256.verify_password(HashAlgo::Sha256, "pencil"));
    assert!(stored.sha1.verify_password(HashAlgo::Sha1, "pencil"));

    // Duplicate: refused, original kept.
    match a.create("h.example", "juliet", &creds(1)).await {
        Err(StorageError::AlreadyExists) => {}
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    assert_eq!(
        a.credentials("h.example", "juliet").await.expect("creds"),
        Some(real.clone())
    );

    // Same username on another host, and case is significant (callers normalize).
    a.create("other.example", "juliet", &creds(2))
        .await
        .expect("other host");
    a.create("h.example", "Juliet", &creds(3))
        .await
        .expect("case");
    assert_eq!(
        a.credentials("other.example", "juliet").await.expect("c"),
        Some(creds(2))
    );

    // set_credentials.
    assert!(
        a.set_credentials("h.example", "juliet", &creds(4))
            .await
            .expect("set")
    );
    assert_eq!(
        a.credentials("h.example", "juliet").await.expect("c"),
        Some(creds(4))
    );
    assert!(
        !a.set_credentials("h.example", "nobody", &creds(4))
            .await
            .expect("set")
    );
    assert!(!a.exists("h.example", "nobody").await.expect("exists"));

    // list: sorted, per host.
    for u in ["romeo", "benvolio", "mercutio"] {
        a.create("h.example", u, &creds(5)).await.expect("create");
    }
    assert_eq!(
        a.list("h.example").await.expect("list"),
        ["Juliet", "benvolio", "juliet", "mercutio", "romeo"]
    );
    assert_eq!(a.list("other.example").await.expect("list"), ["juliet"]);
    assert!(a.list("none.example").await.expect("list").is_empty());

    // delete.
    assert!(a.delete("h.example", "mercutio").await.expect("delete"));
    assert!(!a.delete("h.example", "mercutio").await.expect("delete"));
    assert!(!a.exists("h.example", "mercutio").await.expect("exists"));
    assert_eq!(
        a.list("h.example").await.expect("list"),
        ["Juliet", "benvolio", "juliet", "romeo"]
    );
}

async fn import(s: &Storage, label: &str) {
    let a = &s.accounts;
    a.create("import.example", "user00042", &creds(1))
        .await
        .expect("create");
    let batch: Vec<(String, String, Credentials)> = (0..10_000u32)
        .rev()
        .map(|i| ("import.example".to_owned(), format!("user{i:05}"), creds(i)))
        .collect();
    let started = Instant::now();
    let n = a.import(&batch).await.expect("import");
    println!(
        "[{label}] imported 10000 accounts in {:?}",
        started.elapsed()
    );
    assert_eq!(n, 10_000);
    let list = a.list("import.example").await.expect("list");
    assert_eq!(list.len(), 10_000);
    assert!(list.windows(2).all(|w| w[0] < w[1]), "sorted");
    assert_eq!(list[0], "user00000");
    // Replaced, not duplicated.
    assert_eq!(
        a.credentials("import.example", "user00042")
            .await
            .expect("c"),
        Some(creds(42))
    );
    assert_eq!(
        a.credentials("import.example", "user09999")
            .await
            .expect("c"),
        Some(creds(9999))
    );
    assert_eq!(a.import(&[]).await.expect("empty import"), 0);
}

async fn key_value(s: &Storage) {
    let kv = &s.kv;
    assert_eq!(
        kv.get("roster", "h.example", "kv").await.expect("get"),
        None
    );
    kv.set("roster", "h.example", "kv", Some(b"<query/>"))
        .await
        .expect("set");
    kv.set("vcard", "h.example", "kv", Some(b"<vCard/>"))
        .await
        .expect("set");
    kv.set("roster", "h.example", "kv2", Some(b""))
        .await
        .expect("set empty");
    assert_eq!(
        kv.get("roster", "h.example", "kv").await.expect("get"),
        Some(b"<query/>".to_vec())
    );
    assert_eq!(
        kv.get("roster", "h.example", "kv2").await.expect("get"),
        Some(Vec::new())
    );
    // Overwrite.
    kv.set("roster", "h.example", "kv", Some(&[0, 255, 1]))
        .await
        .expect("overwrite");
    assert_eq!(
        kv.get("roster", "h.example", "kv").await.expect("get"),
        Some(vec![0, 255, 1])
    );
    // Delete; other stores and users untouched; deleting twice is fine.
    kv.set("roster", "h.example", "kv", None)
        .await
        .expect("delete");
    kv.set("roster", "h.example", "kv", None)
        .await
        .expect("delete again");
    assert_eq!(
        kv.get("roster", "h.example", "kv").await.expect("get"),
        None
    );
    assert_eq!(
        kv.get("vcard", "h.example", "kv").await.expect("get"),
        Some(b"<vCard/>".to_vec())
    );
    assert_eq!(
        kv.get("roster", "other.example", "kv").await.expect("get"),
        None
    );
}

async fn map(s: &Storage) {
    let m = &s.map;
    assert_eq!(
        m.get("roster", "h.example", "mu", "a@x")
            .await
            .expect("get"),
        None
    );
    assert!(
        m.get_all("roster", "h.example", "mu")
            .await
            .expect("all")
            .is_empty()
    );
    for (k, v) in [("c@x", "3"), ("a@x", "1"), ("b@x", "2")] {
        m.set("roster", "h.example", "mu", k, Some(v.as_bytes()))
            .await
            .expect("set");
    }
    m.set("pending", "h.example", "mu", "z@x", Some(b"p"))
        .await
        .expect("set");
    m.set("roster", "h.example", "other", "a@x", Some(b"o"))
        .await
        .expect("set");
    assert_eq!(
        m.get("roster", "h.example", "mu", "b@x")
            .await
            .expect("get"),
        Some(b"2".to_vec())
    );
    m.set("roster", "h.example", "mu", "b@x", Some(b"22"))
        .await
        .expect("overwrite");
    assert_eq!(
        m.get_all("roster", "h.example", "mu").await.expect("all"),
        vec![
            ("a@x".to_owned(), b"1".to_vec()),
            ("b@x".to_owned(), b"22".to_vec()),
            ("c@x".to_owned(), b"3".to_vec()),
        ]
    );
    m.set("roster", "h.example", "mu", "a@x", None)
        .await
        .expect("delete");
    m.set("roster", "h.example", "mu", "nope", None)
        .await
        .expect("delete missing");
    assert_eq!(
        m.get("roster", "h.example", "mu", "a@x")
            .await
            .expect("get"),
        None
    );
    assert_eq!(
        m.get_all("roster", "h.example", "mu")
            .await
            .expect("all")
            .len(),
        2
    );
    m.clear("roster", "h.example", "mu").await.expect("clear");
    assert!(
        m.get_all("roster", "h.example", "mu")
            .await
            .expect("all")
            .is_empty()
    );
    // Other store and other user untouched.
    assert_eq!(
        m.get_all("pending", "h.example", "mu").await.expect("all"),
        vec![("z@x".to_owned(), b"p".to_vec())]
    );
    assert_eq!(
        m.get("roster", "h.example", "other", "a@x")
            .await
            .expect("get"),
        Some(b"o".to_vec())
    );
}

const H: &str = "arch.example";

fn ids(items: &[ArchiveItem]) -> Vec<String> {
    items.iter().map(|i| i.id.clone()).collect()
}

async fn q(s: &Storage, query: ArchiveQuery) -> Vec<ArchiveItem> {
    s.archive
        .query("mam", H, "alice", &query)
        .await
        .expect("query")
}

async fn archive(s: &Storage) {
    let ar = &s.archive;
    // 10 items for alice: alternating partners, stamps 1000..=10000.
    let mut all = Vec::new();
    for i in 0..10i64 {
        let with = if i % 2 == 0 { "bob@x" } else { "carol@x" };
        let data = format!("<message n='{i}'/>").into_bytes();
        let id = ar
            .append("mam", H, "alice", with, (i + 1) * 1000, &data, None)
            .await
            .expect("append");
        assert_eq!(id.len(), 32);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        all.push(id);
        // Noise in other users and stores, interleaved.
        ar.append("mam", H, "bob", "alice@x", (i + 1) * 1000, b"b", None)
            .await
            .expect("append");
        ar.append("offline", H, "alice", "bob@x", (i + 1) * 1000, b"o", None)
            .await
            .expect("append");
    }
    let mut unique = all.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 10, "ids unique");

    // Everything, ascending.
    let items = q(s, ArchiveQuery::default()).await;
    assert_eq!(ids(&items), all);
    assert!(items.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!(items[3].stamp_ms, 4000);
    assert_eq!(items[3].with, "carol@x");
    assert_eq!(items[3].data, b"<message n='3'/>");

    // with.
    let bob = q(
        s,
        ArchiveQuery {
            with: Some("bob@x".into()),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(ids(&bob), [0, 2, 4, 6, 8].map(|i| all[i].clone()));
    assert!(
        q(
            s,
            ArchiveQuery {
                with: Some("nobody@x".into()),
                ..Default::default()
            }
        )
        .await
        .is_empty()
    );

    // start / end, inclusive.
    let range = q(
        s,
        ArchiveQuery {
            start_ms: Some(3000),
            end_ms: Some(6000),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(ids(&range), all[2..6]);
    let from = q(
        s,
        ArchiveQuery {
            start_ms: Some(9500),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(ids(&from), all[9..]);
    let until = q(
        s,
        ArchiveQuery {
            end_ms: Some(1000),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(ids(&until), all[..1]);

    // ids: order of the archive, unknown and foreign ids ignored.
    let bobs_item = ar
        .query("mam", H, "bob", &ArchiveQuery::default())
        .await
        .expect("query")[0]
        .id
        .clone();
    let picked = q(
        s,
        ArchiveQuery {
            ids: Some(vec![
                all[7].clone(),
                "nope".into(),
                all[1].clone(),
                bobs_item.clone(),
                "\"]'".into(),
            ]),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(ids(&picked), [all[1].clone(), all[7].clone()]);
    assert!(
        q(
            s,
            ArchiveQuery {
                ids: Some(Vec::new()),
                ..Default::default()
            }
        )
        .await
        .is_empty()
    );

    // limit and reverse.
    let first3 = q(
        s,
        ArchiveQuery {
            limit: Some(3),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(ids(&first3), all[..3]);
    let rev = q(
        s,
        ArchiveQuery {
            reverse: true,
            ..Default::default()
        },
    )
    .await;
    let mut all_rev = all.clone();
    all_rev.reverse();
    assert_eq!(ids(&rev), all_rev);
    let last3 = q(
        s,
        ArchiveQuery {
            reverse: true,
            limit: Some(3),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(ids(&last3), all_rev[..3]);
    assert!(
        q(
            s,
            ArchiveQuery {
                limit: Some(0),
                ..Default::default()
            }
        )
        .await
        .is_empty()
    );

    // Keyset pagination forwards with after_id.
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = q(
            s,
            ArchiveQuery {
                after_id: after.clone(),
                limit: Some(3),
                ..Default::default()
            },
        )
        .await;
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 3);
        after = page.last().map(|i| i.id.clone());
        seen.extend(ids(&page));
    }
    assert_eq!(seen, all);

    // Keyset pagination backwards with before_id + reverse.
    let mut seen = Vec::new();
    let mut before = None;
    loop {
        let page = q(
            s,
            ArchiveQuery {
                before_id: before.clone(),
                limit: Some(4),
                reverse: true,
                ..Default::default()
            },
        )
        .await;
        if page.is_empty() {
            break;
        }
        before = page.last().map(|i| i.id.clone());
        seen.extend(ids(&page));
    }
    assert_eq!(seen, all_rev);

    // before_id without reverse: the oldest items before it; after_id with reverse.
    let before_ascending = q(
        s,
        ArchiveQuery {
            before_id: Some(all[5].clone()),
            limit: Some(2),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(ids(&before_ascending), all[..2]);
    let after_reverse = q(
        s,
        ArchiveQuery {
            after_id: Some(all[5].clone()),
            reverse: true,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(ids(&after_reverse), all_rev[..4]);

    // Both bounds, combined with a filter.
    let between = q(
        s,
        ArchiveQuery {
            after_id: Some(all[1].clone()),
            before_id: Some(all[8].clone()),
            with: Some("carol@x".into()),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(ids(&between), [3, 5, 7].map(|i| all[i].clone()));
    // Inverted and empty windows.
    for (a, b) in [(7, 2), (4, 4), (4, 5)] {
        assert!(
            q(
                s,
                ArchiveQuery {
                    after_id: Some(all[a].clone()),
                    before_id: Some(all[b].clone()),
                    ..Default::default()
                }
            )
            .await
            .is_empty()
        );
    }
    // Unknown or foreign bounds match nothing.
    for bound in ["nope".to_owned(), bobs_item.clone()] {
        assert!(
            q(
                s,
                ArchiveQuery {
                    after_id: Some(bound.clone()),
                    ..Default::default()
                }
            )
            .await
            .is_empty()
        );
        assert!(
            q(
                s,
                ArchiveQuery {
                    before_id: Some(bound.clone()),
                    ..Default::default()
                }
            )
            .await
            .is_empty()
        );
    }

    // count: same filters, ignores limit.
    let count = |query: ArchiveQuery| async move {
        ar.count("mam", H, "alice", &query).await.expect("count")
    };
    assert_eq!(count(ArchiveQuery::default()).await, 10);
    assert_eq!(
        count(ArchiveQuery {
            limit: Some(2),
            ..Default::default()
        })
        .await,
        10
    );
    assert_eq!(
        count(ArchiveQuery {
            with: Some("bob@x".into()),
            limit: Some(1),
            ..Default::default()
        })
        .await,
        5
    );
    assert_eq!(
        count(ArchiveQuery {
            after_id: Some(all[6].clone()),
            ..Default::default()
        })
        .await,
        3
    );
    assert_eq!(
        count(ArchiveQuery {
            before_id: Some(all[6].clone()),
            start_ms: Some(2000),
            ..Default::default()
        })
        .await,
        5
    );
    assert_eq!(
        count(ArchiveQuery {
            ids: Some(vec![all[0].clone(), bobs_item.clone()]),
            ..Default::default()
        })
        .await,
        1
    );
    assert_eq!(
        ar.count("mam", H, "nobody", &ArchiveQuery::default())
            .await
            .expect("count"),
        0
    );
    assert_eq!(
        ar.count("offline", H, "alice", &ArchiveQuery::default())
            .await
            .expect("count"),
        10
    );
    assert!(
        ar.query("mam", H, "nobody", &ArchiveQuery::default())
            .await
            .expect("query")
            .is_empty()
    );

    // delete by ids: only this user's, unknown ignored.
    let n = ar
        .delete(
            "mam",
            H,
            "alice",
            Some(&[
                all[0].clone(),
                all[9].clone(),
                "nope".into(),
                bobs_item.clone(),
            ]),
        )
        .await
        .expect("delete ids");
    assert_eq!(n, 2);
    assert_eq!(ids(&q(s, ArchiveQuery::default()).await), all[1..9]);
    assert_eq!(
        ar.count("mam", H, "bob", &ArchiveQuery::default())
            .await
            .expect("count"),
        10
    );
    assert_eq!(
        ar.delete("mam", H, "alice", Some(&[]))
            .await
            .expect("delete none"),
        0
    );
    // Seqs are never reused after deletion.
    let newest = ar
        .append("mam", H, "alice", "bob@x", 11_000, b"n", None)
        .await
        .expect("append");
    let items = q(s, ArchiveQuery::default()).await;
    assert_eq!(items.last().map(|i| i.id.clone()), Some(newest));
    assert!(items.windows(2).all(|w| w[0].seq < w[1].seq));

    // delete all of one user's items in one store.
    assert_eq!(ar.delete("mam", H, "alice", None).await.expect("delete"), 9);
    assert!(q(s, ArchiveQuery::default()).await.is_empty());
    assert_eq!(ar.delete("mam", H, "alice", None).await.expect("delete"), 0);
    assert_eq!(
        ar.count("offline", H, "alice", &ArchiveQuery::default())
            .await
            .expect("count"),
        10
    );

    // delete_older_than: all users of one store, strictly older.
    ar.append("offline", H, "carol", "x@x", 500, b"c", None)
        .await
        .expect("append");
    let n = ar.delete_older_than("offline", 3000).await.expect("expire");
    assert_eq!(n, 3); // alice 1000, 2000; carol 500
    let left = ar
        .query("offline", H, "alice", &ArchiveQuery::default())
        .await
        .expect("query");
    assert_eq!(left.len(), 8);
    assert_eq!(left[0].stamp_ms, 3000);
    assert_eq!(
        ar.count("offline", H, "carol", &ArchiveQuery::default())
            .await
            .expect("count"),
        0
    );
    assert_eq!(
        ar.count("mam", H, "bob", &ArchiveQuery::default())
            .await
            .expect("count"),
        10,
        "other stores untouched"
    );
    assert_eq!(
        ar.delete_older_than("nostore", i64::MAX)
            .await
            .expect("expire"),
        0
    );
    // Clean up for later parts of the suite.
    ar.delete("offline", H, "alice", None)
        .await
        .expect("delete");
    ar.delete("mam", H, "bob", None).await.expect("delete");
}

async fn archive_limit_and_delete(s: &Storage) {
    let ar = &s.archive;
    for i in 0..3 {
        ar.append("offline", H, "lim", "x@x", i, b"m", Some(3))
            .await
            .expect("under limit");
    }
    match ar
        .append("offline", H, "lim", "x@x", 99, b"m", Some(3))
        .await
    {
        Err(StorageError::Limit(_)) => {}
        other => panic!("expected Limit, got {other:?}"),
    }
    match ar
        .append("offline", H, "lim", "x@x", 99, b"m", Some(0))
        .await
    {
        Err(StorageError::Limit(_)) => {}
        other => panic!("expected Limit, got {other:?}"),
    }
    assert_eq!(
        ar.count("offline", H, "lim", &ArchiveQuery::default())
            .await
            .expect("count"),
        3,
        "nothing stored over the limit"
    );
    // The limit is per user and store.
    ar.append("offline", H, "lim2", "x@x", 1, b"m", Some(1))
        .await
        .expect("other user");
    ar.append("mam", H, "lim", "x@x", 1, b"m", Some(1))
        .await
        .expect("other store");
    ar.append("offline", H, "lim", "x@x", 4, b"m", Some(4))
        .await
        .expect("higher limit");
    assert_eq!(ar.delete("offline", H, "lim", None).await.expect("d"), 4);
    ar.append("offline", H, "lim", "x@x", 5, b"m", Some(1))
        .await
        .expect("room again");
}

/// `append_many` is that many appends in one go: in order, fresh ids, paging works across.
async fn archive_append_many(s: &Storage) {
    let ar = &s.archive;
    let one = ar
        .append("mam", H, "bulk", "x@x", 1, b"first", None)
        .await
        .expect("append");
    let items: Vec<NewArchiveItem> = (0..600)
        .map(|i: i64| NewArchiveItem {
            with: if i % 2 == 0 { "x@x" } else { "y@x" }.to_owned(),
            stamp_ms: 2 + i,
            data: format!("<m n='{i}'/>").into_bytes(),
        })
        .collect();
    let ids = ar
        .append_many("mam", H, "bulk", &items)
        .await
        .expect("append_many");
    assert_eq!(ids.len(), 600);
    let last = ar
        .append("mam", H, "bulk", "x@x", 1000, b"last", None)
        .await
        .expect("append");
    let all = ar
        .query("mam", H, "bulk", &ArchiveQuery::default())
        .await
        .expect("query");
    assert_eq!(all.len(), 602);
    assert_eq!(all[0].id, one);
    assert_eq!(all[601].id, last);
    assert!(all.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!(
        ids,
        all[1..601].iter().map(|i| i.id.clone()).collect::<Vec<_>>()
    );
    assert_eq!(all[300].data, b"<m n='299'/>");
    assert_eq!((all[300].with.as_str(), all[300].stamp_ms), ("y@x", 301));
    // Keyset paging from an item in the middle of the batch, with a filter.
    let page = ar
        .query(
            "mam",
            H,
            "bulk",
            &ArchiveQuery {
                with: Some("x@x".into()),
                after_id: Some(ids[299].clone()),
                limit: Some(2),
                ..Default::default()
            },
        )
        .await
        .expect("page");
    assert_eq!(
        page.iter().map(|i| i.id.clone()).collect::<Vec<_>>(),
        [ids[300].clone(), ids[302].clone()]
    );
    assert!(
        ar.append_many("mam", H, "bulk", &[])
            .await
            .expect("empty")
            .is_empty()
    );
    assert_eq!(
        ar.delete("mam", H, "bulk", None).await.expect("delete"),
        602
    );
}

async fn delete_cascades(s: &Storage) {
    let (a, kv, m, ar) = (&s.accounts, &s.kv, &s.map, &s.archive);
    for u in ["doomed", "survivor"] {
        a.create("c.example", u, &creds(7)).await.expect("create");
        kv.set("roster", "c.example", u, Some(b"r"))
            .await
            .expect("kv");
        kv.set("vcard", "c.example", u, Some(b"v"))
            .await
            .expect("kv");
        m.set("roster", "c.example", u, "k", Some(b"v"))
            .await
            .expect("map");
        m.set("pending", "c.example", u, "k", Some(b"v"))
            .await
            .expect("map");
        ar.append("offline", "c.example", u, "w@x", 1, b"a", None)
            .await
            .expect("archive");
        ar.append("mam", "c.example", u, "w@x", 1, b"a", None)
            .await
            .expect("archive");
    }
    // Same username on another host keeps its data.
    kv.set("roster", "d.example", "doomed", Some(b"r"))
        .await
        .expect("kv");

    assert!(a.delete("c.example", "doomed").await.expect("delete"));
    assert!(!a.exists("c.example", "doomed").await.expect("exists"));
    for store in ["roster", "vcard"] {
        assert_eq!(
            kv.get(store, "c.example", "doomed").await.expect("kv"),
            None
        );
        assert!(
            kv.get(store, "c.example", "survivor")
                .await
                .expect("kv")
                .is_some()
        );
    }
    for store in ["roster", "pending"] {
        assert!(
            m.get_all(store, "c.example", "doomed")
                .await
                .expect("map")
                .is_empty()
        );
        assert_eq!(
            m.get_all(store, "c.example", "survivor")
                .await
                .expect("map")
                .len(),
            1
        );
    }
    for store in ["offline", "mam"] {
        let none = ArchiveQuery::default();
        assert_eq!(
            ar.count(store, "c.example", "doomed", &none)
                .await
                .expect("c"),
            0
        );
        assert_eq!(
            ar.count(store, "c.example", "survivor", &none)
                .await
                .expect("c"),
            1
        );
    }
    assert!(
        kv.get("roster", "d.example", "doomed")
            .await
            .expect("kv")
            .is_some()
    );
    assert!(a.exists("c.example", "survivor").await.expect("exists"));

    // Data of a user without an account is removed too.
    kv.set("roster", "c.example", "ghost", Some(b"r"))
        .await
        .expect("kv");
    assert!(!a.delete("c.example", "ghost").await.expect("delete"));
    assert_eq!(
        kv.get("roster", "c.example", "ghost").await.expect("kv"),
        None
    );
}

/// A pubsub item; `seq` is ignored by `publish`.
fn ps_item(id: &str, n: i64) -> PubsubItem {
    PubsubItem {
        id: id.to_owned(),
        seq: -1,
        publisher: format!("pub{n}@h.example/r"),
        stamp_ms: 1_000 + n,
        payload: format!("<entry n='{n}'/>").into_bytes(),
    }
}

fn item_ids(items: &[PubsubItem]) -> Vec<String> {
    items.iter().map(|i| i.id.clone()).collect()
}

fn sub(node: &str, jid: &str, subid: &str, state: &str) -> PubsubSubscription {
    PubsubSubscription {
        node: node.to_owned(),
        jid: jid.to_owned(),
        subid: subid.to_owned(),
        state: state.to_owned(),
        options: format!("<options {subid}/>").into_bytes(),
    }
}

async fn pubsub(s: &Storage) {
    pubsub_nodes(s).await;
    pubsub_affiliations(s).await;
    pubsub_subscriptions(s).await;
    pubsub_items(s).await;
    pubsub_paging(s).await;
    pubsub_delete(s).await;
    pubsub_account_delete(s).await;
    pubsub_forget_jid(s).await;
}

/// `forget_jid`: a deleted account's affiliations and subscriptions (bare and full JIDs) go in
/// every service; look-alike JIDs (a longer name, another domain, `%`/`_` that LIKE would
/// treat as wildcards) stay.
async fn pubsub_forget_jid(s: &Storage) {
    let p = &s.pubsub;
    for svc in ["pubsub.f.example", "owner@f.example"] {
        assert!(p.create_node(svc, "n", b"c", None).await.expect("create"));
        for (jid, aff) in [
            ("gone@f.example", "owner"),
            ("gone2@f.example", "member"),
            ("go_e@f.example", "member"),
        ] {
            p.set_affiliation(svc, "n", jid, Some(aff))
                .await
                .expect("aff");
        }
        for (jid, subid) in [
            ("gone@f.example", "1"),
            ("gone@f.example/phone", "2"),
            ("gone@f.example.org/x", "3"),
            ("gone2@f.example", "4"),
            ("go%e@f.example/y", "5"),
        ] {
            p.set_subscription(svc, &sub("n", jid, subid, "subscribed"))
                .await
                .expect("sub");
        }
    }
    assert_eq!(p.forget_jid("gone@f.example").await.expect("forget"), 6);
    for svc in ["pubsub.f.example", "owner@f.example"] {
        let affs: Vec<String> = p
            .affiliations(svc, None, None)
            .await
            .expect("affs")
            .into_iter()
            .map(|(_, j, _)| j)
            .collect();
        assert_eq!(affs, vec!["go_e@f.example", "gone2@f.example"], "{svc}");
        let mut subs: Vec<String> = p
            .subscriptions(svc, None, None)
            .await
            .expect("subs")
            .into_iter()
            .map(|s| s.jid)
            .collect();
        subs.sort();
        assert_eq!(
            subs,
            vec![
                "go%e@f.example/y",
                "gone2@f.example",
                "gone@f.example.org/x"
            ],
            "{svc}"
        );
    }
    assert_eq!(p.forget_jid("nobody@f.example").await.expect("forget"), 0);
}

async fn pubsub_nodes(s: &Storage) {
    let p = &s.pubsub;
    const SVC: &str = "pubsub.n.example";
    assert!(p.nodes(SVC).await.expect("nodes").is_empty());
    assert_eq!(p.node(SVC, "b").await.expect("node"), None);
    assert!(p.create_node(SVC, "b", b"cb", None).await.expect("create"));
    assert!(p.create_node(SVC, "a", b"ca", None).await.expect("create"));
    // Exists already: nothing changes.
    assert!(!p.create_node(SVC, "b", b"other", None).await.expect("dup"));
    // A service whose key is a prefix of another's, and the same node name elsewhere.
    assert!(
        p.create_node("pubsub.n.exampl", "a", b"x", None)
            .await
            .expect("create")
    );
    assert_eq!(
        p.nodes(SVC).await.expect("nodes"),
        vec![
            ("a".to_owned(), b"ca".to_vec()),
            ("b".to_owned(), b"cb".to_vec())
        ]
    );
    assert_eq!(p.node(SVC, "b").await.expect("node"), Some(b"cb".to_vec()));
    assert!(p.set_node_config(SVC, "a", b"new").await.expect("config"));
    assert_eq!(p.node(SVC, "a").await.expect("node"), Some(b"new".to_vec()));
    assert_eq!(
        p.node("pubsub.n.exampl", "a").await.expect("node"),
        Some(b"x".to_vec())
    );
    // No such node: not created by set_node_config.
    assert!(!p.set_node_config(SVC, "zz", b"c").await.expect("config"));
    assert_eq!(p.node(SVC, "zz").await.expect("node"), None);
    // An empty config is a config.
    assert!(
        p.create_node(SVC, "empty", b"", None)
            .await
            .expect("create")
    );
    assert_eq!(p.node(SVC, "empty").await.expect("node"), Some(Vec::new()));

    // max_nodes counts the service's nodes only.
    const LIM: &str = "lim@n.example";
    for node in ["n1", "n2"] {
        assert!(
            p.create_node(LIM, node, b"c", Some(2))
                .await
                .expect("create")
        );
    }
    match p.create_node(LIM, "n3", b"c", Some(2)).await {
        Err(StorageError::Limit(_)) => {}
        other => panic!("expected Limit, got {other:?}"),
    }
    assert_eq!(p.node(LIM, "n3").await.expect("node"), None);
    assert_eq!(p.nodes(LIM).await.expect("nodes").len(), 2);
    // An existing node is reported as such, limit or not.
    assert!(!p.create_node(LIM, "n1", b"c", Some(2)).await.expect("dup"));
    assert!(!p.create_node(LIM, "n1", b"c", Some(0)).await.expect("dup"));
    assert!(p.create_node(LIM, "n3", b"c", Some(3)).await.expect("more"));
    assert!(
        p.create_node(LIM, "n4", b"c", None)
            .await
            .expect("no limit")
    );
    assert!(matches!(
        p.create_node("lim2@n.example", "n1", b"c", Some(0)).await,
        Err(StorageError::Limit(_))
    ));
    assert!(
        p.create_node("lim2@n.example", "n1", b"c", Some(1))
            .await
            .expect("other service")
    );
    assert!(p.delete_node(LIM, "n4").await.expect("delete"));
    assert!(p.delete_node(LIM, "n3").await.expect("delete"));
    assert!(p.create_node(LIM, "n5", b"c", Some(3)).await.expect("room"));
    assert_eq!(
        p.nodes(LIM)
            .await
            .expect("nodes")
            .into_iter()
            .map(|(n, _)| n)
            .collect::<Vec<_>>(),
        ["n1", "n2", "n5"]
    );
}

async fn pubsub_affiliations(s: &Storage) {
    let p = &s.pubsub;
    const SVC: &str = "pubsub.a.example";
    for node in ["n1", "n2"] {
        assert!(p.create_node(SVC, node, b"c", None).await.expect("create"));
    }
    assert!(
        p.affiliations(SVC, None, None)
            .await
            .expect("affs")
            .is_empty()
    );
    p.set_affiliation(SVC, "n2", "b@h", Some("owner"))
        .await
        .expect("set");
    p.set_affiliation(SVC, "n1", "c@h", Some("publisher"))
        .await
        .expect("set");
    p.set_affiliation(SVC, "n1", "a@h", Some("member"))
        .await
        .expect("set");
    p.set_affiliation(SVC, "n2", "a@h", Some("owner"))
        .await
        .expect("set");
    let t = |n: &str, j: &str, a: &str| (n.to_owned(), j.to_owned(), a.to_owned());
    assert_eq!(
        p.affiliations(SVC, None, None).await.expect("affs"),
        vec![
            t("n1", "a@h", "member"),
            t("n1", "c@h", "publisher"),
            t("n2", "a@h", "owner"),
            t("n2", "b@h", "owner"),
        ]
    );
    // Replaced, not duplicated.
    p.set_affiliation(SVC, "n1", "a@h", Some("outcast"))
        .await
        .expect("replace");
    assert_eq!(
        p.affiliations(SVC, Some("n1"), None).await.expect("affs"),
        vec![t("n1", "a@h", "outcast"), t("n1", "c@h", "publisher")]
    );
    assert_eq!(
        p.affiliations(SVC, None, Some("a@h")).await.expect("affs"),
        vec![t("n1", "a@h", "outcast"), t("n2", "a@h", "owner")]
    );
    assert_eq!(
        p.affiliations(SVC, Some("n2"), Some("b@h"))
            .await
            .expect("affs"),
        vec![t("n2", "b@h", "owner")]
    );
    assert!(
        p.affiliations(SVC, Some("n2"), Some("c@h"))
            .await
            .expect("affs")
            .is_empty()
    );
    assert!(
        p.affiliations(SVC, Some("nope"), None)
            .await
            .expect("affs")
            .is_empty()
    );
    // Removal, also of what is not there.
    p.set_affiliation(SVC, "n1", "a@h", None)
        .await
        .expect("remove");
    p.set_affiliation(SVC, "n1", "zz@h", None)
        .await
        .expect("remove absent");
    assert_eq!(
        p.affiliations(SVC, None, Some("a@h")).await.expect("affs"),
        vec![t("n2", "a@h", "owner")]
    );
    // A node that does not exist keeps no affiliation.
    p.set_affiliation(SVC, "nope", "a@h", Some("owner"))
        .await
        .expect("no node");
    assert!(
        p.affiliations(SVC, Some("nope"), None)
            .await
            .expect("affs")
            .is_empty()
    );
    assert!(
        p.create_node(SVC, "nope", b"c", None)
            .await
            .expect("create")
    );
    assert!(
        p.affiliations(SVC, Some("nope"), None)
            .await
            .expect("affs")
            .is_empty()
    );
    // Other services see none of it.
    assert!(
        p.affiliations("pubsub.a.example.org", None, None)
            .await
            .expect("affs")
            .is_empty()
    );
}

async fn pubsub_subscriptions(s: &Storage) {
    let p = &s.pubsub;
    const SVC: &str = "pubsub.s.example";
    for node in ["n1", "n2"] {
        assert!(p.create_node(SVC, node, b"c", None).await.expect("create"));
    }
    for sb in [
        sub("n2", "a@h", "s1", "subscribed"),
        sub("n1", "b@h/r", "s1", "subscribed"),
        sub("n1", "a@h", "s2", "subscribed"),
        sub("n1", "a@h", "s1", "unconfigured"),
    ] {
        p.set_subscription(SVC, &sb).await.expect("subscribe");
    }
    assert_eq!(
        p.subscriptions(SVC, None, None).await.expect("subs"),
        vec![
            sub("n1", "a@h", "s1", "unconfigured"),
            sub("n1", "a@h", "s2", "subscribed"),
            sub("n1", "b@h/r", "s1", "subscribed"),
            sub("n2", "a@h", "s1", "subscribed"),
        ]
    );
    // Replaced by (node, jid, subid), options included.
    let mut changed = sub("n1", "a@h", "s1", "pending");
    changed.options = b"<x/>".to_vec();
    p.set_subscription(SVC, &changed).await.expect("replace");
    assert_eq!(
        p.subscriptions(SVC, Some("n1"), Some("a@h"))
            .await
            .expect("subs"),
        vec![changed.clone(), sub("n1", "a@h", "s2", "subscribed")]
    );
    assert_eq!(
        p.subscriptions(SVC, None, Some("a@h"))
            .await
            .expect("subs")
            .len(),
        3
    );
    assert_eq!(
        p.subscriptions(SVC, Some("n2"), None).await.expect("subs"),
        vec![sub("n2", "a@h", "s1", "subscribed")]
    );
    // A bare JID does not match its full JIDs: JIDs are opaque here.
    assert!(
        p.subscriptions(SVC, None, Some("b@h"))
            .await
            .expect("subs")
            .is_empty()
    );
    // Removal by subid, then all of a JID's.
    assert_eq!(
        p.remove_subscription(SVC, "n1", "a@h", Some("s2"))
            .await
            .expect("remove"),
        1
    );
    assert_eq!(
        p.remove_subscription(SVC, "n1", "a@h", Some("s2"))
            .await
            .expect("remove"),
        0
    );
    assert_eq!(
        p.remove_subscription(SVC, "n1", "a@h", Some("s9"))
            .await
            .expect("remove"),
        0
    );
    p.set_subscription(SVC, &sub("n1", "a@h", "s3", "subscribed"))
        .await
        .expect("subscribe");
    assert_eq!(
        p.remove_subscription(SVC, "n1", "a@h", None)
            .await
            .expect("remove all"),
        2
    );
    assert_eq!(
        p.remove_subscription(SVC, "nope", "a@h", None)
            .await
            .expect("no node"),
        0
    );
    assert_eq!(
        p.subscriptions(SVC, None, None).await.expect("subs"),
        vec![
            sub("n1", "b@h/r", "s1", "subscribed"),
            sub("n2", "a@h", "s1", "subscribed"),
        ]
    );
    // A node that does not exist keeps no subscription.
    p.set_subscription(SVC, &sub("nope", "a@h", "s1", "subscribed"))
        .await
        .expect("no node");
    assert!(
        p.subscriptions(SVC, Some("nope"), None)
            .await
            .expect("subs")
            .is_empty()
    );
    assert!(
        p.subscriptions("other.s.example", None, None)
            .await
            .expect("subs")
            .is_empty()
    );
}

async fn pubsub_items(s: &Storage) {
    let p = &s.pubsub;
    const SVC: &str = "items@i.example";
    let all = ItemQuery::default();
    let items = |node: &'static str, q: ItemQuery| async move {
        s.pubsub.items(SVC, node, &q).await.expect("items")
    };
    // No node: nothing stored.
    assert_eq!(
        p.publish(SVC, "news", &ps_item("a", 0), None)
            .await
            .expect("publish"),
        None
    );
    assert_eq!(p.item_count(SVC, "news").await.expect("count"), 0);
    assert!(
        p.create_node(SVC, "news", b"c", None)
            .await
            .expect("create")
    );
    assert!(items("news", all.clone()).await.is_empty());
    for (i, id) in ["a", "b", "c"].into_iter().enumerate() {
        let i = i64::try_from(i).expect("small");
        assert_eq!(
            p.publish(SVC, "news", &ps_item(id, i), None)
                .await
                .expect("publish"),
            Some(Vec::new())
        );
    }
    let got = items("news", all.clone()).await;
    assert_eq!(item_ids(&got), ["c", "b", "a"]);
    assert!(got.windows(2).all(|w| w[0].seq > w[1].seq), "{got:?}");
    // Everything but `seq` is stored as given.
    assert_eq!(
        PubsubItem {
            seq: -1,
            ..got[2].clone()
        },
        ps_item("a", 0)
    );
    assert_eq!(p.item_count(SVC, "news").await.expect("count"), 3);

    // Republishing an id keeps one item with that id, now the newest with a higher seq.
    let newest_seq = got[0].seq;
    assert_eq!(
        p.publish(SVC, "news", &ps_item("a", 10), None)
            .await
            .expect("republish"),
        Some(Vec::new())
    );
    let got = items("news", all.clone()).await;
    assert_eq!(item_ids(&got), ["a", "c", "b"]);
    assert!(got[0].seq > newest_seq);
    assert_eq!(got[0].payload, ps_item("a", 10).payload);
    assert_eq!(got[0].stamp_ms, 1_010);
    assert_eq!(p.item_count(SVC, "news").await.expect("count"), 3);
    let oldest_first = ItemQuery {
        oldest_first: true,
        ..Default::default()
    };
    assert_eq!(
        item_ids(&items("news", oldest_first.clone()).await),
        ["b", "c", "a"]
    );

    // The same id in another node, or another service, is another item.
    assert!(
        p.create_node(SVC, "other", b"c", None)
            .await
            .expect("create")
    );
    assert!(
        p.create_node("items@i.example.org", "news", b"c", None)
            .await
            .expect("create")
    );
    p.publish(SVC, "other", &ps_item("b", 20), None)
        .await
        .expect("publish");
    p.publish("items@i.example.org", "news", &ps_item("b", 21), None)
        .await
        .expect("publish");
    assert_eq!(item_ids(&items("news", all.clone()).await), ["a", "c", "b"]);
    assert_eq!(items("news", all.clone()).await[2].stamp_ms, 1_001);

    // max_items trims the oldest beyond it, in the same call, and names them oldest first.
    assert_eq!(
        p.publish(SVC, "news", &ps_item("d", 3), Some(3))
            .await
            .expect("publish"),
        Some(vec!["b".to_owned()])
    );
    assert_eq!(item_ids(&items("news", all.clone()).await), ["d", "a", "c"]);
    assert_eq!(
        p.publish(SVC, "news", &ps_item("e", 4), Some(1))
            .await
            .expect("publish"),
        Some(vec!["c".to_owned(), "a".to_owned(), "d".to_owned()])
    );
    assert_eq!(item_ids(&items("news", all.clone()).await), ["e"]);
    // Replacing at the limit trims nothing.
    assert_eq!(
        p.publish(SVC, "news", &ps_item("e", 5), Some(1))
            .await
            .expect("publish"),
        Some(Vec::new())
    );
    assert_eq!(p.item_count(SVC, "news").await.expect("count"), 1);
    // max_items 0 keeps nothing, not even the new item.
    assert_eq!(
        p.publish(SVC, "other", &ps_item("z", 6), Some(0))
            .await
            .expect("publish"),
        Some(vec!["b".to_owned(), "z".to_owned()])
    );
    assert_eq!(p.item_count(SVC, "other").await.expect("count"), 0);
    // The other service's node was not touched.
    assert_eq!(
        p.item_count("items@i.example.org", "news")
            .await
            .expect("count"),
        1
    );

    // trim.
    for (i, id) in ["f", "g", "h"].into_iter().enumerate() {
        let i = i64::try_from(i).expect("small");
        p.publish(SVC, "news", &ps_item(id, 30 + i), None)
            .await
            .expect("publish");
    }
    assert_eq!(
        item_ids(&items("news", all.clone()).await),
        ["h", "g", "f", "e"]
    );
    assert_eq!(p.trim(SVC, "news", 2).await.expect("trim"), ["e", "f"]);
    assert!(p.trim(SVC, "news", 2).await.expect("trim").is_empty());
    assert!(p.trim(SVC, "news", 5).await.expect("trim").is_empty());
    assert_eq!(item_ids(&items("news", all.clone()).await), ["h", "g"]);
    assert_eq!(p.trim(SVC, "news", 0).await.expect("trim"), ["g", "h"]);
    assert_eq!(p.item_count(SVC, "news").await.expect("count"), 0);
    assert!(p.trim(SVC, "nope", 0).await.expect("trim").is_empty());

    // retract.
    p.publish(SVC, "news", &ps_item("x", 40), None)
        .await
        .expect("publish");
    p.publish(SVC, "news", &ps_item("y", 41), None)
        .await
        .expect("publish");
    assert!(p.retract(SVC, "news", "x").await.expect("retract"));
    assert!(!p.retract(SVC, "news", "x").await.expect("retract"));
    assert!(!p.retract(SVC, "other", "y").await.expect("retract"));
    assert!(!p.retract(SVC, "nope", "y").await.expect("retract"));
    assert_eq!(item_ids(&items("news", all.clone()).await), ["y"]);

    // purge; seqs are never reused afterwards.
    let before_purge = items("news", all.clone()).await[0].seq;
    p.publish(SVC, "news", &ps_item("w", 42), None)
        .await
        .expect("publish");
    assert_eq!(p.purge(SVC, "news").await.expect("purge"), 2);
    assert_eq!(p.purge(SVC, "news").await.expect("purge"), 0);
    assert_eq!(p.purge(SVC, "nope").await.expect("purge"), 0);
    assert!(items("news", all.clone()).await.is_empty());
    assert_eq!(p.item_count(SVC, "news").await.expect("count"), 0);
    // The node itself stays.
    assert_eq!(
        p.node(SVC, "news").await.expect("node"),
        Some(b"c".to_vec())
    );
    p.publish(SVC, "news", &ps_item("w", 43), None)
        .await
        .expect("publish");
    assert!(items("news", all.clone()).await[0].seq > before_purge + 1);
    // Items of a node that does not exist.
    assert!(items("nope", all).await.is_empty());
    assert_eq!(p.item_count(SVC, "nope").await.expect("count"), 0);
}

async fn pubsub_paging(s: &Storage) {
    const SVC: &str = "pubsub.p.example";
    let p = &s.pubsub;
    assert!(
        p.create_node(SVC, "feed", b"c", None)
            .await
            .expect("create")
    );
    assert!(
        p.create_node(SVC, "side", b"c", None)
            .await
            .expect("create")
    );
    let names: Vec<String> = (0..10).map(|i| format!("i{i:02}")).collect();
    for (i, id) in names.iter().enumerate() {
        let i = i64::try_from(i).expect("small");
        p.publish(SVC, "feed", &ps_item(id, i), None)
            .await
            .expect("publish");
    }
    p.publish(SVC, "side", &ps_item("s0", 0), None)
        .await
        .expect("publish");
    let page = |q: ItemQuery| async move {
        item_ids(&s.pubsub.items(SVC, "feed", &q).await.expect("items"))
    };
    let id = |s: &str| Some(s.to_owned());
    let newest = |after: Option<String>, before: Option<String>, limit: Option<usize>| ItemQuery {
        after_id: after,
        before_id: before,
        limit,
        ..Default::default()
    };
    let oldest = |after: Option<String>, before: Option<String>, limit: Option<usize>| ItemQuery {
        after_id: after,
        before_id: before,
        limit,
        oldest_first: true,
        ids: None,
    };

    // Walk newest first, three at a time, from each page's last id.
    let mut walked = Vec::new();
    let mut after = None;
    loop {
        let got = page(newest(after.clone(), None, Some(3))).await;
        if got.is_empty() {
            break;
        }
        assert!(got.len() <= 3);
        after = got.last().cloned();
        walked.extend(got);
    }
    let mut reversed = names.clone();
    reversed.reverse();
    assert_eq!(walked, reversed);
    assert_eq!(
        page(newest(None, None, Some(3))).await,
        ["i09", "i08", "i07"]
    );
    assert_eq!(
        page(newest(id("i07"), None, Some(3))).await,
        ["i06", "i05", "i04"]
    );
    assert_eq!(page(newest(id("i01"), None, Some(3))).await, ["i00"]);
    assert!(page(newest(id("i00"), None, None)).await.is_empty());

    // Oldest first.
    let mut walked = Vec::new();
    let mut after = None;
    loop {
        let got = page(oldest(after.clone(), None, Some(4))).await;
        if got.is_empty() {
            break;
        }
        after = got.last().cloned();
        walked.extend(got);
    }
    assert_eq!(walked, names);
    assert_eq!(
        page(oldest(id("i03"), None, Some(4))).await,
        ["i04", "i05", "i06", "i07"]
    );
    assert!(page(oldest(id("i09"), None, Some(4))).await.is_empty());

    // before_id: the items before the named one in the query's order, from the start of that
    // order (so with a limit, the ones farthest from it).
    assert_eq!(
        page(newest(None, id("i05"), None)).await,
        ["i09", "i08", "i07", "i06"]
    );
    assert_eq!(page(newest(None, id("i05"), Some(2))).await, ["i09", "i08"]);
    assert_eq!(
        page(oldest(None, id("i03"), None)).await,
        ["i00", "i01", "i02"]
    );
    assert_eq!(page(oldest(None, id("i03"), Some(2))).await, ["i00", "i01"]);
    assert!(page(oldest(None, id("i00"), None)).await.is_empty());
    assert!(page(newest(None, id("i09"), None)).await.is_empty());
    // The page just before an id: the other order, after it.
    assert_eq!(page(oldest(id("i05"), None, Some(2))).await, ["i06", "i07"]);

    // Both bounds.
    assert_eq!(
        page(newest(id("i08"), id("i04"), None)).await,
        ["i07", "i06", "i05"]
    );
    assert_eq!(
        page(newest(id("i08"), id("i04"), Some(2))).await,
        ["i07", "i06"]
    );
    assert_eq!(
        page(oldest(id("i02"), id("i06"), None)).await,
        ["i03", "i04", "i05"]
    );
    assert!(page(oldest(id("i06"), id("i02"), None)).await.is_empty());
    assert!(page(newest(id("i02"), id("i06"), None)).await.is_empty());
    assert!(page(oldest(id("i04"), id("i04"), None)).await.is_empty());
    assert!(page(oldest(id("i04"), id("i05"), None)).await.is_empty());

    // Unknown ids match nothing, also one of another node, also next to a known one.
    for unknown in ["nope", "s0"] {
        assert!(page(newest(id(unknown), None, None)).await.is_empty());
        assert!(page(newest(None, id(unknown), None)).await.is_empty());
        assert!(page(oldest(id(unknown), None, Some(3))).await.is_empty());
        assert!(page(oldest(id("i01"), id(unknown), None)).await.is_empty());
        assert!(page(newest(id(unknown), id("i01"), None)).await.is_empty());
    }

    // Limits.
    assert!(page(newest(None, None, Some(0))).await.is_empty());
    assert_eq!(page(newest(None, None, Some(100))).await.len(), 10);

    // ids.
    let with_ids = |ids: &[&str], oldest_first: bool, after: Option<String>, limit| ItemQuery {
        ids: Some(ids.iter().map(|s| (*s).to_owned()).collect()),
        oldest_first,
        after_id: after,
        limit,
        before_id: None,
    };
    assert_eq!(
        page(with_ids(&["i03", "i07", "nope", "s0"], false, None, None)).await,
        ["i07", "i03"]
    );
    assert_eq!(
        page(with_ids(&["i07", "i03"], true, None, None)).await,
        ["i03", "i07"]
    );
    assert_eq!(
        page(with_ids(&["i03", "i07"], false, None, Some(1))).await,
        ["i07"]
    );
    assert_eq!(
        page(with_ids(&["i03", "i07"], false, id("i07"), None)).await,
        ["i03"]
    );
    assert_eq!(
        page(with_ids(&["i03", "i03"], false, None, None)).await,
        ["i03"]
    );
    assert!(page(with_ids(&[], false, None, None)).await.is_empty());
    assert!(
        page(with_ids(&["i03"], false, id("nope"), None))
            .await
            .is_empty()
    );
    // Quotes and backslashes in ids.
    let odd = "it\"em\\1";
    p.publish(SVC, "side", &ps_item(odd, 1), None)
        .await
        .expect("publish");
    assert_eq!(
        item_ids(
            &p.items(SVC, "side", &with_ids(&[odd], false, None, None))
                .await
                .expect("items")
        ),
        [odd]
    );

    // A republished item moves to the newest end; keyset pages follow the new order.
    p.publish(SVC, "feed", &ps_item("i00", 99), None)
        .await
        .expect("republish");
    assert_eq!(page(newest(None, None, Some(2))).await, ["i00", "i09"]);
    assert_eq!(page(newest(id("i00"), None, Some(1))).await, ["i09"]);
    assert_eq!(page(oldest(None, None, Some(2))).await, ["i01", "i02"]);
    assert!(page(oldest(id("i00"), None, None)).await.is_empty());
    assert_eq!(p.item_count(SVC, "feed").await.expect("count"), 10);
}

async fn pubsub_delete(s: &Storage) {
    let p = &s.pubsub;
    const SVC: &str = "pubsub.d.example";
    const KEEP: &str = "pubsub.d.example.net";
    for (svc, node) in [(SVC, "gone"), (SVC, "kept"), (KEEP, "gone")] {
        assert!(p.create_node(svc, node, b"c", None).await.expect("create"));
        p.publish(svc, node, &ps_item("i1", 1), None)
            .await
            .expect("publish");
        p.publish(svc, node, &ps_item("i2", 2), None)
            .await
            .expect("publish");
        p.set_affiliation(svc, node, "o@h", Some("owner"))
            .await
            .expect("aff");
        p.set_subscription(svc, &sub(node, "s@h", "1", "subscribed"))
            .await
            .expect("sub");
    }
    assert!(p.delete_node(SVC, "gone").await.expect("delete"));
    assert!(!p.delete_node(SVC, "gone").await.expect("delete again"));
    assert!(!p.delete_node(SVC, "never").await.expect("delete absent"));
    assert_eq!(p.node(SVC, "gone").await.expect("node"), None);
    assert_eq!(p.item_count(SVC, "gone").await.expect("count"), 0);
    assert!(
        p.items(SVC, "gone", &ItemQuery::default())
            .await
            .expect("items")
            .is_empty()
    );
    assert!(
        p.affiliations(SVC, Some("gone"), None)
            .await
            .expect("affs")
            .is_empty()
    );
    assert!(
        p.subscriptions(SVC, Some("gone"), None)
            .await
            .expect("subs")
            .is_empty()
    );
    // The sibling and the other service's node of the same name keep everything.
    for (svc, node) in [(SVC, "kept"), (KEEP, "gone")] {
        assert_eq!(p.item_count(svc, node).await.expect("count"), 2);
        assert_eq!(
            p.affiliations(svc, Some(node), None)
                .await
                .expect("affs")
                .len(),
            1
        );
        assert_eq!(
            p.subscriptions(svc, Some(node), None)
                .await
                .expect("subs")
                .len(),
            1
        );
    }
    // A node created again under the same name starts empty.
    assert!(
        p.create_node(SVC, "gone", b"c2", None)
            .await
            .expect("again")
    );
    assert_eq!(
        p.node(SVC, "gone").await.expect("node"),
        Some(b"c2".to_vec())
    );
    assert_eq!(p.item_count(SVC, "gone").await.expect("count"), 0);
    assert!(
        p.affiliations(SVC, Some("gone"), None)
            .await
            .expect("affs")
            .is_empty()
    );
    assert!(
        p.subscriptions(SVC, Some("gone"), None)
            .await
            .expect("subs")
            .is_empty()
    );
    assert_eq!(
        p.publish(SVC, "gone", &ps_item("i1", 3), Some(5))
            .await
            .expect("publish"),
        Some(Vec::new())
    );
    assert_eq!(p.item_count(SVC, "gone").await.expect("count"), 1);

    // delete_service: everything of that service, nothing of another.
    p.delete_service(SVC).await.expect("delete service");
    p.delete_service("never.d.example")
        .await
        .expect("delete absent service");
    assert!(p.nodes(SVC).await.expect("nodes").is_empty());
    for node in ["gone", "kept"] {
        assert_eq!(p.item_count(SVC, node).await.expect("count"), 0);
    }
    assert!(
        p.affiliations(SVC, None, None)
            .await
            .expect("affs")
            .is_empty()
    );
    assert!(
        p.subscriptions(SVC, None, None)
            .await
            .expect("subs")
            .is_empty()
    );
    assert_eq!(p.nodes(KEEP).await.expect("nodes").len(), 1);
    assert_eq!(p.item_count(KEEP, "gone").await.expect("count"), 2);
    assert_eq!(
        p.affiliations(KEEP, None, None).await.expect("affs").len(),
        1
    );
    assert_eq!(
        p.subscriptions(KEEP, None, None).await.expect("subs").len(),
        1
    );
    // A service created again starts empty.
    assert!(p.create_node(SVC, "kept", b"c", None).await.expect("again"));
    assert_eq!(p.item_count(SVC, "kept").await.expect("count"), 0);
    assert!(
        p.affiliations(SVC, None, None)
            .await
            .expect("affs")
            .is_empty()
    );
}

async fn pubsub_account_delete(s: &Storage) {
    let (a, p) = (&s.accounts, &s.pubsub);
    const HOST: &str = "pep.example";
    let services = [
        "doomed@pep.example",
        "other@pep.example",
        "doomed@pep.example.net",
        "pubsub.pep.example",
        "ghost@pep.example",
    ];
    for u in ["doomed", "other"] {
        a.create(HOST, u, &creds(9)).await.expect("create");
    }
    for svc in services {
        for node in ["urn:xmpp:microblog:0", "storage:bookmarks"] {
            assert!(p.create_node(svc, node, b"c", None).await.expect("create"));
            p.publish(svc, node, &ps_item("current", 1), None)
                .await
                .expect("publish");
            p.set_affiliation(svc, node, "o@h", Some("owner"))
                .await
                .expect("aff");
            p.set_subscription(svc, &sub(node, "s@h", "1", "subscribed"))
                .await
                .expect("sub");
        }
    }
    assert!(a.delete(HOST, "doomed").await.expect("delete"));
    // A user without an account loses the PEP data too.
    assert!(!a.delete(HOST, "ghost").await.expect("delete ghost"));
    for svc in ["doomed@pep.example", "ghost@pep.example"] {
        assert!(p.nodes(svc).await.expect("nodes").is_empty());
        assert!(
            p.affiliations(svc, None, None)
                .await
                .expect("affs")
                .is_empty()
        );
        assert!(
            p.subscriptions(svc, None, None)
                .await
                .expect("subs")
                .is_empty()
        );
        assert_eq!(
            p.item_count(svc, "urn:xmpp:microblog:0")
                .await
                .expect("count"),
            0
        );
    }
    for svc in &services[1..4] {
        assert_eq!(p.nodes(svc).await.expect("nodes").len(), 2, "{svc}");
        assert_eq!(
            p.affiliations(svc, None, None).await.expect("affs").len(),
            2
        );
        assert_eq!(
            p.subscriptions(svc, None, None).await.expect("subs").len(),
            2
        );
        assert_eq!(
            p.item_count(svc, "urn:xmpp:microblog:0")
                .await
                .expect("count"),
            1
        );
    }
    // The name registered again starts with an empty PEP service.
    a.create(HOST, "doomed", &creds(10)).await.expect("again");
    assert!(
        p.create_node("doomed@pep.example", "storage:bookmarks", b"c", None)
            .await
            .expect("create")
    );
    assert!(
        p.items(
            "doomed@pep.example",
            "storage:bookmarks",
            &ItemQuery::default()
        )
        .await
        .expect("items")
        .is_empty()
    );
    assert!(
        p.affiliations("doomed@pep.example", None, None)
            .await
            .expect("affs")
            .is_empty()
    );
}

#[tokio::test]
async fn memory_backend() {
    run_suite(Storage::memory(), "memory").await;
    run_suite(
        Storage::open(&Backend::Memory).await.expect("open"),
        "memory via open",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_backend() {
    let db = TempDb::new("suite");
    let s = Storage::open(&db.backend()).await.expect("open");
    assert!(db.path.exists());
    run_suite(s, "sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_persists_after_reopen() {
    let db = TempDb::new("reopen");
    let creds_a = Credentials::from_password("secret", 16);
    let (item_id, kept_id);
    {
        let backend = std::sync::Arc::new(SqliteBackend::open(&db.path).await.expect("open"));
        let s = Storage::from_backend(backend.clone());
        s.accounts
            .create("p.example", "alice", &creds_a)
            .await
            .expect("create");
        s.kv.set("vcard", "p.example", "alice", Some(b"<vCard/>"))
            .await
            .expect("kv");
        s.map
            .set("roster", "p.example", "alice", "bob@x", Some(b"both"))
            .await
            .expect("map");
        item_id = s
            .archive
            .append(
                "offline",
                "p.example",
                "alice",
                "bob@x",
                42,
                b"<m/>",
                Some(10),
            )
            .await
            .expect("append");
        kept_id = s
            .archive
            .append("offline", "p.example", "alice", "bob@x", 43, b"<m2/>", None)
            .await
            .expect("append");
        let pep = &s.pubsub;
        assert!(
            pep.create_node("alice@p.example", "urn:xmpp:avatar:data", b"cfg", Some(10))
                .await
                .expect("create node")
        );
        pep.set_affiliation(
            "alice@p.example",
            "urn:xmpp:avatar:data",
            "alice@p.example",
            Some("owner"),
        )
        .await
        .expect("aff");
        pep.set_subscription(
            "alice@p.example",
            &sub("urn:xmpp:avatar:data", "bob@x", "s1", "subscribed"),
        )
        .await
        .expect("sub");
        for (n, id) in ["old", "new"].into_iter().enumerate() {
            let n = i64::try_from(n).expect("small");
            pep.publish(
                "alice@p.example",
                "urn:xmpp:avatar:data",
                &ps_item(id, n),
                Some(5),
            )
            .await
            .expect("publish");
        }
        backend.close().await;
        assert!(
            s.accounts.exists("p.example", "alice").await.is_err(),
            "closed pool refuses work"
        );
    }
    // Reopen (migrations are idempotent) and find everything.
    for _ in 0..2 {
        let s = Storage::open(&db.backend()).await.expect("reopen");
        assert_eq!(
            s.accounts
                .credentials("p.example", "alice")
                .await
                .expect("creds"),
            Some(creds_a.clone())
        );
        assert_eq!(
            s.kv.get("vcard", "p.example", "alice").await.expect("kv"),
            Some(b"<vCard/>".to_vec())
        );
        assert_eq!(
            s.map
                .get_all("roster", "p.example", "alice")
                .await
                .expect("map"),
            vec![("bob@x".to_owned(), b"both".to_vec())]
        );
        let items = s
            .archive
            .query("offline", "p.example", "alice", &ArchiveQuery::default())
            .await
            .expect("query");
        assert_eq!(ids(&items), [item_id.clone(), kept_id.clone()]);
        assert_eq!(items[0].stamp_ms, 42);
        assert_eq!(items[0].with, "bob@x");
        assert_eq!(items[0].data, b"<m/>");
        let pep = &s.pubsub;
        assert_eq!(
            pep.nodes("alice@p.example").await.expect("nodes"),
            vec![("urn:xmpp:avatar:data".to_owned(), b"cfg".to_vec())]
        );
        assert_eq!(
            pep.affiliations("alice@p.example", None, None)
                .await
                .expect("affs"),
            vec![(
                "urn:xmpp:avatar:data".to_owned(),
                "alice@p.example".to_owned(),
                "owner".to_owned()
            )]
        );
        assert_eq!(
            pep.subscriptions("alice@p.example", None, None)
                .await
                .expect("subs"),
            vec![sub("urn:xmpp:avatar:data", "bob@x", "s1", "subscribed")]
        );
        let items = pep
            .items(
                "alice@p.example",
                "urn:xmpp:avatar:data",
                &ItemQuery::default(),
            )
            .await
            .expect("items");
        assert_eq!(item_ids(&items), ["new", "old"]);
        assert_eq!(items[1].payload, ps_item("old", 0).payload);
    }
    // Seqs keep increasing across reopen: republishing the oldest makes it the newest.
    let s = Storage::open(&db.backend()).await.expect("reopen");
    let before = s
        .pubsub
        .items(
            "alice@p.example",
            "urn:xmpp:avatar:data",
            &ItemQuery::default(),
        )
        .await
        .expect("items");
    s.pubsub
        .publish(
            "alice@p.example",
            "urn:xmpp:avatar:data",
            &ps_item("old", 2),
            Some(5),
        )
        .await
        .expect("publish");
    let after = s
        .pubsub
        .items(
            "alice@p.example",
            "urn:xmpp:avatar:data",
            &ItemQuery::default(),
        )
        .await
        .expect("items");
    assert_eq!(item_ids(&after), ["old", "new"]);
    assert!(after[0].seq > before[0].seq);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_two_handles_share_one_file() {
    let db = TempDb::new("shared");
    two_handles(db.backend()).await;
}

/// The whole suite on a fresh PostgreSQL database (`CANTO_TEST_POSTGRES_URL`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_backend() {
    let db = TestDatabase::create("suite").await.expect("test database");
    let backend = Backend::Postgres {
        url: db.url().to_owned(),
        pool_size: 4,
    };
    let s = Storage::open(&backend).await.expect("open");
    run_suite(s.clone(), "postgresql").await;
    s.accounts
        .create("reopen.example", "kept", &creds(9))
        .await
        .expect("create");
    // Reopening runs the migrations again: nothing to do, nothing lost.
    let again = Storage::open(&backend).await.expect("reopen");
    assert_eq!(
        again
            .accounts
            .credentials("reopen.example", "kept")
            .await
            .expect("creds"),
        Some(creds(9))
    );
}

/// Two pools on one database, opened (and migrated) at the same time, writing concurrently:
/// a server and the CLI, or two servers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_two_handles_share_one_database() {
    let db = TestDatabase::create("shared").await.expect("test database");
    two_handles(Backend::Postgres {
        url: db.url().to_owned(),
        pool_size: 4,
    })
    .await;
}

async fn two_handles(backend: Backend) {
    // Both open (and migrate) a fresh database at the same time, like a server and the CLI.
    let (server, cli) = tokio::join!(Storage::open(&backend), Storage::open(&backend));
    let (server, cli) = (server.expect("server open"), cli.expect("cli open"));

    let server_task = {
        let s = server.clone();
        tokio::spawn(async move {
            for i in 0..200i64 {
                s.archive
                    .append(
                        "offline",
                        "s.example",
                        "alice",
                        "bob@x",
                        i,
                        b"m",
                        Some(1000),
                    )
                    .await
                    .expect("server append");
                if i % 20 == 0 {
                    s.accounts
                        .delete("s.example", &format!("gone{i}"))
                        .await
                        .expect("server delete");
                }
            }
        })
    };
    let cli_task = {
        let s = cli.clone();
        tokio::spawn(async move {
            for i in 0..50u32 {
                s.accounts
                    .create("s.example", &format!("user{i:02}"), &creds(i))
                    .await
                    .expect("cli create");
            }
            let batch: Vec<_> = (0..500u32)
                .map(|i| ("s.example".to_owned(), format!("bulk{i:03}"), creds(i)))
                .collect();
            s.accounts.import(&batch).await.expect("cli import");
        })
    };
    server_task.await.expect("server task");
    cli_task.await.expect("cli task");

    for s in [&server, &cli] {
        assert_eq!(s.accounts.list("s.example").await.expect("list").len(), 550);
        assert_eq!(
            s.archive
                .count("offline", "s.example", "alice", &ArchiveQuery::default())
                .await
                .expect("count"),
            200
        );
    }
    assert_eq!(
        server
            .accounts
            .credentials("s.example", "user07")
            .await
            .expect("creds"),
        Some(creds(7))
    );
}
