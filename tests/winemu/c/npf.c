/* libnpf.so: the emulated Npcap driver.  See npf.h; every rule below cites the Npcap source it
 * reproduces (nmap/npcap, packetWin7/npf/npf unless said otherwise).
 *
 * One open instance = one kernel buffer of Size bytes (Free counts down), a packet queue, the
 * Received/Dropped/Accepted counters, a BPF program, MinToCopy, and the read event that
 * Packet.dll handed to the driver (a manual-reset kernel32 event).
 *
 * Frames come from real Linux captures, read by one thread per instance:
 *   - an adapter \Device\NPF_{GUID} is its Linux interface, both directions (Npcap shows the
 *     frames this host sends on an adapter too), link type DLT_EN10MB;
 *   - the loopback adapter is DLT_NULL, inbound only (Loopback.c registers WFP callouts at the
 *     INBOUND_IPPACKET layers only, and skips fragments: NPF_ShouldProcess).  Its frames are
 *     what Linux's lo receives (traffic to 127/8 and to the host's own addresses, as on
 *     Windows), plus this host's own IPv4 multicast, which Windows loops to the loopback
 *     adapter once a local socket has joined the group (the loopback "cold start" that
 *     eclipse-ecal/udpcap's kickstart works around).  Linux never shows that copy to packet
 *     capture, so it is made here from the outgoing frame on the egress interface, for groups
 *     the emulated kernel has seen joined (ws2_32.so reports joins).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "npf.h"

/* ------------------------------------------------------------------------------------------ */
/* The real libpcap, private to this library */

static struct npf_real real;
static pthread_once_t real_once = PTHREAD_ONCE_INIT;

static void load_real(void)
{
    void *lib = dlopen("libpcap.so.0.8", RTLD_NOW | RTLD_LOCAL);
    if (lib == NULL)
        lib = dlopen("libpcap.so.1", RTLD_NOW | RTLD_LOCAL);
    if (lib == NULL) {
        fprintf(stderr, "winemu: cannot load the real libpcap: %s\n", dlerror());
        abort();
    }
#define BIND(field, name) *(void **)&real.field = dlsym(lib, name)
    BIND(create, "pcap_create");
    BIND(set_snaplen, "pcap_set_snaplen");
    BIND(set_promisc, "pcap_set_promisc");
    BIND(set_immediate_mode, "pcap_set_immediate_mode");
    BIND(set_buffer_size, "pcap_set_buffer_size");
    BIND(set_timeout, "pcap_set_timeout");
    BIND(activate, "pcap_activate");
    BIND(close, "pcap_close");
    BIND(geterr, "pcap_geterr");
    BIND(setnonblock, "pcap_setnonblock");
    BIND(setdirection, "pcap_setdirection");
    BIND(compile, "pcap_compile");
    BIND(setfilter, "pcap_setfilter");
    BIND(freecode, "pcap_freecode");
    BIND(dispatch, "pcap_dispatch");
    BIND(next_ex, "pcap_next_ex");
    BIND(get_selectable_fd, "pcap_get_selectable_fd");
    BIND(findalldevs, "pcap_findalldevs");
    BIND(freealldevs, "pcap_freealldevs");
    BIND(open_dead, "pcap_open_dead");
    BIND(open_offline, "pcap_open_offline");
    BIND(statustostr, "pcap_statustostr");
    BIND(datalink_val_to_name, "pcap_datalink_val_to_name");
    BIND(datalink, "pcap_datalink");
    BIND(snapshot, "pcap_snapshot");
    BIND(dump, "pcap_dump");
    BIND(dump_close, "pcap_dump_close");
    BIND(offline_filter, "pcap_offline_filter");
    BIND(stats, "pcap_stats");
    BIND(breakloop, "pcap_breakloop");
    BIND(validate, "bpf_validate");
#undef BIND
}

EXPORT const struct npf_real *npf_real(void)
{
    pthread_once(&real_once, load_real);
    return &real;
}

/* ------------------------------------------------------------------------------------------ */
/* Device names */

#define PREFIX "\\Device\\NPF_"

EXPORT const char *npf_loopback_name(void)
{
    /* Npcap >= 0.9983: always \Device\NPF_Loopback.  Older installs used a legacy adapter
     * named in the registry; the profile can name it (loopback_device=\Device\NPF_{GUID}). */
    const char *legacy = winemu_profile_get("loopback_device");
    return legacy && *legacy ? legacy : PREFIX "Loopback";
}

static uint64_t fnv1a(const char *text, uint64_t seed)
{
    uint64_t hash = 1469598103934665603ULL ^ seed;
    for (; *text; text++) {
        hash ^= (unsigned char)*text;
        hash *= 1099511628211ULL;
    }
    return hash;
}

EXPORT void npf_device_name(const char *ifname, char *out, size_t size)
{
    uint64_t a = fnv1a(ifname, 0), b = fnv1a(ifname, 0x9E3779B97F4A7C15ULL);
    snprintf(out, size, PREFIX "{%08X-%04X-%04X-%04X-%012llX}", (unsigned)(a >> 32),
             (unsigned)(a >> 16) & 0xFFFF, (unsigned)a & 0xFFFF, (unsigned)(b >> 48),
             (unsigned long long)(b & 0xFFFFFFFFFFFFULL));
}

EXPORT int npf_lookup(const char *device, char *ifname, size_t size, int *loopback)
{
    if (device == NULL)
        return 0;
    if (strcasecmp(device, npf_loopback_name()) == 0) {
        *loopback = 1;
        snprintf(ifname, size, "lo");
        return 1;
    }
    *loopback = 0;
    struct if_nameindex *names = if_nameindex(), *n;
    int found = 0;
    for (n = names; n && n->if_index; n++) {
        char candidate[128];
        if (strcmp(n->if_name, "lo") == 0)
            continue;
        npf_device_name(n->if_name, candidate, sizeof candidate);
        if (strcasecmp(candidate, device) == 0) {
            snprintf(ifname, size, "%s", n->if_name);
            found = 1;
            break;
        }
    }
    if (names)
        if_freenameindex(names);
    return found;
}

/* ------------------------------------------------------------------------------------------ */
/* Open instances */

struct cap {
    struct cap *next;
    int32_t sec, usec;
    uint32_t caplen, len;
    uint8_t data[];
};

struct source {
    pcap_t *pcap;
    int fd;
    int egress_multicast;        /* loopback: outgoing multicast on another interface */
    unsigned ring_drops;         /* ps_drop of the real capture, last seen */
    char ifname[IF_NAMESIZE];
};

#define MAX_SOURCES 80

struct npf_open {
    pthread_mutex_t lock;
    int loopback;
    char ifname[IF_NAMESIZE];
    long size, free_bytes, mintocopy;
    int snaplen;
    struct cap *head, *tail;
    uint32_t received, dropped, accepted;
    struct bpf_program filter;        /* bf_insns malloc'ed here; NULL: accept snaplen */
    HANDLE read_event;
    int detached;
    struct source sources[MAX_SOURCES];
    int nsources;
    int stop[2];
    pthread_t thread;
};

static void reset_buffer(struct npf_open *o)
{
    /* Openclos.c NPF_ResetBufferContents: free the queue, Free = Size, and zero Accepted,
     * Dropped and Received.  It does not touch the read event. */
    struct cap *c = o->head;
    while (c) {
        struct cap *next = c->next;
        free(c);
        c = next;
    }
    o->head = o->tail = NULL;
    o->free_bytes = o->size;
    o->received = o->dropped = o->accepted = 0;
}

static void tap(struct npf_open *o, const struct pcap_pkthdr *h, const uint8_t *frame,
                uint32_t caplen, uint32_t len)
{
    /* Read.c NPF_DoTap / NPF_TapExForEachOpen, in their order. */
    pthread_mutex_lock(&o->lock);
    if (o->detached) {
        pthread_mutex_unlock(&o->lock);
        return;
    }
    uint32_t fres = (uint32_t)o->snaplen;
    if (o->filter.bf_insns) {
        struct pcap_pkthdr check = *h;
        check.caplen = caplen;
        check.len = len;
        fres = (uint32_t)npf_real()->offline_filter(&o->filter, &check, frame);
    }
    if (fres == 0) {
        pthread_mutex_unlock(&o->lock);
        return;
    }
    o->received++;                                  /* passed this open's filter */
    if (caplen > fres)
        caplen = fres;
    long need = (long)(sizeof(struct npf_bpf_hdr) + caplen);     /* NPF_CAP_SIZE(caplen) */
    if (o->size <= 0) {
        o->dropped++;                               /* no buffer: dropped, no event */
    } else if (o->free_bytes <= 0 || o->free_bytes - need < 0) {
        o->dropped++;                               /* "May as well tell the application" */
        winemu_event_set(o->read_event);
    } else {
        struct cap *c = malloc(sizeof *c + caplen);
        if (c == NULL) {
            o->dropped++;
        } else {
            c->next = NULL;
            c->sec = (int32_t)h->ts.tv_sec;
            c->usec = (int32_t)h->ts.tv_usec;
            c->caplen = caplen;
            c->len = len;
            memcpy(c->data, frame, caplen);
            if (o->tail)
                o->tail->next = c;
            else
                o->head = c;
            o->tail = c;
            o->free_bytes -= need;
            o->accepted++;
            if (o->size - o->free_bytes >= o->mintocopy)
                winemu_event_set(o->read_event);
        }
    }
    pthread_mutex_unlock(&o->lock);
}

struct tap_ctx {
    struct npf_open *open;
    struct source *source;
};

static int ipv4_fragment(const uint8_t *ip, uint32_t length)
{
    return length >= 8 && ((ip[6] & 0x3F) || ip[7]);      /* MF or a fragment offset */
}

static void on_frame(u_char *user, const struct pcap_pkthdr *h, const u_char *bytes)
{
    struct tap_ctx *ctx = (struct tap_ctx *)user;
    struct npf_open *o = ctx->open;
    if (!o->loopback) {
        tap(o, h, bytes, h->caplen, h->len);
        return;
    }
    /* Loopback: Linux lo and the egress interfaces are Ethernet; Npcap's loopback adapter
     * is DLT_NULL with a 4-byte host-order family (Loopback.c NPF_TapLoopback, macros.h:
     * DLTNULLTYPE_IP 2, DLTNULLTYPE_IPV6 0x18) in front of the IP packet. */
    if (h->caplen < 14 + 20)
        return;
    unsigned ethertype = (unsigned)bytes[12] << 8 | bytes[13];
    const uint8_t *ip = bytes + 14;
    uint32_t caplen = h->caplen - 14, len = h->len - 14;
    uint32_t family;
    if (ethertype == 0x0800) {
        family = 2;
        if (ipv4_fragment(ip, caplen))
            return;                                 /* NPF_ShouldProcess skips fragments */
        if (ctx->source->egress_multicast) {
            uint32_t dst;
            memcpy(&dst, ip + 16, 4);
            if ((ip[16] & 0xF0) != 0xE0 || !winemu_group_primed(dst))
                return;
        }
    } else if (ethertype == 0x86DD) {
        family = 0x18;
        if (ctx->source->egress_multicast || (caplen > 6 && ip[6] == 44))
            return;                                 /* v6: no joins tracked; fragments skipped */
    } else {
        return;
    }
    uint8_t frame[4 + 65536 + 64];
    if (caplen > sizeof frame - 4)
        caplen = sizeof frame - 4;
    memcpy(frame, &family, 4);
    memcpy(frame + 4, ip, caplen);
    tap(o, h, frame, caplen + 4, len + 4);
}

static void detach(struct npf_open *o)
{
    /* Openclos.c NPF_DetachAdapter: OpenDetached, and the read event is set. */
    pthread_mutex_lock(&o->lock);
    o->detached = 1;
    winemu_event_set(o->read_event);
    pthread_mutex_unlock(&o->lock);
}

/* Frames the real Linux capture under this instance dropped never reach the emulated driver;
 * NDIS would have handed them to NPF, whose buffer is the one that overflows on Windows.  They
 * are counted as the driver's drops, so that a lost frame is never silent. */
static void count_ring_drops(struct npf_open *o, struct source *s)
{
    struct pcap_stat st;
    if (npf_real()->stats(s->pcap, &st) != 0 || st.ps_drop == s->ring_drops)
        return;
    pthread_mutex_lock(&o->lock);
    o->dropped += st.ps_drop - s->ring_drops;
    pthread_mutex_unlock(&o->lock);
    s->ring_drops = st.ps_drop;
}

static void *reader(void *arg)
{
    struct npf_open *o = arg;
    struct tap_ctx ctx[MAX_SOURCES];
    struct pollfd fds[MAX_SOURCES + 1];
    int alive[MAX_SOURCES];
    for (int i = 0; i < o->nsources; i++) {
        ctx[i] = (struct tap_ctx){o, &o->sources[i]};
        alive[i] = 1;
    }
    for (;;) {
        int n = 0;
        int index[MAX_SOURCES];
        for (int i = 0; i < o->nsources; i++)
            if (alive[i]) {
                fds[n] = (struct pollfd){o->sources[i].fd, POLLIN, 0};
                index[n++] = i;
            }
        fds[n] = (struct pollfd){o->stop[0], POLLIN, 0};
        int ready = poll(fds, (nfds_t)n + 1, 100);
        if (fds[n].revents)
            return NULL;
        for (int k = 0; k < n; k++) {
            struct source *s = &o->sources[index[k]];
            int gone = if_nametoindex(s->ifname) == 0;
            if (ready > 0 && fds[k].revents) {
                int rc = npf_real()->dispatch(s->pcap, -1, on_frame, (u_char *)&ctx[index[k]]);
                gone |= rc < 0 && rc != PCAP_ERROR_BREAK;
                count_ring_drops(o, s);
            }
            if (gone) {
                alive[index[k]] = 0;
                if (!s->egress_multicast)
                    detach(o);                      /* the adapter itself went away */
            }
        }
    }
}

static int interface_mtu(const char *ifname)
{
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "%s", ifname);
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    int ok = fd >= 0 && ioctl(fd, SIOCGIFMTU, &ifr) == 0;
    if (fd >= 0)
        close(fd);
    return ok ? ifr.ifr_mtu : -1;
}

static int add_source(struct npf_open *o, const char *ifname, int egress_multicast)
{
    if (o->nsources >= MAX_SOURCES)
        return 0;
    char errbuf[PCAP_ERRBUF_SIZE];
    const struct npf_real *r = npf_real();
    pcap_t *p = r->create(ifname, errbuf);
    if (p == NULL)
        return 0;
    /* Immediate mode cuts the ring into slots sized from the snaplen (up to 64 KiB on a veth
     * with offloads), so a 65,600-byte snaplen on a 1,500-byte link left 32 slots, and a
     * few milliseconds' stall of this thread lost frames that Windows would have kept: the
     * snaplen follows the interface's MTU except on lo (65,536). */
    int mtu = interface_mtu(ifname);
    r->set_snaplen(p, strcmp(ifname, "lo") == 0 || mtu <= 0 ? 65536 + 64 : mtu + 64);
    r->set_immediate_mode(p, 1);
    r->set_buffer_size(p, 8 << 20);
    if (r->activate(p) < 0) {
        r->close(p);
        return 0;
    }
    r->setnonblock(p, 1, errbuf);
    if (strcmp(ifname, "lo") == 0) {
        r->setdirection(p, PCAP_D_IN);
    } else if (egress_multicast) {
        struct bpf_program prog;
        r->setdirection(p, PCAP_D_OUT);
        if (r->compile(p, &prog, "ip multicast and udp", 1, PCAP_NETMASK_UNKNOWN) == 0) {
            r->setfilter(p, &prog);
            r->freecode(&prog);
        }
    }
    struct source *s = &o->sources[o->nsources++];
    s->pcap = p;
    s->fd = r->get_selectable_fd(p);
    s->egress_multicast = egress_multicast;
    snprintf(s->ifname, sizeof s->ifname, "%s", ifname);
    return 1;
}

EXPORT struct npf_open *npf_open(const char *device, DWORD *error)
{
    char ifname[IF_NAMESIZE];
    int loopback;
    /* No driver (the npcap service is not running): no device object to open. */
    if (winemu_profile_int("service.npcap", 4) != 4) {
        *error = ERROR_FILE_NOT_FOUND;
        return NULL;
    }
    if (!npf_lookup(device, ifname, sizeof ifname, &loopback)) {
        *error = ERROR_BAD_UNIT;
        return NULL;
    }
    /* Admin-only mode (Packet.c DriverEntry: the device's SDDL admits SYSTEM and
     * Administrators only).  Packet.dll starts NpcapHelper.exe with a UAC prompt; when the user
     * declines, the plain open is refused: ERROR_ACCESS_DENIED with current Npcap, or
     * ERROR_BAD_UNIT (older Packet.dll, as libpcap's pcap-npf.c comment says). */
    if (winemu_profile_int("admin_only", 0) && !winemu_profile_int("elevated", 1)) {
        const char *uac = winemu_profile_get("uac");
        if (uac == NULL || strcmp(uac, "accept") != 0) {
            *error = uac && strcmp(uac, "decline_bad_unit") == 0 ? ERROR_BAD_UNIT
                                                                   : ERROR_ACCESS_DENIED;
            return NULL;
        }
    }
    char key[96];
    snprintf(key, sizeof key, "adapter.%s.open_error", ifname);
    if (winemu_profile_int(key, 0)) {
        *error = (DWORD)winemu_profile_int(key, 0);
        return NULL;
    }
    struct npf_open *o = calloc(1, sizeof *o);
    pthread_mutex_init(&o->lock, NULL);
    o->loopback = loopback;
    snprintf(o->ifname, sizeof o->ifname, "%s", ifname);
    o->snaplen = 65536;
    o->size = o->free_bytes = 0;          /* Openclos.c NPF_CreateOpenObject: Size = 0 */
    o->mintocopy = 0;                     /* ... and MinToCopy = 0 */
    /* Packet32.cpp PacketSetReadEvt: CreateEvent(NULL, TRUE, FALSE, NULL), handed to the
     * driver, which resets it (funcBIOCSETEVENTHANDLE). */
    o->read_event = winemu_handle_new(WINEMU_EVENT, 1, 0, 0);
    if (!add_source(o, ifname, 0)) {
        winemu_handle_free(o->read_event);
        free(o);
        *error = ERROR_GEN_FAILURE;
        return NULL;
    }
    if (loopback) {
        struct ifaddrs *addrs, *a;
        if (getifaddrs(&addrs) == 0) {
            for (a = addrs; a; a = a->ifa_next) {
                if (!a->ifa_addr || a->ifa_addr->sa_family != AF_INET
                        || strcmp(a->ifa_name, "lo") == 0)
                    continue;
                int seen = 0;
                for (int i = 0; i < o->nsources; i++)
                    seen |= strcmp(o->sources[i].ifname, a->ifa_name) == 0;
                if (!seen)
                    add_source(o, a->ifa_name, 1);
            }
            freeifaddrs(addrs);
        }
    }
    if (pipe(o->stop) != 0)
        abort();
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);     /* signals belong to CPython's threads */
    pthread_create(&o->thread, NULL, reader, o);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return o;
}

EXPORT int npf_is_loopback(struct npf_open *o) { return o->loopback; }

EXPORT int npf_linktype(struct npf_open *o)
{
    return o->loopback ? DLT_NULL : DLT_EN10MB;
}

EXPORT DWORD npf_set_hw_filter(struct npf_open *o, int promiscuous)
{
    /* Loopback accepts OID_GEN_CURRENT_PACKET_FILTER (Packet.c funcBIOC_OID).  An adapter whose
     * profile says adapter.<if>.promisc_error=N refuses promiscuous mode with Win32 error N. */
    char key[96];
    snprintf(key, sizeof key, "adapter.%s.promisc_error", o->ifname);
    if (promiscuous && !o->loopback && winemu_profile_int(key, 0))
        return (DWORD)winemu_profile_int(key, 0);
    return 0;
}

EXPORT int npf_set_buffer(struct npf_open *o, long size)
{
    /* funcBIOCSETBUFFERSIZE: at most NPF_MAX_BUFFER_SIZE; resets the buffer and counters. */
    if (size < 0 || size > 0x40000000L)
        return 0;
    pthread_mutex_lock(&o->lock);
    o->size = size;
    reset_buffer(o);
    pthread_mutex_unlock(&o->lock);
    return 1;
}

EXPORT void npf_set_mintocopy(struct npf_open *o, long size)
{
    pthread_mutex_lock(&o->lock);
    o->mintocopy = size;
    pthread_mutex_unlock(&o->lock);
}

EXPORT long npf_mintocopy(struct npf_open *o)
{
    pthread_mutex_lock(&o->lock);
    long size = o->mintocopy;
    pthread_mutex_unlock(&o->lock);
    return size;
}

EXPORT void npf_set_snaplen(struct npf_open *o, int snaplen)
{
    pthread_mutex_lock(&o->lock);
    o->snaplen = snaplen;
    pthread_mutex_unlock(&o->lock);
}

EXPORT DWORD npf_set_filter(struct npf_open *o, const struct bpf_insn *insns, unsigned count)
{
    /* Packet.c NPF_IoControl: an empty program is an ioctl without a buffer
     * (STATUS_INVALID_PARAMETER).  funcBIOCSETF: more than BPF_MAXINSNS (win_bpf.h: 4096)
     * instructions or a program bpf_validate rejects is STATUS_INVALID_DEVICE_REQUEST (the
     * driver's bpf_validate is the BSD one, as libpcap's); then swap the program in and
     * NPF_ResetBufferContents. */
    if (insns == NULL || count == 0)
        return ERROR_INVALID_PARAMETER;
    if (count > 4096 || !npf_real()->validate(insns, (int)count))
        return ERROR_INVALID_FUNCTION;
    struct bpf_insn *copy = malloc(sizeof *insns * count);
    if (copy == NULL)
        return ERROR_NO_SYSTEM_RESOURCES;              /* STATUS_INSUFFICIENT_RESOURCES */
    memcpy(copy, insns, sizeof *insns * count);
    pthread_mutex_lock(&o->lock);
    free(o->filter.bf_insns);
    o->filter.bf_insns = copy;
    o->filter.bf_len = count;
    reset_buffer(o);
    pthread_mutex_unlock(&o->lock);
    return 0;
}

EXPORT long npf_read(struct npf_open *o, uint8_t *buffer, unsigned long size, DWORD *error)
{
    /* Read.c NPF_Read: never blocks; clears the event first; copies whole records while
     * more than an empty record's worth of room is left (a first record that does not fit is
     * truncated, a later one stays queued); Packet_WORDALIGN after each. */
    const unsigned long header = sizeof(struct npf_bpf_hdr);
    pthread_mutex_lock(&o->lock);
    if (o->size == 0) {
        pthread_mutex_unlock(&o->lock);
        *error = ERROR_GEN_FAILURE;                /* STATUS_UNSUCCESSFUL */
        return -1;
    }
    if (size < header) {
        pthread_mutex_unlock(&o->lock);
        *error = ERROR_INSUFFICIENT_BUFFER;        /* STATUS_BUFFER_TOO_SMALL: no bpf_hdr fits */
        return -1;
    }
    winemu_event_reset(o->read_event);
    unsigned long copied = 0;
    while (size > copied + header && o->head) {
        struct cap *c = o->head;
        uint32_t caplen = c->caplen;
        if (copied + header + caplen > size) {
            if (copied != 0)
                break;
            caplen = (uint32_t)(size - header);
        }
        struct npf_bpf_hdr hdr = {c->sec, c->usec, caplen, c->len, (uint16_t)header};
        memcpy(buffer + copied, &hdr, header);
        memcpy(buffer + copied + header, c->data, caplen);
        copied = NPF_WORDALIGN(copied + header + caplen);
        o->head = c->next;
        if (o->head == NULL)
            o->tail = NULL;
        o->free_bytes += (long)(header + c->caplen);
        free(c);
    }
    if (copied > size)
        copied = size;
    int removed = copied == 0 && o->detached;
    pthread_mutex_unlock(&o->lock);
    if (removed) {
        *error = ERROR_DEVICE_REMOVED;             /* STATUS_DEVICE_REMOVED */
        return -1;
    }
    return (long)copied;
}

EXPORT void npf_stats(struct npf_open *o, uint32_t *recv, uint32_t *drop, uint32_t *capt)
{
    /* Packet.c funcBIOCGSTATS: bs_recv = Received, bs_drop = Dropped (+ResourceDropped). */
    pthread_mutex_lock(&o->lock);
    *recv = o->received;
    *drop = o->dropped;
    *capt = o->accepted;
    pthread_mutex_unlock(&o->lock);
}

EXPORT HANDLE npf_read_event(struct npf_open *o) { return o->read_event; }

EXPORT int npf_mac(struct npf_open *o, uint8_t mac[6])
{
    if (o->loopback)
        return 0;
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "%s", o->ifname);
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    int ok = fd >= 0 && ioctl(fd, SIOCGIFHWADDR, &ifr) == 0;
    if (fd >= 0)
        close(fd);
    if (ok)
        memcpy(mac, ifr.ifr_hwaddr.sa_data, 6);
    return ok;
}

EXPORT DWORD npf_oid_request(struct npf_open *o, int set, uint32_t oid, uint8_t *data,
                             uint32_t *length)
{
    /* Packet.c funcBIOC_OID, in its order.  The request must hold a whole PACKET_OID_DATA
     * (12 bytes: Length >= 4) and Length > 0, else STATUS_BUFFER_TOO_SMALL. */
    uint32_t value;
    if (*length < 4)
        return ERROR_INSUFFICIENT_BUFFER;
    if (o->loopback) {
        /* "We don't really support OID requests on our fake loopback adapter, but we can
         * pretend": a set of OID_GEN_CURRENT_PACKET_FILTER succeeds, and of the queries only
         * the few it fakes (OID_GEN_MEDIA_IN_USE: NdisMediumNull in DltNull mode) answer;
         * anything else is STATUS_INVALID_DEVICE_REQUEST -- no 802.3 OID, so no MAC. */
        if (set)
            return oid == OID_GEN_CURRENT_PACKET_FILTER ? 0 : ERROR_INVALID_FUNCTION;
        if (oid != OID_GEN_MEDIA_IN_USE)
            return ERROR_INVALID_FUNCTION;
        value = NDIS_MEDIUM_NULL;
        memcpy(data, &value, 4);
        *length = 4;
        return 0;
    }
    if (set && oid == OID_GEN_CURRENT_PACKET_FILTER) {
        /* "OID_GEN_CURRENT_PACKET_FILTER requires additional checks": exactly one ULONG. */
        if (*length != 4)
            return ERROR_INSUFFICIENT_BUFFER;
        memcpy(&value, data, 4);
        return npf_set_hw_filter(o, (value & NDIS_PACKET_TYPE_PROMISCUOUS) != 0);
    }
    /* Everything else goes to the miniport (NPF_DoInternalRequest).  An Ethernet miniport
     * answers OID_GEN_MEDIA_IN_USE (NdisMedium802_3) and OID_802_3_CURRENT_ADDRESS (the MAC);
     * a buffer too short for the answer and an OID it does not support are refused.  Npcap
     * passes the miniport's NDIS status through with the customer bit set (OID_REQUEST_MAP_
     * STATUS: 0xE00000BB for NDIS_STATUS_NOT_SUPPORTED); the emulation answers with plain
     * Win32 codes instead, ERROR_INSUFFICIENT_BUFFER and ERROR_NOT_SUPPORTED (what the
     * status maps to without that bit; pcap-npf.c treats both spellings alike). */
    if (!set && oid == OID_GEN_MEDIA_IN_USE) {
        value = NDIS_MEDIUM_802_3;
        memcpy(data, &value, 4);
        *length = 4;
        return 0;
    }
    if (!set && oid == OID_802_3_CURRENT_ADDRESS) {
        uint8_t mac[6];
        if (*length < 6)
            return ERROR_INSUFFICIENT_BUFFER;
        if (!npf_mac(o, mac))
            return ERROR_GEN_FAILURE;
        memcpy(data, mac, 6);
        *length = 6;
        return 0;
    }
    return ERROR_NOT_SUPPORTED;
}

EXPORT void npf_close(struct npf_open *o)
{
    if (o == NULL)
        return;
    if (write(o->stop[1], "x", 1) < 0)
        abort();
    pthread_join(o->thread, NULL);
    for (int i = 0; i < o->nsources; i++)
        npf_real()->close(o->sources[i].pcap);
    close(o->stop[0]);
    close(o->stop[1]);
    pthread_mutex_lock(&o->lock);
    o->size = 0;
    reset_buffer(o);
    free(o->filter.bf_insns);
    pthread_mutex_unlock(&o->lock);
    /* Packet32.cpp PacketCloseAdapter: SetEvent(ReadEvent); CloseHandle(ReadEvent). */
    winemu_event_set(o->read_event);
    winemu_handle_free(o->read_event);
    pthread_mutex_destroy(&o->lock);
    free(o);
}
