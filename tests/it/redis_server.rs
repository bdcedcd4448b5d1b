//! A private `redis-server` per test: its own temp dir, a unix socket, no persistence unless
//! asked for. Never the machine's shared Redis on 6379.
//!
//! Also used by `benches/broker.rs` (included with `#[path]`).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How to start the server.
#[derive(Debug, Clone, Default)]
pub struct RedisOptions {
    /// `appendonly yes` (for crash-recovery tests); otherwise no persistence at all.
    pub appendonly: bool,
    /// Also listen on this TCP port of 127.0.0.1 (plain, or TLS when `tls` is set).
    pub tcp_port: Option<u16>,
    /// Serve TLS on `tcp_port` with these files.
    pub tls: Option<TlsFiles>,
    /// More `--name value` arguments.
    pub extra: Vec<String>,
}

/// Certificate files for a TLS server.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca_cert: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A running private redis-server; killed on drop.
pub struct RedisServer {
    dir: tempfile::TempDir,
    socket: PathBuf,
    options: RedisOptions,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server with no persistence.
    pub fn start() -> Self {
        Self::start_with(RedisOptions::default())
    }

    /// Starts a server with `options`.
    pub fn start_with(options: RedisOptions) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("celeriac-redis-")
            .tempdir()
            .expect("create temp dir for redis-server");
        let socket = dir.path().join("redis.sock");
        let mut server = RedisServer {
            dir,
            socket,
            options,
            child: None,
        };
        server.spawn();
        server
    }

    /// `unix:///.../redis.sock`.
    pub fn url(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// `redis://127.0.0.1:PORT` (requires `tcp_port`).
    pub fn tcp_url(&self) -> String {
        let port = self
            .options
            .tcp_port
            .expect("server started without tcp_port");
        format!("redis://127.0.0.1:{port}")
    }

    /// The server's directory (data, AOF, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A synchronous connection, for inspecting and tampering with state in tests.
    pub fn connection(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection())
            .expect("connect to the private redis-server")
    }

    /// SIGKILL, without starting again.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts again on the same socket and directory (after [`RedisServer::kill`]).
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "redis-server is still running");
        self.spawn();
    }

    /// SIGKILL, then start again on the same socket and directory (to test AOF recovery).
    pub fn restart(&mut self) {
        self.kill();
        self.start_again();
    }

    fn spawn(&mut self) {
        let path = self.dir.path();
        let mut args: Vec<String> = vec![
            "--port".into(),
            "0".into(),
            "--unixsocket".into(),
            self.socket.display().to_string(),
            "--unixsocketperm".into(),
            "700".into(),
            "--dir".into(),
            path.display().to_string(),
            "--logfile".into(),
            path.join("redis.log").display().to_string(),
            "--save".into(),
            "".into(),
            "--daemonize".into(),
            "no".into(),
        ];
        if self.options.appendonly {
            args.extend(["--appendonly", "yes", "--appendfsync", "everysec"].map(String::from));
        } else {
            args.extend(["--appendonly", "no"].map(String::from));
        }
        if let Some(port) = self.options.tcp_port {
            let port = port.to_string();
            match &self.options.tls {
                Some(tls) => args.extend([
                    "--tls-port".into(),
                    port,
                    "--bind".into(),
                    "127.0.0.1".into(),
                    "--tls-cert-file".into(),
                    tls.cert.display().to_string(),
                    "--tls-key-file".into(),
                    tls.key.display().to_string(),
                    "--tls-ca-cert-file".into(),
                    tls.ca_cert.display().to_string(),
                    "--tls-auth-clients".into(),
                    "no".into(),
                ]),
                None => {
                    args[1] = port;
                    args.extend(["--bind".into(), "127.0.0.1".into()]);
                }
            }
        }
        args.extend(self.options.extra.iter().cloned());
        let child = Command::new("redis-server")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start redis-server ({e}): it is needed by the integration tests; \
                     run scripts/test, which installs it"
                )
            });
        self.child = Some(child);
        self.wait_until_ready();
    }

    fn wait_until_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if ping(&self.socket) {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "redis-server exited with {status} before answering PING; its log:\n{}",
                    self.log()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "redis-server did not answer PING within 15 s; its log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn ping(socket: &Path) -> bool {
    let Ok(mut s) = UnixStream::connect(socket) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    // "-LOADING ..." while an AOF is replayed: not ready yet.
    matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("find a free port")
}

/// True when this redis-server was built with TLS support.
pub fn redis_has_tls() -> bool {
    Command::new("redis-server")
        .arg("--version")
        .output()
        .ok()
        .is_some_and(|o| o.status.success())
        && Command::new("sh")
            .args(["-c", "ldd \"$(command -v redis-server)\" | grep -q libssl"])
            .status()
            .is_ok_and(|s| s.success())
}

/// A throwaway CA and a server certificate for `localhost` / 127.0.0.1, made with the
/// `openssl` command line in `dir`. `None` when openssl is missing.
pub fn make_tls_files(dir: &Path) -> Option<TlsFiles> {
    let run = |args: &[&str]| {
        Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .ok()?;
    let ok = run(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=celeriac test CA",
    ]) && run(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]) && run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    ]);
    ok.then(|| TlsFiles {
        ca_cert: dir.join("ca.crt"),
        cert: dir.join("server.crt"),
        key: dir.join("server.key"),
    })
}
