//! Commits of N chat events (about 220 bytes each), each commit also deleting the N oldest from a history of
//! 10,000, one durable commit each: commits/s, µs per commit, bytes written per event (`/proc/self/io`).
use std::time::Instant;

use redb::{Database, TableDefinition};

const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const HISTORY: u64 = 10_000;

fn write_bytes() -> u64 {
    let io = std::fs::read_to_string("/proc/self/io").unwrap();
    io.lines().find(|l| l.starts_with("write_bytes:")).unwrap()[12..].trim().parse().unwrap()
}

fn event(seq: u64) -> Vec<u8> {
    format!(
        r#"{{"type":"message","id":"0b7f6c1e-2f0a-4c55-9a0e-0a5d3d1f2c3b","nickname":"游客12","message":"hello there, this is text {seq}","transport":"ws","clientcount":100,"seq":{seq},"ts":1764800000000}}"#
    )
    .into_bytes()
}

fn report(store: &str, batch: u64, commits: u64, secs: f64, bytes: u64) {
    let texts = commits * batch;
    println!(
        "{store:<7} batch {batch:>3}: {:>7.0} commits/s {:>8.0} events/s {:>7.0} us/commit {:>6.0} B written/event",
        commits as f64 / secs,
        texts as f64 / secs,
        secs * 1e6 / commits as f64,
        bytes as f64 / texts as f64,
    );
}

fn redb_run(dir: &str, commits: u64, batch: u64) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let db = Database::create(format!("{dir}/room.redb")).unwrap();
    let mut seq: u64 = 0;
    for _ in 0..(HISTORY / 100) {
        let tx = db.begin_write().unwrap();
        {
            let mut t = tx.open_table(EVENTS).unwrap();
            for _ in 0..100 {
                seq += 1;
                t.insert(seq, event(seq).as_slice()).unwrap();
            }
        }
        tx.commit().unwrap();
    }
    let (before, start) = (write_bytes(), Instant::now());
    for _ in 0..commits {
        let tx = db.begin_write().unwrap();
        {
            let mut t = tx.open_table(EVENTS).unwrap();
            for _ in 0..batch {
                seq += 1;
                t.insert(seq, event(seq).as_slice()).unwrap();
                t.remove(seq - HISTORY).unwrap();
            }
        }
        tx.commit().unwrap();
    }
    report("redb", batch, commits, start.elapsed().as_secs_f64(), write_bytes() - before);
}

fn sqlite_run(dir: &str, commits: u64, batch: u64) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let mut db = rusqlite::Connection::open(format!("{dir}/room.sqlite")).unwrap();
    db.pragma_update(None, "journal_mode", "WAL").unwrap();
    db.pragma_update(None, "synchronous", "FULL").unwrap();
    db.execute("CREATE TABLE events (seq INTEGER PRIMARY KEY, json BLOB NOT NULL)", []).unwrap();
    let mut seq: u64 = 0;
    for _ in 0..(HISTORY / 100) {
        let tx = db.transaction().unwrap();
        for _ in 0..100 {
            seq += 1;
            tx.execute("INSERT INTO events VALUES (?1, ?2)", rusqlite::params![seq as i64, event(seq)]).unwrap();
        }
        tx.commit().unwrap();
    }
    let (before, start) = (write_bytes(), Instant::now());
    for _ in 0..commits {
        let tx = db.transaction().unwrap();
        {
            let mut insert = tx.prepare_cached("INSERT INTO events VALUES (?1, ?2)").unwrap();
            let mut delete = tx.prepare_cached("DELETE FROM events WHERE seq = ?1").unwrap();
            for _ in 0..batch {
                seq += 1;
                insert.execute(rusqlite::params![seq as i64, event(seq)]).unwrap();
                delete.execute([(seq - HISTORY) as i64]).unwrap();
            }
        }
        tx.commit().unwrap();
    }
    report("sqlite", batch, commits, start.elapsed().as_secs_f64(), write_bytes() - before);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let which = args.get(1).map(String::as_str).unwrap_or("both");
    let commits: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(300);
    let dir = std::env::temp_dir().join(format!("store-probe-{}", std::process::id()));
    let dir = dir.to_str().unwrap();
    for batch in [1, 16, 128] {
        if which != "sqlite" {
            redb_run(&format!("{dir}/redb"), commits, batch);
        }
        if which != "redb" {
            sqlite_run(&format!("{dir}/sqlite"), commits, batch);
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}
