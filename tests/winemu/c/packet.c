/* Packet.dll, emulated: the diagnostics udpcap_ctypes reads and Npcap's capture API
 * (Common/Packet32.h, packetWin7/Dll/Packet32.cpp), over the emulated driver (npf.h).
 *
 * Versions come from the profile (packet_version, driver_version); the driver version is the
 * driver's own answer when it runs, and the npcap.sys file version (Packet.dll reads it in
 * DllMain) when it does not.
 *
 * The capture API is cdecl with Packet32.h's C signatures and structs (their x86-64 layouts
 * are Win64's: asserted below).  Each Packet32.cpp function where the driver is called
 * (DeviceIoControl/ReadFile) calls the matching npf_* function instead; the NTSTATUS the
 * driver would complete the IRP with arrives here as the Win32 error Windows maps it to.
 *
 * Last error: Packet32.cpp ends almost every function with SetLastError(err).  kernel32's
 * SetLastError sets the shim's last error and errno, which ctypes' use_errno copy (the
 * emulation's use_last_error, tests/winemu/boot.py) hands to ctypes.get_last_error().  Where
 * err is ERROR_SUCCESS in Packet32.cpp, a success sets the last error to 0 (LAST); where it
 * is GetLastError() after a successful DeviceIoControl/ReadFile, the last error stays as
 * the call found it (KEEP: errno restored, as kernel32.c's OK()).
 */
#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "npf.h"

#define ENTER int entry_errno_ = errno
#define KEEP(value) do { errno = entry_errno_; return (value); } while (0)
#define LAST(code, value) do { SetLastError(code); return (value); } while (0)

/* ------------------------------------------------------------------------------------------ */
/* Types of Packet32.h (with windows.h's; Windows is LLP64: ULONG is 32-bit) */

typedef void VOID;
typedef void *PVOID;
typedef char CHAR;
typedef uint8_t UCHAR;
typedef uint32_t ULONG;
typedef uint64_t ULONGLONG;
typedef uintptr_t ULONG_PTR;
typedef const char *PCCH;

/* Packet32.h: "Network type structure", filled by PacketGetNetType. */
typedef struct NetType {
    UINT LinkType;
    ULONGLONG LinkSpeed;
} NetType;

/* minwinbase.h (as mingw-w64 spells it): the deprecated member of PACKET. */
typedef struct _OVERLAPPED {
    ULONG_PTR Internal;
    ULONG_PTR InternalHigh;
    union {
        struct {
            DWORD Offset;
            DWORD OffsetHigh;
        };
        PVOID Pointer;
    };
    HANDLE hEvent;
} OVERLAPPED;

/* Packet32.h: "Structure that contains a group of packets coming from the driver". */
typedef struct _PACKET {
    HANDLE hEvent;                 /* deprecated */
    OVERLAPPED OverLapped;         /* deprecated */
    PVOID Buffer;
    UINT Length;
    DWORD ulBytesReceived;
    BOOLEAN bIoComplete;           /* deprecated */
} PACKET, *LPPACKET;

/* Packet32.h: "Describes an opened network adapter" (without HAVE_AIRPCAP_API). */
#define MAX_LINK_NAME_LENGTH 64
#define ADAPTER_NAME_LENGTH (256 + 12)
#define INFO_FLAG_NPCAP_LOOPBACK 0x100
typedef struct WAN_ADAPTER_INT WAN_ADAPTER;
typedef WAN_ADAPTER *PWAN_ADAPTER;
typedef struct _ADAPTER {
    HANDLE hFile;
    CHAR SymbolicLink[MAX_LINK_NAME_LENGTH];
    int NumWrites;
    HANDLE ReadEvent;
    UINT ReadTimeOut;
    CHAR Name[ADAPTER_NAME_LENGTH];
    PWAN_ADAPTER pWanAdapter;
    UINT Flags;
} ADAPTER, *LPADAPTER;

/* Common/npcap-bpf.h: what PacketGetStats fills (two of the four). */
struct bpf_stat {
    UINT bs_recv;
    UINT bs_drop;
    UINT ps_ifdrop;
    UINT bs_capt;
};

/* Common/npcap-defs.h: an OID request, Data as long as Length says. */
typedef struct _PACKET_OID_DATA {
    ULONG Oid;
    ULONG Length;
    UCHAR Data[1];
} PACKET_OID_DATA, *PPACKET_OID_DATA;

/* Packet32-Int.h ADAPTER_PRIV: "Npcap's internal representation of an adapter object", the
 * public ADAPTER first, then private state -- here the emulated driver's open instance. */
typedef struct _ADAPTER_PRIV {
    ADAPTER ad;
    struct npf_open *open;
} ADAPTER_PRIV;
#define LPAD_TO_ADAPTER_PRIV(ad) ((ADAPTER_PRIV *)(ad))

/* Win64 layouts (x86-64 Linux has the same sizes for these types): what udpcap_ctypes'
 * _structs builds and tests/test_abi_layouts.py proves against mingw-w64. */
_Static_assert(sizeof(NetType) == 16 && offsetof(NetType, LinkSpeed) == 8, "NetType");
_Static_assert(sizeof(OVERLAPPED) == 32 && offsetof(OVERLAPPED, hEvent) == 24, "OVERLAPPED");
_Static_assert(sizeof(PACKET) == 64 && offsetof(PACKET, Buffer) == 40
               && offsetof(PACKET, Length) == 48 && offsetof(PACKET, ulBytesReceived) == 52
               && offsetof(PACKET, bIoComplete) == 56, "PACKET");
_Static_assert(offsetof(ADAPTER, ReadEvent) == 80 && offsetof(ADAPTER, ReadTimeOut) == 88
               && offsetof(ADAPTER, Name) == 92 && offsetof(ADAPTER, Flags) == 368
               && sizeof(ADAPTER) == 376, "ADAPTER");
_Static_assert(sizeof(struct bpf_stat) == 16, "bpf_stat");
_Static_assert(sizeof(PACKET_OID_DATA) == 12, "PACKET_OID_DATA");     /* npcap-defs.h C_ASSERT */
_Static_assert(sizeof(struct npf_bpf_hdr) == 20, "bpf_hdr");

/* ------------------------------------------------------------------------------------------ */
/* Diagnostics */

EXPORT const char *PacketGetVersion(void)
{
    const char *version = winemu_profile_get("packet_version");
    return version ? version : "1.87";
}

EXPORT const char *PacketGetDriverVersion(void)
{
    const char *version = winemu_profile_get("driver_version");
    if (winemu_profile_int("service.npcap", 4) != 4)
        return PacketGetVersion();             /* the file version, not the driver's answer */
    return version ? version : "1.87.203";
}

EXPORT const char *PacketGetDriverName(void)
{
    return "NPCAP";                            /* WpcapNames.h NPF_DRIVER_NAME */
}

EXPORT BOOLEAN PacketIsLoopbackAdapter(const char *name)
{
    return name != NULL && strcasecmp(name, npf_loopback_name()) == 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Opening and closing */

/* Packet32.cpp NpcapGetAdapterID: the name must start with WINPCAP_COMPAT_DEVICE_PREFIX
 * ("\Device\NPF_", Packet32-Int.h) or NPF_DRIVER_COMPLETE_DEVICE_PREFIX ("\Device\NPCAP\",
 * WpcapNames.h) and be shorter than ADAPTER_NAME_LENGTH, else ERROR_INVALID_NAME. */
static int valid_adapter_name(const char *name)
{
    return (strncasecmp(name, "\\Device\\NPF_", 12) == 0
            || strncasecmp(name, "\\Device\\NPCAP\\", 14) == 0)
           && strnlen(name, ADAPTER_NAME_LENGTH) < ADAPTER_NAME_LENGTH;
}

/* Packet32.cpp PacketOpenAdapter -> PacketOpenAdapterNPF: a zeroed ADAPTER_PRIV (HeapAlloc
 * HEAP_ZERO_MEMORY, so NumWrites 0 and SymbolicLink empty), the device opened (npf_open:
 * CreateFile's error on failure), PacketSetReadEvt (a manual-reset event handed to the driver,
 * ReadTimeOut = 0), INFO_FLAG_NPCAP_LOOPBACK when loopback support is on and
 * PacketIsLoopbackAdapter(name), Name copied.  NULL with the error as last error on failure,
 * SetLastError(ERROR_SUCCESS) on success. */
EXPORT LPADAPTER PacketOpenAdapter(PCCH AdapterNameWA)
{
    char narrow[ADAPTER_NAME_LENGTH + 1];
    if (AdapterNameWA == NULL)
        LAST(ERROR_INVALID_PARAMETER, NULL);   /* Npcap would read through it and crash */
    const char *name = AdapterNameWA;
    /* "Ugly heuristic to detect if the adapter is ASCII": a second byte 0 means a wide
     * string (WCHAR: the host's wchar_t, winemu.h), narrowed with "%ws". */
    if (name[0] != 0 && name[1] == 0) {
        const WCHAR *wide = (const WCHAR *)(const void *)AdapterNameWA;
        size_t i;
        for (i = 0; wide[i] != 0 && i < sizeof narrow - 1; i++)
            narrow[i] = (char)wide[i];
        narrow[i] = 0;
        name = narrow;
    }
    if (!valid_adapter_name(name))
        LAST(ERROR_INVALID_NAME, NULL);
    DWORD error = ERROR_SUCCESS;
    struct npf_open *open = npf_open(name, &error);
    if (open == NULL)
        LAST(error, NULL);
    ADAPTER_PRIV *priv = calloc(1, sizeof *priv);
    if (priv == NULL) {
        npf_close(open);
        LAST(ERROR_NOT_ENOUGH_MEMORY, NULL);
    }
    priv->open = open;
    priv->ad.hFile = (HANDLE)open;             /* "Handle to an open instance of the NPF driver" */
    priv->ad.ReadEvent = npf_read_event(open);
    priv->ad.ReadTimeOut = 0;
    if (winemu_profile_int("loopback_support", 1) && PacketIsLoopbackAdapter(name))
        priv->ad.Flags |= INFO_FLAG_NPCAP_LOOPBACK;
    memcpy(priv->ad.Name, name, strnlen(name, ADAPTER_NAME_LENGTH - 1));    /* StringCchCopyA */
    LAST(ERROR_SUCCESS, &priv->ad);
}

/* Packet32.cpp PacketCloseAdapter: NULL is ignored; SetEvent(ReadEvent), CloseHandle(ReadEvent),
 * CloseHandle(hFile), HeapFree (npf_close sets and frees the event and ends the instance). */
EXPORT VOID PacketCloseAdapter(LPADAPTER lpAdapter)
{
    ENTER;
    if (lpAdapter == NULL) {
        errno = entry_errno_;
        return;
    }
    ADAPTER_PRIV *priv = LPAD_TO_ADAPTER_PRIV(lpAdapter);
    npf_close(priv->open);
    free(priv);
    errno = entry_errno_;
}

/* ------------------------------------------------------------------------------------------ */
/* Requests */

/* Packet32.cpp PacketRequestHelper: DeviceIoControl(BIOCSETOID / BIOCQUERYOID); Length becomes
 * what the driver returned past the header: the answer's length, 0 on failure. */
static DWORD request(LPADAPTER adapter, BOOLEAN set, PPACKET_OID_DATA oid_data)
{
    uint32_t length = oid_data->Length;
    DWORD error = npf_oid_request(LPAD_TO_ADAPTER_PRIV(adapter)->open, set != 0, oid_data->Oid,
                                  oid_data->Data, &length);
    oid_data->Length = error == ERROR_SUCCESS ? length : 0;
    return error;
}

/* Packet32.cpp PacketRequest: SetLastError(err); TRUE when err is ERROR_SUCCESS. */
EXPORT BOOLEAN PacketRequest(LPADAPTER AdapterObject, BOOLEAN Set, PPACKET_OID_DATA OidData)
{
    DWORD error = request(AdapterObject, Set, OidData);
    LAST(error, error == ERROR_SUCCESS);
}

/* Packet32.cpp PacketSetHwFilter: PacketRequest(TRUE) of OID_GEN_CURRENT_PACKET_FILTER with the
 * filter as one ULONG (the driver turns NDIS_PACKET_TYPE_PROMISCUOUS into promiscuous mode). */
EXPORT BOOLEAN PacketSetHwFilter(LPADAPTER AdapterObject, ULONG Filter)
{
    union {
        PACKET_OID_DATA oid;
        UCHAR bytes[sizeof(PACKET_OID_DATA) + sizeof(ULONG)];
    } buffer;
    memset(&buffer, 0, sizeof buffer);
    buffer.oid.Oid = OID_GEN_CURRENT_PACKET_FILTER;
    buffer.oid.Length = sizeof(ULONG);
    memcpy(buffer.oid.Data, &Filter, sizeof Filter);
    DWORD error = request(AdapterObject, 1, &buffer.oid);
    LAST(error, error == ERROR_SUCCESS);
}

/* Packet32.cpp PacketGetNetType: NULL type is ERROR_INVALID_PARAMETER; the loopback adapter is
 * NdisMediumNull without asking the driver; others answer OID_GEN_MEDIA_IN_USE (LinkType
 * unchanged when that fails); "LinkSpeed is not supported": 0. */
EXPORT BOOLEAN PacketGetNetType(LPADAPTER AdapterObject, NetType *type)
{
    DWORD error = ERROR_SUCCESS;
    if (type == NULL)
        LAST(ERROR_INVALID_PARAMETER, FALSE);
    if (AdapterObject->Flags & INFO_FLAG_NPCAP_LOOPBACK) {
        type->LinkType = (UINT)NDIS_MEDIUM_NULL;
    } else {
        union {
            PACKET_OID_DATA oid;
            UCHAR bytes[sizeof(PACKET_OID_DATA) + sizeof(ULONGLONG)];
        } buffer;
        memset(&buffer, 0, sizeof buffer);
        buffer.oid.Oid = OID_GEN_MEDIA_IN_USE;
        buffer.oid.Length = sizeof(ULONG);
        error = request(AdapterObject, 0, &buffer.oid);
        if (error == ERROR_SUCCESS)
            memcpy(&type->LinkType, buffer.oid.Data, sizeof(UINT));
    }
    type->LinkSpeed = 0;
    LAST(error, error == ERROR_SUCCESS);
}

/* ------------------------------------------------------------------------------------------ */
/* Settings */

/* Packet32.cpp PacketSetBuff: BIOCSETBUFFERSIZE with dim in bytes (the doc comment's
 * "kilobytes" is WinPcap's; pcap-npf.c passes bytes).  The driver reads a ULONG and refuses
 * more than NPF_MAX_BUFFER_SIZE (Packet.h, 1 GiB; a negative int is a huge ULONG) with
 * STATUS_INSUFFICIENT_RESOURCES; it resets the buffer and counters. */
EXPORT BOOLEAN PacketSetBuff(LPADAPTER AdapterObject, int dim)
{
    ENTER;
    if (!npf_set_buffer(LPAD_TO_ADAPTER_PRIV(AdapterObject)->open, (long)(ULONG)dim))
        LAST(ERROR_NO_SYSTEM_RESOURCES, FALSE);
    KEEP(TRUE);
}

/* Packet32.cpp PacketSetMinToCopy: BIOCSMINTOCOPY stores the ULONG (funcBIOCSULONG). */
EXPORT BOOLEAN PacketSetMinToCopy(LPADAPTER AdapterObject, int nbytes)
{
    ENTER;
    npf_set_mintocopy(LPAD_TO_ADAPTER_PRIV(AdapterObject)->open, (long)(ULONG)nbytes);
    KEEP(TRUE);
}

/* Not a Packet.dll export: lets the tests read the driver's MinToCopy of an open adapter. */
EXPORT long winemu_adapter_mintocopy(LPADAPTER AdapterObject)
{
    return AdapterObject ? npf_mintocopy(LPAD_TO_ADAPTER_PRIV(AdapterObject)->open) : -1;
}

/* Packet32.cpp PacketSetReadTimeout: user level only, ReadTimeOut = timeout (0: wait forever,
 * -1: never wait, in PacketReceivePacket); SetLastError(ERROR_SUCCESS). */
EXPORT BOOLEAN PacketSetReadTimeout(LPADAPTER AdapterObject, int timeout)
{
    AdapterObject->ReadTimeOut = (UINT)timeout;
    LAST(ERROR_SUCCESS, TRUE);
}

/* Packet32.cpp PacketSetBpf: BIOCSETF with bf_len instructions (npf_set_filter: validated,
 * swapped in, buffer flushed and counters zeroed). */
EXPORT BOOLEAN PacketSetBpf(LPADAPTER AdapterObject, struct bpf_program *fp)
{
    ENTER;
    DWORD error = npf_set_filter(LPAD_TO_ADAPTER_PRIV(AdapterObject)->open, fp->bf_insns,
                                 fp->bf_len);
    if (error != ERROR_SUCCESS)
        LAST(error, FALSE);
    KEEP(TRUE);
}

/* Packet32.cpp PacketGetReadEvent: the ADAPTER's ReadEvent. */
EXPORT HANDLE PacketGetReadEvent(LPADAPTER AdapterObject)
{
    return AdapterObject->ReadEvent;
}

/* ------------------------------------------------------------------------------------------ */
/* Reading */

/* Packet32.cpp PacketInitPacket: the PACKET zeroed, then Buffer and Length. */
EXPORT VOID PacketInitPacket(LPPACKET lpPacket, PVOID Buffer, UINT Length)
{
    memset(lpPacket, 0, sizeof(PACKET));
    lpPacket->Buffer = Buffer;
    lpPacket->Length = Length;
}

/* Packet32.cpp PacketReceivePacket (Sync ignored): unless ReadTimeOut is -1, wait for the read
 * event (INFINITE when ReadTimeOut is 0), whatever the wait returns; then ReadFile, which
 * NPF_Read answers at once (npf_read: clears the event, copies whole bpf_hdr records,
 * Packet_WORDALIGN'ed).  ulBytesReceived: the bytes copied, 0 when the read fails. */
EXPORT BOOLEAN PacketReceivePacket(LPADAPTER AdapterObject, LPPACKET lpPacket, BOOLEAN Sync)
{
    ENTER;
    (void)Sync;
    if ((int)AdapterObject->ReadTimeOut != -1)
        WaitForSingleObject(AdapterObject->ReadEvent,
                            AdapterObject->ReadTimeOut == 0 ? INFINITE
                                                            : AdapterObject->ReadTimeOut);
    DWORD error = ERROR_SUCCESS;
    long got = npf_read(LPAD_TO_ADAPTER_PRIV(AdapterObject)->open, lpPacket->Buffer,
                        lpPacket->Length, &error);
    if (got < 0) {
        lpPacket->ulBytesReceived = 0;
        LAST(error, FALSE);
    }
    lpPacket->ulBytesReceived = (DWORD)got;
    KEEP(TRUE);
}

/* Packet32.cpp PacketGetStats: BIOCGSTATS into a temporary, then "Copy only the first two
 * values retrieved from the driver" (bs_recv, bs_drop); SetLastError(ERROR_SUCCESS). */
EXPORT BOOLEAN PacketGetStats(LPADAPTER AdapterObject, struct bpf_stat *s)
{
    uint32_t recv, drop, capt;
    npf_stats(LPAD_TO_ADAPTER_PRIV(AdapterObject)->open, &recv, &drop, &capt);
    s->bs_recv = recv;
    s->bs_drop = drop;
    LAST(ERROR_SUCCESS, TRUE);
}
