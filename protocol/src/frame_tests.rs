//! Tests of the framing: a round trip for every message, malformed input, and property
//! tests that arbitrary bytes never panic the decoder.

use proptest::prelude::*;

use super::*;
use crate::message::{
    CpuQuota, ExitStatus, ImageSpec, Limits, TtySize, VolumeMount, WritableLayer,
};

fn round_trip(message: Message) {
    let mut wire = Vec::new();
    write_message(&mut wire, &message).expect("encodes");
    let decoded = read_message(&mut wire.as_slice()).expect("decodes");
    assert_eq!(decoded, message);
}

fn run_message() -> Message {
    Message::Run {
        id: "c1".into(),
        image: ImageSpec {
            device: "/dev/vdb".into(),
            fstype: "erofs".into(),
        },
        args: vec!["sh".into(), "-c".into(), "echo hi".into()],
        env: vec!["A=1".into()],
        cwd: Some("/tmp".into()),
        user: Some("1000:1000".into()),
        tty: Some(TtySize { rows: 24, cols: 80 }),
        limits: Limits {
            memory_bytes: Some(64 << 20),
            pids: Some(100),
            cpu_quota: Some(CpuQuota {
                quota_us: 50_000,
                period_us: 100_000,
            }),
        },
        writable_layer: WritableLayer::Disk {
            device: "/dev/vdc".into(),
        },
        hostname: Some("box".into()),
        volumes: vec![VolumeMount {
            tag: "husk-vol-0".into(),
            target: "/data".into(),
            read_only: true,
        }],
    }
}

#[test]
fn hello_round_trips() {
    round_trip(Message::Hello {
        version: 1,
        agent_version: "0.1.0".into(),
        generation: 3,
    });
}

#[test]
fn restored_round_trips() {
    round_trip(Message::Restored {
        generation: 4,
        entropy: vec![1, 2, 3, 255],
        unix_time_ns: 1_790_000_000_000_000_000,
        hostname: "husk-abc".into(),
        disks: vec![crate::DiskSize {
            name: "vda".into(),
            sectors: 2048,
        }],
    });
}

#[test]
fn control_requests_round_trip() {
    round_trip(Message::Pause);
    round_trip(Message::Resume);
    round_trip(Message::SnapshotTo {
        dir: "/tmp/s".into(),
        durable: true,
    });
    round_trip(Message::Done {
        detail: "paused".into(),
    });
    round_trip(Message::Adopt {
        name: "web".into(),
        args: vec!["sleep".into(), "60".into()],
        env: vec!["A=1".into()],
        cwd: Some("/tmp".into()),
        user: None,
        tty: None,
        remove_on_exit: true,
    });
}

#[test]
fn restored_ack_round_trips() {
    round_trip(Message::RestoredAck { generation: 4 });
}

#[test]
fn hello_ack_round_trips() {
    round_trip(Message::HelloAck { version: 1 });
}

#[test]
fn run_round_trips() {
    round_trip(run_message());
}

#[test]
fn run_with_tmpfs_and_no_options_round_trips() {
    round_trip(Message::Run {
        id: "c2".into(),
        image: ImageSpec {
            device: "/dev/vdb".into(),
            fstype: "ext4".into(),
        },
        args: vec!["true".into()],
        env: vec![],
        cwd: None,
        user: None,
        tty: None,
        limits: Limits::default(),
        writable_layer: WritableLayer::Tmpfs,
        hostname: None,
        volumes: vec![],
    });
}

#[test]
fn exec_round_trips() {
    round_trip(Message::Exec {
        container_id: "c1".into(),
        args: vec!["ls".into()],
        env: vec!["B=2".into()],
        cwd: None,
        user: Some("root".into()),
        tty: None,
    });
}

#[test]
fn copy_requests_round_trip() {
    round_trip(Message::CopyOut {
        container_id: "c1".into(),
        path: "/etc/hosts".into(),
    });
    round_trip(Message::CopyIn {
        container_id: "c1".into(),
        path: "/srv/".into(),
        contents: true,
        preserve_owner: false,
        as_is: false,
    });
}

#[test]
fn started_round_trips() {
    round_trip(Message::started(7));
}

#[test]
fn stdin_round_trips() {
    round_trip(Message::Stdin {
        process: 3,
        data: b"input\0\xff".to_vec(),
    });
}

#[test]
fn stdin_close_round_trips() {
    round_trip(Message::StdinClose { process: 3 });
}

#[test]
fn stdin_ack_round_trips() {
    round_trip(Message::StdinAck {
        process: 3,
        bytes: 65536,
    });
}

#[test]
fn stdout_round_trips() {
    round_trip(Message::Stdout {
        process: 4,
        data: b"out".to_vec(),
    });
}

#[test]
fn stderr_round_trips() {
    round_trip(Message::Stderr {
        process: u32::MAX,
        data: Vec::new(),
    });
}

#[test]
fn signal_round_trips() {
    round_trip(Message::Signal {
        process: 1,
        signal: 15,
    });
}

#[test]
fn resize_round_trips() {
    round_trip(Message::Resize {
        process: 1,
        rows: 50,
        cols: 132,
    });
}

#[test]
fn exited_round_trips() {
    round_trip(Message::Exited {
        process: 1,
        status: ExitStatus {
            code: None,
            signal: Some(9),
            oom_killed: true,
        },
    });
}

#[test]
fn error_round_trips() {
    round_trip(Message::Error {
        message: "no such container: c9".into(),
    });
}

#[test]
fn shutdown_round_trips() {
    round_trip(Message::Shutdown);
}

#[test]
fn network_round_trips() {
    round_trip(Message::Network {
        interface: "eth0".into(),
        address: std::net::Ipv4Addr::new(10, 213, 0, 6),
        prefix_len: 30,
        gateway: std::net::Ipv4Addr::new(10, 213, 0, 5),
        mac: Some("02:00:00:aa:bb:cc".into()),
        dns: vec![std::net::Ipv4Addr::new(10, 99, 0, 2)],
    });
}

#[test]
fn network_ready_round_trips() {
    round_trip(Message::NetworkReady);
}

#[test]
fn network_example_of_the_protocol_doc_parses() {
    let json = r#"{"type":"Network","interface":"eth0","address":"10.213.0.6",
        "prefix_len":30,"gateway":"10.213.0.5"}"#;
    let frame = Frame {
        kind: FrameKind::Control,
        payload: json.as_bytes().to_vec(),
    };
    assert_eq!(
        Message::from_frame(&frame).expect("parses"),
        Message::Network {
            interface: "eth0".into(),
            address: std::net::Ipv4Addr::new(10, 213, 0, 6),
            prefix_len: 30,
            gateway: std::net::Ipv4Addr::new(10, 213, 0, 5),
            mac: None,
            dns: vec![],
        }
    );
}

#[test]
fn network_address_that_is_not_ipv4_is_refused() {
    let json = r#"{"type":"Network","interface":"eth0","address":"10.213.0.300",
        "prefix_len":30,"gateway":"10.213.0.5"}"#;
    let frame = Frame {
        kind: FrameKind::Control,
        payload: json.as_bytes().to_vec(),
    };
    assert!(Message::from_frame(&frame).is_err());
}

#[test]
fn data_frame_is_raw_bytes_after_the_process_id() {
    let frame = Message::Stdout {
        process: 2,
        data: b"ab".to_vec(),
    }
    .to_frame()
    .expect("encodes");
    assert_eq!(frame.kind, FrameKind::Stdout);
    assert_eq!(frame.payload, [2, 0, 0, 0, b'a', b'b']);
}

#[test]
fn empty_stream_reads_as_closed() {
    let err = read_frame(&mut [].as_slice()).unwrap_err();
    assert!(matches!(err, ProtocolError::Closed), "{err}");
}

#[test]
fn truncated_header_is_an_error() {
    let err = read_frame(&mut [5u8, 0].as_slice()).unwrap_err();
    assert!(
        matches!(err, ProtocolError::Truncated { got: 2, want: 4 }),
        "{err}"
    );
}

#[test]
fn truncated_payload_is_an_error() {
    let mut wire = Vec::new();
    write_message(&mut wire, &Message::Shutdown).expect("encodes");
    wire.pop();
    let err = read_frame(&mut wire.as_slice()).unwrap_err();
    assert!(matches!(err, ProtocolError::Truncated { .. }), "{err}");
}

#[test]
fn oversized_length_is_refused_before_allocating() {
    let wire = (MAX_FRAME_LEN + 1).to_le_bytes();
    let err = read_frame(&mut wire.as_slice()).unwrap_err();
    assert!(
        err.to_string().contains(&format!("{}", MAX_FRAME_LEN + 1)),
        "{err}"
    );
}

#[test]
fn zero_length_frame_is_an_error() {
    let err = read_frame(&mut [0u8, 0, 0, 0].as_slice()).unwrap_err();
    assert!(matches!(err, ProtocolError::EmptyFrame), "{err}");
}

#[test]
fn unknown_kind_is_an_error_and_the_stream_stays_in_step() {
    let mut wire = vec![2, 0, 0, 0, 0x7f, 0xaa];
    write_message(&mut wire, &Message::Shutdown).expect("encodes");
    let mut reader = wire.as_slice();
    let err = read_frame(&mut reader).unwrap_err();
    assert!(matches!(err, ProtocolError::UnknownKind(0x7f)), "{err}");
    assert_eq!(
        read_message(&mut reader).expect("next frame"),
        Message::Shutdown
    );
}

#[test]
fn short_data_frame_is_an_error() {
    let frame = Frame {
        kind: FrameKind::Stdin,
        payload: vec![1, 2],
    };
    let err = Message::from_frame(&frame).unwrap_err();
    assert!(matches!(err, ProtocolError::ShortDataFrame(2)), "{err}");
}

#[test]
fn data_message_in_a_control_frame_is_refused() {
    let frame = Frame {
        kind: FrameKind::Control,
        payload: br#"{"type":"Stdout"}"#.to_vec(),
    };
    assert!(Message::from_frame(&frame).is_err());
}

#[test]
fn unknown_json_field_is_refused() {
    let frame = Frame {
        kind: FrameKind::Control,
        payload: br#"{"type":"StdinClose","process":1,"x":1}"#.to_vec(),
    };
    assert!(Message::from_frame(&frame).is_err());
}

#[test]
fn oversized_data_message_is_refused_on_write() {
    let message = Message::Stdin {
        process: 1,
        data: vec![0; MAX_FRAME_LEN as usize],
    };
    let err = write_message(&mut Vec::new(), &message).unwrap_err();
    assert!(matches!(err, ProtocolError::MessageTooLarge(_)), "{err}");
}

proptest! {
    #[test]
    fn random_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let mut reader = bytes.as_slice();
        while let Ok(frame) = read_frame(&mut reader) {
            let _ = Message::from_frame(&frame);
        }
    }

    #[test]
    fn random_frame_bodies_never_panic_the_decoder(
        kind in 1u8..=4,
        payload in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        let mut wire = ((payload.len() + 1) as u32).to_le_bytes().to_vec();
        wire.push(kind);
        wire.extend_from_slice(&payload);
        let frame = read_frame(&mut wire.as_slice()).expect("well-formed frame");
        let _ = Message::from_frame(&frame);
    }

    #[test]
    fn every_truncation_of_a_frame_is_an_error(cut in 1usize..40) {
        let mut wire = Vec::new();
        write_message(&mut wire, &Message::Signal { process: 1, signal: 2 }).expect("encodes");
        let cut = cut.min(wire.len() - 1);
        prop_assert!(read_frame(&mut &wire[..cut]).is_err());
    }

    #[test]
    fn stdio_data_round_trips(process: u32, data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let message = Message::Stdin { process, data };
        let mut wire = Vec::new();
        write_message(&mut wire, &message).expect("encodes");
        prop_assert_eq!(read_message(&mut wire.as_slice()).expect("decodes"), message);
    }
}

#[test]
fn run_example_of_the_protocol_doc_parses() {
    let json = r#"{"type":"Run","id":"c1","image":{"device":"/dev/vdb","fstype":"erofs"},
        "args":["sh","-c","echo hi"],"env":["A=1"],"cwd":null,"user":"1000:1000",
        "tty":null,"limits":{"memory_bytes":67108864,"pids":100,"cpu_quota":null},
        "writable_layer":"Tmpfs","hostname":null,
        "volumes":[{"tag":"husk-vol-0","target":"/data","read_only":true}]}"#;
    let frame = Frame {
        kind: FrameKind::Control,
        payload: json.as_bytes().to_vec(),
    };
    assert!(matches!(
        Message::from_frame(&frame),
        Ok(Message::Run { .. })
    ));
}

#[test]
fn disk_writable_layer_is_externally_tagged() {
    let json = serde_json::to_string(&WritableLayer::Disk {
        device: "/dev/vdc".into(),
    })
    .expect("json");
    assert_eq!(json, r#"{"Disk":{"device":"/dev/vdc"}}"#);
}
