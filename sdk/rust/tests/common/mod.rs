//! Helpers the SDK's tests share: the shared vectors in testdata/, and raw
//! sends and fd counts for the fd-channel tests. Each test crate uses a
//! part of them.
#![allow(dead_code)]

use std::collections::HashMap;
use std::os::fd::RawFd;

use serde_json::Value;

/// testdata/`file`, parsed, after checking it is `schema`.
pub fn vectors(file: &str, schema: &str) -> Value {
    let path = format!("{}/../../testdata/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert_eq!(v["schema"], schema, "{path}");
    v
}

/// Checks that every reason class of the vectors has a phrase its rejects
/// must contain; returns how many classes there are.
pub fn reason_classes(v: &Value, phrases: &HashMap<&str, &str>) -> usize {
    let classes = v["reasons"].as_object().unwrap();
    for class in classes.keys() {
        assert!(
            phrases.contains_key(class.as_str()),
            "no phrase for {class}"
        );
    }
    classes.len()
}

pub fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// How many of this process's fds are the memfd called `name` (each test
/// names its own).
pub fn open_count(name: &str) -> usize {
    let want = format!("/memfd:{name} ");
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|t| t.to_string_lossy().starts_with(&want))
        .count()
}

/// One sendmsg of `data` with `fds` in one SCM_RIGHTS message, bypassing
/// every check of `Channel::send`.
pub fn send_raw(sock: RawFd, data: &[u8], fds: &[RawFd]) {
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut _,
        iov_len: data.len(),
    };
    let len = std::mem::size_of_val(fds) as u32;
    // SAFETY: CMSG_SPACE is arithmetic.
    let space = unsafe { libc::CMSG_SPACE(len) } as usize;
    let mut cbuf = vec![0u64; space.div_ceil(8).max(1)];
    // SAFETY: plain data; every pointer outlives sendmsg.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: the control buffer holds one header and len bytes of fds.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(len) as _;
            for (i, fd) in fds.iter().enumerate() {
                std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<RawFd>().add(i), *fd);
            }
        }
    }
    // SAFETY: msg and everything it points to are live.
    let sent = unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) };
    assert_eq!(
        sent,
        data.len() as isize,
        "sendmsg: {}",
        std::io::Error::last_os_error()
    );
}
