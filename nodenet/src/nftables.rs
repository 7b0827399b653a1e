//! A synchronous `NETLINK_NETFILTER` socket for the nftables work done on every pod start, pod
//! stop and metrics scrape: adding and removing set elements (one batch, so one transaction) and
//! reading named counters. Tables, chains and rules stay with nft(8), written once at start;
//! what this saves is the nft process (and its parsing of a whole script) on the hot paths.
//!
//! The messages are built by hand: a netlink header, the `nfgenmsg` header (family, version 0,
//! resource id big-endian) and attributes. A batch is `NFNL_MSG_BATCH_BEGIN`, the changes,
//! `NFNL_MSG_BATCH_END`; the kernel applies all of it or none and sends an error for each message
//! it refused. A `NFT_MSG_GETGEN` sent after the batch, with an ack asked, marks where the
//! answers to the batch end.

use std::collections::BTreeMap;
use std::io;
use std::net::IpAddr;

use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

use crate::error::{Error, Result};
use crate::netns::Netns;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFT_MSG_GETGEN: u16 = 16;
const NFT_MSG_NEWOBJ: u16 = 18;
const NFT_MSG_GETOBJ: u16 = 19;

const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_OBJ_TABLE: u16 = 1;
const NFTA_OBJ_NAME: u16 = 2;
const NFTA_OBJ_TYPE: u16 = 3;
const NFTA_OBJ_DATA: u16 = 4;
const NFT_OBJECT_COUNTER: u32 = 1;
const NFTA_COUNTER_BYTES: u16 = 1;
const NFTA_COUNTER_PACKETS: u16 = 2;

const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_CAPPED: u16 = 0x100;
const NLM_F_ACK_TLVS: u16 = 0x200;
const NLMSGERR_ATTR_MSG: u16 = 1;
const NLMSG_HDRLEN: usize = 16;
/// `IFNAMSIZ`: an interface name in a set key is this long, NUL-padded.
const IFNAMSIZ: usize = 16;

/// The family of an nftables table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Inet,
    Ipv4,
    Ipv6,
}

impl Family {
    fn code(self) -> u8 {
        match self {
            Family::Inet => 1,
            Family::Ipv4 => 2,
            Family::Ipv6 => 10,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Family::Inet => "inet",
            Family::Ipv4 => "ip",
            Family::Ipv6 => "ip6",
        }
    }
}

/// The key of a set element, built field by field as the set's type lists them (a concatenation
/// such as `ifname . ipv4_addr`); each field takes a multiple of four bytes, as the kernel's
/// registers do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetKey(Vec<u8>);

impl SetKey {
    pub fn new() -> SetKey {
        SetKey::default()
    }

    /// An `ifname` field: the name NUL-padded to 16 bytes. Longer names cannot be interfaces.
    pub fn ifname(mut self, name: &str) -> SetKey {
        let mut field = [0u8; IFNAMSIZ];
        let n = name.len().min(IFNAMSIZ - 1);
        field[..n].copy_from_slice(&name.as_bytes()[..n]);
        self.0.extend_from_slice(&field);
        self
    }

    /// An `ipv4_addr` or `ipv6_addr` field, in network order.
    pub fn ip(mut self, ip: IpAddr) -> SetKey {
        match ip {
            IpAddr::V4(a) => self.0.extend_from_slice(&a.octets()),
            IpAddr::V6(a) => self.0.extend_from_slice(&a.octets()),
        }
        self
    }

    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

/// One element of one set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    pub set: String,
    pub key: SetKey,
}

/// A named counter's value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

/// One `NETLINK_NETFILTER` socket, bound to the namespace it was opened in.
#[derive(Debug)]
pub struct Nftables {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
    netns: String,
}

impl Nftables {
    /// Opens a socket in the calling thread's namespace.
    pub fn open() -> Result<Nftables> {
        Nftables::open_socket("current".to_owned())
    }

    /// Opens a socket inside `netns` without moving the caller; it keeps working there.
    pub fn open_in_netns(netns: &Netns) -> Result<Nftables> {
        let label = netns.path().display().to_string();
        netns.run_in(move || Nftables::open_socket(label))?
    }

    fn open_socket(netns: String) -> Result<Nftables> {
        let fail = |what, source| Error::Socket { what, netns: netns.clone(), source };
        let mut socket = Socket::new(NETLINK_NETFILTER).map_err(|e| fail("open", e))?;
        socket.bind_auto().map_err(|e| fail("bind", e))?;
        socket.connect(&SocketAddr::new(0, 0)).map_err(|e| fail("connect", e))?;
        let _ = socket.set_ext_ack(true);
        let _ = socket.set_cap_ack(true);
        Ok(Nftables { socket, seq: 0, buf: vec![0; 64 * 1024], netns })
    }

    /// Adds the elements to their sets of `family table`, all or none. Elements already there
    /// are fine.
    pub fn add_elements(&mut self, family: Family, table: &str, elements: &[Element]) -> Result<()> {
        self.change_elements("add element", NFT_MSG_NEWSETELEM, NLM_F_CREATE, family, table, elements)
    }

    /// Removes the elements, all or none: one that is not there fails the whole batch with an
    /// error for which [`Error::is_not_found`] holds.
    pub fn delete_elements(&mut self, family: Family, table: &str, elements: &[Element]) -> Result<()> {
        self.change_elements("delete element", NFT_MSG_DELSETELEM, 0, family, table, elements)
    }

    fn change_elements(&mut self, op: &'static str, msg: u16, flags: u16, family: Family, table: &str, elements: &[Element]) -> Result<()> {
        if elements.is_empty() {
            return Ok(());
        }
        // One message per set, holding all of that set's elements.
        let mut by_set: BTreeMap<&str, Vec<&SetKey>> = BTreeMap::new();
        for e in elements {
            by_set.entry(e.set.as_str()).or_default().push(&e.key);
        }
        let object = format!("{} {table} {{{}}}", family.name(), by_set.keys().copied().collect::<Vec<_>>().join(", "));
        let mut batch = Vec::new();
        let first = self.next_seq();
        push_message(&mut batch, NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, first, 0, NFNL_SUBSYS_NFTABLES, &[]);
        for (set, keys) in &by_set {
            let mut attrs = Vec::new();
            put_str(&mut attrs, NFTA_SET_ELEM_LIST_TABLE, table);
            put_str(&mut attrs, NFTA_SET_ELEM_LIST_SET, set);
            let list = begin_nested(&mut attrs, NFTA_SET_ELEM_LIST_ELEMENTS);
            for key in keys {
                let elem = begin_nested(&mut attrs, NFTA_LIST_ELEM);
                let k = begin_nested(&mut attrs, NFTA_SET_ELEM_KEY);
                put(&mut attrs, NFTA_DATA_VALUE, key.bytes());
                end_nested(&mut attrs, k);
                end_nested(&mut attrs, elem);
            }
            end_nested(&mut attrs, list);
            let seq = self.next_seq();
            push_message(&mut batch, (NFNL_SUBSYS_NFTABLES << 8) | msg, NLM_F_REQUEST | flags, seq, family.code(), 0, &attrs);
        }
        let end = self.next_seq();
        push_message(&mut batch, NFNL_MSG_BATCH_END, NLM_F_REQUEST, end, 0, NFNL_SUBSYS_NFTABLES, &[]);
        self.send(&batch)?;
        // The fence: its ack comes after every answer to the batch.
        let fence = self.next_seq();
        let mut get = Vec::new();
        push_message(&mut get, (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN, NLM_F_REQUEST | NLM_F_ACK, fence, 0, 0, &[]);
        self.send(&get)?;
        // The first refusal says why; the kernel applied nothing of the batch then.
        let mut refused: Option<(i32, Option<String>)> = None;
        self.receive(|seq, reply| match reply {
            Reply::Error(errno, detail) if (first..=end).contains(&seq) && errno != 0 => {
                refused.get_or_insert((errno, detail));
                false
            }
            Reply::Error(errno, detail) if seq == fence => {
                if errno != 0 {
                    refused.get_or_insert((errno, detail));
                }
                true
            }
            _ => false,
        })?;
        match refused {
            Some((errno, detail)) => Err(self.error(op, object, errno, detail)),
            None => Ok(()),
        }
    }

    /// The named counters of `family table`, by name; empty when the table does not exist.
    pub fn counters(&mut self, family: Family, table: &str) -> Result<BTreeMap<String, Counter>> {
        let op = "list counters";
        let object = format!("{} {table}", family.name());
        let seq = self.next_seq();
        let mut attrs = Vec::new();
        put_str(&mut attrs, NFTA_OBJ_TABLE, table);
        put(&mut attrs, NFTA_OBJ_TYPE, &NFT_OBJECT_COUNTER.to_be_bytes());
        let mut msg = Vec::new();
        push_message(&mut msg, (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETOBJ, NLM_F_REQUEST | NLM_F_DUMP, seq, family.code(), 0, &attrs);
        self.send(&msg)?;
        let mut counters = BTreeMap::new();
        let mut failed: Option<(i32, Option<String>)> = None;
        self.receive(|rseq, reply| match reply {
            _ if rseq != seq => false,
            Reply::Object(ty, payload) => {
                if ty == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWOBJ
                    && let Some((t, name, c)) = decode_counter(payload)
                    && t == table
                {
                    counters.insert(name, c);
                }
                false
            }
            Reply::Done => true,
            Reply::Error(errno, detail) => {
                failed = (errno != 0).then_some((errno, detail));
                true
            }
        })?;
        match failed {
            // The table's absence is no counter at all.
            Some((libc::ENOENT, _)) => Ok(BTreeMap::new()),
            Some((errno, detail)) => Err(self.error(op, object, errno, detail)),
            None => Ok(counters),
        }
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    fn send(&mut self, bytes: &[u8]) -> Result<()> {
        self.socket.send(bytes, 0).map(drop).map_err(|source| Error::Socket { what: "send", netns: self.netns.clone(), source })
    }

    fn error(&self, op: &'static str, object: String, errno: i32, detail: Option<String>) -> Error {
        Error::Netlink { op, object, netns: self.netns.clone(), detail, source: io::Error::from_raw_os_error(errno) }
    }

    /// Reads answers and hands each message to `each` (its sequence number and what it is)
    /// until `each` says the exchange is over.
    fn receive(&mut self, mut each: impl FnMut(u32, Reply<'_>) -> bool) -> Result<()> {
        loop {
            let n = self.socket.recv(&mut &mut self.buf[..], 0).map_err(|source| Error::Socket { what: "receive", netns: self.netns.clone(), source })?;
            let mut at = 0;
            while at + NLMSG_HDRLEN <= n {
                let data = &self.buf[at..n];
                let len = u32::from_ne_bytes(data[0..4].try_into().expect("4 bytes")) as usize;
                if len < NLMSG_HDRLEN || len > data.len() {
                    break;
                }
                let ty = u16::from_ne_bytes(data[4..6].try_into().expect("2 bytes"));
                let flags = u16::from_ne_bytes(data[6..8].try_into().expect("2 bytes"));
                let seq = u32::from_ne_bytes(data[8..12].try_into().expect("4 bytes"));
                let body = &data[NLMSG_HDRLEN..len];
                let reply = match ty {
                    NLMSG_ERROR => decode_error(body, flags),
                    NLMSG_DONE => Reply::Done,
                    _ => Reply::Object(ty, body.get(4..).unwrap_or(&[])),
                };
                if each(seq, reply) {
                    return Ok(());
                }
                at += (len + 3) & !3;
            }
        }
    }
}

/// One message of an answer.
enum Reply<'a> {
    /// `NLMSG_ERROR`: an errno (0 for an ack) and the kernel's reason when it gave one.
    Error(i32, Option<String>),
    Done,
    /// Any other message: its type and its attributes (after the `nfgenmsg` header).
    Object(u16, &'a [u8]),
}

fn decode_error(body: &[u8], flags: u16) -> Reply<'static> {
    let Some(code) = body.get(0..4) else { return Reply::Error(libc::EPROTO, None) };
    let errno = -i32::from_ne_bytes(code.try_into().expect("4 bytes"));
    let mut detail = None;
    if flags & NLM_F_ACK_TLVS != 0 {
        // The request echoed back: its header only when capped, else all of it.
        let echoed = match flags & NLM_F_CAPPED {
            0 => body.get(4..8).map(|l| u32::from_ne_bytes(l.try_into().expect("4 bytes")) as usize).unwrap_or(NLMSG_HDRLEN),
            _ => NLMSG_HDRLEN,
        };
        for (ty, value) in attributes(body.get(4 + echoed..).unwrap_or(&[])) {
            if ty == NLMSGERR_ATTR_MSG {
                detail = Some(String::from_utf8_lossy(value).trim_end_matches('\0').to_owned());
            }
        }
    }
    Reply::Error(errno, detail)
}

fn decode_counter(attrs: &[u8]) -> Option<(String, String, Counter)> {
    let (mut table, mut name, mut counter) = (None, None, None);
    for (ty, value) in attributes(attrs) {
        match ty {
            NFTA_OBJ_TABLE => table = Some(c_string(value)),
            NFTA_OBJ_NAME => name = Some(c_string(value)),
            NFTA_OBJ_TYPE if value.len() == 4 && u32::from_be_bytes(value.try_into().ok()?) != NFT_OBJECT_COUNTER => return None,
            NFTA_OBJ_DATA => {
                let mut c = Counter::default();
                for (t, v) in attributes(value) {
                    let n = v.try_into().ok().map(u64::from_be_bytes);
                    match (t, n) {
                        (NFTA_COUNTER_BYTES, Some(n)) => c.bytes = n,
                        (NFTA_COUNTER_PACKETS, Some(n)) => c.packets = n,
                        _ => {}
                    }
                }
                counter = Some(c);
            }
            _ => {}
        }
    }
    Some((table?, name?, counter?))
}

fn c_string(v: &[u8]) -> String {
    String::from_utf8_lossy(v).trim_end_matches('\0').to_owned()
}

/// The attributes in `buf`: (type without flags, value).
fn attributes(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        let ty = u16::from_ne_bytes([buf[2], buf[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > buf.len() {
            return None;
        }
        let value = &buf[4..len];
        buf = &buf[((len + 3) & !3).min(buf.len())..];
        Some((ty, value))
    })
}

/// Appends one message: netlink header, `nfgenmsg`, attributes.
fn push_message(out: &mut Vec<u8>, ty: u16, flags: u16, seq: u32, family: u8, res_id: u16, attrs: &[u8]) {
    let len = NLMSG_HDRLEN + 4 + attrs.len();
    out.extend_from_slice(&(len as u32).to_ne_bytes());
    out.extend_from_slice(&ty.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.extend_from_slice(&[family, 0]);
    out.extend_from_slice(&res_id.to_be_bytes());
    out.extend_from_slice(attrs);
    out.resize((out.len() + 3) & !3, 0);
}

fn put(out: &mut Vec<u8>, ty: u16, value: &[u8]) {
    out.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
    out.extend_from_slice(&ty.to_ne_bytes());
    out.extend_from_slice(value);
    out.resize((out.len() + 3) & !3, 0);
}

fn put_str(out: &mut Vec<u8>, ty: u16, value: &str) {
    let mut v = value.as_bytes().to_vec();
    v.push(0);
    put(out, ty, &v);
}

fn begin_nested(out: &mut Vec<u8>, ty: u16) -> usize {
    let at = out.len();
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
    at
}

fn end_nested(out: &mut [u8], at: usize) {
    let len = (out.len() - at) as u16;
    out[at..at + 2].copy_from_slice(&len.to_ne_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_concatenated_fields_of_register_size() {
        let k = SetKey::new().ifname("bth1").ip("10.0.0.7".parse().unwrap());
        assert_eq!(k.bytes().len(), 20);
        assert_eq!(&k.bytes()[..5], b"bth1\0");
        assert_eq!(&k.bytes()[16..], &[10, 0, 0, 7]);
        let v6 = SetKey::new().ifname("eth0").ip("fd00::7".parse().unwrap());
        assert_eq!(v6.bytes().len(), 32);
        let long = SetKey::new().ifname("a-name-longer-than-sixteen");
        assert_eq!(long.bytes().len(), 16);
        assert_eq!(long.bytes()[15], 0, "always NUL-terminated");
    }

    #[test]
    fn nested_attributes_carry_their_length_and_decode_back() {
        let mut attrs = Vec::new();
        put_str(&mut attrs, NFTA_OBJ_TABLE, "berth_pods");
        put_str(&mut attrs, NFTA_OBJ_NAME, "spoofed_source");
        put(&mut attrs, NFTA_OBJ_TYPE, &NFT_OBJECT_COUNTER.to_be_bytes());
        let data = begin_nested(&mut attrs, NFTA_OBJ_DATA);
        put(&mut attrs, NFTA_COUNTER_BYTES, &300u64.to_be_bytes());
        put(&mut attrs, NFTA_COUNTER_PACKETS, &5u64.to_be_bytes());
        end_nested(&mut attrs, data);
        assert_eq!(attrs.len() % 4, 0);
        let (table, name, c) = decode_counter(&attrs).unwrap();
        assert_eq!((table.as_str(), name.as_str(), c), ("berth_pods", "spoofed_source", Counter { packets: 5, bytes: 300 }));
        let mut quota = attrs.clone();
        let ty_at = attributes(&attrs).take(2).map(|(_, v)| 4 + ((v.len() + 3) & !3)).sum::<usize>();
        quota[ty_at + 4..ty_at + 8].copy_from_slice(&2u32.to_be_bytes());
        assert!(decode_counter(&quota).is_none(), "only counters are counters");
    }

    #[test]
    fn messages_are_padded_and_sized() {
        let mut out = Vec::new();
        let mut attrs = Vec::new();
        put_str(&mut attrs, NFTA_SET_ELEM_LIST_TABLE, "t");
        push_message(&mut out, (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWSETELEM, NLM_F_REQUEST, 7, 1, 0, &attrs);
        assert_eq!(out.len(), 16 + 4 + 8);
        assert_eq!(u32::from_ne_bytes(out[0..4].try_into().unwrap()) as usize, out.len());
        assert_eq!(u16::from_ne_bytes(out[4..6].try_into().unwrap()), 0x0a0c);
        assert_eq!(out[16], 1, "the inet family");
    }
}
