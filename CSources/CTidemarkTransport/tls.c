/* tls.c: TLS 1.3 with mutual authentication over OpenSSL, and accept4/pipe2
 * (see include/CTidemarkTransport.h). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include "CTidemarkTransport.h"

struct tm_tls_ctx {
    SSL_CTX *ctx;
};

struct tm_tls {
    SSL *ssl;
    int fd;
    int last_errno; /* errno of the last failed send/recv (not EAGAIN) */
    int saw_eof;    /* recv returned 0 */
    int sent_close_notify;
};

int tm_accept_cloexec(int fd, struct sockaddr *addr, unsigned int *len) {
    socklen_t l = *len;
    int c = accept4(fd, addr, &l, SOCK_CLOEXEC);
    if (c < 0) return -errno;
    *len = l;
    return c;
}

int tm_pipe_cloexec_nonblock(int fds[2]) {
    return pipe2(fds, O_CLOEXEC | O_NONBLOCK) == 0 ? 0 : -errno;
}

/* ---- a socket BIO that never raises SIGPIPE ---- */

static BIO_METHOD *bio_method;
static pthread_once_t bio_once = PTHREAD_ONCE_INIT;

static int bio_write(BIO *b, const char *buf, int len) {
    struct tm_tls *t = BIO_get_data(b);
    ssize_t n;
    BIO_clear_retry_flags(b);
    do { n = send(t->fd, buf, (size_t)len, MSG_NOSIGNAL); } while (n < 0 && errno == EINTR);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) BIO_set_retry_write(b);
        else t->last_errno = errno;
        return -1;
    }
    return (int)n;
}

static int bio_read(BIO *b, char *buf, int len) {
    struct tm_tls *t = BIO_get_data(b);
    ssize_t n;
    BIO_clear_retry_flags(b);
    if (len <= 0) return 0;
    do { n = recv(t->fd, buf, (size_t)len, 0); } while (n < 0 && errno == EINTR);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) BIO_set_retry_read(b);
        else t->last_errno = errno;
        return -1;
    }
    if (n == 0) t->saw_eof = 1;
    return (int)n;
}

static int bio_puts(BIO *b, const char *s) { return bio_write(b, s, (int)strlen(s)); }

static long bio_ctrl(BIO *b, int cmd, long num, void *ptr) {
    struct tm_tls *t = BIO_get_data(b);
    (void)num; (void)ptr;
    switch (cmd) {
    case BIO_CTRL_FLUSH: return 1;
    case BIO_CTRL_EOF: return t != NULL && t->saw_eof;
    default: return 0;
    }
}

static int bio_create(BIO *b) { BIO_set_init(b, 1); return 1; }
static int bio_destroy(BIO *b) { (void)b; return 1; }

static void bio_method_init(void) {
    BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK | BIO_TYPE_DESCRIPTOR, "tm_socket");
    if (m == NULL) return;
    BIO_meth_set_write(m, bio_write);
    BIO_meth_set_read(m, bio_read);
    BIO_meth_set_puts(m, bio_puts);
    BIO_meth_set_ctrl(m, bio_ctrl);
    BIO_meth_set_create(m, bio_create);
    BIO_meth_set_destroy(m, bio_destroy);
    bio_method = m;
}

/* ---- errors ---- */

/* Appends the reasons of the thread's error queue to msg (clearing it) and
 * returns the first error code. */
static unsigned long drain_errors(char *msg, size_t msglen, const char *prefix) {
    unsigned long first = 0, e;
    size_t used = 0;
    int count = 0;
    if (msglen == 0) { ERR_clear_error(); return 0; }
    msg[0] = 0;
    if (prefix != NULL) used = (size_t)snprintf(msg, msglen, "%s", prefix);
    while ((e = ERR_get_error()) != 0) {
        const char *r = ERR_reason_error_string(e);
        char tmp[64];
        if (r == NULL) { snprintf(tmp, sizeof tmp, "error %lu", e); r = tmp; }
        if (first == 0) first = e;
        else if (strstr(msg, r) != NULL) continue;
        if (used < msglen)
            used += (size_t)snprintf(msg + used, msglen - used, "%s%s", count > 0 ? "; " : "", r);
        count++;
    }
    if (first == 0 && used < msglen) snprintf(msg + used, msglen - used, "unknown OpenSSL error");
    return first;
}

static int classify(struct tm_tls *t, unsigned long e, char *msg, size_t msglen) {
    long vr = SSL_get_verify_result(t->ssl);
    int reason = ERR_GET_REASON(e);
    if (e == 0) return TM_TLS_PROBLEM_NONE;
    if (ERR_GET_LIB(e) != ERR_LIB_SSL) return TM_TLS_PROBLEM_NONE;
    if (reason == SSL_R_CERTIFICATE_VERIFY_FAILED) {
        if (vr != X509_V_OK) {
            size_t used = strlen(msg);
            if (used < msglen) snprintf(msg + used, msglen - used, " (%s)", X509_verify_cert_error_string(vr));
        }
        switch (vr) {
        case X509_V_ERR_CERT_HAS_EXPIRED: return TM_TLS_PROBLEM_PEER_EXPIRED;
        case X509_V_ERR_CERT_NOT_YET_VALID: return TM_TLS_PROBLEM_PEER_NOT_YET_VALID;
        case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
        case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
        case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
        case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
        case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
        case X509_V_ERR_CERT_SIGNATURE_FAILURE:
            return TM_TLS_PROBLEM_PEER_UNTRUSTED;
        case X509_V_ERR_HOSTNAME_MISMATCH:
        case X509_V_ERR_IP_ADDRESS_MISMATCH:
            return TM_TLS_PROBLEM_PEER_NAME_MISMATCH;
        default: return TM_TLS_PROBLEM_PEER_OTHER_VERIFY;
        }
    }
    switch (reason) {
    case SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE: return TM_TLS_PROBLEM_PEER_NO_CERT;
    case SSL_R_SSLV3_ALERT_CERTIFICATE_EXPIRED: return TM_TLS_PROBLEM_REJECTED_EXPIRED;
    case SSL_R_TLSV1_ALERT_UNKNOWN_CA:
    case SSL_R_SSLV3_ALERT_BAD_CERTIFICATE:
    case SSL_R_SSLV3_ALERT_UNSUPPORTED_CERTIFICATE:
        return TM_TLS_PROBLEM_REJECTED_UNTRUSTED;
    case SSL_R_TLSV13_ALERT_CERTIFICATE_REQUIRED: return TM_TLS_PROBLEM_REJECTED_NO_CERT;
    case SSL_R_TLSV1_ALERT_PROTOCOL_VERSION:
    case SSL_R_UNSUPPORTED_PROTOCOL:
    case SSL_R_NO_PROTOCOLS_AVAILABLE:
        return TM_TLS_PROBLEM_VERSION;
    case SSL_R_WRONG_VERSION_NUMBER:
    case SSL_R_HTTP_REQUEST:
    case SSL_R_HTTPS_PROXY_REQUEST:
    case SSL_R_PACKET_LENGTH_TOO_LONG:
    case SSL_R_UNKNOWN_PROTOCOL:
        return TM_TLS_PROBLEM_NOT_TLS;
    default:
        if (reason >= SSL_AD_REASON_OFFSET && reason < SSL_AD_REASON_OFFSET + 256)
            return TM_TLS_PROBLEM_REJECTED_OTHER;
        return TM_TLS_PROBLEM_NONE;
    }
}

/* Maps the result r of an SSL_* call. */
static int map_result(struct tm_tls *t, int r, int *err_no, int *problem, char *msg, size_t msglen) {
    int e = SSL_get_error(t->ssl, r);
    *err_no = 0;
    *problem = TM_TLS_PROBLEM_NONE;
    switch (e) {
    case SSL_ERROR_WANT_READ: ERR_clear_error(); return TM_TLS_WANT_READ;
    case SSL_ERROR_WANT_WRITE: ERR_clear_error(); return TM_TLS_WANT_WRITE;
    case SSL_ERROR_ZERO_RETURN: ERR_clear_error(); return TM_TLS_EOF;
    case SSL_ERROR_SYSCALL:
        if (t->last_errno != 0) {
            *err_no = t->last_errno;
            t->last_errno = 0;
            ERR_clear_error();
            return TM_TLS_SYSCALL;
        }
        if (ERR_peek_error() == 0) return TM_TLS_EOF; /* EOF without close_notify */
        /* fall through */
    default: {
        unsigned long first = drain_errors(msg, msglen, NULL);
        *problem = classify(t, first, msg, msglen);
        return TM_TLS_PROTOCOL;
    }
    }
}

/* ---- contexts ---- */

struct tm_tls_ctx *tm_tls_ctx_new(int is_server, const char *ca_path, const char *cert_path,
                                  const char *key_path, int *which_file, char *msg, size_t msglen) {
    char prefix[4200];
    SSL_CTX *c;
    struct tm_tls_ctx *out;
    *which_file = TM_TLS_FILE_NONE;
    ERR_clear_error();
    c = SSL_CTX_new(is_server ? TLS_server_method() : TLS_client_method());
    if (c == NULL) { drain_errors(msg, msglen, "creating a TLS context: "); return NULL; }
    if (!SSL_CTX_set_min_proto_version(c, TLS1_3_VERSION) || !SSL_CTX_set_max_proto_version(c, TLS1_3_VERSION)) {
        drain_errors(msg, msglen, "restricting the TLS context to TLS 1.3: ");
        goto fail;
    }
    SSL_CTX_set_options(c, SSL_OP_IGNORE_UNEXPECTED_EOF | SSL_OP_NO_RENEGOTIATION);
    SSL_CTX_set_mode(c, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_CTX_set_session_cache_mode(c, SSL_SESS_CACHE_OFF);
    /* AES-128-GCM first (OpenSSL's default order puts AES-256-GCM first):
     * segments are already sealed with AES-256-GCM under the replication
     * key, so the record layer protects the channel (authentication,
     * metadata, frames) rather than the data's secrecy, and AES-128 costs
     * about 30% less CPU per byte. Both sides set the same order, so
     * whichever side's preference counts the result is the same; the other
     * TLS 1.3 suites stay allowed for peers that insist on them. */
    if (!SSL_CTX_set_ciphersuites(c, TM_TLS_CIPHERSUITES)) {
        drain_errors(msg, msglen, "setting the TLS 1.3 cipher suites: ");
        goto fail;
    }
    /* Read ahead: one recv takes every record already received, up to the
     * buffer (128 KiB: eight full records), instead of one recv for each
     * record's header and another for its body. The bytes it keeps are
     * covered by tm_tls_has_pending (SSL_has_pending), which callers ask
     * before they poll the socket. */
    SSL_CTX_set_read_ahead(c, 1);
    SSL_CTX_set_default_read_buffer_len(c, 128 * 1024);
    if (!SSL_CTX_load_verify_locations(c, ca_path, NULL)) {
        *which_file = TM_TLS_FILE_CA;
        snprintf(prefix, sizeof prefix, "cannot load the CA certificate %s: ", ca_path);
        drain_errors(msg, msglen, prefix);
        goto fail;
    }
    if (!SSL_CTX_use_certificate_chain_file(c, cert_path)) {
        *which_file = TM_TLS_FILE_CERT;
        snprintf(prefix, sizeof prefix, "cannot load the certificate %s: ", cert_path);
        drain_errors(msg, msglen, prefix);
        goto fail;
    }
    if (!SSL_CTX_use_PrivateKey_file(c, key_path, SSL_FILETYPE_PEM)) {
        *which_file = TM_TLS_FILE_KEY;
        if (ERR_GET_REASON(ERR_peek_last_error()) == X509_R_KEY_VALUES_MISMATCH) {
            *which_file = TM_TLS_FILE_KEY_MISMATCH;
            ERR_clear_error();
            snprintf(msg, msglen, "the private key %s does not belong to the certificate %s", key_path, cert_path);
        } else {
            snprintf(prefix, sizeof prefix, "cannot load the private key %s: ", key_path);
            drain_errors(msg, msglen, prefix);
        }
        goto fail;
    }
    if (!SSL_CTX_check_private_key(c)) {
        *which_file = TM_TLS_FILE_KEY_MISMATCH;
        ERR_clear_error();
        snprintf(msg, msglen, "the private key %s does not belong to the certificate %s", key_path, cert_path);
        goto fail;
    }
    if (is_server) {
        STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(ca_path);
        ERR_clear_error();
        if (names != NULL) SSL_CTX_set_client_CA_list(c, names);
        SSL_CTX_set_verify(c, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
        SSL_CTX_set_num_tickets(c, 0); /* no resumption: nothing after the handshake but data */
    } else {
        SSL_CTX_set_verify(c, SSL_VERIFY_PEER, NULL);
    }
    SSL_CTX_set_verify_depth(c, 8);
    out = calloc(1, sizeof *out);
    if (out == NULL) { snprintf(msg, msglen, "out of memory"); goto fail; }
    out->ctx = c;
    return out;
fail:
    SSL_CTX_free(c);
    return NULL;
}

void tm_tls_ctx_free(struct tm_tls_ctx *ctx) {
    if (ctx == NULL) return;
    SSL_CTX_free(ctx->ctx);
    free(ctx);
}

/* ---- connections ---- */

struct tm_tls *tm_tls_new(struct tm_tls_ctx *ctx, int fd, const char *verify_name, char *msg, size_t msglen) {
    struct tm_tls *t;
    BIO *b;
    ERR_clear_error();
    pthread_once(&bio_once, bio_method_init);
    if (bio_method == NULL) { snprintf(msg, msglen, "cannot create the socket BIO method"); return NULL; }
    t = calloc(1, sizeof *t);
    if (t == NULL) { snprintf(msg, msglen, "out of memory"); return NULL; }
    t->fd = fd;
    t->ssl = SSL_new(ctx->ctx);
    if (t->ssl == NULL) { drain_errors(msg, msglen, "creating a TLS connection: "); free(t); return NULL; }
    b = BIO_new(bio_method);
    if (b == NULL) { drain_errors(msg, msglen, "creating a socket BIO: "); SSL_free(t->ssl); free(t); return NULL; }
    BIO_set_data(b, t);
    SSL_set_bio(t->ssl, b, b);
    if (verify_name != NULL) {
        X509_VERIFY_PARAM *p = SSL_get0_param(t->ssl);
        unsigned char addr[16];
        int ok;
        X509_VERIFY_PARAM_set_hostflags(p, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
        if (inet_pton(AF_INET, verify_name, addr) == 1 || inet_pton(AF_INET6, verify_name, addr) == 1) {
            ok = X509_VERIFY_PARAM_set1_ip_asc(p, verify_name);
        } else {
            ok = X509_VERIFY_PARAM_set1_host(p, verify_name, 0) && SSL_set_tlsext_host_name(t->ssl, verify_name);
        }
        if (!ok) {
            char prefix[300];
            snprintf(prefix, sizeof prefix, "cannot verify against the server name '%.200s': ", verify_name);
            drain_errors(msg, msglen, prefix);
            SSL_free(t->ssl);
            free(t);
            return NULL;
        }
        SSL_set_connect_state(t->ssl);
    } else {
        SSL_set_accept_state(t->ssl);
    }
    return t;
}

void tm_tls_free(struct tm_tls *t) {
    if (t == NULL) return;
    SSL_free(t->ssl);
    free(t);
}

int tm_tls_handshake(struct tm_tls *t, int *err_no, int *problem, char *msg, size_t msglen) {
    int r;
    ERR_clear_error();
    r = SSL_do_handshake(t->ssl);
    if (r == 1) { *err_no = 0; *problem = TM_TLS_PROBLEM_NONE; return TM_TLS_OK; }
    return map_result(t, r, err_no, problem, msg, msglen);
}

int tm_tls_read(struct tm_tls *t, void *buf, size_t len, size_t *done, int *err_no, int *problem,
                char *msg, size_t msglen) {
    int r;
    *done = 0;
    ERR_clear_error();
    r = SSL_read_ex(t->ssl, buf, len, done);
    if (r == 1) { *err_no = 0; *problem = TM_TLS_PROBLEM_NONE; return TM_TLS_OK; }
    return map_result(t, r, err_no, problem, msg, msglen);
}

int tm_tls_write(struct tm_tls *t, const void *buf, size_t len, size_t *done, int *err_no, int *problem,
                 char *msg, size_t msglen) {
    int r;
    *done = 0;
    ERR_clear_error();
    r = SSL_write_ex(t->ssl, buf, len, done);
    if (r == 1) { *err_no = 0; *problem = TM_TLS_PROBLEM_NONE; return TM_TLS_OK; }
    return map_result(t, r, err_no, problem, msg, msglen);
}

int tm_tls_has_pending(struct tm_tls *t) {
    return SSL_has_pending(t->ssl);
}

void tm_tls_close_notify(struct tm_tls *t) {
    if (t == NULL || t->sent_close_notify || !SSL_is_init_finished(t->ssl)) return;
    t->sent_close_notify = 1;
    ERR_clear_error();
    (void)SSL_shutdown(t->ssl);
    ERR_clear_error();
}

void tm_tls_peer_common_name(struct tm_tls *t, char *buf, size_t len) {
    X509 *peer;
    X509_NAME *name;
    int idx;
    if (len == 0) return;
    buf[0] = 0;
    peer = SSL_get0_peer_certificate(t->ssl);
    if (peer == NULL) return;
    name = X509_get_subject_name(peer);
    idx = X509_NAME_get_index_by_NID(name, NID_commonName, -1);
    if (idx < 0) return;
    {
        ASN1_STRING *s = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, idx));
        unsigned char *utf8 = NULL;
        int n = ASN1_STRING_to_UTF8(&utf8, s);
        if (n < 0) { ERR_clear_error(); return; }
        snprintf(buf, len, "%.*s", n, (const char *)utf8);
        OPENSSL_free(utf8);
    }
}

const char *tm_tls_protocol_version(struct tm_tls *t) {
    return SSL_get_version(t->ssl);
}

const char *tm_tls_cipher_name(struct tm_tls *t) {
    const SSL_CIPHER *c = SSL_get_current_cipher(t->ssl);
    return c == NULL ? "" : SSL_CIPHER_get_name(c);
}
