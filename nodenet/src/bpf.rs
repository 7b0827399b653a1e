//! eBPF for tc, without a C compiler: a small assembler for the instructions the datapath
//! needs, the loader (`bpf(BPF_PROG_LOAD)` as a `SCHED_CLS` program, the verifier's log kept
//! for the error), and the VLAN programs Berth's trunk mode runs where the kernel has no 8021q.
//!
//! Programs run in tc's direct-action mode: their return value is the verdict.

use std::ffi::CString;
use std::fmt;
use std::os::fd::{FromRawFd as _, OwnedFd};

use crate::MacAddr;

/// Registers. `R1`–`R5` are helper arguments (clobbered by calls), `R0` the return value,
/// `R6`–`R9` survive calls, `R10` the read-only frame pointer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reg(u8);

pub const R0: Reg = Reg(0);
pub const R1: Reg = Reg(1);
pub const R2: Reg = Reg(2);
pub const R3: Reg = Reg(3);
pub const R4: Reg = Reg(4);
pub const R5: Reg = Reg(5);
pub const R6: Reg = Reg(6);
pub const R7: Reg = Reg(7);
pub const R10: Reg = Reg(10);

/// One encoded instruction (`struct bpf_insn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    pub code: u8,
    pub dst: u8,
    pub src: u8,
    pub off: i16,
    pub imm: i32,
}

impl Insn {
    fn encode(&self) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[0] = self.code;
        b[1] = (self.dst & 0x0f) | (self.src << 4);
        b[2..4].copy_from_slice(&self.off.to_le_bytes());
        b[4..8].copy_from_slice(&self.imm.to_le_bytes());
        b
    }
}

// Instruction classes, sizes, modes and operations (linux/bpf_common.h, linux/bpf.h).
const CLASS_LDX: u8 = 0x01;
const CLASS_ST: u8 = 0x02;
const CLASS_STX: u8 = 0x03;
const CLASS_JMP: u8 = 0x05;
const CLASS_JMP32: u8 = 0x06;
const CLASS_ALU64: u8 = 0x07;
const SIZE_W: u8 = 0x00;
const SIZE_H: u8 = 0x08;
const SIZE_B: u8 = 0x10;
const MODE_MEM: u8 = 0x60;
const SRC_K: u8 = 0x00;
const SRC_X: u8 = 0x08;
const OP_ADD: u8 = 0x00;
const OP_AND: u8 = 0x50;
const OP_MOV: u8 = 0xb0;
const OP_JA: u8 = 0x00;
const OP_JEQ: u8 = 0x10;
const OP_JNE: u8 = 0x50;
const OP_CALL: u8 = 0x80;
const OP_EXIT: u8 = 0x90;

/// Kernel helpers the programs call (their numbers in `enum bpf_func_id`).
pub mod helper {
    pub const SKB_STORE_BYTES: i32 = 9;
    pub const SKB_VLAN_PUSH: i32 = 18;
    pub const SKB_VLAN_POP: i32 = 19;
    pub const REDIRECT: i32 = 23;
    pub const SKB_LOAD_BYTES: i32 = 26;
    pub const SKB_CHANGE_TYPE: i32 = 32;
}

/// Offsets in `struct __sk_buff`, the context of a tc program.
pub mod skb {
    pub const PKT_TYPE: i16 = 4;
    pub const MARK: i16 = 8;
    pub const PROTOCOL: i16 = 16;
    pub const VLAN_PRESENT: i16 = 20;
    pub const VLAN_TCI: i16 = 24;
}

/// tc verdicts of a direct-action program.
pub mod verdict {
    pub const OK: i32 = 0;
    pub const SHOT: i32 = 2;
}

/// Memory access sizes.
#[derive(Debug, Clone, Copy)]
pub enum Size {
    Byte,
    Half,
    Word,
}

impl Size {
    fn bits(self) -> u8 {
        match self {
            Size::Byte => SIZE_B,
            Size::Half => SIZE_H,
            Size::Word => SIZE_W,
        }
    }
}

/// A program under construction, with named labels resolved by [`Asm::finish`].
#[derive(Debug, Default)]
pub struct Asm {
    insns: Vec<Insn>,
    /// (instruction index, label) of jumps still to patch.
    fixups: Vec<(usize, &'static str)>,
    labels: Vec<(&'static str, usize)>,
}

/// A jump to a label that was never placed, or placed twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AsmError(pub String);

impl fmt::Display for AsmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for AsmError {}

impl Asm {
    pub fn new() -> Asm {
        Asm::default()
    }

    fn push(&mut self, code: u8, dst: Reg, src: Reg, off: i16, imm: i32) -> &mut Asm {
        self.insns.push(Insn { code, dst: dst.0, src: src.0, off, imm });
        self
    }

    /// `dst = imm` (64-bit, sign-extended).
    pub fn mov_imm(&mut self, dst: Reg, imm: i32) -> &mut Asm {
        self.push(CLASS_ALU64 | OP_MOV | SRC_K, dst, R0, 0, imm)
    }

    /// `dst = src`.
    pub fn mov(&mut self, dst: Reg, src: Reg) -> &mut Asm {
        self.push(CLASS_ALU64 | OP_MOV | SRC_X, dst, src, 0, 0)
    }

    /// `dst += imm`.
    pub fn add_imm(&mut self, dst: Reg, imm: i32) -> &mut Asm {
        self.push(CLASS_ALU64 | OP_ADD | SRC_K, dst, R0, 0, imm)
    }

    /// `dst &= imm`.
    pub fn and_imm(&mut self, dst: Reg, imm: i32) -> &mut Asm {
        self.push(CLASS_ALU64 | OP_AND | SRC_K, dst, R0, 0, imm)
    }

    /// `dst = *(size *)(src + off)`, zero-extended.
    pub fn load(&mut self, size: Size, dst: Reg, src: Reg, off: i16) -> &mut Asm {
        self.push(CLASS_LDX | MODE_MEM | size.bits(), dst, src, off, 0)
    }

    /// `*(size *)(dst + off) = src`.
    pub fn store(&mut self, size: Size, dst: Reg, off: i16, src: Reg) -> &mut Asm {
        self.push(CLASS_STX | MODE_MEM | size.bits(), dst, src, off, 0)
    }

    /// `*(size *)(dst + off) = imm`.
    pub fn store_imm(&mut self, size: Size, dst: Reg, off: i16, imm: i32) -> &mut Asm {
        self.push(CLASS_ST | MODE_MEM | size.bits(), dst, R0, off, imm)
    }

    /// Writes `bytes` to the stack at `r10 + off` (`off` negative), a byte at a time.
    pub fn store_bytes_on_stack(&mut self, off: i16, bytes: &[u8]) -> &mut Asm {
        for (i, b) in bytes.iter().enumerate() {
            self.store_imm(Size::Byte, R10, off + i as i16, i32::from(*b));
        }
        self
    }

    /// Calls a kernel helper.
    pub fn call(&mut self, helper: i32) -> &mut Asm {
        self.push(CLASS_JMP | OP_CALL, R0, R0, 0, helper)
    }

    pub fn exit(&mut self) -> &mut Asm {
        self.push(CLASS_JMP | OP_EXIT, R0, R0, 0, 0)
    }

    /// `r0 = verdict; exit`.
    pub fn ret(&mut self, verdict: i32) -> &mut Asm {
        self.mov_imm(R0, verdict).exit()
    }

    fn jump(&mut self, code: u8, dst: Reg, imm: i32, label: &'static str) -> &mut Asm {
        self.fixups.push((self.insns.len(), label));
        self.push(code, dst, R0, 0, imm)
    }

    /// `goto label`.
    pub fn ja(&mut self, label: &'static str) -> &mut Asm {
        self.jump(CLASS_JMP | OP_JA, R0, 0, label)
    }

    /// `if (u32)dst == imm goto label` (32-bit compare: no sign extension surprises).
    pub fn jeq32(&mut self, dst: Reg, imm: u32, label: &'static str) -> &mut Asm {
        self.jump(CLASS_JMP32 | OP_JEQ | SRC_K, dst, imm as i32, label)
    }

    /// `if (u32)dst != imm goto label`.
    pub fn jne32(&mut self, dst: Reg, imm: u32, label: &'static str) -> &mut Asm {
        self.jump(CLASS_JMP32 | OP_JNE | SRC_K, dst, imm as i32, label)
    }

    /// Places `label` at the next instruction.
    pub fn label(&mut self, label: &'static str) -> &mut Asm {
        self.labels.push((label, self.insns.len()));
        self
    }

    /// The instructions with every jump resolved.
    pub fn finish(mut self) -> Result<Vec<Insn>, AsmError> {
        for (i, (name, _)) in self.labels.iter().enumerate() {
            if self.labels[..i].iter().any(|(n, _)| n == name) {
                return Err(AsmError(format!("label {name} placed twice")));
            }
        }
        for (at, name) in &self.fixups {
            let target = self.labels.iter().find(|(n, _)| n == name).map(|(_, t)| *t).ok_or_else(|| AsmError(format!("jump to label {name}, which is never placed")))?;
            let off = target as i64 - (*at as i64 + 1);
            self.insns[*at].off = i16::try_from(off).map_err(|_| AsmError(format!("jump to {name} is too far")))?;
        }
        Ok(self.insns)
    }
}

/// A failed load: the kernel's errno and the verifier's log, which says which instruction it refused.
#[derive(Debug)]
pub struct LoadError {
    pub name: String,
    pub source: std::io::Error,
    pub log: String,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the kernel refused the BPF program {}: {}", self.name, self.source)?;
        if !self.log.is_empty() {
            write!(f, "; verifier: {}", self.log.trim())?;
        }
        if self.source.raw_os_error() == Some(libc::EPERM) {
            f.write_str(" (loading needs CAP_BPF or CAP_SYS_ADMIN)")?;
        }
        Ok(())
    }
}

impl std::error::Error for LoadError {}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;

/// `union bpf_attr` as `BPF_PROG_LOAD` reads it (the fields up to `expected_attach_type`).
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// Loads a tc (`SCHED_CLS`) program; the returned fd keeps it alive until a filter holds it.
/// `name` is shown by tools (at most 15 bytes are kept).
pub fn load_tc_program(name: &str, insns: &[Insn]) -> Result<OwnedFd, LoadError> {
    let code: Vec<u8> = insns.iter().flat_map(Insn::encode).collect();
    let license = CString::new("Apache-2.0").expect("no NUL");
    let mut log = vec![0u8; 64 * 1024];
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_SCHED_CLS,
        insn_cnt: insns.len() as u32,
        insns: code.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        ..Default::default()
    };
    for (i, b) in name.bytes().filter(|b| b.is_ascii_alphanumeric() || *b == b'_').take(15).enumerate() {
        attr.prog_name[i] = b;
    }
    // SAFETY: `attr` is a properly laid out `bpf_attr` prefix whose pointers (code, license,
    // log) stay alive for the duration of the call; the size passed is the struct's own.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_LOAD, &mut attr as *mut ProgLoadAttr, std::mem::size_of::<ProgLoadAttr>()) };
    if fd < 0 {
        let source = std::io::Error::last_os_error();
        let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
        let text = String::from_utf8_lossy(&log[..end]);
        // The end of the log is where the verifier stopped.
        let tail: Vec<&str> = text.lines().rev().take(6).collect();
        let log = tail.into_iter().rev().collect::<Vec<_>>().join(" | ");
        return Err(LoadError { name: name.to_string(), source, log });
    }
    // SAFETY: a non-negative return of BPF_PROG_LOAD is a new file descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// A program that sends every packet to the egress of another link (e.g. an `ifb` that shapes
/// what this link receives).
pub fn redirect_program(ifindex: u32) -> Result<Vec<Insn>, AsmError> {
    let mut a = Asm::new();
    a.mov_imm(R1, ifindex as i32).mov_imm(R2, 0).call(helper::REDIRECT).exit();
    a.finish()
}

/// The VLAN programs of trunk mode. Tags are 802.1Q (`0x8100`); the tag travels as the skb's
/// VLAN metadata, as with a NIC's VLAN offload, and is put on the wire by the device that needs it.
pub mod vlan {
    use super::*;

    /// `htons(0x8100)` as a helper argument.
    const PROTO_8021Q_BE: i32 = 0x0081;
    /// `htons(ETH_P_IP)` and `htons(ETH_P_IPV6)` as `__sk_buff.protocol` reads on little endian.
    const PROTO_IPV4_BE: u32 = 0x0008;
    const PROTO_IPV6_BE: u32 = 0xdd86;
    /// `PACKET_HOST`.
    const PACKET_HOST: i32 = 0;

    /// For the host side of a trunk pod's veth (tc ingress = what the pod sends): IP frames get
    /// the member ENI's MAC as source and the VPC gateway's as destination, the member's VLAN tag,
    /// and leave by the trunk NIC (`trunk_ifindex`); anything else is dropped.
    pub fn member_egress(vlan_id: u16, trunk_ifindex: u32, member_mac: MacAddr, gateway_mac: MacAddr) -> Result<Vec<Insn>, AsmError> {
        let mut a = Asm::new();
        a.mov(R6, R1)
            .load(Size::Word, R2, R6, skb::PROTOCOL)
            .jeq32(R2, PROTO_IPV4_BE, "ip")
            .jeq32(R2, PROTO_IPV6_BE, "ip")
            .ret(verdict::SHOT)
            .label("ip");
        // Ethernet header: destination then source, 12 bytes at the frame's start.
        let mut macs = [0u8; 12];
        macs[..6].copy_from_slice(&gateway_mac.0);
        macs[6..].copy_from_slice(&member_mac.0);
        a.store_bytes_on_stack(-16, &macs)
            .mov(R1, R6)
            .mov_imm(R2, 0)
            .mov(R3, R10)
            .add_imm(R3, -16)
            .mov_imm(R4, 12)
            .mov_imm(R5, 0)
            .call(helper::SKB_STORE_BYTES)
            .jne32(R0, 0, "drop")
            .mov(R1, R6)
            .mov_imm(R2, PROTO_8021Q_BE)
            .mov_imm(R3, i32::from(vlan_id & 0x0fff))
            .call(helper::SKB_VLAN_PUSH)
            .jne32(R0, 0, "drop")
            .mov_imm(R1, trunk_ifindex as i32)
            .mov_imm(R2, 0)
            .call(helper::REDIRECT)
            .exit()
            .label("drop")
            .ret(verdict::SHOT);
        a.finish()
    }

    /// For a node's trunk NIC (tc ingress): a tagged frame loses its tag and is taken as addressed
    /// to this host (its destination is the member's MAC, not the trunk NIC's), so the node routes
    /// it to the member's pod; untagged frames pass as they are.
    pub fn trunk_ingress() -> Result<Vec<Insn>, AsmError> {
        let mut a = Asm::new();
        a.mov(R6, R1)
            .load(Size::Word, R2, R6, skb::VLAN_PRESENT)
            .jeq32(R2, 0, "pass")
            .mov(R1, R6)
            .call(helper::SKB_VLAN_POP)
            .jne32(R0, 0, "drop")
            .mov(R1, R6)
            .mov_imm(R2, PACKET_HOST)
            .call(helper::SKB_CHANGE_TYPE)
            .label("pass")
            .ret(verdict::OK)
            .label("drop")
            .ret(verdict::SHOT);
        a.finish()
    }

    /// For the vRouter's port of a trunk ENI (tc ingress): a tagged frame loses its tag and carries
    /// its VLAN ID as the packet mark, so the vRouter's filters can tell members apart; untagged
    /// frames keep mark 0.
    pub fn port_ingress() -> Result<Vec<Insn>, AsmError> {
        let mut a = Asm::new();
        a.mov(R6, R1)
            .store_imm(Size::Word, R6, skb::MARK, 0)
            .load(Size::Word, R2, R6, skb::VLAN_PRESENT)
            .jeq32(R2, 0, "pass")
            .load(Size::Word, R7, R6, skb::VLAN_TCI)
            .and_imm(R7, 0x0fff)
            .mov(R1, R6)
            .call(helper::SKB_VLAN_POP)
            .jne32(R0, 0, "drop")
            .store(Size::Word, R6, skb::MARK, R7)
            .label("pass")
            .ret(verdict::OK)
            .label("drop")
            .ret(verdict::SHOT);
        a.finish()
    }

    /// For the vRouter's port of a trunk ENI (tc egress): a frame to a member's MAC gets that
    /// member's VLAN tag; frames to the trunk ENI itself stay untagged.
    pub fn port_egress(members: &[(MacAddr, u16)]) -> Result<Vec<Insn>, AsmError> {
        let mut a = Asm::new();
        if members.is_empty() {
            // Nothing to tag (and the verifier refuses code no path reaches).
            a.ret(verdict::OK);
            return a.finish();
        }
        a.mov(R6, R1)
            .mov(R1, R6)
            .mov_imm(R2, 0)
            .mov(R3, R10)
            .add_imm(R3, -8)
            .mov_imm(R4, 6)
            .call(helper::SKB_LOAD_BYTES)
            .jne32(R0, 0, "pass")
            .load(Size::Word, R2, R10, -8)
            .load(Size::Half, R3, R10, -4);
        for (mac, vlan) in members {
            let head = u32::from_le_bytes([mac.0[0], mac.0[1], mac.0[2], mac.0[3]]);
            let tail = u32::from(u16::from_le_bytes([mac.0[4], mac.0[5]]));
            // Skip this member unless both halves match.
            a.jne32(R2, head, "next")
                .jne32(R3, tail, "next")
                .mov(R1, R6)
                .mov_imm(R2, PROTO_8021Q_BE)
                .mov_imm(R3, i32::from(vlan & 0x0fff))
                .call(helper::SKB_VLAN_PUSH)
                .jne32(R0, 0, "drop")
                .ret(verdict::OK)
                .label("next")
                .rescope("next");
            a.load(Size::Word, R2, R10, -8).load(Size::Half, R3, R10, -4);
        }
        a.label("pass").ret(verdict::OK).label("drop").ret(verdict::SHOT);
        a.finish()
    }
}

impl Asm {
    /// Resolves every pending jump to `label` now (it must have just been placed) and forgets the
    /// label, so a loop can place the same label once per iteration.
    pub fn rescope(&mut self, label: &'static str) -> &mut Asm {
        if let Some(pos) = self.labels.iter().rposition(|(n, _)| *n == label) {
            let (_, target) = self.labels.remove(pos);
            let mut kept = Vec::new();
            for (at, name) in std::mem::take(&mut self.fixups) {
                if name == label {
                    self.insns[at].off = (target as i64 - (at as i64 + 1)) as i16;
                } else {
                    kept.push((at, name));
                }
            }
            self.fixups = kept;
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instructions_encode_like_struct_bpf_insn() {
        let mut a = Asm::new();
        a.mov_imm(R0, 2).exit();
        let insns = a.finish().unwrap();
        assert_eq!(insns[0].encode(), [0xb7, 0x00, 0, 0, 2, 0, 0, 0]);
        assert_eq!(insns[1].encode(), [0x95, 0, 0, 0, 0, 0, 0, 0]);
        let mut a = Asm::new();
        a.load(Size::Word, R2, R6, skb::PROTOCOL);
        assert_eq!(a.finish().unwrap()[0].encode(), [0x61, 0x62, 16, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn jumps_resolve_forward_and_missing_labels_are_errors() {
        let mut a = Asm::new();
        a.jeq32(R2, 5, "out").mov_imm(R0, 1).label("out").exit();
        let insns = a.finish().unwrap();
        assert_eq!(insns[0].off, 1);
        assert_eq!(insns[0].code, CLASS_JMP32 | OP_JEQ);
        let mut a = Asm::new();
        a.ja("nowhere");
        assert!(a.finish().unwrap_err().0.contains("nowhere"));
    }

    #[test]
    fn a_label_reused_per_member_jumps_to_its_own_place() {
        let members = [(MacAddr([2, 0, 0, 0, 0, 1]), 7), (MacAddr([2, 0, 0, 0, 0, 2]), 8)];
        let insns = vlan::port_egress(&members).unwrap();
        // Every jump lands inside the program.
        for (i, insn) in insns.iter().enumerate() {
            let class = insn.code & 0x07;
            if (class == CLASS_JMP || class == CLASS_JMP32) && insn.code & 0xf0 != OP_CALL && insn.code & 0xf0 != OP_EXIT {
                let target = i as i64 + 1 + i64::from(insn.off);
                assert!((0..insns.len() as i64).contains(&target), "jump at {i} lands at {target}");
                assert!(target > i as i64, "only forward jumps");
            }
        }
        // The VLAN IDs are in the program.
        assert!(insns.iter().any(|i| i.imm == 7) && insns.iter().any(|i| i.imm == 8));
    }
}
