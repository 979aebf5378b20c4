//! NBD (`doc/proto.md` of NetworkBlockDevice/nbd, and qemu `docs/interop/nbd.rst` for the
//! `qemu:` metadata contexts): the wire constants both the NBD client (`sources/nbd_client/`)
//! and the NBD server (`nbd/`) use, and the limits tessera applies on both sides. All
//! integers on the wire are big-endian.
//!
//! Fixed-newstyle handshake (proto.md "Newstyle negotiation"): the server greets with
//! [`NBDMAGIC`], [`IHAVEOPT`] and its handshake flags (u16); the client answers its flags
//! (u32); each option is `IHAVEOPT option:u32 length:u32 data`, each option reply
//! `REPLY_MAGIC option:u32 type:u32 length:u32 data`.
//!
//! Transmission (proto.md "Transmission"): a request is `REQUEST_MAGIC flags:u16 type:u16
//! cookie:u64 offset:u64 length:u32` (28 bytes); a simple reply `SIMPLE_REPLY_MAGIC
//! error:u32 cookie:u64` (16 bytes); a structured reply chunk `STRUCTURED_REPLY_MAGIC
//! flags:u16 type:u16 cookie:u64 length:u32` (20 bytes) then its payload.
//!
//! Do not change a value here: each is fixed by the protocol, not by tessera.

// Magics.

/// Server greeting, first 8 bytes (`NBDMAGIC` in ASCII).
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// Newstyle greeting, second 8 bytes, and the prefix of every option (`IHAVEOPT`).
pub const IHAVEOPT: u64 = 0x4948_4156_454F_5054;
/// What an oldstyle server sends where a newstyle one sends [`IHAVEOPT`].
pub const OLDSTYLE_MAGIC: u64 = 0x0000_4202_8186_1253;
/// Prefix of every option reply.
pub const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Prefix of every transmission request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Prefix of a simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Prefix of a structured reply chunk.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

// Handshake flags (server → client, u16) and client flags (client → server, u32).

/// Server handshake flag: fixed newstyle negotiation.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
/// Server handshake flag: the 124 zero bytes after `NBD_OPT_EXPORT_NAME` may be left out.
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
/// Client flag: fixed newstyle negotiation.
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
/// Client flag: leave out the 124 zero bytes.
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;

// Option types.

/// `NBD_OPT_EXPORT_NAME`: choose an export and end the handshake (no reply on failure).
pub const OPT_EXPORT_NAME: u32 = 1;
/// `NBD_OPT_ABORT`: end the connection.
pub const OPT_ABORT: u32 = 2;
/// `NBD_OPT_LIST`: list the exports.
pub const OPT_LIST: u32 = 3;
/// `NBD_OPT_STARTTLS`: upgrade to TLS.
pub const OPT_STARTTLS: u32 = 5;
/// `NBD_OPT_INFO`: describe an export.
pub const OPT_INFO: u32 = 6;
/// `NBD_OPT_GO`: describe an export and end the handshake with it.
pub const OPT_GO: u32 = 7;
/// `NBD_OPT_STRUCTURED_REPLY`: use structured replies.
pub const OPT_STRUCTURED_REPLY: u32 = 8;
/// `NBD_OPT_LIST_META_CONTEXT`: list metadata contexts.
pub const OPT_LIST_META_CONTEXT: u32 = 9;
/// `NBD_OPT_SET_META_CONTEXT`: select metadata contexts.
pub const OPT_SET_META_CONTEXT: u32 = 10;

// Option reply types.

/// `NBD_REP_ACK`: the option succeeded (last reply).
pub const REP_ACK: u32 = 1;
/// `NBD_REP_SERVER`: one export of a list.
pub const REP_SERVER: u32 = 2;
/// `NBD_REP_INFO`: one piece of export information.
pub const REP_INFO: u32 = 3;
/// `NBD_REP_META_CONTEXT`: one selected metadata context (id and name).
pub const REP_META_CONTEXT: u32 = 4;
/// Bit set in every option error reply type.
pub const REP_FLAG_ERROR: u32 = 1 << 31;
/// `NBD_REP_ERR_UNSUP`: unknown option.
pub const REP_ERR_UNSUP: u32 = REP_FLAG_ERROR + 1;
/// `NBD_REP_ERR_POLICY`: forbidden by server policy.
pub const REP_ERR_POLICY: u32 = REP_FLAG_ERROR + 2;
/// `NBD_REP_ERR_INVALID`: malformed option.
pub const REP_ERR_INVALID: u32 = REP_FLAG_ERROR + 3;
/// `NBD_REP_ERR_PLATFORM`: not supported on this platform.
pub const REP_ERR_PLATFORM: u32 = REP_FLAG_ERROR + 4;
/// `NBD_REP_ERR_TLS_REQD`: TLS is required first.
pub const REP_ERR_TLS_REQD: u32 = REP_FLAG_ERROR + 5;
/// `NBD_REP_ERR_UNKNOWN`: no such export.
pub const REP_ERR_UNKNOWN: u32 = REP_FLAG_ERROR + 6;
/// `NBD_REP_ERR_SHUTDOWN`: the server is shutting down.
pub const REP_ERR_SHUTDOWN: u32 = REP_FLAG_ERROR + 7;
/// `NBD_REP_ERR_BLOCK_SIZE_REQD`: the client must accept block size constraints.
pub const REP_ERR_BLOCK_SIZE_REQD: u32 = REP_FLAG_ERROR + 8;
/// `NBD_REP_ERR_TOO_BIG`: the option payload is too large.
pub const REP_ERR_TOO_BIG: u32 = REP_FLAG_ERROR + 9;

/// The protocol's name of option error reply type `kind`.
pub fn option_error_name(kind: u32) -> &'static str {
    match kind {
        REP_ERR_UNSUP => "NBD_REP_ERR_UNSUP",
        REP_ERR_POLICY => "NBD_REP_ERR_POLICY",
        REP_ERR_INVALID => "NBD_REP_ERR_INVALID",
        REP_ERR_PLATFORM => "NBD_REP_ERR_PLATFORM",
        REP_ERR_TLS_REQD => "NBD_REP_ERR_TLS_REQD",
        REP_ERR_UNKNOWN => "NBD_REP_ERR_UNKNOWN",
        REP_ERR_SHUTDOWN => "NBD_REP_ERR_SHUTDOWN",
        REP_ERR_BLOCK_SIZE_REQD => "NBD_REP_ERR_BLOCK_SIZE_REQD",
        REP_ERR_TOO_BIG => "NBD_REP_ERR_TOO_BIG",
        _ => "an unknown error",
    }
}

// Information types (`NBD_OPT_INFO`/`NBD_OPT_GO`).

/// `NBD_INFO_EXPORT`: size (u64) and transmission flags (u16).
pub const INFO_EXPORT: u16 = 0;
/// `NBD_INFO_NAME`: the export's name.
pub const INFO_NAME: u16 = 1;
/// `NBD_INFO_BLOCK_SIZE`: minimum, preferred and maximum block size (u32 each).
pub const INFO_BLOCK_SIZE: u16 = 3;

// Transmission flags (u16, per export).

/// `NBD_FLAG_HAS_FLAGS`: always set.
pub const TFLAG_HAS_FLAGS: u16 = 1 << 0;
/// `NBD_FLAG_READ_ONLY`.
pub const TFLAG_READ_ONLY: u16 = 1 << 1;
/// `NBD_FLAG_SEND_FLUSH`.
pub const TFLAG_SEND_FLUSH: u16 = 1 << 2;
/// `NBD_FLAG_CAN_MULTI_CONN`: several connections see one consistent export.
pub const TFLAG_CAN_MULTI_CONN: u16 = 1 << 8;
/// `NBD_FLAG_SEND_CACHE`.
pub const TFLAG_SEND_CACHE: u16 = 1 << 10;

// Request types and flags.

/// `NBD_CMD_READ`.
pub const CMD_READ: u16 = 0;
/// `NBD_CMD_WRITE` (followed by its payload).
pub const CMD_WRITE: u16 = 1;
/// `NBD_CMD_DISC`: disconnect (no reply).
pub const CMD_DISC: u16 = 2;
/// `NBD_CMD_FLUSH`.
pub const CMD_FLUSH: u16 = 3;
/// `NBD_CMD_TRIM`.
pub const CMD_TRIM: u16 = 4;
/// `NBD_CMD_CACHE`.
pub const CMD_CACHE: u16 = 5;
/// `NBD_CMD_WRITE_ZEROES`.
pub const CMD_WRITE_ZEROES: u16 = 6;
/// `NBD_CMD_BLOCK_STATUS`.
pub const CMD_BLOCK_STATUS: u16 = 7;
/// `NBD_CMD_FLAG_REQ_ONE`: block status may stop after one extent.
pub const CMD_FLAG_REQ_ONE: u16 = 1 << 3;

// Structured reply chunks.

/// `NBD_REPLY_FLAG_DONE`: the last chunk of a reply.
pub const REPLY_FLAG_DONE: u16 = 1;
/// `NBD_REPLY_TYPE_NONE`: no payload.
pub const REPLY_TYPE_NONE: u16 = 0;
/// `NBD_REPLY_TYPE_OFFSET_DATA`: offset (u64) then data.
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
/// `NBD_REPLY_TYPE_OFFSET_HOLE`: offset (u64) and length (u32) of zeros.
pub const REPLY_TYPE_OFFSET_HOLE: u16 = 2;
/// `NBD_REPLY_TYPE_BLOCK_STATUS`: context id then `(length, flags)` descriptors.
pub const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
/// Bit set in every structured reply error type.
pub const REPLY_FLAG_ERROR_TYPE: u16 = 1 << 15;
/// `NBD_REPLY_TYPE_ERROR`: errno (u32), message length (u16), message.
pub const REPLY_TYPE_ERROR: u16 = REPLY_FLAG_ERROR_TYPE + 1;
/// `NBD_REPLY_TYPE_ERROR_OFFSET`: as [`REPLY_TYPE_ERROR`], then the offset (u64).
pub const REPLY_TYPE_ERROR_OFFSET: u16 = REPLY_FLAG_ERROR_TYPE + 2;

// Error values (proto.md "Error values": the Linux errno numbers).

/// Operation not permitted.
pub const EPERM: u32 = 1;
/// Input/output error.
pub const EIO: u32 = 5;
/// Out of memory.
pub const ENOMEM: u32 = 12;
/// Invalid argument.
pub const EINVAL: u32 = 22;
/// No space left.
pub const ENOSPC: u32 = 28;
/// Value too large (a request over the maximum block size).
pub const EOVERFLOW: u32 = 75;
/// Not supported.
pub const ENOTSUP: u32 = 95;
/// The server is shutting down.
pub const ESHUTDOWN: u32 = 108;

/// The name of NBD error value `e`, or `"error"`.
pub fn errno_name(e: u32) -> &'static str {
    match e {
        EPERM => "EPERM",
        EIO => "EIO",
        ENOMEM => "ENOMEM",
        EINVAL => "EINVAL",
        ENOSPC => "ENOSPC",
        EOVERFLOW => "EOVERFLOW",
        ENOTSUP => "ENOTSUP",
        ESHUTDOWN => "ESHUTDOWN",
        _ => "error",
    }
}

// Metadata contexts.

/// The allocation context every server may offer.
pub const BASE_ALLOCATION: &str = "base:allocation";
/// `base:allocation` status bit: the extent is a hole.
pub const STATE_HOLE: u32 = 1;
/// `base:allocation` status bit: the extent reads as zeros.
pub const STATE_ZERO: u32 = 2;
/// Prefix of qemu's dirty-bitmap metadata contexts (`qemu:dirty-bitmap:NAME`).
pub const QEMU_DIRTY_BITMAP: &str = "qemu:dirty-bitmap:";
/// Dirty-bitmap status bit: the extent is dirty.
pub const STATE_DIRTY: u32 = 1;

// Limits tessera applies on both sides (policy, not protocol).

/// Largest option payload sent or accepted, and largest option reply accepted.
pub const MAX_OPTION: u32 = 64 * 1024;
/// Largest read (and write payload) accepted or asked for; the server announces it as the
/// maximum block size.
pub const MAX_REQUEST: u32 = 32 * 1024 * 1024;
