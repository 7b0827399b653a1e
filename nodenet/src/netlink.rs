//! A synchronous `NETLINK_ROUTE` socket: one request at a time, matched to its
//! replies by sequence number, acknowledged (errors decoded into errno plus the
//! kernel's extended-ack text) or dumped until `NLMSG_DONE`.
//!
//! Synchronous on purpose: the CNI plugin is a short-lived binary that must start
//! fast and needs no async runtime.

use std::fmt::Display;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::Path;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_ACK_TLVS, NLM_F_CAPPED, NLM_F_CREATE, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_EXCL,
    NLM_F_REPLACE, NLM_F_REQUEST, NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload,
    NlasIterator,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use crate::error::{Error, Result};
use crate::netns::Netns;
use crate::{Address, IpFamily, Link, MacAddr, Neighbour, NetOps, Route, Rule, Veth};
use crate::{addr, link, neigh, route, rule};

/// How often a dump that the kernel marked inconsistent (`NLM_F_DUMP_INTR`, the
/// table changed under it) is retried before its last result is used.
const DUMP_ATTEMPTS: usize = 5;
/// `NLMSGERR_ATTR_MSG`: the extended-ack attribute holding the error text.
const NLMSGERR_ATTR_MSG: u16 = 1;
const NLMSG_HDRLEN: usize = 16;

/// One `NETLINK_ROUTE` socket, bound to the namespace it was opened in.
#[derive(Debug)]
pub struct Netlink {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
    netns: String,
}

impl Netlink {
    /// Deletes these links together: each joins link group `group` (which must hold no other
    /// link), then one request deletes the group, so that the kernel waits out its grace periods
    /// once for all of them rather than once per link (some 30 ms for each veth). A link already
    /// gone is skipped.
    pub fn delete_links_together(&mut self, indexes: &[u32], group: u32) -> Result<()> {
        let mut any = false;
        for &index in indexes {
            match self.ack("set group", &format!("link index {index} to group {group}"), link::set_group_request(index, group), 0) {
                Ok(()) => any = true,
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
        if !any {
            return Ok(());
        }
        match self.ack("delete", &format!("link group {group}"), link::delete_group_request(group), 0) {
            Err(e) if e.is_not_found() => Ok(()),
            other => other,
        }
    }

    /// Opens a socket in the calling thread's namespace.
    pub fn open() -> Result<Netlink> {
        Netlink::open_socket("current".to_owned())
    }

    /// Opens a socket inside the namespace at `netns_path` without moving the
    /// caller: a short-lived thread enters the namespace, opens the socket there and
    /// hands it back. The socket keeps working in that namespace.
    pub fn open_in(netns_path: impl AsRef<Path>) -> Result<Netlink> {
        Netlink::open_in_netns(&Netns::open(netns_path)?)
    }

    /// Like [`Netlink::open_in`], for a namespace that is already open.
    pub fn open_in_netns(netns: &Netns) -> Result<Netlink> {
        let label = netns.path().display().to_string();
        netns.run_in(move || Netlink::open_socket(label))?
    }

    fn open_socket(netns: String) -> Result<Netlink> {
        let fail = |what, source| Error::Socket {
            what,
            netns: netns.clone(),
            source,
        };
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(|e| fail("open", e))?;
        socket.bind_auto().map_err(|e| fail("bind", e))?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(|e| fail("connect", e))?;
        // Extended acks carry the kernel's reason ("Nexthop has invalid gateway");
        // capped acks keep error replies small. Old kernels lack both: not fatal.
        let _ = socket.set_ext_ack(true);
        let _ = socket.set_cap_ack(true);
        Ok(Netlink {
            socket,
            seq: 0,
            buf: vec![0; 32 * 1024],
            netns,
        })
    }

    /// The namespace this socket lives in, as given when it was opened.
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// Sends a request that changes something and waits for the kernel's ack.
    pub(crate) fn ack(
        &mut self,
        op: &'static str,
        object: &dyn Display,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<()> {
        self.execute(op, object, msg, flags | NLM_F_ACK, false)
            .map(drop)
    }

    /// Sends a request for one object and returns the kernel's answer.
    pub(crate) fn get(
        &mut self,
        op: &'static str,
        object: &dyn Display,
        msg: RouteNetlinkMessage,
    ) -> Result<RouteNetlinkMessage> {
        let reply = self.execute(op, object, msg, NLM_F_ACK, false)?;
        reply
            .messages
            .into_iter()
            .next()
            .ok_or_else(|| Error::Decode {
                op,
                object: object.to_string(),
                message: "the kernel acknowledged but sent no object".into(),
            })
    }

    /// Dumps a table (links, addresses, routes...), retrying when the kernel says
    /// the table changed during the dump.
    pub(crate) fn dump(
        &mut self,
        op: &'static str,
        object: &dyn Display,
        msg: RouteNetlinkMessage,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        let mut attempt = 1;
        loop {
            let reply = self.execute(op, object, msg.clone(), NLM_F_DUMP, true)?;
            if !reply.interrupted || attempt == DUMP_ATTEMPTS {
                if reply.interrupted {
                    tracing::warn!(op, %object, "netlink dump stayed inconsistent; using the last one");
                }
                return Ok(reply.messages);
            }
            attempt += 1;
        }
    }

    fn execute(
        &mut self,
        op: &'static str,
        object: &dyn Display,
        msg: RouteNetlinkMessage,
        flags: u16,
        is_dump: bool,
    ) -> Result<Reply> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let packet = encode(msg, flags, seq);
        self.socket
            .send(&packet, 0)
            .map_err(|e| self.socket_error("send", e))?;

        let mut reply = Reply::default();
        loop {
            let len = self.recv().map_err(|e| self.socket_error("receive", e))?;
            match parse_datagram(&self.buf[..len], seq, is_dump, &mut reply) {
                Ok(Step::More) => {}
                Ok(Step::Finished) => return Ok(reply),
                Err(Failure::Kernel { errno, detail }) => {
                    return Err(Error::Netlink {
                        op,
                        object: object.to_string(),
                        netns: self.netns.clone(),
                        detail,
                        source: io::Error::from_raw_os_error(errno),
                    });
                }
                Err(Failure::Decode(message)) => {
                    return Err(Error::Decode {
                        op,
                        object: object.to_string(),
                        message,
                    });
                }
            }
        }
    }

    /// Receives one datagram into `self.buf`, growing it to the datagram's size.
    fn recv(&mut self) -> io::Result<usize> {
        loop {
            let peeked = self
                .socket
                .recv(&mut &mut self.buf[..], libc::MSG_PEEK | libc::MSG_TRUNC);
            match peeked {
                Ok(size) if size > self.buf.len() => self.buf.resize(size, 0),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            match self.socket.recv(&mut &mut self.buf[..], 0) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }

    fn socket_error(&self, what: &'static str, source: io::Error) -> Error {
        Error::Socket {
            what,
            netns: self.netns.clone(),
            source,
        }
    }
}

#[derive(Debug, Default)]
struct Reply {
    messages: Vec<RouteNetlinkMessage>,
    interrupted: bool,
}

enum Step {
    More,
    Finished,
}

#[derive(Debug, PartialEq)]
enum Failure {
    Kernel { errno: i32, detail: Option<String> },
    Decode(String),
}

/// Serializes a request with its header: type from the payload, `NLM_F_REQUEST`
/// plus `flags`, and the sequence number the replies will carry.
fn encode(msg: RouteNetlinkMessage, flags: u16, seq: u32) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | flags;
    header.sequence_number = seq;
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
    packet.finalize();
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf);
    buf
}

/// Walks the netlink messages of one datagram, collecting those that answer
/// request `seq`. Messages of other sequence numbers (late replies to an earlier
/// request) are skipped.
fn parse_datagram(
    mut data: &[u8],
    seq: u32,
    is_dump: bool,
    reply: &mut Reply,
) -> Result<Step, Failure> {
    while !data.is_empty() {
        let buffer =
            NetlinkBuffer::new_checked(data).map_err(|e| Failure::Decode(e.to_string()))?;
        let len = buffer.length() as usize;
        let (this, rest) = data.split_at(len);
        data = rest.get(align(len).saturating_sub(len)..).unwrap_or(&[]);
        if buffer.sequence_number() != seq {
            continue;
        }
        if buffer.flags() & NLM_F_DUMP_INTR != 0 {
            reply.interrupted = true;
        }
        let message = match NetlinkMessage::<RouteNetlinkMessage>::deserialize(this) {
            Ok(m) => m,
            // One odd object must not fail a whole dump; a single answer must decode.
            Err(e) if is_dump => {
                tracing::warn!(error = %e, "skipping netlink message that does not decode");
                continue;
            }
            Err(e) => return Err(Failure::Decode(e.to_string())),
        };
        let flags = message.header.flags;
        match message.payload {
            NetlinkPayload::InnerMessage(inner) => reply.messages.push(inner),
            NetlinkPayload::Error(e) => {
                return match e.code {
                    None => Ok(Step::Finished),
                    Some(code) => Err(Failure::Kernel {
                        errno: code.get().abs(),
                        detail: ack_detail(flags, &e.header),
                    }),
                };
            }
            NetlinkPayload::Done(done) => {
                if done.code < 0 {
                    let detail = if flags & NLM_F_ACK_TLVS != 0 {
                        tlv_message(&done.extended_ack)
                    } else {
                        None
                    };
                    return Err(Failure::Kernel {
                        errno: done.code.abs(),
                        detail,
                    });
                }
                return Ok(Step::Finished);
            }
            NetlinkPayload::Overrun(_) => return Err(Failure::Decode("netlink overrun".into())),
            _ => {}
        }
    }
    Ok(Step::More)
}

/// The extended-ack text of an `NLMSG_ERROR`, whose payload after the errno is the
/// request's header (or whole request, when not capped) followed by TLVs.
fn ack_detail(flags: u16, payload: &[u8]) -> Option<String> {
    if flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
    let request_len = if flags & NLM_F_CAPPED != 0 {
        NLMSG_HDRLEN
    } else {
        let len = payload.get(..4)?;
        u32::from_ne_bytes(len.try_into().ok()?) as usize
    };
    tlv_message(payload.get(align(request_len)..)?)
}

fn tlv_message(tlvs: &[u8]) -> Option<String> {
    NlasIterator::new(tlvs)
        .filter_map(|nla| nla.ok())
        .find(|nla| nla.kind() == NLMSGERR_ATTR_MSG)
        .map(|nla| {
            let value = nla.value();
            let text = value.split(|b| *b == 0).next().unwrap_or(value);
            String::from_utf8_lossy(text).trim().to_owned()
        })
}

fn align(len: usize) -> usize {
    (len + 3) & !3
}

const CREATE_EXCL: u16 = NLM_F_CREATE | NLM_F_EXCL;
const CREATE_REPLACE: u16 = NLM_F_CREATE | NLM_F_REPLACE;

impl NetOps for Netlink {
    fn links(&mut self) -> Result<Vec<Link>> {
        let replies = self.dump("list", &"links", link::dump_request())?;
        Ok(replies.into_iter().filter_map(link::from_reply).collect())
    }

    fn link_by_name(&mut self, name: &str) -> Result<Link> {
        let object = format!("link {name}");
        let reply = self.get("get", &object, link::get_by_name_request(name)?)?;
        link::from_reply(reply).ok_or_else(|| unexpected("get", object))
    }

    fn link_by_index(&mut self, index: u32) -> Result<Link> {
        let object = format!("link index {index}");
        let reply = self.get("get", &object, link::get_by_index_request(index))?;
        link::from_reply(reply).ok_or_else(|| unexpected("get", object))
    }

    fn create_veth(&mut self, veth: &Veth<'_>) -> Result<Link> {
        self.ack(
            "create veth",
            veth,
            link::create_veth_request(veth)?,
            CREATE_EXCL,
        )?;
        self.link_by_name(&veth.name)
    }

    fn delete_link(&mut self, index: u32) -> Result<()> {
        self.ack(
            "delete",
            &format!("link index {index}"),
            link::delete_request(index),
            0,
        )
    }

    fn set_link_up(&mut self, index: u32) -> Result<()> {
        self.ack(
            "set up",
            &format!("link index {index}"),
            link::set_up_request(index, true),
            0,
        )
    }

    fn set_link_down(&mut self, index: u32) -> Result<()> {
        self.ack(
            "set down",
            &format!("link index {index}"),
            link::set_up_request(index, false),
            0,
        )
    }

    fn set_link_mac(&mut self, index: u32, mac: MacAddr) -> Result<()> {
        self.ack(
            "set mac",
            &format!("link index {index} to {mac}"),
            link::set_mac_request(index, mac),
            0,
        )
    }

    fn set_link_mtu(&mut self, index: u32, mtu: u32) -> Result<()> {
        self.ack(
            "set mtu",
            &format!("link index {index} to {mtu}"),
            link::set_mtu_request(index, mtu),
            0,
        )
    }

    fn rename_link(&mut self, index: u32, name: &str) -> Result<()> {
        self.ack(
            "rename",
            &format!("link index {index} to {name}"),
            link::rename_request(index, name)?,
            0,
        )
    }

    fn move_link(
        &mut self,
        index: u32,
        netns: BorrowedFd<'_>,
        new_name: Option<&str>,
    ) -> Result<()> {
        let object = format!("link index {index} to netns fd {}", netns.as_raw_fd());
        self.ack(
            "move",
            &object,
            link::move_request(index, netns, new_name)?,
            0,
        )
    }

    fn addresses(&mut self, index: Option<u32>) -> Result<Vec<Address>> {
        let mut out = Vec::new();
        for family in [IpFamily::V4, IpFamily::V6] {
            let replies = self.dump("list", &"addresses", addr::dump_request(family))?;
            out.extend(
                replies
                    .into_iter()
                    .filter_map(addr::from_reply)
                    .filter(|a| index.is_none_or(|i| a.index == i)),
            );
        }
        Ok(out)
    }

    fn add_address(&mut self, address: &Address) -> Result<()> {
        self.ack(
            "add address",
            address,
            addr::add_request(address),
            CREATE_EXCL,
        )
    }

    fn delete_address(&mut self, address: &Address) -> Result<()> {
        self.ack("delete address", address, addr::delete_request(address), 0)
    }

    fn routes(&mut self, table: Option<u32>) -> Result<Vec<Route>> {
        let mut out = Vec::new();
        for family in [IpFamily::V4, IpFamily::V6] {
            let replies = self.dump("list", &"routes", route::dump_request(family))?;
            out.extend(
                replies
                    .into_iter()
                    .filter_map(route::from_reply)
                    .filter(|r| table.is_none_or(|t| r.table == t)),
            );
        }
        Ok(out)
    }

    fn add_route(&mut self, route: &Route) -> Result<()> {
        self.ack("add route", route, route::add_request(route)?, CREATE_EXCL)
    }

    fn replace_route(&mut self, route: &Route) -> Result<()> {
        self.ack(
            "replace route",
            route,
            route::add_request(route)?,
            CREATE_REPLACE,
        )
    }

    fn delete_route(&mut self, route: &Route) -> Result<()> {
        self.ack("delete route", route, route::delete_request(route)?, 0)
    }

    fn rules(&mut self) -> Result<Vec<Rule>> {
        let mut out = Vec::new();
        for family in [IpFamily::V4, IpFamily::V6] {
            let replies = self.dump("list", &"rules", rule::dump_request(family))?;
            out.extend(replies.into_iter().filter_map(rule::from_reply));
        }
        Ok(out)
    }

    fn add_rule(&mut self, rule: &Rule) -> Result<()> {
        self.ack("add rule", rule, rule::add_request(rule)?, CREATE_EXCL)
    }

    fn delete_rule(&mut self, rule: &Rule) -> Result<()> {
        self.ack("delete rule", rule, rule::delete_request(rule)?, 0)
    }

    fn neighbours(&mut self, index: Option<u32>) -> Result<Vec<Neighbour>> {
        let mut out = Vec::new();
        for family in [IpFamily::V4, IpFamily::V6] {
            for proxy in [false, true] {
                let replies =
                    self.dump("list", &"neighbours", neigh::dump_request(family, proxy))?;
                out.extend(
                    replies
                        .into_iter()
                        .filter_map(neigh::from_reply)
                        .filter(|n| index.is_none_or(|i| n.index == i)),
                );
            }
        }
        Ok(out)
    }

    fn add_neighbour(&mut self, neighbour: &Neighbour) -> Result<()> {
        self.ack(
            "add neighbour",
            neighbour,
            neigh::add_request(neighbour),
            CREATE_EXCL,
        )
    }

    fn replace_neighbour(&mut self, neighbour: &Neighbour) -> Result<()> {
        self.ack(
            "replace neighbour",
            neighbour,
            neigh::add_request(neighbour),
            CREATE_REPLACE,
        )
    }

    fn delete_neighbour(&mut self, neighbour: &Neighbour) -> Result<()> {
        self.ack(
            "delete neighbour",
            neighbour,
            neigh::delete_request(neighbour),
            0,
        )
    }
}

fn unexpected(op: &'static str, object: String) -> Error {
    Error::Decode {
        op,
        object,
        message: "the kernel answered with another kind of message".into(),
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroI32;

    use netlink_packet_core::{DoneMessage, ErrorMessage, NLM_F_MULTIPART};
    use netlink_packet_route::link::{LinkAttribute, LinkMessage};

    use super::*;

    fn reply_bytes(payload: NetlinkPayload<RouteNetlinkMessage>, seq: u32, flags: u16) -> Vec<u8> {
        let mut header = NetlinkHeader::default();
        header.sequence_number = seq;
        header.flags = flags;
        let mut msg = NetlinkMessage::new(header, payload);
        msg.finalize();
        let mut buf = vec![0; msg.buffer_len()];
        msg.serialize(&mut buf);
        buf
    }

    fn link_reply(name: &str, index: u32, seq: u32) -> Vec<u8> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes.push(LinkAttribute::IfName(name.into()));
        reply_bytes(
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(msg)),
            seq,
            NLM_F_MULTIPART,
        )
    }

    fn error_payload(code: i32, header_and_tlvs: Vec<u8>) -> NetlinkPayload<RouteNetlinkMessage> {
        let mut e = ErrorMessage::default();
        e.code = NonZeroI32::new(code);
        e.header = header_and_tlvs;
        NetlinkPayload::Error(e)
    }

    #[test]
    fn request_header_carries_type_flags_and_sequence() {
        let bytes = encode(link::dump_request(), NLM_F_DUMP, 7);
        let buf = NetlinkBuffer::new_checked(&bytes[..]).unwrap();
        assert_eq!(buf.length() as usize, bytes.len());
        assert_eq!(buf.message_type(), 18); // RTM_GETLINK
        assert_eq!(buf.flags(), NLM_F_REQUEST | NLM_F_DUMP);
        assert_eq!(buf.sequence_number(), 7);
    }

    #[test]
    fn dump_collects_until_done_and_skips_other_sequences() {
        let mut datagram = link_reply("stale", 9, 41);
        datagram.extend(link_reply("lo", 1, 42));
        datagram.extend(link_reply("eth0", 2, 42));
        let mut reply = Reply::default();
        assert!(matches!(
            parse_datagram(&datagram, 42, true, &mut reply),
            Ok(Step::More)
        ));
        assert_eq!(reply.messages.len(), 2);

        let mut done = DoneMessage::default();
        done.code = 0;
        let end = reply_bytes(NetlinkPayload::Done(done), 42, NLM_F_MULTIPART);
        assert!(matches!(
            parse_datagram(&end, 42, true, &mut reply),
            Ok(Step::Finished)
        ));
        let names: Vec<_> = reply
            .messages
            .into_iter()
            .filter_map(link::from_reply)
            .map(|l| l.name)
            .collect();
        assert_eq!(names, ["lo", "eth0"]);
    }

    #[test]
    fn ack_finishes_and_error_gives_errno() {
        let mut reply = Reply::default();
        let ack = reply_bytes(error_payload(0, vec![0; NLMSG_HDRLEN]), 3, 0);
        assert!(matches!(
            parse_datagram(&ack, 3, false, &mut reply),
            Ok(Step::Finished)
        ));

        let nack = reply_bytes(error_payload(-libc::EEXIST, vec![0; NLMSG_HDRLEN]), 4, 0);
        let failure = parse_datagram(&nack, 4, false, &mut reply).err().unwrap();
        assert_eq!(
            failure,
            Failure::Kernel {
                errno: libc::EEXIST,
                detail: None
            }
        );
    }

    #[test]
    fn extended_ack_text_is_kept() {
        // Capped request header, then NLMSGERR_ATTR_MSG "Nexthop has invalid gateway\0".
        let text = b"Nexthop has invalid gateway\0";
        let mut payload = vec![0u8; NLMSG_HDRLEN];
        let nla_len = 4 + text.len();
        payload.extend((nla_len as u16).to_ne_bytes());
        payload.extend(NLMSGERR_ATTR_MSG.to_ne_bytes());
        payload.extend(text);
        payload.resize(NLMSG_HDRLEN + align(nla_len), 0);
        let nack = reply_bytes(
            error_payload(-libc::EINVAL, payload),
            5,
            NLM_F_CAPPED | NLM_F_ACK_TLVS,
        );
        let failure = parse_datagram(&nack, 5, false, &mut Reply::default())
            .err()
            .unwrap();
        assert_eq!(
            failure,
            Failure::Kernel {
                errno: libc::EINVAL,
                detail: Some("Nexthop has invalid gateway".into())
            }
        );
    }

    #[test]
    fn dump_error_in_done_is_an_error() {
        let mut done = DoneMessage::default();
        done.code = -libc::EOPNOTSUPP;
        let end = reply_bytes(NetlinkPayload::Done(done), 8, NLM_F_MULTIPART);
        let failure = parse_datagram(&end, 8, true, &mut Reply::default())
            .err()
            .unwrap();
        assert_eq!(
            failure,
            Failure::Kernel {
                errno: libc::EOPNOTSUPP,
                detail: None
            }
        );
    }

    #[test]
    fn interrupted_dump_is_flagged() {
        let mut reply = Reply::default();
        let mut datagram = link_reply("lo", 1, 2);
        let flags = NLM_F_MULTIPART | NLM_F_DUMP_INTR;
        datagram[6..8].copy_from_slice(&flags.to_ne_bytes());
        parse_datagram(&datagram, 2, true, &mut reply).ok().unwrap();
        assert!(reply.interrupted);
    }
}
