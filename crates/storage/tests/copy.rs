//! `canto storage copy`'s engine: every store moved between the SQL backends (SQLite →
//! PostgreSQL → SQLite), checked through the store traits; resuming an interrupted copy; and
//! `--verify` finding differences.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use canto_storage::copy::{CopyOptions, copy, verify};
use canto_storage::dump::{self, Dump, DumpRow, Table, Value};
use canto_storage::testing::TestDatabase;
use canto_storage::{
    ArchiveQuery, Backend, Credentials, ItemQuery, NewArchiveItem, PubsubItem, PubsubSubscription,
    Result, Storage, StorageError,
};

/// A SQLite file in a fresh temp dir, removed on drop.
struct TempFile {
    dir: PathBuf,
}

impl TempFile {
    fn new(name: &str) -> TempFile {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        TempFile {
            dir: std::env::temp_dir()
                .join(format!("canto-copy-{name}-{}-{nanos}", std::process::id())),
        }
    }

    fn backend(&self) -> Backend {
        Backend::Sqlite {
            path: self.dir.join("canto.sqlite"),
        }
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn postgres(db: &TestDatabase) -> Backend {
    Backend::Postgres {
        url: db.url().to_owned(),
        pool_size: 4,
    }
}

const ARCHIVE_ITEMS: usize = 2500;

/// Data in every store; returns the archive ids in order.
async fn fill(s: &Storage) -> Vec<String> {
    for (i, user) in ["alice", "bob", "carol"].into_iter().enumerate() {
        let creds = Credentials::from_password(&format!("pw{i}"), 16);
        s.accounts
            .create("a.example", user, &creds)
            .await
            .expect("account");
        s.kv.set(
            "vcard",
            "a.example",
            user,
            Some(format!("<vCard n='{i}'/>").as_bytes()),
        )
        .await
        .expect("kv");
        for k in 0..5 {
            s.map
                .set(
                    "roster",
                    "a.example",
                    user,
                    &format!("c{k}@b.example"),
                    Some(&[k, 0, 255]),
                )
                .await
                .expect("map");
        }
    }
    // Bytes that are not UTF-8 and a non-ASCII key survive.
    s.kv.set("private", "a.example", "alice", Some(&[0, 159, 146, 150]))
        .await
        .expect("kv");
    s.map
        .set(
            "roster",
            "a.example",
            "alice",
            "jürgen@b.example",
            Some(b"x"),
        )
        .await
        .expect("map");
    let items: Vec<NewArchiveItem> = (0..ARCHIVE_ITEMS)
        .map(|i| NewArchiveItem {
            with: format!("c{}@b.example", i % 7),
            stamp_ms: 1_700_000_000_000 + i64::try_from(i).expect("small"),
            data: format!("<message id='{i}'/>").into_bytes(),
        })
        .collect();
    let mut ids = s
        .archive
        .append_many("archive", "a.example", "alice", &items)
        .await
        .expect("archive");
    // Interleaved with another user's, so seq order and key order differ.
    for i in 0..20 {
        s.archive
            .append(
                "archive",
                "a.example",
                "bob",
                "alice@a.example",
                i,
                b"<m/>",
                None,
            )
            .await
            .expect("append");
        ids.push(
            s.archive
                .append(
                    "archive",
                    "a.example",
                    "alice",
                    "bob@a.example",
                    i,
                    b"<m/>",
                    None,
                )
                .await
                .expect("append"),
        );
    }
    s.archive
        .append(
            "offline",
            "a.example",
            "carol",
            "bob@a.example",
            5,
            b"<m/>",
            None,
        )
        .await
        .expect("offline");
    // The newest seq is deleted: the copy must still never hand it out again.
    let gone = s
        .archive
        .append(
            "archive",
            "a.example",
            "carol",
            "x@b.example",
            9,
            b"<m/>",
            None,
        )
        .await
        .expect("append");
    s.archive
        .delete("archive", "a.example", "carol", Some(&[gone]))
        .await
        .expect("delete");
    let p = &s.pubsub;
    for service in ["alice@a.example", "pubsub.a.example"] {
        for node in ["urn:xmpp:avatar:data", "news"] {
            assert!(
                p.create_node(service, node, b"cfg", None)
                    .await
                    .expect("node")
            );
            p.set_affiliation(service, node, "alice@a.example", Some("owner"))
                .await
                .expect("aff");
            p.set_subscription(
                service,
                &PubsubSubscription {
                    node: node.to_owned(),
                    jid: "bob@a.example/phone".to_owned(),
                    subid: "s1".to_owned(),
                    state: "subscribed".to_owned(),
                    options: vec![1, 2, 3],
                },
            )
            .await
            .expect("sub");
            for n in 0..30i64 {
                // Ids that do not sort in publish order.
                let id = format!("item{}", (n * 7) % 30);
                p.publish(
                    service,
                    node,
                    &PubsubItem {
                        id,
                        seq: 0,
                        publisher: "alice@a.example".to_owned(),
                        stamp_ms: n,
                        payload: format!("<entry n='{n}'/>").into_bytes(),
                    },
                    Some(25),
                )
                .await
                .expect("publish");
            }
        }
    }
    ids
}

/// What [`fill`] stored, read back through the store traits.
async fn check(s: &Storage, ids: &[String]) {
    assert_eq!(
        s.accounts.list("a.example").await.expect("list"),
        ["alice", "bob", "carol"]
    );
    let creds = s
        .accounts
        .credentials("a.example", "bob")
        .await
        .expect("creds")
        .expect("bob");
    assert_eq!(creds.sha256.iterations, 16);
    assert_eq!(
        s.kv.get("vcard", "a.example", "carol").await.expect("kv"),
        Some(b"<vCard n='2'/>".to_vec())
    );
    assert_eq!(
        s.kv.get("private", "a.example", "alice").await.expect("kv"),
        Some(vec![0, 159, 146, 150])
    );
    let roster = s
        .map
        .get_all("roster", "a.example", "alice")
        .await
        .expect("map");
    assert_eq!(roster.len(), 6);
    assert_eq!(roster[5], ("jürgen@b.example".to_owned(), b"x".to_vec()));
    let all = s
        .archive
        .query("archive", "a.example", "alice", &ArchiveQuery::default())
        .await
        .expect("archive");
    assert_eq!(all.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(), ids);
    assert!(all.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!(all[7].data, b"<message id='7'/>");
    // Paging by id works on the copied ids (MAM `after`).
    let page = s
        .archive
        .query(
            "archive",
            "a.example",
            "alice",
            &ArchiveQuery {
                after_id: Some(ids[1000].clone()),
                limit: Some(50),
                ..Default::default()
            },
        )
        .await
        .expect("page");
    assert_eq!(page[0].id, ids[1001]);
    assert_eq!(
        s.archive
            .count(
                "archive",
                "a.example",
                "alice",
                &ArchiveQuery {
                    with: Some("c3@b.example".to_owned()),
                    ..Default::default()
                }
            )
            .await
            .expect("count"),
        (0..ARCHIVE_ITEMS).filter(|i| i % 7 == 3).count()
    );
    assert_eq!(
        s.archive
            .count("offline", "a.example", "carol", &ArchiveQuery::default())
            .await
            .expect("count"),
        1
    );
    for service in ["alice@a.example", "pubsub.a.example"] {
        let p = &s.pubsub;
        assert_eq!(p.nodes(service).await.expect("nodes").len(), 2);
        assert_eq!(
            p.affiliations(service, Some("news"), None)
                .await
                .expect("affs"),
            [(
                "news".to_owned(),
                "alice@a.example".to_owned(),
                "owner".to_owned()
            )]
        );
        assert_eq!(
            p.subscriptions(service, Some("news"), None)
                .await
                .expect("subs")[0]
                .options,
            [1, 2, 3]
        );
        let items = p
            .items(service, "news", &ItemQuery::default())
            .await
            .expect("items");
        assert_eq!(items.len(), 25);
        // Newest first: the last published (n = 29, id item{29*7%30}) leads.
        let newest: Vec<String> = (5..30i64)
            .rev()
            .map(|n| format!("item{}", (n * 7) % 30))
            .collect();
        assert_eq!(
            items.iter().map(|i| i.id.clone()).collect::<Vec<_>>(),
            newest
        );
    }
}

/// New rows after a copy get seqs above everything the source ever handed out.
async fn check_sequences_continue(s: &Storage, source_max_archive_seq: i64) {
    s.archive
        .append(
            "archive",
            "a.example",
            "dave",
            "x@b.example",
            1,
            b"<m/>",
            None,
        )
        .await
        .expect("append after copy");
    let dave = s
        .archive
        .query("archive", "a.example", "dave", &ArchiveQuery::default())
        .await
        .expect("query");
    assert!(
        dave[0].seq > source_max_archive_seq,
        "{} <= {source_max_archive_seq}",
        dave[0].seq
    );
    s.archive
        .delete("archive", "a.example", "dave", None)
        .await
        .expect("cleanup");
}

/// The highest archive seq ever drawn in a backend (including a deleted one).
async fn archive_high_water(d: &dyn Dump) -> i64 {
    let table = dump::TABLES
        .iter()
        .find(|t| t.name == "archive")
        .expect("archive table");
    d.sequence(table).await.expect("sequence")
}

fn assert_all_match(diffs: &[canto_storage::copy::TableDiff]) {
    for d in diffs {
        assert!(d.matches(), "{d:?}");
        assert_eq!(d.source_rows, d.dest_rows, "{d:?}");
    }
    assert!(
        diffs
            .iter()
            .any(|d| d.table == "archive" && d.source_rows > 2500)
    );
}

async fn round_trip(first: Backend, middle: Backend, last: Backend) {
    let source = Storage::open(&first).await.expect("open source");
    let ids = fill(&source).await;
    check(&source, &ids).await;
    let (a, b, c) = (
        dump::open(&first).await.expect("dump"),
        dump::open(&middle).await.expect("dump"),
        dump::open(&last).await.expect("dump"),
    );
    let high = archive_high_water(&*a).await;
    let opts = CopyOptions {
        batch_rows: 300,
        max_rows: None,
    };
    let mut reported = Vec::new();
    let report = copy(&*a, &*b, &opts, |t| reported.push(t.table))
        .await
        .expect("copy");
    assert_eq!(reported.len(), dump::TABLES.len());
    assert!(report.iter().all(|t| t.complete && t.already == 0));
    let archive = report
        .iter()
        .find(|t| t.table == "archive")
        .expect("archive");
    assert_eq!(
        archive.copied,
        u64::try_from(ARCHIVE_ITEMS + 40 + 1).expect("small")
    );
    assert_all_match(&verify(&*a, &*b, 256).await.expect("verify"));
    assert_eq!(
        archive_high_water(&*b).await,
        high,
        "the deleted newest seq is remembered"
    );
    let copied = Storage::open(&middle).await.expect("open copy");
    check(&copied, &ids).await;

    copy(&*b, &*c, &opts, |_| {}).await.expect("copy back");
    assert_all_match(&verify(&*b, &*c, 1000).await.expect("verify"));
    assert_all_match(&verify(&*a, &*c, 77).await.expect("verify"));
    let back = Storage::open(&last).await.expect("open copy");
    check(&back, &ids).await;
    check_sequences_continue(&copied, high).await;
    check_sequences_continue(&back, high).await;
}

/// SQLite → PostgreSQL → SQLite: every table, archive ids and order, pubsub item order, the
/// sequences' high-water marks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_copy_round_trip() {
    let (src, dst) = (TempFile::new("src"), TempFile::new("dst"));
    let db = TestDatabase::create("copy").await.expect("test database");
    round_trip(src.backend(), postgres(&db), dst.backend()).await;
}

/// PostgreSQL → SQLite → PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_copy_round_trip_from_postgres() {
    let mid = TempFile::new("mid");
    let (db1, db2) = (
        TestDatabase::create("copyfrom")
            .await
            .expect("test database"),
        TestDatabase::create("copyto").await.expect("test database"),
    );
    round_trip(postgres(&db1), mid.backend(), postgres(&db2)).await;
}

/// The engine without PostgreSQL: one SQLite file to another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_copy_round_trip() {
    let (a, b, c) = (TempFile::new("a"), TempFile::new("b"), TempFile::new("c"));
    round_trip(a.backend(), b.backend(), c.backend()).await;
}

/// A destination whose writes start failing after a few batches (a dropped connection, a
/// full disk, Ctrl-C between batches).
struct FailingAfter {
    inner: Arc<dyn Dump>,
    batches_left: AtomicUsize,
}

#[async_trait::async_trait]
impl Dump for FailingAfter {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
    async fn read_rows(
        &self,
        table: &Table,
        after: Option<&[Value]>,
        limit: usize,
    ) -> Result<Vec<DumpRow>> {
        self.inner.read_rows(table, after, limit).await
    }
    async fn row(&self, table: &Table, key: &[Value]) -> Result<Option<DumpRow>> {
        self.inner.row(table, key).await
    }
    async fn last_key(&self, table: &Table) -> Result<Option<Vec<Value>>> {
        self.inner.last_key(table).await
    }
    async fn count_rows(&self, table: &Table) -> Result<u64> {
        self.inner.count_rows(table).await
    }
    async fn write_rows(&self, table: &Table, rows: &[DumpRow]) -> Result<u64> {
        if self
            .batches_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_err()
        {
            return Err(StorageError::Database("injected failure".to_owned()));
        }
        self.inner.write_rows(table, rows).await
    }
    async fn sequence(&self, table: &Table) -> Result<i64> {
        self.inner.sequence(table).await
    }
    async fn raise_sequence(&self, table: &Table, to: i64) -> Result<()> {
        self.inner.raise_sequence(table, to).await
    }
}

/// An interrupted copy (stopped by a row limit, or by a failing write in the middle of the
/// archive) is continued by running it again: nothing is copied twice, nothing is missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_copy_resumes_after_interruption() {
    let src = TempFile::new("resume");
    let db = TestDatabase::create("resume").await.expect("test database");
    let source = Storage::open(&src.backend()).await.expect("open");
    let ids = fill(&source).await;
    let a = dump::open(&src.backend()).await.expect("dump");
    let b = dump::open(&postgres(&db)).await.expect("dump");
    // Stopped by a row budget in the middle of the archive table.
    let first = copy(
        &*a,
        &*b,
        &CopyOptions {
            batch_rows: 100,
            max_rows: Some(1234),
        },
        |_| {},
    )
    .await
    .expect("partial copy");
    let last = first.last().expect("tables");
    assert_eq!(last.table, "archive");
    assert!(!last.complete);
    assert!(first[..first.len() - 1].iter().all(|t| t.complete));
    assert_eq!(first.iter().map(|t| t.copied).sum::<u64>(), 1234);
    let archive_first = last.copied;
    // Then by a write failing after 7 more batches.
    let failing = FailingAfter {
        inner: b.clone(),
        batches_left: AtomicUsize::new(7),
    };
    let err = copy(
        &*a,
        &failing,
        &CopyOptions {
            batch_rows: 100,
            max_rows: None,
        },
        |_| {},
    )
    .await
    .expect_err("injected failure");
    assert!(err.to_string().contains("injected failure"), "{err}");
    let diffs = verify(&*a, &*b, 500).await.expect("verify");
    let archive = diffs
        .iter()
        .find(|d| d.table == "archive")
        .expect("archive");
    assert_eq!(
        archive.dest_rows,
        archive_first + 700,
        "a prefix of whole batches"
    );
    assert_eq!(archive.extra + archive.differing, 0);
    // The rerun completes it.
    let mut printed = Vec::new();
    let last = copy(&*a, &*b, &CopyOptions::default(), |t| {
        printed.push(t.clone())
    })
    .await
    .expect("resumed copy");
    let archive = last.iter().find(|t| t.table == "archive").expect("archive");
    assert_eq!(archive.already, archive_first + 700);
    assert_eq!(
        archive.already + archive.copied,
        u64::try_from(ARCHIVE_ITEMS + 41).expect("small")
    );
    assert_eq!(printed.len(), dump::TABLES.len());
    assert_all_match(&verify(&*a, &*b, 500).await.expect("verify"));
    check(&Storage::open(&postgres(&db)).await.expect("open"), &ids).await;
    // A rerun of a finished copy copies nothing.
    let again = copy(&*a, &*b, &CopyOptions::default(), |_| {})
        .await
        .expect("copy again");
    assert!(again.iter().all(|t| t.copied == 0 && t.complete));
}

/// `--verify` finds a changed value, a missing row and an extra row, per table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_copy_verify_reports_differences() {
    let src = TempFile::new("verify");
    let db = TestDatabase::create("verify").await.expect("test database");
    let source = Storage::open(&src.backend()).await.expect("open");
    let ids = fill(&source).await;
    let a = dump::open(&src.backend()).await.expect("dump");
    let b = dump::open(&postgres(&db)).await.expect("dump");
    copy(&*a, &*b, &CopyOptions::default(), |_| {})
        .await
        .expect("copy");
    let dest = Storage::open(&postgres(&db)).await.expect("open");
    dest.kv
        .set("vcard", "a.example", "bob", Some(b"<vCard changed/>"))
        .await
        .expect("kv");
    dest.archive
        .delete("archive", "a.example", "alice", Some(&ids[10..12]))
        .await
        .expect("delete");
    dest.accounts
        .create("a.example", "mallory", &Credentials::from_password("x", 16))
        .await
        .expect("extra");
    let diffs = verify(&*a, &*b, 100).await.expect("verify");
    let by = |name: &str| diffs.iter().find(|d| d.table == name).expect(name);
    assert_eq!(by("kv").differing, 1);
    assert!(
        by("kv").examples[0].contains("different value"),
        "{:?}",
        by("kv")
    );
    assert_eq!(by("archive").missing, 2);
    assert_eq!(by("archive").source_rows, by("archive").dest_rows + 2);
    assert_eq!(by("accounts").extra, 1);
    assert!(by("accounts").examples[0].contains("mallory"));
    assert!(by("map").matches() && by("pubsub_items").matches());
    // A copy does not continue into a destination holding rows that are not the source's.
    let err = copy(&*a, &*b, &CopyOptions::default(), |_| {})
        .await
        .expect_err("foreign rows");
    assert!(err.to_string().contains("accounts"), "{err}");
}
