//! The step language of the stateful node targets.
//!
//! An input is a sequence of steps; each starts with a tag byte taken modulo the number of step
//! kinds, so every byte string decodes to some program and the fuzzer never wastes runs on
//! "invalid" inputs. [`Op::encode`] is the exact inverse of [`Op::decode`] for the values it
//! produces, which is what lets the corpus generator write meaningful seeds.

use crate::{put_long, put_short, Reader};

/// Which packet number a sealed frame gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PnChoice {
    /// The peer's next packet number (the common case: a well-behaved sender).
    Next,
    /// Skips ahead by this many (lost frames, or a sender that rebooted onto a new lease).
    Skip(u16),
    /// This many below the peer's next one: a replay or a late, reordered frame.
    Old(u8),
}

/// Something the application does to the node under test between datagrams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppOp {
    /// `publish(topic, payload)`.
    Publish { topic: String, payload: Vec<u8> },
    /// `publish_reliable(now, topic, payload, ttl)`; a `ttl_ms` of 0 means none.
    PublishReliable { topic: String, payload: Vec<u8>, ttl_ms: u16 },
    /// `subscribe(filter)`.
    Subscribe(String),
    /// `unsubscribe` of the `n`-th subscription made so far (modulo their number).
    Unsubscribe(u8),
    /// `call(now, peer, method, payload, timeout)`.
    Call { peer: u8, method: String, payload: Vec<u8>, timeout_ms: u16 },
    /// `respond` to the oldest request not answered yet.
    Respond { ok: bool, payload: Vec<u8> },
    /// `serve(method)`.
    Serve(String),
    /// `close()`.
    Close,
}

/// One step of a node target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// A frame sealed by fixed peer `peer % 2` under the network key, carrying `body` as its
    /// plaintext records, delivered `dt_ms` after the previous step.
    Frame { peer: u8, pn: PnChoice, dt_ms: u8, body: Vec<u8> },
    /// Time passes; every timer that falls due fires, in order.
    Wait { ms: u16 },
    /// An application command.
    App(AppOp),
    /// Bytes handed to the node as they are (mostly refused before or at the AEAD).
    Raw(Vec<u8>),
    /// A frame from `peer` that answers the node's latest freshness challenge to it with an Echo
    /// (the nonce is taken from what the node sent, which the fuzzer cannot guess), then `body`.
    Echo { peer: u8, floor: u64, body: Vec<u8> },
    /// The last frame delivered, delivered again byte for byte.
    Replay,
}

const OPS: u8 = 6;
const APP_OPS: u8 = 8;

fn string(r: &mut Reader<'_>) -> String {
    String::from_utf8_lossy(r.short()).into_owned()
}

impl Op {
    /// Decodes the next step; `None` once the input is used up.
    pub fn decode(r: &mut Reader<'_>) -> Option<Op> {
        if r.is_empty() {
            return None;
        }
        Some(match r.u8() % OPS {
            0 => {
                let peer = r.u8() % 2;
                let pn = match r.u8() % 3 {
                    0 => PnChoice::Next,
                    1 => PnChoice::Skip(r.u16()),
                    _ => PnChoice::Old(r.u8()),
                };
                let dt_ms = r.u8();
                Op::Frame { peer, pn, dt_ms, body: r.long().to_vec() }
            }
            1 => Op::Wait { ms: r.u16() },
            2 => Op::App(match r.u8() % APP_OPS {
                0 => AppOp::Publish { topic: string(r), payload: r.long().to_vec() },
                1 => AppOp::PublishReliable { topic: string(r), payload: r.long().to_vec(), ttl_ms: r.u16() },
                2 => AppOp::Subscribe(string(r)),
                3 => AppOp::Unsubscribe(r.u8()),
                4 => {
                    AppOp::Call { peer: r.u8() % 2, method: string(r), payload: r.long().to_vec(), timeout_ms: r.u16() }
                }
                5 => AppOp::Respond { ok: r.u8() & 1 == 0, payload: r.long().to_vec() },
                6 => AppOp::Serve(string(r)),
                _ => AppOp::Close,
            }),
            3 => Op::Raw(r.long().to_vec()),
            4 => Op::Echo { peer: r.u8() % 2, floor: r.u64(), body: r.long().to_vec() },
            _ => Op::Replay,
        })
    }

    /// Decodes a whole input.
    pub fn decode_all(data: &[u8]) -> Vec<Op> {
        let mut r = Reader::new(data);
        core::iter::from_fn(|| Op::decode(&mut r)).collect()
    }

    /// Appends the step's encoding, which [`decode`](Self::decode) reads back as the same step.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Op::Frame { peer, pn, dt_ms, body } => {
                out.extend_from_slice(&[0, *peer]);
                match pn {
                    PnChoice::Next => out.push(0),
                    PnChoice::Skip(n) => {
                        out.push(1);
                        out.extend_from_slice(&n.to_le_bytes());
                    }
                    PnChoice::Old(n) => out.extend_from_slice(&[2, *n]),
                }
                out.push(*dt_ms);
                put_long(out, body);
            }
            Op::Wait { ms } => {
                out.push(1);
                out.extend_from_slice(&ms.to_le_bytes());
            }
            Op::App(app) => {
                out.push(2);
                match app {
                    AppOp::Publish { topic, payload } => {
                        out.push(0);
                        put_short(out, topic.as_bytes());
                        put_long(out, payload);
                    }
                    AppOp::PublishReliable { topic, payload, ttl_ms } => {
                        out.push(1);
                        put_short(out, topic.as_bytes());
                        put_long(out, payload);
                        out.extend_from_slice(&ttl_ms.to_le_bytes());
                    }
                    AppOp::Subscribe(filter) => {
                        out.push(2);
                        put_short(out, filter.as_bytes());
                    }
                    AppOp::Unsubscribe(n) => out.extend_from_slice(&[3, *n]),
                    AppOp::Call { peer, method, payload, timeout_ms } => {
                        out.extend_from_slice(&[4, *peer]);
                        put_short(out, method.as_bytes());
                        put_long(out, payload);
                        out.extend_from_slice(&timeout_ms.to_le_bytes());
                    }
                    AppOp::Respond { ok, payload } => {
                        out.extend_from_slice(&[5, u8::from(!ok)]);
                        put_long(out, payload);
                    }
                    AppOp::Serve(method) => {
                        out.push(6);
                        put_short(out, method.as_bytes());
                    }
                    AppOp::Close => out.push(7),
                }
            }
            Op::Raw(bytes) => {
                out.push(3);
                put_long(out, bytes);
            }
            Op::Echo { peer, floor, body } => {
                out.extend_from_slice(&[4, *peer]);
                out.extend_from_slice(&floor.to_le_bytes());
                put_long(out, body);
            }
            Op::Replay => out.push(5),
        }
    }

    /// Encodes a whole program.
    pub fn encode_all(ops: &[Op]) -> Vec<u8> {
        let mut out = Vec::new();
        for op in ops {
            op.encode(&mut out);
        }
        out
    }
}
