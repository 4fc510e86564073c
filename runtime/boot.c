/* boot: TCP rendezvous (see boot.h for the protocol). */
#include "boot.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAGIC 0x42525344u /* "DSRB" little-endian */
#define VERSION 1u
#define HDR 12
#define MAXPAY 8192
#define MAXCONN 4096

enum { T_HELLO = 1, T_WELCOME = 2, T_FENCE = 3, T_FENCE_R = 4 };

typedef struct conn {
    int fd;
    int rank;      /* -1 until HELLO arrived */
    int answered;  /* rank 0 sent its WELCOME */
    char host[64];
    size_t have;
    uint8_t buf[HDR + MAXPAY];
} conn;

struct rt_boot {
    int rank, world;
    conn *up;     /* ranks != 0: connection to rank 0 (keeps bytes read ahead) */
    conn **peer;  /* rank 0: [world], peer[0] = NULL */
    uint32_t seq;
    int linger_ms;
    char host[64];
};

/* ---- time, encoding ---- */

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int left_ms(long long deadline)
{
    long long t = deadline - now_ms();
    return t < 0 ? 0 : t > 1000000000 ? 1000000000 : (int)t;
}

typedef struct wbuf {
    uint8_t b[HDR + MAXPAY];
    size_t n;
} wbuf;

static void put_u32(wbuf *w, uint32_t v)
{
    if (w->n + 4 > sizeof w->b)
        return;
    for (int i = 0; i < 4; i++)
        w->b[w->n++] = (uint8_t)(v >> (8 * i));
}

static void put_bytes(wbuf *w, const void *p, size_t n)
{
    if (w->n + n > sizeof w->b)
        return;
    memcpy(w->b + w->n, p, n);
    w->n += n;
}

static void put_str(wbuf *w, const char *s)
{
    size_t n = strlen(s);
    if (n > RT_BOOT_STR_MAX + 1024)
        n = RT_BOOT_STR_MAX + 1024;
    w->b[w->n++] = (uint8_t)n;
    w->b[w->n++] = (uint8_t)(n >> 8);
    put_bytes(w, s, n);
}

static void frame_begin(wbuf *w, uint32_t type)
{
    w->n = 0;
    put_u32(w, MAGIC);
    put_u32(w, type);
    put_u32(w, 0);
}

static void frame_end(wbuf *w)
{
    uint32_t len = (uint32_t)(w->n - HDR);
    for (int i = 0; i < 4; i++)
        w->b[8 + i] = (uint8_t)(len >> (8 * i));
}

typedef struct rbuf {
    const uint8_t *p;
    size_t n, off;
    int bad;
} rbuf;

static uint32_t get_u32(rbuf *r)
{
    if (r->off + 4 > r->n) {
        r->bad = 1;
        return 0;
    }
    uint32_t v = 0;
    for (int i = 0; i < 4; i++)
        v |= (uint32_t)r->p[r->off + i] << (8 * i);
    r->off += 4;
    return v;
}

static void get_bytes(rbuf *r, void *out, size_t n)
{
    if (r->off + n > r->n) {
        r->bad = 1;
        memset(out, 0, n);
        return;
    }
    memcpy(out, r->p + r->off, n);
    r->off += n;
}

static void get_str(rbuf *r, char *out, size_t cap)
{
    out[0] = 0;
    if (r->off + 2 > r->n) {
        r->bad = 1;
        return;
    }
    size_t n = r->p[r->off] | (size_t)r->p[r->off + 1] << 8;
    r->off += 2;
    if (r->off + n > r->n) {
        r->bad = 1;
        return;
    }
    size_t k = n < cap - 1 ? n : cap - 1;
    memcpy(out, r->p + r->off, k);
    out[k] = 0;
    /* strings end up in messages: keep them printable */
    for (size_t i = 0; i < k; i++)
        if ((unsigned char)out[i] < 0x20 || out[i] == 0x7f)
            out[i] = '?';
    r->off += n;
}

/* ---- sockets ---- */

static int set_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    return fl < 0 ? -1 : fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

static void tune(int fd)
{
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
}

/* 0 sent, -1 timeout, -2 peer gone */
static int send_all(int fd, const void *p, size_t n, long long deadline)
{
    const uint8_t *b = p;
    while (n) {
        ssize_t k = send(fd, b, n, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (k > 0) {
            b += k;
            n -= (size_t)k;
            continue;
        }
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            struct pollfd pf = {fd, POLLOUT, 0};
            int t = left_ms(deadline);
            if (t == 0)
                return -1;
            if (poll(&pf, 1, t) < 0 && errno != EINTR)
                return -2;
            continue;
        }
        return -2;
    }
    return 0;
}

/* Read what is available into c->buf. 1 = a whole frame is buffered, 0 = need more,
 * -2 = closed, -3 = error, -4 = not our protocol. */
static int conn_pump(conn *c)
{
    for (;;) {
        if (c->have >= HDR) {
            rbuf r = {c->buf, c->have, 0, 0};
            uint32_t magic = get_u32(&r), type = get_u32(&r), len = get_u32(&r);
            (void)type;
            if (magic != MAGIC || len > MAXPAY)
                return -4;
            if (c->have >= HDR + len)
                return 1;
        }
        size_t want = c->have < HDR ? HDR - c->have : sizeof c->buf - c->have;
        ssize_t k = recv(c->fd, c->buf + c->have, want, MSG_DONTWAIT);
        if (k > 0) {
            c->have += (size_t)k;
            continue;
        }
        if (k == 0)
            return -2;
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return 0;
        return -3;
    }
}

/* Drop the first frame from c->buf. */
static void conn_consume(conn *c)
{
    rbuf r = {c->buf + 8, 4, 0, 0};
    size_t len = HDR + get_u32(&r);
    memmove(c->buf, c->buf + len, c->have - len);
    c->have -= len;
}

static void frame_view(const conn *c, uint32_t *type, rbuf *payload)
{
    rbuf r = {c->buf, HDR, 0, 0};
    get_u32(&r);
    *type = get_u32(&r);
    uint32_t len = get_u32(&r);
    payload->p = c->buf + HDR;
    payload->n = len;
    payload->off = 0;
    payload->bad = 0;
}

/* Blocking read of one frame until deadline: 1 ok, -1 timeout, else conn_pump's codes. */
static int conn_read(conn *c, long long deadline)
{
    for (;;) {
        int rc = conn_pump(c);
        if (rc != 0)
            return rc;
        struct pollfd pf = {c->fd, POLLIN, 0};
        int t = left_ms(deadline);
        if (t == 0)
            return -1;
        if (poll(&pf, 1, t) < 0 && errno != EINTR)
            return -3;
    }
}

static conn *conn_new(int fd)
{
    conn *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->fd = fd;
    c->rank = -1;
    return c;
}

static void conn_free(conn *c)
{
    if (!c)
        return;
    if (c->fd >= 0)
        close(c->fd);
    free(c);
}

static void self_host(char out[64], const char *given)
{
    if (given && *given) {
        snprintf(out, 64, "%s", given);
        return;
    }
    if (gethostname(out, 64) != 0)
        snprintf(out, 64, "?");
    out[63] = 0;
}

static void hex16(const uint8_t d[16], char out[33])
{
    for (int i = 0; i < 16; i++)
        snprintf(out + 2 * i, 3, "%02x", d[i]);
}

/* ---- rank 0 ---- */

static int listen_on(int port, int *out, dsr1_err *err)
{
    int fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1, zero = 0;
    if (fd >= 0) {
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
        struct sockaddr_in6 a6 = {0};
        a6.sin6_family = AF_INET6;
        a6.sin6_addr = in6addr_any;
        a6.sin6_port = htons((uint16_t)port);
        if (bind(fd, (struct sockaddr *)&a6, sizeof a6) != 0) {
            int e = errno;
            close(fd);
            fd = -1;
            if (e == EADDRINUSE)
                return dsr1_err_set(err, DSR1_E_IO, RT_BOOT_ERR_LISTEN, e,
                                    "rank 0 cannot listen on port %d: %s (another dsr1 process "
                                    "or service holds it; choose MASTER_PORT)",
                                    port, strerror(e));
        }
    }
    if (fd < 0) { /* no IPv6 on this host */
        fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
            return dsr1_err_set(err, DSR1_E_IO, RT_BOOT_ERR_LISTEN, errno, "socket: %s",
                                strerror(errno));
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        struct sockaddr_in a4 = {0};
        a4.sin_family = AF_INET;
        a4.sin_addr.s_addr = htonl(INADDR_ANY);
        a4.sin_port = htons((uint16_t)port);
        if (bind(fd, (struct sockaddr *)&a4, sizeof a4) != 0) {
            int e = errno;
            close(fd);
            return dsr1_err_set(err, DSR1_E_IO, RT_BOOT_ERR_LISTEN, e,
                                "rank 0 cannot listen on port %d: %s%s", port, strerror(e),
                                e == EADDRINUSE ? " (another dsr1 process or service holds it; "
                                                  "choose MASTER_PORT)"
                                                : "");
        }
    }
    if (listen(fd, 1024) != 0 || set_nonblock(fd) != 0) {
        int e = errno;
        close(fd);
        return dsr1_err_set(err, DSR1_E_IO, RT_BOOT_ERR_LISTEN, e, "listen on port %d: %s",
                            port, strerror(e));
    }
    *out = fd;
    return 0;
}

typedef struct hello {
    uint32_t version, rank, world;
    uint8_t digest[16];
    char plan[RT_BOOT_STR_MAX], shard[RT_BOOT_STR_MAX], host[64];
} hello;

static int hello_parse(conn *c, hello *h)
{
    uint32_t type;
    rbuf r;
    frame_view(c, &type, &r);
    if (type != T_HELLO)
        return -1;
    h->version = get_u32(&r);
    h->rank = get_u32(&r);
    h->world = get_u32(&r);
    get_bytes(&r, h->digest, 16);
    get_str(&r, h->plan, sizeof h->plan);
    get_str(&r, h->shard, sizeof h->shard);
    get_str(&r, h->host, sizeof h->host);
    conn_consume(c);
    return r.bad ? -1 : 0;
}

/* Check a HELLO against rank 0's view; 0 ok, else writes msg and returns an error code. */
static int hello_check(const hello *h, const rt_boot_self *self, const rt_boot_opts *o,
                       conn *const *joined, char *msg, size_t cap)
{
    if (h->version != VERSION) {
        snprintf(msg, cap,
                 "rank %u (host %s) speaks bootstrap protocol version %u, rank 0 speaks %u: "
                 "run the same dsr1 build on every node",
                 h->rank, h->host, h->version, VERSION);
        return RT_BOOT_ERR_MISMATCH;
    }
    if ((int)h->world != self->world_size) {
        snprintf(msg, cap,
                 "rank %u (host %s) says world size %u, rank 0 (host %s) says %d: every rank "
                 "needs the same WORLD_SIZE / --world-size",
                 h->rank, h->host, h->world, self->host, self->world_size);
        return RT_BOOT_ERR_MISMATCH;
    }
    if (h->rank == 0) {
        snprintf(msg, cap, "two processes claim rank 0 (hosts %s and %s): check RANK / --rank",
                 self->host, h->host);
        return RT_BOOT_ERR_MISMATCH;
    }
    if ((int)h->rank >= self->world_size) {
        snprintf(msg, cap,
                 "a process on host %s claims rank %u, outside 0..%d for world size %d: check "
                 "RANK / --rank there",
                 h->host, h->rank, self->world_size - 1, self->world_size);
        return RT_BOOT_ERR_MISMATCH;
    }
    if (joined[h->rank]) {
        snprintf(msg, cap, "rank %u joined twice (hosts %s and %s): check RANK / --rank",
                 h->rank, joined[h->rank]->host, h->host);
        return RT_BOOT_ERR_MISMATCH;
    }
    if (memcmp(h->digest, self->digest, 16) != 0) {
        char a[33], b[33];
        hex16(h->digest, a);
        hex16(self->digest, b);
        snprintf(msg, cap,
                 "rank %u (host %s) has manifest digest %s, rank 0 (host %s) has %s: every "
                 "node must hold the same manifest.json",
                 h->rank, h->host, a, self->host, b);
        return RT_BOOT_ERR_MISMATCH;
    }
    if (strcmp(h->plan, self->plan) != 0) {
        snprintf(msg, cap, "rank %u (host %s) runs plan \"%.300s\", rank 0 runs \"%.300s\"", h->rank,
                 h->host, h->plan, self->plan);
        return RT_BOOT_ERR_MISMATCH;
    }
    if (o->expect_shard && o->expect_shard[h->rank] &&
        strcmp(h->shard, o->expect_shard[h->rank]) != 0) {
        snprintf(msg, cap,
                 "rank %u (host %s) holds shard \"%.300s\", the manifest assigns \"%.300s\" to rank %u",
                 h->rank, h->host, h->shard, o->expect_shard[h->rank], h->rank);
        return RT_BOOT_ERR_MISMATCH;
    }
    return 0;
}

static void send_welcome(conn *c, int code, int world, const uint8_t *id, const char *msg)
{
    wbuf w;
    uint8_t zero[RT_BOOT_ID_BYTES] = {0};
    frame_begin(&w, T_WELCOME);
    put_u32(&w, (uint32_t)code);
    put_u32(&w, (uint32_t)world);
    put_bytes(&w, id ? id : zero, RT_BOOT_ID_BYTES);
    put_str(&w, msg);
    frame_end(&w);
    send_all(c->fd, w.b, w.n, now_ms() + 2000);
    c->answered = 1;
}

static int code_status(int code)
{
    return code == RT_BOOT_ERR_MISMATCH ? DSR1_E_MISMATCH : DSR1_E_IO;
}

static void list_missing(char *out, size_t cap, conn *const *joined, int world)
{
    size_t n = 0;
    int shown = 0, total = 0;
    out[0] = 0;
    for (int r = 1; r < world; r++) {
        if (joined[r])
            continue;
        total++;
        if (shown < 16 && n < cap) {
            n += (size_t)snprintf(out + n, cap - n, "%s%d", shown ? ", " : "", r);
            shown++;
        }
    }
    if (total > shown && n < cap)
        snprintf(out + n, cap - n, " and %d more", total - shown);
}

static int join_rank0(rt_boot *b, const rt_boot_self *self, const rt_boot_opts *o,
                      uint8_t *id_out, dsr1_err *err)
{
    int world = self->world_size;
    int timeout = o->timeout_ms > 0 ? o->timeout_ms : 300000;
    if (!o->unique_id)
        return dsr1_err_set(err, DSR1_E_INTERNAL, 0, 0, "rank 0 needs a unique id to hand out");
    if (id_out)
        memcpy(id_out, o->unique_id, RT_BOOT_ID_BYTES);
    if (world == 1)
        return 0;
    int lfd = -1, rc;
    if ((rc = listen_on(o->port, &lfd, err)))
        return rc;
    conn **pend = calloc(MAXCONN, sizeof *pend);
    struct pollfd *pf = calloc(MAXCONN + 1, sizeof *pf);
    if (!pend || !pf) {
        close(lfd);
        free(pend);
        free(pf);
        return dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
    }
    int npend = 0, njoined = 0, fail = 0, max_world = world, answered_fail = 0;
    char msg[DSR1_ERR_MSG] = "";
    long long deadline = now_ms() + timeout, linger_end = 0;

    for (;;) {
        if (!fail && njoined == world - 1)
            break;
        if (!fail && left_ms(deadline) == 0) {
            char miss[256];
            list_missing(miss, sizeof miss, b->peer, world);
            snprintf(msg, sizeof msg,
                     "rank(s) %s of world size %d did not join within %.1f s (rank 0 on host %s "
                     "listens on port %d): check that every process started and can reach it",
                     miss, world, timeout / 1000.0, self->host, o->port);
            fail = RT_BOOT_ERR_TIMEOUT;
        }
        if (fail && !linger_end) {
            /* everyone already here learns now; late ranks are answered while lingering */
            linger_end = now_ms() + b->linger_ms;
            for (int i = 0; i < npend; i++)
                if (pend[i]->rank >= 0 && !pend[i]->answered) {
                    send_welcome(pend[i], fail, world, NULL, msg);
                    answered_fail++;
                }
        }
        if (fail && (left_ms(linger_end) == 0 || answered_fail >= max_world - 1))
            break;

        int n = 0;
        pf[n++] = (struct pollfd){lfd, POLLIN, 0};
        for (int i = 0; i < npend; i++)
            if (!pend[i]->answered)
                pf[n++] = (struct pollfd){pend[i]->fd, POLLIN, 0};
        if (poll(pf, (nfds_t)n, left_ms(fail ? linger_end : deadline)) < 0 && errno != EINTR) {
            if (!fail) {
                snprintf(msg, sizeof msg, "rank 0: poll: %s", strerror(errno));
                fail = RT_BOOT_ERR_PEER;
            }
            continue;
        }
        if (pf[0].revents & POLLIN) {
            for (;;) {
                int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                if (fd < 0)
                    break;
                conn *c = npend < MAXCONN ? conn_new(fd) : NULL;
                if (!c) {
                    close(fd);
                    continue;
                }
                tune(fd);
                pend[npend++] = c;
            }
        }
        for (int i = 0; i < npend; i++) {
            conn *c = pend[i];
            if (c->answered)
                continue;
            int prc = conn_pump(c);
            if (prc == 0)
                continue;
            if (prc < 0 || c->rank >= 0) {
                /* a joined rank that closes or talks out of turn is dead to us; a stranger
                 * (port scanner, health check) is just dropped */
                if (c->rank >= 0 && !fail) {
                    snprintf(msg, sizeof msg,
                             prc < 0 ? "rank %d (host %s) closed its connection during the "
                                       "rendezvous (process exited or was killed)"
                                     : "rank %d (host %s) sent an unexpected message during the "
                                       "rendezvous",
                             c->rank, c->host);
                    fail = RT_BOOT_ERR_PEER;
                }
                if (c->rank >= 0 && c->rank < world && b->peer[c->rank] == c) {
                    b->peer[c->rank] = NULL;
                    njoined--;
                }
                conn_free(c);
                pend[i--] = pend[--npend];
                continue;
            }
            hello h;
            if (hello_parse(c, &h) != 0) {
                conn_free(c);
                pend[i--] = pend[--npend];
                continue;
            }
            snprintf(c->host, sizeof c->host, "%s", h.host);
            c->rank = h.rank < 1000000 ? (int)h.rank : 999999;
            if ((int)h.world > max_world && h.world < 1000000)
                max_world = (int)h.world;
            if (fail) {
                send_welcome(c, fail, world, NULL, msg);
                answered_fail++;
                continue;
            }
            int code = hello_check(&h, self, o, b->peer, msg, sizeof msg);
            if (code) {
                fail = code;
                continue;
            }
            b->peer[h.rank] = c;
            njoined++;
        }
    }
    close(lfd);
    free(pf);
    if (fail) {
        for (int i = 0; i < npend; i++)
            conn_free(pend[i]);
        for (int r = 0; r < world; r++)
            b->peer[r] = NULL;
        free(pend);
        return dsr1_err_set(err, code_status(fail), fail, 0, "rendezvous failed: %s", msg);
    }
    for (int i = 0; i < npend; i++)
        if (pend[i]->rank < 0)
            conn_free(pend[i]);
    free(pend);
    for (int r = 1; r < world; r++)
        send_welcome(b->peer[r], 0, world, o->unique_id, "");
    return 0;
}

/* ---- ranks != 0 ---- */

static int connect_once(const char *addr, int port, long long deadline, int *out, char *why,
                        size_t cap)
{
    char ps[16];
    snprintf(ps, sizeof ps, "%d", port);
    struct addrinfo hints = {0}, *ai = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    int g = getaddrinfo(addr, ps, &hints, &ai);
    if (g != 0) {
        snprintf(why, cap, "cannot resolve \"%s\": %s", addr, gai_strerror(g));
        return -1;
    }
    int ok = -1;
    for (struct addrinfo *p = ai; p && ok != 0; p = p->ai_next) {
        int fd = socket(p->ai_family, p->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
                        p->ai_protocol);
        if (fd < 0) {
            snprintf(why, cap, "socket: %s", strerror(errno));
            continue;
        }
        int rc = connect(fd, p->ai_addr, p->ai_addrlen);
        if (rc != 0 && errno == EINPROGRESS) {
            struct pollfd pf = {fd, POLLOUT, 0};
            int t = left_ms(deadline);
            if (t > 2000)
                t = 2000; /* SYNs into a black hole: try again rather than wait forever */
            int pr = poll(&pf, 1, t);
            if (pr == 1) {
                int e = 0;
                socklen_t el = sizeof e;
                getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &el);
                rc = e ? -1 : 0;
                errno = e;
            } else {
                rc = -1;
                errno = ETIMEDOUT;
            }
        }
        if (rc == 0) {
            tune(fd);
            *out = fd;
            ok = 0;
        } else {
            snprintf(why, cap, "%s", strerror(errno));
            close(fd);
        }
    }
    freeaddrinfo(ai);
    return ok;
}

static int join_peer(rt_boot *b, const rt_boot_self *self, const rt_boot_opts *o,
                     uint8_t *id_out, dsr1_err *err)
{
    int timeout = o->timeout_ms > 0 ? o->timeout_ms : 300000;
    const char *addr = o->addr && *o->addr ? o->addr : "127.0.0.1";
    long long deadline = now_ms() + timeout;
    char why[256] = "no attempt";
    int fd = -1, backoff = 50;
    while (connect_once(addr, o->port, deadline, &fd, why, sizeof why) != 0) {
        int t = left_ms(deadline);
        if (t == 0)
            return dsr1_err_set(err, DSR1_E_IO, RT_BOOT_ERR_CONNECT, 0,
                                "rendezvous failed: rank %d cannot reach rank 0 at %s:%d within "
                                "%.1f s (last error: %s): check that rank 0 runs and that "
                                "MASTER_ADDR/MASTER_PORT point to it",
                                self->rank, addr, o->port, timeout / 1000.0, why);
        struct timespec ts = {0, (long)(backoff < t ? backoff : t) * 1000000L};
        nanosleep(&ts, NULL);
        if (backoff < 1000)
            backoff *= 2;
    }
    b->up = conn_new(fd);
    if (!b->up) {
        close(fd);
        return dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
    }
    conn *c = b->up;
    wbuf w;
    frame_begin(&w, T_HELLO);
    put_u32(&w, VERSION);
    put_u32(&w, (uint32_t)self->rank);
    put_u32(&w, (uint32_t)self->world_size);
    put_bytes(&w, self->digest, 16);
    put_str(&w, self->plan);
    put_str(&w, self->shard);
    put_str(&w, b->host);
    frame_end(&w);
    /* rank 0 answers within its own timeout of its start, which is before our connect */
    long long reply_deadline = now_ms() + timeout + b->linger_ms + 5000;
    if (send_all(fd, w.b, w.n, reply_deadline) != 0)
        return dsr1_err_set(err, DSR1_E_IO, RT_BOOT_ERR_PEER, 0,
                            "rendezvous failed: rank 0 at %s:%d dropped the connection of rank "
                            "%d",
                            addr, o->port, self->rank);
    int rc = conn_read(c, reply_deadline);
    if (rc == -1)
        return dsr1_err_set(err, DSR1_E_IO, RT_BOOT_ERR_TIMEOUT, 0,
                            "rendezvous failed: rank 0 at %s:%d accepted rank %d but sent no "
                            "answer within %.1f s",
                            addr, o->port, self->rank, (reply_deadline - deadline) / 1000.0);
    if (rc < 0)
        return dsr1_err_set(err, DSR1_E_IO, RT_BOOT_ERR_PEER, 0,
                            "rendezvous failed: rank 0 at %s:%d %s before answering rank %d",
                            addr, o->port,
                            rc == -4 ? "spoke another protocol" : "closed the connection",
                            self->rank);
    uint32_t type;
    rbuf r;
    frame_view(c, &type, &r);
    uint32_t code = get_u32(&r), world = get_u32(&r);
    uint8_t id[RT_BOOT_ID_BYTES];
    get_bytes(&r, id, sizeof id);
    char msg[DSR1_ERR_MSG];
    get_str(&r, msg, sizeof msg);
    conn_consume(c);
    if (type != T_WELCOME || r.bad)
        return dsr1_err_set(err, DSR1_E_IO, RT_BOOT_ERR_PEER, 0,
                            "rendezvous failed: rank 0 at %s:%d sent a malformed answer", addr,
                            o->port);
    if (code != 0)
        return dsr1_err_set(err, code_status((int)code), (int)code, 0, "rendezvous failed: %s",
                            msg);
    if ((int)world != self->world_size)
        return dsr1_err_set(err, DSR1_E_MISMATCH, RT_BOOT_ERR_MISMATCH, 0,
                            "rendezvous failed: rank 0 says world size %u, rank %d says %d",
                            world, self->rank, self->world_size);
    if (id_out)
        memcpy(id_out, id, RT_BOOT_ID_BYTES);
    return 0;
}

int rt_boot_join(rt_boot **out, const rt_boot_self *self, const rt_boot_opts *o,
                 uint8_t id_out[RT_BOOT_ID_BYTES], dsr1_err *err)
{
    *out = NULL;
    if (self->world_size < 1 || self->rank < 0 || self->rank >= self->world_size)
        return dsr1_err_set(err, DSR1_E_USAGE, 0, 0, "rank %d is out of range for world size %d",
                            self->rank, self->world_size);
    if (o->port < 1 || o->port > 65535)
        return dsr1_err_set(err, DSR1_E_USAGE, 0, 0, "rendezvous port %d is out of range",
                            o->port);
    rt_boot *b = calloc(1, sizeof *b);
    if (!b)
        return dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
    b->rank = self->rank;
    b->world = self->world_size;
    b->linger_ms = o->linger_ms >= 0 ? o->linger_ms : 2000;
    self_host(b->host, self->host);
    int rc;
    if (self->rank == 0) {
        rt_boot_self me = *self;
        snprintf(me.host, sizeof me.host, "%s", b->host);
        b->peer = calloc((size_t)self->world_size, sizeof *b->peer);
        rc = b->peer ? join_rank0(b, &me, o, id_out, err)
                     : dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
    } else {
        rc = join_peer(b, self, o, id_out, err);
    }
    if (rc) {
        rt_boot_close(b);
        return rc;
    }
    *out = b;
    return 0;
}

/* ---- fence ---- */

static int fence_status(int code)
{
    return code == RT_BOOT_ERR_REMOTE ? DSR1_E_MISMATCH : DSR1_E_IO;
}

static void send_fence_reply(conn *c, uint32_t seq, int code, const char *msg)
{
    wbuf w;
    frame_begin(&w, T_FENCE_R);
    put_u32(&w, seq);
    put_u32(&w, (uint32_t)code);
    put_str(&w, msg);
    frame_end(&w);
    send_all(c->fd, w.b, w.n, now_ms() + 2000);
}

static int fence_rank0(rt_boot *b, const char *phase, int ok, const char *reason, int timeout,
                       dsr1_err *err)
{
    int world = b->world;
    uint32_t seq = ++b->seq;
    char *done = calloc((size_t)world, 1);
    struct pollfd *pf = calloc((size_t)world, sizeof *pf);
    int *who = calloc((size_t)world, sizeof *who);
    if (!done || !pf || !who) {
        free(done);
        free(pf);
        free(who);
        return dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
    }
    char msg[DSR1_ERR_MSG] = "";
    int fail = 0, ndone = 1;
    done[0] = 1;
    if (!ok) {
        snprintf(msg, sizeof msg, "rank 0 (host %s) failed '%s': %s", b->host, phase,
                 reason ? reason : "no reason given");
        fail = RT_BOOT_ERR_REMOTE;
    }
    long long deadline = now_ms() + timeout;
    long long drain_end = 0;
    while (ndone < world) {
        if (fail && !drain_end) {
            /* tell everyone now; then give the others a moment to send theirs, so rank 0
             * does not close sockets with unread data (which resets the connection) */
            for (int r = 1; r < world; r++)
                if (b->peer[r])
                    send_fence_reply(b->peer[r], seq, fail, msg);
            drain_end = now_ms() + b->linger_ms;
        }
        long long until = fail ? drain_end : deadline;
        if (left_ms(until) == 0) {
            if (!fail) {
                char miss[256] = "";
                size_t n = 0;
                int shown = 0, total = 0;
                for (int r = 1; r < world; r++)
                    if (!done[r]) {
                        total++;
                        if (shown < 16 && n < sizeof miss)
                            n += (size_t)snprintf(miss + n, sizeof miss - n, "%s%d",
                                                  shown++ ? ", " : "", r);
                    }
                if (total > shown && n < sizeof miss)
                    snprintf(miss + n, sizeof miss - n, " and %d more", total - shown);
                snprintf(msg, sizeof msg, "rank(s) %s did not finish '%s' within %.1f s", miss,
                         phase, timeout / 1000.0);
                fail = RT_BOOT_ERR_TIMEOUT;
                continue;
            }
            break;
        }
        int n = 0;
        for (int r = 1; r < world; r++)
            if (!done[r] && b->peer[r]) {
                pf[n] = (struct pollfd){b->peer[r]->fd, POLLIN, 0};
                who[n++] = r;
            }
        if (n == 0)
            break;
        if (poll(pf, (nfds_t)n, left_ms(until)) < 0 && errno != EINTR)
            break;
        for (int i = 0; i < n; i++) {
            if (!pf[i].revents)
                continue;
            int r = who[i];
            conn *c = b->peer[r];
            int prc = conn_pump(c);
            if (prc == 0)
                continue;
            done[r] = 1;
            ndone++;
            if (prc < 0) {
                if (!fail) {
                    snprintf(msg, sizeof msg,
                             "rank %d (host %s) closed its bootstrap connection before "
                             "finishing '%s' (process exited or was killed)",
                             r, c->host, phase);
                    fail = RT_BOOT_ERR_PEER;
                }
                conn_free(c);
                b->peer[r] = NULL;
                continue;
            }
            uint32_t type;
            rbuf rb;
            frame_view(c, &type, &rb);
            uint32_t s = get_u32(&rb), pok = get_u32(&rb);
            char ph[128], why[RT_BOOT_STR_MAX];
            get_str(&rb, ph, sizeof ph);
            get_str(&rb, why, sizeof why);
            conn_consume(c);
            if (fail)
                continue;
            if (type != T_FENCE || rb.bad || s != seq || strcmp(ph, phase) != 0) {
                snprintf(msg, sizeof msg,
                         "rank %d (host %s) is at phase '%s' (#%u), rank 0 at '%s' (#%u): ranks "
                         "run different code paths",
                         r, c->host, ph, s, phase, seq);
                fail = RT_BOOT_ERR_PEER;
            } else if (!pok) {
                snprintf(msg, sizeof msg, "rank %d (host %s) failed '%.100s': %.400s", r, c->host,
                         phase, why);
                fail = RT_BOOT_ERR_REMOTE;
            }
        }
    }
    if (!fail)
        for (int r = 1; r < world; r++)
            send_fence_reply(b->peer[r], seq, 0, "");
    else if (!drain_end)
        for (int r = 1; r < world; r++)
            if (b->peer[r])
                send_fence_reply(b->peer[r], seq, fail, msg);
    free(done);
    free(pf);
    free(who);
    if (fail)
        return dsr1_err_set(err, fence_status(fail), fail, 0, "%s", msg);
    return 0;
}

static int fence_peer(rt_boot *b, const char *phase, int ok, const char *reason, int timeout,
                      dsr1_err *err)
{
    uint32_t seq = ++b->seq;
    wbuf w;
    frame_begin(&w, T_FENCE);
    put_u32(&w, seq);
    put_u32(&w, (uint32_t)ok);
    put_str(&w, phase);
    put_str(&w, ok ? "" : reason ? reason : "no reason given");
    frame_end(&w);
    long long deadline = now_ms() + timeout + b->linger_ms + 5000;
    /* a failed send still leaves rank 0's verdict, if any, readable */
    send_all(b->up->fd, w.b, w.n, deadline);
    conn *c = b->up;
    int rc = conn_read(c, deadline);
    if (rc == -1)
        return dsr1_err_set(err, DSR1_E_IO, RT_BOOT_ERR_TIMEOUT, 0,
                            "rank 0 gave no verdict on '%s' within %.1f s", phase,
                            (timeout + b->linger_ms + 5000) / 1000.0);
    if (rc < 0)
        return dsr1_err_set(err, DSR1_E_IO, RT_BOOT_ERR_PEER, 0,
                            "rank 0 closed the bootstrap connection during '%s' (rank 0 exited "
                            "or was killed)",
                            phase);
    uint32_t type;
    rbuf rb;
    frame_view(c, &type, &rb);
    uint32_t s = get_u32(&rb), code = get_u32(&rb);
    char msg[DSR1_ERR_MSG];
    get_str(&rb, msg, sizeof msg);
    conn_consume(c);
    if (type != T_FENCE_R || rb.bad || s != seq)
        return dsr1_err_set(err, DSR1_E_IO, RT_BOOT_ERR_PEER, 0,
                            "rank 0 answered '%s' with a malformed message", phase);
    if (code)
        return dsr1_err_set(err, fence_status((int)code), (int)code, 0, "%s", msg);
    return 0;
}

int rt_boot_fence(rt_boot *b, const char *phase, int ok, const char *reason, int timeout_ms,
                  dsr1_err *err)
{
    if (timeout_ms <= 0)
        timeout_ms = 300000;
    if (b->world == 1)
        return ok ? 0
                  : dsr1_err_set(err, DSR1_E_MISMATCH, RT_BOOT_ERR_REMOTE, 0,
                                 "rank 0 (host %s) failed '%s': %s", b->host, phase,
                                 reason ? reason : "no reason given");
    return b->rank == 0 ? fence_rank0(b, phase, ok, reason, timeout_ms, err)
                        : fence_peer(b, phase, ok, reason, timeout_ms, err);
}

int rt_boot_rank(const rt_boot *b) { return b->rank; }
int rt_boot_world(const rt_boot *b) { return b->world; }

void rt_boot_close(rt_boot *b)
{
    if (!b)
        return;
    conn_free(b->up);
    if (b->peer) {
        for (int r = 0; r < b->world; r++)
            conn_free(b->peer[r]);
        free(b->peer);
    }
    free(b);
}
