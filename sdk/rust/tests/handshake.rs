//! testdata/handshake.json against this SDK as a real plugin process: the
//! test binary (no libtest harness, so nothing else reaches stdout) runs
//! itself again as a plugin and talks to it the way the host does. The gRPC
//! services behind the handshake are checked from the host side by the Go
//! tests of the Rust plugins (host/runner).

use std::io::{BufRead, BufReader, Read};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pipehost::shm::{Channel, Message, MsgType};
use pipehost::{Error, RunContext, Stage};

mod common;
use common::vectors;

const CHILD: &str = "PIPEHOST_TEST_HANDSHAKE_CHILD";

fn noop(_: &RunContext, _: ()) -> Result<(), Error> {
    Ok(())
}

/// Starts this binary as a plugin with exactly `env`, the child's end of a
/// fresh fd channel as fd `fd`.
fn start(env: &[(String, String)], fd: i32) -> (Child, Channel) {
    let (host, plugin) = Channel::pair().unwrap();
    let raw = plugin.as_fd().as_raw_fd();
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.env_clear()
        .env(CHILD, "1")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: dup2 is async-signal-safe; it clears FD_CLOEXEC on the copy.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(raw, fd) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().unwrap();
    drop(plugin);
    (child, host)
}

fn wait(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let t0 = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            panic!("plugin still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn output(mut child: Child) -> (std::process::ExitStatus, String, String) {
    let st = wait(&mut child, Duration::from_secs(10));
    let (mut out, mut err) = (String::new(), String::new());
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (st, out, err)
}

fn main() {
    if std::env::var_os(CHILD).is_some() {
        pipehost::serve(vec![Stage::new("vectors.noop", "1.0.0", noop)]);
    }
    let v = vectors("handshake.json", "pipehost.handshake/1");
    let s = |key: &str| v[key].as_str().unwrap().to_string();
    let n = |key: &str| v[key].as_u64().unwrap();
    let e = |key: &str| v["env"][key].as_str().unwrap().to_string();
    let dir = std::env::temp_dir().join(format!("pipehost-rs-handshake-{}", std::process::id()));
    std::fs::create_dir(&dir).unwrap();
    let fd = n("fd_channel_fd") as i32;
    let app = n("app_protocol_version").to_string();
    let base = vec![
        (s("magic_cookie_key"), s("magic_cookie_value")),
        (e("protocol_versions"), format!("0,{app}")),
        (e("unix_socket_dir"), dir.to_string_lossy().into_owned()),
        (e("fd_channel"), fd.to_string()),
        (e("min_port"), "0".into()),
        (e("max_port"), "0".into()),
    ];
    let with = |key: &str, val: &str| -> Vec<(String, String)> {
        base.iter()
            .map(|(k, v)| {
                if k == key {
                    (k.clone(), val.to_string())
                } else {
                    (k.clone(), v.clone())
                }
            })
            .collect()
    };

    // Without the exact cookie: it explains itself and exits 1, stdout empty.
    let (child, _ch) = start(
        &with(&s("magic_cookie_key"), &(s("magic_cookie_value") + "x")),
        fd,
    );
    let (st, out, err) = output(child);
    assert_eq!(st.code(), Some(1), "wrong cookie: {err}");
    assert_eq!(out, "", "wrong cookie: nothing on stdout");
    assert!(err.contains("pipehost"), "{err}");

    // Only another application protocol version: refused, stdout empty.
    let other = (n("app_protocol_version") + 1).to_string();
    let (child, _ch) = start(&with(&e("protocol_versions"), &other), fd);
    let (st, out, err) = output(child);
    assert!(!st.success(), "other protocol version accepted: {err}");
    assert_eq!(out, "");

    // The handshake line, a listening socket, and a clean stop by CLOSE.
    let (mut child, host) = start(&base, fd);
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let fields: Vec<&str> = line.trim_end_matches('\n').split('|').collect();
    assert_eq!(fields.len(), 5, "handshake line {line:?}");
    let address = fields[3];
    let want = s("handshake_line")
        .replace("{core}", &n("core_protocol_version").to_string())
        .replace("{app}", &app)
        .replace("{address}", address);
    assert_eq!(line, want);
    assert_eq!(fields[2], s("network"));
    assert_eq!(fields[4], s("protocol"));
    let sock = std::path::Path::new(address);
    assert_eq!(
        sock.parent().unwrap(),
        dir,
        "socket outside PLUGIN_UNIX_SOCKET_DIR"
    );
    assert!(
        sock.file_name().unwrap().len() as u64 <= n("socket_name_max_bytes"),
        "{address}"
    );
    UnixStream::connect(sock).unwrap_or_else(|e| panic!("connect {address}: {e}"));
    let close = Message {
        kind: MsgType::Close,
        token: 0,
        segment_id: 0,
        size: 0,
    };
    host.send(&close, None).unwrap();
    let st = wait(&mut child, Duration::from_secs(10));
    assert_eq!(st.code(), Some(0), "CLOSE: exit 0");
    let _ = std::fs::remove_dir_all(&dir);
    println!("handshake vectors: ok");
}
