/* wpcap.dll, emulated: the pcap API as Npcap's libpcap (pcap-npf.c) provides it on Windows.
 *
 * Exports the names udpcap_ctypes declares, with the _WIN32 signatures of pcap/pcap.h, and none
 * of the POSIX-only ones (pcap_get_selectable_fd, pcap_dump_fopen, pcap_setdirection).  A live
 * handle talks to the emulated driver (npf.h) the way pcap-npf.c talks to Packet.dll:
 *   - pcap_activate_npf: open the adapter, set the hardware filter (promiscuous), a kernel
 *     buffer of opt.buffer_size or 1,000,000 bytes, a 256,000-byte user buffer, MinToCopy 0 in
 *     immediate mode and 16000 otherwise;
 *   - pcap_read_npf: read from the driver only when the user buffer is empty (p->cc == 0),
 *     then hand out bpf_hdr records from it -- so frames already in user memory never signal
 *     the read event again; in non-blocking mode the driver read does not wait;
 *   - pcap_setfilter_npf: the driver flushes and zeroes its counters; p->cc = 0;
 *   - headers are struct pcap_pkthdr with the Windows timeval (two 32-bit longs).
 * Offline and dead handles pass through to the real libpcap (headers converted).
 * Strings: error texts in the ANSI code page unless pcap_init(PCAP_CHAR_ENC_UTF_8) was called;
 * adapter descriptions always in the ANSI code page (AdInfo.cpp builds them with CP_ACP).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <arpa/inet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

/* pcap.h declares these names with the POSIX layouts (struct pcap_pkthdr, struct pcap_stat
 * with a 64-bit timeval / three counters): rename its declarations out of the way, so that the
 * definitions below can have the Windows ones. */
#define pcap_lib_version linux_pcap_lib_version
#define pcap_init linux_pcap_init
#define pcap_statustostr linux_pcap_statustostr
#define pcap_datalink_val_to_name linux_pcap_datalink_val_to_name
#define pcap_create linux_pcap_create
#define pcap_open_offline linux_pcap_open_offline
#define pcap_open_dead linux_pcap_open_dead
#define pcap_set_snaplen linux_pcap_set_snaplen
#define pcap_set_promisc linux_pcap_set_promisc
#define pcap_set_timeout linux_pcap_set_timeout
#define pcap_set_immediate_mode linux_pcap_set_immediate_mode
#define pcap_set_buffer_size linux_pcap_set_buffer_size
#define pcap_activate linux_pcap_activate
#define pcap_close linux_pcap_close
#define pcap_geterr linux_pcap_geterr
#define pcap_setnonblock linux_pcap_setnonblock
#define pcap_datalink linux_pcap_datalink
#define pcap_snapshot linux_pcap_snapshot
#define pcap_compile linux_pcap_compile
#define pcap_freecode linux_pcap_freecode
#define pcap_setfilter linux_pcap_setfilter
#define pcap_next_ex linux_pcap_next_ex
#define pcap_dispatch linux_pcap_dispatch
#define pcap_breakloop linux_pcap_breakloop
#define pcap_stats linux_pcap_stats
#define pcap_dump linux_pcap_dump
#define pcap_dump_close linux_pcap_dump_close
#define pcap_findalldevs linux_pcap_findalldevs
#define pcap_freealldevs linux_pcap_freealldevs
#include "npf.h"
#undef pcap_lib_version
#undef pcap_init
#undef pcap_statustostr
#undef pcap_datalink_val_to_name
#undef pcap_create
#undef pcap_open_offline
#undef pcap_open_dead
#undef pcap_set_snaplen
#undef pcap_set_promisc
#undef pcap_set_timeout
#undef pcap_set_immediate_mode
#undef pcap_set_buffer_size
#undef pcap_activate
#undef pcap_close
#undef pcap_geterr
#undef pcap_setnonblock
#undef pcap_datalink
#undef pcap_snapshot
#undef pcap_compile
#undef pcap_freecode
#undef pcap_setfilter
#undef pcap_next_ex
#undef pcap_dispatch
#undef pcap_breakloop
#undef pcap_stats
#undef pcap_dump
#undef pcap_dump_close
#undef pcap_findalldevs
#undef pcap_freealldevs

#define WIN32_DEFAULT_USER_BUFFER_SIZE 256000
#define WIN32_DEFAULT_KERNEL_BUFFER_SIZE 1000000
#define MAXIMUM_SNAPLEN 262144
#define WIN_AF_INET6 23

struct win_timeval { int32_t tv_sec, tv_usec; };
struct win_pkthdr { struct win_timeval ts; uint32_t caplen, len; };
struct win_pcap_stat { u_int ps_recv, ps_drop, ps_ifdrop, ps_capt, ps_sent, ps_netdrop; };
typedef void (*win_handler)(u_char *, const struct win_pkthdr *, const u_char *);

enum { LIVE = 1, REAL = 2 };

struct emu_pcap {
    int kind;
    pcap_t *real;                 /* REAL: the handle; LIVE: a dead handle for pcap_compile */
    char device[256];
    int snaplen, promisc, immediate, timeout, buffer_size, nonblock, activated, linktype;
    struct npf_open *open;
    uint8_t *buffer;
    unsigned long cc;             /* bytes left in the user buffer, from bp */
    uint8_t *bp;
    struct win_pkthdr hdr;        /* what pcap_next_ex points at */
    volatile int break_loop;
    char errbuf[PCAP_ERRBUF_SIZE];
};
typedef struct emu_pcap emu_t;

static int utf8_mode;

/* ------------------------------------------------------------------------------------------ */
/* Text */

/* FormatMessage for the few Win32 errors the emulation produces, in the machine's language
 * (profile locale=de gives German, as a German Windows would). */
static const char *system_message(DWORD code)
{
    const char *locale = winemu_profile_get("locale");
    int german = locale && strcmp(locale, "de") == 0;
    switch (code) {
    case 1: return german ? "Unzulässige Funktion." : "Incorrect function.";
    case 2: return german ? "Das System kann die angegebene Datei nicht finden."
                          : "The system cannot find the file specified.";
    case 5: return german ? "Zugriff verweigert" : "Access is denied.";
    case 20: return german ? "Das System kann das angegebene Gerät nicht finden."
                           : "The system cannot find the device specified.";
    case 31: return german ? "Ein an das System angeschlossenes Gerät funktioniert nicht."
                           : "A device attached to the system is not functioning.";
    case 50: return german ? "Die Anfrage wird nicht unterstützt."
                           : "The request is not supported.";
    case 122: return german ? "Der an einen Systemaufruf übergebene Datenbereich ist zu klein."
                            : "The data area passed to a system call is too small.";
    default: return german ? "Unbekannter Fehler." : "Unknown error.";
    }
}

/* errbuf text, written in UTF-8 and then in the API's encoding (fmtutils.c). */
static void set_error(char *errbuf, const char *format, ...)
{
    char text[PCAP_ERRBUF_SIZE * 2];
    va_list args;
    va_start(args, format);
    vsnprintf(text, sizeof text, format, args);
    va_end(args);
    if (utf8_mode)
        strncpy(errbuf, text, PCAP_ERRBUF_SIZE - 1), errbuf[PCAP_ERRBUF_SIZE - 1] = 0;
    else
        winemu_to_ansi(text, errbuf, PCAP_ERRBUF_SIZE);
}

/* pcapint_fmt_errmsg_for_win32_err: "<prefix>: <system message> (<code>)" */
static void set_win32_error(char *errbuf, DWORD code, const char *prefix)
{
    set_error(errbuf, "%s: %s (%lu)", prefix, system_message(code), (unsigned long)code);
}

static const char *ansi_copy(const char *utf8)
{
    char *out = malloc(strlen(utf8) + 1);
    winemu_to_ansi(utf8, out, strlen(utf8) + 1);
    return out;
}

/* ------------------------------------------------------------------------------------------ */
/* Library */

/* pcap.c pcap_lib_version in Npcap's build: "Npcap version X, based on libpcap version Y". */
EXPORT const char *pcap_lib_version(void)
{
    const char *version = winemu_profile_get("lib_version");
    return version ? version : "Npcap version 1.87, based on libpcap version 1.10.6";
}

#ifndef NO_PCAP_INIT
EXPORT int pcap_init(unsigned int opts, char *errbuf)
{
    /* pcap.c pcap_init: LOCAL 0 / UTF_8 1; a second call must ask for the same encoding. */
    static int initialized;
    if (opts > 1) {
        snprintf(errbuf, PCAP_ERRBUF_SIZE, "Unknown options specified");
        return PCAP_ERROR;
    }
    if (initialized && (int)opts != utf8_mode) {
        snprintf(errbuf, PCAP_ERRBUF_SIZE,
                 "Multiple pcap_init calls with different character encodings");
        return PCAP_ERROR;
    }
    utf8_mode = (int)opts;
    initialized = 1;
    return 0;
}
#endif

/* Portable parts of libpcap (pcap.c, dlt names): the real libpcap's answers. */
EXPORT const char *pcap_statustostr(int status) { return npf_real()->statustostr(status); }

EXPORT const char *pcap_datalink_val_to_name(int dlt)
{
    return npf_real()->datalink_val_to_name(dlt);
}

/* ------------------------------------------------------------------------------------------ */
/* Handles */

/* pcap.c pcap_create: no device check until activation (pcap-npf.c pcap_create_interface). */
EXPORT emu_t *pcap_create(const char *source, char *errbuf)
{
    if (source == NULL) {
        set_error(errbuf, "A device name must be specified");
        return NULL;
    }
    emu_t *p = calloc(1, sizeof *p);
    p->kind = LIVE;
    snprintf(p->device, sizeof p->device, "%s", source);
    p->snaplen = MAXIMUM_SNAPLEN;
    return p;
}

static emu_t *wrap_real(pcap_t *real)
{
    emu_t *p = calloc(1, sizeof *p);
    p->kind = REAL;
    p->real = real;
    p->activated = 1;
    return p;
}

/* Savefiles and dead handles are portable libpcap: passed through, headers converted. */
EXPORT emu_t *pcap_open_offline(const char *fname, char *errbuf)
{
    pcap_t *real = npf_real()->open_offline(fname, errbuf);
    return real ? wrap_real(real) : NULL;
}

EXPORT emu_t *pcap_open_dead(int linktype, int snaplen)
{
    pcap_t *real = npf_real()->open_dead(linktype, snaplen);
    return real ? wrap_real(real) : NULL;
}

#define NOT_ACTIVE_SETTER(p)                                                                   \
    do {                                                                                       \
        if ((p)->activated) {                                                                  \
            set_error((p)->errbuf, "can't perform  operation on activated capture");           \
            return PCAP_ERROR_ACTIVATED;                                                       \
        }                                                                                      \
    } while (0)

/* pcap.c pcap_set_*: options stored before activation; PCAP_ERROR_ACTIVATED after. */
EXPORT int pcap_set_snaplen(emu_t *p, int snaplen) { NOT_ACTIVE_SETTER(p); p->snaplen = snaplen; return 0; }
EXPORT int pcap_set_promisc(emu_t *p, int promisc) { NOT_ACTIVE_SETTER(p); p->promisc = promisc; return 0; }
EXPORT int pcap_set_timeout(emu_t *p, int ms) { NOT_ACTIVE_SETTER(p); p->timeout = ms; return 0; }
EXPORT int pcap_set_immediate_mode(emu_t *p, int on) { NOT_ACTIVE_SETTER(p); p->immediate = on; return 0; }

EXPORT int pcap_set_buffer_size(emu_t *p, int size)
{
    NOT_ACTIVE_SETTER(p);
    if (size <= 0)
        return 0;           /* pcap.c: "Silently ignore invalid values" */
    p->buffer_size = size;
    return 0;
}

static int activate_npf(emu_t *p)
{
    DWORD error = 0;
    p->open = npf_open(p->device, &error);
    if (p->open == NULL) {
        switch (error) {
        case ERROR_BAD_UNIT:
            p->errbuf[0] = 0;
            return PCAP_ERROR_NO_SUCH_DEVICE;
        case ERROR_ACCESS_DENIED:
            set_error(p->errbuf, "The helper program for \"Admin-only Mode\" must be allowed "
                                 "to make changes to your device");
            return PCAP_ERROR_PERM_DENIED;
        default:
            set_win32_error(p->errbuf, error, "Error opening adapter");
            return PCAP_ERROR;
        }
    }
    if (p->promisc) {
        DWORD refused = npf_set_hw_filter(p->open, 1);
        if (refused && refused != ERROR_NOT_SUPPORTED) {
            set_win32_error(p->errbuf, refused,
                            "failed to set hardware filter to promiscuous mode");
            goto bad;
        }
    }
    p->linktype = npf_linktype(p->open);
    if (p->snaplen <= 0 || p->snaplen > MAXIMUM_SNAPLEN)
        p->snaplen = MAXIMUM_SNAPLEN;
    npf_set_snaplen(p->open, p->snaplen);
    p->buffer = malloc(WIN32_DEFAULT_USER_BUFFER_SIZE);
    if (!npf_set_buffer(p->open, p->buffer_size ? p->buffer_size
                                                : WIN32_DEFAULT_KERNEL_BUFFER_SIZE)) {
        set_error(p->errbuf, "driver error: not enough memory to allocate the kernel buffer");
        goto bad;
    }
    npf_set_mintocopy(p->open, p->immediate ? 0 : 16000);
    p->real = npf_real()->open_dead(p->linktype, p->snaplen);   /* for pcap_compile */
    p->activated = 1;
    return 0;
bad:
    npf_close(p->open);
    p->open = NULL;
    free(p->buffer);
    p->buffer = NULL;
    return PCAP_ERROR;
}

/* pcap.c pcap_activate around pcap-npf.c pcap_activate_npf (activate_npf above). */
EXPORT int pcap_activate(emu_t *p)
{
    if (p->activated)
        return PCAP_ERROR_ACTIVATED;
    int status = activate_npf(p);
    if (status < 0 && p->errbuf[0] == 0)    /* pcap.c pcap_activate fills an empty errbuf */
        set_error(p->errbuf, "%s", npf_real()->statustostr(status));
    return status;
}

/* pcap_cleanup_npf: PacketCloseAdapter (sets and closes the read event) and free. */
EXPORT void pcap_close(emu_t *p)
{
    if (p == NULL)
        return;
    if (p->open)
        npf_close(p->open);
    if (p->real)
        npf_real()->close(p->real);
    free(p->buffer);
    free(p);
}

/* pcap.c pcap_geterr: the handle's errbuf. */
EXPORT char *pcap_geterr(emu_t *p)
{
    if (p->kind == REAL)
        return npf_real()->geterr(p->real);
    return p->errbuf;
}

/* pcap-npf.c pcap_setnonblock_npf: read timeout -1 (no wait in PacketReceivePacket). */
EXPORT int pcap_setnonblock(emu_t *p, int nonblock, char *errbuf)
{
    (void)errbuf;
    if (p->kind == REAL)
        return npf_real()->setnonblock(p->real, nonblock, errbuf);
    p->nonblock = nonblock != 0;   /* pcap_setnonblock_npf: read timeout -1, no driver call */
    return 0;
}

/* pcap.c: PCAP_ERROR_NOT_ACTIVATED before activation; the medium's DLT after. */
EXPORT int pcap_datalink(emu_t *p)
{
    if (!p->activated)
        return PCAP_ERROR_NOT_ACTIVATED;
    return p->kind == REAL ? npf_real()->datalink(p->real) : p->linktype;
}

EXPORT int pcap_snapshot(emu_t *p)
{
    if (!p->activated)
        return PCAP_ERROR_NOT_ACTIVATED;
    return p->kind == REAL ? npf_real()->snapshot(p->real) : p->snaplen;
}

/* ------------------------------------------------------------------------------------------ */
/* Filters */

/* gencode.c gen_loopback_linktype, live capture: a DLT_NULL family word is compared with this
 * platform's AF_ value in host order -- on _WIN32, 24 (BSD_AFNUM_INET6_BSD) for IPv6, since
 * "Npcap doesn't use Windows's AF_INET6" (libpcap commit 92fddb84, in every 1.10 release), and
 * 24 is what Npcap's loopback adapter writes (npf macros.h DLTNULLTYPE_IPV6).  The real libpcap
 * underneath compiles Linux's AF_INET6 (10): turn its `ld [0]; jeq #htonl(10)` into
 * `jeq #htonl(24)`, as wpcap.dll generates it. */
static void windows_loopback_families(struct bpf_program *program)
{
    struct bpf_insn *insn = program->bf_insns;
    for (u_int i = 0; i + 1 < program->bf_len; i++) {
        if (insn[i].code == (BPF_LD | BPF_W | BPF_ABS) && insn[i].k == 0
                && insn[i + 1].code == (BPF_JMP | BPF_JEQ | BPF_K)
                && insn[i + 1].k == htonl(AF_INET6))
            insn[i + 1].k = htonl(24);
    }
}

/* gencode.c pcap_compile: needs an activated handle (its link type and snaplen). */
EXPORT int pcap_compile(emu_t *p, struct bpf_program *program, const char *text, int optimize,
                        bpf_u_int32 netmask)
{
    if (!p->activated) {
        set_error(p->errbuf, "not-yet-activated pcap_t passed to pcap_compile");
        return PCAP_ERROR;
    }
    if (npf_real()->compile(p->real, program, text, optimize, netmask) < 0) {
        set_error(p->errbuf, "%s", npf_real()->geterr(p->real));
        return PCAP_ERROR;
    }
    if (npf_real()->datalink(p->real) == DLT_NULL)
        windows_loopback_families(program);
    return 0;
}

/* pcap_freecode: frees what the real pcap_compile allocated. */
EXPORT void pcap_freecode(struct bpf_program *program) { npf_real()->freecode(program); }

/* pcap-npf.c pcap_setfilter_npf: PacketSetBpf (driver: flush + zero counters), p->cc = 0. */
EXPORT int pcap_setfilter(emu_t *p, struct bpf_program *program)
{
    if (p->kind == REAL)
        return npf_real()->setfilter(p->real, program);
    if (!p->activated)
        return PCAP_ERROR_NOT_ACTIVATED;
    if (npf_set_filter(p->open, program->bf_insns, program->bf_len) != 0) {
        set_error(p->errbuf, "Driver error: cannot set bpf filter");
        return PCAP_ERROR;
    }
    p->cc = 0;              /* pcap_setfilter_npf: "BIOCSETF discards packets buffered" */
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Reading */

static void to_win(struct win_pkthdr *out, const struct pcap_pkthdr *in)
{
    out->ts.tv_sec = (int32_t)in->ts.tv_sec;
    out->ts.tv_usec = (int32_t)in->ts.tv_usec;
    out->caplen = in->caplen;
    out->len = in->len;
}

/* pcap-npf.c pcap_read_npf */
static int read_npf(emu_t *p, int count, win_handler callback, u_char *user)
{
    if (p->cc == 0) {
        if (p->break_loop) {
            p->break_loop = 0;
            return PCAP_ERROR_BREAK;
        }
        if (!p->nonblock) {
            /* PacketReceivePacket: WaitForSingleObject(ReadEvent, timeout ? timeout : INFINITE) */
            WaitForSingleObject(npf_read_event(p->open), p->timeout ? (DWORD)p->timeout : INFINITE);
        }
        DWORD error = 0;
        long got = npf_read(p->open, p->buffer, WIN32_DEFAULT_USER_BUFFER_SIZE, &error);
        if (got < 0) {
            if (error == ERROR_DEVICE_REMOVED)
                set_error(p->errbuf, "The interface disappeared (error code "
                                     "ERROR_DEVICE_REMOVED/STATUS_DEVICE_REMOVED)");
            else if (error == ERROR_GEN_FAILURE)
                set_error(p->errbuf, "The interface disappeared (error code "
                                     "ERROR_GEN_FAILURE/STATUS_UNSUCCESSFUL)");
            else
                set_win32_error(p->errbuf, error, "PacketReceivePacket error");
            return PCAP_ERROR;
        }
        p->cc = (unsigned long)got;
        p->bp = p->buffer;
    }
    int n = 0;
    uint8_t *end = p->bp + p->cc;
    while (p->bp < end) {
        if (p->break_loop) {
            if (n == 0) {
                p->break_loop = 0;
                return PCAP_ERROR_BREAK;
            }
            p->cc = (unsigned long)(end - p->bp);
            return n;
        }
        struct npf_bpf_hdr bh;
        memcpy(&bh, p->bp, sizeof bh);
        struct win_pkthdr hdr = {{bh.tv_sec, bh.tv_usec}, bh.bh_caplen, bh.bh_datalen};
        p->hdr = hdr;
        callback(user, &p->hdr, p->bp + bh.bh_hdrlen);
        unsigned long advance = NPF_WORDALIGN(bh.bh_caplen + bh.bh_hdrlen);
        if (advance > (unsigned long)(end - p->bp))
            advance = (unsigned long)(end - p->bp);
        p->bp += advance;
        n++;
        if (count > 0 && n >= count) {
            p->cc = (unsigned long)(end - p->bp);
            return n;
        }
    }
    p->cc = 0;
    return n;
}

struct oneshot {
    const struct win_pkthdr **hdr;
    const u_char **data;
};

static void oneshot(u_char *user, const struct win_pkthdr *hdr, const u_char *data)
{
    struct oneshot *s = (struct oneshot *)user;
    *s->hdr = hdr;
    *s->data = data;
}

/* pcap.c pcap_next_ex: read_op(p, 1, oneshot) -- one record from the user buffer. */
EXPORT int pcap_next_ex(emu_t *p, const struct win_pkthdr **hdr, const u_char **data)
{
    if (p->kind == REAL) {
        struct pcap_pkthdr *real_hdr;
        int status = npf_real()->next_ex(p->real, &real_hdr, data);
        if (status == 1) {
            to_win(&p->hdr, real_hdr);
            *hdr = &p->hdr;
        }
        return status;
    }
    if (!p->activated)
        return PCAP_ERROR_NOT_ACTIVATED;
    struct oneshot s = {hdr, data};
    return read_npf(p, 1, oneshot, (u_char *)&s);
}

struct trampoline {
    win_handler callback;
    u_char *user;
};

static void from_real(u_char *user, const struct pcap_pkthdr *hdr, const u_char *data)
{
    struct trampoline *t = (struct trampoline *)user;
    struct win_pkthdr win;
    to_win(&win, hdr);
    t->callback(t->user, &win, data);
}

/* pcap.c pcap_dispatch: read_op(p, cnt, callback) = pcap_read_npf. */
EXPORT int pcap_dispatch(emu_t *p, int count, win_handler callback, u_char *user)
{
    if (p->kind == REAL) {
        struct trampoline t = {callback, user};
        return npf_real()->dispatch(p->real, count, from_real, (u_char *)&t);
    }
    if (!p->activated)
        return PCAP_ERROR_NOT_ACTIVATED;
    return read_npf(p, count, callback, user);
}

/* pcap-npf.c pcap_breakloop_npf: break_loop = 1 and SetEvent(read event). */
EXPORT void pcap_breakloop(emu_t *p)
{
    p->break_loop = 1;
    if (p->open)
        winemu_event_set(npf_read_event(p->open));     /* pcap_breakloop_npf */
}

/* pcap-npf.c pcap_stats_npf: PacketGetStats (BIOCGSTATS). */
EXPORT int pcap_stats(emu_t *p, struct win_pcap_stat *ps)
{
    if (p->kind == REAL)
        return npf_real()->stats(p->real, (struct pcap_stat *)ps);
    uint32_t recv, drop, capt;
    npf_stats(p->open, &recv, &drop, &capt);
    /* pcap_stats_npf writes the three common fields only. */
    ps->ps_recv = recv;
    ps->ps_drop = drop;
    ps->ps_ifdrop = 0;
    return 0;
}

/* savefile writing, with the Windows header layout */
EXPORT void pcap_dump(u_char *dumper, const struct win_pkthdr *hdr, const u_char *data)
{
    struct pcap_pkthdr real_hdr;
    memset(&real_hdr, 0, sizeof real_hdr);
    real_hdr.ts.tv_sec = hdr->ts.tv_sec;
    real_hdr.ts.tv_usec = hdr->ts.tv_usec;
    real_hdr.caplen = hdr->caplen;
    real_hdr.len = hdr->len;
    npf_real()->dump(dumper, &real_hdr, data);
}

EXPORT void pcap_dump_close(pcap_dumper_t *dumper) { npf_real()->dump_close(dumper); }

/* ------------------------------------------------------------------------------------------ */
/* Windows extensions */

/* pcap-npf.c pcap_getevent_npf: Packet.dll's read event; INVALID_HANDLE_VALUE before
 * activation (pcap_getevent_not_initialized). */
EXPORT HANDLE pcap_getevent(emu_t *p)
{
    if (p->kind != LIVE || !p->activated)
        return (HANDLE)(intptr_t)-1;           /* INVALID_HANDLE_VALUE */
    return npf_read_event(p->open);
}

/* pcap-npf.c pcap_setmintocopy_npf: BIOCSMINTOCOPY stores the value, nothing else. */
EXPORT int pcap_setmintocopy(emu_t *p, int size)
{
    if (!p->activated)
        return PCAP_ERROR_NOT_ACTIVATED;
    if (p->kind == REAL) {
        set_error(p->errbuf, "The mintocopy parameter cannot be set on a pcap_open_dead pcap_t");
        return PCAP_ERROR;
    }
    npf_set_mintocopy(p->open, size);
    return 0;
}

/* Not a wpcap export: lets the tests read the driver's MinToCopy of a live handle. */
EXPORT long winemu_pcap_mintocopy(emu_t *p)
{
    return p->kind == LIVE && p->open ? npf_mintocopy(p->open) : -1;
}

/* pcap-npf.c pcap_setbuff_npf: BIOCSETBUFFERSIZE (bytes) resets buffer and counters. */
EXPORT int pcap_setbuff(emu_t *p, int dim)
{
    if (!p->activated)
        return PCAP_ERROR_NOT_ACTIVATED;
    if (p->kind == REAL || !npf_set_buffer(p->open, dim)) {
        set_error(p->errbuf, "driver error: not enough memory to allocate the kernel buffer");
        return PCAP_ERROR;
    }
    return 0;
}

/* pcap-npf.c pcap_oid_get_request_npf -> oid_get_request -> PacketRequest(FALSE): the
 * driver's answer (npf_oid_request, the same as the emulated Packet.dll's): the MAC OID on
 * adapters; the loopback adapter answers no 802.3 OID (ERROR_INVALID_FUNCTION); -1 with
 * "Error calling PacketRequest: <message> (<code>)" on failure, else *lenp = the answer's
 * length. */
EXPORT int pcap_oid_get_request(emu_t *p, bpf_u_int32 oid, void *data, size_t *lenp)
{
    if (!p->activated)
        return PCAP_ERROR_NOT_ACTIVATED;
    if (p->kind == REAL) {
        set_error(p->errbuf, "An OID get request cannot be performed on a file");
        return PCAP_ERROR;
    }
    uint8_t answer[64];
    uint32_t length = *lenp < sizeof answer ? (uint32_t)*lenp : (uint32_t)sizeof answer;
    DWORD error = npf_oid_request(p->open, 0, oid, answer, &length);
    if (error) {
        set_win32_error(p->errbuf, error, "Error calling PacketRequest");
        return PCAP_ERROR;
    }
    memcpy(data, answer, length);
    *lenp = length;
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Devices */

static struct sockaddr *copy_sockaddr(const struct sockaddr *in)
{
    if (in == NULL)
        return NULL;
    if (in->sa_family == AF_INET) {
        struct sockaddr_in *out = calloc(1, sizeof *out);
        memcpy(out, in, sizeof *out);
        return (struct sockaddr *)out;
    }
    if (in->sa_family == AF_INET6) {
        /* Windows' sockaddr_in6 has the Linux layout, with AF_INET6 = 23. */
        struct sockaddr_in6 *out = calloc(1, sizeof *out);
        memcpy(out, in, sizeof *out);
        out->sin6_family = WIN_AF_INET6;
        return (struct sockaddr *)out;
    }
    return NULL;
}

static pcap_addr_t *new_addr(struct sockaddr *addr, struct sockaddr *mask,
                             struct sockaddr *broad)
{
    pcap_addr_t *a = calloc(1, sizeof *a);
    a->addr = addr;
    a->netmask = mask;
    a->broadaddr = broad;
    return a;
}

static struct sockaddr *ipv4(const char *text)
{
    struct sockaddr_in *sin = calloc(1, sizeof *sin);
    sin->sin_family = AF_INET;
    inet_pton(AF_INET, text, &sin->sin_addr);
    return (struct sockaddr *)sin;
}

static struct sockaddr *ipv6(const char *text)
{
    struct sockaddr_in6 *sin6 = calloc(1, sizeof *sin6);
    sin6->sin6_family = WIN_AF_INET6;
    inet_pton(AF_INET6, text, &sin6->sin6_addr);
    return (struct sockaddr *)sin6;
}

static int adapters_listed(void)
{
    /* Packet.dll lists an adapter only if it can open it (AdInfo.cpp PacketAddAdapterNPF):
     * none without a running driver, none in admin-only mode when the UAC prompt (shown once,
     * from pcap_findalldevs) is declined.  The loopback entry is added without opening. */
    if (winemu_profile_int("service.npcap", 4) != 4)
        return 0;
    if (winemu_profile_int("admin_only", 0) && !winemu_profile_int("elevated", 1)) {
        const char *uac = winemu_profile_get("uac");
        return uac && strcmp(uac, "accept") == 0;
    }
    return 1;
}

/* pcap-npf.c pcap_platform_finddevs over Packet.dll PacketGetAdapterNames: each
 * namespace interface as \Device\NPF_{GUID} (description in the ANSI code page, Windows
 * sockaddr families), then the loopback adapter. */
EXPORT int pcap_findalldevs(pcap_if_t **alldevs, char *errbuf)
{
    pcap_if_t *linux_devs = NULL, *head = NULL, **tail = &head;
    if (npf_real()->findalldevs(&linux_devs, errbuf) < 0)
        return PCAP_ERROR;
    for (pcap_if_t *d = adapters_listed() ? linux_devs : NULL; d; d = d->next) {
        if (strcmp(d->name, "lo") == 0 || if_nametoindex(d->name) == 0)
            continue;
        pcap_if_t *node = calloc(1, sizeof *node);
        char name[128], key[96];
        npf_device_name(d->name, name, sizeof name);
        node->name = strdup(name);
        snprintf(key, sizeof key, "adapter.%s.description", d->name);
        const char *description = winemu_profile_get(key);
        char fallback[128];
        snprintf(fallback, sizeof fallback, "Emulated Ethernet Adapter (%s)", d->name);
        node->description = (char *)ansi_copy(description ? description : fallback);
        node->flags = (d->flags & (PCAP_IF_UP | PCAP_IF_RUNNING)) | PCAP_IF_CONNECTION_STATUS_CONNECTED;
        pcap_addr_t **atail = &node->addresses;
        for (pcap_addr_t *a = d->addresses; a; a = a->next) {
            struct sockaddr *addr = copy_sockaddr(a->addr);
            if (addr == NULL)
                continue;
            *atail = new_addr(addr, copy_sockaddr(a->netmask), copy_sockaddr(a->broadaddr));
            atail = &(*atail)->next;
        }
        *tail = node;
        tail = &node->next;
    }
    npf_real()->freealldevs(linux_devs);
    if (winemu_profile_int("loopback_support", 1)) {
        /* AdInfo.cpp PacketAddLoopbackAdapter; Packet32.cpp PacketGetNetInfoEx synthesizes
         * ::1 and 127.0.0.1/8 (broadcast: a zeroed sockaddr_storage); pcap-npf.c adds them
         * last-first, and sorts the loopback device after the up non-loopback ones. */
        pcap_if_t *node = calloc(1, sizeof *node);
        node->name = strdup(npf_loopback_name());
        node->description = strdup("Adapter for loopback traffic capture");
        node->flags = PCAP_IF_LOOPBACK | PCAP_IF_UP | PCAP_IF_RUNNING
                      | PCAP_IF_CONNECTION_STATUS_NOT_APPLICABLE;
        node->addresses = new_addr(ipv6("::1"),
                                   ipv6("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
                                   calloc(1, sizeof(struct sockaddr_storage)));
        node->addresses->next = new_addr(ipv4("127.0.0.1"), ipv4("255.0.0.0"),
                                         calloc(1, sizeof(struct sockaddr_storage)));
        *tail = node;
    }
    *alldevs = head;
    return 0;
}

EXPORT void pcap_freealldevs(pcap_if_t *devs)
{
    while (devs) {
        pcap_if_t *next = devs->next;
        pcap_addr_t *a = devs->addresses;
        while (a) {
            pcap_addr_t *anext = a->next;
            free(a->addr);
            free(a->netmask);
            free(a->broadaddr);
            free(a->dstaddr);
            free(a);
            a = anext;
        }
        free(devs->name);
        free(devs->description);
        free(devs);
        devs = next;
    }
}
