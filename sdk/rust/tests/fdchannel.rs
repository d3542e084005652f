//! testdata/fdchannel.json: bytes and fds sent with one sendmsg on a real
//! SOCK_SEQPACKET pair, received by `shm::Channel::recv` — the message, EOF,
//! or a reject of the reason class the Go SDK gives, with every fd that came
//! with a rejected message closed. testdata/fdchannel-runs.json: the same for
//! the datagrams of runs on the channel, received by
//! `shm::Channel::recv_payload`; and payloads sent by `send_payload` are cut
//! into the frames a receiver takes.

use std::collections::HashMap;
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use pipehost::shm::{
    decode_run_header, Channel, Message, MsgType, Received, HEADER_SIZE, MAX_FRAME, MAX_PAYLOAD,
};
use sha2::{Digest, Sha256};

mod common;
use common::{open_count, reason_classes, send_raw, unhex, vectors};

fn memfd(name: &str) -> OwnedFd {
    let c = CString::new(name).unwrap();
    // SAFETY: memfd_create returns a fresh fd or -1.
    let fd = unsafe { libc::memfd_create(c.as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: the fd is fresh and ours.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

#[test]
fn shared_vectors() {
    let v = vectors("fdchannel.json", "pipehost.fdchannel/1");
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
    let classes = reason_classes(&v, &phrases);
    let mut seen = std::collections::HashSet::new();
    for (i, c) in v["cases"].as_array().unwrap().iter().enumerate() {
        let name = c["name"].as_str().unwrap();
        let mem_name = format!("rs-frame-{i}");
        let mem = memfd(&mem_name);
        let (host, plugin) = Channel::pair().unwrap();
        send_raw(
            host.as_fd().as_raw_fd(),
            &unhex(c["data"].as_str().unwrap()),
            &vec![mem.as_raw_fd(); c["fds"].as_u64().unwrap() as usize],
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
                assert_eq!(m.kind.code().to_string(), want["type"], "{name}");
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
    assert_eq!(seen.len(), classes, "a reason class without a case");
}

/// SHA-256 in hex, as the vectors give payload digests.
fn sha256(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn shared_run_vectors() {
    let v = vectors("fdchannel-runs.json", "pipehost.fdchannel-runs/1");
    // What each reason class's message says, and nothing else's does.
    let phrases = HashMap::from([
        ("long", "longer than 32800 bytes"),
        ("short", "bytes, want 32"),
        ("unknown_type", "unknown message type"),
        ("run_token", "is not a run token"),
        ("cancel_fields", "CANCEL carries no payload"),
        ("payload_too_big", "over the limit of 67108864 bytes"),
        ("frame_size", "does not fit its"),
        ("empty_frame", "is an empty frame"),
        ("length", "its header says"),
        ("interleaved", "came inside"),
        ("truncated", "the channel ended inside"),
        ("fd_count", "fds, want"),
    ]);
    let classes = reason_classes(&v, &phrases);
    let mut seen = std::collections::HashSet::new();
    for (i, c) in v["cases"].as_array().unwrap().iter().enumerate() {
        let name = c["name"].as_str().unwrap();
        let mem_name = format!("rs-run-frame-{i}");
        let mem = memfd(&mem_name);
        let (host, plugin) = Channel::pair().unwrap();
        let mut sent_payload = Vec::new();
        for d in c["datagrams"].as_array().unwrap() {
            let mut data = unhex(d["data"].as_str().unwrap());
            data.resize(data.len() + d["fill"].as_u64().unwrap_or(0) as usize, 0xa5);
            sent_payload.extend_from_slice(&data[HEADER_SIZE.min(data.len())..]);
            let fds = d["fds"].as_u64().unwrap_or(0) as usize;
            send_raw(host.as_fd().as_raw_fd(), &data, &vec![mem.as_raw_fd(); fds]);
        }
        // The host's end stays open through the receive unless the case closes it.
        let host = (!c["close"].as_bool().unwrap_or(false)).then_some(host);
        let got = plugin.recv_payload();
        match c["outcome"].as_str().unwrap() {
            "message" => {
                let (m, payload) = match got {
                    Ok(Received::Payload(m, p)) => (m, p),
                    Ok(Received::Message(m, None)) if m.kind == MsgType::Cancel => (m, Vec::new()),
                    other => panic!("{name}: {other:?}"),
                };
                let want = &c["message"];
                assert_eq!(m.kind.code().to_string(), want["type"], "{name}");
                assert_eq!(format!("{:#018x}", m.token), want["token"], "{name}");
                assert_eq!(payload.len().to_string(), want["length"], "{name}");
                assert_eq!(m.segment_id, payload.len() as u64, "{name}");
                assert_eq!(sha256(&payload), want["sha256"], "{name}");
                assert_eq!(payload, sent_payload, "{name}");
            }
            _ => {
                let reason = c["reason"].as_str().unwrap();
                seen.insert(reason.to_string());
                let e = got.expect_err(&format!("{name}: want a {reason} reject"));
                let msg = e.message();
                assert!(
                    msg.starts_with("fd channel protocol violation: ")
                        && msg.contains(phrases[reason]),
                    "{name}: want a {reason} reject, got: {msg}"
                );
                for (other, phrase) in &phrases {
                    assert!(
                        *other == reason || !msg.contains(phrase),
                        "{name}: a {reason} reject reads like {other}: {msg}"
                    );
                }
            }
        }
        assert_eq!(
            open_count(&mem_name),
            1,
            "{name}: every received fd is closed"
        );
        drop(host);
    }
    assert_eq!(seen.len(), classes, "a reason class without a case");
}

/// Reads one datagram as it is on the wire: its header, decoded, and body.
fn raw_frame(sock: RawFd) -> (Message, Vec<u8>) {
    let mut buf = vec![0u8; HEADER_SIZE + MAX_FRAME + 1];
    // SAFETY: recv writes at most buf.len() bytes.
    let n = unsafe { libc::recv(sock, buf.as_mut_ptr().cast(), buf.len(), 0) };
    assert!(n >= HEADER_SIZE as isize, "recv: {n}");
    let m = decode_run_header(&buf[..HEADER_SIZE]).unwrap();
    (m, buf[HEADER_SIZE..n as usize].to_vec())
}

#[test]
fn payloads_are_cut_into_frames_and_come_back_whole() {
    for n in [0, 1, MAX_FRAME, MAX_FRAME + 1, 200_000] {
        let (a, b) = Channel::pair().unwrap();
        let a = std::sync::Arc::new(a);
        let payload: Vec<u8> = (0..n).map(|i| (i * 7 + i / 251) as u8).collect();
        // More than the socket buffers: the sender waits for the reader.
        let send = |a: &std::sync::Arc<Channel>| {
            let (a, p) = (a.clone(), payload.clone());
            std::thread::spawn(move || a.send_payload(MsgType::Event, 7, &p).unwrap())
        };
        let sending = send(&a);
        let mut frames = vec![raw_frame(b.as_fd().as_raw_fd())];
        while frames.iter().map(|(m, _)| m.size).sum::<u64>() < n as u64 {
            frames.push(raw_frame(b.as_fd().as_raw_fd()));
        }
        sending.join().unwrap();
        assert_eq!(frames.len(), n.div_ceil(MAX_FRAME).max(1), "{n} bytes");
        for (i, (m, body)) in frames.iter().enumerate() {
            assert_eq!(
                (m.kind, m.token, m.segment_id),
                (MsgType::Event, 7, n as u64)
            );
            assert_eq!(m.size as usize, body.len());
            assert_eq!(body.len(), MAX_FRAME.min(n - i * MAX_FRAME));
        }
        let joined: Vec<u8> = frames.iter().flat_map(|(_, b)| b.iter().copied()).collect();
        assert!(joined == payload, "{n} bytes: the frames' bodies differ");
        let sending = send(&a);
        let got = b.recv_payload().unwrap();
        sending.join().unwrap();
        match got {
            Received::Payload(m, p) => {
                assert_eq!(
                    (m.kind, m.token, m.segment_id, m.size),
                    (MsgType::Event, 7, n as u64, 0)
                );
                assert!(p == payload, "{n} bytes came back different");
            }
            other => panic!("{n} bytes: {other:?}"),
        }
    }
}

#[test]
fn the_frames_of_one_payload_are_never_interleaved_with_another_senders() {
    let (a, b) = Channel::pair().unwrap();
    let a = std::sync::Arc::new(a);
    let threads: Vec<_> = (1..=4u8)
        .map(|t| {
            let a = a.clone();
            std::thread::spawn(move || {
                a.send_payload(MsgType::Event, t.into(), &vec![t; 150_000])
                    .unwrap()
            })
        })
        .collect();
    let mut got = HashMap::new();
    for _ in 0..4 {
        let Received::Payload(m, p) = b.recv_payload().unwrap() else {
            panic!("not a payload")
        };
        got.insert(m.token, p);
    }
    for t in threads {
        t.join().unwrap();
    }
    for t in 1..=4u8 {
        assert!(got[&u64::from(t)] == vec![t; 150_000], "token {t}");
    }
}

#[test]
fn what_a_receiver_would_refuse_is_not_sent() {
    let (a, b) = Channel::pair().unwrap();
    let e = a
        .send_payload(MsgType::Event, 1, &vec![0; MAX_PAYLOAD + 1])
        .unwrap_err();
    assert!(
        e.message().contains("over the limit of 67108864 bytes"),
        "{e}"
    );
    let e = a.send_payload(MsgType::Event, 1 << 63, b"x").unwrap_err();
    assert!(e.message().contains("not a run token"), "{e}");
    let e = a.send_payload(MsgType::Cancel, 1, b"").unwrap_err();
    assert!(
        e.message().contains("a CANCEL message has no payload"),
        "{e}"
    );
    let run = Message {
        kind: MsgType::Run,
        token: 1,
        segment_id: 0,
        size: 0,
    };
    let e = a.send(&run, None).unwrap_err();
    assert!(e.message().contains("is sent with its payload"), "{e}");
    let mut buf = [0u8; 64];
    // SAFETY: recv writes at most 64 bytes.
    let n = unsafe {
        libc::recv(
            b.as_fd().as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    };
    assert_eq!(
        (n, std::io::Error::last_os_error().kind()),
        (-1, std::io::ErrorKind::WouldBlock),
        "something was sent"
    );
}
