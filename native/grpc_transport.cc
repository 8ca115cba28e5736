// mimo's native gRPC transport: HTTP/2 and gRPC framing in C++ threads, everything else in Python.
//
// Python's gRPC stack costs ~330 us of CPU per unary call before any model runs (bench/README.md).
// This module terminates gRPC with grpc++'s callback API and a generic service, so it never parses
// a protobuf: each call reaches Python as (method, metadata, request bytes) through one event queue
// that wakes the asyncio loop via an eventfd, many calls per wake-up. Python answers with response
// bytes or a status. The servicers, codec, validation and error mapping stay the Python ones.
//
// Threads: grpc's callback threads run the reactors below; Python calls in (holding the GIL) from
// the event loop's thread only. Lock order: calls_mu_ -> Call::mu_ -> events_mu_.

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/security/server_credentials.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <thread>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace py = pybind11;

namespace {

// Event kinds, mirrored in mimo/serving/native_server.py.
enum Kind : int { kUnary = 0, kOpen = 1, kMessage = 2, kEnd = 3, kGone = 4 };

struct Event {
  int kind;
  uint64_t call;
  std::string payload;  // kUnary, kMessage
  std::shared_ptr<const std::vector<std::pair<std::string, std::string>>> metadata;  // kUnary, kOpen
  std::string method;   // kUnary, kOpen
  double timeout = -1;  // seconds left at arrival; < 0: no deadline
  std::string peer;
};

std::string Flatten(const grpc::ByteBuffer& buffer) {
  std::string out;
  std::vector<grpc::Slice> slices;
  if (!buffer.Dump(&slices).ok()) return out;
  size_t size = 0;
  for (const auto& s : slices) size += s.size();
  out.reserve(size);
  for (const auto& s : slices) out.append(reinterpret_cast<const char*>(s.begin()), s.size());
  return out;
}

class Transport;

class Call final : public grpc::ServerGenericBidiReactor {
 public:
  Call(Transport* transport, grpc::GenericCallbackServerContext* ctx, uint64_t id, bool unary, int window);
  void Begin();

  void OnReadDone(bool ok) override;
  void OnWriteDone(bool ok) override;
  void OnCancel() override;
  void OnDone() override;

  // From Python (GIL and calls_mu_ held).
  void Reply(std::string&& bytes);
  void Write(std::string&& bytes);
  void End(grpc::Status status);
  void Ack();

 private:
  void StartNextWrite();  // mu_ held
  void Describe(Event& event) const;

  Transport* transport_;
  grpc::GenericCallbackServerContext* ctx_;
  const uint64_t id_;
  const bool unary_;
  const int window_;
  std::recursive_mutex mu_;
  grpc::ByteBuffer in_;
  grpc::ByteBuffer out_;
  std::deque<std::string> pending_;  // stream responses not yet handed to grpc
  bool writing_ = false;
  bool finished_ = false;
  bool reads_done_ = false;
  bool read_paused_ = false;
  int unconsumed_ = 0;  // messages delivered to Python and not yet acknowledged
  std::unique_ptr<grpc::Status> finish_after_writes_;
};

class Generic final : public grpc::CallbackGenericService {
 public:
  explicit Generic(Transport* transport) : transport_(transport) {}
  grpc::ServerGenericBidiReactor* CreateReactor(grpc::GenericCallbackServerContext* ctx) override;

 private:
  Transport* transport_;
};

class Transport {
 public:
  Transport(std::string address, int max_message_bytes, std::set<std::string> unary_methods, int stream_window,
            std::string tls_key, std::string tls_cert, std::string tls_client_ca)
      : address_(std::move(address)),
        max_message_bytes_(max_message_bytes),
        unary_methods_(std::move(unary_methods)),
        stream_window_(stream_window),
        tls_key_(std::move(tls_key)),
        tls_cert_(std::move(tls_cert)),
        tls_client_ca_(std::move(tls_client_ca)),
        service_(this) {
    efd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (efd_ < 0) throw std::runtime_error("eventfd failed");
  }

  ~Transport() {
    Shutdown(0);
    Collect();
    if (efd_ >= 0) close(efd_);
  }

  int Start() {
    if (server_) throw std::runtime_error("the transport is already started");
    grpc::ServerBuilder builder;
    std::shared_ptr<grpc::ServerCredentials> credentials = grpc::InsecureServerCredentials();
    if (!tls_cert_.empty()) {
      grpc::SslServerCredentialsOptions options(
          tls_client_ca_.empty() ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
                                 : GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
      options.pem_root_certs = tls_client_ca_;
      options.pem_key_cert_pairs.push_back({tls_key_, tls_cert_});
      credentials = grpc::SslServerCredentials(options);
    }
    int port = 0;
    builder.AddListeningPort(address_, credentials, &port);
    builder.RegisterCallbackGenericService(&service_);
    builder.SetMaxReceiveMessageSize(max_message_bytes_);
    builder.SetMaxSendMessageSize(max_message_bytes_);
    builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 1);
    server_ = builder.BuildAndStart();
    if (!server_ || port == 0) {
      server_.reset();
      throw std::runtime_error("could not listen on " + address_);
    }
    return port;
  }

  int fileno() const { return efd_; }

  // New call (a grpc thread). The reactor registers itself before it can produce events.
  grpc::ServerGenericBidiReactor* Create(grpc::GenericCallbackServerContext* ctx) {
    bool unary = unary_methods_.count(ctx->method()) > 0;
    Call* call;
    {
      std::lock_guard<std::recursive_mutex> lock(calls_mu_);
      uint64_t id = ++next_id_;
      call = new Call(this, ctx, id, unary, stream_window_);
      calls_[id] = call;
    }
    call->Begin();
    return call;
  }

  void Forget(uint64_t id, Call* call, bool gone) {
    std::lock_guard<std::recursive_mutex> lock(calls_mu_);
    calls_.erase(id);
    graveyard_.push_back(call);  // deleted by Python's thread, which may still hold the pointer
    if (gone) Push(Event{kGone, id});
  }

  void Push(Event&& event) {
    std::lock_guard<std::mutex> lock(events_mu_);
    bool was_empty = events_.empty();
    events_.push_back(std::move(event));
    if (was_empty) {
      uint64_t one = 1;
      ssize_t ignored = write(efd_, &one, sizeof(one));
      (void)ignored;
    }
  }

  py::list Drain() {
    std::vector<Event> events;
    {
      std::lock_guard<std::mutex> lock(events_mu_);
      uint64_t count;
      ssize_t ignored = read(efd_, &count, sizeof(count));  // clear the wake-up; events are in the queue
      (void)ignored;
      events.swap(events_);
    }
    Collect();
    py::list out(events.size());
    size_t i = 0;
    for (auto& e : events) {
      py::object payload = py::none(), method = py::none(), metadata = py::none(), peer = py::none();
      if (e.kind == kUnary || e.kind == kMessage) payload = py::bytes(e.payload);
      if (e.kind == kUnary || e.kind == kOpen) {
        method = py::str(e.method);
        peer = py::str(e.peer);
        py::tuple pairs(e.metadata->size());
        size_t j = 0;
        for (const auto& kv : *e.metadata) {
          bool binary = kv.first.size() > 4 && kv.first.compare(kv.first.size() - 4, 4, "-bin") == 0;
          py::object value = binary ? py::object(py::bytes(kv.second))
                                    : py::object(py::reinterpret_steal<py::object>(PyUnicode_DecodeLatin1(
                                          kv.second.data(), static_cast<Py_ssize_t>(kv.second.size()), nullptr)));
          pairs[j++] = py::make_tuple(py::str(kv.first), value);
        }
        metadata = pairs;
      }
      out[i++] = py::make_tuple(e.kind, e.call, method, payload, metadata, e.timeout, peer);
    }
    return out;
  }

  template <typename F>
  bool With(uint64_t id, F&& f) {
    std::lock_guard<std::recursive_mutex> lock(calls_mu_);
    auto it = calls_.find(id);
    if (it == calls_.end()) return false;  // the call is over (cancelled, deadline, client gone)
    f(it->second);
    return true;
  }

  // Refuse new calls, give running ones until the deadline, then end whatever is left ourselves:
  // grpc's Shutdown only returns once every reactor has finished, and a cancelled call whose
  // Python side no longer runs would otherwise never finish.
  void Shutdown(double grace_s) {
    if (!server_ || shut_down_.exchange(true)) return;
    auto deadline = std::chrono::system_clock::now() +
                    std::chrono::microseconds(static_cast<int64_t>(std::max(0.0, grace_s) * 1e6));
    std::mutex mu;
    std::condition_variable cv;
    bool done = false;
    std::thread reaper([&] {
      std::unique_lock<std::mutex> lock(mu);
      if (cv.wait_until(lock, deadline + std::chrono::milliseconds(200), [&] { return done; })) return;
      lock.unlock();
      std::lock_guard<std::recursive_mutex> calls(calls_mu_);
      for (auto& entry : calls_)
        entry.second->End(grpc::Status(grpc::StatusCode::UNAVAILABLE, "the server is shutting down"));
    });
    server_->Shutdown(deadline);
    server_->Wait();
    {
      std::lock_guard<std::mutex> lock(mu);
      done = true;
    }
    cv.notify_one();
    reaper.join();
  }

  size_t Active() {
    std::lock_guard<std::recursive_mutex> lock(calls_mu_);
    return calls_.size();
  }

 private:
  void Collect() {
    std::vector<Call*> dead;
    {
      std::lock_guard<std::recursive_mutex> lock(calls_mu_);
      dead.swap(graveyard_);
    }
    for (Call* c : dead) delete c;
  }

  const std::string address_;
  const int max_message_bytes_;
  const std::set<std::string> unary_methods_;
  const int stream_window_;
  const std::string tls_key_, tls_cert_, tls_client_ca_;
  Generic service_;
  std::unique_ptr<grpc::Server> server_;
  std::atomic<bool> shut_down_{false};
  int efd_ = -1;

  std::recursive_mutex calls_mu_;
  std::unordered_map<uint64_t, Call*> calls_;
  std::vector<Call*> graveyard_;
  uint64_t next_id_ = 0;

  std::mutex events_mu_;
  std::vector<Event> events_;
};

grpc::ServerGenericBidiReactor* Generic::CreateReactor(grpc::GenericCallbackServerContext* ctx) {
  return transport_->Create(ctx);
}

Call::Call(Transport* transport, grpc::GenericCallbackServerContext* ctx, uint64_t id, bool unary, int window)
    : transport_(transport), ctx_(ctx), id_(id), unary_(unary), window_(window) {}

// What Python needs to dispatch a call: method, metadata, time left, peer.
void Call::Describe(Event& event) const {
  auto metadata = std::make_shared<std::vector<std::pair<std::string, std::string>>>();
  for (const auto& kv : ctx_->client_metadata())
    metadata->emplace_back(std::string(kv.first.data(), kv.first.size()),
                           std::string(kv.second.data(), kv.second.size()));
  event.metadata = std::move(metadata);
  event.method = ctx_->method();
  auto deadline = ctx_->deadline();
  if (deadline != std::chrono::system_clock::time_point::max())
    event.timeout =  // an expired deadline is 0 (not "none", which is negative)
        std::max(0.0, std::chrono::duration<double>(deadline - std::chrono::system_clock::now()).count());
  event.peer = ctx_->peer();
}

void Call::Begin() {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  if (!unary_) {
    Event open{kOpen, id_};
    Describe(open);
    transport_->Push(std::move(open));
    // Some clients (perf_analyzer --streaming) wait for the server's headers before they write.
    StartSendInitialMetadata();
  }
  StartRead(&in_);
}

void Call::OnReadDone(bool ok) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  if (unary_) {
    if (!ok) {  // the client half-closed (or went away) without sending its request
      if (!finished_) {
        finished_ = true;
        // The client broke the protocol, not the server: INVALID_ARGUMENT, as for bytes that do not parse.
        Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "the call carried no request message"));
      }
      return;
    }
    Event call{kUnary, id_, Flatten(in_)};
    Describe(call);
    in_.Clear();
    transport_->Push(std::move(call));
    return;
  }
  if (!ok) {
    reads_done_ = true;
    transport_->Push(Event{kEnd, id_});
    return;
  }
  transport_->Push(Event{kMessage, id_, Flatten(in_)});
  in_.Clear();
  if (++unconsumed_ < window_) {
    StartRead(&in_);
  } else {
    read_paused_ = true;  // back-pressure: Python has `window_` messages it has not taken yet
  }
}

void Call::Ack() {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  if (unconsumed_ > 0) --unconsumed_;
  if (read_paused_ && !reads_done_ && !finished_) {
    read_paused_ = false;
    StartRead(&in_);
  }
}

void Call::Reply(std::string&& bytes) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  if (finished_) return;
  finished_ = true;
  grpc::Slice slice(bytes);
  out_ = grpc::ByteBuffer(&slice, 1);
  StartWriteAndFinish(&out_, grpc::WriteOptions(), grpc::Status::OK);
}

void Call::Write(std::string&& bytes) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  if (finished_ || finish_after_writes_) return;
  pending_.push_back(std::move(bytes));
  if (!writing_) StartNextWrite();
}

void Call::StartNextWrite() {
  writing_ = true;
  grpc::Slice slice(pending_.front());
  out_ = grpc::ByteBuffer(&slice, 1);
  pending_.pop_front();
  StartWrite(&out_);
}

void Call::OnWriteDone(bool ok) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  writing_ = false;
  if (!ok) pending_.clear();  // the client is gone: OnCancel tells Python
  if (!pending_.empty()) {
    StartNextWrite();
  } else if (finish_after_writes_ && !finished_) {
    finished_ = true;
    Finish(*finish_after_writes_);
  }
}

void Call::End(grpc::Status status) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  if (finished_ || finish_after_writes_) return;
  if (writing_ || !pending_.empty()) {
    finish_after_writes_ = std::make_unique<grpc::Status>(std::move(status));
    return;
  }
  finished_ = true;
  Finish(status);
}

void Call::OnCancel() { transport_->Push(Event{kGone, id_}); }

void Call::OnDone() {
  bool gone;
  {
    std::lock_guard<std::recursive_mutex> lock(mu_);
    gone = !finished_;
  }
  transport_->Forget(id_, this, gone);
}

}  // namespace

PYBIND11_MODULE(_grpc_transport, m) {
  m.doc() = "mimo's native gRPC transport (see native/grpc_transport.cc)";
  m.attr("UNARY") = static_cast<int>(kUnary);
  m.attr("OPEN") = static_cast<int>(kOpen);
  m.attr("MESSAGE") = static_cast<int>(kMessage);
  m.attr("END") = static_cast<int>(kEnd);
  m.attr("GONE") = static_cast<int>(kGone);
  m.attr("GRPC_VERSION") = grpc::Version();
  py::class_<Transport>(m, "Transport")
      .def(py::init<std::string, int, std::set<std::string>, int, std::string, std::string, std::string>(),
           py::arg("address"), py::arg("max_message_bytes"), py::arg("unary_methods"), py::arg("stream_window"),
           py::arg("tls_key") = "", py::arg("tls_cert") = "", py::arg("tls_client_ca") = "")
      .def("start", &Transport::Start, py::call_guard<py::gil_scoped_release>(),
           "Listen and serve; returns the port.")
      .def("fileno", &Transport::fileno, "The eventfd that becomes readable when events are queued.")
      .def("drain", &Transport::Drain,
           "Queued events: (kind, call, method, payload, metadata, timeout, peer) tuples.")
      .def("reply",
           [](Transport& t, uint64_t id, py::bytes payload) {
             std::string bytes = payload;
             return t.With(id, [&](Call* c) { c->Reply(std::move(bytes)); });
           },
           "Answer a unary call with response bytes and OK.")
      .def("write",
           [](Transport& t, uint64_t id, py::bytes payload) {
             std::string bytes = payload;
             return t.With(id, [&](Call* c) { c->Write(std::move(bytes)); });
           },
           "Queue one response message on a streaming call.")
      .def("finish",
           [](Transport& t, uint64_t id, int code, const std::string& message) {
             return t.With(id, [&](Call* c) {
               c->End(grpc::Status(static_cast<grpc::StatusCode>(code), message));
             });
           },
           "End a call with a status (after any queued messages).")
      .def("ack", [](Transport& t, uint64_t id) { return t.With(id, [](Call* c) { c->Ack(); }); },
           "Python took one message of a stream: read on if reading was paused.")
      .def("active", &Transport::Active, "Calls in progress.")
      .def("shutdown", &Transport::Shutdown, py::arg("grace_s"), py::call_guard<py::gil_scoped_release>(),
           "Stop listening, let calls finish for up to grace_s seconds, cancel the rest.");
}
