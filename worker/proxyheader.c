/*
 * The PROXY protocol header towards the backend, version 1 (text) or 2 (binary with
 * TLVs), as haproxy's doc/proxy-protocol.txt defines it. Built once per connection, after
 * the handshake and the backend connect, into the start of the client-to-backend relay
 * buffer: the relay's own writes send it, short writes and backpressure included.
 */
#include "config.h"

#include "worker/proxyheader.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include "worker/conn.h"
#include "worker/proxyread.h"
#include "worker/worker.h"

#define PP2_VERSION_PROXY 0x21 /* version 2, command PROXY */
#define PP2_FAM_UNSPEC 0x00
#define PP2_FAM_TCP4 0x11
#define PP2_FAM_TCP6 0x21

#define PP2_TYPE_ALPN 0x01
#define PP2_TYPE_AUTHORITY 0x02
#define PP2_TYPE_CRC32C 0x03
#define PP2_TYPE_SSL 0x20
#define PP2_SUBTYPE_SSL_VERSION 0x21
#define PP2_SUBTYPE_SSL_CN 0x22
#define PP2_SUBTYPE_SSL_CIPHER 0x23
#define PP2_SUBTYPE_SSL_SIG_ALG 0x24
#define PP2_SUBTYPE_SSL_KEY_ALG 0x25

#define PP2_CLIENT_SSL 0x01
#define PP2_CLIENT_CERT_CONN 0x02
#define PP2_CLIENT_CERT_SESS 0x04

/* Sent as the verify result when the client presented no certificate: "non-zero otherwise". */
#define PP2_VERIFY_NO_CERT 1u

static const unsigned char pp2_signature[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                                0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};

/* The client's and the frontend's addresses, IPv4-mapped ones (dual-stack "*:PORT") as IPv4. */
struct pp_addrs {
    int family; /* AF_INET, AF_INET6, or AF_UNSPEC when not both of one of those */
    struct sockaddr_storage src, dst;
};

/* Bounded output: once something did not fit, nothing more is written. */
struct pp_out {
    unsigned char *buf;
    size_t len, cap;
    bool overflow;
};

static void pp_put(struct pp_out *o, const void *data, size_t len)
{
    if (o->overflow || len > o->cap - o->len) {
        o->overflow = true;
        return;
    }
    memcpy(o->buf + o->len, data, len);
    o->len += len;
}

static void pp_put_u8(struct pp_out *o, unsigned v)
{
    unsigned char b = (unsigned char)v;

    pp_put(o, &b, 1);
}

static void pp_put_u16(struct pp_out *o, size_t v)
{
    unsigned char b[2] = {(unsigned char)(v >> 8), (unsigned char)v};

    pp_put(o, b, 2);
}

static void pp_put_u32(struct pp_out *o, uint32_t v)
{
    unsigned char b[4] = {(unsigned char)(v >> 24), (unsigned char)(v >> 16),
                          (unsigned char)(v >> 8), (unsigned char)v};

    pp_put(o, b, 4);
}

/* Fill in a 16-bit length written earlier as a placeholder at offset at. */
static void pp_patch_u16(struct pp_out *o, size_t at, size_t v)
{
    if (v > 0xffff) {
        o->overflow = true;
        return;
    }
    if (!o->overflow) {
        o->buf[at] = (unsigned char)(v >> 8);
        o->buf[at + 1] = (unsigned char)v;
    }
}

static void pp_tlv(struct pp_out *o, unsigned type, const void *value, size_t len)
{
    if (len > 0xffff) {
        o->overflow = true;
        return;
    }
    pp_put_u8(o, type);
    pp_put_u16(o, len);
    pp_put(o, value, len);
}

static void pp_tlv_str(struct pp_out *o, unsigned type, const char *value)
{
    if (value != NULL && value[0] != '\0')
        pp_tlv(o, type, value, strlen(value));
}

static void pp_unmap_v4(struct sockaddr_storage *ss)
{
    const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)ss;
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = sin6->sin6_port};

    memcpy(&sin.sin_addr, &sin6->sin6_addr.s6_addr[12], 4);
    memset(ss, 0, sizeof(*ss));
    memcpy(ss, &sin, sizeof(sin));
}

static bool pp_is_v4_mapped(const struct sockaddr_storage *ss)
{
    return ss->ss_family == AF_INET6 &&
           IN6_IS_ADDR_V4MAPPED(&((const struct sockaddr_in6 *)ss)->sin6_addr);
}

/* The socket's own addresses, or those a balancer's PROXY header gave (accept-proxy). */
static void pp_get_addrs(const struct conn *c, struct pp_addrs *a)
{
    socklen_t slen = sizeof(a->src), dlen = sizeof(a->dst);

    memset(a, 0, sizeof(*a));
    a->family = AF_UNSPEC;
    if (c->proxied != NULL) {
        a->src = c->proxied->src;
        a->dst = c->proxied->dst;
    } else if (getpeername(c->client.fd, (struct sockaddr *)&a->src, &slen) < 0 ||
               getsockname(c->client.fd, (struct sockaddr *)&a->dst, &dlen) < 0) {
        return;
    }
    if (pp_is_v4_mapped(&a->src) && pp_is_v4_mapped(&a->dst)) {
        pp_unmap_v4(&a->src);
        pp_unmap_v4(&a->dst);
    }
    if (a->src.ss_family == a->dst.ss_family &&
        (a->src.ss_family == AF_INET || a->src.ss_family == AF_INET6))
        a->family = a->src.ss_family;
}

static unsigned pp_port(const struct sockaddr_storage *ss)
{
    if (ss->ss_family == AF_INET)
        return ntohs(((const struct sockaddr_in *)ss)->sin_port);
    return ntohs(((const struct sockaddr_in6 *)ss)->sin6_port);
}

static const void *pp_ip(const struct sockaddr_storage *ss)
{
    if (ss->ss_family == AF_INET)
        return &((const struct sockaddr_in *)ss)->sin_addr;
    return &((const struct sockaddr_in6 *)ss)->sin6_addr;
}

/* "PROXY TCP4 192.0.2.1 192.0.2.2 51234 443\r\n", or "PROXY UNKNOWN\r\n". */
static size_t pp_v1(const struct pp_addrs *a, char *buf, size_t cap)
{
    char src[INET6_ADDRSTRLEN], dst[INET6_ADDRSTRLEN];
    int n;

    if (a->family == AF_UNSPEC || !inet_ntop(a->family, pp_ip(&a->src), src, sizeof(src)) ||
        !inet_ntop(a->family, pp_ip(&a->dst), dst, sizeof(dst)))
        n = snprintf(buf, cap, "PROXY UNKNOWN\r\n");
    else
        n = snprintf(buf, cap, "PROXY %s %s %s %u %u\r\n", a->family == AF_INET ? "TCP4" : "TCP6",
                     src, dst, pp_port(&a->src), pp_port(&a->dst));
    return n > 0 && (size_t)n < cap ? (size_t)n : 0;
}

static void pp_v2_addrs(struct pp_out *o, const struct pp_addrs *a)
{
    size_t iplen = a->family == AF_INET ? 4 : 16;

    if (a->family == AF_UNSPEC)
        return;
    pp_put(o, pp_ip(&a->src), iplen);
    pp_put(o, pp_ip(&a->dst), iplen);
    pp_put_u16(o, pp_port(&a->src));
    pp_put_u16(o, pp_port(&a->dst));
}

/* The subject's CN as UTF-8 into buf; false when there is none or it does not fit. */
static bool pp_cert_cn(X509 *cert, char *buf, size_t size)
{
    const X509_NAME *name = X509_get_subject_name(cert);
    int i = name != NULL ? X509_NAME_get_index_by_NID(name, NID_commonName, -1) : -1;
    unsigned char *utf8 = NULL;

    if (i < 0)
        return false;
    int n = ASN1_STRING_to_UTF8(&utf8, X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, i)));
    bool fits = n > 0 && (size_t)n < size && memchr(utf8, '\0', (size_t)n) == NULL;
    if (fits) {
        memcpy(buf, utf8, (size_t)n);
        buf[n] = '\0';
    }
    OPENSSL_free(utf8);
    return fits;
}

/* haproxy's names for the server certificate's key: "EC256", "RSA2048"; else OpenSSL's. */
static void pp_key_alg(X509 *cert, char *buf, size_t size)
{
    EVP_PKEY *key = X509_get0_pubkey(cert);
    int type = key != NULL ? EVP_PKEY_get_base_id(key) : NID_undef;

    switch (type) {
    case EVP_PKEY_RSA:
        snprintf(buf, size, "RSA%d", EVP_PKEY_get_bits(key));
        break;
    case EVP_PKEY_EC:
        snprintf(buf, size, "EC%d", EVP_PKEY_get_bits(key));
        break;
    case EVP_PKEY_DSA:
        snprintf(buf, size, "DSA%d", EVP_PKEY_get_bits(key));
        break;
    case NID_undef:
        buf[0] = '\0';
        break;
    default:
        snprintf(buf, size, "%s", OBJ_nid2sn(type));
        break;
    }
}

/* PP2_TYPE_SSL: client flags, verify result, then version, CN, cipher, sig and key alg. */
static void pp_v2_ssl(struct pp_out *o, SSL *ssl)
{
    X509 *peer = SSL_get0_peer_certificate(ssl);
    X509 *own = SSL_get_certificate(ssl);
    unsigned client = PP2_CLIENT_SSL;
    uint32_t verify = PP2_VERIFY_NO_CERT;
    char cn[1024], key_alg[64];

    if (peer != NULL) {
        /* A resumed session carries the certificate of the handshake that made it. */
        client |= PP2_CLIENT_CERT_SESS | (SSL_session_reused(ssl) ? 0 : PP2_CLIENT_CERT_CONN);
        verify = (uint32_t)SSL_get_verify_result(ssl);
    }
    pp_put_u8(o, PP2_TYPE_SSL);
    size_t len_at = o->len;
    pp_put_u16(o, 0);
    pp_put_u8(o, client);
    pp_put_u32(o, verify);
    pp_tlv_str(o, PP2_SUBTYPE_SSL_VERSION, SSL_get_version(ssl));
    if (peer != NULL && verify == 0 && pp_cert_cn(peer, cn, sizeof(cn)))
        pp_tlv_str(o, PP2_SUBTYPE_SSL_CN, cn);
    pp_tlv_str(o, PP2_SUBTYPE_SSL_CIPHER, SSL_get_cipher_name(ssl));
    if (own != NULL) {
        pp_tlv_str(o, PP2_SUBTYPE_SSL_SIG_ALG, OBJ_nid2sn(X509_get_signature_nid(own)));
        pp_key_alg(own, key_alg, sizeof(key_alg));
        pp_tlv_str(o, PP2_SUBTYPE_SSL_KEY_ALG, key_alg);
    }
    pp_patch_u16(o, len_at, o->len - len_at - 2);
}

static size_t pp_v2(const struct conn *c, const struct pp_addrs *a, void *buf, size_t cap)
{
    struct pp_out o = {.buf = buf, .cap = cap};
    SSL *ssl = c->client.ssl;
    const unsigned char *alpn = NULL;
    unsigned alpn_len = 0;
    size_t crc_at = 0;

    pp_put(&o, pp2_signature, sizeof(pp2_signature));
    pp_put_u8(&o, PP2_VERSION_PROXY);
    pp_put_u8(&o, a->family == AF_INET    ? PP2_FAM_TCP4
                  : a->family == AF_INET6 ? PP2_FAM_TCP6
                                          : PP2_FAM_UNSPEC);
    pp_put_u16(&o, 0);
    pp_v2_addrs(&o, a);
    if (c->fe->conf->proxy_crc) {
        static const unsigned char zero[4];
        crc_at = o.len + 3;
        pp_tlv(&o, PP2_TYPE_CRC32C, zero, sizeof(zero));
    }
    SSL_get0_alpn_selected(ssl, &alpn, &alpn_len);
    if (alpn_len > 0)
        pp_tlv(&o, PP2_TYPE_ALPN, alpn, alpn_len);
    pp_tlv_str(&o, PP2_TYPE_AUTHORITY, SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name));
    pp_v2_ssl(&o, ssl);
    pp_patch_u16(&o, sizeof(pp2_signature) + 2, o.len - sizeof(pp2_signature) - 4);
    if (o.overflow)
        return 0;
    if (crc_at != 0) {
        /* Over the whole header, with the checksum field still zero; sent big-endian. */
        uint32_t crc = proxyheader_crc32c(o.buf, o.len);
        for (int i = 0; i < 4; i++)
            o.buf[crc_at + (size_t)i] = (unsigned char)(crc >> (24 - 8 * i));
    }
    return o.len;
}

size_t proxyheader_build(const struct conn *c, void *buf, size_t cap)
{
    struct pp_addrs a;

    pp_get_addrs(c, &a);
    switch (c->fe->conf->proxy_protocol) {
    case PROXY_PROTOCOL_V1:
        return pp_v1(&a, buf, cap);
    case PROXY_PROTOCOL_V2:
        return pp_v2(c, &a, buf, cap);
    case PROXY_PROTOCOL_OFF:
        break;
    }
    return 0;
}

/*
 * CRC32c, the Castagnoli polynomial reflected (0x82F63B78), four bits at a time from a
 * 16-entry table: a header is a few hundred bytes once per connection. Checked against
 * RFC 3720 Appendix B.4: 32 bytes of 0x00 give 0x8A9136AA, 32 of 0xFF give 0x62A8AB43,
 * 0x00..0x1F give 0x46DD794E (and "123456789" gives 0xE3069283); t/proxy-protocol.t
 * verifies the header's checksum with its own implementation tested on those vectors.
 */
uint32_t proxyheader_crc32c(const void *data, size_t len)
{
    static const uint32_t nibble[16] = {
        0x00000000, 0x105ec76f, 0x20bd8ede, 0x30e349b1, 0x417b1dbc, 0x5125dad3,
        0x61c69362, 0x7198540d, 0x82f63b78, 0x92a8fc17, 0xa24bb5a6, 0xb21572c9,
        0xc38d26c4, 0xd3d3e1ab, 0xe330a81a, 0xf36e6f75,
    };
    const unsigned char *p = data;
    uint32_t crc = 0xffffffffu;

    for (size_t i = 0; i < len; i++) {
        crc ^= p[i];
        crc = (crc >> 4) ^ nibble[crc & 0xf];
        crc = (crc >> 4) ^ nibble[crc & 0xf];
    }
    return crc ^ 0xffffffffu;
}
