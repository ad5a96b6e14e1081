//! `canto storage copy --from CONFIG --to CONFIG [--verify]`: moves every store between the
//! SQLite and PostgreSQL backends, or compares two (docs/storage.md).
//!
//! Stop the server first: the source must not change while it is copied. An interrupted copy
//! is continued by running the same command again (`canto_storage::copy`).

use std::io::Write;

use anyhow::{Context, Result, bail};
use canto_core::Config;
use canto_storage::Backend;
use canto_storage::copy::{CopyOptions, TableCopy, TableDiff};
use canto_storage::dump;

/// A backend described for the operator, without a password.
pub fn describe(backend: &Backend) -> String {
    match backend {
        Backend::Memory => "memory".to_owned(),
        Backend::Sqlite { path } => format!("sqlite {}", path.display()),
        Backend::Postgres { url, .. } => format!("postgresql {}", redact(url)),
    }
}

/// `url` with the password, if any, replaced by `***`.
pub fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => match rest[..at].find(':') {
            Some(colon) => format!(
                "{}{}:***{}",
                &url[..scheme_end],
                &rest[..colon],
                &rest[at..]
            ),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// The two backends, checked: both persistent, and not the same one.
fn backends(from: &Config, to: &Config) -> Result<(Backend, Backend)> {
    let (a, b) = (crate::startup::backend(from), crate::startup::backend(to));
    for (which, backend) in [("--from", &a), ("--to", &b)] {
        if *backend == Backend::Memory {
            bail!(
                "{which}: the memory backend keeps nothing; give a sqlite or postgresql configuration"
            );
        }
    }
    let same = match (&a, &b) {
        (Backend::Sqlite { path: p }, Backend::Sqlite { path: q }) => {
            p == q || matches!((p.canonicalize(), q.canonicalize()), (Ok(x), Ok(y)) if x == y)
        }
        (Backend::Postgres { url: u, .. }, Backend::Postgres { url: v, .. }) => u == v,
        _ => false,
    };
    if same {
        bail!("--from and --to name the same database ({})", describe(&a));
    }
    Ok((a, b))
}

/// Per store: the sum of `f` over its tables, in table order.
fn per_store<T>(items: &[T], store: impl Fn(&T) -> &'static str, f: impl Fn(&T) -> u64) -> String {
    let mut totals: Vec<(&str, u64)> = Vec::new();
    for item in items {
        match totals.iter_mut().find(|(s, _)| *s == store(item)) {
            Some((_, n)) => *n += f(item),
            None => totals.push((store(item), f(item))),
        }
    }
    totals
        .iter()
        .map(|(s, n)| format!("{s} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `canto storage copy`: copies everything, printing each table's counts as it completes and
/// the totals per store.
pub async fn copy(from: &Config, to: &Config, batch: usize, out: &mut dyn Write) -> Result<()> {
    let (a, b) = backends(from, to)?;
    writeln!(out, "copying {} -> {}", describe(&a), describe(&b))?;
    let source = dump::open(&a).await.context("opening the source")?;
    let dest = dump::open(&b).await.context("opening the destination")?;
    let opts = CopyOptions {
        batch_rows: batch,
        max_rows: None,
    };
    let started = std::time::Instant::now();
    let mut lines = Vec::new();
    let result = canto_storage::copy::copy(&*source, &*dest, &opts, |t: &TableCopy| {
        lines.push(format!(
            "  {:<9} {:<21} {:>10} rows copied{}",
            t.store,
            t.table,
            t.copied,
            if t.already > 0 {
                format!(" ({} were there from an earlier run)", t.already)
            } else {
                String::new()
            }
        ));
    })
    .await;
    for line in &lines {
        writeln!(out, "{line}")?;
    }
    let done = result.context("copy interrupted; run the same command again to continue")?;
    writeln!(
        out,
        "done in {:.1} s; rows per store: {}",
        started.elapsed().as_secs_f64(),
        per_store(&done, |t| t.store, |t| t.copied + t.already)
    )?;
    writeln!(
        out,
        "compare the two with `canto storage copy --from … --to … --verify`"
    )?;
    Ok(())
}

/// `canto storage copy --verify`: compares the two; an error (non-zero exit) on a difference.
pub async fn verify(from: &Config, to: &Config, batch: usize, out: &mut dyn Write) -> Result<()> {
    let (a, b) = backends(from, to)?;
    writeln!(out, "comparing {} with {}", describe(&a), describe(&b))?;
    let source = dump::open(&a).await.context("opening the source")?;
    let dest = dump::open(&b).await.context("opening the destination")?;
    let diffs = canto_storage::copy::verify(&*source, &*dest, batch)
        .await
        .context("comparing")?;
    for d in &diffs {
        let verdict = if d.matches() {
            "same".to_owned()
        } else {
            format!(
                "DIFFERENT: {} only in the source, {} only in the destination, {} changed",
                d.missing, d.extra, d.differing
            )
        };
        writeln!(
            out,
            "  {:<9} {:<21} {:>10} / {:<10} rows  {verdict}",
            d.store, d.table, d.source_rows, d.dest_rows
        )?;
        for e in &d.examples {
            writeln!(out, "      {e}")?;
        }
    }
    writeln!(
        out,
        "rows per store (source): {}",
        per_store(&diffs, |d| d.store, |d| d.source_rows)
    )?;
    let bad: Vec<&TableDiff> = diffs.iter().filter(|d| !d.matches()).collect();
    if !bad.is_empty() {
        bail!(
            "the databases differ in {}",
            bad.iter().map(|d| d.table).collect::<Vec<_>>().join(", ")
        );
    }
    writeln!(out, "the databases hold the same rows")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_not_printed() {
        assert_eq!(
            redact("postgres://canto:s3cret@db:5432/canto"),
            "postgres://canto:***@db:5432/canto"
        );
        assert_eq!(
            redact("postgres://canto@db/canto"),
            "postgres://canto@db/canto"
        );
        assert_eq!(redact("postgres://db/x@y"), "postgres://db/x@y");
    }
}
