//! testdata/fdchannel.json: bytes and fds sent with one sendmsg on a real
//! SOCK_SEQPACKET pair, received by `shm::Channel::recv` — the message, EOF,
//! or a reject of the reason class the Go SDK gives, with every fd that came
//! with a rejected message closed.

use std::collections::HashMap;
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use pipehost::shm::{Channel, MsgType, Received};
use serde_json::Value;

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn memfd(name: &str) -> OwnedFd {
    let c = CString::new(name).unwrap();
    // SAFETY: memfd_create returns a fresh fd or -1.
    let fd = unsafe { libc::memfd_create(c.as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: the fd is fresh and ours.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// How many of this process's fds are the memfd called `name`.
fn open_count(name: &str) -> usize {
    let want = format!("/memfd:{name} ");
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|t| t.to_string_lossy().starts_with(&want))
        .count()
}

/// One sendmsg of `data` with `n` copies of `fd` in one SCM_RIGHTS message.
fn send_raw(sock: RawFd, data: &[u8], fd: RawFd, n: usize) {
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut _,
        iov_len: data.len(),
    };
    let space = unsafe { libc::CMSG_SPACE((n * 4) as u32) } as usize;
    let mut cbuf = vec![0u64; space.div_ceil(8).max(1)];
    // SAFETY: plain data; every pointer outlives sendmsg.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if n > 0 {
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN((n * 4) as u32) as _;
            for i in 0..n {
                std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<RawFd>().add(i), fd);
            }
        }
    }
    let sent = unsafe { libc::sendmsg(sock, &msg, 0) };
    assert_eq!(
        sent,
        data.len() as isize,
        "sendmsg: {}",
        std::io::Error::last_os_error()
    );
}

#[test]
fn shared_vectors() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/fdchannel.json");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["schema"], "pipehost.fdchannel/1");
    let phrases = HashMap::from([
        ("too_many_fds", "control data truncated"),
        ("long", "longer than 32 bytes"),
        ("short", "bytes, want 32"),
        ("bad_magic", "bad magic"),
        ("bad_version", "header version"),
        ("unknown_type", "unknown message type"),
        ("host_token", "is not a host token"),
        ("plugin_token", "is not a plugin token"),
        ("fd_count", "fds, want"),
    ]);
    let classes = v["reasons"].as_object().unwrap();
    for class in classes.keys() {
        assert!(
            phrases.contains_key(class.as_str()),
            "no phrase for {class}"
        );
    }
    let mut seen = std::collections::HashSet::new();
    for (i, c) in v["cases"].as_array().unwrap().iter().enumerate() {
        let name = c["name"].as_str().unwrap();
        let mem_name = format!("rs-frame-{i}");
        let mem = memfd(&mem_name);
        let (host, plugin) = Channel::pair().unwrap();
        send_raw(
            host.as_fd().as_raw_fd(),
            &unhex(c["data"].as_str().unwrap()),
            mem.as_raw_fd(),
            c["fds"].as_u64().unwrap() as usize,
        );
        let got = plugin.recv();
        match c["outcome"].as_str().unwrap() {
            "eof" => assert!(matches!(got, Ok(Received::Eof)), "{name}: {got:?}"),
            "message" => {
                let (m, fd) = match got {
                    Ok(Received::Message(m, fd)) => (m, fd),
                    other => panic!("{name}: {other:?}"),
                };
                let want = &c["message"];
                let code = match m.kind {
                    MsgType::Segment => "1",
                    MsgType::Adopt => "2",
                    MsgType::Close => "3",
                };
                assert_eq!(code, want["type"], "{name}");
                assert_eq!(format!("{:#018x}", m.token), want["token"], "{name}");
                assert_eq!(
                    format!("{:#018x}", m.segment_id),
                    want["segment_id"],
                    "{name}"
                );
                assert_eq!(format!("{:#018x}", m.size), want["size"], "{name}");
                assert_eq!(fd.is_some(), m.kind != MsgType::Close, "{name}");
                if fd.is_some() {
                    assert_eq!(
                        open_count(&mem_name),
                        2,
                        "{name}: ours and the one received"
                    );
                }
            }
            _ => {
                let reason = c["reason"].as_str().unwrap();
                seen.insert(reason.to_string());
                let e = got.expect_err(&format!("{name}: want a {reason} reject"));
                assert!(
                    e.message().contains(phrases[reason]),
                    "{name}: want a {reason} reject, got: {}",
                    e.message()
                );
            }
        }
        assert_eq!(
            open_count(&mem_name),
            1,
            "{name}: every received fd is closed"
        );
    }
    assert_eq!(seen.len(), classes.len(), "a reason class without a case");
}
