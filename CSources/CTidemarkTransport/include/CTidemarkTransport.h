/*
 * CTidemarkTransport: TLS 1.3 with mutual authentication over OpenSSL's
 * libssl, and the two socket calls the TCP listener needs that Swift's
 * Glibc module does not show. Only the TidemarkTransport target imports it
 * (Sources/TidemarkTransport/TLS.swift and Socket.swift wrap these; see
 * docs/dev/replication-interfaces.md).
 *
 * Why C: only what Swift cannot do directly: OpenSSL's macros
 * (SSL_CTX_set_min_proto_version, SNI), its error queue to a string, the
 * peer certificate's CN, the verification result, and a socket BIO that
 * sends with MSG_NOSIGNAL (no SIGPIPE when the peer went away); accept4 and
 * pipe2 are GNU extensions, which Swift's Glibc module (built without
 * _GNU_SOURCE) does not declare.
 *
 * The socket is non-blocking underneath: tm_tls_handshake/read/write return
 * TM_TLS_WANT_READ or TM_TLS_WANT_WRITE and the caller polls the fd, so a
 * reader and a writer thread can share one connection under a lock without
 * holding it while they wait. */
#ifndef CTIDEMARK_TRANSPORT_H
#define CTIDEMARK_TRANSPORT_H

#include <stddef.h>
#include <stdint.h>

struct tm_tls_ctx;
struct tm_tls;

/* Results of tm_tls_handshake, tm_tls_read, tm_tls_write. */
enum {
    TM_TLS_OK = 0,
    TM_TLS_WANT_READ = 1,   /* poll the fd for POLLIN, then call again */
    TM_TLS_WANT_WRITE = 2,  /* poll the fd for POLLOUT, then call again */
    TM_TLS_EOF = 3,         /* the peer closed (close_notify or TCP FIN) */
    TM_TLS_SYSCALL = 4,     /* a socket error: *err_no holds errno */
    TM_TLS_PROTOCOL = 5,    /* a TLS failure: the message buffer says what */
};

/* What a failed handshake or read was about, for the caller's hint. */
enum {
    TM_TLS_PROBLEM_NONE = 0,
    TM_TLS_PROBLEM_PEER_EXPIRED = 1,        /* we rejected: peer cert expired */
    TM_TLS_PROBLEM_PEER_NOT_YET_VALID = 2,  /* we rejected: peer cert not yet valid */
    TM_TLS_PROBLEM_PEER_UNTRUSTED = 3,      /* we rejected: not issued by our CA */
    TM_TLS_PROBLEM_PEER_NAME_MISMATCH = 4,  /* we rejected: server cert lacks the name */
    TM_TLS_PROBLEM_PEER_NO_CERT = 5,        /* we rejected: the client sent no cert */
    TM_TLS_PROBLEM_PEER_OTHER_VERIFY = 6,   /* we rejected: another verify error */
    TM_TLS_PROBLEM_REJECTED_EXPIRED = 7,    /* the peer rejected our expired cert */
    TM_TLS_PROBLEM_REJECTED_UNTRUSTED = 8,  /* the peer does not trust our CA */
    TM_TLS_PROBLEM_REJECTED_NO_CERT = 9,    /* the peer requires a cert we did not send */
    TM_TLS_PROBLEM_REJECTED_OTHER = 10,     /* another alert from the peer */
    TM_TLS_PROBLEM_VERSION = 11,            /* no common protocol version (TLS 1.3 only) */
    TM_TLS_PROBLEM_NOT_TLS = 12,            /* the peer does not speak TLS */
};

/* accept4(SOCK_CLOEXEC) and pipe2(O_CLOEXEC|O_NONBLOCK): GNU extensions
 * Swift's Glibc module does not declare. fd / 0, or -errno. */
struct sockaddr;
int tm_accept_cloexec(int fd, struct sockaddr *addr, unsigned int *len);
int tm_pipe_cloexec_nonblock(int fds[2]);

/* The TLS 1.3 cipher suites both sides allow, in order of preference
 * (see tm_tls_ctx_new in tls.c for why AES-128-GCM comes first). */
#define TM_TLS_CIPHERSUITES "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"

/* Which file of a context failed to load (tm_tls_ctx_new). */
enum {
    TM_TLS_FILE_NONE = 0,
    TM_TLS_FILE_CA = 1,
    TM_TLS_FILE_CERT = 2,
    TM_TLS_FILE_KEY = 3,
    TM_TLS_FILE_KEY_MISMATCH = 4,
};

/* A TLS 1.3-only context. Server: requires and verifies a client cert
 * (SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT) against ca_path.
 * Client: verifies the server cert against ca_path. Both present
 * cert_path (PEM chain) and key_path; the key must match the cert.
 * Returns NULL on failure with *which_file (TM_TLS_FILE_*) and msg. */
struct tm_tls_ctx *tm_tls_ctx_new(int is_server, const char *ca_path, const char *cert_path,
                                  const char *key_path, int *which_file, char *msg, size_t msglen);
void tm_tls_ctx_free(struct tm_tls_ctx *ctx);

/* A connection over fd (which the caller owns and has made non-blocking).
 * For a client, verify_name is the host name or IP address the server
 * certificate must carry (and the SNI name); NULL for a server. */
struct tm_tls *tm_tls_new(struct tm_tls_ctx *ctx, int fd, const char *verify_name, char *msg, size_t msglen);
void tm_tls_free(struct tm_tls *t);

/* One step of the handshake. On TM_TLS_PROTOCOL, msg holds e.g.
 * "certificate verify failed (certificate has expired)" and *problem a
 * TM_TLS_PROBLEM_*. */
int tm_tls_handshake(struct tm_tls *t, int *err_no, int *problem, char *msg, size_t msglen);
/* Reads up to len bytes; *done is the count on TM_TLS_OK. */
int tm_tls_read(struct tm_tls *t, void *buf, size_t len, size_t *done, int *err_no, int *problem,
                char *msg, size_t msglen);
/* Writes up to len bytes (partial writes allowed); *done on TM_TLS_OK.
 * After WANT_*, call again with the same buf and len. */
int tm_tls_write(struct tm_tls *t, const void *buf, size_t len, size_t *done, int *err_no, int *problem,
                 char *msg, size_t msglen);
/* Non-zero when the connection holds buffered data, read or decrypted
 * (SSL_has_pending): a read returns without touching the socket. */
int tm_tls_has_pending(struct tm_tls *t);
/* Sends close_notify once, without waiting for the peer's. Best effort. */
void tm_tls_close_notify(struct tm_tls *t);

/* CN of the verified peer certificate into buf ("" if none). */
void tm_tls_peer_common_name(struct tm_tls *t, char *buf, size_t len);
/* "TLSv1.3" */
const char *tm_tls_protocol_version(struct tm_tls *t);
/* The negotiated cipher suite ("TLS_AES_128_GCM_SHA256"), "" before the handshake. */
const char *tm_tls_cipher_name(struct tm_tls *t);

#endif
