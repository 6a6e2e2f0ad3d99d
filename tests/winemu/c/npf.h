/* The emulated Npcap driver (npf.sys) and the real Linux libpcap under it.
 *
 * libnpf.so plays the NPF driver for the emulated Packet.dll and wpcap.dll: one "open instance"
 * per pcap handle, with Npcap's kernel buffer, counters, filter and read event
 * (packetWin7/npf/npf: Read.c, Packet.c, Openclos.c, Loopback.c).  Frames come from real
 * captures on the namespace's Linux interfaces.  The real libpcap is reached only through
 * npf_real(): wpcap.so exports the same pcap_* names, so nothing may link against it directly.
 */
#ifndef NPF_H
#define NPF_H

#include <pcap/pcap.h>

#include "winemu.h"

struct npf_real {
    pcap_t *(*create)(const char *, char *);
    int (*set_snaplen)(pcap_t *, int);
    int (*set_promisc)(pcap_t *, int);
    int (*set_immediate_mode)(pcap_t *, int);
    int (*set_buffer_size)(pcap_t *, int);
    int (*set_timeout)(pcap_t *, int);
    int (*activate)(pcap_t *);
    void (*close)(pcap_t *);
    char *(*geterr)(pcap_t *);
    int (*setnonblock)(pcap_t *, int, char *);
    int (*setdirection)(pcap_t *, pcap_direction_t);
    int (*compile)(pcap_t *, struct bpf_program *, const char *, int, bpf_u_int32);
    int (*setfilter)(pcap_t *, struct bpf_program *);
    void (*freecode)(struct bpf_program *);
    int (*dispatch)(pcap_t *, int, pcap_handler, u_char *);
    int (*next_ex)(pcap_t *, struct pcap_pkthdr **, const u_char **);
    int (*get_selectable_fd)(pcap_t *);
    int (*findalldevs)(pcap_if_t **, char *);
    void (*freealldevs)(pcap_if_t *);
    pcap_t *(*open_dead)(int, int);
    pcap_t *(*open_offline)(const char *, char *);
    const char *(*statustostr)(int);
    const char *(*datalink_val_to_name)(int);
    int (*datalink)(pcap_t *);
    int (*snapshot)(pcap_t *);
    void (*dump)(u_char *, const struct pcap_pkthdr *, const u_char *);
    void (*dump_close)(pcap_dumper_t *);
    int (*offline_filter)(const struct bpf_program *, const struct pcap_pkthdr *, const u_char *);
    int (*stats)(pcap_t *, struct pcap_stat *);
    void (*breakloop)(pcap_t *);
    int (*validate)(const struct bpf_insn *, int);
};

EXPORT const struct npf_real *npf_real(void);

/* Npcap's struct bpf_hdr as NPF_Read writes it into the user's buffer (Common/npcap-bpf.h):
 * a Windows timeval of two 32-bit longs, caplen, datalen, hdrlen: 20 bytes with padding.
 * Records are Packet_WORDALIGN'ed (4 bytes). */
struct npf_bpf_hdr {
    int32_t tv_sec;
    int32_t tv_usec;
    uint32_t bh_caplen;
    uint32_t bh_datalen;
    uint16_t bh_hdrlen;
};
#define NPF_WORDALIGN(x) (((x) + 3u) & ~3u)

struct npf_open;

/* "\Device\NPF_{GUID}" <-> Linux interface; "\Device\NPF_Loopback" (or the legacy adapter the
 * profile names) is the loopback capture device.  Returns 1 when *device* names one. */
EXPORT int npf_lookup(const char *device, char *ifname, size_t size, int *loopback);
EXPORT void npf_device_name(const char *ifname, char *out, size_t size);
EXPORT const char *npf_loopback_name(void);

/* PacketOpenAdapter: 0 with *error set to a Win32 error code when it cannot be opened. */
EXPORT struct npf_open *npf_open(const char *device, DWORD *error);
EXPORT int npf_is_loopback(struct npf_open *o);
EXPORT int npf_linktype(struct npf_open *o);
EXPORT DWORD npf_set_hw_filter(struct npf_open *o, int promiscuous);  /* 0 or a Win32 error */
EXPORT int npf_set_buffer(struct npf_open *o, long size);            /* BIOCSETBUFFERSIZE */
EXPORT void npf_set_mintocopy(struct npf_open *o, long size);         /* BIOCSMINTOCOPY */
EXPORT long npf_mintocopy(struct npf_open *o);                        /* for the tests */
EXPORT void npf_set_snaplen(struct npf_open *o, int snaplen);
/* BIOCSETF: 0 or a Win32 error (the program is refused, nothing changes). */
EXPORT DWORD npf_set_filter(struct npf_open *o, const struct bpf_insn *insns, unsigned count);
EXPORT long npf_read(struct npf_open *o, uint8_t *buffer, unsigned long size, DWORD *error);
EXPORT void npf_stats(struct npf_open *o, uint32_t *recv, uint32_t *drop, uint32_t *capt);
EXPORT HANDLE npf_read_event(struct npf_open *o);
EXPORT int npf_mac(struct npf_open *o, uint8_t mac[6]);

/* OIDs (ntddndis.h) and what the driver answers for them.  NdisMediumNull is Packet32.h's
 * custom medium of the loopback adapter (-1 in a UINT). */
#define OID_GEN_MEDIA_IN_USE 0x00010104u
#define OID_GEN_CURRENT_PACKET_FILTER 0x0001010Eu
#define OID_802_3_CURRENT_ADDRESS 0x01010102u
#define NDIS_PACKET_TYPE_PROMISCUOUS 0x00000020u
#define NDIS_MEDIUM_802_3 0u
#define NDIS_MEDIUM_NULL 0xFFFFFFFFu

/* BIOCQUERYOID / BIOCSETOID (Packet.c funcBIOC_OID), behind Packet.dll's PacketRequest and
 * wpcap's pcap_oid_get_request: 0 or a Win32 error.  *length is the size of *data on entry
 * and the size of the answer on success. */
EXPORT DWORD npf_oid_request(struct npf_open *o, int set, uint32_t oid, uint8_t *data,
                             uint32_t *length);
EXPORT void npf_close(struct npf_open *o);

#endif
