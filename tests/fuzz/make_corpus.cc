// Writes the seed corpus of request_fuzzer: valid requests in each of its
// three input modes (first byte: 0 StreamRequest, 1 SubmitRequest, 2
// length-prefixed StreamRequests). Handles 1 and 2 name the fuzzer's fixture
// handles (file "a", FIFO "p"); op ids 1..255 the input's own ops.
//   make_corpus <output dir>
#include <cstdio>
#include <string>
#include <vector>

#include "asyncd/v1/asyncd.pb.h"

namespace v1 = ::asyncd::v1;

namespace {

void Write(const std::string& dir, const std::string& name, char mode, const std::string& body) {
  const std::string path = dir + "/" + name;
  FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) {
    std::perror(path.c_str());
    std::exit(1);
  }
  std::fputc(mode, f);
  std::fwrite(body.data(), 1, body.size(), f);
  std::fclose(f);
}

std::string Chunks(const std::vector<v1::StreamRequest>& reqs) {
  std::string out;
  for (const auto& r : reqs) {
    const std::string s = r.SerializeAsString();
    out.push_back(static_cast<char>(s.size() & 0xff));
    out.push_back(static_cast<char>(s.size() >> 8));
    out += s;
  }
  return out;
}

v1::StreamRequest Batch(std::vector<v1::Operation> ops) {
  v1::StreamRequest r;
  r.mutable_submit()->set_batch_tag(7);
  for (auto& op : ops) *r.mutable_submit()->add_ops() = std::move(op);
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s <output dir>\n", argv[0]);
    return 2;
  }
  const std::string dir = argv[1];
  uint64_t tag = 1;
  auto op = [&] {
    v1::Operation o;
    o.set_tag(tag++);
    return o;
  };
  v1::Operation nop = op();
  nop.mutable_nop();
  v1::Operation open_a = op();
  open_a.mutable_open()->set_path("a");
  open_a.mutable_open()->set_access(v1::OPEN_MODE_READ_ONLY);
  v1::Operation create = op();
  create.mutable_open()->set_path("d/new");
  create.mutable_open()->set_access(v1::OPEN_MODE_READ_WRITE);
  create.mutable_open()->set_create(true);
  create.mutable_open()->set_mode(0600);
  v1::Operation read_a = op();
  read_a.mutable_read()->set_handle(1);
  read_a.mutable_read()->set_offset(0);
  read_a.mutable_read()->set_length(16);
  v1::Operation read_fifo = op();
  read_fifo.mutable_read()->set_handle(2);
  read_fifo.mutable_read()->set_offset(-1);
  read_fifo.mutable_read()->set_length(8);
  read_fifo.set_deadline_ms(5);
  v1::Operation write_a = op();
  write_a.mutable_write()->set_handle(1);
  write_a.mutable_write()->set_offset(4);
  write_a.mutable_write()->set_data("fuzz");
  v1::Operation fsync = op();
  fsync.mutable_fsync()->set_handle(1);
  fsync.mutable_fsync()->set_datasync(true);
  v1::Operation falloc = op();
  falloc.mutable_fallocate()->set_handle(1);
  falloc.mutable_fallocate()->set_offset(0);
  falloc.mutable_fallocate()->set_length(4096);
  v1::Operation trunc = op();
  trunc.mutable_ftruncate()->set_handle(1);
  trunc.mutable_ftruncate()->set_length(3);
  v1::Operation statx_h = op();
  statx_h.mutable_statx()->set_handle(1);
  v1::Operation statx_p = op();
  statx_p.mutable_statx()->set_path("d");
  statx_p.mutable_statx()->set_no_follow(true);
  v1::Operation mkdir = op();
  mkdir.mutable_mkdir()->set_path("d/sub");
  mkdir.mutable_mkdir()->set_mode(0700);
  v1::Operation rename = op();
  rename.mutable_rename()->set_old_path("a");
  rename.mutable_rename()->set_new_path("d/b");
  rename.mutable_rename()->set_no_replace(true);
  v1::Operation unlink = op();
  unlink.mutable_unlink()->set_path("d/b");
  v1::Operation poll = op();
  poll.mutable_poll()->set_handle(2);
  poll.mutable_poll()->set_events(v1::POLL_EVENTS_READABLE | v1::POLL_EVENTS_WRITABLE);
  v1::Operation timeout = op();
  timeout.mutable_timeout()->set_duration_us(500);
  v1::Operation long_timeout = op();
  long_timeout.mutable_timeout()->set_duration_us(60'000'000);
  v1::Operation close = op();
  close.mutable_close()->set_handle(1);

  // Mode 0: one StreamRequest.
  Write(dir, "stream_every_kind", 0,
        Batch({nop, open_a, create, read_a, write_a, fsync, falloc, trunc, statx_h, statx_p, mkdir,
               poll, timeout})
            .SerializeAsString());
  Write(dir, "stream_rename_unlink_close", 0,
        Batch({rename, unlink, close, read_a}).SerializeAsString());
  v1::StreamRequest open_msg;
  open_msg.mutable_open()->set_client_name("fuzz");
  Write(dir, "stream_open", 0, open_msg.SerializeAsString());

  // Mode 1: one SubmitRequest (session_id % 2048 = the call's deadline in ms).
  auto submit = [&](const v1::Operation& o, uint64_t session) {
    v1::SubmitRequest r;
    r.set_session_id(session);
    *r.mutable_op() = o;
    return r.SerializeAsString();
  };
  Write(dir, "submit_nop", 1, submit(nop, 0));
  Write(dir, "submit_write", 1, submit(write_a, 0));
  Write(dir, "submit_fifo_read_deadline", 1, submit(read_fifo, 3));
  Write(dir, "submit_statx_path", 1, submit(statx_p, 0));

  // Mode 2: a stream: open, batches, cancels by id and by selector.
  v1::StreamRequest cancel_id;
  cancel_id.mutable_cancel()->set_request_tag(1);
  cancel_id.mutable_cancel()->set_op_id(3);
  v1::StreamRequest cancel_sel;
  cancel_sel.mutable_cancel()->set_request_tag(2);
  cancel_sel.mutable_cancel()->mutable_selector()->add_kinds(v1::OP_KIND_READ);
  cancel_sel.mutable_cancel()->mutable_selector()->add_kinds(v1::OP_KIND_TIMEOUT);
  v1::StreamRequest cancel_all;
  cancel_all.mutable_cancel()->mutable_selector()->set_all(true);
  Write(dir, "split_cancel_by_id", 2,
        Chunks({open_msg, Batch({nop, long_timeout, read_fifo}), cancel_id}));
  Write(dir, "split_cancel_by_selector", 2,
        Chunks({open_msg, Batch({read_fifo, long_timeout, poll}), cancel_sel,
                Batch({create, nop})}));
  Write(dir, "split_open_then_use", 2,
        Chunks({Batch({create}), Batch({write_a, read_a, fsync}), Batch({close}), cancel_all}));
  return 0;
}
