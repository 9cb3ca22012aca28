//! Test harness for the Redis broker: a real `redis-server` on a free loopback port, with its own data directory,
//! that a test can stop and start again; and chatlab processes spawned from the built binary (which a test can
//! kill or stop with SIGTERM).
//!
//! When `redis-server` is not installed the Redis tests are skipped with a message, unless `CHATLAB_REQUIRE_REDIS`
//! is set (CI sets it), in which case they fail.
#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a process may take to start answering.
const STARTUP: Duration = Duration::from_secs(15);

/// The `redis-server` binary: `$REDIS_SERVER`, else the first `redis-server` on `PATH`.
pub fn redis_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("REDIS_SERVER") {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join("redis-server")).find(|candidate| candidate.is_file())
}

/// A free TCP port on 127.0.0.1 (free when asked: the caller binds it soon after).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A `redis-server` owned by one test: killed and its directory removed when dropped.
pub struct RedisServer {
    binary: PathBuf,
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server, or returns `None` (after saying why) when `redis-server` is missing and
    /// `CHATLAB_REQUIRE_REDIS` is unset.
    ///
    /// # Panics
    /// When `redis-server` is missing but required, or does not start.
    pub fn start_or_skip(test: &str) -> Option<RedisServer> {
        let Some(binary) = redis_binary() else {
            if std::env::var_os("CHATLAB_REQUIRE_REDIS").is_some() {
                panic!("{test}: redis-server is not installed, and CHATLAB_REQUIRE_REDIS is set");
            }
            eprintln!("SKIPPED {test}: redis-server is not installed (set CHATLAB_REQUIRE_REDIS=1 to make this fail)");
            return None;
        };
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "chatlab-redis-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut server = RedisServer { binary, port: 0, dir, child: None };
        // A port found free can be taken before redis binds it: try a few.
        for _ in 0..5 {
            server.port = free_port();
            if server.spawn() {
                return Some(server);
            }
        }
        panic!("redis-server did not start; see {}", server.dir.join("redis.log").display());
    }

    /// `redis://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the process on `self.port` and waits until it answers PING; `false` if it exited instead.
    /// Durable like a production Redis should be: every write is in the append-only file before it is
    /// acknowledged (or published), so a restart loses nothing any client saw.
    fn spawn(&mut self) -> bool {
        let child = Command::new(&self.binary)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--daemonize", "no"])
            .args(["--appendonly", "yes", "--appendfsync", "always", "--save", ""])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(self.dir.join("redis.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + STARTUP;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if child.try_wait().unwrap().is_some() {
                    self.child = None;
                    return false;
                }
            }
            if self.ping() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Whether the server answers PING now.
    pub fn ping(&self) -> bool {
        let Ok(client) = redis::Client::open(self.url()) else { return false };
        let Ok(mut connection) = client.get_connection_with_timeout(Duration::from_millis(200)) else {
            return false;
        };
        redis::cmd("PING").query::<String>(&mut connection).is_ok()
    }

    /// Wipes every key (`FLUSHALL`), as an operator resetting the store would: the room starts over.
    ///
    /// # Panics
    /// When the server does not answer.
    pub fn flushall(&self) {
        let client = redis::Client::open(self.url()).unwrap();
        let mut connection = client.get_connection_with_timeout(Duration::from_secs(5)).unwrap();
        redis::cmd("FLUSHALL").query::<()>(&mut connection).unwrap();
    }

    /// Closes every pub/sub connection (`CLIENT KILL TYPE pubsub`): each chatlab process's feed drops, reports the
    /// outage and resubscribes, as after a network blip.
    ///
    /// # Panics
    /// When the server does not answer.
    pub fn kill_pubsub_clients(&self) {
        let client = redis::Client::open(self.url()).unwrap();
        let mut connection = client.get_connection_with_timeout(Duration::from_secs(5)).unwrap();
        redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub").query::<i64>(&mut connection).unwrap();
    }

    /// Stops the server as an operator would (SIGTERM: it flushes its append-only file and exits).
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if child.try_wait().unwrap().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Starts the server again on the same port with the same data.
    ///
    /// # Panics
    /// When it does not come back.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop it first");
        assert!(self.spawn(), "redis-server did not restart; see {}", self.dir.join("redis.log").display());
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A chatlab process spawned from the built binary on `127.0.0.1:0`; killed when dropped.
pub struct Chatlab {
    pub addr: SocketAddr,
    child: Child,
}

impl Chatlab {
    /// Spawns `chatlab --bind 127.0.0.1:0 ARGS...` and waits for the address it logs.
    ///
    /// # Panics
    /// When it does not start serving within a few seconds.
    pub fn spawn(binary: &Path, args: &[&str]) -> Chatlab {
        let mut child = Command::new(binary)
            .args(["--bind", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn chatlab");
        let stdout = child.stdout.take().unwrap();
        let (found, address) = mpsc::channel();
        // Reads the log until the process exits (so its pipe never fills), passing it on to the test's output.
        std::thread::spawn(move || {
            let mut found = Some(found);
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = served_address(&line) {
                    if let Some(found) = found.take() {
                        let _ = found.send(addr);
                    }
                }
                eprintln!("[chatlab] {line}");
            }
        });
        let addr = address.recv_timeout(STARTUP).expect("chatlab logs the address it serves");
        Chatlab { addr, child }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    /// `kill -9`: the process dies without a word to anyone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits (at most 10 s) for the process to end; its exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "chatlab exits within 10 s of SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Chatlab {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The address in `chatlab serving http://ADDR (broker: ...)`, ANSI colours and all.
fn served_address(line: &str) -> Option<SocketAddr> {
    let rest = line.split("chatlab serving http://").nth(1)?;
    let end = rest.find(|c: char| c.is_whitespace() || c == '\u{1b}').unwrap_or(rest.len());
    rest[..end].parse().ok()
}
