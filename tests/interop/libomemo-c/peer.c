/*
 * libomemo-c interop peer for omemod's tests: one device, one namespace, driven by text lines.
 *
 * It does what Dino does around libomemo-c (Dino's OMEMO library): key generation and the bundle,
 * sessions built from a bundle or from a key exchange, the key element through libomemo-c's
 * session cipher, and the payload crypto around it with OpenSSL (OMEMO 0.3: AES-128-GCM with
 * key||tag in the key element; OMEMO 2: HKDF / AES-256-CBC / HMAC and the SCE envelope). XML
 * stays outside: the test harness turns fields into XEP-0384 elements and back.
 *
 * Protocol (tests/interop/README.md has the full table): one command per line, tokens separated by
 * single spaces, binary values in base64, "-" for "none". Every reply is one line, "ok k=v ..." or
 * "err <code> <text>". The process never exits on a bad command; "quit" or EOF ends it.
 *
 * Built by the test harness: cc peer.c $(pkg-config --cflags --libs libomemo-c openssl).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/rand.h>

#include <curve.h>
#include <key_helper.h>
#include <protocol.h>
#include <ratchet.h>
#include <session_builder.h>
#include <session_cipher.h>
#include <session_pre_key.h>
#include <signal_protocol.h>

#define MAX_TOKENS 16
#define OMEMO2_KEY_MATERIAL 48
#define OLD_KEY 16
#define OLD_IV 12
#define OLD_TAG 16

/* ---------------------------------------------------------------------------------------------
 * Small helpers
 * ------------------------------------------------------------------------------------------- */

typedef struct {
    uint8_t *data;
    size_t len;
} bytes;

static void bytes_free(bytes *b)
{
    if (b->data) {
        OPENSSL_cleanse(b->data, b->len);
        free(b->data);
    }
    b->data = NULL;
    b->len = 0;
}

static char *b64_encode(const uint8_t *data, size_t len)
{
    char *out = malloc(4 * ((len + 2) / 3) + 1);
    if (!out) {
        return NULL;
    }
    EVP_EncodeBlock((unsigned char *)out, data, (int)len);
    return out;
}

/* 0 on success; "-" is not base64 (callers check for it first). */
static int b64_decode(const char *text, bytes *out)
{
    size_t n = strlen(text);
    if (n % 4 != 0) {
        return -1;
    }
    out->data = malloc(n / 4 * 3 + 1);
    if (!out->data) {
        return -1;
    }
    int len = EVP_DecodeBlock(out->data, (const unsigned char *)text, (int)n);
    if (len < 0) {
        bytes_free(out);
        return -1;
    }
    /* EVP_DecodeBlock counts the padding as data. */
    if (n >= 1 && text[n - 1] == '=') {
        len--;
    }
    if (n >= 2 && text[n - 2] == '=') {
        len--;
    }
    out->len = (size_t)len;
    return 0;
}

static void reply_err(int code, const char *text)
{
    printf("err %d %s\n", code, text);
    fflush(stdout);
}

static const char *sg_error_name(int code)
{
    switch (code) {
    case SG_ERR_NOMEM: return "SG_ERR_NOMEM";
    case SG_ERR_INVAL: return "SG_ERR_INVAL";
    case SG_ERR_UNKNOWN: return "SG_ERR_UNKNOWN";
    case SG_ERR_DUPLICATE_MESSAGE: return "SG_ERR_DUPLICATE_MESSAGE";
    case SG_ERR_INVALID_KEY: return "SG_ERR_INVALID_KEY";
    case SG_ERR_INVALID_KEY_ID: return "SG_ERR_INVALID_KEY_ID";
    case SG_ERR_INVALID_MAC: return "SG_ERR_INVALID_MAC";
    case SG_ERR_INVALID_MESSAGE: return "SG_ERR_INVALID_MESSAGE";
    case SG_ERR_INVALID_VERSION: return "SG_ERR_INVALID_VERSION";
    case SG_ERR_LEGACY_MESSAGE: return "SG_ERR_LEGACY_MESSAGE";
    case SG_ERR_NO_SESSION: return "SG_ERR_NO_SESSION";
    case SG_ERR_STALE_KEY_EXCHANGE: return "SG_ERR_STALE_KEY_EXCHANGE";
    case SG_ERR_UNTRUSTED_IDENTITY: return "SG_ERR_UNTRUSTED_IDENTITY";
    case SG_ERR_INVALID_PROTO_BUF: return "SG_ERR_INVALID_PROTO_BUF";
    default: return "SG_ERR_OTHER";
    }
}

static void reply_sg(int code, const char *what)
{
    printf("err %d %s in %s\n", code, sg_error_name(code), what);
    fflush(stdout);
}

/* ---------------------------------------------------------------------------------------------
 * Crypto provider (OpenSSL)
 * ------------------------------------------------------------------------------------------- */

static int cp_random(uint8_t *data, size_t len, void *user_data)
{
    (void)user_data;
    return RAND_bytes(data, (int)len) == 1 ? 0 : SG_ERR_UNKNOWN;
}

static int cp_hmac_init(void **ctx, const uint8_t *key, size_t key_len, void *user_data)
{
    (void)user_data;
    EVP_MAC *mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    EVP_MAC_CTX *c = mac ? EVP_MAC_CTX_new(mac) : NULL;
    EVP_MAC_free(mac);
    if (!c) {
        return SG_ERR_NOMEM;
    }
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, "SHA256", 0),
        OSSL_PARAM_construct_end(),
    };
    if (EVP_MAC_init(c, key, key_len, params) != 1) {
        EVP_MAC_CTX_free(c);
        return SG_ERR_UNKNOWN;
    }
    *ctx = c;
    return 0;
}

static int cp_hmac_update(void *ctx, const uint8_t *data, size_t len, void *user_data)
{
    (void)user_data;
    return EVP_MAC_update(ctx, data, len) == 1 ? 0 : SG_ERR_UNKNOWN;
}

static int cp_hmac_final(void *ctx, signal_buffer **output, void *user_data)
{
    (void)user_data;
    uint8_t md[EVP_MAX_MD_SIZE];
    size_t len = 0;
    if (EVP_MAC_final(ctx, md, &len, sizeof md) != 1) {
        return SG_ERR_UNKNOWN;
    }
    *output = signal_buffer_create(md, len);
    return *output ? 0 : SG_ERR_NOMEM;
}

static void cp_hmac_cleanup(void *ctx, void *user_data)
{
    (void)user_data;
    EVP_MAC_CTX_free(ctx);
}

static int cp_sha512_init(void **ctx, void *user_data)
{
    (void)user_data;
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    if (!c) {
        return SG_ERR_NOMEM;
    }
    if (EVP_DigestInit_ex(c, EVP_sha512(), NULL) != 1) {
        EVP_MD_CTX_free(c);
        return SG_ERR_UNKNOWN;
    }
    *ctx = c;
    return 0;
}

static int cp_sha512_update(void *ctx, const uint8_t *data, size_t len, void *user_data)
{
    (void)user_data;
    return EVP_DigestUpdate(ctx, data, len) == 1 ? 0 : SG_ERR_UNKNOWN;
}

static int cp_sha512_final(void *ctx, signal_buffer **output, void *user_data)
{
    (void)user_data;
    uint8_t md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    if (EVP_DigestFinal_ex(ctx, md, &len) != 1) {
        return SG_ERR_UNKNOWN;
    }
    /* libsignal reuses the context for the next digest. */
    if (EVP_DigestInit_ex(ctx, EVP_sha512(), NULL) != 1) {
        return SG_ERR_UNKNOWN;
    }
    *output = signal_buffer_create(md, len);
    return *output ? 0 : SG_ERR_NOMEM;
}

static void cp_sha512_cleanup(void *ctx, void *user_data)
{
    (void)user_data;
    EVP_MD_CTX_free(ctx);
}

static const EVP_CIPHER *aes_cipher(int cipher, size_t key_len)
{
    if (cipher == SG_CIPHER_AES_CBC_PKCS5) {
        switch (key_len) {
        case 16: return EVP_aes_128_cbc();
        case 24: return EVP_aes_192_cbc();
        case 32: return EVP_aes_256_cbc();
        }
    } else if (cipher == SG_CIPHER_AES_CTR_NOPADDING) {
        switch (key_len) {
        case 16: return EVP_aes_128_ctr();
        case 24: return EVP_aes_192_ctr();
        case 32: return EVP_aes_256_ctr();
        }
    }
    return NULL;
}

static int aes_run(int enc, signal_buffer **output, int cipher, const uint8_t *key, size_t key_len,
                   const uint8_t *iv, size_t iv_len, const uint8_t *in, size_t in_len)
{
    const EVP_CIPHER *c = aes_cipher(cipher, key_len);
    if (!c || iv_len != 16) {
        return SG_ERR_UNKNOWN;
    }
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    uint8_t *out = malloc(in_len + 32);
    int n = 0, m = 0, ok = ctx && out;
    ok = ok && EVP_CipherInit_ex(ctx, c, NULL, key, iv, enc) == 1;
    ok = ok && EVP_CipherUpdate(ctx, out, &n, in, (int)in_len) == 1;
    ok = ok && EVP_CipherFinal_ex(ctx, out + n, &m) == 1;
    if (ok) {
        *output = signal_buffer_create(out, (size_t)(n + m));
        ok = *output != NULL;
    }
    EVP_CIPHER_CTX_free(ctx);
    if (out) {
        OPENSSL_cleanse(out, in_len + 32);
        free(out);
    }
    return ok ? 0 : SG_ERR_UNKNOWN;
}

static int cp_encrypt(signal_buffer **output, int cipher, const uint8_t *key, size_t key_len,
                      const uint8_t *iv, size_t iv_len, const uint8_t *plaintext,
                      size_t plaintext_len, void *user_data)
{
    (void)user_data;
    return aes_run(1, output, cipher, key, key_len, iv, iv_len, plaintext, plaintext_len);
}

static int cp_decrypt(signal_buffer **output, int cipher, const uint8_t *key, size_t key_len,
                      const uint8_t *iv, size_t iv_len, const uint8_t *ciphertext,
                      size_t ciphertext_len, void *user_data)
{
    (void)user_data;
    return aes_run(0, output, cipher, key, key_len, iv, iv_len, ciphertext, ciphertext_len);
}

/* ---------------------------------------------------------------------------------------------
 * In-memory stores (one device, one namespace)
 * ------------------------------------------------------------------------------------------- */

typedef struct {
    char *name;
    size_t name_len;
    int32_t device_id;
    bytes record;
} session_entry;

typedef struct {
    uint32_t id;
    bytes record;
} key_entry;

static struct {
    int version; /* 3 = OMEMO 0.3, 4 = OMEMO 2 */
    char *jid;
    uint32_t device_id;
    signal_context *ctx;
    signal_protocol_store_context *store;
    ratchet_identity_key_pair *identity;
    session_entry sessions[64];
    size_t n_sessions;
    key_entry pre_keys[256];
    size_t n_pre_keys;
    key_entry signed_pre_keys[4];
    size_t n_signed_pre_keys;
} P;

static int copy_bytes(bytes *dst, const uint8_t *data, size_t len)
{
    bytes_free(dst);
    dst->data = malloc(len ? len : 1);
    if (!dst->data) {
        return SG_ERR_NOMEM;
    }
    memcpy(dst->data, data, len);
    dst->len = len;
    return 0;
}

static session_entry *find_session(const signal_protocol_address *a)
{
    for (size_t i = 0; i < P.n_sessions; i++) {
        session_entry *s = &P.sessions[i];
        if (s->device_id == a->device_id && s->name_len == a->name_len &&
            memcmp(s->name, a->name, a->name_len) == 0) {
            return s;
        }
    }
    return NULL;
}

static int ss_load(signal_buffer **record, signal_buffer **user_record,
                   const signal_protocol_address *a, void *user_data)
{
    (void)user_data;
    (void)user_record;
    session_entry *s = find_session(a);
    if (!s) {
        return 0;
    }
    *record = signal_buffer_create(s->record.data, s->record.len);
    return *record ? 1 : SG_ERR_NOMEM;
}

static int ss_sub_devices(signal_int_list **sessions, const char *name, size_t name_len,
                          void *user_data)
{
    (void)user_data;
    signal_int_list *list = signal_int_list_alloc();
    if (!list) {
        return SG_ERR_NOMEM;
    }
    for (size_t i = 0; i < P.n_sessions; i++) {
        if (P.sessions[i].name_len == name_len && memcmp(P.sessions[i].name, name, name_len) == 0) {
            signal_int_list_push_back(list, P.sessions[i].device_id);
        }
    }
    *sessions = list;
    return (int)signal_int_list_size(list);
}

static int ss_store(const signal_protocol_address *a, uint8_t *record, size_t record_len,
                    uint8_t *user_record, size_t user_record_len, void *user_data)
{
    (void)user_data;
    (void)user_record;
    (void)user_record_len;
    session_entry *s = find_session(a);
    if (!s) {
        if (P.n_sessions == sizeof P.sessions / sizeof P.sessions[0]) {
            return SG_ERR_NOMEM;
        }
        s = &P.sessions[P.n_sessions++];
        memset(s, 0, sizeof *s);
        s->name = malloc(a->name_len + 1);
        if (!s->name) {
            return SG_ERR_NOMEM;
        }
        memcpy(s->name, a->name, a->name_len);
        s->name[a->name_len] = 0;
        s->name_len = a->name_len;
        s->device_id = a->device_id;
    }
    return copy_bytes(&s->record, record, record_len);
}

static int ss_contains(const signal_protocol_address *a, void *user_data)
{
    (void)user_data;
    return find_session(a) != NULL;
}

static int ss_delete(const signal_protocol_address *a, void *user_data)
{
    (void)user_data;
    session_entry *s = find_session(a);
    if (!s) {
        return 0;
    }
    bytes_free(&s->record);
    free(s->name);
    *s = P.sessions[--P.n_sessions];
    return 1;
}

static int ss_delete_all(const char *name, size_t name_len, void *user_data)
{
    int n = 0;
    for (size_t i = P.n_sessions; i-- > 0;) {
        signal_protocol_address a = {P.sessions[i].name, P.sessions[i].name_len,
                                     P.sessions[i].device_id};
        if (a.name_len == name_len && memcmp(a.name, name, name_len) == 0) {
            n += ss_delete(&a, user_data);
        }
    }
    return n;
}

static key_entry *find_key(key_entry *keys, size_t n, uint32_t id)
{
    for (size_t i = 0; i < n; i++) {
        if (keys[i].id == id) {
            return &keys[i];
        }
    }
    return NULL;
}

static int store_key(key_entry *keys, size_t *n, size_t cap, uint32_t id, const uint8_t *record,
                     size_t len)
{
    key_entry *k = find_key(keys, *n, id);
    if (!k) {
        if (*n == cap) {
            return SG_ERR_NOMEM;
        }
        k = &keys[(*n)++];
        memset(k, 0, sizeof *k);
        k->id = id;
    }
    return copy_bytes(&k->record, record, len);
}

static int load_key(key_entry *keys, size_t n, uint32_t id, signal_buffer **record)
{
    key_entry *k = find_key(keys, n, id);
    if (!k) {
        return SG_ERR_INVALID_KEY_ID;
    }
    *record = signal_buffer_create(k->record.data, k->record.len);
    return *record ? SG_SUCCESS : SG_ERR_NOMEM;
}

static int remove_key(key_entry *keys, size_t *n, uint32_t id)
{
    key_entry *k = find_key(keys, *n, id);
    if (!k) {
        return 0;
    }
    bytes_free(&k->record);
    /* Keep the order (the bundle lists pre keys by id). */
    size_t i = (size_t)(k - keys);
    memmove(&keys[i], &keys[i + 1], (*n - i - 1) * sizeof *keys);
    (*n)--;
    return 0;
}

#define PRE_KEY_CAP (sizeof P.pre_keys / sizeof P.pre_keys[0])
#define SIGNED_CAP (sizeof P.signed_pre_keys / sizeof P.signed_pre_keys[0])

static int pk_load(signal_buffer **record, uint32_t id, void *u)
{
    (void)u;
    return load_key(P.pre_keys, P.n_pre_keys, id, record);
}
static int pk_store(uint32_t id, uint8_t *record, size_t len, void *u)
{
    (void)u;
    return store_key(P.pre_keys, &P.n_pre_keys, PRE_KEY_CAP, id, record, len);
}
static int pk_contains(uint32_t id, void *u)
{
    (void)u;
    return find_key(P.pre_keys, P.n_pre_keys, id) != NULL;
}
static int pk_remove(uint32_t id, void *u)
{
    (void)u;
    return remove_key(P.pre_keys, &P.n_pre_keys, id);
}
static int spk_load(signal_buffer **record, uint32_t id, void *u)
{
    (void)u;
    return load_key(P.signed_pre_keys, P.n_signed_pre_keys, id, record);
}
static int spk_store(uint32_t id, uint8_t *record, size_t len, void *u)
{
    (void)u;
    return store_key(P.signed_pre_keys, &P.n_signed_pre_keys, SIGNED_CAP, id, record, len);
}
static int spk_contains(uint32_t id, void *u)
{
    (void)u;
    return find_key(P.signed_pre_keys, P.n_signed_pre_keys, id) != NULL;
}
static int spk_remove(uint32_t id, void *u)
{
    (void)u;
    return remove_key(P.signed_pre_keys, &P.n_signed_pre_keys, id);
}

static int ik_get_pair(signal_buffer **public_data, signal_buffer **private_data, void *u)
{
    (void)u;
    int r = ec_public_key_serialize(public_data, ratchet_identity_key_pair_get_public(P.identity));
    if (r < 0) {
        return r;
    }
    return ec_private_key_serialize(private_data, ratchet_identity_key_pair_get_private(P.identity));
}

static int ik_registration_id(void *u, uint32_t *registration_id)
{
    (void)u;
    *registration_id = P.device_id;
    return 0;
}

/* Blind trust, as the tests want: trust decisions are omemod's business here, not the peer's. */
static int ik_save(const signal_protocol_address *a, uint8_t *key, size_t len, void *u)
{
    (void)a;
    (void)key;
    (void)len;
    (void)u;
    return 0;
}

static int ik_trusted(const signal_protocol_address *a, uint8_t *key, size_t len, void *u)
{
    (void)a;
    (void)key;
    (void)len;
    (void)u;
    return 1;
}

static void log_to_stderr(int level, const char *message, size_t len, void *u)
{
    (void)u;
    if (getenv("OMEMO_PEER_LOG")) {
        fprintf(stderr, "libomemo-c[%d]: %.*s\n", level, (int)len, message);
    }
}

/* ---------------------------------------------------------------------------------------------
 * Payload crypto
 * ------------------------------------------------------------------------------------------- */

/* OMEMO 2: HKDF-SHA-256(ikm = key, salt = 0^32, info = "OMEMO Payload") -> enc key, auth key, IV. */
static int omemo2_payload_keys(const uint8_t key[32], uint8_t out[80])
{
    static const uint8_t salt[32] = {0};
    EVP_KDF *kdf = EVP_KDF_fetch(NULL, "HKDF", NULL);
    EVP_KDF_CTX *c = kdf ? EVP_KDF_CTX_new(kdf) : NULL;
    EVP_KDF_free(kdf);
    if (!c) {
        return -1;
    }
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, "SHA256", 0),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, (void *)key, 32),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, (void *)salt, sizeof salt),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, "OMEMO Payload", 13),
        OSSL_PARAM_construct_end(),
    };
    int ok = EVP_KDF_derive(c, out, 80, params) == 1;
    EVP_KDF_CTX_free(c);
    return ok ? 0 : -1;
}

static int hmac_sha256(const uint8_t *key, size_t key_len, const uint8_t *data, size_t len,
                       uint8_t out[32])
{
    size_t n = 0;
    return EVP_Q_mac(NULL, "HMAC", NULL, "SHA256", NULL, key, key_len, data, len, out, 32, &n)
                   && n == 32
               ? 0
               : -1;
}

static int cbc256(int enc, const uint8_t *key, const uint8_t *iv, const bytes *in, bytes *out)
{
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    out->data = malloc(in->len + 32);
    int n = 0, m = 0, ok = ctx && out->data;
    ok = ok && EVP_CipherInit_ex(ctx, EVP_aes_256_cbc(), NULL, key, iv, enc) == 1;
    ok = ok && EVP_CipherUpdate(ctx, out->data, &n, in->data, (int)in->len) == 1;
    ok = ok && EVP_CipherFinal_ex(ctx, out->data + n, &m) == 1;
    EVP_CIPHER_CTX_free(ctx);
    if (!ok) {
        bytes_free(out);
        return -1;
    }
    out->len = (size_t)(n + m);
    return 0;
}

/* AES-128-GCM; `tag` is written on encryption and checked on decryption. */
static int gcm128(int enc, const uint8_t *key, const uint8_t *iv, const bytes *in, bytes *out,
                  uint8_t tag[OLD_TAG])
{
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    out->data = malloc(in->len + 16);
    int n = 0, m = 0, ok = ctx && out->data;
    ok = ok && EVP_CipherInit_ex(ctx, EVP_aes_128_gcm(), NULL, NULL, NULL, enc) == 1;
    ok = ok && EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, OLD_IV, NULL) == 1;
    ok = ok && EVP_CipherInit_ex(ctx, NULL, NULL, key, iv, enc) == 1;
    ok = ok && EVP_CipherUpdate(ctx, out->data, &n, in->data, (int)in->len) == 1;
    if (ok && !enc) {
        ok = EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, OLD_TAG, tag) == 1;
    }
    ok = ok && EVP_CipherFinal_ex(ctx, out->data + n, &m) == 1;
    if (ok && enc) {
        ok = EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, OLD_TAG, tag) == 1;
    }
    EVP_CIPHER_CTX_free(ctx);
    if (!ok) {
        bytes_free(out);
        return -1;
    }
    out->len = (size_t)(n + m);
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * SCE envelope (OMEMO 2 plaintext): built here, read back with a small scanner
 * ------------------------------------------------------------------------------------------- */

static void append(char **buf, size_t *len, size_t *cap, const char *s, size_t n)
{
    if (*len + n + 1 > *cap) {
        *cap = (*len + n + 1) * 2;
        *buf = realloc(*buf, *cap);
        if (!*buf) {
            abort(); /* out of memory in a test helper */
        }
    }
    memcpy(*buf + *len, s, n);
    *len += n;
    (*buf)[*len] = 0;
}

static void append_escaped(char **buf, size_t *len, size_t *cap, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        switch (s[i]) {
        case '&': append(buf, len, cap, "&amp;", 5); break;
        case '<': append(buf, len, cap, "&lt;", 4); break;
        case '>': append(buf, len, cap, "&gt;", 4); break;
        case '\'': append(buf, len, cap, "&apos;", 6); break;
        case '"': append(buf, len, cap, "&quot;", 6); break;
        default: append(buf, len, cap, &s[i], 1);
        }
    }
}

static char *build_envelope(const bytes *body, const char *to)
{
    static const char alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    char *buf = NULL;
    size_t len = 0, cap = 0;
    const char *s = "<envelope xmlns='urn:xmpp:sce:1'><content><body xmlns='jabber:client'>";
    append(&buf, &len, &cap, s, strlen(s));
    append_escaped(&buf, &len, &cap, (const char *)body->data, body->len);
    s = "</body></content><rpad>";
    append(&buf, &len, &cap, s, strlen(s));
    uint8_t r[201];
    RAND_bytes(r, sizeof r);
    for (int i = 0; i < r[0] % 201 && i < 200; i++) {
        append(&buf, &len, &cap, &alphabet[r[i + 1] % 62], 1);
    }
    s = "</rpad><from jid='";
    append(&buf, &len, &cap, s, strlen(s));
    append_escaped(&buf, &len, &cap, P.jid, strlen(P.jid));
    append(&buf, &len, &cap, "'/>", 3);
    if (to) {
        s = "<to jid='";
        append(&buf, &len, &cap, s, strlen(s));
        append_escaped(&buf, &len, &cap, to, strlen(to));
        append(&buf, &len, &cap, "'/>", 3);
    }
    s = "</envelope>";
    append(&buf, &len, &cap, s, strlen(s));
    return buf;
}

/* Replaces XML entity and character references in [s, s + n) (UTF-8 out). */
static char *unescape(const char *s, size_t n)
{
    char *out = malloc(n + 1);
    size_t o = 0;
    if (!out) {
        return NULL;
    }
    for (size_t i = 0; i < n;) {
        if (s[i] != '&') {
            out[o++] = s[i++];
            continue;
        }
        const char *semi = memchr(s + i, ';', n - i);
        if (!semi) {
            free(out);
            return NULL;
        }
        size_t len = (size_t)(semi - (s + i)) + 1;
        unsigned long cp = 0;
        if (len == 5 && !memcmp(s + i, "&amp;", 5)) cp = '&';
        else if (len == 4 && !memcmp(s + i, "&lt;", 4)) cp = '<';
        else if (len == 4 && !memcmp(s + i, "&gt;", 4)) cp = '>';
        else if (len == 6 && !memcmp(s + i, "&apos;", 6)) cp = '\'';
        else if (len == 6 && !memcmp(s + i, "&quot;", 6)) cp = '"';
        else if (len > 3 && s[i + 1] == '#') {
            int hex = s[i + 2] == 'x';
            cp = strtoul(s + i + 2 + hex, NULL, hex ? 16 : 10);
        }
        if (cp == 0 || cp > 0x10FFFF) {
            free(out);
            return NULL;
        }
        if (cp < 0x80) {
            out[o++] = (char)cp;
        } else if (cp < 0x800) {
            out[o++] = (char)(0xC0 | (cp >> 6));
            out[o++] = (char)(0x80 | (cp & 0x3F));
        } else if (cp < 0x10000) {
            out[o++] = (char)(0xE0 | (cp >> 12));
            out[o++] = (char)(0x80 | ((cp >> 6) & 0x3F));
            out[o++] = (char)(0x80 | (cp & 0x3F));
        } else {
            out[o++] = (char)(0xF0 | (cp >> 18));
            out[o++] = (char)(0x80 | ((cp >> 12) & 0x3F));
            out[o++] = (char)(0x80 | ((cp >> 6) & 0x3F));
            out[o++] = (char)(0x80 | (cp & 0x3F));
        }
        i += len;
    }
    out[o] = 0;
    return out;
}

/* The text of <body> inside <content>, NULL if there is none. */
static char *envelope_body(const char *env)
{
    const char *content = strstr(env, "<content");
    const char *b = content ? strstr(content, "<body") : NULL;
    if (!b) {
        return NULL;
    }
    const char *gt = strchr(b, '>');
    if (!gt) {
        return NULL;
    }
    if (gt[-1] == '/') {
        return strdup("");
    }
    const char *end = strstr(gt, "</body>");
    return end ? unescape(gt + 1, (size_t)(end - gt - 1)) : NULL;
}

/* The jid attribute of <from .../> or <to .../>, NULL if absent. */
static char *envelope_jid(const char *env, const char *tag)
{
    const char *t = env;
    size_t tl = strlen(tag);
    while ((t = strstr(t, tag)) != NULL) {
        if (t[tl] == ' ' || t[tl] == '/') {
            break;
        }
        t += tl;
    }
    if (!t) {
        return NULL;
    }
    const char *a = strstr(t, "jid=");
    const char *gt = strchr(t, '>');
    if (!a || (gt && a > gt)) {
        return NULL;
    }
    char q = a[4];
    const char *end = strchr(a + 5, q);
    return end ? unescape(a + 5, (size_t)(end - a - 5)) : NULL;
}

/* ---------------------------------------------------------------------------------------------
 * Commands
 * ------------------------------------------------------------------------------------------- */

static int parse_u32(const char *s, uint32_t *out)
{
    char *end = NULL;
    unsigned long v = strtoul(s, &end, 10);
    if (!*s || *end || v > 0xFFFFFFFFul) {
        return -1;
    }
    *out = (uint32_t)v;
    return 0;
}

/* init <3|4> <own bare jid> <device id> */
static void cmd_init(char **t, int n)
{
    uint32_t version = 0, device_id = 0;
    if (n != 4 || parse_u32(t[1], &version) || (version != 3 && version != 4) ||
        parse_u32(t[3], &device_id) || device_id == 0 || device_id > 0x7FFFFFFF) {
        reply_err(-1, "usage: init <3|4> <jid> <device id>");
        return;
    }
    if (P.ctx) {
        reply_err(-1, "already initialized");
        return;
    }
    P.version = (int)version;
    P.jid = strdup(t[2]);
    P.device_id = device_id;

    static signal_crypto_provider cp = {
        cp_random,        cp_hmac_init,     cp_hmac_update,   cp_hmac_final, cp_hmac_cleanup,
        cp_sha512_init,   cp_sha512_update, cp_sha512_final,  cp_sha512_cleanup,
        cp_encrypt,       cp_decrypt,       NULL,
    };
    static signal_protocol_session_store ss = {ss_load,   ss_sub_devices, ss_store,
                                               ss_contains, ss_delete,   ss_delete_all,
                                               NULL,      NULL};
    static signal_protocol_pre_key_store pks = {pk_load, pk_store, pk_contains, pk_remove, NULL,
                                                NULL};
    static signal_protocol_signed_pre_key_store spks = {spk_load,   spk_store, spk_contains,
                                                        spk_remove, NULL,      NULL};
    static signal_protocol_identity_key_store iks = {ik_get_pair, ik_registration_id, ik_save,
                                                     ik_trusted,  NULL,               NULL};
    int r = signal_context_create(&P.ctx, NULL);
    if (r >= 0) r = signal_context_set_crypto_provider(P.ctx, &cp);
    if (r >= 0) r = signal_context_set_log_function(P.ctx, log_to_stderr);
    if (r >= 0) r = signal_protocol_store_context_create(&P.store, P.ctx);
    if (r >= 0) r = signal_protocol_store_context_set_session_store(P.store, &ss);
    if (r >= 0) r = signal_protocol_store_context_set_pre_key_store(P.store, &pks);
    if (r >= 0) r = signal_protocol_store_context_set_signed_pre_key_store(P.store, &spks);
    if (r >= 0) r = signal_protocol_store_context_set_identity_key_store(P.store, &iks);
    if (r >= 0) r = signal_protocol_key_helper_generate_identity_key_pair(&P.identity, P.ctx);
    if (r < 0) {
        reply_sg(r, "init");
        return;
    }

    /* As Dino: one signed pre key and 100 one-time pre keys. */
    session_signed_pre_key *spk = NULL;
    r = signal_protocol_key_helper_generate_signed_pre_key(&spk, P.identity, 1, 0, P.ctx);
    if (r >= 0) r = signal_protocol_signed_pre_key_store_key(P.store, spk);
    SIGNAL_UNREF(spk);
    signal_protocol_key_helper_pre_key_list_node *head = NULL;
    if (r >= 0) r = signal_protocol_key_helper_generate_pre_keys(&head, 1, 100, P.ctx);
    for (signal_protocol_key_helper_pre_key_list_node *k = head; r >= 0 && k;
         k = signal_protocol_key_helper_key_list_next(k)) {
        r = signal_protocol_pre_key_store_key(P.store, signal_protocol_key_helper_key_list_element(k));
    }
    signal_protocol_key_helper_key_list_free(head);
    if (r < 0) {
        reply_sg(r, "key generation");
        return;
    }
    printf("ok device_id=%u\n", P.device_id);
    fflush(stdout);
}

/* A public key in this namespace's wire form: 0x05||u in 0.3, raw u (or the Ed25519 form for the
 * identity) in OMEMO 2. */
static char *wire_key(const ec_public_key *key, int identity)
{
    signal_buffer *b = NULL;
    if (P.version == 3) {
        if (ec_public_key_serialize(&b, key) < 0) {
            return NULL;
        }
    } else {
        b = identity ? ec_public_key_get_ed(key) : ec_public_key_get_mont(key);
    }
    if (!b) {
        return NULL;
    }
    char *s = b64_encode(signal_buffer_data(b), signal_buffer_len(b));
    signal_buffer_free(b);
    return s;
}

static int decode_wire_key(const char *text, int identity, ec_public_key **out)
{
    bytes b = {0};
    if (b64_decode(text, &b)) {
        return SG_ERR_INVALID_KEY;
    }
    int r;
    if (P.version == 3) {
        r = curve_decode_point(out, b.data, b.len, P.ctx);
    } else if (identity) {
        r = curve_decode_point_ed(out, b.data, b.len, P.ctx);
    } else {
        r = curve_decode_point_mont(out, b.data, b.len, P.ctx);
    }
    bytes_free(&b);
    return r;
}

/* bundle -> ok ik=.. spk_id=.. spk=.. spks=.. pks=id:key,id:key,... */
static void cmd_bundle(void)
{
    session_signed_pre_key *spk = NULL;
    int r = signal_protocol_signed_pre_key_load_key(P.store, &spk, P.signed_pre_keys[0].id);
    if (r < 0) {
        reply_sg(r, "bundle");
        return;
    }
    const uint8_t *sig = P.version == 3 ? session_signed_pre_key_get_signature(spk)
                                        : session_signed_pre_key_get_signature_omemo(spk);
    size_t sig_len = P.version == 3 ? session_signed_pre_key_get_signature_len(spk)
                                    : session_signed_pre_key_get_signature_omemo_len(spk);
    char *ik = wire_key(ratchet_identity_key_pair_get_public(P.identity), 1);
    char *spk_pub = wire_key(ec_key_pair_get_public(session_signed_pre_key_get_key_pair(spk)), 0);
    char *spks = b64_encode(sig, sig_len);
    printf("ok ik=%s spk_id=%u spk=%s spks=%s pks=", ik, session_signed_pre_key_get_id(spk),
           spk_pub, spks);
    free(ik);
    free(spk_pub);
    free(spks);
    SIGNAL_UNREF(spk);
    for (size_t i = 0; i < P.n_pre_keys; i++) {
        session_pre_key *pk = NULL;
        if (signal_protocol_pre_key_load_key(P.store, &pk, P.pre_keys[i].id) < 0) {
            continue;
        }
        char *k = wire_key(ec_key_pair_get_public(session_pre_key_get_key_pair(pk)), 0);
        printf("%s%u:%s", i ? "," : "", session_pre_key_get_id(pk), k);
        free(k);
        SIGNAL_UNREF(pk);
    }
    printf("\n");
    fflush(stdout);
}

static signal_protocol_address address(const char *jid, uint32_t device_id)
{
    signal_protocol_address a = {jid, strlen(jid), (int32_t)device_id};
    return a;
}

/* build <jid> <device id> <ik> <spk id> <spk> <spks> <pk id> <pk> */
static void cmd_build(char **t, int n)
{
    uint32_t device_id = 0, spk_id = 0, pk_id = 0;
    if (n != 9 || parse_u32(t[2], &device_id) || parse_u32(t[4], &spk_id) ||
        parse_u32(t[7], &pk_id)) {
        reply_err(-1, "usage: build <jid> <device id> <ik> <spk id> <spk> <spks> <pk id> <pk>");
        return;
    }
    ec_public_key *ik = NULL, *spk = NULL, *pk = NULL;
    bytes sig = {0};
    session_pre_key_bundle *bundle = NULL;
    session_builder *builder = NULL;
    signal_protocol_address a = address(t[1], device_id);
    int r = decode_wire_key(t[3], 1, &ik);
    if (r >= 0) r = decode_wire_key(t[5], 0, &spk);
    if (r >= 0) r = decode_wire_key(t[8], 0, &pk);
    if (r >= 0 && b64_decode(t[6], &sig)) r = SG_ERR_INVALID_KEY;
    if (r >= 0)
        r = session_pre_key_bundle_create(&bundle, device_id, (int)device_id, pk_id, pk, spk_id, spk,
                                          sig.data, sig.len, ik);
    if (r >= 0) r = session_builder_create(&builder, P.store, &a, P.ctx);
    if (r >= 0) {
        session_builder_set_version(builder, (uint32_t)P.version);
        r = session_builder_process_pre_key_bundle(builder, bundle);
    }
    if (r < 0) {
        reply_sg(r, "build");
    } else {
        printf("ok\n");
        fflush(stdout);
    }
    session_builder_free(builder);
    SIGNAL_UNREF(bundle);
    SIGNAL_UNREF(ik);
    SIGNAL_UNREF(spk);
    SIGNAL_UNREF(pk);
    bytes_free(&sig);
}

static session_cipher *cipher_for(const signal_protocol_address *a)
{
    session_cipher *c = NULL;
    if (session_cipher_create(&c, P.store, a, P.ctx) < 0) {
        return NULL;
    }
    session_cipher_set_version(c, (uint32_t)P.version);
    return c;
}

/* encrypt <jid> <device id> <body base64 | - for an empty message> [<sce to> | -]
 * -> ok kex=0|1 key=.. iv=..|- payload=..|- */
static void cmd_encrypt(char **t, int n)
{
    uint32_t device_id = 0;
    if ((n != 4 && n != 5) || parse_u32(t[2], &device_id)) {
        reply_err(-1, "usage: encrypt <jid> <device id> <body|-> [<sce to>|-]");
        return;
    }
    int empty = strcmp(t[3], "-") == 0;
    const char *sce_to = n == 5 ? (strcmp(t[4], "-") ? t[4] : NULL) : t[1];
    bytes body = {0}, plain = {0}, ct = {0};
    uint8_t km[OMEMO2_KEY_MATERIAL];
    size_t km_len = 0;
    uint8_t iv[OLD_IV];
    if (!empty && b64_decode(t[3], &body)) {
        reply_err(-1, "body is not base64");
        return;
    }
    int ok = 1;
    if (P.version == 3) {
        RAND_bytes(iv, sizeof iv);
        if (empty) {
            /* Key transport, as Dino sends it: 16 random bytes, no payload. */
            RAND_bytes(km, OLD_KEY);
            km_len = OLD_KEY;
        } else {
            RAND_bytes(km, OLD_KEY);
            ok = gcm128(1, km, iv, &body, &ct, km + OLD_KEY) == 0;
            km_len = OLD_KEY + OLD_TAG;
        }
    } else if (empty) {
        memset(km, 0, 32);
        km_len = 32;
    } else {
        uint8_t o[80], mac[32];
        char *env = build_envelope(&body, sce_to);
        plain.data = (uint8_t *)env;
        plain.len = strlen(env);
        RAND_bytes(km, 32);
        ok = omemo2_payload_keys(km, o) == 0 && cbc256(1, o, o + 64, &plain, &ct) == 0 &&
             hmac_sha256(o + 32, 32, ct.data, ct.len, mac) == 0;
        memcpy(km + 32, mac, 16);
        km_len = OMEMO2_KEY_MATERIAL;
        OPENSSL_cleanse(o, sizeof o);
    }
    bytes_free(&body);
    bytes_free(&plain);
    if (!ok) {
        bytes_free(&ct);
        reply_err(-1, "payload encryption failed");
        return;
    }

    signal_protocol_address a = address(t[1], device_id);
    session_cipher *c = cipher_for(&a);
    ciphertext_message *msg = NULL;
    int r = c ? session_cipher_encrypt(c, km, km_len, &msg) : SG_ERR_NOMEM;
    OPENSSL_cleanse(km, sizeof km);
    if (r < 0) {
        reply_sg(r, "encrypt");
    } else {
        signal_buffer *ser = ciphertext_message_get_serialized(msg);
        int kex = ciphertext_message_get_type(msg) == CIPHERTEXT_PREKEY_TYPE;
        char *key = b64_encode(signal_buffer_data(ser), signal_buffer_len(ser));
        char *iv64 = b64_encode(iv, sizeof iv);
        char *payload = ct.data ? b64_encode(ct.data, ct.len) : NULL;
        printf("ok kex=%d key=%s iv=%s payload=%s\n", kex, key, P.version == 3 ? iv64 : "-",
               payload ? payload : "-");
        fflush(stdout);
        free(key);
        free(iv64);
        free(payload);
    }
    SIGNAL_UNREF(msg);
    session_cipher_free(c);
    bytes_free(&ct);
}

/* decrypt <jid> <device id> <kex 0|1> <key> <iv|-> <payload|->
 * -> ok body=<base64>|- from=<jid>|- to=<jid>|- */
static void cmd_decrypt(char **t, int n)
{
    uint32_t device_id = 0, kex = 0;
    if (n != 7 || parse_u32(t[2], &device_id) || parse_u32(t[3], &kex) || kex > 1) {
        reply_err(-1, "usage: decrypt <jid> <device id> <kex 0|1> <key> <iv|-> <payload|->");
        return;
    }
    bytes key = {0}, iv = {0}, payload = {0}, plain = {0};
    if (b64_decode(t[4], &key) || (strcmp(t[5], "-") && b64_decode(t[5], &iv)) ||
        (strcmp(t[6], "-") && b64_decode(t[6], &payload))) {
        bytes_free(&key);
        bytes_free(&iv);
        reply_err(-1, "a field is not base64");
        return;
    }
    signal_protocol_address a = address(t[1], device_id);
    session_cipher *c = cipher_for(&a);
    signal_buffer *km = NULL;
    int r = c ? 0 : SG_ERR_NOMEM;
    if (r >= 0 && kex) {
        pre_key_signal_message *m = NULL;
        r = P.version == 3
                ? pre_key_signal_message_deserialize(&m, key.data, key.len, P.ctx)
                : pre_key_signal_message_deserialize_omemo(&m, key.data, key.len, device_id, P.ctx);
        if (r >= 0) r = session_cipher_decrypt_pre_key_signal_message(c, m, NULL, &km);
        SIGNAL_UNREF(m);
    } else if (r >= 0) {
        signal_message *m = NULL;
        r = P.version == 3 ? signal_message_deserialize(&m, key.data, key.len, P.ctx)
                           : signal_message_deserialize_omemo(&m, key.data, key.len, P.ctx);
        if (r >= 0) r = session_cipher_decrypt_signal_message(c, m, NULL, &km);
        SIGNAL_UNREF(m);
    }
    session_cipher_free(c);
    bytes_free(&key);
    if (r < 0) {
        bytes_free(&iv);
        bytes_free(&payload);
        reply_sg(r, "decrypt");
        return;
    }

    const uint8_t *k = signal_buffer_data(km);
    size_t kl = signal_buffer_len(km);
    int ok = 1;
    char *body = NULL, *from = NULL, *to = NULL;
    if (!payload.data) {
        /* An empty message: the session moved on, nothing to show. */
    } else if (P.version == 3) {
        uint8_t tag[OLD_TAG];
        ok = kl == OLD_KEY + OLD_TAG && iv.len == OLD_IV;
        if (ok) {
            memcpy(tag, k + OLD_KEY, OLD_TAG);
            ok = gcm128(0, k, iv.data, &payload, &plain, tag) == 0;
        }
        if (ok) {
            body = b64_encode(plain.data, plain.len);
        }
    } else {
        uint8_t o[80], mac[32];
        ok = kl == OMEMO2_KEY_MATERIAL && omemo2_payload_keys(k, o) == 0 &&
             hmac_sha256(o + 32, 32, payload.data, payload.len, mac) == 0 &&
             CRYPTO_memcmp(mac, k + 32, 16) == 0 && cbc256(0, o, o + 64, &payload, &plain) == 0;
        OPENSSL_cleanse(o, sizeof o);
        if (ok) {
            char *env = malloc(plain.len + 1);
            if (env) {
                memcpy(env, plain.data, plain.len);
                env[plain.len] = 0;
                char *text = envelope_body(env);
                from = envelope_jid(env, "<from");
                to = envelope_jid(env, "<to");
                ok = text != NULL;
                if (ok) {
                    body = b64_encode((uint8_t *)text, strlen(text));
                }
                free(text);
                free(env);
            }
        }
    }
    signal_buffer_bzero_free(km);
    bytes_free(&iv);
    bytes_free(&payload);
    bytes_free(&plain);
    if (!ok) {
        reply_err(-2, "payload authentication or envelope failed");
    } else {
        printf("ok body=%s from=%s to=%s\n", body ? body : "-",
               from ? from : "-", to ? to : "-");
        fflush(stdout);
    }
    free(body);
    free(from);
    free(to);
}

int main(void)
{
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    while ((len = getline(&line, &cap, stdin)) > 0) {
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r')) {
            line[--len] = 0;
        }
        char *t[MAX_TOKENS];
        int n = 0;
        for (char *s = strtok(line, " "); s && n < MAX_TOKENS; s = strtok(NULL, " ")) {
            t[n++] = s;
        }
        if (n == 0) {
            continue;
        }
        if (!strcmp(t[0], "quit")) {
            printf("ok\n");
            fflush(stdout);
            break;
        }
        if (!strcmp(t[0], "init")) {
            cmd_init(t, n);
        } else if (!P.ctx) {
            reply_err(-1, "send init first");
        } else if (!strcmp(t[0], "bundle") && n == 1) {
            cmd_bundle();
        } else if (!strcmp(t[0], "build")) {
            cmd_build(t, n);
        } else if (!strcmp(t[0], "encrypt")) {
            cmd_encrypt(t, n);
        } else if (!strcmp(t[0], "decrypt")) {
            cmd_decrypt(t, n);
        } else {
            reply_err(-1, "unknown command");
        }
    }
    free(line);
    return 0;
}
