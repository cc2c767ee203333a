// The simulated board: a Verilated board image whose byte streams are served on a loopback TCP port.
//
// Built by sim/board_sim/__init__.py (`verilator --cc --exe --build --prefix Vboard ...`). The board
// image's top module has the ports
//
//     clk, rst                                  Amaranth's sync domain (synchronous reset)
//     rx__valid, rx__ready, rx__payload[7:0]    bytes INTO the board   (the harness drives valid/payload)
//     tx__valid, tx__ready, tx__payload[7:0]    bytes FROM the board   (the harness drives ready)
//
// On hardware a UART sits in front of these streams; here they are tied straight to one TCP client
// (no bit-level UART: a byte costs one cycle instead of ~10 baud periods). Like LiteX's --uart-tcp.
//
// The per-cycle loop stays in C++ and touches no system call: the socket is polled (non-blocking)
// once every --poll-cycles cycles. Bytes received from the client wait in a ring buffer and are
// offered to rx__ one per cycle; bytes the board sends are collected in a second ring buffer and
// written to the client at the next poll. When that buffer is full (the client does not read),
// tx__ready drops: back-pressure reaches the board instead of losing bytes. While no client is
// connected the board keeps running and its output bytes are dropped (counted), like a UART with
// nothing listening.
//
// Protocol with the parent process (stdout, one line each, flushed):
//     PORT <n>                         as soon as the socket listens
//     STATS cycles=.. seconds=.. ...   on SIGUSR1 and at exit
// Diagnostics go to stderr. SIGTERM / SIGINT stop the simulation cleanly (final(), sockets closed,
// exit status 0); with --exit-on-stdin-eof it also stops when its stdin closes, so a parent that
// dies (even by SIGKILL) never leaves a simulator spinning.
//
// Options:
//     --port N              TCP port on 127.0.0.1 (0 = let the kernel pick a free one; default 0)
//     --poll-cycles N       cycles between socket polls (default 1024)
//     --reset-cycles N      cycles with rst high at start (default 8)
//     --idle-cycles N       after N cycles without any byte moving, the board counts as idle and
//                           each poll may sleep up to --idle-sleep-ms waiting for the socket (a
//                           byte or a connection wakes it at once); 0 = never sleep (default 2^25)
//     --idle-sleep-ms N     see --idle-cycles (default 20)
//     --max-cycles N        stop after N cycles (0 = run until stopped; default 0)
//     --exit-on-stdin-eof   stop when stdin reaches end of file
//     --trace FILE          write a VCD of every cycle to FILE, 10 ns per clock cycle like the core's
//                           cocotb traces (rising edges at 5 ns + 10 ns k). Only in an executable built with tracing
//                           (sim/board_sim build(trace=True): Verilator --trace and -DECHOBOARD_TRACE),
//                           a separate build, so the normal one keeps its speed.
#include "Vboard.h"
#include "verilated.h"
#ifdef ECHOBOARD_TRACE
#include "verilated_vcd_c.h"
#endif

#include <arpa/inet.h>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <memory>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <string>
#include <sys/socket.h>
#include <unistd.h>

// Verilator escapes "__" in identifiers as "___05F": port rx__valid is member rx___05Fvalid.
#define RX_VALID rx___05Fvalid
#define RX_READY rx___05Fready
#define RX_PAYLOAD rx___05Fpayload
#define TX_VALID tx___05Fvalid
#define TX_READY tx___05Fready
#define TX_PAYLOAD tx___05Fpayload

namespace {

volatile std::sig_atomic_t g_stop = 0;
volatile std::sig_atomic_t g_stats = 0;

void on_stop(int) { g_stop = 1; }
void on_stats(int) { g_stats = 1; }

// Fixed-capacity byte ring; indices run free (uint64) and are masked on access.
template <unsigned LOG2> struct Ring {
    static constexpr uint64_t CAP = uint64_t(1) << LOG2;
    static constexpr uint64_t MASK = CAP - 1;
    uint8_t buf[CAP];
    uint64_t head = 0, tail = 0;  // read at head, write at tail
    uint64_t size() const { return tail - head; }
    uint64_t space() const { return CAP - size(); }
    bool empty() const { return head == tail; }
    void clear() { head = tail; }
    // Contiguous free area at the tail / filled area at the head (for recv/send without copies).
    uint8_t* write_ptr(uint64_t& n) {
        uint64_t off = tail & MASK;
        n = space() < CAP - off ? space() : CAP - off;
        return buf + off;
    }
    const uint8_t* read_ptr(uint64_t& n) const {
        uint64_t off = head & MASK;
        n = size() < CAP - off ? size() : CAP - off;
        return buf + off;
    }
};

[[noreturn]] void die(const char* what) {
    std::fprintf(stderr, "board_sim: %s: %s\n", what, std::strerror(errno));
    std::exit(2);
}

uint64_t parse_u64(const char* opt, const char* text) {
    char* end = nullptr;
    errno = 0;
    unsigned long long v = std::strtoull(text, &end, 0);
    if (errno || !end || *end || text[0] == '-') {
        std::fprintf(stderr, "board_sim: bad value for %s: '%s'\n", opt, text);
        std::exit(2);
    }
    return v;
}

void set_nonblocking(int fd) {
    int flags = fcntl(fd, F_GETFL, 0);
    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) die("fcntl(O_NONBLOCK)");
}

struct Options {
    uint64_t port = 0;
    uint64_t poll_cycles = 1024;
    uint64_t reset_cycles = 8;
    uint64_t idle_cycles = uint64_t(1) << 25;
    uint64_t idle_sleep_ms = 20;
    uint64_t max_cycles = 0;
    bool exit_on_stdin_eof = false;
    std::string trace;
};

Options parse_options(int argc, char** argv) {
    Options o;
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        if (a.rfind("+verilator", 0) == 0) continue;  // Verilator's own runtime options
        if (a == "--exit-on-stdin-eof") { o.exit_on_stdin_eof = true; continue; }
        if (a == "-h" || a == "--help") {
            std::printf("usage: %s [--port N] [--poll-cycles N] [--reset-cycles N] [--idle-cycles N] "
                        "[--idle-sleep-ms N] [--max-cycles N] [--exit-on-stdin-eof] [--trace FILE]\n", argv[0]);
            std::exit(0);
        }
        if (i + 1 >= argc) {
            std::fprintf(stderr, "board_sim: unknown option or missing value: '%s'\n", a.c_str());
            std::exit(2);
        }
        if (a == "--trace") {
#ifndef ECHOBOARD_TRACE
            std::fprintf(stderr, "board_sim: --trace needs an executable built with tracing\n");
            std::exit(2);
#endif
            o.trace = argv[++i];
            continue;
        }
        uint64_t v = parse_u64(a.c_str(), argv[++i]);
        if (a == "--port") o.port = v;
        else if (a == "--poll-cycles") o.poll_cycles = v;
        else if (a == "--reset-cycles") o.reset_cycles = v;
        else if (a == "--idle-cycles") o.idle_cycles = v;
        else if (a == "--idle-sleep-ms") o.idle_sleep_ms = v;
        else if (a == "--max-cycles") o.max_cycles = v;
        else {
            std::fprintf(stderr, "board_sim: unknown option '%s'\n", a.c_str());
            std::exit(2);
        }
    }
    if (o.port > 65535) { std::fprintf(stderr, "board_sim: --port out of range\n"); std::exit(2); }
    if (o.poll_cycles < 1 || o.poll_cycles > (uint64_t(1) << 24)) {
        std::fprintf(stderr, "board_sim: --poll-cycles must be in 1..2^24\n");
        std::exit(2);
    }
    if (o.idle_sleep_ms > 1000) o.idle_sleep_ms = 1000;
    return o;
}

struct Stats {
    uint64_t cycles = 0, rx_bytes = 0, tx_bytes = 0, dropped = 0, clients = 0;
};

void print_stats(const Stats& s, std::chrono::steady_clock::time_point t0, const char* tag) {
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("%s cycles=%llu seconds=%.6f rx_bytes=%llu tx_bytes=%llu dropped_tx_bytes=%llu clients=%llu\n", tag,
                (unsigned long long)s.cycles, secs, (unsigned long long)s.rx_bytes, (unsigned long long)s.tx_bytes,
                (unsigned long long)s.dropped, (unsigned long long)s.clients);
    std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
    Options opt = parse_options(argc, argv);

    struct sigaction sa {};
    sa.sa_handler = on_stop;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, nullptr);
    sigaction(SIGINT, &sa, nullptr);
    sa.sa_handler = on_stats;
    sigaction(SIGUSR1, &sa, nullptr);
    std::signal(SIGPIPE, SIG_IGN);

    // ---- the listening socket (loopback only)
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    if (lfd < 0) die("socket");
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(uint16_t(opt.port));
    if (bind(lfd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) < 0) die("bind 127.0.0.1");
    if (listen(lfd, 4) < 0) die("listen");
    set_nonblocking(lfd);
    socklen_t alen = sizeof addr;
    if (getsockname(lfd, reinterpret_cast<sockaddr*>(&addr), &alen) < 0) die("getsockname");

    // ---- the model, reset
    auto ctx = std::make_unique<VerilatedContext>();
    ctx->commandArgs(argc, argv);
    auto top = std::make_unique<Vboard>(ctx.get(), "board");
#ifdef ECHOBOARD_TRACE
    std::unique_ptr<VerilatedVcdC> vcd;
    if (!opt.trace.empty()) {
        ctx->traceEverOn(true);
        vcd = std::make_unique<VerilatedVcdC>();
        top->trace(vcd.get(), 99);
        vcd->open(opt.trace.c_str());
        if (!vcd->isOpen()) die(("--trace " + opt.trace).c_str());
    }
#define TRACE_DUMP(t) do { if (vcd) vcd->dump(5 * (t)); } while (0)  // t in half cycles, the trace in ns
#else
#define TRACE_DUMP(t) do {} while (0)
#endif
    uint64_t now = 0;  // half clock cycles since the start (the trace's time)
    top->RX_VALID = 0;
    top->RX_PAYLOAD = 0;
    top->TX_READY = 0;
    top->rst = 1;
    for (uint64_t i = 0; i < opt.reset_cycles; ++i) {
        top->clk = 0; top->eval(); TRACE_DUMP(now++);
        top->clk = 1; top->eval(); TRACE_DUMP(now++);
    }
    top->rst = 0;
    ctx->time(now);

    std::printf("PORT %u\n", unsigned(ntohs(addr.sin_port)));
    std::fflush(stdout);

    static Ring<16> rx;  // client -> board
    static Ring<16> tx;  // board -> client
    int cfd = -1;        // the connected client, or -1
    bool stdin_open = opt.exit_on_stdin_eof;
    Stats st;
    uint64_t last_activity = 0;  // cycle of the last byte moved (board or socket)
    const auto t0 = std::chrono::steady_clock::now();

    auto drop_client = [&](const char* why) {
        std::fprintf(stderr, "board_sim: client disconnected (%s) after cycle %llu\n", why,
                     (unsigned long long)st.cycles);
        close(cfd);
        cfd = -1;
        tx.clear();  // unsent replies belonged to that client; received bytes still reach the board
    };

    while (!g_stop) {
        // ---- run a batch of cycles: no system calls in here
        uint64_t batch = opt.poll_cycles;
        if (opt.max_cycles && opt.max_cycles - st.cycles < batch) batch = opt.max_cycles - st.cycles;
        const bool sink = cfd < 0;  // no client: accept and drop the board's output
        uint64_t rx_head = rx.head, tx_tail = tx.tail;
        const uint64_t rx_tail = rx.tail, tx_limit = tx.head + tx.CAP;
        for (uint64_t i = 0; i < batch; ++i) {
            const bool rv = rx_head != rx_tail;
            const bool tr = sink || tx_tail != tx_limit;
            top->RX_VALID = rv;
            top->RX_PAYLOAD = rx.buf[rx_head & rx.MASK];
            top->TX_READY = tr;
            top->clk = 0;
            top->eval();
            TRACE_DUMP(now + 2 * i);
            const bool rx_fire = rv && top->RX_READY;
            const bool tx_fire = tr && top->TX_VALID;
            const uint8_t byte = top->TX_PAYLOAD;
            top->clk = 1;
            top->eval();
            TRACE_DUMP(now + 2 * i + 1);
            rx_head += rx_fire;
            if (tx_fire) {
                if (sink) ++st.dropped;
                else tx.buf[tx_tail++ & tx.MASK] = byte;
            }
        }
        now += 2 * batch;
        ctx->time(now);
        const uint64_t moved = (rx_head - rx.head) + (tx_tail - tx.tail);
        st.rx_bytes += rx_head - rx.head;
        st.tx_bytes += tx_tail - tx.tail;
        rx.head = rx_head;
        tx.tail = tx_tail;
        st.cycles += batch;
        if (moved) last_activity = st.cycles;
        if (opt.max_cycles && st.cycles >= opt.max_cycles) break;

        // ---- poll the socket(s) once
        pollfd fds[2];
        int nfds = 0;
        if (cfd >= 0) {
            fds[nfds++] = {cfd, short((rx.space() ? POLLIN : 0) | (tx.empty() ? 0 : POLLOUT)), 0};
        } else {
            fds[nfds++] = {lfd, POLLIN, 0};
        }
        if (stdin_open) fds[nfds++] = {0, POLLIN, 0};
        const bool idle = opt.idle_cycles && st.cycles - last_activity >= opt.idle_cycles && rx.empty() &&
                          tx.empty() && !top->TX_VALID;
        int n = poll(fds, nfds, idle ? int(opt.idle_sleep_ms) : 0);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("poll");
        }
        if (g_stats) {
            g_stats = 0;
            print_stats(st, t0, "STATS");
        }
        if (n == 0) continue;
        if (stdin_open && fds[nfds - 1].revents) {
            char junk[256];
            ssize_t r = read(0, junk, sizeof junk);
            if (r == 0 || (r < 0 && errno != EINTR && errno != EAGAIN)) {
                std::fprintf(stderr, "board_sim: stdin closed, stopping\n");
                break;
            }
        }
        if (cfd < 0) {
            if (fds[0].revents & POLLIN) {
                int fd = accept(lfd, nullptr, nullptr);
                if (fd >= 0) {
                    set_nonblocking(fd);
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    cfd = fd;
                    ++st.clients;
                    last_activity = st.cycles;
                    std::fprintf(stderr, "board_sim: client %llu connected at cycle %llu\n",
                                 (unsigned long long)st.clients, (unsigned long long)st.cycles);
                } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR && errno != ECONNABORTED) {
                    die("accept");
                }
            }
            continue;
        }
        const short ev = fds[0].revents;
        if (ev & (POLLIN | POLLHUP | POLLERR)) {
            // Read what fits (at most two contiguous pieces of the ring).
            for (int piece = 0; piece < 2 && rx.space(); ++piece) {
                uint64_t room;
                uint8_t* p = rx.write_ptr(room);
                ssize_t r = recv(cfd, p, room, 0);
                if (r > 0) {
                    rx.tail += uint64_t(r);
                    last_activity = st.cycles;
                    if (uint64_t(r) < room) break;
                } else if (r == 0) {
                    drop_client("end of stream");
                    break;
                } else {
                    if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) drop_client(std::strerror(errno));
                    break;
                }
            }
            if (cfd < 0) continue;
        }
        for (int piece = 0; piece < 2 && !tx.empty(); ++piece) {
            uint64_t len;
            const uint8_t* p = tx.read_ptr(len);
            ssize_t w = send(cfd, p, len, MSG_NOSIGNAL);
            if (w > 0) {
                tx.head += uint64_t(w);
                if (uint64_t(w) < len) break;
            } else {
                if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) drop_client(std::strerror(errno));
                break;
            }
        }
    }

    top->final();
#ifdef ECHOBOARD_TRACE
    if (vcd) vcd->close();
#endif
    if (cfd >= 0) close(cfd);
    close(lfd);
    print_stats(st, t0, "STATS");
    std::fprintf(stderr, "board_sim: stopped after %llu cycles\n", (unsigned long long)st.cycles);
    return 0;
}
