//! Every wire decoder under generated and mutated input: message bodies of every kind
//! a peer can send (`decode_body`) and whole frame streams (`read_frame`). Inputs are
//! random bytes, and valid encodings with bytes flipped, inserted, deleted, truncated
//! or with their length fields inflated. No input may panic, and none may make a
//! decoder allocate without bound (an abort would end this test).
//!
//! `GLORY_FUZZ_INPUTS` sets how many inputs in all (default 100,000, split over the
//! decoders); the benchmark in docs/BENCHMARKS.md runs 10 million:
//! `GLORY_FUZZ_INPUTS=10000000 cargo test --release -p glory-protocol --test decoders`.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use glory_protocol::frame::{decode_body, encode_body, read_frame, FrameError};
use glory_protocol::monitoring::SampleBatch;
use glory_protocol::{
    AgentToGroup, ClusterToGroup, ClusterToProvisioner, EnrollKind, EnrollReply, EnrollRequest,
    GroupToAgent, GroupToCluster, HealthCheck, HealthCheckKind, Heartbeat, Hello, HelloReply,
    InstanceSpec, Inventory, Load, ProcessReport, ProcessSpec, ProcessState, ProvisionerToCluster,
    Role,
};
use serde::de::DeserializeOwned;

/// xorshift64*: deterministic, so a failure is reproduced by its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// Interesting bytes for MessagePack: the markers of big strings, arrays and maps,
/// whose length fields are what an attacker inflates.
const MARKERS: [u8; 12] = [
    0xc4, 0xc5, 0xc6, 0xd9, 0xda, 0xdb, 0xdc, 0xdd, 0xde, 0xdf, 0xff, 0x00,
];

/// `seed` mutated once to eight times.
fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..1 + rng.below(8) {
        match rng.below(7) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 => {
                let i = rng.below(v.len() + 1);
                v.insert(i, rng.next() as u8);
            }
            2 if !v.is_empty() => {
                let i = rng.below(v.len());
                v.remove(i);
            }
            3 => v.truncate(rng.below(v.len() + 1)),
            4 if !v.is_empty() => {
                // A length field claiming far more than there is.
                let i = rng.below(v.len());
                v[i] = MARKERS[rng.below(MARKERS.len())];
                for b in v.iter_mut().skip(i + 1).take(4) {
                    *b = 0xff;
                }
            }
            5 => {
                let i = rng.below(v.len() + 1);
                let n = rng.below(16);
                let junk = rng.bytes(n);
                v.splice(i..i, junk);
            }
            _ if v.len() > 1 => {
                let (a, b) = (rng.below(v.len()), rng.below(v.len()));
                v.swap(a, b);
            }
            _ => {}
        }
    }
    v
}

fn inventory() -> Inventory {
    Inventory {
        hostname: "sim-00001".into(),
        identity: "uuid:00000000-0000-4000-8000-000000000001".into(),
        cpus: 16,
        memory_bytes: 64 << 30,
        ..Default::default()
    }
}

fn addr() -> SocketAddr {
    "10.0.0.1:7401".parse().unwrap()
}

/// Valid encodings of every message kind, the seeds of the mutations.
fn seeds() -> Vec<Vec<u8>> {
    let mut report = ProcessReport::new("svc/web/web-1", 3, ProcessState::Running);
    report.port = Some(8080);
    report.output = vec!["serving".into(); 3];
    let spec = ProcessSpec {
        id: "svc/web/web-1".into(),
        epoch: 3,
        command: vec!["python3".into(), "-m".into(), "http.server".into()],
        env: BTreeMap::from([("A".into(), "b".into())]),
        instance: Some(InstanceSpec {
            port: 0,
            health: Some(HealthCheck {
                kind: HealthCheckKind::Http { path: "/".into() },
                interval_ms: 1000,
                timeout_ms: 500,
                failures: 3,
            }),
            stop_timeout_ms: 10_000,
        }),
    };
    let e = |r: Result<Vec<u8>, FrameError>| r.expect("encodes");
    vec![
        e(encode_body(&Hello::new(Role::Agent, "n-1"))),
        e(encode_body(&HelloReply::Welcome {
            protocol_version: 1,
            server_id: "cm-1".into(),
        })),
        e(encode_body(&Heartbeat {
            seq: 7,
            sent_ms: 1,
            load: Load::default(),
        })),
        e(encode_body(&EnrollRequest {
            token: "gb-1.secret".into(),
            kind: EnrollKind::Node {
                inventory: Box::new(inventory()),
            },
            csr_pem: "-----BEGIN CERTIFICATE REQUEST-----".into(),
        })),
        e(encode_body(&EnrollRequest {
            token: "gb-1.secret".into(),
            kind: EnrollKind::GroupMaster {
                group: "g00".into(),
                listen: addr(),
            },
            csr_pem: String::new(),
        })),
        e(encode_body(&AgentToGroup::Inventory(Box::new(inventory())))),
        e(encode_body(&AgentToGroup::Process(report.clone()))),
        e(encode_body(&AgentToGroup::Samples(SampleBatch::default()))),
        e(encode_body(&GroupToAgent::Start(spec))),
        e(encode_body(&GroupToAgent::GroupMasters(vec![
            addr(),
            addr(),
        ]))),
        e(encode_body(&GroupToCluster::Processes(vec![(
            "n-1".into(),
            report,
        )]))),
        e(encode_body(&GroupToCluster::Register { listen: addr() })),
        e(encode_body(&ProvisionerToCluster::Register {
            http: "http://10.0.0.1:8080".into(),
        })),
    ]
}

/// Decode `input` as `T`: any answer but a panic will do.
fn decode_as<T: DeserializeOwned>(input: &[u8]) -> bool {
    decode_body::<T>(input).is_ok()
}

/// Every decoder a peer's bytes reach; how many accepted the input.
fn decode_all(input: &[u8]) -> usize {
    [
        decode_as::<Hello>(input),
        decode_as::<HelloReply>(input),
        decode_as::<Heartbeat>(input),
        decode_as::<EnrollRequest>(input),
        decode_as::<EnrollReply>(input),
        decode_as::<AgentToGroup>(input),
        decode_as::<GroupToAgent>(input),
        decode_as::<GroupToCluster>(input),
        decode_as::<ClusterToGroup>(input),
        decode_as::<ProvisionerToCluster>(input),
        decode_as::<ClusterToProvisioner>(input),
    ]
    .into_iter()
    .filter(|ok| *ok)
    .count()
}

fn inputs() -> usize {
    std::env::var("GLORY_FUZZ_INPUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
}

#[test]
fn message_decoders_survive_random_and_mutated_bodies() {
    let seeds = seeds();
    // The seeds themselves decode (else the mutations start from nothing).
    for s in &seeds {
        assert!(decode_all(s) > 0, "a seed does not decode: {s:02x?}");
    }
    let n = inputs() * 9 / 10;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut accepted = 0usize;
    for i in 0..n {
        let input = if i % 4 == 0 {
            let len = rng.below(512);
            rng.bytes(len)
        } else {
            let seed = &seeds[rng.below(seeds.len())];
            mutate(&mut rng, seed)
        };
        accepted += decode_all(&input);
    }
    // Most mutations are refused; some (a flipped bit in a number) still decode.
    assert!(
        accepted > 0 && accepted < n * 11,
        "{accepted} of {n} accepted"
    );
}

#[tokio::test]
async fn frame_streams_survive_garbage_and_lying_lengths() {
    let seeds = seeds();
    let n = inputs() / 10;
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    const MAX: usize = 64 * 1024;
    for _ in 0..n {
        // A stream of frames: some honest, some lying about their length, some junk.
        let mut stream = Vec::new();
        for _ in 0..1 + rng.below(4) {
            let seed = &seeds[rng.below(seeds.len())];
            let body = mutate(&mut rng, seed);
            let len = match rng.below(4) {
                0 => u32::MAX,
                1 => rng.next() as u32,
                _ => body.len() as u32,
            };
            stream.extend_from_slice(&len.to_be_bytes());
            stream.extend_from_slice(&body);
        }
        stream.truncate(stream.len() - rng.below(stream.len().min(8) + 1));
        let mut reader = stream.as_slice();
        for _ in 0..8 {
            match read_frame::<_, AgentToGroup>(&mut reader, MAX).await {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(FrameError::TooLarge { len, max }) => {
                    assert!(len > max, "refused a frame within the limit");
                    break;
                }
                Err(e) if e.is_skippable() => {}
                Err(_) => break,
            }
        }
    }
}
