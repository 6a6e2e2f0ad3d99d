/* ws2_32, emulated just enough for the emulated kernel to learn of multicast joins.
 *
 * Preloaded (LD_PRELOAD) into the emulated process: setsockopt is interposed and passed on to
 * the C library; a successful IP_ADD_MEMBERSHIP tells kernel32.so that a local socket has
 * joined the group.  Windows then loops this host's own multicast to that group to the Npcap
 * loopback adapter, also after the socket is gone (the "cold start" that
 * eclipse-ecal/udpcap's kickstart solves).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

#include "winemu.h"

typedef int (*setsockopt_fn)(int, int, int, const void *, socklen_t);

EXPORT int setsockopt(int fd, int level, int name, const void *value, socklen_t length)
{
    static setsockopt_fn next;
    if (next == NULL)
        next = (setsockopt_fn)dlsym(RTLD_NEXT, "setsockopt");
    int result = next(fd, level, name, value, length);
    if (result == 0 && level == IPPROTO_IP && name == IP_ADD_MEMBERSHIP
            && length >= (socklen_t)sizeof(struct ip_mreq)) {
        struct ip_mreq mreq;
        memcpy(&mreq, value, sizeof mreq);
        winemu_note_member(mreq.imr_multiaddr.s_addr);
    }
    return result;
}
