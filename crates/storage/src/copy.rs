//! Copying every store from one SQL backend to another, and comparing two (`canto storage
//! copy [--verify]`).
//!
//! Each table is copied in primary-key order, in batches, each batch in one transaction
//! committed before the next is read. So after an interruption the destination holds a prefix
//! of every table in key order, and a rerun continues after the destination's last key (rows
//! already there are skipped, never duplicated). `seq`s are copied as they are, so archive ids,
//! archive order and pubsub item order are preserved, and the destination's sequences are
//! raised to the source's high-water marks (a seq is never reused, even one whose row was
//! deleted). The source must not change meanwhile: stop the server first.

use std::collections::VecDeque;

use crate::dump::{Dump, DumpRow, TABLES, Table, Value};
use crate::{Result, StorageError};

/// How to copy.
#[derive(Clone, Debug)]
pub struct CopyOptions {
    /// Rows per batch (one transaction in the destination).
    pub batch_rows: usize,
    /// Stop after copying this many rows in all (tests of resuming; `None`: copy everything).
    pub max_rows: Option<u64>,
}

impl Default for CopyOptions {
    fn default() -> Self {
        CopyOptions {
            batch_rows: 1000,
            max_rows: None,
        }
    }
}

/// What happened to one table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableCopy {
    /// The table.
    pub table: &'static str,
    /// Its store.
    pub store: &'static str,
    /// Rows the destination already had (an earlier, interrupted copy).
    pub already: u64,
    /// Rows copied now.
    pub copied: u64,
    /// Whether the table is complete in the destination.
    pub complete: bool,
}

/// The key as text, for messages.
fn show_key(key: &[Value]) -> String {
    key.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Copies every table from `from` to `to` (see the module docs); `progress` is called after
/// each table. Returns one entry per table reached; with [`CopyOptions::max_rows`] the copy
/// may stop early (the last entry is then not `complete`).
pub async fn copy(
    from: &dyn Dump,
    to: &dyn Dump,
    opts: &CopyOptions,
    mut progress: impl FnMut(&TableCopy),
) -> Result<Vec<TableCopy>> {
    let batch = opts.batch_rows.max(1);
    let mut budget = opts.max_rows;
    let mut done = Vec::new();
    for table in TABLES {
        let mut after = to.last_key(table).await?;
        let mut report = TableCopy {
            table: table.name,
            store: table.store,
            already: 0,
            copied: 0,
            complete: false,
        };
        if let Some(key) = &after {
            // Resuming: the destination's last row must be the source's row with that key,
            // or the destination holds something else and continuing would mix the two.
            let theirs = from.row(table, key).await?;
            let ours = to.row(table, key).await?;
            if theirs.is_none() || theirs != ours {
                return Err(StorageError::Database(format!(
                    "{} in the destination holds a row ({}) that is not the source's: copy \
                     into an empty database, or resume a copy from the same source",
                    table.name,
                    show_key(key)
                )));
            }
            report.already = to.count_rows(table).await?;
        }
        loop {
            let want = match budget {
                Some(0) => break,
                Some(left) => batch.min(usize::try_from(left).unwrap_or(usize::MAX)),
                None => batch,
            };
            let rows = from.read_rows(table, after.as_deref(), want).await?;
            let Some(last) = rows.last() else {
                report.complete = true;
                break;
            };
            let next = table.key_of(last).to_vec();
            report.copied += to.write_rows(table, &rows).await?;
            if let Some(left) = budget.as_mut() {
                *left = left.saturating_sub(u64::try_from(rows.len()).unwrap_or(u64::MAX));
            }
            after = Some(next);
        }
        if report.complete && table.sequence {
            to.raise_sequence(table, from.sequence(table).await?)
                .await?;
        }
        progress(&report);
        let complete = report.complete;
        done.push(report);
        if !complete {
            break;
        }
    }
    Ok(done)
}

/// How two backends' copies of one table compare.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableDiff {
    /// The table.
    pub table: &'static str,
    /// Its store.
    pub store: &'static str,
    /// Rows in the source.
    pub source_rows: u64,
    /// Rows in the destination.
    pub dest_rows: u64,
    /// Keys only the source has.
    pub missing: u64,
    /// Keys only the destination has.
    pub extra: u64,
    /// Keys both have, with different contents.
    pub differing: u64,
    /// The first few differences, described.
    pub examples: Vec<String>,
}

impl TableDiff {
    /// Whether both hold exactly the same rows.
    pub fn matches(&self) -> bool {
        self.missing == 0 && self.extra == 0 && self.differing == 0
    }
}

/// Differences described per table at most.
const EXAMPLES: usize = 5;

/// Reads one table in key order, a batch at a time.
struct Cursor<'a> {
    dump: &'a dyn Dump,
    table: &'static Table,
    buffer: VecDeque<DumpRow>,
    after: Option<Vec<Value>>,
    finished: bool,
    batch: usize,
}

impl<'a> Cursor<'a> {
    fn new(dump: &'a dyn Dump, table: &'static Table, batch: usize) -> Self {
        Cursor {
            dump,
            table,
            buffer: VecDeque::new(),
            after: None,
            finished: false,
            batch,
        }
    }

    /// The next row's key and row, without consuming it.
    async fn peek(&mut self) -> Result<Option<&DumpRow>> {
        if self.buffer.is_empty() && !self.finished {
            let rows = self
                .dump
                .read_rows(self.table, self.after.as_deref(), self.batch)
                .await?;
            match rows.last() {
                Some(last) => self.after = Some(self.table.key_of(last).to_vec()),
                None => self.finished = true,
            }
            self.buffer.extend(rows);
        }
        Ok(self.buffer.front())
    }

    fn pop(&mut self) -> Option<DumpRow> {
        self.buffer.pop_front()
    }
}

/// Compares every table of `source` and `dest` row by row (a merge walk in key order).
pub async fn verify(
    source: &dyn Dump,
    dest: &dyn Dump,
    batch_rows: usize,
) -> Result<Vec<TableDiff>> {
    let batch = batch_rows.max(1);
    let mut diffs = Vec::new();
    for table in TABLES {
        let mut diff = TableDiff {
            table: table.name,
            store: table.store,
            source_rows: 0,
            dest_rows: 0,
            missing: 0,
            extra: 0,
            differing: 0,
            examples: Vec::new(),
        };
        let mut a = Cursor::new(source, table, batch);
        let mut b = Cursor::new(dest, table, batch);
        loop {
            let ka = a.peek().await?.map(|r| table.key_of(r).to_vec());
            let kb = b.peek().await?.map(|r| table.key_of(r).to_vec());
            let note = match (ka, kb) {
                (None, None) => break,
                (Some(ka), None) => {
                    a.pop();
                    diff.source_rows += 1;
                    diff.missing += 1;
                    format!("only in the source: {}", show_key(&ka))
                }
                (None, Some(kb)) => {
                    b.pop();
                    diff.dest_rows += 1;
                    diff.extra += 1;
                    format!("only in the destination: {}", show_key(&kb))
                }
                (Some(ka), Some(kb)) if ka < kb => {
                    a.pop();
                    diff.source_rows += 1;
                    diff.missing += 1;
                    format!("only in the source: {}", show_key(&ka))
                }
                (Some(ka), Some(kb)) if ka > kb => {
                    b.pop();
                    diff.dest_rows += 1;
                    diff.extra += 1;
                    format!("only in the destination: {}", show_key(&kb))
                }
                (Some(key), Some(_)) => {
                    let (ra, rb) = (a.pop(), b.pop());
                    diff.source_rows += 1;
                    diff.dest_rows += 1;
                    if ra == rb {
                        continue;
                    }
                    diff.differing += 1;
                    let columns = match (&ra, &rb) {
                        (Some(ra), Some(rb)) => table
                            .columns
                            .iter()
                            .zip(ra.iter().zip(rb))
                            .filter(|(_, (x, y))| x != y)
                            .map(|((name, _), _)| *name)
                            .collect::<Vec<_>>()
                            .join(", "),
                        _ => String::new(),
                    };
                    format!("different {columns}: {}", show_key(&key))
                }
            };
            if diff.examples.len() < EXAMPLES {
                diff.examples.push(note);
            }
        }
        diffs.push(diff);
    }
    Ok(diffs)
}
