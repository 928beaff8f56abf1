/* asyncd/ring.h: the local submission ring of asyncd.v1, byte for byte.
 *
 * A client on the same host that holds a session (asyncd.v1 OpenSession or
 * a Stream's) can ask for a ring: shared memory in which it writes
 * operations and reads their completions without a system call per
 * operation. Ring operations are ordinary operations of the session: they
 * are listed, watched and cancelled like any other, and the session's end,
 * deadlines, drain, limits and budgets apply to them unchanged.
 *
 * This header is the whole protocol; it is C (C11 and C++) so that any
 * language can follow it. asyncd::client::RingClient (asyncd/ring_client.h)
 * implements the client side.
 *
 * Setting up
 * ----------
 * 1. Connect a SOCK_SEQPACKET unix socket to the ring socket: the gRPC
 *    socket's path with ".ring" appended (by default
 *    /run/asyncd/asyncd.sock.ring; the daemon's server.ring_socket).
 * 2. Send one struct asyncd_ring_setup naming the session.
 * 3. Receive one struct asyncd_ring_setup_reply. status is a gRPC status
 *    code; on 0 (OK) the message carries three descriptors (SCM_RIGHTS), in
 *    this order:
 *      - a sealed memfd of region_bytes: struct asyncd_ring_ctl at offset 0,
 *        the submission entries at sq_offset, the completion entries at
 *        cq_offset and the buffer area at buffer_offset (map it shared,
 *        read and write);
 *      - the submit eventfd: write 1 to it to wake the daemon;
 *      - the completion pipe's read end: the daemon writes a byte to the
 *        pipe when the client waits; read and discard what is there (a
 *        pipe and not an eventfd because an eventfd's blocking mode would
 *        be shared with the client, who could then make the daemon's
 *        writes wait).
 *    Otherwise message says why, and no descriptor comes:
 *      INVALID_ARGUMENT    a malformed setup (the field is named);
 *      NOT_FOUND           no such session;
 *      PERMISSION_DENIED   the session belongs to another uid (the socket's
 *                          peer credentials, SO_PEERCRED, are checked
 *                          against the session's owner);
 *      FAILED_PRECONDITION the session has ended, or has a ring already;
 *      RESOURCE_EXHAUSTED  the buffer area does not fit in
 *                          limits.max_buffered_bytes (it is charged there
 *                          for the ring's life);
 *      UNAVAILABLE         the daemon is draining.
 *    With rings off (server.ring_socket "off") there is no ring socket:
 *    connect(2) fails (ENOENT, or ECONNREFUSED on a stale file), which
 *    RingClient reports as UNAVAILABLE.
 *    The reply's version is always the daemon's; an unsupported version in
 *    the setup is answered INVALID_ARGUMENT.
 * 4. Keep the socket open: it is the ring's lifeline. Closing it (or the
 *    process ending) ends the ring: its operations in flight are cancelled
 *    (end_reason RPC_CANCELLED), as when a Stream breaks. The session stays.
 *    While a ring is attached the session's lease does not run.
 *
 * Running
 * -------
 * Both rings are single-producer, single-consumer; indices are free-running
 * uint32 counters (entry i lives at index i & (entries - 1)). Read the other
 * side's index with acquire and publish yours with release
 * (__atomic_load_n / __atomic_store_n).
 *
 * Submit: write entries at sq_tail, then publish sq_tail; then a full
 * barrier (__atomic_thread_fence(__ATOMIC_SEQ_CST)), and if ctl.flags has
 * ASYNCD_RING_NEED_WAKEUP, write the submit eventfd. The daemon copies an
 * entry before it advances sq_head past it: the client may then reuse it.
 *
 * Reap: read entries from cq_head to cq_tail, then publish cq_head. To wait,
 * set ASYNCD_RING_CQ_WAITING in ctl.client_flags, a full barrier, check
 * cq_tail again, and only then wait for the completion pipe; clear the flag
 * after waking.
 *
 * Every accepted entry gets exactly one completion entry; so does every
 * refused one (outcome REJECTED, with the gRPC status code and the reason:
 * nothing ran and nothing changed). The daemon takes an entry only while
 * the ring has fewer than cq_entries operations whose completions are not
 * yet posted, and completions that find the ring full wait in the daemon
 * (ctl.flags ASYNCD_RING_CQ_OVERFLOW) until the client makes room and
 * writes the submit eventfd: none is dropped while the ring lives (see
 * its end, below).
 *
 * The daemon trusts nothing in the region: it reads each index once, checks
 * every index and buffer range, and copies an entry before it looks at it.
 * Indices that cannot be (a tail more than entries ahead of its head, or a
 * head past its tail) end the ring with status INVALID_ARGUMENT (see
 * ctl.closed_status), and its operations in flight are cancelled
 * (RPC_CANCELLED). When it is cq_head that cannot be, no completion is
 * posted from then on, and ctl.flags keeps ASYNCD_RING_CQ_OVERFLOW beside
 * ASYNCD_RING_CLOSED if some were waiting.
 *
 * Draining: from the drain's start the ring takes entries as before, but
 * refuses every operation (REJECTED, UNAVAILABLE, DRAINING) and still
 * answers CANCEL entries, as a drain leaves Cancel working; its operations
 * in flight end as the drain ends them. Once none is in flight the ring
 * closes (UNAVAILABLE, DRAINING; RESTART for a live restart).
 *
 * Ending: when the session ends, the daemon drains or restarts, or the
 * indices are broken, the daemon sets ASYNCD_RING_CLOSED with
 * closed_status and closed_reason, posts the completions of the ring's
 * operations still in flight (but see cq_head above), writes the completion pipe and closes the
 * ring socket. Entries it had not taken then are never run. Completions
 * still come after CLOSED is set: reap until the ring socket reaches end of
 * file. A ring whose completions wait for room when the daemon stops
 * ends without them: ctl.flags then keeps ASYNCD_RING_CQ_OVERFLOW with
 * ASYNCD_RING_CLOSED, so a client knows that it missed some.
 */
#ifndef ASYNCD_RING_H_
#define ASYNCD_RING_H_

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define ASYNCD_RING_MAGIC 0x61727931u /* first in every setup message */
#define ASYNCD_RING_VERSION 1u

/* Defaults and bounds of struct asyncd_ring_setup. */
#define ASYNCD_RING_DEFAULT_SQ_ENTRIES 256u
#define ASYNCD_RING_MAX_SQ_ENTRIES 4096u
#define ASYNCD_RING_MAX_CQ_ENTRIES 16384u
#define ASYNCD_RING_DEFAULT_BUFFER_BYTES (1u << 20)
#define ASYNCD_RING_BUFFER_ALIGN 4096u

/* The client's only message on the ring socket. */
struct asyncd_ring_setup {
  uint32_t magic;       /* ASYNCD_RING_MAGIC */
  uint32_t version;     /* ASYNCD_RING_VERSION */
  uint64_t session_id;  /* a session of the caller's uid */
  uint32_t sq_entries;  /* a power of two, 1..MAX_SQ_ENTRIES; 0 = DEFAULT_SQ_ENTRIES */
  /* A power of two, sq_entries..MAX_CQ_ENTRIES; 0 = 2 x sq_entries. Also the
   * most operations the ring holds in flight. */
  uint32_t cq_entries;
  /* A multiple of BUFFER_ALIGN; 0 = DEFAULT_BUFFER_BYTES. At most
   * limits.max_buffered_bytes, which it is charged against. */
  uint64_t buffer_bytes;
  uint64_t reserved[4]; /* 0 */
};

/* The daemon's only message on the ring socket. */
struct asyncd_ring_setup_reply {
  uint32_t magic;    /* ASYNCD_RING_MAGIC */
  uint32_t version;  /* the daemon's ASYNCD_RING_VERSION */
  uint32_t status;   /* a gRPC status code; 0 = OK and three descriptors came */
  uint32_t sq_entries;
  uint32_t cq_entries;
  uint32_t max_op_bytes; /* limits.max_op_bytes: the longest READ or WRITE */
  uint64_t region_bytes; /* the memfd's size */
  uint64_t sq_offset;    /* struct asyncd_ring_sqe[sq_entries] */
  uint64_t cq_offset;    /* struct asyncd_ring_cqe[cq_entries] */
  uint64_t buffer_offset;
  uint64_t buffer_bytes;
  char message[256];     /* why, when status != 0; NUL-terminated */
};

/* ctl.flags, written by the daemon. */
#define ASYNCD_RING_NEED_WAKEUP (1u << 0) /* the daemon sleeps: write the submit eventfd */
#define ASYNCD_RING_CQ_OVERFLOW (1u << 1) /* completions wait for room in the ring */
#define ASYNCD_RING_CLOSED (1u << 2)      /* the ring takes nothing more; see closed_status */
/* ctl.client_flags, written by the client. */
#define ASYNCD_RING_CQ_WAITING (1u << 0)  /* the client sleeps on the completion pipe */

/* At offset 0 of the region. Each index has a cache line of its own. */
struct asyncd_ring_ctl {
  uint32_t sq_head; /* daemon */
  uint32_t pad0[15];
  uint32_t sq_tail; /* client */
  uint32_t pad1[15];
  uint32_t cq_head; /* client */
  uint32_t pad2[15];
  uint32_t cq_tail; /* daemon */
  uint32_t pad3[15];
  uint32_t flags;          /* daemon: ASYNCD_RING_NEED_WAKEUP | CQ_OVERFLOW | CLOSED */
  uint32_t closed_status;  /* daemon: with CLOSED, a gRPC status code */
  uint32_t closed_reason;  /* daemon: with CLOSED, enum asyncd_ring_reason */
  uint32_t pad4[13];
  uint32_t client_flags;   /* client: ASYNCD_RING_CQ_WAITING */
  uint32_t pad5[15];
};

/* Submission kinds. Paths (open, stat, unlink, ...) go through gRPC; the
 * ring carries the work on open handles. Each runs as the asyncd.v1
 * operation of the same name, with the same validation and cancel safety. */
enum asyncd_ring_op {
  ASYNCD_RING_OP_NOP = 1,     /* answered by the poller itself: backend INLINE */
  ASYNCD_RING_OP_READ = 2,    /* into the buffer area; result = bytes read */
  ASYNCD_RING_OP_WRITE = 3,   /* from the buffer area; result = bytes written */
  ASYNCD_RING_OP_FSYNC = 4,   /* flags ASYNCD_RING_SQE_DATASYNC: fdatasync */
  ASYNCD_RING_OP_POLL = 5,    /* poll_events: asyncd.v1.PollEvents bits; result = revents */
  ASYNCD_RING_OP_TIMEOUT = 6, /* arg: duration in microseconds (asyncd.v1.Timeout) */
  /* Cancels the oldest operation of this ring in flight whose user_data is
   * arg. Its completion has ASYNCD_RING_CQE_CANCEL_ANSWER, result an
   * asyncd.v1.CancelResult (NOT_FOUND when none matched) and op_id the
   * operation it answered for. The cancelled operation still posts its own
   * completion. end_reason CLIENT_REQUEST. */
  ASYNCD_RING_OP_CANCEL = 7
};

#define ASYNCD_RING_SQE_DATASYNC (1u << 0)

/* A submission entry: 64 bytes. Fields a kind does not use must be 0. */
struct asyncd_ring_sqe {
  uint8_t kind;          /* enum asyncd_ring_op */
  uint8_t flags;         /* ASYNCD_RING_SQE_* */
  uint16_t poll_events;  /* POLL */
  uint32_t handle;       /* READ, WRITE, FSYNC, POLL: a handle of the session */
  int64_t offset;        /* READ, WRITE: byte offset; -1 = the current position */
  uint32_t length;       /* READ: 1..max_op_bytes; WRITE: 0..max_op_bytes */
  uint32_t deadline_ms;  /* after acceptance; 0 = none (asyncd.v1.Operation.deadline_ms) */
  uint64_t buffer_offset; /* READ, WRITE: from the start of the buffer area */
  uint64_t user_data;    /* echoed in the completion; listed as the op's tag */
  uint64_t arg;          /* TIMEOUT: microseconds; CANCEL: the user_data to cancel */
  uint64_t reserved[2];  /* 0 */
};

/* ASYNCD_RING_CQE_* flags. */
#define ASYNCD_RING_CQE_CANCEL_ANSWER (1u << 0)

/* A completion entry: 32 bytes. */
struct asyncd_ring_cqe {
  uint64_t user_data;
  uint64_t op_id;     /* the registry's id (as ListOperations shows it); 0 when REJECTED */
  /* COMPLETED: the system call's result, or -errno; CANCELLED -ECANCELED;
   * TIMED_OUT -ETIMEDOUT; FAILED -errno; REJECTED 0; a cancel answer: an
   * asyncd.v1.CancelResult. */
  int32_t result;
  uint32_t bytes;     /* bytes moved, also when cancelled or timed out midway */
  uint8_t outcome;    /* asyncd.v1.Outcome */
  uint8_t end_reason; /* asyncd.v1.EndReason, for CANCELLED and TIMED_OUT */
  uint8_t flags;      /* ASYNCD_RING_CQE_* */
  uint8_t backend;    /* asyncd.v1.Backend: where it ran */
  uint16_t status;    /* REJECTED: a gRPC status code */
  uint16_t reason;    /* REJECTED: enum asyncd_ring_reason */
};

/* Why an entry was REJECTED (or, in ctl.closed_reason, why the ring ended).
 * The gRPC status code of each is given. */
enum asyncd_ring_reason {
  ASYNCD_RING_REASON_NONE = 0,
  ASYNCD_RING_REASON_BAD_KIND = 1,       /* INVALID_ARGUMENT: kind */
  ASYNCD_RING_REASON_BAD_FIELD = 2,      /* INVALID_ARGUMENT: a field the kind does not use, or reserved, is not 0; or unknown flags */
  ASYNCD_RING_REASON_BAD_OFFSET = 3,     /* INVALID_ARGUMENT: offset below -1 */
  ASYNCD_RING_REASON_BAD_LENGTH = 4,     /* INVALID_ARGUMENT: READ of length 0 */
  ASYNCD_RING_REASON_TOO_LONG = 5,       /* RESOURCE_EXHAUSTED: length over max_op_bytes */
  ASYNCD_RING_REASON_BAD_BUFFER = 6,     /* INVALID_ARGUMENT: buffer_offset + length past the buffer area */
  ASYNCD_RING_REASON_BAD_POLL_EVENTS = 7,  /* INVALID_ARGUMENT: no PollEvents bit, or an unknown one */
  ASYNCD_RING_REASON_BAD_DURATION = 8,   /* INVALID_ARGUMENT: TIMEOUT over 24 h */
  ASYNCD_RING_REASON_UNKNOWN_HANDLE = 9, /* NOT_FOUND: handle */
  ASYNCD_RING_REASON_SESSION_ENDED = 10, /* FAILED_PRECONDITION */
  ASYNCD_RING_REASON_DRAINING = 11,      /* UNAVAILABLE */
  ASYNCD_RING_REASON_OVER_LIMIT = 12,    /* RESOURCE_EXHAUSTED: a daemon-wide limit (max_inflight_total, pool_queue_depth, ...) */
  ASYNCD_RING_REASON_BROKEN_INDEX = 13,  /* INVALID_ARGUMENT (closed_reason only): the client's indices cannot be */
  ASYNCD_RING_REASON_RESTART = 14,       /* UNAVAILABLE (closed_reason only): a live restart; ask the next daemon for a ring */
  ASYNCD_RING_REASON_CLIENT_GONE = 15,   /* CANCELLED (closed_reason only): the ring socket was closed */
  ASYNCD_RING_REASON_BAD_HANDLE = 16     /* INVALID_ARGUMENT: handle 0, which is never a handle */
};

#ifdef __cplusplus
}  /* extern "C" */
static_assert(sizeof(asyncd_ring_sqe) == 64, "the submission entry is 64 bytes");
static_assert(sizeof(asyncd_ring_cqe) == 32, "the completion entry is 32 bytes");
static_assert(sizeof(asyncd_ring_ctl) == 384, "the control block is six cache lines");
#else
_Static_assert(sizeof(struct asyncd_ring_sqe) == 64, "the submission entry is 64 bytes");
_Static_assert(sizeof(struct asyncd_ring_cqe) == 32, "the completion entry is 32 bytes");
_Static_assert(sizeof(struct asyncd_ring_ctl) == 384, "the control block is six cache lines");
#endif

#endif /* ASYNCD_RING_H_ */
